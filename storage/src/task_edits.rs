//! Tasks as people change them through the API: typed in by hand, edited, completed,
//! undone, deleted. Each change commits with what it sets off: an `embed.items` job when the
//! text changed or the task went (its vector is removed), an `agent.prioritise` when the
//! focus lists may have moved, and a `task_events` row for every status change, which undo
//! reads.

use chrono::{DateTime, Utc};
use taskfleet_jobs::{JobSpec, TaskStatus, spec::EmbedItems, wire};
use uuid::Uuid;

use crate::{InsertError, Ledger, NewJob, TaskRecord, Tasks, task_ranking::prioritise_in};

/// A task typed by hand.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub title: String,
    pub description: String,
    pub due_at: Option<DateTime<Utc>>,
}

/// Fields to change; `None` leaves a field as it is (`due_at: Some(None)` clears it).
#[derive(Debug, Clone, Default)]
pub struct TaskEdit {
    pub title: Option<String>,
    pub description: Option<String>,
    pub due_at: Option<Option<DateTime<Utc>>>,
    pub status: Option<TaskStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("no task with this id")]
    NotFound,
    #[error("the task has no change to undo")]
    NothingToUndo,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("could not enqueue the follow-up job: {0}")]
    Enqueue(String),
}

impl From<InsertError> for EditError {
    fn from(err: InsertError) -> EditError {
        match err {
            InsertError::Db(err) => EditError::Db(err),
            other => EditError::Enqueue(other.to_string()),
        }
    }
}

/// Who changes a task, for its events and the jobs the change enqueues.
#[derive(Debug, Clone)]
pub struct Editor<'a> {
    pub tenant: Uuid,
    pub actor: &'a str,
    pub request_id: Option<String>,
}

impl Tasks {
    pub async fn get(&self, tenant: Uuid, id: Uuid) -> sqlx::Result<Option<TaskRecord>> {
        sqlx::query_as!(
            TaskRecord,
            "SELECT id, tenant_id, connector_id, source_kind, source_ref, title, snippet,
                    url, due_at, labels, status, horizon, source_updated_at,
                    source_removed_at, duplicate_of, duplicate_similarity, urgency,
                    importance, recency, source_signal, priority, rank, reason, ranked_by,
                    ranked_at, completed_at, created_at, updated_at
             FROM tasks WHERE tenant_id = $1 AND id = $2",
            tenant,
            id,
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Stores a task typed by hand and enqueues its embedding (which ranks it after).
    pub async fn create(&self, by: Editor<'_>, task: NewTask) -> Result<TaskRecord, EditError> {
        self.create_once(by, Uuid::now_v7(), task).await
    }

    /// [`Tasks::create`] with the task's id chosen by the caller: a second call with the same
    /// id (a retried job repeating its step) returns the task the first one made, and
    /// changes nothing.
    pub async fn create_once(
        &self,
        by: Editor<'_>,
        id: Uuid,
        task: NewTask,
    ) -> Result<TaskRecord, EditError> {
        let mut tx = self.pool.begin().await?;
        // The source_ref is the id as text: `$2::uuid::text`, since a bare `$2::text` would
        // make the statement's `$2` a text parameter, which the id column refuses.
        let made: Option<TaskRecord> = sqlx::query_as!(
            TaskRecord,
            "INSERT INTO tasks (id, tenant_id, source_kind, source_ref, title, snippet, due_at,
                                status, horizon, content_hash)
             VALUES ($2, $1, 'manual', $2::uuid::text, $3, $4, $5, 'open', 'month',
                     sha256(convert_to($3 || E'\\n' || $4, 'UTF8')))
             ON CONFLICT (id) DO NOTHING
             RETURNING id, tenant_id, connector_id, source_kind, source_ref, title, snippet,
                       url, due_at, labels, status, horizon, source_updated_at,
                       source_removed_at, duplicate_of, duplicate_similarity, urgency,
                       importance, recency, source_signal, priority, rank, reason, ranked_by,
                       ranked_at, completed_at, created_at, updated_at",
            by.tenant,
            id,
            &task.title,
            &task.description,
            task.due_at,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(record) = made else {
            drop(tx);
            return self.get(by.tenant, id).await?.ok_or(EditError::NotFound);
        };
        event(&mut tx, &by, id, "created", None, TaskStatus::Open).await?;
        embed_in(&mut tx, &by, id).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Applies `edit`; a changed text is embedded again, a changed status or due date
    /// re-ranks the tenant's tasks.
    pub async fn update(
        &self,
        by: Editor<'_>,
        id: Uuid,
        edit: TaskEdit,
    ) -> Result<TaskRecord, EditError> {
        let mut tx = self.pool.begin().await?;
        let before = locked(&mut tx, by.tenant, id).await?;
        let record: TaskRecord = sqlx::query_as!(
            TaskRecord,
            "UPDATE tasks SET
                 title = coalesce($3, title),
                 snippet = coalesce($4, snippet),
                 due_at = CASE WHEN $5 THEN $6 ELSE due_at END,
                 status = coalesce($7, status),
                 completed_at = CASE WHEN coalesce($7, status) = 'open' THEN NULL
                                     WHEN status = 'open' THEN now()
                                     ELSE completed_at END,
                 content_hash = sha256(convert_to(coalesce($3, title) || E'\\n'
                                                  || coalesce($4, snippet), 'UTF8')),
                 updated_at = now()
             WHERE tenant_id = $1 AND id = $2
             RETURNING id, tenant_id, connector_id, source_kind, source_ref, title, snippet,
                       url, due_at, labels, status, horizon, source_updated_at,
                       source_removed_at, duplicate_of, duplicate_similarity, urgency,
                       importance, recency, source_signal, priority, rank, reason, ranked_by,
                       ranked_at, completed_at, created_at, updated_at",
            by.tenant,
            id,
            edit.title.as_deref(),
            edit.description.as_deref(),
            edit.due_at.is_some(),
            edit.due_at.flatten(),
            edit.status.map(|s| wire::name(&s)),
        )
        .fetch_one(&mut *tx)
        .await?;
        let text_changed = record.title != before.title || record.snippet != before.snippet;
        if text_changed {
            embed_in(&mut tx, &by, id).await?;
        }
        if let Some(status) = edit.status.filter(|s| wire::name(s) != before.status) {
            let kind = match status {
                TaskStatus::Done => "completed",
                TaskStatus::Open => "reopened",
            };
            event(&mut tx, &by, id, kind, Some(&before.status), status).await?;
        }
        if !text_changed && (record.status != before.status || record.due_at != before.due_at) {
            prioritise_in(&mut tx, by.tenant, by.actor, by.request_id.clone()).await?;
        }
        tx.commit().await?;
        Ok(record)
    }

    /// Marks the task done.
    pub async fn complete(&self, by: Editor<'_>, id: Uuid) -> Result<TaskRecord, EditError> {
        let edit = TaskEdit {
            status: Some(TaskStatus::Done),
            ..TaskEdit::default()
        };
        self.update(by, id, edit).await
    }

    /// Returns the task to the status it had before its last status change.
    pub async fn undo(&self, by: Editor<'_>, id: Uuid) -> Result<TaskRecord, EditError> {
        let mut tx = self.pool.begin().await?;
        let current = locked(&mut tx, by.tenant, id).await?;
        let last: Option<Option<String>> = sqlx::query_scalar!(
            "SELECT status_before FROM task_events
             WHERE task_id = $1 AND kind IN ('completed', 'reopened', 'undone')
             ORDER BY id DESC LIMIT 1",
            id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(Some(status)) = last else {
            return Err(EditError::NothingToUndo);
        };
        let status: TaskStatus = wire::parse(&status).ok_or(EditError::NothingToUndo)?;
        let record: TaskRecord = sqlx::query_as!(
            TaskRecord,
            "UPDATE tasks SET status = $3,
                    completed_at = CASE WHEN $3 = 'done' THEN now() END,
                    updated_at = now()
             WHERE tenant_id = $1 AND id = $2
             RETURNING id, tenant_id, connector_id, source_kind, source_ref, title, snippet,
                       url, due_at, labels, status, horizon, source_updated_at,
                       source_removed_at, duplicate_of, duplicate_similarity, urgency,
                       importance, recency, source_signal, priority, rank, reason, ranked_by,
                       ranked_at, completed_at, created_at, updated_at",
            by.tenant,
            id,
            wire::name(&status),
        )
        .fetch_one(&mut *tx)
        .await?;
        event(&mut tx, &by, id, "undone", Some(&current.status), status).await?;
        prioritise_in(&mut tx, by.tenant, by.actor, by.request_id.clone()).await?;
        tx.commit().await?;
        Ok(record)
    }

    /// Deletes the task; its vectors go with an `embed.items` job for its id, and the
    /// tasks that pointed at it as their original stand on their own again.
    pub async fn delete(&self, by: Editor<'_>, id: Uuid) -> Result<(), EditError> {
        let mut tx = self.pool.begin().await?;
        locked(&mut tx, by.tenant, id).await?;
        let orphans: Vec<Uuid> = sqlx::query_scalar!(
            "UPDATE tasks SET duplicate_of = NULL, duplicate_similarity = NULL
             WHERE tenant_id = $1 AND duplicate_of = $2 RETURNING id",
            by.tenant,
            id,
        )
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM tasks WHERE tenant_id = $1 AND id = $2",
            by.tenant,
            id,
        )
        .execute(&mut *tx)
        .await?;
        // The former repeats are embedded again only if their text changed, but checked for
        // another original; the job also removes the deleted task's vector.
        let mut items = vec![id];
        items.extend(orphans);
        let spec = JobSpec::EmbedItems(EmbedItems {
            item_ids: items,
            options: Default::default(),
        });
        Ledger::insert_in(
            &mut tx,
            by.tenant,
            &[NewJob::new(spec, by.request_id.clone())],
            by.actor,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The task's row, locked for the change; another tenant's id is not found.
async fn locked(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    id: Uuid,
) -> Result<TaskRecord, EditError> {
    sqlx::query_as!(
        TaskRecord,
        "SELECT id, tenant_id, connector_id, source_kind, source_ref, title, snippet,
                url, due_at, labels, status, horizon, source_updated_at,
                source_removed_at, duplicate_of, duplicate_similarity, urgency,
                importance, recency, source_signal, priority, rank, reason, ranked_by,
                ranked_at, completed_at, created_at, updated_at
         FROM tasks WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        tenant,
        id,
    )
    .fetch_optional(tx)
    .await?
    .ok_or(EditError::NotFound)
}

async fn event(
    tx: &mut sqlx::PgConnection,
    by: &Editor<'_>,
    task: Uuid,
    kind: &str,
    before: Option<&str>,
    after: TaskStatus,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO task_events (tenant_id, task_id, kind, status_before, status_after, actor)
         VALUES ($1, $2, $3, $4, $5, $6)",
        by.tenant,
        task,
        kind,
        before,
        wire::name(&after),
        by.actor,
    )
    .execute(tx)
    .await?;
    Ok(())
}

async fn embed_in(tx: &mut sqlx::PgConnection, by: &Editor<'_>, id: Uuid) -> Result<(), EditError> {
    let spec = JobSpec::EmbedItems(EmbedItems {
        item_ids: vec![id],
        options: Default::default(),
    });
    Ledger::insert_in(
        tx,
        by.tenant,
        &[NewJob::new(spec, by.request_id.clone())],
        by.actor,
    )
    .await?;
    Ok(())
}
