-- The storage crate's statements are checked at compile time (sqlx's query macros), and a
-- macro takes one literal text: what statements shared by splicing strings into each other
-- is written here once instead.

-- An event a statement appends, before it has its insertion number.
CREATE TYPE job_event_input AS (
    tenant_id  uuid,
    job_id     uuid,
    queue      text,
    kind       text,
    event      text,
    actor      text,
    details    jsonb
);

-- The `job_event_batches` row holding `events`: each numbered from `job_events_id_seq` in
-- array order, so a statement that lists a job's events in the order they happened keeps it.
-- No row when there are none. A statement appends its events with
--   INSERT INTO job_event_batches (n, entries)
--   SELECT n, entries FROM job_event_batch(ARRAY(SELECT ROW(...)::job_event_input ...))
-- `event` and `actor` must not be null: `job_events` refuses a null there, and the sequencer
-- would then stop at that batch.
CREATE FUNCTION job_event_batch(events job_event_input[])
RETURNS TABLE (n integer, entries job_event_entry[])
LANGUAGE sql VOLATILE AS $$
    SELECT count(*)::integer,
           array_agg(ROW(e.id, e.tenant_id, e.job_id, e.queue, e.kind, e.event, e.actor,
                         COALESCE(e.details, '{}'))::job_event_entry ORDER BY e.id)
    FROM (SELECT nextval('job_events_id_seq') AS id, u.* FROM unnest(events) AS u) AS e
    HAVING count(*) > 0
$$;

-- The queues a pause holds back. A statement tests a job with
--   NOT ((SELECT cardinality(paused_queues()) > 0)
--        AND queue = ANY ((SELECT paused_queues())::text[])
--        AND tenant_id IS DISTINCT FROM (SELECT system_tenant_id()))
-- Each part is an init plan, read once per statement rather than once a row. The first also
-- tells the planner the check seldom holds: without it, the planner took the pause check for
-- a selective one and read each tenant's whole backlog through another index. The fleet's own
-- tenant is exempt, so `/readyz` still tells whether workers run while a queue is paused.
CREATE FUNCTION paused_queues() RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(array_agg(queue), '{}') FROM queue_pauses
$$;

CREATE FUNCTION system_tenant_id() RETURNS uuid
LANGUAGE sql STABLE AS $$
    SELECT id FROM tenants WHERE name = '_system'
$$;
