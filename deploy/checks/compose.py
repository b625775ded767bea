"""Checks deploy/compose/docker-compose.yaml without a Docker daemon.

Usage: compose.py SCHEMA COMPOSE_FILE STAGE_DIR

- validates the file against the Compose spec's JSON schema (SCHEMA, taken
  from a registry package by check.sh), and parses it with PyPI's
  `compose-spec` (a strict, typed model of the current spec);
- checks that every file it refers to exists: build contexts and their
  Dockerfiles, bind-mount sources, env files;
- copies the Prometheus service's bind mounts into STAGE_DIR at their
  container paths, so promtool can check the config with the rule files
  where Prometheus will find them.
"""

import json
import os
import shutil
import sys

import compose_spec
import jsonschema
import yaml

schema_path, compose_path, stage = sys.argv[1:4]
base = os.path.dirname(os.path.abspath(compose_path))
with open(schema_path) as f:
    schema = json.load(f)
with open(compose_path) as f:
    doc = yaml.safe_load(f)

validator = jsonschema.Draft7Validator(schema)
errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print(f"  schema: {'/'.join(map(str, e.path)) or '<root>'}: {e.message}")
problems = len(errors)
try:
    with open(compose_path) as f:
        compose_spec.PyCompose.from_yaml(f.read())
except Exception as e:  # the binding raises its own error types
    print(f"  compose-spec: {e}")
    problems += 1


def need(path, what):
    global problems
    full = os.path.normpath(os.path.join(base, path))
    if os.path.exists(full):
        print(f"  ok  {what}: {path}")
    else:
        print(f"  MISSING {what}: {path} ({full})")
        problems += 1
    return full


services = doc.get("services") or {}
want = {"tollgate", "prometheus", "grafana", "jaeger", "redis"}
missing = want - set(services)
if missing:
    print(f"  missing services: {sorted(missing)}")
    problems += 1

for name, svc in services.items():
    build = svc.get("build")
    if build is not None:
        if isinstance(build, str):
            build = {"context": build}
        ctx = need(build.get("context", "."), f"{name} build context")
        dockerfile = build.get("dockerfile", "Dockerfile")
        need(os.path.join(os.path.relpath(ctx, base), dockerfile), f"{name} Dockerfile")
    env_file = svc.get("env_file") or []
    for ef in [env_file] if isinstance(env_file, str) else env_file:
        need(ef if isinstance(ef, str) else ef["path"], f"{name} env_file")
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else None
            mode = parts[2] if len(parts) > 2 else ""
            kind = "bind" if source.startswith((".", "/")) else "volume"
            read_only = "ro" in mode.split(",")
        else:
            source, target, kind = v.get("source"), v.get("target"), v.get("type")
            read_only = bool(v.get("read_only"))
        if kind != "bind":
            continue
        full = need(source, f"{name} bind mount")
        if not read_only:
            print(f"  NOT READ-ONLY {name} bind mount: {source}")
            problems += 1
        if name == "prometheus" and os.path.exists(full):
            dest = os.path.join(stage, target.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.isdir(full):
                shutil.copytree(full, dest, dirs_exist_ok=True)
            else:
                shutil.copy(full, dest)

args = services.get("tollgate", {}).get("build", {}).get("args", {})
if isinstance(args, list):
    args = dict(a.split("=", 1) for a in args)
if "otel" not in str(args.get("FEATURES", "")).split(","):
    print("  the tollgate build does not pass FEATURES=otel: no spans would reach Jaeger")
    problems += 1

if problems:
    sys.exit(f"compose: {problems} problem(s)")
print("compose: the file matches the Compose spec and every file it names exists")
