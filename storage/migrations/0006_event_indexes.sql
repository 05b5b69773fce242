-- Readers of the event log go by `seq` ((tenant_id, seq) and (job_id, seq) serve them, and
-- the purge of a job's events); these two id-ordered indexes served nobody, yet every event
-- paid for them twice: at its insert and at its sequencing update.
DROP INDEX job_events_job;
DROP INDEX job_events_tenant;
