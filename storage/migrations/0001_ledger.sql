-- The job ledger: tenants and their API keys, jobs, and the append-only event log.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- SHA-256 of the key: the key itself is shown once and never stored.
    key_hash    bytea NOT NULL UNIQUE,
    -- The first characters of the key, so an operator can tell keys apart.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE jobs (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    queue          text NOT NULL,
    kind           text NOT NULL,
    payload        jsonb NOT NULL,
    state          text NOT NULL CHECK (state IN
                     ('scheduled', 'queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    priority       smallint NOT NULL DEFAULT 0,
    attempt        integer NOT NULL DEFAULT 0,
    max_attempts   integer NOT NULL CHECK (max_attempts >= 1),
    run_at         timestamptz NOT NULL,
    -- Set while the job sits in its queue's Redis window; cleared when it leaves the window.
    dispatched_at  timestamptz,
    -- Fencing token: raised by every start; a write naming an older epoch changes nothing.
    lease_epoch    bigint NOT NULL DEFAULT 0,
    worker         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    result         jsonb,
    error          text,
    -- One entry per failed attempt: {attempt, error, at}.
    attempt_errors jsonb NOT NULL DEFAULT '[]'
);

-- Listing a tenant's jobs newest first (ids are UUIDv7, so time-ordered).
CREATE INDEX jobs_tenant_id ON jobs (tenant_id, id DESC);
-- The dispatcher's view: due work not yet in Redis, per queue and tenant, in priority order.
CREATE INDEX jobs_ready ON jobs (queue, tenant_id, priority DESC, run_at, id)
    WHERE dispatched_at IS NULL AND state IN ('scheduled', 'queued', 'retrying');
-- The Redis window of each queue: dispatched, not yet started.
CREATE INDEX jobs_window ON jobs (queue, dispatched_at)
    WHERE state = 'queued' AND dispatched_at IS NOT NULL;

CREATE TABLE job_events (
    id         bigserial PRIMARY KEY,
    ts         timestamptz NOT NULL DEFAULT now(),
    tenant_id  uuid NOT NULL,
    job_id     uuid,
    event      text NOT NULL,
    actor      text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX job_events_job ON job_events (job_id, id);
CREATE INDEX job_events_tenant ON job_events (tenant_id, id);
