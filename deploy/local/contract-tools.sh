#!/usr/bin/env bash
# Installs the contract checkers into a virtualenv under var/contract/, pinned, once:
# schemathesis (fuzzes the API against its own OpenAPI document) and openapi-python-client
# (generates the Python client the contract test drives). `make test` runs both.
set -euo pipefail
. "$(dirname "$0")/python-venv.sh"

pinned_venv "$PWD/var/contract" "schemathesis and openapi-python-client" \
  "schemathesis==4.32.5" "openapi-python-client==0.29.1"
