-- Idempotent submission and cancellation of running jobs.

ALTER TABLE jobs
    ADD COLUMN idempotency_key text,
    -- Set when a running job is asked to stop; its worker (or the reclaimer) ends it cancelled.
    ADD COLUMN cancel_requested_at timestamptz;

-- One job per tenant and key while the key is retained (housekeeping clears old keys).
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The reclaimer's view: running jobs and their fencing epochs.
CREATE INDEX jobs_running ON jobs (started_at) WHERE state = 'running';
