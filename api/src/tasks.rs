//! `/v1/tasks`: the tenant's work items, from connectors or typed in by hand, as the
//! prioritiser ranked them. `?horizon=` answers a focus list (rank order); without it, every
//! task newest first with filters. Changes commit with the jobs they set off (storage's
//! `task_edits`): a changed text is embedded again, and the lists are ranked again.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::MaybeUndefined,
};
use taskfleet_jobs::{Horizon, TaskStatus, wire};
use taskfleet_storage::{EditError, Editor, NewTask, Scope, TaskEdit, TaskFilter, TaskRecord};
use uuid::Uuid;

use crate::{auth::TenantKey, error::ApiError, observe::RequestId, paging, state::AppState};

/// A work item: from a connected account, or typed in by hand (`source_kind` `manual`).
#[derive(Debug, Object)]
pub struct Task {
    pub id: Uuid,
    /// Where it came from: `github`, `jira`, `confluence`, `gmail`, `gdrive`, or `manual`.
    pub source_kind: String,
    /// The provider's id for it (a manual task's own id).
    pub source_ref: String,
    /// The connector that last brought it; absent once that connector was deleted.
    #[oai(nullable)]
    pub connector_id: Option<Uuid>,
    pub title: String,
    /// At most 500 characters of its text (a manual task's description).
    pub snippet: String,
    /// Its page at the source.
    #[oai(nullable)]
    pub url: Option<String>,
    #[oai(nullable)]
    pub due_at: Option<DateTime<Utc>>,
    pub labels: Vec<String>,
    pub status: TaskStatus,
    /// The focus list it belongs to.
    pub horizon: Horizon,
    /// Its place within the horizon (1 is first; 1 to 3 are the focus list); absent when it
    /// is done, a duplicate, or not ranked yet.
    #[oai(nullable)]
    pub rank: Option<i32>,
    /// The prioritiser's signals, each in [0, 1]; absent until it is ranked.
    #[oai(nullable)]
    pub scores: Option<TaskScores>,
    /// The weighted sum of the scores.
    #[oai(nullable)]
    pub priority: Option<f32>,
    /// Why it sits where it does, in one line.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// `formula`, or the model that ranked it.
    #[oai(nullable)]
    pub ranked_by: Option<String>,
    /// The older task this one repeats (the same work seen in another source).
    #[oai(nullable)]
    pub duplicate_of: Option<Uuid>,
    /// When it was done.
    #[oai(nullable)]
    pub completed_at: Option<DateTime<Utc>>,
    /// When the provider last saw it change.
    #[oai(nullable)]
    pub source_updated_at: Option<DateTime<Utc>>,
    /// Set when its connector was deleted: the task stays, from a removed source.
    #[oai(nullable)]
    pub source_removed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The four signals the prioritiser weighs (ADR 0011).
#[derive(Debug, Object)]
pub struct TaskScores {
    /// The due date against now in the tenant's time zone; overdue is 1.
    pub urgency: f32,
    /// Priority markers: Jira priority, GitHub labels, a review asked of you.
    pub importance: f32,
    /// How lately it changed.
    pub recency: f32,
    /// Assigned to you, rather than mentioned or shared.
    pub source_signal: f32,
}

#[derive(Debug, Object)]
pub struct TaskPage {
    /// A focus list in rank order; otherwise newest first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page and for focus lists.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// A focus list, or the work done lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum TaskView {
    Today,
    Week,
    Month,
    /// Done in the last 7 days, latest first.
    Past7d,
}

/// A task typed by hand.
#[derive(Debug, Object)]
pub struct TaskInput {
    #[oai(validator(min_length = 1, max_length = 500))]
    pub title: String,
    #[oai(default, validator(max_length = 10000))]
    pub description: String,
    #[oai(nullable)]
    pub due_at: Option<DateTime<Utc>>,
}

/// Fields to change; absent ones stay, `due_at: null` clears the due date.
#[derive(Debug, Object)]
pub struct TaskPatch {
    #[oai(validator(min_length = 1, max_length = 500))]
    #[oai(nullable)]
    pub title: Option<String>,
    #[oai(validator(max_length = 10000))]
    #[oai(nullable)]
    pub description: Option<String>,
    pub due_at: MaybeUndefined<DateTime<Utc>>,
    #[oai(nullable)]
    pub status: Option<TaskStatus>,
}

#[derive(ApiResponse)]
pub enum TaskCreated {
    /// Stored; its embedding and ranking are enqueued.
    #[oai(status = 201)]
    Created(Json<Task>),
}

#[derive(ApiResponse)]
pub enum TaskDeleted {
    /// Deleted; its vector is removed by an `embed.items` job.
    #[oai(status = 204)]
    Deleted,
}

impl From<TaskRecord> for Task {
    fn from(record: TaskRecord) -> Task {
        let scores = match (
            record.urgency,
            record.importance,
            record.recency,
            record.source_signal,
        ) {
            (Some(urgency), Some(importance), Some(recency), Some(source_signal)) => {
                Some(TaskScores {
                    urgency,
                    importance,
                    recency,
                    source_signal,
                })
            }
            _ => None,
        };
        Task {
            id: record.id,
            source_kind: record.source_kind,
            source_ref: record.source_ref,
            connector_id: record.connector_id,
            title: record.title,
            snippet: record.snippet,
            url: record.url,
            due_at: record.due_at,
            labels: record.labels,
            status: wire::parse(&record.status).unwrap_or(TaskStatus::Open),
            horizon: wire::parse(&record.horizon).unwrap_or(Horizon::Month),
            rank: record.rank,
            scores,
            priority: record.priority,
            reason: record.reason,
            ranked_by: record.ranked_by,
            duplicate_of: record.duplicate_of,
            completed_at: record.completed_at,
            source_updated_at: record.source_updated_at,
            source_removed_at: record.source_removed_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

impl From<EditError> for ApiError {
    fn from(err: EditError) -> ApiError {
        match err {
            EditError::NotFound => ApiError::not_found("no task with this id"),
            EditError::NothingToUndo => {
                ApiError::conflict("nothing_to_undo", "the task has no status change to undo")
            }
            EditError::Db(err) => err.into(),
            EditError::Enqueue(message) => ApiError::conflict("not_enqueued", message),
        }
    }
}

fn editor<'a>(auth: &'a TenantKey, request_id: &RequestId) -> Editor<'a> {
    Editor {
        tenant: auth.0.id,
        actor: &auth.0.name,
        request_id: Some(request_id.0.clone()),
    }
}

pub struct TasksApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Tasks")]
impl TasksApi {
    /// List tasks, or a focus list
    ///
    /// With `horizon`, the focus list of `today`, `week` or `month` in rank order (`limit`
    /// defaults to 3), or `past7d`, the work done in the last 7 days. Without it, every task
    /// newest first, filtered, one page at a time. Always the key's own tenant's tasks (an
    /// operator key's too: tasks are people's work, not the fleet's).
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/tasks", method = "get", operation_id = "listTasks")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        horizon: Query<Option<TaskView>>,
        /// Only tasks from this source (`github`, `jira`, `confluence`, `gmail`, `gdrive`,
        /// `manual`).
        source_kind: Query<Option<String>>,
        status: Query<Option<TaskStatus>>,
        /// Words the title or text contains (case-insensitive).
        #[oai(validator(max_length = 200))]
        q: Query<Option<String>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50; 3 for a focus list).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<TaskPage>, ApiError> {
        let tenant = auth.0.id;
        if let Some(view) = horizon.0 {
            let limit = limit.0.unwrap_or(3);
            let records = match view {
                TaskView::Today => state.tasks.focus(tenant, Horizon::Today, limit).await?,
                TaskView::Week => state.tasks.focus(tenant, Horizon::Week, limit).await?,
                TaskView::Month => state.tasks.focus(tenant, Horizon::Month, limit).await?,
                TaskView::Past7d => state.tasks.done_lately(tenant, limit).await?,
            };
            return Ok(Json(TaskPage {
                tasks: records.into_iter().map(Task::from).collect(),
                next_cursor: None,
            }));
        }
        let before = paging::before(cursor.0)?;
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let filter = TaskFilter {
            source_kind: source_kind.0,
            status: status.0,
            q: q.0.filter(|q| !q.trim().is_empty()),
            before,
            limit,
        };
        let records = state.tasks.list(Scope::Tenant(tenant), &filter).await?;
        let next_cursor = paging::next_cursor(records.iter().map(|r| r.id), limit);
        Ok(Json(TaskPage {
            tasks: records.into_iter().map(Task::from).collect(),
            next_cursor,
        }))
    }

    /// Add a task by hand
    ///
    /// Embedded and ranked like the tasks connectors bring.
    #[oai(path = "/tasks", method = "post", operation_id = "createTask")]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        body: Json<TaskInput>,
    ) -> Result<TaskCreated, ApiError> {
        let input = body.0;
        let record = state
            .tasks
            .create(
                editor(&auth, request_id.0),
                NewTask {
                    title: input.title,
                    description: input.description,
                    due_at: input.due_at,
                },
            )
            .await?;
        state.wake_dispatcher();
        Ok(TaskCreated::Created(Json(record.into())))
    }

    /// Get a task
    #[oai(path = "/tasks/:id", method = "get", operation_id = "getTask")]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        id: Path<Uuid>,
    ) -> Result<Json<Task>, ApiError> {
        match state.tasks.get(auth.0.id, id.0).await? {
            Some(record) => Ok(Json(record.into())),
            None => Err(EditError::NotFound.into()),
        }
    }

    /// Change a task
    ///
    /// A connector's next ingest overwrites what its source changed since.
    #[oai(path = "/tasks/:id", method = "patch", operation_id = "updateTask")]
    async fn update(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
        body: Json<TaskPatch>,
    ) -> Result<Json<Task>, ApiError> {
        let patch = body.0;
        let edit = TaskEdit {
            title: patch.title,
            description: patch.description,
            due_at: match patch.due_at {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(at) => Some(Some(at)),
            },
            status: patch.status,
        };
        let record = state
            .tasks
            .update(editor(&auth, request_id.0), id.0, edit)
            .await?;
        state.wake_dispatcher();
        Ok(Json(record.into()))
    }

    /// Delete a task
    #[oai(path = "/tasks/:id", method = "delete", operation_id = "deleteTask")]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
    ) -> Result<TaskDeleted, ApiError> {
        state
            .tasks
            .delete(editor(&auth, request_id.0), id.0)
            .await?;
        state.wake_dispatcher();
        Ok(TaskDeleted::Deleted)
    }

    /// Complete a task
    ///
    /// Done, with `completed_at`; the focus lists are ranked again.
    #[oai(
        path = "/tasks/:id/complete",
        method = "post",
        operation_id = "completeTask"
    )]
    async fn complete(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
    ) -> Result<Json<Task>, ApiError> {
        let record = state
            .tasks
            .complete(editor(&auth, request_id.0), id.0)
            .await?;
        state.wake_dispatcher();
        Ok(Json(record.into()))
    }

    /// Undo a task's last status change
    ///
    /// Back to the status before its last change (read from the task's events); 409 when
    /// it has none.
    #[oai(path = "/tasks/:id/undo", method = "post", operation_id = "undoTask")]
    async fn undo(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        request_id: Data<&RequestId>,
        id: Path<Uuid>,
    ) -> Result<Json<Task>, ApiError> {
        let record = state.tasks.undo(editor(&auth, request_id.0), id.0).await?;
        state.wake_dispatcher();
        Ok(Json(record.into()))
    }
}
