# Sourced by the scripts that install pinned Python tools under var/ (contract-tools.sh,
# s3-tools.sh).

# pinned_venv DIR WHAT REQUIREMENT...: makes DIR a virtualenv holding exactly the pinned
# REQUIREMENTs, once; a stamp in DIR names them, so a changed pin installs afresh.
pinned_venv() {
  local dir=$1 what=$2
  shift 2
  local stamp
  stamp="$dir/.installed-$(printf '%s-' "$@" | tr -c 'A-Za-z0-9.=-' '_')"
  [ -f "$stamp" ] && return 0
  local python
  python=$(command -v python3)
  if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  rm -rf "$dir"
  echo "installing $what into ${dir#"$PWD"/}"
  "$python" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "$@"
  touch "$stamp"
}
