#!/usr/bin/env bash
# Runs taskfleet-api and two taskfleet-worker processes in the background (logs and pids in
# var/), waits until /readyz passes, and prints the URLs and a fresh API key. Without an
# OAuth client configured for any provider, it also runs taskfleet-fake-providers on
# loopback and connects the demo tenant's five connectors to it through the real OAuth
# flow, so items flow with no account anywhere.
set -euo pipefail
bin="$1"
mkdir -p var/log var/run
"$(dirname "$0")/down.sh" >/dev/null 2>&1 || true

# The database's name, and the server's `postgres` database with the URL's parameters
# (sslmode and the like) kept.
db_url="${DATABASE_URL%%\?*}"
params="${DATABASE_URL#"$db_url"}"
db_name="${db_url##*/}"
admin_url="${db_url%/*}/postgres$params"
if [ "$(psql "$admin_url" -tAc "select 1 from pg_database where datname = '$db_name'")" != 1 ]; then
  psql "$admin_url" -qc "create database \"$db_name\""
fi
"$bin/taskfleet-api" migrate

# Connector credentials are sealed with this key; it is made once and kept in var/.
if [ -z "${TASKFLEET_ENCRYPTION_KEY:-}" ]; then
  if [ ! -s var/encryption.key ]; then
    (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >var/encryption.key)
  fi
  TASKFLEET_ENCRYPTION_KEY=$(cat var/encryption.key)
  export TASKFLEET_ENCRYPTION_KEY
fi

demo=""
if [ -z "${TASKFLEET_GITHUB_CLIENT_ID:-}${TASKFLEET_ATLASSIAN_CLIENT_ID:-}${TASKFLEET_GOOGLE_CLIENT_ID:-}" ]; then
  demo="${TASKFLEET_FAKE_PROVIDERS_ADDR:-127.0.0.1:9180}"
  fake="http://$demo"
  nohup "$bin/taskfleet-fake-providers" --addr "$demo" --demo >var/log/fake-providers.log 2>&1 &
  echo $! >var/run/fake-providers.pid
  export TASKFLEET_GITHUB_API_URL="$fake/github/api" TASKFLEET_GITHUB_OAUTH_URL="$fake/github"
  export TASKFLEET_ATLASSIAN_API_URL="$fake/atlassian/api" TASKFLEET_ATLASSIAN_AUTH_URL="$fake/atlassian/auth"
  export TASKFLEET_GOOGLE_API_URL="$fake/google/api" TASKFLEET_GOOGLE_AUTH_URL="$fake/google/accounts"
  export TASKFLEET_GOOGLE_TOKEN_URL="$fake/google/token" TASKFLEET_ALLOW_LOCAL_SITES=true
  for provider in GITHUB ATLASSIAN GOOGLE; do
    export "TASKFLEET_${provider}_CLIENT_ID=taskfleet-fake-client"
    export "TASKFLEET_${provider}_CLIENT_SECRET=taskfleet-fake-secret"
  done
fi

# The example allow list of executor commands, installed by `make tools`.
export TASKFLEET_EXECUTOR_TOOLS="${TASKFLEET_EXECUTOR_TOOLS:-$PWD/var/executor-tools.toml}"
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

connected=""
if [ -n "$demo" ]; then
  # Each demo connector goes through OAuth as a person's would: create it, open its
  # authorize_url (the fake approves at once and redirects), follow the redirect to the
  # API's callback, which connects it and enqueues its first ingest.
  for provider in github jira confluence gmail gdrive; do
    answer=$(curl -fsS -X POST "$url/v1/connectors" -H "Authorization: Bearer $key" \
      -H 'content-type: application/json' -d "{\"provider\":\"$provider\"}")
    authorize=$(printf '%s' "$answer" | grep -o '"authorize_url":"[^"]*"' | cut -d'"' -f4)
    callback=$(curl -fsS -o /dev/null -w '%{redirect_url}' "$authorize")
    curl -fsS -o /dev/null "$callback" && connected="$connected $provider"
  done
fi

focus=""
if [ -n "$connected" ]; then
  # The first ingests embed their tasks (the local model), mark the bug filed twice as one,
  # and rank them: wait until nothing is left to ingest, embed or rank, then show today.
  for _ in $(seq 240); do
    pending=$(curl -fsS "$url/v1/queues" -H "Authorization: Bearer $key" | python3 -c '
import json, sys
queues = {q["name"]: q["depth"] for q in json.load(sys.stdin)["queues"]}
print(sum(queues[name][state] for name in ("ingest", "embed", "agent")
          for state in ("scheduled", "queued", "running", "retrying")))' 2>/dev/null || echo 1)
    if [ "$pending" = 0 ]; then
      focus=$(curl -fsS "$url/v1/tasks?horizon=today" -H "Authorization: Bearer $key" |
        python3 -c 'import json,sys; [print("    %d. %s (%s; %s)" % (t["rank"], t["title"], t["source_kind"], t["reason"])) for t in json.load(sys.stdin)["tasks"]]' 2>/dev/null || true)
      [ -n "$focus" ] && break
    fi
    sleep 0.5
  done
fi

cat <<MSG
taskfleet is running (api + 2 workers; logs in var/log, stop with 'make down').
  Dashboard:    $url/dashboard   (sign in with the operator key, or the API key)
  API:          $url/v1
  Swagger UI:   $url/docs
  OpenAPI:      $url/openapi.json
  Metrics:      $url/metrics, http://127.0.0.1:9101/metrics, http://127.0.0.1:9102/metrics
  API key:      $key   (tenant ${TASKFLEET_TENANT:-demo})
  Operator key: $ops_key   (sees every tenant, the workers, queue pauses)
MSG
if [ -n "$demo" ]; then
  cat <<MSG
  Demo:         connectors${connected:- (none: see var/log/api.log)} connected through OAuth to
                local fake providers at http://$demo (no account needed); their items:
                curl -s $url/v1/tasks -H "Authorization: Bearer $key"
                Set TASKFLEET_{GITHUB,ATLASSIAN,GOOGLE}_CLIENT_ID/_SECRET to use real providers.
MSG
fi
if [ -n "$focus" ]; then
  cat <<MSG
  Today:        embedded on this machine, deduplicated and ranked (also week, month, past7d):
                curl -s '$url/v1/tasks?horizon=today' -H "Authorization: Bearer $key"
$focus
MSG
fi
cat <<MSG

Try it:
  curl -s -X POST $url/v1/jobs -H "Authorization: Bearer $key" \\
       -H 'content-type: application/json' -d '{"kind":"executor.run","tool":"noop"}'
  # A linter in the sandbox (the allow list: $TASKFLEET_EXECUTOR_TOOLS):
  curl -s -X POST $url/v1/jobs -H "Authorization: Bearer $key" \\
       -H 'content-type: application/json' \\
       -d '{"kind":"executor.run","tool":"ruff.check","files":{"app.py":"import os\\n"}}'
  curl -s $url/v1/executor/tools -H "Authorization: Bearer $key"

The command line ($bin/taskfleet; \`taskfleet --help\` lists the commands):
  export TASKFLEET_URL=$url TASKFLEET_KEY=$key   # or once: taskfleet login
  $bin/taskfleet submit executor.run --tool sleep --arg ms=3000 --wait
  $bin/taskfleet tasks
  TASKFLEET_KEY=$ops_key $bin/taskfleet top
MSG
