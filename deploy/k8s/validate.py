#!/usr/bin/env python3
"""Validates every object of deploy/k8s (run by validate.sh, inside var/k8s/venv).

1. Renders the kustomizations (deploy/k8s, deploy/k8s/keda, deploy/k8s/migrate) with render.py,
   and, where kubectl is installed, checks that `kubectl kustomize` renders the same objects.
2. Validates each object once, strictly (an unknown field is an error): Kubernetes objects
   against the Kubernetes 1.30 schemas kubernetes-validate bundles, KEDA's against the schema of
   KEDA 2.16.1's CRDs as cloudcoil-models-keda carries it (made strict here), plus the
   parameters of KEDA's postgresql scaler. A kind with no schema is an error.
3. Checks what no schema knows, against the code: queue names, environment variable names,
   ports, drain and probe timings, binaries and subcommands, references between objects.

One line per object and per check; exits 1 when anything failed.
"""

import os
import re
import shutil
import subprocess
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as k8s

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import render  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
KUBERNETES_VERSION = "1.30.0"
TARGETS = ["deploy/k8s", "deploy/k8s/keda", "deploy/k8s/migrate"]
PLAIN_FILES = ["deploy/k8s/secret.example.yaml"]
# KEDA 2.16's postgresql scaler: its trigger metadata and TriggerAuthentication parameters.
POSTGRESQL_METADATA = {"query", "targetQueryValue", "activationTargetQueryValue",
                       "connectionFromEnv", "host", "port", "userName", "dbName", "sslmode",
                       "passwordFromEnv", "metricName"}
POSTGRESQL_AUTH = {"connection", "password"}

failures = 0


def report(ok, what, detail=""):
    global failures
    if not ok:
        failures += 1
    print(f"{'ok  ' if ok else 'FAIL'}  {what}{'  ' + detail if detail else ''}", flush=True)


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def name_of(obj):
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


# --- What the code says -------------------------------------------------------------------------

def code_facts():
    sources = ""
    for crate in ("api", "worker", "storage", "connectors", "agents", "telemetry", "jobs"):
        for directory, _, files in os.walk(os.path.join(ROOT, crate, "src")):
            for file in files:
                if file.endswith(".rs"):
                    with open(os.path.join(directory, file), encoding="utf-8") as f:
                        sources += f.read()
    env = set(re.findall(r'env\s*=\s*"([A-Z][A-Z0-9_]*)"', sources))
    if "EnvFilter::try_from_default_env" in sources:
        env.add("RUST_LOG")
    worker_cli = read("worker/src/cli.rs")
    api_cli = read("api/src/cli.rs")
    commands = re.search(r"pub enum Command \{(.*?)\n\}", api_cli, re.S).group(1)

    def default(text, variable):
        found = re.search(rf'env = "{variable}",\s*default_value_t = ([\d_]+)', text)
        return int(found.group(1).replace("_", ""))

    return {
        "queues": re.findall(r'Queue::\w+ => "(\w+)"', read("jobs/src/queue.rs")),
        "env": env,
        "worker_flags": set(re.findall(r"pub (\w+):", worker_cli)),
        "api_subcommands": {v.lower() for v in re.findall(r"^    (\w+)\b", commands, re.M)},
        "binaries": set(re.findall(r"target/release/(taskfleet-[\w-]+)", read("deploy/Dockerfile"))),
        "drain_secs": default(worker_cli, "TASKFLEET_DRAIN_TIMEOUT_SECS"),
        "hand_back_secs": int(re.search(r"hand_back_all\(Duration::from_secs\((\d+)\)\)",
                                        read("worker/src/fleet.rs")).group(1)),
        "ready_timeout_ms": default(api_cli, "TASKFLEET_READY_TIMEOUT_MS"),
    }


# --- Schemas ------------------------------------------------------------------------------------

def strict(schema):
    """Every object schema with properties and no word on others refuses others."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def keda_validators():
    from cloudcoil.models.keda import v1alpha1 as keda
    validators = {}
    for kind in ("ScaledObject", "TriggerAuthentication"):
        schema = strict(getattr(keda, kind).model_json_schema(by_alias=True, mode="validation"))
        validators[kind] = jsonschema.Draft202012Validator(schema)
    return validators


def validate_keda(obj, validators):
    validator = validators.get(obj.get("kind"))
    if validator is None:
        return [f"no schema for {obj.get('apiVersion')} {obj.get('kind')}"]
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
              for e in validator.iter_errors(obj)]
    spec = obj.get("spec") or {}
    for i, trigger in enumerate(spec.get("triggers") or []):
        if trigger.get("type") != "postgresql":
            continue
        metadata = trigger.get("metadata") or {}
        for key in sorted(set(metadata) - POSTGRESQL_METADATA):
            errors.append(f"spec.triggers.{i}.metadata: `{key}` is no postgresql scaler parameter")
        for key in ("query", "targetQueryValue"):
            if key not in metadata:
                errors.append(f"spec.triggers.{i}.metadata: `{key}` is required")
    for i, ref in enumerate(spec.get("secretTargetRef") or []):
        if ref.get("parameter") not in POSTGRESQL_AUTH:
            errors.append(f"spec.secretTargetRef.{i}: `{ref.get('parameter')}` is no postgresql "
                          "scaler parameter")
    return errors


def validate_object(obj, validators):
    """The errors of one object; the schema it was checked against."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return ["not a Kubernetes object (apiVersion and kind)"], "-"
    if obj["apiVersion"].startswith("keda.sh/"):
        return validate_keda(obj, validators), "KEDA 2.16.1 CRD schema (strict)"
    against = f"Kubernetes {KUBERNETES_VERSION.rsplit('.', 1)[0]} (strict)"
    try:
        k8s.validate(obj, KUBERNETES_VERSION, strict=True)
    except k8s.ValidationError as err:
        path = ".".join(str(p) for p in err.path) or "(root)"
        return [f"{path}: {err.message}"], against
    except k8s.SchemaNotFoundError as err:
        return [err.message], against
    return [], against


# --- Rendering ----------------------------------------------------------------------------------

def kubectl_render(target):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None, None
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True)
    found = re.search(r"Kustomize Version: (\S+)", version.stdout)
    done = subprocess.run([kubectl, "kustomize", os.path.join(ROOT, target)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"kubectl kustomize failed: {done.stderr.strip()}", None
    return list(yaml.safe_load_all(done.stdout)), found.group(1) if found else "?"


def count(objects):
    return f"{len(objects)} object{'' if len(objects) == 1 else 's'}"


def render_targets():
    rendered = {}
    for target in TARGETS:
        try:
            objects, _ = render.render(os.path.join(ROOT, target))
        except render.RenderError as err:
            report(False, f"render {target}", str(err))
            continue
        theirs, version = kubectl_render(target)
        if isinstance(theirs, str):
            report(False, f"render {target}", theirs)
        elif theirs is None:
            report(True, f"render {target}", f"{count(objects)} (render.py; no kubectl here to "
                   "compare with)")
        else:
            ours = {render.object_id(o): o for o in objects}
            kustomized = {render.object_id(o): o for o in theirs if o}
            differ = sorted(f"{k[1]}/{k[3]}" for k in set(ours) | set(kustomized)
                            if ours.get(k) != kustomized.get(k))
            report(not differ, f"render {target}",
                   f"{count(objects)}, the same as kubectl kustomize ({version})"
                   if not differ else f"render.py and kubectl kustomize differ on {differ}")
        rendered[target] = objects
    for path in PLAIN_FILES:
        rendered[path] = render.load_documents(os.path.join(ROOT, path))
    return rendered


# --- Checks against the code and across objects -------------------------------------------------

def containers(obj):
    for spec in render.pod_specs(obj):
        yield from spec.get("containers", [])


def flag_values(args, flag):
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def checks(rendered, facts):
    everything = [o for objects in rendered.values() for o in objects]
    by_kind = {}
    for obj in everything:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    config = {}
    for config_map in by_kind.get("ConfigMap", {}).values():
        config.update(config_map.get("data") or {})
    secrets = by_kind.get("Secret", {})
    secret_keys = {n: set(s.get("stringData") or {}) | set(s.get("data") or {})
                   for n, s in secrets.items()}
    deployments = by_kind.get("Deployment", {})
    workers = {n: d for n, d in deployments.items()
               if any((c.get("command") or [""])[0] == "taskfleet-worker" for c in containers(d))}

    def queues_of(deployment):
        for c in containers(deployment):
            for value in flag_values(c.get("args") or [], "--queues"):
                return value.split(",")
        return None

    # Queues: the real ones, each served by exactly one group.
    served = {n: queues_of(d) for n, d in workers.items()}
    problems = [f"{n} names no --queues" for n, q in served.items() if q is None]
    seen = {}
    for n, queues in served.items():
        for queue in queues or []:
            if queue not in facts["queues"]:
                problems.append(f"{n}: `{queue}` is no queue (jobs/src/queue.rs)")
            if queue in seen:
                problems.append(f"`{queue}` is served by {seen[queue]} and {n}")
            seen[queue] = n
    problems += [f"no group serves `{q}`" for q in facts["queues"] if q not in seen]
    report(not problems, "check: worker groups serve each queue of jobs/src/queue.rs once",
           "; ".join(problems))

    # Environment: every variable we set is one the code reads.
    problems = [f"ConfigMap {k}" for k in config if k not in facts["env"]]
    problems += [f"Secret {k}" for keys in secret_keys.values() for k in keys
                 if k not in facts["env"]]
    report(not problems, "check: ConfigMap and Secret keys are variables the binaries read",
           "unknown: " + ", ".join(problems) if problems else "")

    # Binaries, subcommands and flags.
    problems = []
    for obj in everything:
        for c in containers(obj):
            command = c.get("command") or []
            if not command or command[0] not in facts["binaries"]:
                problems.append(f"{name_of(obj)} runs {command[:1]}, not a binary of deploy/Dockerfile")
                continue
            words = command[1:] + (c.get("args") or [])
            if command[0] == "taskfleet-api" and (not words or words[0] not in facts["api_subcommands"]):
                problems.append(f"{name_of(obj)}: `{words[:1]}` is no taskfleet-api subcommand")
            if command[0] == "taskfleet-worker":
                for word in words:
                    if word.startswith("--") and word[2:].replace("-", "_") not in facts["worker_flags"]:
                        problems.append(f"{name_of(obj)}: {word} is no taskfleet-worker flag")
    report(not problems, "check: containers run the image's binaries, subcommands and flags",
           "; ".join(problems))

    # Ports and probes.
    problems = []
    for n, d in deployments.items():
        for c in containers(d):
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if port is not None and port not in ports and port not in ports.values():
                    problems.append(f"{n}: {probe} port {port} is not a container port")
            binary = (c.get("command") or [""])[0]
            if binary == "taskfleet-api":
                address = config.get("TASKFLEET_API_ADDR", "127.0.0.1:8080")
                if address.startswith("127.") or ports.get("http") != port_of(address):
                    problems.append(f"{n}: listens on {address}, port `http` is {ports.get('http')}")
                ready = (c.get("readinessProbe") or {}).get("timeoutSeconds", 1)
                ready_ms = int(config.get("TASKFLEET_READY_TIMEOUT_MS", facts["ready_timeout_ms"]))
                if ready * 1000 <= ready_ms + 2000:
                    problems.append(f"{n}: readiness timeout {ready}s is not above /readyz's "
                                    f"{ready_ms} ms round trip and 2 s Redis ping")
            if binary == "taskfleet-worker":
                address = config.get("TASKFLEET_WORKER_METRICS_ADDR")
                if not address or address.startswith("127.") or ports.get("metrics") != port_of(address):
                    problems.append(f"{n}: metrics on {address}, port `metrics` is {ports.get('metrics')}")
    report(not problems, "check: ports and probe timeouts match TASKFLEET_API_ADDR, "
           "TASKFLEET_WORKER_METRICS_ADDR and TASKFLEET_READY_TIMEOUT_MS", "; ".join(problems))

    # Drain: the grace period outlasts the drain and the hand-back.
    drain = int(config.get("TASKFLEET_DRAIN_TIMEOUT_SECS", facts["drain_secs"]))
    needed = drain + facts["hand_back_secs"]
    problems = []
    for n, d in workers.items():
        grace = d["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        if grace <= needed:
            problems.append(f"{n}: {grace}s")
    report(not problems, f"check: worker terminationGracePeriodSeconds above the drain ({drain}s) "
           f"and hand-back ({facts['hand_back_secs']}s)", "; ".join(problems))

    # References between objects, and to the Secret of secret.example.yaml.
    problems = []
    for obj in everything:
        for spec in render.pod_specs(obj):
            for c in spec.get("containers", []):
                for source in c.get("envFrom", []):
                    if "configMapRef" in source and source["configMapRef"]["name"] not in by_kind.get("ConfigMap", {}):
                        problems.append(f"{name_of(obj)}: no ConfigMap {source['configMapRef']['name']}")
                    if "secretRef" in source and source["secretRef"]["name"] not in secrets:
                        problems.append(f"{name_of(obj)}: no Secret {source['secretRef']['name']}")
                for env in c.get("env", []):
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref and ref["key"] not in secret_keys.get(ref["name"], ()):
                        problems.append(f"{name_of(obj)}: no key {ref['key']} in Secret {ref['name']}")
            for volume in spec.get("volumes", []):
                claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
                if claim and claim not in by_kind.get("PersistentVolumeClaim", {}):
                    problems.append(f"{name_of(obj)}: no PersistentVolumeClaim {claim}")
        if obj["kind"] == "TriggerAuthentication":
            for ref in obj["spec"].get("secretTargetRef", []):
                if ref["key"] not in secret_keys.get(ref["name"], ()):
                    problems.append(f"{name_of(obj)}: no key {ref['key']} in Secret {ref['name']}")
        if obj["kind"] == "ScaledObject":
            for trigger in obj["spec"]["triggers"]:
                auth = (trigger.get("authenticationRef") or {}).get("name")
                if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                    problems.append(f"{name_of(obj)}: no TriggerAuthentication {auth}")
        if obj["kind"] in ("Service", "PodDisruptionBudget", "Deployment"):
            spec = obj["spec"]
            selector = spec.get("selector") or {}
            selector = selector.get("matchLabels", selector) if obj["kind"] != "Service" else selector
            templates = [d["spec"]["template"]["metadata"].get("labels", {})
                         for d in ([obj] if obj["kind"] == "Deployment" else deployments.values())]
            if not any(matches(selector, labels) for labels in templates):
                problems.append(f"{name_of(obj)}: its selector matches no pod")
    report(not problems, "check: references resolve (ConfigMap, Secret keys, claims, selectors)",
           "; ".join(problems))

    # Scaling: one autoscaler per Deployment; each ScaledObject counts its group's queues; the
    # group serving `executor` never scales to zero (the API's /readyz runs a noop through it).
    problems = []
    for target, objects in rendered.items():
        scaled = {}
        for obj in objects:
            if obj["kind"] in ("HorizontalPodAutoscaler", "ScaledObject"):
                ref = obj["spec"]["scaleTargetRef"]["name"]
                if ref not in deployments:
                    problems.append(f"{name_of(obj)}: no Deployment {ref}")
                scaled.setdefault(ref, []).append(name_of(obj))
            if obj["kind"] == "ScaledObject":
                ref = obj["spec"]["scaleTargetRef"]["name"]
                for trigger in obj["spec"]["triggers"]:
                    query = (trigger.get("metadata") or {}).get("query", "")
                    listed = re.search(r"queue IN \(([^)]*)\)", query)
                    counted = sorted(re.findall(r"'(\w+)'", listed.group(1))) if listed else None
                    if counted != sorted(served.get(ref) or []):
                        problems.append(f"{name_of(obj)} counts {counted}, {ref} serves {served.get(ref)}")
                if "executor" in (served.get(ref) or []) and obj["spec"].get("minReplicaCount", 1) < 1:
                    problems.append(f"{name_of(obj)} may scale the executor workers to zero")
        problems += [f"{target}: {ref} has {' and '.join(by)}" for ref, by in scaled.items()
                     if len(by) > 1]
    report(not problems, "check: one autoscaler per Deployment, ScaledObjects count their "
           "group's queues, the executor group keeps a pod", "; ".join(problems))


def main():
    facts = code_facts()
    validators = keda_validators()
    rendered = render_targets()
    validated = {}
    for target, objects in rendered.items():
        for obj in objects:
            key = (name_of(obj), yaml.safe_dump(obj, sort_keys=True))
            validated.setdefault(key, (obj, []))[1].append(target)
    for (name, _), (obj, targets) in validated.items():
        errors, against = validate_object(obj, validators)
        report(not errors, f"{name:56} {', '.join(targets):40} {against}",
               "; ".join(errors))
    try:
        checks(rendered, facts)
    except Exception as err:  # a malformed object the schemas already refused, most likely
        report(False, "check: could not finish the checks", f"{type(err).__name__}: {err}")
    print(f"{len(validated)} objects validated, {failures} failures", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
