-- The job cleaner deletes events that belong to no job (the fleet's own, queue pauses, a
-- schedule's skipped slots) once the longest retention has passed, oldest first. This index
-- holds them alone, by time, so each batch reads one range of it and stops there. On a large
-- ledger, build it by hand first with CREATE INDEX CONCURRENTLY: this migration then finds it.
CREATE INDEX IF NOT EXISTS job_events_without_job ON job_events (ts) WHERE job_id IS NULL;
