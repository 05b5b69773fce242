-- A statement's events wait for their `seq` as one row, not one row each (ADR 0004, ADR 0007).
-- Every state change appended each of its events to `job_events_pending` as a row of its own
-- (a heap tuple and a primary-key entry), and the sequencer deleted each again: per event,
-- two writes that only carried it to `job_events`. Now a statement appends one row holding
-- all its events as an array, in the order of their ids, and the sequencer unnests it. Stop
-- the whole fleet for this upgrade: older binaries cannot write events once it has run.

-- Writers and an older sequencer wait until the move below is done.
LOCK TABLE job_events_pending IN EXCLUSIVE MODE;

-- One event waiting for its `seq`. `id` is its insertion number, from `job_events_id_seq`,
-- so a job's events keep the order in which they happened.
CREATE TYPE job_event_entry AS (
    id         bigint,
    tenant_id  uuid,
    job_id     uuid,
    queue      text,
    kind       text,
    event      text,
    actor      text,
    details    jsonb
);

CREATE TABLE job_event_batches (
    id       bigint PRIMARY KEY DEFAULT nextval('job_events_id_seq'),
    -- The writing transaction's time, as each event's `ts` was before.
    ts       timestamptz NOT NULL DEFAULT now(),
    -- How many entries: the sequencer sizes its rounds without reading the arrays. (Purging
    -- a job may leave a batch empty; the sequencer then just deletes it.)
    n        integer NOT NULL,
    entries  job_event_entry[] NOT NULL
);
-- Large arrays go to TOAST uncompressed: a batch lives for one sequencer round, so
-- compressing it would only spend CPU.
ALTER TABLE job_event_batches ALTER COLUMN entries SET STORAGE EXTERNAL;
-- Rows live here for one sequencer round; vacuum it long before the default 20% of dead rows.
ALTER TABLE job_event_batches SET (autovacuum_vacuum_scale_factor = 0,
                                   autovacuum_vacuum_threshold = 1000);

INSERT INTO job_event_batches (id, ts, n, entries)
    SELECT id, ts, 1,
           ARRAY[ROW(id, tenant_id, job_id, queue, kind, event, actor, details)::job_event_entry]
    FROM job_events_pending;

DROP VIEW all_job_events;
ALTER SEQUENCE job_events_id_seq OWNED BY job_event_batches.id;
DROP TABLE job_events_pending;

-- Every event, numbered or still waiting for its number (then `seq` is null), in `id` order
-- per job: what an operator (or a test) reads to see all that happened, streamed or not.
CREATE VIEW all_job_events AS
    SELECT id, seq, ts, tenant_id, job_id, queue, kind, event, actor, details FROM job_events
    UNION ALL
    SELECT e.id, NULL::bigint, b.ts, e.tenant_id, e.job_id, e.queue, e.kind, e.event, e.actor,
           e.details
    FROM job_event_batches b, unnest(b.entries) AS e;
