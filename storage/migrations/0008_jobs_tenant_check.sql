-- A job's tenant must exist, as before, but checked once per statement instead of once per
-- row: the foreign key ran a `SELECT … FOR KEY SHARE` on `tenants` for every inserted job,
-- about a sixth of Postgres's time in batch submissions (ADR 0007). The triggers keep what
-- the key guaranteed: no job names a missing tenant (the check locks each tenant it finds,
-- as the key did, so a concurrent delete waits and then sees the job), a job's tenant never
-- changes, and a tenant with jobs is neither deleted nor truncated (nothing deletes tenants
-- today).
ALTER TABLE jobs DROP CONSTRAINT jobs_tenant_id_fkey;

CREATE FUNCTION jobs_name_existing_tenants() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named bigint;
    found bigint;
BEGIN
    SELECT count(DISTINCT tenant_id) INTO named FROM new_jobs;
    SELECT count(*) INTO found FROM (
        SELECT 1 FROM tenants WHERE id IN (SELECT tenant_id FROM new_jobs) FOR KEY SHARE
    ) AS locked;
    IF found <> named THEN
        RAISE foreign_key_violation USING MESSAGE = 'a job names a tenant that does not exist';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_name_existing_tenants AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_name_existing_tenants();

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE restrict_violation USING MESSAGE = TG_ARGV[0];
END
$$;
-- Column triggers fire only for updates that set the column, so the ledger's own updates
-- (which never do) pay nothing.
CREATE TRIGGER jobs_keep_tenant BEFORE UPDATE OF tenant_id ON jobs
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION refuse_change('a job''s tenant never changes');
CREATE TRIGGER tenants_keep_id BEFORE UPDATE OF id ON tenants
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION refuse_change('a tenant''s id never changes');

-- After tenants are deleted or truncated, no job may name one that is gone. Deleting tenants
-- is rare and done by hand (nothing does it today), so reading every job's tenant is fine.
CREATE FUNCTION tenants_keep_their_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM jobs j
               WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = j.tenant_id)) THEN
        RAISE foreign_key_violation USING MESSAGE = 'a tenant with jobs cannot be removed';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tenants_deleted_keep_their_jobs AFTER DELETE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenants_keep_their_jobs();
CREATE TRIGGER tenants_truncated_keep_their_jobs AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION tenants_keep_their_jobs();
