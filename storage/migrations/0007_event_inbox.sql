-- Events are written once into `job_events` with their `seq`, instead of being inserted
-- without one and then updated (a non-HOT update through every index of the table, for
-- every event). State changes append to `job_events_pending`, narrow and indexed only by
-- id; the sequencer moves committed rows from there into `job_events`, numbering them as it
-- goes (ADR 0004, ADR 0007). Stop the whole fleet for this upgrade: older binaries cannot
-- write events once it has run.

-- Writers and an older sequencer wait until the move below is done, so no event committed
-- meanwhile is deleted uncopied or numbered twice.
LOCK TABLE job_events IN EXCLUSIVE MODE;

CREATE TABLE job_events_pending (
    id         bigint PRIMARY KEY DEFAULT nextval('job_events_id_seq'),
    ts         timestamptz NOT NULL DEFAULT now(),
    tenant_id  uuid,
    job_id     uuid,
    queue      text,
    kind       text,
    event      text NOT NULL,
    actor      text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'
);
-- Rows live here for one sequencer round; vacuum it long before the default 20% of dead rows.
ALTER TABLE job_events_pending SET (autovacuum_vacuum_scale_factor = 0,
                                    autovacuum_vacuum_threshold = 10000);

INSERT INTO job_events_pending (id, ts, tenant_id, job_id, queue, kind, event, actor, details)
    SELECT id, ts, tenant_id, job_id, queue, kind, event, actor, details
    FROM job_events WHERE seq IS NULL;
DELETE FROM job_events WHERE seq IS NULL;

-- `id` stays as the event's insertion number, for the record; `seq` is the key readers use.
ALTER TABLE job_events ALTER COLUMN id DROP DEFAULT;
ALTER SEQUENCE job_events_id_seq OWNED BY job_events_pending.id;
ALTER TABLE job_events DROP CONSTRAINT job_events_pkey;
ALTER TABLE job_events ALTER COLUMN seq SET NOT NULL;
DROP INDEX job_events_unsequenced;

-- Every event, numbered or still waiting for its number (then `seq` is null), in `id` order
-- per job: what an operator (or a test) reads to see all that happened, streamed or not.
CREATE VIEW all_job_events AS
    SELECT id, seq, ts, tenant_id, job_id, queue, kind, event, actor, details FROM job_events
    UNION ALL
    SELECT id, NULL::bigint, ts, tenant_id, job_id, queue, kind, event, actor, details
    FROM job_events_pending;
