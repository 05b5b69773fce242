//! Tasks: the work items ingests bring in, one row per `(tenant, source_kind, source_ref)`
//! however often a provider shows it. An ingest commits each page as one transaction: the
//! page's tasks, the connector's new cursor, and one `embed.items` job for the tasks whose
//! text is new or changed. A crash mid-ingest therefore resumes after the last committed
//! page, and no task is embedded twice or forgotten.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use taskfleet_jobs::{Horizon, Item, JobSpec, TaskStatus, spec::EmbedItems, wire};
use uuid::Uuid;

use crate::{InsertError, Inserted, Ledger, NewJob, tenants::Scope};

/// A task as stored.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub connector_id: Option<Uuid>,
    pub source_kind: String,
    pub source_ref: String,
    pub title: String,
    pub snippet: String,
    pub url: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub labels: Vec<String>,
    pub status: String,
    pub horizon: String,
    pub source_updated_at: Option<DateTime<Utc>>,
    pub source_removed_at: Option<DateTime<Utc>>,
    pub duplicate_of: Option<Uuid>,
    pub duplicate_similarity: Option<f32>,
    pub urgency: Option<f32>,
    pub importance: Option<f32>,
    pub recency: Option<f32>,
    pub source_signal: Option<f32>,
    pub priority: Option<f32>,
    pub rank: Option<i32>,
    pub reason: Option<String>,
    pub ranked_by: Option<String>,
    pub ranked_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One page of an ingest, to commit.
#[derive(Debug, Clone)]
pub struct IngestPage<'a> {
    pub tenant_id: Uuid,
    pub connector_id: Uuid,
    /// The ingest job and its attempt's fencing epoch: a stale attempt commits nothing.
    pub job_id: Uuid,
    pub epoch: i64,
    /// The worker, the actor of the `embed.items` job's events.
    pub worker: &'a str,
    pub request_id: Option<String>,
    pub source_kind: &'a str,
    pub items: Vec<Item>,
    /// Items gone at the source: their tasks are done.
    pub gone: Vec<String>,
    /// The cursor the page was fetched from, and the one to store.
    pub cursor_before: Option<Value>,
    pub cursor: Value,
    /// The last page of a sweep: the connector's `last_sync_at` moves.
    pub sweep_done: bool,
}

/// What a committed page changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageCommitted {
    /// Tasks whose text is new or changed: the `embed.items` job's items.
    pub changed: Vec<Uuid>,
    pub embed_job: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The attempt's epoch is no longer the job's (it was reclaimed), or the job stopped
    /// running: nothing was written.
    #[error("the ingest attempt was superseded (its lease was reclaimed)")]
    Fenced,
    /// Another ingest of the connector stored a cursor meanwhile: nothing was written.
    #[error("another ingest of this connector moved its cursor")]
    CursorMoved,
    #[error("the connector was deleted")]
    ConnectorGone,
    #[error("could not enqueue the embed job: {0}")]
    Enqueue(String),
}

impl From<InsertError> for CommitError {
    fn from(err: InsertError) -> CommitError {
        match err {
            InsertError::Db(err) => CommitError::Db(err),
            other => CommitError::Enqueue(other.to_string()),
        }
    }
}

/// Filters of `GET /v1/tasks`; `before` is the paging cursor (the last id of a page).
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub source_kind: Option<String>,
    pub status: Option<TaskStatus>,
    /// Words the title or text contains (case-insensitive).
    pub q: Option<String>,
    pub before: Option<Uuid>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub struct Tasks {
    pub(crate) pool: PgPool,
}

impl Tasks {
    pub fn new(pool: PgPool) -> Tasks {
        Tasks { pool }
    }

    /// Commits one page of an ingest, as the module documentation says.
    pub async fn commit_page(&self, page: IngestPage<'_>) -> Result<PageCommitted, CommitError> {
        let mut tx = self.pool.begin().await?;
        let running: Option<i32> = sqlx::query_scalar!(
            r#"SELECT 1 AS "one!" FROM jobs
             WHERE id = $1 AND lease_epoch = $2 AND state = 'running'
             FOR SHARE"#,
            page.job_id,
            page.epoch,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if running.is_none() {
            return Err(CommitError::Fenced);
        }
        let moved = sqlx::query!(
            "UPDATE connectors SET cursor = $3, status = 'connected', status_message = NULL,
                    last_sync_at = CASE WHEN $4 THEN now() ELSE last_sync_at END,
                    updated_at = now()
             WHERE tenant_id = $1 AND id = $2 AND cursor IS NOT DISTINCT FROM $5",
            page.tenant_id,
            page.connector_id,
            &page.cursor,
            page.sweep_done,
            page.cursor_before.as_ref(),
        )
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            let exists: Option<i32> = sqlx::query_scalar!(
                r#"SELECT 1 AS "one!" FROM connectors WHERE tenant_id = $1 AND id = $2"#,
                page.tenant_id,
                page.connector_id,
            )
            .fetch_optional(&mut *tx)
            .await?;
            return Err(match exists {
                Some(_) => CommitError::CursorMoved,
                None => CommitError::ConnectorGone,
            });
        }
        let changed = upsert(&mut tx, &page).await?;
        if !page.gone.is_empty() {
            sqlx::query!(
                "UPDATE tasks SET status = 'done', completed_at = now(), updated_at = now()
                 WHERE tenant_id = $1 AND source_kind = $2 AND source_ref = ANY($3)
                   AND status <> 'done'",
                page.tenant_id,
                page.source_kind,
                &page.gone,
            )
            .execute(&mut *tx)
            .await?;
        }
        let embed_job = if changed.is_empty() {
            None
        } else {
            let spec = JobSpec::EmbedItems(EmbedItems {
                item_ids: changed.clone(),
                options: Default::default(),
            });
            let job = NewJob::new(spec, page.request_id.clone());
            match Ledger::insert_in(&mut tx, page.tenant_id, &[job], page.worker)
                .await?
                .remove(0)
            {
                Inserted::Created(record) | Inserted::Existing(record) => Some(record.id),
            }
        };
        tx.commit().await?;
        Ok(PageCommitted { changed, embed_job })
    }

    /// A page of the tasks in `scope`, newest first.
    pub async fn list(&self, scope: Scope, filter: &TaskFilter) -> sqlx::Result<Vec<TaskRecord>> {
        sqlx::query_as!(
            TaskRecord,
            "SELECT id, tenant_id, connector_id, source_kind, source_ref, title, snippet, url,
                    due_at, labels, status, horizon, source_updated_at, source_removed_at,
                    duplicate_of, duplicate_similarity, urgency, importance, recency,
                    source_signal, priority, rank, reason, ranked_by, ranked_at, completed_at,
                    created_at, updated_at
             FROM tasks
             WHERE ($1::uuid IS NULL OR tenant_id = $1)
               AND ($2::text IS NULL OR source_kind = $2)
               AND ($3::text IS NULL OR status = $3)
               AND ($4::text IS NULL OR title ILIKE $4 OR snippet ILIKE $4)
               AND ($5::uuid IS NULL OR id < $5)
             ORDER BY id DESC
             LIMIT $6",
            scope.tenant_id(),
            filter.source_kind.as_deref(),
            filter.status.map(|s| wire::name(&s)),
            filter.q.as_deref().map(like_pattern),
            filter.before,
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The focus list of a horizon: the tenant's open, original tasks in rank order.
    pub async fn focus(
        &self,
        tenant: Uuid,
        horizon: Horizon,
        limit: i64,
    ) -> sqlx::Result<Vec<TaskRecord>> {
        sqlx::query_as!(
            TaskRecord,
            "SELECT id, tenant_id, connector_id, source_kind, source_ref, title, snippet, url,
                    due_at, labels, status, horizon, source_updated_at, source_removed_at,
                    duplicate_of, duplicate_similarity, urgency, importance, recency,
                    source_signal, priority, rank, reason, ranked_by, ranked_at, completed_at,
                    created_at, updated_at
             FROM tasks
             WHERE tenant_id = $1 AND horizon = $2 AND status = 'open'
               AND duplicate_of IS NULL AND rank IS NOT NULL
             ORDER BY rank, id
             LIMIT $3",
            tenant,
            wire::name(&horizon),
            limit,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The tasks of the graph view: open ones in `horizons` (duplicates too, so their edges
    /// show) and the work done in the last 7 days.
    pub async fn graph(&self, tenant: Uuid, horizons: &[Horizon]) -> sqlx::Result<Vec<TaskRecord>> {
        let horizons: Vec<String> = horizons.iter().map(wire::name).collect();
        sqlx::query_as!(
            TaskRecord,
            "SELECT id, tenant_id, connector_id, source_kind, source_ref, title, snippet, url,
                    due_at, labels, status, horizon, source_updated_at, source_removed_at,
                    duplicate_of, duplicate_similarity, urgency, importance, recency,
                    source_signal, priority, rank, reason, ranked_by, ranked_at, completed_at,
                    created_at, updated_at
             FROM tasks
             WHERE tenant_id = $1
               AND ((status = 'open' AND horizon = ANY($2))
                    OR (status = 'done' AND completed_at >= now() - interval '7 days'))
             ORDER BY id
             LIMIT 2000",
            tenant,
            &horizons,
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Work the tenant finished in the last 7 days, latest first.
    pub async fn done_lately(&self, tenant: Uuid, limit: i64) -> sqlx::Result<Vec<TaskRecord>> {
        sqlx::query_as!(
            TaskRecord,
            "SELECT id, tenant_id, connector_id, source_kind, source_ref, title, snippet, url,
                    due_at, labels, status, horizon, source_updated_at, source_removed_at,
                    duplicate_of, duplicate_similarity, urgency, importance, recency,
                    source_signal, priority, rank, reason, ranked_by, ranked_at, completed_at,
                    created_at, updated_at
             FROM tasks
             WHERE tenant_id = $1 AND status = 'done'
               AND completed_at >= now() - interval '7 days'
             ORDER BY completed_at DESC, id DESC
             LIMIT $2",
            tenant,
            limit,
        )
        .fetch_all(&self.pool)
        .await
    }
}

/// `%words%` for ILIKE, with the pattern characters of the words taken literally.
fn like_pattern(words: &str) -> String {
    let escaped = words
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Upserts the page's tasks in one statement (rows that would not change are not written);
/// returns the ids of the tasks whose text (title, snippet) is new or changed.
async fn upsert(tx: &mut sqlx::PgConnection, page: &IngestPage<'_>) -> sqlx::Result<Vec<Uuid>> {
    // A provider may show one item twice in a page; the last showing counts, since one
    // statement cannot write a row twice.
    let mut last: HashMap<&str, &Item> = HashMap::new();
    for item in &page.items {
        last.insert(&item.source_ref, item);
    }
    let tasks: Vec<&Item> = page
        .items
        .iter()
        .filter(|task| std::ptr::eq(last[task.source_ref.as_str()], *task))
        .collect();
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = tasks.iter().map(|_| Uuid::now_v7()).collect();
    let refs: Vec<&str> = tasks.iter().map(|t| t.source_ref.as_str()).collect();
    let titles: Vec<&str> = tasks.iter().map(|t| t.title.as_str()).collect();
    let snippets: Vec<&str> = tasks.iter().map(|t| t.snippet.as_str()).collect();
    let urls: Vec<Option<&str>> = tasks.iter().map(|t| t.url.as_deref()).collect();
    let dues: Vec<Option<DateTime<Utc>>> = tasks.iter().map(|t| t.due_at).collect();
    let labels: Vec<Value> = tasks.iter().map(|t| serde_json::json!(t.labels)).collect();
    let statuses: Vec<String> = tasks.iter().map(|t| wire::name(&t.status)).collect();
    let horizons: Vec<String> = tasks.iter().map(|t| wire::name(&t.horizon)).collect();
    let updated: Vec<Option<DateTime<Utc>>> = tasks.iter().map(|t| t.updated_at).collect();
    // The element lists are slices of borrowed text (or of options): `as` gives their type,
    // which the macros' check (owned `String`s, no `NULL` elements) would refuse.
    let rows = sqlx::query!(
        r#"WITH input AS (
             SELECT * FROM UNNEST($4::uuid[], $5::text[], $6::text[], $7::text[], $8::text[],
                                  $9::timestamptz[], $10::jsonb[], $11::text[], $12::text[],
                                  $13::timestamptz[])
                 AS t(id, source_ref, title, snippet, url, due_at, labels, status, horizon,
                      source_updated_at)
         ), before AS (
             SELECT t.source_ref, t.content_hash FROM tasks t
             WHERE t.tenant_id = $1 AND t.source_kind = $2
               AND t.source_ref IN (SELECT source_ref FROM input)
         ), written AS (
             INSERT INTO tasks AS t (id, tenant_id, source_kind, source_ref, connector_id, title,
                                     snippet, url, due_at, labels, status, horizon,
                                     source_updated_at, completed_at, content_hash)
             SELECT id, $1, $2, source_ref, $3, title, snippet, url, due_at,
                    ARRAY(SELECT jsonb_array_elements_text(labels)), status, horizon,
                    source_updated_at, CASE WHEN status = 'done' THEN now() END,
                    sha256(convert_to(title || E'\n' || snippet, 'UTF8'))
             FROM input
             -- Rows in one order, so two pages sharing items cannot deadlock.
             ORDER BY source_ref
             ON CONFLICT (tenant_id, source_kind, source_ref) DO UPDATE SET
                 connector_id = EXCLUDED.connector_id, title = EXCLUDED.title,
                 snippet = EXCLUDED.snippet, url = EXCLUDED.url, due_at = EXCLUDED.due_at,
                 labels = EXCLUDED.labels, status = EXCLUDED.status,
                 source_updated_at = EXCLUDED.source_updated_at,
                 content_hash = EXCLUDED.content_hash, source_removed_at = NULL,
                 completed_at = CASE WHEN EXCLUDED.status = 'open' THEN NULL
                                     WHEN t.status = 'open' THEN now()
                                     ELSE t.completed_at END,
                 updated_at = now()
             -- A row that would not change is not written.
             WHERE (t.connector_id, t.title, t.snippet, t.url, t.due_at, t.labels, t.status,
                    t.source_updated_at, t.source_removed_at IS NULL)
                   IS DISTINCT FROM
                   (EXCLUDED.connector_id, EXCLUDED.title, EXCLUDED.snippet, EXCLUDED.url,
                    EXCLUDED.due_at, EXCLUDED.labels, EXCLUDED.status,
                    EXCLUDED.source_updated_at, true)
             RETURNING t.id, t.source_ref, t.content_hash
         )
         SELECT w.id AS "id!",
                b.content_hash IS DISTINCT FROM w.content_hash AS "text_changed!"
         FROM written w LEFT JOIN before b USING (source_ref)
         ORDER BY w.id"#,
        page.tenant_id,
        page.source_kind,
        page.connector_id,
        &ids,
        &refs as &[&str],
        &titles as &[&str],
        &snippets as &[&str],
        &urls as &[Option<&str>],
        &dues as &[Option<DateTime<Utc>>],
        &labels,
        &statuses,
        &horizons,
        &updated as &[Option<DateTime<Utc>>],
    )
    .fetch_all(tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|row| row.text_changed)
        .map(|row| row.id)
        .collect())
}
