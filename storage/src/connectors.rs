//! Connectors: a tenant's connected SaaS accounts. Each row holds the provider, the settings,
//! the credentials sealed ([`crate::sealing`]), the status people see, the sync cursor and the
//! latest test. OAuth states of connections under way live beside them, single use. A
//! connector becomes `connected` in the same transaction that enqueues its first ingest, so
//! none is ever connected without one; it is created and deleted in the same transaction as
//! the audit log's record of it.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use taskfleet_jobs::{
    AuditAction, JobSpec,
    spec::{EmbedItems, IngestConnector, MAX_EMBED_ITEMS, TestConnector},
};
use uuid::Uuid;

use crate::{
    InsertError, Inserted, JobRecord, Ledger, NewJob,
    audit::{Actor, AuditEntry, AuditLog},
    sealing::{OpenError, Sealer, connector_context},
    tenants::Scope,
};

/// How long an OAuth state may wait for its callback.
pub const OAUTH_STATE_TTL: chrono::Duration = chrono::Duration::minutes(10);

#[derive(Debug, Clone)]
pub struct ConnectorRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub provider: String,
    pub name: String,
    pub config: Value,
    /// `oauth` or `token`.
    pub auth: String,
    /// `pending_auth`, `connected`, `error` or `reauth_required`.
    pub status: String,
    pub status_message: Option<String>,
    pub cursor: Option<Value>,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_test_at: Option<DateTime<Utc>>,
    pub last_test_ok: Option<bool>,
    pub last_test_message: Option<String>,
    /// Tasks it brought in.
    pub item_count: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A connector to create.
#[derive(Debug, Clone)]
pub struct NewConnector {
    /// Chosen by the caller, who seals the credentials for it.
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub provider: String,
    pub name: String,
    pub config: Value,
}

/// What [`Connectors::update`] changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ConnectorChange<'a> {
    pub name: Option<&'a str>,
    pub config: Option<&'a Value>,
    /// New credentials, sealed for the connector.
    pub sealed_credentials: Option<&'a str>,
}

/// An OAuth state waiting for its callback, as [`Connectors::take_oauth_state`] hands it back.
#[derive(Debug, Clone)]
pub struct OAuthState {
    pub tenant_id: Uuid,
    pub connector_id: Uuid,
    /// Sealed under [`oauth_state_context`].
    pub pkce_verifier: String,
}

/// A job a connector asked for, or the one already waiting.
#[derive(Debug, Clone)]
pub enum Requested {
    Created(JobRecord),
    Waiting(JobRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("a connector named `{0}` exists already")]
    NameTaken(String),
    #[error("no connector {0}")]
    NotFound(Uuid),
    /// Its status does not allow it (a test or sync of a connector that has no credentials).
    #[error("connector {id} is {status}: {hint}")]
    NotReady {
        id: Uuid,
        status: String,
        hint: &'static str,
    },
    #[error("could not enqueue the job: {0}")]
    Enqueue(String),
}

impl From<InsertError> for ConnectorError {
    fn from(err: InsertError) -> ConnectorError {
        match err {
            InsertError::Db(err) => ConnectorError::Db(err),
            other => ConnectorError::Enqueue(other.to_string()),
        }
    }
}

fn name_taken(err: sqlx::Error, name: &str) -> ConnectorError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            ConnectorError::NameTaken(name.to_owned())
        }
        _ => ConnectorError::Db(err),
    }
}

fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

/// Where an OAuth state's PKCE verifier belongs: the associated data it is sealed with.
pub fn oauth_state_context(connector_id: Uuid) -> String {
    format!("taskfleet/oauth-state/{connector_id}")
}

/// Which job a connector can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorJob {
    Ingest,
    Test,
}

impl ConnectorJob {
    fn spec(self, connector_id: Uuid) -> JobSpec {
        match self {
            ConnectorJob::Ingest => JobSpec::IngestConnector(IngestConnector {
                connector_id,
                options: Default::default(),
            }),
            ConnectorJob::Test => JobSpec::TestConnector(TestConnector {
                connector_id,
                options: Default::default(),
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Connectors {
    pool: PgPool,
}

impl Connectors {
    pub fn new(pool: PgPool) -> Connectors {
        Connectors { pool }
    }

    /// Creates a connector waiting for its OAuth callback, with the state that callback must
    /// bring back (valid [`OAUTH_STATE_TTL`], once), made by `by`.
    pub async fn create_pending(
        &self,
        new: &NewConnector,
        state: &str,
        sealed_verifier: &str,
        by: &Actor,
    ) -> Result<ConnectorRecord, ConnectorError> {
        let mut tx = self.pool.begin().await?;
        insert(&mut tx, new, "oauth", "pending_auth", None, by).await?;
        put_oauth_state(
            &mut tx,
            new.tenant_id,
            new.id,
            &new.provider,
            state,
            sealed_verifier,
        )
        .await?;
        let record = get_in(&mut tx, Scope::Tenant(new.tenant_id), new.id)
            .await?
            .ok_or(ConnectorError::NotFound(new.id))?;
        tx.commit().await?;
        Ok(record)
    }

    /// Creates a connector already connected with a personal or API token, and its first
    /// ingest, together, made by `by`.
    pub async fn create_connected(
        &self,
        new: &NewConnector,
        sealed_credentials: &str,
        request_id: Option<String>,
        by: &Actor,
    ) -> Result<(ConnectorRecord, JobRecord), ConnectorError> {
        let mut tx = self.pool.begin().await?;
        insert(
            &mut tx,
            new,
            "token",
            "connected",
            Some(sealed_credentials),
            by,
        )
        .await?;
        let job = enqueue_in(
            &mut tx,
            new.tenant_id,
            new.id,
            ConnectorJob::Ingest,
            request_id,
        )
        .await?;
        let record = get_in(&mut tx, Scope::Tenant(new.tenant_id), new.id)
            .await?
            .ok_or(ConnectorError::NotFound(new.id))?;
        tx.commit().await?;
        Ok((record, job))
    }

    /// A new OAuth state for an existing connector of the tenant (to connect it again).
    pub async fn renew_oauth_state(
        &self,
        tenant_id: Uuid,
        connector_id: Uuid,
        state: &str,
        sealed_verifier: &str,
    ) -> Result<ConnectorRecord, ConnectorError> {
        let mut tx = self.pool.begin().await?;
        let record = get_in(&mut tx, Scope::Tenant(tenant_id), connector_id)
            .await?
            .ok_or(ConnectorError::NotFound(connector_id))?;
        put_oauth_state(
            &mut tx,
            tenant_id,
            connector_id,
            &record.provider,
            state,
            sealed_verifier,
        )
        .await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Uses up an OAuth state: the connector it was made for, if the state is known, for
    /// `provider`, unexpired and unused. A second use finds nothing.
    pub async fn take_oauth_state(
        &self,
        provider: &str,
        state: &str,
    ) -> sqlx::Result<Option<OAuthState>> {
        sqlx::query_as!(
            OAuthState,
            "UPDATE oauth_states SET used_at = now()
             WHERE state_hash = $1 AND provider = $2 AND used_at IS NULL AND expires_at > now()
             RETURNING tenant_id, connector_id, pkce_verifier",
            state_hash(state),
            provider,
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Stores an OAuth grant's credentials and what connecting found (`config`), marks the
    /// connector connected and enqueues its ingest, in one transaction. `None` when the
    /// connector is gone.
    pub async fn complete_oauth(
        &self,
        tenant_id: Uuid,
        connector_id: Uuid,
        sealed_credentials: &str,
        config: &Value,
        request_id: Option<String>,
    ) -> Result<Option<(ConnectorRecord, JobRecord)>, ConnectorError> {
        let mut tx = self.pool.begin().await?;
        // The grant may be another account's or reach another site: the cursor of the old one
        // would skip the new one's items, so sweeps start over.
        let updated = sqlx::query!(
            "UPDATE connectors SET credentials = $3, config = $4, status = 'connected',
                    status_message = NULL, cursor = NULL, updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            connector_id,
            sealed_credentials,
            config,
        )
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(None);
        }
        let job = enqueue_in(
            &mut tx,
            tenant_id,
            connector_id,
            ConnectorJob::Ingest,
            request_id,
        )
        .await?;
        let record = get_in(&mut tx, Scope::Tenant(tenant_id), connector_id)
            .await?
            .ok_or(ConnectorError::NotFound(connector_id))?;
        tx.commit().await?;
        Ok(Some((record, job)))
    }

    pub async fn get(&self, scope: Scope, id: Uuid) -> sqlx::Result<Option<ConnectorRecord>> {
        get_in(&mut *self.pool.acquire().await?, scope, id).await
    }

    pub async fn list(&self, scope: Scope) -> sqlx::Result<Vec<ConnectorRecord>> {
        sqlx::query_as!(
            ConnectorRecord,
            r#"SELECT id, tenant_id, provider, name, config, auth, status, status_message, cursor,
                      last_sync_at, last_test_at, last_test_ok, last_test_message,
                      (SELECT count(*) FROM tasks t WHERE t.connector_id = connectors.id)
                          AS "item_count!",
                      created_at, updated_at
               FROM connectors
               WHERE ($1::uuid IS NULL OR tenant_id = $1) ORDER BY created_at, id"#,
            scope.tenant_id(),
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Renames a connector, replaces its settings, or replaces its token (which makes it
    /// `connected` again).
    pub async fn update(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        change: &ConnectorChange<'_>,
    ) -> Result<Option<ConnectorRecord>, ConnectorError> {
        // New credentials or another site may reach another account: sweeps start over.
        sqlx::query_as!(
            ConnectorRecord,
            r#"UPDATE connectors SET name = COALESCE($3, name), config = COALESCE($4, config),
                      credentials = COALESCE($5, credentials),
                      cursor = CASE WHEN $5 IS NOT NULL OR ($4 IS NOT NULL AND $4 IS DISTINCT FROM config)
                                    THEN NULL ELSE cursor END,
                      status = CASE WHEN $5 IS NULL THEN status ELSE 'connected' END,
                      status_message = CASE WHEN $5 IS NULL THEN status_message END,
                      updated_at = now()
               WHERE tenant_id = $1 AND id = $2
               RETURNING id, tenant_id, provider, name, config, auth, status, status_message,
                         cursor, last_sync_at, last_test_at, last_test_ok, last_test_message,
                         (SELECT count(*) FROM tasks t WHERE t.connector_id = connectors.id)
                             AS "item_count!",
                         created_at, updated_at"#,
            tenant_id,
            id,
            change.name,
            change.config,
            change.sealed_credentials,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(|err| name_taken(err, change.name.unwrap_or_default()))
    }

    /// Notes why connecting failed, leaving the status as it is (a connector without
    /// credentials stays `pending_auth`, one that had them keeps its status).
    pub async fn note_connect_failure(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        message: &str,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "UPDATE connectors SET status_message = $3, updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            id,
            message,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a connector and its credentials, for `by`; its tasks stay, marked as coming
    /// from a removed source.
    pub async fn delete(&self, tenant_id: Uuid, id: Uuid, by: &Actor) -> sqlx::Result<bool> {
        let mut tx = self.pool.begin().await?;
        // The connector first, as a page commit locks it before its tasks: a commit under way
        // finishes first, and its tasks are marked with the others.
        let found = sqlx::query!(
            "SELECT provider, name FROM connectors WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            tenant_id,
            id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(found) = found else {
            return Ok(false);
        };
        let removed: Vec<Uuid> = sqlx::query_scalar!(
            "UPDATE tasks SET source_removed_at = now(), updated_at = now()
             WHERE connector_id = $2 AND tenant_id = $1
             RETURNING id",
            tenant_id,
            id,
        )
        .fetch_all(&mut *tx)
        .await?;
        // Their vectors go (an embed job finds their source removed), so they are no one's
        // original any more.
        let jobs: Vec<NewJob> = removed
            .chunks(MAX_EMBED_ITEMS)
            .map(|ids| {
                let spec = JobSpec::EmbedItems(EmbedItems {
                    item_ids: ids.to_vec(),
                    options: Default::default(),
                });
                NewJob::new(spec, None)
            })
            .collect();
        if !jobs.is_empty() {
            Ledger::insert_in(&mut tx, tenant_id, &jobs, "api")
                .await
                .map_err(|err| match err {
                    InsertError::Db(err) => err,
                    other => sqlx::Error::Protocol(other.to_string()),
                })?;
        }
        sqlx::query!(
            "DELETE FROM connectors WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            id,
        )
        .execute(&mut *tx)
        .await?;
        let deleted = AuditEntry::new(AuditAction::ConnectorDeleted, Some(tenant_id), id)
            .with_detail(json!({"provider": found.provider, "name": found.name}));
        AuditLog::record_in(&mut tx, by, &deleted).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Enqueues an ingest or a test of the tenant's connector, or returns the one already
    /// waiting (not yet running) for it.
    pub async fn request(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        job: ConnectorJob,
        request_id: Option<String>,
    ) -> Result<Requested, ConnectorError> {
        let mut tx = self.pool.begin().await?;
        let requested = request_in(&mut tx, tenant_id, id, job, request_id).await?;
        tx.commit().await?;
        Ok(requested)
    }

    /// [`Connectors::request`]s a test of every connector of the tenant that has credentials.
    pub async fn request_tests(
        &self,
        tenant_id: Uuid,
        request_id: Option<String>,
    ) -> Result<Vec<(ConnectorRecord, JobRecord)>, ConnectorError> {
        let mut tx = self.pool.begin().await?;
        let connectors: Vec<ConnectorRecord> = sqlx::query_as!(
            ConnectorRecord,
            r#"SELECT id, tenant_id, provider, name, config, auth, status, status_message, cursor,
                      last_sync_at, last_test_at, last_test_ok, last_test_message,
                      (SELECT count(*) FROM tasks t WHERE t.connector_id = connectors.id)
                          AS "item_count!",
                      created_at, updated_at
               FROM connectors
               WHERE tenant_id = $1 AND credentials IS NOT NULL ORDER BY created_at, id"#,
            tenant_id,
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut tests = Vec::with_capacity(connectors.len());
        for connector in connectors {
            let job = match request_in(
                &mut tx,
                tenant_id,
                connector.id,
                ConnectorJob::Test,
                request_id.clone(),
            )
            .await?
            {
                Requested::Created(job) | Requested::Waiting(job) => job,
            };
            tests.push((connector, job));
        }
        tx.commit().await?;
        Ok(tests)
    }

    /// The tenant's connector's sealed credentials, if it has any.
    pub async fn sealed_credentials(
        &self,
        tenant_id: Uuid,
        id: Uuid,
    ) -> sqlx::Result<Option<String>> {
        sqlx::query_scalar!(
            "SELECT credentials FROM connectors WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            id,
        )
        .fetch_optional(&self.pool)
        .await
        .map(Option::flatten)
    }

    /// Locks the connector's credentials until the lock is dropped or stored: a refresh made
    /// under it cannot race another (Atlassian's refresh tokens work once). The lock is an
    /// advisory lock, not the row's, so page commits, syncs and deletes of the connector do
    /// not wait for a refresh's call to the provider.
    pub async fn lock_credentials(
        &self,
        tenant_id: Uuid,
        id: Uuid,
    ) -> sqlx::Result<CredentialsLock> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "SELECT pg_advisory_xact_lock(hashtextextended('taskfleet.credentials.' || $1, 0))",
            id.to_string(),
        )
        .execute(&mut *tx)
        .await?;
        let sealed = sqlx::query_scalar!(
            "SELECT credentials FROM connectors WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            id,
        )
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
        Ok(CredentialsLock {
            tx,
            tenant_id,
            id,
            sealed,
        })
    }

    /// Sets the status people see (`error`, `reauth_required`, `connected`) and why.
    pub async fn set_status(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        status: &str,
        message: Option<&str>,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "UPDATE connectors SET status = $3, status_message = $4, updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            id,
            status,
            message,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a test's result.
    pub async fn record_test(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        ok: bool,
        message: &str,
    ) -> sqlx::Result<()> {
        sqlx::query!(
            "UPDATE connectors SET last_test_at = now(), last_test_ok = $3,
                    last_test_message = $4, updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
            tenant_id,
            id,
            ok,
            message,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Seals every connector's credentials under `sealer`'s current key, a batch at a time;
    /// returns how many were sealed anew. Values no key of `sealer` opens stop it.
    pub async fn reseal(&self, sealer: &Sealer) -> Result<u64, ResealError> {
        let mut after = Uuid::nil();
        let mut resealed = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query!(
                r#"SELECT id, tenant_id, credentials AS "credentials!" FROM connectors
                   WHERE id > $1 AND credentials IS NOT NULL ORDER BY id LIMIT 100 FOR UPDATE"#,
                after,
            )
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last() else {
                return Ok(resealed);
            };
            after = last.id;
            for row in rows {
                let (id, tenant_id, sealed) = (row.id, row.tenant_id, row.credentials);
                if sealer.is_current(&sealed) {
                    continue;
                }
                let context = connector_context(tenant_id, id);
                let plain = sealer
                    .open(&sealed, &context)
                    .map_err(|err| ResealError::Open { id, err })?;
                sqlx::query!(
                    "UPDATE connectors SET credentials = $2 WHERE id = $1",
                    id,
                    sealer.seal(&plain, &context),
                )
                .execute(&mut *tx)
                .await?;
                resealed += 1;
            }
            tx.commit().await?;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("connector {id}: {err}")]
    Open { id: Uuid, err: OpenError },
}

/// A connector's credentials, locked for a refresh.
pub struct CredentialsLock {
    tx: Transaction<'static, Postgres>,
    tenant_id: Uuid,
    id: Uuid,
    /// The credentials as they are now (another refresh may have replaced them).
    pub sealed: Option<String>,
}

impl CredentialsLock {
    /// Stores refreshed credentials and lets go of the lock.
    pub async fn store(mut self, sealed: &str) -> sqlx::Result<()> {
        sqlx::query!(
            "UPDATE connectors SET credentials = $3, updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
            self.tenant_id,
            self.id,
            sealed,
        )
        .execute(&mut *self.tx)
        .await?;
        self.tx.commit().await
    }
}

/// Inserts a new connector, and the audit log's record of `by` creating it.
async fn insert(
    tx: &mut sqlx::PgConnection,
    new: &NewConnector,
    auth: &str,
    status: &str,
    sealed_credentials: Option<&str>,
    by: &Actor,
) -> Result<(), ConnectorError> {
    sqlx::query!(
        "INSERT INTO connectors (id, tenant_id, provider, name, config, auth, status, credentials)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        new.id,
        new.tenant_id,
        new.provider,
        new.name,
        new.config,
        auth,
        status,
        sealed_credentials,
    )
    .execute(&mut *tx)
    .await
    .map_err(|err| name_taken(err, &new.name))?;
    let created = AuditEntry::new(AuditAction::ConnectorCreated, Some(new.tenant_id), new.id)
        .with_detail(json!({"provider": new.provider, "name": new.name, "auth": auth}));
    AuditLog::record_in(tx, by, &created).await?;
    Ok(())
}

async fn put_oauth_state(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    connector_id: Uuid,
    provider: &str,
    state: &str,
    sealed_verifier: &str,
) -> sqlx::Result<()> {
    // States a day past their expiry are of no use to anyone.
    sqlx::query!("DELETE FROM oauth_states WHERE expires_at < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "INSERT INTO oauth_states (state_hash, tenant_id, connector_id, provider, pkce_verifier,
                                   expires_at)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
        state_hash(state),
        tenant_id,
        connector_id,
        provider,
        sealed_verifier,
        OAUTH_STATE_TTL.num_seconds() as f64,
    )
    .execute(tx)
    .await?;
    Ok(())
}

async fn get_in(
    conn: &mut sqlx::PgConnection,
    scope: Scope,
    id: Uuid,
) -> sqlx::Result<Option<ConnectorRecord>> {
    sqlx::query_as!(
        ConnectorRecord,
        r#"SELECT id, tenant_id, provider, name, config, auth, status, status_message, cursor,
                  last_sync_at, last_test_at, last_test_ok, last_test_message,
                  (SELECT count(*) FROM tasks t WHERE t.connector_id = connectors.id)
                      AS "item_count!",
                  created_at, updated_at
           FROM connectors WHERE ($1::uuid IS NULL OR tenant_id = $1) AND id = $2"#,
        scope.tenant_id(),
        id,
    )
    .fetch_optional(conn)
    .await
}

/// The job of `kind` waiting (not yet running) for the connector, else a new one; the
/// connector must have credentials.
async fn request_in(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    id: Uuid,
    job: ConnectorJob,
    request_id: Option<String>,
) -> Result<Requested, ConnectorError> {
    // One request at a time per connector, so two cannot both find none waiting.
    let found = sqlx::query!(
        r#"SELECT status, credentials IS NOT NULL AS "has_credentials!" FROM connectors
           WHERE tenant_id = $1 AND id = $2 FOR NO KEY UPDATE"#,
        tenant_id,
        id,
    )
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => return Err(ConnectorError::NotFound(id)),
        Some(found) if !found.has_credentials => {
            return Err(ConnectorError::NotReady {
                id,
                status: found.status,
                hint: "finish connecting it first (open its authorize_url)",
            });
        }
        Some(_) => {}
    }
    let spec = job.spec(id);
    let waiting: Option<JobRecord> = sqlx::query_as!(
        JobRecord,
        r#"SELECT id, tenant_id,
                  (SELECT t.name FROM tenants t WHERE t.id = jobs.tenant_id) AS "tenant!",
                  queue, kind, payload, state, priority, attempt, max_attempts, run_at,
                  dispatched_at, created_at, started_at, finished_at, worker, result, error,
                  attempt_errors, idempotency_key, cancel_requested_at, progress_percent,
                  progress_message, request_id
           FROM jobs
           WHERE tenant_id = $1 AND kind = $2 AND (payload ->> 'connector_id') = $3
             AND state IN ('scheduled', 'queued', 'retrying')
           ORDER BY id LIMIT 1"#,
        tenant_id,
        spec.kind(),
        id.to_string(),
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(waiting) = waiting {
        return Ok(Requested::Waiting(waiting));
    }
    Ok(Requested::Created(
        enqueue_in(tx, tenant_id, id, job, request_id).await?,
    ))
}

async fn enqueue_in(
    tx: &mut sqlx::PgConnection,
    tenant_id: Uuid,
    id: Uuid,
    job: ConnectorJob,
    request_id: Option<String>,
) -> Result<JobRecord, ConnectorError> {
    let new = NewJob::new(job.spec(id), request_id);
    let mut inserted = Ledger::insert_in(tx, tenant_id, &[new], "api").await?;
    Ok(match inserted.remove(0) {
        Inserted::Created(record) | Inserted::Existing(record) => record,
    })
}
