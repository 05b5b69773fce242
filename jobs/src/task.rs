//! What a task is, in the words every crate shares. A task is one work item pulled from a
//! connector (an issue, a mail, a document): connectors find [`Item`]s and guess their
//! horizon, the ledger keeps them as tasks, the prioritiser decides their horizon, and the
//! API shows them.

use chrono::{DateTime, Utc};
use poem_openapi::Enum;
use serde::{Deserialize, Serialize};

/// When a task should be done: the three focus lists.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Enum, Serialize, Deserialize,
)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Horizon {
    Today,
    Week,
    Month,
}

/// Whether the work item is still to be done at its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Enum, Serialize, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Open,
    /// Closed, completed, resolved or removed at the source.
    Done,
}

/// One work item as a connector found it, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The provider's id for it, unique within the provider for the tenant.
    pub source_ref: String,
    pub title: String,
    /// At most 500 characters of its text, on one line.
    pub snippet: String,
    pub url: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub labels: Vec<String>,
    /// When the provider last saw it change.
    pub updated_at: Option<DateTime<Utc>>,
    pub status: TaskStatus,
    /// A first guess from the due date and how pressing the provider says it is; kept only
    /// for a new task, since the prioritiser decides later.
    pub horizon: Horizon,
}
