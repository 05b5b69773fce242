-- The leader's loops wait for Postgres to tell them something changed instead of polling
-- (ADR 0007). Notifications are delivered when the writing transaction commits, never when
-- it rolls back, and Postgres folds identical ones within a transaction into one.

-- Notifies the channel the trigger names.
CREATE FUNCTION notify_channel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END $$;

-- Every statement that appends a batch of events wakes the sequencer, which polled every
-- 10 ms: an idle fleet's Postgres ran a hundred transactions a second for it.
CREATE TRIGGER job_event_batches_appended
    AFTER INSERT ON job_event_batches
    FOR EACH STATEMENT EXECUTE FUNCTION notify_channel('taskfleet_events_appended');

-- A schedule created, changed, paused or deleted, or a queue paused or resumed, wakes the
-- scheduler, which otherwise sleeps until the next slot is due (it polled every 100 ms).
CREATE TRIGGER schedules_changed
    AFTER INSERT OR UPDATE OR DELETE ON schedules
    FOR EACH STATEMENT EXECUTE FUNCTION notify_channel('taskfleet_schedules_changed');

CREATE TRIGGER queue_pauses_changed
    AFTER INSERT OR DELETE ON queue_pauses
    FOR EACH STATEMENT EXECUTE FUNCTION notify_channel('taskfleet_schedules_changed');
