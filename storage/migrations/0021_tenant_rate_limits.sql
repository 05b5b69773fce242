-- A tenant's own API rate limits (issue 25), set by an operator at
-- `PUT /v1/tenants/{tenant}/rate-limits`: one row per tenant that has any, a column per class
-- of route written as `TASKFLEET_RATE_LIMIT_*` is (`500/s:1000`, `off`), checked by the API's
-- parser before it is stored. Null is the fleet's default for that class; a tenant back on
-- the defaults everywhere has no row. API processes read the whole table every few seconds.
CREATE TABLE tenant_rate_limits (
    tenant_id   uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    submit      text,
    read        text,
    stream      text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(submit, read, stream) > 0)
);
