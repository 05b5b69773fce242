#!/usr/bin/env bash
# Installs moto's S3 server into a virtualenv under var/s3/, pinned, once: the tests keep the
# workers' vector store in a bucket on it (TASKFLEET_VECTOR_URI=s3://…), as workers on
# several hosts do on real object storage.
set -euo pipefail
. "$(dirname "$0")/python-venv.sh"

pinned_venv "$PWD/var/s3" "moto's S3 server" "moto[server]==5.2.6"
