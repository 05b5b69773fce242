-- Retention and bounded statistics (ADR 0013). One index serves the job cleaner (each
-- state's oldest finished jobs first), the statistics' window of recent finishes, and their
-- exact count of live jobs (a state range, with the queue and tenant read from the index).
-- It replaces `jobs_finished` (finished_at alone), whose scan for one state's old jobs read
-- past every other state's retained ones. On a large ledger, build it by hand first with
-- CREATE INDEX CONCURRENTLY: this migration then finds it and only drops the old index.
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, finished_at) INCLUDE (queue, tenant_id);
DROP INDEX IF EXISTS jobs_finished;
