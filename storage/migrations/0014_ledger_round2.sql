-- Ledger round 2 (issue 23): future work out of the dispatcher's path, stalls counted,
-- cancellations the leader can find again. Stop the whole fleet for this upgrade: an older
-- dispatcher's statements match none of the new indexes and would read the whole table every
-- round. On a large ledger, build the three indexes below beforehand by hand, each with
-- `CREATE INDEX CONCURRENTLY` and the same name and definition, and drop `jobs_ready` with
-- `DROP INDEX CONCURRENTLY`: this migration then finds them and builds nothing (otherwise it
-- holds a lock on `jobs` while it builds).

-- Only `queued` jobs are ready now. `scheduled` and `retrying` jobs wait in an index of their
-- own, by `run_at`, until the dispatcher moves the ones that fell due into `queued`: with a
-- million jobs set for tomorrow, the ready index no longer holds them, and the earliest
-- `run_at` is its first entry.
DROP INDEX IF EXISTS jobs_ready;
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (queue, tenant_id, priority DESC, run_at, id)
    WHERE dispatched_at IS NULL AND state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs (run_at)
    WHERE state IN ('scheduled', 'retrying');

-- How many times the job's worker went silent while running it (its lease lapsed); a job
-- that stalls too often is dead, so one that kills its process cannot take worker after
-- worker down with it.
ALTER TABLE jobs ADD COLUMN stalls integer NOT NULL DEFAULT 0;

-- Unfinished jobs whose cancellation was asked: the leader signals their workers again until
-- they stop, in case the first signal was lost.
CREATE INDEX IF NOT EXISTS jobs_cancel_requested ON jobs (id)
    WHERE cancel_requested_at IS NOT NULL
      AND state IN ('scheduled', 'queued', 'retrying', 'running');
