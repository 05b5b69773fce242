-- The audit log (issue 25): who created or revoked a key, paused a queue, changed a schedule,
-- a connector, a budget or an LLM provider, or retried a job by hand. Written only for a
-- change that happened; read by operators at `GET /v1/audit`, newest first; deleted by the
-- job cleaner once the longest job retention has passed.
CREATE TABLE audit_events (
    -- UUIDv7: id order is time order, which paging uses (as jobs and schedules do).
    id               uuid PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    -- The tenant acted upon; none for the fleet's own settings (queue pauses).
    tenant_id        uuid REFERENCES tenants (id),
    -- The acting API key as `keys list` shows it (`tfk_ab12cd34…`), or `cli:<user>`.
    actor            text NOT NULL,
    -- The acting key's tenant; none from the command line.
    actor_tenant_id  uuid REFERENCES tenants (id),
    -- A stable code (`queue.paused`, `budget.changed`, …): `AuditAction` in the jobs crate.
    action           text NOT NULL,
    -- The id or name acted on.
    target           text NOT NULL,
    -- A few facts worth keeping (a budget's old and new value); never a secret.
    detail           jsonb NOT NULL DEFAULT '{}'
);

-- A tenant's events, newest first (the primary key pages every tenant's).
CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, id);
-- The cleaner's oldest first.
CREATE INDEX audit_events_by_time ON audit_events (at);
