#!/usr/bin/env bash
# Stops what deploy/local/up.sh started: SIGTERM, so workers drain.
set -u
for pidfile in var/run/*.pid; do
  [ -e "$pidfile" ] || continue
  kill -TERM "$(cat "$pidfile")" 2>/dev/null && echo "stopped $(basename "$pidfile" .pid)"
  rm -f "$pidfile"
done
