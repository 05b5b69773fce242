-- Connectors (a tenant's connected SaaS accounts, their sealed credentials and sync
-- cursors), the OAuth states of connections under way, and tasks: the work items that
-- ingests bring in, one row per item however often it is seen.

CREATE TABLE connectors (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    provider           text NOT NULL
                         CHECK (provider IN ('github', 'jira', 'confluence', 'gmail', 'gdrive')),
    name               text NOT NULL,
    -- Settings that are not secret: `site_url`, `cloud_id`.
    config             jsonb NOT NULL DEFAULT '{}',
    -- `oauth`, or `token` (a personal access token or an API token).
    auth               text NOT NULL CHECK (auth IN ('oauth', 'token')),
    status             text NOT NULL
                         CHECK (status IN ('pending_auth', 'connected', 'error', 'reauth_required')),
    status_message     text,
    -- Sealed with AES-256-GCM (storage/src/sealing.rs), bound to the tenant and connector.
    credentials        text,
    -- Where the next ingest resumes; the provider's own shape.
    cursor             jsonb,
    last_sync_at       timestamptz,
    last_test_at       timestamptz,
    last_test_ok       boolean,
    last_test_message  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);

CREATE TABLE oauth_states (
    -- SHA-256 of the state: while it lives, the state authenticates its callback.
    state_hash     bytea PRIMARY KEY,
    tenant_id      uuid NOT NULL,
    connector_id   uuid NOT NULL REFERENCES connectors (id) ON DELETE CASCADE,
    provider       text NOT NULL,
    -- The PKCE verifier, sealed like credentials.
    pkce_verifier  text NOT NULL,
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz
);

CREATE TABLE tasks (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    -- The provider (`github`, `gmail`, ...) and its id for the item.
    source_kind        text NOT NULL,
    source_ref         text NOT NULL,
    -- The connector that last brought it.
    connector_id       uuid REFERENCES connectors (id) ON DELETE SET NULL,
    title              text NOT NULL,
    snippet            text NOT NULL DEFAULT '',
    url                text,
    due_at             timestamptz,
    labels             text[] NOT NULL DEFAULT '{}',
    status             text NOT NULL CHECK (status IN ('open', 'done')),
    horizon            text NOT NULL CHECK (horizon IN ('today', 'week', 'month')),
    -- When the provider last saw the item change.
    source_updated_at  timestamptz,
    -- SHA-256 of what gets embedded (title and snippet): when it changes, the task is
    -- embedded again.
    content_hash       bytea NOT NULL,
    -- Its connector was deleted: the task stays, marked as coming from a removed source.
    source_removed_at  timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, source_kind, source_ref)
);

-- A tenant's tasks newest first (ids are UUIDv7).
CREATE INDEX tasks_tenant ON tasks (tenant_id, id DESC);
-- Counting a connector's items; marking them when it is deleted.
CREATE INDEX tasks_connector ON tasks (connector_id);

-- A connector's ingest or test waiting in the ledger: asking again returns it.
CREATE INDEX jobs_waiting_for_connector ON jobs (tenant_id, kind, (payload ->> 'connector_id'))
    WHERE state IN ('scheduled', 'queued', 'retrying')
      AND kind IN ('ingest.connector', 'test.connector');
