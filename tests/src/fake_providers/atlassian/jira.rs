//! Jira: the user's issues, `GET /rest/api/3/myself`, and the enhanced search
//! (`POST`/`GET /rest/api/3/search/jql`) with its `nextPageToken`/`isLast` paging.
//!
//! As the real endpoint does, the search returns only each issue's id, key and self unless
//! `fields` names more (`*all` and `*navigable` name every field; `-name` drops one).

use chrono::{DateTime, Utc};
use poem::{Request, Response, handler, http::Method};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    ACCOUNT_ID, DISPLAY_NAME, EMAIL, base_before, jira_error,
    jql::{self, Category, Facts, SortField},
};
use crate::fake_providers::{
    Items, adf, clock::Clock, draft::Draft, edit_each, lock, page_token, params::Params, reply,
};

const PROJECT_KEY: &str = "DEMO";

/// Jira's workflow statuses the fake uses, one per category.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    ToDo,
    InProgress,
    Done,
}

impl Status {
    fn category(self) -> Category {
        match self {
            Status::ToDo => Category::New,
            Status::InProgress => Category::Indeterminate,
            Status::Done => Category::Done,
        }
    }

    fn json(self, base: &str) -> Value {
        let (id, name, category_id, key, color, category_name) = match self {
            Status::ToDo => ("10000", "To Do", 2, "new", "blue-gray", "To Do"),
            Status::InProgress => (
                "3",
                "In Progress",
                4,
                "indeterminate",
                "yellow",
                "In Progress",
            ),
            Status::Done => ("10001", "Done", 3, "done", "green", "Done"),
        };
        json!({
            "self": format!("{base}/rest/api/3/status/{id}"),
            "description": "",
            "iconUrl": format!("{base}/"),
            "name": name,
            "id": id,
            "statusCategory": {
                "self": format!("{base}/rest/api/3/statuscategory/{category_id}"),
                "id": category_id,
                "key": key,
                "colorName": color,
                "name": category_name,
            },
        })
    }
}

pub(crate) struct Issue {
    number: usize,
    draft: Draft,
    status: Status,
    /// The index of the issue this one blocks.
    blocks: Option<usize>,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
}

impl Issue {
    fn id(&self) -> String {
        (10_000 + self.number).to_string()
    }

    fn key(&self) -> String {
        format!("{PROJECT_KEY}-{}", self.number)
    }

    fn facts(&self) -> Facts {
        Facts {
            category: self.status.category(),
            updated: self.updated,
            created: self.created,
        }
    }
}

/// What the fake Jira holds for its one user.
#[derive(Default)]
pub(crate) struct Jira {
    issues: Vec<Issue>,
    clock: Clock,
}

impl Items for Jira {
    fn len(&self) -> usize {
        self.issues.len()
    }

    /// Every third issue is in progress, the others to do; every fourth blocks the one before.
    fn seed(&mut self, drafts: Vec<Draft>) {
        let stamps = self.clock.seeding(drafts.len());
        for (draft, stamp) in drafts.into_iter().zip(stamps) {
            let index = self.issues.len();
            self.issues.push(Issue {
                number: index + 1,
                draft,
                status: if index % 3 == 1 {
                    Status::InProgress
                } else {
                    Status::ToDo
                },
                blocks: (index % 4 == 3).then(|| index - 1),
                created: stamp - chrono::Duration::days(2 + (index % 9) as i64),
                updated: stamp,
            });
        }
    }

    fn touch(&mut self, indexes: &[usize]) -> usize {
        edit_each(&mut self.issues, indexes, |_, issue| {
            issue.draft.revise();
            issue.updated = self.clock.now();
        })
    }

    fn complete(&mut self, index: usize) {
        if let Some(issue) = self.issues.get_mut(index) {
            issue.status = Status::Done;
            issue.updated = self.clock.now();
        }
    }
}

#[handler]
pub(crate) async fn myself(req: &Request) -> Response {
    let base = base_before(req, "/rest/api/3");
    reply::json(
        200,
        &user_json(&base, ACCOUNT_ID, DISPLAY_NAME, Some(EMAIL)),
    )
}

fn user_json(base: &str, account_id: &str, name: &str, email: Option<&str>) -> Value {
    let avatar = format!(
        "https://secure.gravatar.com/avatar/{account_id}?d=https%3A%2F%2Favatar-management--avatars.us-west-2.prod.public.atl-paas.net%2Finitials%2FDU-5.png"
    );
    json!({
        "self": format!("{base}/rest/api/3/user?accountId={account_id}"),
        "accountId": account_id,
        "accountType": "atlassian",
        "emailAddress": email,
        "avatarUrls": {"48x48": avatar, "24x24": avatar, "16x16": avatar, "32x32": avatar},
        "displayName": name,
        "active": true,
        "timeZone": "UTC",
        "locale": "en_US",
    })
}

/// Who reports the seeded issues: (account id, name).
const REPORTERS: [(&str, &str); 2] = [
    ("5d9b2f1e8c3a4b0012a7f3c1", "Priya Raman"),
    ("61c0e4a7b2d9f30069e5a8b4", "Marcus Chen"),
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchRequest {
    jql: Option<String>,
    max_results: Option<usize>,
    fields: Option<Vec<String>>,
    next_page_token: Option<String>,
}

impl SearchRequest {
    /// The GET form: `fields` comma-separated and/or repeated.
    fn from_query(params: &Params) -> SearchRequest {
        let fields: Vec<String> = params
            .all("fields")
            .flat_map(|value| value.split(','))
            .map(|field| field.trim().to_owned())
            .collect();
        SearchRequest {
            jql: params.get("jql").map(str::to_owned),
            max_results: params.get("maxResults").and_then(|n| n.parse().ok()),
            fields: (!fields.is_empty()).then_some(fields),
            next_page_token: params.get("nextPageToken").map(str::to_owned),
        }
    }
}

#[handler]
pub(crate) async fn search(req: &Request, body: String) -> Response {
    let request = if req.method() == Method::POST {
        match serde_json::from_str::<SearchRequest>(&body) {
            Ok(request) => request,
            Err(_) => {
                return jira_error(
                    400,
                    "Invalid request payload. Refer to the REST API documentation and try again.",
                );
            }
        }
    } else {
        SearchRequest::from_query(&Params::query(req))
    };
    let query = match jql::parse(request.jql.as_deref().unwrap_or_default()) {
        Ok(query) => query,
        Err(message) => return jira_error(400, &message),
    };
    let offset = match request.next_page_token.as_deref().map(page_token::decode) {
        None => 0,
        Some(Some(offset)) => offset,
        Some(None) => {
            return jira_error(400, "The provided next page token is invalid or expired.");
        }
    };
    let max_results = request.max_results.unwrap_or(50).clamp(1, 100);
    let fields = request.fields.unwrap_or_default();

    let world = lock(req);
    let issues = &world.jira.issues;
    let mut found: Vec<&Issue> = issues
        .iter()
        .filter(|issue| query.matches(&issue.facts()))
        .collect();
    found.sort_by(|a, b| {
        query
            .order
            .iter()
            .map(|&(field, descending)| {
                let ordering = match field {
                    SortField::Updated => a.updated.cmp(&b.updated),
                    SortField::Created => a.created.cmp(&b.created),
                    SortField::Key => a.number.cmp(&b.number),
                };
                if descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            })
            .find(|ordering| ordering.is_ne())
            .unwrap_or_else(|| a.number.cmp(&b.number))
    });
    let (page, next) = page_token::page(&found, offset, max_results);
    let base = base_before(req, "/rest/api/3");
    let rendered: Vec<Value> = page
        .iter()
        .map(|issue| issue_json(issue, issues, &base, &fields))
        .collect();
    let mut body = json!({"issues": rendered, "isLast": next.is_none()});
    if let Some(next) = next {
        body["nextPageToken"] = json!(page_token::encode(next));
    }
    reply::json(200, &body)
}

/// Whether `fields` (as the request gave it) asks for the field `name`.
fn wanted(fields: &[String], name: &str) -> bool {
    let all = fields
        .iter()
        .any(|field| field == "*all" || field == "*navigable");
    let excluded = fields
        .iter()
        .any(|field| field.strip_prefix('-') == Some(name));
    (all || fields.iter().any(|field| field == name)) && !excluded
}

fn issue_json(issue: &Issue, issues: &[Issue], base: &str, wanted_fields: &[String]) -> Value {
    let all = all_fields(issue, issues, base);
    let fields: Map<String, Value> = all
        .into_iter()
        .filter(|(name, _)| wanted(wanted_fields, name))
        .collect();
    let mut json = json!({
        "expand": "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations",
        "id": issue.id(),
        "self": format!("{base}/rest/api/3/issue/{}", issue.id()),
        "key": issue.key(),
    });
    if !fields.is_empty() {
        json["fields"] = Value::Object(fields);
    }
    json
}

fn all_fields(issue: &Issue, issues: &[Issue], base: &str) -> Map<String, Value> {
    let draft = &issue.draft;
    let priority = draft.priority;
    let index = issue.number - 1;
    // Every fifth issue was filed without a description.
    let description = if index % 5 == 4 {
        Value::Null
    } else {
        adf::from_text(&draft.body())
    };
    let reporter = REPORTERS[index % REPORTERS.len()];
    let (issue_type_id, issue_type) = if draft.labels.iter().any(|label| label == "bug") {
        ("10004", "Bug")
    } else {
        ("10002", "Task")
    };
    let fields = json!({
        "summary": draft.title(),
        "description": description,
        "duedate": draft.due.map(|due| due.format("%Y-%m-%d").to_string()),
        "priority": {
            "self": format!("{base}/rest/api/3/priority/{}", priority.jira_id()),
            "iconUrl": format!("{base}/images/icons/priorities/{}.svg", priority.name().to_ascii_lowercase()),
            "name": priority.name(),
            "id": priority.jira_id(),
        },
        "labels": draft.labels,
        "issuelinks": links_json(index, issues, base),
        "updated": jira_time(issue.updated),
        "created": jira_time(issue.created),
        "status": issue.status.json(base),
        "project": {
            "self": format!("{base}/rest/api/3/project/10000"),
            "id": "10000",
            "key": PROJECT_KEY,
            "name": "Demo Project",
            "projectTypeKey": "software",
            "simplified": false,
        },
        "issuetype": {
            "self": format!("{base}/rest/api/3/issuetype/{issue_type_id}"),
            "id": issue_type_id,
            "name": issue_type,
            "subtask": false,
            "hierarchyLevel": 0,
        },
        "assignee": user_json(base, ACCOUNT_ID, DISPLAY_NAME, Some(EMAIL)),
        "reporter": user_json(base, reporter.0, reporter.1, None),
    });
    match fields {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// The "Blocks" links of issue `index`: outward to the issue it blocks, inward from the
/// issues that block it.
fn links_json(index: usize, issues: &[Issue], base: &str) -> Vec<Value> {
    let link = |blocker: usize, direction: &str, other: &Issue| {
        json!({
            "id": (20_000 + blocker).to_string(),
            "self": format!("{base}/rest/api/3/issueLink/{}", 20_000 + blocker),
            "type": {
                "id": "10000",
                "name": "Blocks",
                "inward": "is blocked by",
                "outward": "blocks",
                "self": format!("{base}/rest/api/3/issueLinkType/10000"),
            },
            direction: {
                "id": other.id(),
                "key": other.key(),
                "self": format!("{base}/rest/api/3/issue/{}", other.id()),
                "fields": {
                    "summary": other.draft.title(),
                    "status": other.status.json(base),
                },
            },
        })
    };
    let mut links = Vec::new();
    if let Some(blocked) = issues[index]
        .blocks
        .filter(|&blocked| blocked < issues.len())
    {
        links.push(link(index, "outwardIssue", &issues[blocked]));
    }
    for (blocker, other) in issues.iter().enumerate() {
        if other.blocks == Some(index) {
            links.push(link(blocker, "inwardIssue", other));
        }
    }
    links
}

/// `2026-11-30T10:00:00.000+0000`
fn jira_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}
