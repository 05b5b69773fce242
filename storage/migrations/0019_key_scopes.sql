-- Key scopes and lifetimes: a `read` key reads its tenant's jobs, events and schedules but
-- changes nothing; a key may expire; when a key was last used is kept (to the minute) so an
-- operator can retire keys nobody uses.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_role_check CHECK (role IN ('tenant', 'read', 'operator')),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN last_used_at timestamptz;
