-- The chat agent: each tenant's own LLM provider, conversations and their messages, and the
-- monthly token budgets that every LLM call is reserved against.

-- A tenant's own LLM provider (bring your own key). The key is sealed as connector
-- credentials are (storage/src/sealing.rs), bound to the tenant; NULL for a local server
-- that takes none.
CREATE TABLE llm_providers (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id),
    base_url    text NOT NULL,
    model       text NOT NULL,
    api_key     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- An operator's override of the fleet's monthly token budget for one tenant, and when a chat
-- call last did not fit in the budget, under which limit: from then until the month ends (or
-- the limit in force changes), new chat jobs are refused at the door.
ALTER TABLE tenants ADD COLUMN llm_monthly_tokens bigint CHECK (llm_monthly_tokens >= 0),
                    ADD COLUMN llm_budget_refused_at timestamptz,
                    ADD COLUMN llm_budget_refused_limit bigint;

-- Tokens held for LLM calls in flight: a call reserves its most before it is sent and
-- settles (deletes its reservation, records its usage) after. A worker that dies mid-call
-- leaves a reservation that stops counting when it expires.
CREATE TABLE llm_reservations (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    job_id      uuid,
    tokens      bigint NOT NULL CHECK (tokens >= 0),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX llm_reservations_tenant ON llm_reservations (tenant_id, expires_at);

-- `llm_usage.purpose` is the call's kind: `prioritise`, `chat`, `embed`, `test`.

-- A conversation's id is the id of the agent.chat job that started it.
CREATE TABLE conversations (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    title       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversations_tenant ON conversations (tenant_id, updated_at DESC, id DESC);

-- One row per user message and per reply; a reply keeps the tool calls it made, with their
-- arguments and results. A job writes its two rows once, however often it runs.
CREATE TABLE chat_messages (
    id               bigserial PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    tenant_id        uuid NOT NULL,
    job_id           uuid NOT NULL,
    role             text NOT NULL CHECK (role IN ('user', 'assistant')),
    content          text NOT NULL,
    -- [{name, arguments, result}] in the order they were made.
    tool_calls       jsonb NOT NULL DEFAULT '[]',
    model            text,
    input_tokens     bigint NOT NULL DEFAULT 0,
    output_tokens    bigint NOT NULL DEFAULT 0,
    at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, role)
);
CREATE INDEX chat_messages_conversation ON chat_messages (conversation_id, id);
