"""Asserts the deployment properties issue 24 asks of the rendered manifests.

Usage: k8s.py RENDERED.yaml   (the output of `kubectl kustomize`)

Schema validity is kubernetes-validate's job (check.sh); this checks what a
schema cannot: the pod runs non-root on a read-only root filesystem without
capabilities, the probes hit /readyz and /healthz on the admin port, the
config and keys are mounted as whole directories (so the kubelet's updates
reach tollgate), and the termination grace period outlasts the preStop sleep
plus the server.shutdown_grace of the ConfigMap's tollgate.yaml.
"""

import re
import sys

import yaml

with open(sys.argv[1]) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

failures = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def seconds(text):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(text))
    if not m:
        sys.exit(f"cannot read the duration {text!r}")
    return int(m.group(1)) * units[m.group(2)]


for kind in ["Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget",
             "HorizontalPodAutoscaler", "NetworkPolicy"]:
    check(len(by_kind.get(kind, [])) == 1, f"one {kind}")
if failures:
    sys.exit(f"k8s: {len(failures)} failure(s)")

dep = by_kind["Deployment"][0]
pod = dep["spec"]["template"]["spec"]
(c,) = [c for c in pod["containers"] if c["name"] == "tollgate"]
psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
check(psc.get("runAsNonRoot") is True, "runAsNonRoot")
check(psc.get("runAsUser", 0) != 0, "runAsUser is not 0")
check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(csc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
check(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
check(all(k in c.get("resources", {}).get("requests", {}) for k in ("cpu", "memory")),
      "cpu and memory requests")
check(all(k in c.get("resources", {}).get("limits", {}) for k in ("cpu", "memory")),
      "cpu and memory limits")

ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports.get("admin") == 9901 and ports.get("http") == 8080, "ports http 8080, admin 9901")
for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
    get = c.get(probe, {}).get("httpGet", {})
    port = ports.get(get.get("port"), get.get("port"))
    check(get.get("path") == path and port == 9901, f"{probe} GET {path} on 9901")

cm = by_kind["ConfigMap"][0]
check("-" not in cm["metadata"]["name"].removeprefix("tollgate-"),
      f"ConfigMap name without a hash suffix ({cm['metadata']['name']})")
config = yaml.safe_load(cm["data"]["tollgate.yaml"])
grace = seconds(config.get("server", {}).get("shutdown_grace", "30s"))
command = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
check(len(command) == 2 and command[0] == "sleep" and command[1].isdigit(),
      f"preStop is `sleep N` ({command})")
sleep = int(command[1]) if len(command) == 2 and command[1].isdigit() else 0
term = pod.get("terminationGracePeriodSeconds", 30)
check(term > sleep + grace,
      f"terminationGracePeriodSeconds {term} > preStop {sleep} s + shutdown_grace {grace} s")

volumes = {v["name"]: v for v in pod["volumes"]}
mounts = {m["name"]: m for m in c["volumeMounts"]}
config_volume = [n for n, v in volumes.items()
                 if v.get("configMap", {}).get("name") == cm["metadata"]["name"]]
check(len(config_volume) == 1, "the ConfigMap is a volume")
if config_volume:
    m = mounts.get(config_volume[0], {})
    check("subPath" not in m, "the ConfigMap is mounted whole (no subPath)")
    want = m.get("mountPath", "") + "/tollgate.yaml"
    check(want in c.get("args", []), f"tollgate runs with --config {want}")

secret = by_kind["Secret"][0]
secret_volume = [n for n, v in volumes.items()
                 if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
check(len(secret_volume) == 1 and "subPath" not in mounts.get(secret_volume[0], {}),
      "the Secret is mounted whole")
if secret_volume:
    keys_dir = mounts[secret_volume[0]]["mountPath"]
    text = yaml.safe_dump(config)  # values only: comments may mention ${file:...}
    refs = re.findall(r"\$\{file:([^}]+)\}", text)
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    check(bool(refs), "tollgate.yaml reads keys with ${file:...}")
    for r in refs:
        check(r.startswith(keys_dir + "/") and r[len(keys_dir) + 1:] in keys,
              f"${{file:{r}}} is a key of the Secret")

netpol = by_kind["NetworkPolicy"][0]["spec"]
rules = netpol.get("ingress", [])
open_ports = {p["port"] for r in rules if not r.get("from") for p in r.get("ports", [])}
check(8080 in open_ports and 9901 not in open_ports, "8080 open to all, 9901 not")
admin_rules = [r for r in rules if any(p["port"] == 9901 for p in r.get("ports", []))]
check(bool(admin_rules) and all(r.get("from") for r in admin_rules), "9901 only from selected peers")

hpa = by_kind["HorizontalPodAutoscaler"][0]
check(hpa["apiVersion"] == "autoscaling/v2", "HPA is autoscaling/v2")
check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA scales the Deployment")

if failures:
    sys.exit(f"k8s: {len(failures)} failure(s)")
print("k8s: every property holds")
