#!/usr/bin/env bash
# Runs taskfleet-api and two taskfleet-worker processes in the background (logs and pids in
# var/), waits until /readyz passes, and prints the URLs and a fresh API key.
set -euo pipefail
bin="$1"
mkdir -p var/log var/run
"$(dirname "$0")/down.sh" >/dev/null 2>&1 || true

db_name="${DATABASE_URL##*/}"
admin_url="${DATABASE_URL%/*}/postgres"
if [ "$(psql "$admin_url" -tAc "select 1 from pg_database where datname = '$db_name'")" != 1 ]; then
  psql "$admin_url" -qc "create database \"$db_name\""
fi
"$bin/taskfleet-api" migrate

nohup "$bin/taskfleet-api" >var/log/api.log 2>&1 & echo $! >var/run/api.pid
# Worker metrics on 9101 and 9102, where deploy/prometheus/prometheus.yml scrapes them.
for i in 1 2; do
  TASKFLEET_WORKER_METRICS_ADDR="127.0.0.1:910$i" nohup "$bin/taskfleet-worker" \
    >"var/log/worker-$i.log" 2>&1 & echo $! >"var/run/worker-$i.pid"
done

url="http://$TASKFLEET_API_ADDR"
for _ in $(seq 150); do
  curl -fsS "$url/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
if ! curl -fsS "$url/readyz" >/dev/null; then
  echo "taskfleet did not become ready; see var/log/" >&2
  curl -sS "$url/readyz" >&2 || true
  exit 1
fi
key=$("$bin/taskfleet-api" keys create --tenant "${TASKFLEET_TENANT:-demo}" 2>/dev/null)
ops_key=$("$bin/taskfleet-api" keys create --tenant ops --operator 2>/dev/null)
cat <<MSG
taskfleet is running (api + 2 workers; logs in var/log, stop with 'make down').
  Dashboard:    $url/dashboard   (sign in with the operator key)
  API:          $url/v1
  Swagger UI:   $url/docs
  OpenAPI:      $url/openapi.json
  Metrics:      $url/metrics, http://127.0.0.1:9101/metrics, http://127.0.0.1:9102/metrics
  API key:      $key   (tenant ${TASKFLEET_TENANT:-demo})
  Operator key: $ops_key   (sees every tenant, the workers, queue pauses)

Try it:
  curl -s -X POST $url/v1/jobs -H "Authorization: Bearer $key" \\
       -H 'content-type: application/json' -d '{"kind":"executor.run","tool":"noop"}'
MSG
