//! Runs the task tools (`taskfleet_jobs::task_tool`) over one tenant's tasks, for the chat
//! agent and the MCP server alike. Every statement names the tenant, so a tool can never
//! reach another tenant's task: another tenant's id reads as no task at all. Answers and
//! errors are the JSON the model is shown.

use std::sync::atomic::{AtomicU32, Ordering};

use chrono_tz::Tz;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use taskfleet_jobs::{
    Horizon, TaskStatus, TaskToolCall, ToolError,
    task_tool::{Listed, MAX_LISTED},
    wire,
};
use uuid::Uuid;

use crate::{EditError, Editor, NewTask, TaskEdit, TaskRecord, Tasks};

/// The task tools of one tenant, as one actor (a chat job, an MCP session) uses them.
#[derive(Debug)]
pub struct TaskToolbox {
    tasks: Tasks,
    tenant: Uuid,
    zone: Tz,
    actor: String,
    request_id: Option<String>,
    /// The job whose calls these are: its `add_task`s are idempotent, so a retried job that
    /// repeats a step finds the task it added the first time instead of adding another.
    job: Option<Uuid>,
    adds: AtomicU32,
}

impl TaskToolbox {
    /// The tools of `tenant`, in its time zone (for due dates given as a day).
    pub async fn open(
        tasks: Tasks,
        tenant: Uuid,
        actor: &str,
        request_id: Option<String>,
        job: Option<Uuid>,
    ) -> sqlx::Result<TaskToolbox> {
        let zone: Option<String> =
            sqlx::query_scalar!("SELECT time_zone FROM tenants WHERE id = $1", tenant)
                .fetch_optional(&tasks.pool)
                .await?;
        Ok(TaskToolbox {
            tasks,
            tenant,
            zone: zone.and_then(|zone| zone.parse().ok()).unwrap_or(Tz::UTC),
            actor: actor.to_owned(),
            request_id,
            job,
            adds: AtomicU32::new(0),
        })
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// Runs the tool `name` with the model's `arguments`; the answer, or an error the model
    /// can read (a store that failed is `unavailable`).
    pub async fn call(&self, name: &str, arguments: Value) -> Result<Value, ToolError> {
        let call = TaskToolCall::parse(name, arguments, self.zone)?;
        self.run(call).await
    }

    async fn run(&self, call: TaskToolCall) -> Result<Value, ToolError> {
        let by = Editor {
            tenant: self.tenant,
            actor: &self.actor,
            request_id: self.request_id.clone(),
        };
        match call {
            TaskToolCall::AddTask {
                title,
                description,
                due_at,
            } => {
                let ordinal = self.adds.fetch_add(1, Ordering::Relaxed);
                let id = match self.job {
                    Some(job) => add_key(job, ordinal, &title),
                    None => Uuid::now_v7(),
                };
                let task = NewTask {
                    title,
                    description,
                    due_at,
                };
                let record = self
                    .tasks
                    .create_once(by, id, task)
                    .await
                    .map_err(|err| failed(err, id))?;
                Ok(json!({"task": view(&record)}))
            }
            TaskToolCall::ListTasks { listed, horizon } => {
                let (tasks, total) = self.list(listed, horizon).await.map_err(unavailable)?;
                Ok(json!({"tasks": tasks.iter().map(view).collect::<Vec<_>>(), "total": total}))
            }
            TaskToolCall::CompleteTask { task_id } => {
                let record = self
                    .tasks
                    .complete(by, task_id)
                    .await
                    .map_err(|err| failed(err, task_id))?;
                Ok(json!({"task": view(&record)}))
            }
            TaskToolCall::DeleteTask { task_id } => {
                let record = self
                    .tasks
                    .get(self.tenant, task_id)
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| ToolError::not_found(task_id))?;
                self.tasks
                    .delete(by, task_id)
                    .await
                    .map_err(|err| failed(err, task_id))?;
                Ok(json!({"deleted": {"id": record.id, "title": record.title}}))
            }
            TaskToolCall::UpdateTask {
                task_id,
                title,
                description,
                due_at,
            } => {
                let edit = TaskEdit {
                    title,
                    description,
                    due_at,
                    status: None,
                };
                let record = self
                    .tasks
                    .update(by, task_id, edit)
                    .await
                    .map_err(|err| failed(err, task_id))?;
                Ok(json!({"task": view(&record)}))
            }
        }
    }

    /// The tenant's open tasks in focus order, at most [`MAX_LISTED`], and how many there are.
    pub async fn open_tasks(&self) -> sqlx::Result<(Vec<TaskRecord>, i64)> {
        self.list(Listed::Only(TaskStatus::Open), None).await
    }

    /// Open tasks in focus order (today's list, this week's, this month's, by rank, then by
    /// due date); done ones latest first. At most [`MAX_LISTED`], and how many there are.
    async fn list(
        &self,
        listed: Listed,
        horizon: Option<Horizon>,
    ) -> sqlx::Result<(Vec<TaskRecord>, i64)> {
        let status = match listed {
            Listed::Only(status) => Some(wire::name(&status)),
            Listed::All => None,
        };
        let horizon = horizon.map(|horizon| wire::name(&horizon));
        // Both statements have the same WHERE clause: `total` counts what the list would show
        // without its limit.
        let tasks = sqlx::query_as!(
            TaskRecord,
            "SELECT id, tenant_id, connector_id, source_kind, source_ref, title, snippet, url,
                    due_at, labels, status, horizon, source_updated_at, source_removed_at,
                    duplicate_of, duplicate_similarity, urgency, importance, recency,
                    source_signal, priority, rank, reason, ranked_by, ranked_at, completed_at,
                    created_at, updated_at
             FROM tasks
             WHERE tenant_id = $1 AND duplicate_of IS NULL
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR horizon = $3)
             ORDER BY status = 'done', completed_at DESC NULLS LAST,
                      array_position(ARRAY['today', 'week', 'month'], horizon),
                      rank NULLS LAST, due_at NULLS LAST, id DESC
             LIMIT $4",
            self.tenant,
            status.as_deref(),
            horizon.as_deref(),
            MAX_LISTED as i64,
        )
        .fetch_all(&self.tasks.pool)
        .await?;
        let total = sqlx::query_scalar!(
            r#"SELECT count(*) AS "count!" FROM tasks
             WHERE tenant_id = $1 AND duplicate_of IS NULL
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR horizon = $3)"#,
            self.tenant,
            status.as_deref(),
            horizon.as_deref(),
        )
        .fetch_one(&self.tasks.pool)
        .await?;
        Ok((tasks, total))
    }
}

/// The id of the `ordinal`-th task a job adds, named `title`: the same step of a retried job
/// names the same task.
fn add_key(job: Uuid, ordinal: u32, title: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(job.as_bytes())
        .chain_update(ordinal.to_be_bytes())
        .chain_update(title.as_bytes())
        .finalize();
    let bytes: [u8; 16] = digest[..16].try_into().expect("16 of 32 bytes");
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A task as the tools show it.
pub fn view(task: &TaskRecord) -> Value {
    json!({
        "id": task.id,
        "title": task.title,
        "description": task.snippet,
        "status": task.status,
        "due_at": task.due_at,
        "horizon": (task.status == wire::name(&TaskStatus::Open)).then_some(&task.horizon),
        "rank": task.rank,
        "source": task.source_kind,
        "url": task.url,
    })
}

fn failed(err: EditError, task_id: Uuid) -> ToolError {
    match err {
        EditError::NotFound => ToolError::not_found(task_id),
        other => unavailable(other),
    }
}

fn unavailable(err: impl std::fmt::Display) -> ToolError {
    tracing::warn!(%err, "a task tool failed");
    ToolError::unavailable()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_adds_are_keyed_by_step_and_title() {
        let job = Uuid::now_v7();
        assert_eq!(add_key(job, 0, "Buy milk"), add_key(job, 0, "Buy milk"));
        assert_ne!(add_key(job, 0, "Buy milk"), add_key(job, 1, "Buy milk"));
        assert_ne!(add_key(job, 0, "Buy milk"), add_key(job, 0, "Buy oat milk"));
        assert_ne!(
            add_key(job, 0, "Buy milk"),
            add_key(Uuid::now_v7(), 0, "Buy milk")
        );
    }
}
