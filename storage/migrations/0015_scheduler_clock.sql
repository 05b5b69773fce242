-- When a scheduler last ran (ADR 0005), so a leader taking over can tell slots no scheduler
-- was there for (missed) from slots that were merely late (fired however late). One row,
-- rewritten about once a second while a scheduler runs.
CREATE TABLE scheduler_clock (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    -- Schedulers have run without a break from this instant...
    running_since  timestamptz NOT NULL,
    -- ...to at least this one.
    beat_at        timestamptz NOT NULL
);

-- A round pages through due schedules by (next_fire_at, id): thousands can share one slot.
DROP INDEX schedules_due;
CREATE INDEX schedules_due ON schedules (next_fire_at, id)
    WHERE NOT paused AND next_fire_at IS NOT NULL;
