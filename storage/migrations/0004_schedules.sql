-- Schedules and their firings. A firing is unique per (schedule_id, fire_at): however many
-- schedulers or `schedule.fire` deliveries race, one target job per slot.

CREATE TABLE schedules (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          text NOT NULL,
    -- The job each firing creates: a JobSpec, `kind` included.
    target        jsonb NOT NULL,
    cron          text,
    time_zone     text,
    at            timestamptz,
    missed        text NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'catch_up_once')),
    paused        boolean NOT NULL DEFAULT false,
    -- The next slot to fire; NULL once a one-shot schedule has fired.
    next_fire_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    CHECK ((cron IS NULL) <> (at IS NULL))
);

CREATE INDEX schedules_due ON schedules (next_fire_at)
    WHERE NOT paused AND next_fire_at IS NOT NULL;

CREATE TABLE schedule_firings (
    schedule_id  uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at      timestamptz NOT NULL,
    job_id       uuid NOT NULL,
    -- Fired late, once, for slots missed while no scheduler ran.
    catch_up     boolean NOT NULL DEFAULT false,
    fired_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_at)
);
