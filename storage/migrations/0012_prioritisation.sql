-- Embeddings and prioritisation: what the embed and agent queues record on tasks, tasks
-- typed by hand, the history that undo reads, and the tenant's time zone (a due date is
-- "today" in it).

ALTER TABLE tenants ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';

ALTER TABLE tasks
    -- The text last embedded (its content_hash then) and the embedder that did it: a task
    -- is embedded again when either changes.
    ADD COLUMN embedded_hash        bytea,
    ADD COLUMN embedded_with        text,
    ADD COLUMN embedded_at          timestamptz,
    -- An older open task this one repeats (cosine similarity at least the threshold):
    -- it leaves the ranked lists and points there instead.
    ADD COLUMN duplicate_of         uuid REFERENCES tasks (id) ON DELETE SET NULL,
    ADD COLUMN duplicate_similarity real,
    -- The prioritiser's signals, each in [0, 1], their weighted sum, and the place it gave.
    ADD COLUMN urgency              real,
    ADD COLUMN importance           real,
    ADD COLUMN recency              real,
    ADD COLUMN source_signal        real,
    ADD COLUMN priority             real,
    ADD COLUMN rank                 integer,
    ADD COLUMN reason               text,
    -- `formula`, or the name of the model that ranked it.
    ADD COLUMN ranked_by            text,
    ADD COLUMN ranked_at            timestamptz,
    ADD COLUMN completed_at         timestamptz;

-- A task typed by hand has source_kind 'manual' and its own id as source_ref.

-- Every status change of a task, newest last: undo returns to the status before the last.
CREATE TABLE task_events (
    id            bigserial PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    task_id       uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL DEFAULT now(),
    -- `created`, `updated`, `completed`, `reopened`, `undone`.
    kind          text NOT NULL,
    status_before text,
    status_after  text NOT NULL,
    -- The API key's tenant or the worker that changed it.
    actor         text NOT NULL
);
CREATE INDEX task_events_task ON task_events (task_id, id DESC);

-- The focus lists: a tenant's open, original tasks of a horizon in rank order.
CREATE INDEX tasks_focus ON tasks (tenant_id, horizon, rank)
    WHERE status = 'open' AND duplicate_of IS NULL;
-- Work done lately (`past7d`).
CREATE INDEX tasks_completed ON tasks (tenant_id, completed_at DESC) WHERE status = 'done';

-- Tokens every LLM call spent, per tenant (the chat issue enforces budgets on them).
CREATE TABLE llm_usage (
    id             bigserial PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    job_id         uuid,
    model          text NOT NULL,
    -- `prioritise`, later `chat`.
    purpose        text NOT NULL,
    input_tokens   bigint NOT NULL,
    output_tokens  bigint NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_usage_tenant ON llm_usage (tenant_id, at);

-- An agent.prioritise waiting for a tenant: a finished embed job asks for one only when
-- none waits.
CREATE INDEX jobs_waiting_prioritise ON jobs (tenant_id)
    WHERE kind = 'agent.prioritise' AND state IN ('scheduled', 'queued', 'retrying');
