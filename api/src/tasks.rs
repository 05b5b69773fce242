//! `/v1/tasks`: the work items ingests brought in, newest first.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use taskfleet_jobs::{Horizon, TaskStatus, wire};
use taskfleet_storage::{Scope, TaskFilter, TaskRecord};
use uuid::Uuid;

use crate::{auth::TenantKey, error::ApiError, paging, state::AppState};

/// A work item from a connected account.
#[derive(Debug, Object)]
pub struct Task {
    pub id: Uuid,
    /// The provider it came from: `github`, `jira`, `confluence`, `gmail`, `gdrive`.
    pub source_kind: String,
    /// The provider's id for it.
    pub source_ref: String,
    /// The connector that last brought it; absent once that connector was deleted.
    pub connector_id: Option<Uuid>,
    pub title: String,
    /// At most 500 characters of its text.
    pub snippet: String,
    pub url: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub labels: Vec<String>,
    pub status: TaskStatus,
    pub horizon: Horizon,
    /// When the provider last saw it change.
    pub source_updated_at: Option<DateTime<Utc>>,
    /// Set when its connector was deleted: the task stays, from a removed source.
    pub source_removed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct TaskPage {
    /// Newest first.
    pub tasks: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl From<TaskRecord> for Task {
    fn from(record: TaskRecord) -> Task {
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
            source_updated_at: record.source_updated_at,
            source_removed_at: record.source_removed_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

pub struct TasksApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Tasks")]
impl TasksApi {
    /// List tasks
    ///
    /// Newest first, filtered, one page at a time: the key's own tenant's tasks (an operator
    /// key's too: tasks are people's work, not the fleet's).
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/tasks", method = "get")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// Only tasks from this provider (`github`, `jira`, `confluence`, `gmail`, `gdrive`).
        source_kind: Query<Option<String>>,
        status: Query<Option<TaskStatus>>,
        horizon: Query<Option<Horizon>>,
        /// `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 500 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "500")))]
        limit: Query<Option<i64>>,
    ) -> Result<Json<TaskPage>, ApiError> {
        let before = paging::before(cursor.0)?;
        let limit = limit.0.unwrap_or(paging::DEFAULT_LIMIT);
        let filter = TaskFilter {
            source_kind: source_kind.0,
            status: status.0,
            horizon: horizon.0,
            before,
            limit,
        };
        let records = state.tasks.list(Scope::Tenant(auth.0.id), &filter).await?;
        let next_cursor = paging::next_cursor(records.iter().map(|r| r.id), limit);
        Ok(Json(TaskPage {
            tasks: records.into_iter().map(Task::from).collect(),
            next_cursor,
        }))
    }
}
