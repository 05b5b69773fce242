-- Observability: key roles, queue pauses, the worker registry, request ids on jobs.

-- `operator` keys see every tenant, pause queues and list workers; `tenant` keys see their own.
ALTER TABLE api_keys
    ADD COLUMN role text NOT NULL DEFAULT 'tenant' CHECK (role IN ('tenant', 'operator'));

-- A row per paused queue: its jobs are accepted but none starts until it is resumed.
CREATE TABLE queue_pauses (
    queue      text PRIMARY KEY,
    paused_at  timestamptz NOT NULL DEFAULT now(),
    paused_by  text NOT NULL
);

-- Every worker process start, kept after it stops so the dashboard shows history.
CREATE TABLE workers (
    name          text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    queues        text[] NOT NULL,
    -- {queue: jobs at once}
    concurrency   jsonb NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    processed     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0
);

-- The request that created a job, so its logs and the API's can be joined.
ALTER TABLE jobs ADD COLUMN request_id text;

-- Queue statistics read jobs finished in the last minutes.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
