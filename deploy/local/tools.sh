#!/usr/bin/env bash
# Installs the executor commands of deploy/executor-tools.toml under var/tools/ (ruff and
# flake8 from PyPI, prettier from npm when npm is there), pinned, once; and writes
# var/executor-tools.toml: the example allow list pointed at them. `make up` runs the fleet
# with it and `make test` runs its commands through the queue.
set -euo pipefail

ruff_version=0.17.6
flake8_version=7.3.0
prettier_version=3.10.1
dir="$PWD/var/tools"
stamp="$dir/.installed-ruff$ruff_version-flake8$flake8_version-prettier$prettier_version"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# Commands run as an unprivileged user with an empty environment, so they get the system's
# Python (a per-user one, under /root say, is out of their reach).
if [ ! -x /usr/bin/python3 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
fi

if [ ! -f "$stamp" ]; then
  python=$(command -v python3)
  if ! "$python" -m pip --version >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  rm -rf "$dir" && mkdir -p "$dir"
  echo "installing executor tools (ruff $ruff_version, flake8 $flake8_version, prettier $prettier_version) into var/tools"
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-cache-dir \
    --only-binary :all: --target "$dir/ruff" "ruff==$ruff_version"
  "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-cache-dir \
    --only-binary :all: --target "$dir/flake8" "flake8==$flake8_version"
  if command -v npm >/dev/null; then
    npm install --silent --no-audit --no-fund --prefix "$dir/prettier" "prettier@$prettier_version"
  fi
  # Readable by the sandbox user.
  chmod -R a+rX "$dir"
  touch "$stamp"
fi

sed "s|/opt/taskfleet-tools|$dir|g" deploy/executor-tools.toml >var/executor-tools.toml
