#!/usr/bin/env bash
# Makes sure Redis and Postgres answer on their default local ports, installing them with
# apt-get when missing (fresh Debian machine), and that the tools the tests drive (Chromium,
# ChromeDriver, promtool) are present.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
install_pkg() { # install_pkg PACKAGE
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
need_pkg() { # need_pkg COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || install_pkg "$2"
}

need_pkg redis-server redis-server
# The test suite drives the dashboard in headless Chromium and lints metrics with promtool.
need_pkg chromium chromium
need_pkg chromedriver chromium-driver
need_pkg promtool prometheus
need_pkg redis-cli redis-tools
# The command line's tests drive `taskfleet top` and `submit --wait` on a terminal in tmux.
need_pkg tmux tmux
# The Postgres tests put pgbouncer before Postgres; the partition test uses network namespaces.
[ -x /usr/sbin/pgbouncer ] || need_pkg pgbouncer pgbouncer
need_pkg ip iproute2
# The TLS tests make their certificates with openssl.
need_pkg openssl openssl
# lancedb's build compiles protocol buffers: protoc and the well-known types.
need_pkg protoc protobuf-compiler
[ -f /usr/include/google/protobuf/descriptor.proto ] || install_pkg libprotobuf-dev
need_pkg psql postgresql-client
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then need_pkg pg_ctlcluster postgresql; fi
# pg_ctlcluster may be present without a cluster when only the client was installed.
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting Redis"
  redis-server --daemonize yes --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 50); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "starting Postgres"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 100); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 0.1; done
fi
# Local trust auth for the postgres user over TCP is what this machine has; a fresh cluster
# asks for a password on TCP, so allow local connections without one.
if ! psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then
  hba=$(as_root su postgres -c "psql -tAc 'show hba_file'")
  as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  as_root su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
fi
redis-cli -h 127.0.0.1 ping >/dev/null
psql -h 127.0.0.1 -U postgres -tAc 'select 1' >/dev/null
