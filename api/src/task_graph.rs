//! `GET /v1/tasks/graph`: the tenant's work as a graph, for the view the seed applications
//! drew: a node per task in its horizon's lane (`past7d` for work done lately), and edges for
//! what links tasks: a duplicate and its original, Jira issue links, and mails of one thread.
//! Edges are read from what the tasks store (`duplicate_of`, the links Jira lists among an
//! issue's labels, a mail's thread URL), so the graph never disagrees with the tasks.

use std::collections::HashMap;

use poem::web::Data;
use poem_openapi::{Enum, Object, OpenApi, param::Query, payload::Json};
use taskfleet_jobs::{Horizon, TaskStatus, wire};
use taskfleet_storage::TaskRecord;
use uuid::Uuid;

use crate::{auth::TenantKey, error::ApiError, state::AppState};

/// How far ahead the graph looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum GraphWindow {
    /// Today's and this week's work.
    Week,
    /// This month's too.
    Month,
}

/// A lane of the graph view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Lane {
    Today,
    Week,
    Month,
    Past7d,
}

/// What joins two tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum EdgeKind {
    /// `from` repeats `to`, the original.
    Duplicate,
    /// A Jira issue link (`label` names it: "blocks", "is blocked by", …).
    IssueLink,
    /// `from` follows `to` in one mail thread.
    Thread,
}

#[derive(Debug, Object)]
pub struct GraphNode {
    pub id: Uuid,
    pub title: String,
    pub source_kind: String,
    #[oai(nullable)]
    pub url: Option<String>,
    pub status: TaskStatus,
    pub lane: Lane,
    /// Its place in the lane's ranking; absent for duplicates and done work.
    #[oai(nullable)]
    pub rank: Option<i32>,
}

#[derive(Debug, Object, PartialEq)]
pub struct GraphEdge {
    pub from: Uuid,
    pub to: Uuid,
    pub kind: EdgeKind,
    #[oai(nullable)]
    pub label: Option<String>,
}

#[derive(Debug, Object)]
pub struct TaskGraph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

pub struct TaskGraphApi;

#[OpenApi(prefix_path = "/v1", tag = "crate::app::Tag::Tasks")]
impl TaskGraphApi {
    /// The tasks as a graph
    ///
    /// Nodes in lanes (`today`, `week`, `month` within the window, and `past7d`), and the
    /// edges between them: duplicates, Jira issue links, mail threads. At most 2,000 tasks.
    #[oai(path = "/tasks/graph", method = "get", operation_id = "getTaskGraph")]
    async fn graph(
        &self,
        state: Data<&AppState>,
        auth: TenantKey,
        /// `week` (default) or `month`.
        window: Query<Option<GraphWindow>>,
    ) -> Result<Json<TaskGraph>, ApiError> {
        let horizons: &[Horizon] = match window.0.unwrap_or(GraphWindow::Week) {
            GraphWindow::Week => &[Horizon::Today, Horizon::Week],
            GraphWindow::Month => &[Horizon::Today, Horizon::Week, Horizon::Month],
        };
        let tasks = state.tasks.graph(auth.0.id, horizons).await?;
        Ok(Json(TaskGraph {
            edges: edges(&tasks),
            nodes: tasks.into_iter().map(node).collect(),
        }))
    }
}

fn node(task: TaskRecord) -> GraphNode {
    let status = wire::parse(&task.status).unwrap_or(TaskStatus::Open);
    let lane = match (status, wire::parse(&task.horizon).unwrap_or(Horizon::Month)) {
        (TaskStatus::Done, _) => Lane::Past7d,
        (_, Horizon::Today) => Lane::Today,
        (_, Horizon::Week) => Lane::Week,
        (_, Horizon::Month) => Lane::Month,
    };
    GraphNode {
        id: task.id,
        title: task.title,
        source_kind: task.source_kind,
        url: task.url,
        status,
        lane,
        rank: task.rank,
    }
}

/// The edges among `tasks` (ordered by id, so by age).
fn edges(tasks: &[TaskRecord]) -> Vec<GraphEdge> {
    let present: HashMap<Uuid, ()> = tasks.iter().map(|t| (t.id, ())).collect();
    let mut edges: Vec<GraphEdge> = tasks
        .iter()
        .filter_map(|t| {
            let original = t.duplicate_of.filter(|id| present.contains_key(id))?;
            Some(GraphEdge {
                from: t.id,
                to: original,
                kind: EdgeKind::Duplicate,
                label: None,
            })
        })
        .collect();
    // A Jira issue's first label is its key; its links follow as "<relation> <KEY>".
    let by_key: HashMap<&str, Uuid> = tasks
        .iter()
        .filter(|t| t.source_kind == "jira")
        .filter_map(|t| Some((t.labels.first()?.as_str(), t.id)))
        .collect();
    for task in tasks.iter().filter(|t| t.source_kind == "jira") {
        for label in task.labels.iter().skip(1) {
            let Some((relation, key)) = label.rsplit_once(' ') else {
                continue;
            };
            if let Some(&other) = by_key.get(key).filter(|_| is_issue_key(key)) {
                edges.push(GraphEdge {
                    from: task.id,
                    to: other,
                    kind: EdgeKind::IssueLink,
                    label: Some(relation.to_owned()),
                });
            }
        }
    }
    // Mails of one thread share its URL: each follows the one before it.
    let mut last_in_thread: HashMap<&str, Uuid> = HashMap::new();
    for mail in tasks.iter().filter(|t| t.source_kind == "gmail") {
        let Some(thread) = mail.url.as_deref() else {
            continue;
        };
        if let Some(before) = last_in_thread.insert(thread, mail.id) {
            edges.push(GraphEdge {
                from: mail.id,
                to: before,
                kind: EdgeKind::Thread,
                label: None,
            });
        }
    }
    edges
}

/// `OPS-7`: a project key (a capital letter, then capitals or digits), a dash, a number.
fn is_issue_key(text: &str) -> bool {
    let Some((project, number)) = text.split_once('-') else {
        return false;
    };
    project.starts_with(|c: char| c.is_ascii_uppercase())
        && project
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        && !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn task(kind: &str, labels: &[&str], url: Option<&str>) -> TaskRecord {
        TaskRecord {
            id: Uuid::now_v7(),
            tenant_id: Uuid::nil(),
            connector_id: None,
            source_kind: kind.into(),
            source_ref: String::new(),
            title: labels.first().map(|l| l.to_string()).unwrap_or_default(),
            snippet: String::new(),
            url: url.map(str::to_owned),
            due_at: None,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            status: "open".into(),
            horizon: "week".into(),
            source_updated_at: None,
            source_removed_at: None,
            duplicate_of: None,
            duplicate_similarity: None,
            urgency: None,
            importance: None,
            recency: None,
            source_signal: None,
            priority: None,
            rank: None,
            reason: None,
            ranked_by: None,
            ranked_at: None,
            completed_at: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn duplicates_issue_links_and_threads_become_edges() {
        let ops7 = task(
            "jira",
            &["OPS-7", "project OPS", "High", "blocks OPS-9"],
            None,
        );
        let ops9 = task(
            "jira",
            &["OPS-9", "project OPS", "is blocked by OPS-7"],
            None,
        );
        let absent = task("jira", &["OPS-1", "relates to OPS-404"], None);
        let first = task(
            "gmail",
            &["from Ana"],
            Some("https://mail.google.com/#all/t1"),
        );
        let reply = task(
            "gmail",
            &["from Ben"],
            Some("https://mail.google.com/#all/t1"),
        );
        let mut twin = task("github", &["acme/api#3"], None);
        twin.duplicate_of = Some(ops7.id);
        let tasks = [ops7, ops9, absent, first, reply, twin];
        let edges = edges(&tasks);
        let has = |from: usize, to: usize, kind: EdgeKind, label: Option<&str>| {
            edges.contains(&GraphEdge {
                from: tasks[from].id,
                to: tasks[to].id,
                kind,
                label: label.map(str::to_owned),
            })
        };
        assert!(has(5, 0, EdgeKind::Duplicate, None), "{edges:?}");
        assert!(has(0, 1, EdgeKind::IssueLink, Some("blocks")), "{edges:?}");
        assert!(
            has(1, 0, EdgeKind::IssueLink, Some("is blocked by")),
            "{edges:?}"
        );
        assert!(has(4, 3, EdgeKind::Thread, None), "{edges:?}");
        assert_eq!(
            edges.len(),
            4,
            "a link to an issue outside the graph is left out: {edges:?}"
        );
    }

    #[test]
    fn only_issue_keys_link() {
        assert!(is_issue_key("OPS-7") && is_issue_key("A1-10"));
        assert!(!is_issue_key("ops-7") && !is_issue_key("OPS-") && !is_issue_key("OPS7"));
    }
}
