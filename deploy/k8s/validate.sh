#!/usr/bin/env bash
# Validates every object of deploy/k8s, strictly, against the Kubernetes 1.30 schemas and KEDA's
# CRD schema, and against what the code says (queues, variables, ports, drain time); renders the
# kustomizations with render.py and, where kubectl is installed, checks kubectl renders the same.
# Part of `make test`. The validator (deploy/k8s/requirements.txt, pinned) is installed from PyPI
# once into var/k8s/venv, and again only when requirements.txt changes; validating itself needs
# no network. Prints one line per object and per check; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=var/k8s/venv
requirements=deploy/k8s/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  echo "deploy/k8s/validate.sh: installing the validator into $venv (once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -r "$requirements"
  "$venv/bin/pip" check --disable-pip-version-check >/dev/null
  cp "$requirements" "$venv/requirements.txt"
fi
exec "$venv/bin/python" deploy/k8s/validate.py
