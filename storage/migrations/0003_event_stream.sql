-- The event log as a stream: every event carries its job's queue and kind for filtering, and
-- a dense, gap-free `seq` assigned after commit by the leader's sequencer. Streams and
-- `Last-Event-ID` use `seq`; an event without one is not visible to streams yet.

ALTER TABLE job_events
    ADD COLUMN queue text,
    ADD COLUMN kind text,
    ADD COLUMN seq bigint UNIQUE,
    -- Fleet events (worker_online, worker_offline) belong to no tenant.
    ALTER COLUMN tenant_id DROP NOT NULL;

CREATE INDEX job_events_unsequenced ON job_events (id) WHERE seq IS NULL;
CREATE INDEX job_events_tenant_seq ON job_events (tenant_id, seq);
CREATE INDEX job_events_job_seq ON job_events (job_id, seq);

ALTER TABLE jobs
    ADD COLUMN progress_percent real,
    ADD COLUMN progress_message text;
