#!/usr/bin/env bash
# Installs moto's S3 server into a virtualenv under var/s3/, pinned, once: the tests keep the
# workers' vector store in a bucket on it (TASKFLEET_VECTOR_URI=s3://…), as workers on
# several hosts do on real object storage.
set -euo pipefail

moto_version=5.2.6
dir="$PWD/var/s3"
stamp="$dir/.installed-moto$moto_version"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ ! -f "$stamp" ]; then
  python=$(command -v python3)
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$dir"
  echo "installing moto $moto_version (its S3 server) into var/s3"
  "$python" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    "moto[server]==$moto_version"
  touch "$stamp"
fi
