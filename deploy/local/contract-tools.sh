#!/usr/bin/env bash
# Installs the contract checkers into a virtualenv under var/contract/, pinned, once:
# schemathesis (fuzzes the API against its own OpenAPI document) and openapi-python-client
# (generates the Python client the contract test drives). `make test` runs both.
set -euo pipefail

schemathesis_version=4.32.5
client_generator_version=0.29.1
dir="$PWD/var/contract"
stamp="$dir/.installed-schemathesis$schemathesis_version-generator$client_generator_version"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f "$stamp" ]; then
  python=$(command -v python3)
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$dir"
  echo "installing schemathesis $schemathesis_version and openapi-python-client $client_generator_version into var/contract"
  "$python" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    "schemathesis==$schemathesis_version" "openapi-python-client==$client_generator_version"
  touch "$stamp"
fi
