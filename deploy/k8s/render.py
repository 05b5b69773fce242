#!/usr/bin/env python3
"""Renders one of deploy/k8s's kustomizations the way `kustomize build` does, for machines with no
kustomize binary (none can be had from the registries this project may use; validate.sh compares
this output with `kubectl kustomize` wherever kubectl is installed).

It follows only what our kustomization files use, and refuses anything else rather than render
it differently from kustomize: `resources` (YAML files, and directories holding a
kustomization), and `configMapGenerator` entries with `name` and `envs` or `literals`. A
generated ConfigMap is named `<name>-<hash of its data>` (kustomize's hash), and references to it
from pod specs are renamed to match, at its own level and every level above.

    render.py DIR            prints the objects as YAML documents
"""

import hashlib
import json
import os
import re
import sys

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "configMapGenerator"}
SUPPORTED_GENERATOR_KEYS = {"name", "envs", "literals"}
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class RenderError(Exception):
    pass


def kustomization_file(directory):
    for name in KUSTOMIZATION_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise RenderError(f"{directory}: no kustomization file")


def load_documents(path):
    with open(path, encoding="utf-8") as f:
        try:
            return [doc for doc in yaml.safe_load_all(f) if doc is not None]
        except yaml.YAMLError as err:
            raise RenderError(f"{path}: not YAML: {err}") from err


def env_file_pairs(path):
    """KEY=VALUE lines as kustomize reads them: leading blanks dropped, `#` lines and blank lines
    skipped, the value kept as written after the first `=`."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f.read().splitlines(), 1):
            line = line.lstrip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                # kustomize would take the value from its own environment: never what we mean.
                raise RenderError(f"{path}:{number}: no `=`")
            key, value = line.split("=", 1)
            if not ENV_NAME.match(key):
                raise RenderError(f"{path}:{number}: `{key}` is not a variable name")
            if value[:1] in ("'", '"'):
                raise RenderError(f"{path}:{number}: quoted values are not supported here")
            pairs.append((key, value))
    return pairs


def go_json(value):
    """json.Marshal's encoding (sorted keys, no spaces, <, > and & escaped), which kustomize
    hashes."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def config_map_hash(data):
    """kustomize's name suffix for a generated ConfigMap (api/hasher): the first ten hex digits
    of the SHA-256 of its kind, name and data, with 0, 1, 3, a and e replaced by g, h, k, m, t.
    The name it hashes is always empty: it looks `metadata/name` up as one field name."""
    digest = hashlib.sha256(go_json({"kind": "ConfigMap", "name": "", "data": data})
                            .encode("utf-8")).hexdigest()
    return digest[:10].translate(str.maketrans("013ae", "ghkmt"))


def generate_config_map(directory, generator):
    unknown = set(generator) - SUPPORTED_GENERATOR_KEYS
    if unknown:
        raise RenderError(f"{directory}: configMapGenerator keys not supported: {sorted(unknown)}")
    name = generator["name"]
    data = {}
    pairs = []
    for env in generator.get("envs", []):
        pairs += env_file_pairs(os.path.join(directory, env))
    for literal in generator.get("literals", []):
        if "=" not in literal:
            raise RenderError(f"{directory}: literal `{literal}` has no `=`")
        pairs.append(tuple(literal.split("=", 1)))
    for key, value in pairs:
        if key in data:
            raise RenderError(f"{directory}: ConfigMap {name} has `{key}` twice")
        data[key] = value
    hashed = f"{name}-{config_map_hash(data)}"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": hashed}, "data": data}, \
        name, hashed


def pod_specs(obj):
    kind, spec = obj.get("kind"), obj.get("spec") or {}
    if kind == "Pod":
        yield spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield (spec.get("template") or {}).get("spec") or {}
    elif kind == "CronJob":
        yield (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}) \
            .get("spec") or {}


def rename_config_map_references(obj, renames):
    """The references kustomize's name-reference transformer follows for ConfigMaps in pod
    specs."""
    def rename(holder):
        if holder and holder.get("name") in renames:
            holder["name"] = renames[holder["name"]]

    for spec in pod_specs(obj):
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            for source in container.get("envFrom", []):
                rename(source.get("configMapRef"))
            for env in container.get("env", []):
                rename((env.get("valueFrom") or {}).get("configMapKeyRef"))
        for volume in spec.get("volumes", []):
            rename(volume.get("configMap"))
            for source in (volume.get("projected") or {}).get("sources", []):
                rename(source.get("configMap"))


def object_id(obj):
    group = obj.get("apiVersion", "").rpartition("/")[0]
    meta = obj.get("metadata") or {}
    return (group, obj.get("kind"), meta.get("namespace", ""), meta.get("name"))


def render(directory, _visiting=()):
    """The objects of the kustomization in `directory`, and the ConfigMap names it generated
    (original name -> hashed name)."""
    directory = os.path.realpath(directory)
    if directory in _visiting:
        raise RenderError(f"{directory}: cycle")
    path = kustomization_file(directory)
    with open(path, encoding="utf-8") as f:
        kustomization = yaml.safe_load(f) or {}
    unknown = set(kustomization) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{path}: not supported by render.py: {sorted(unknown)} "
                          "(keep our kustomizations to resources and configMapGenerator)")
    if kustomization.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{path}: kind {kustomization['kind']} is not supported")

    objects, renames = [], {}
    for resource in kustomization.get("resources", []):
        target = os.path.join(directory, resource)
        if os.path.isdir(target):
            sub_objects, sub_renames = render(target, _visiting + (directory,))
            objects += sub_objects
            renames.update(sub_renames)
        elif os.path.isfile(target):
            objects += load_documents(target)
        else:
            raise RenderError(f"{path}: resource {resource} does not exist")
    for generator in kustomization.get("configMapGenerator", []):
        config_map, name, hashed = generate_config_map(directory, generator)
        objects.append(config_map)
        renames[name] = hashed
    for obj in objects:
        rename_config_map_references(obj, renames)

    seen = set()
    for obj in objects:
        key = object_id(obj)
        if key in seen:
            raise RenderError(f"{path}: {key[1]}/{key[3]} appears twice")
        seen.add(key)
    return objects, renames


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    try:
        objects, _ = render(argv[1])
    except RenderError as err:
        sys.exit(f"render.py: {err}")
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main(sys.argv)
