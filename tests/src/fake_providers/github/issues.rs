//! GitHub's issues and pull requests, and their JSON as the REST API renders them.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{LOGIN, USER_ID, user_json};
use crate::fake_providers::{
    Items,
    clock::{Clock, iso_seconds},
    draft::{Draft, Priority},
    edit_each,
};

pub(crate) struct Repo {
    id: u64,
    owner: &'static str,
    name: &'static str,
    description: &'static str,
}

/// Where seeded items live, in turn.
const REPOS: [Repo; 3] = [
    Repo {
        id: 401_231_776,
        owner: "acme",
        name: "taskfleet",
        description: "Distributed task queue",
    },
    Repo {
        id: 401_232_019,
        owner: "acme",
        name: "billing-service",
        description: "Invoices, payments and dunning",
    },
    Repo {
        id: 401_240_552,
        owner: "acme",
        name: "web-app",
        description: "Customer-facing web application",
    },
];

/// Who opened the seeded items: (login, id).
const AUTHORS: [(&str, u64); 3] = [
    ("mona-lisa", 1_024_025),
    ("hubot", 480_938),
    ("jdoe-dev", 7_723_021),
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An issue assigned to the user: listed by `/issues?filter=assigned`.
    AssignedIssue,
    /// A pull request whose review is requested from the user: found only by search.
    ReviewRequest,
}

pub(crate) struct Issue {
    pub id: u64,
    number: u64,
    repo: &'static Repo,
    author: (&'static str, u64),
    pub kind: Kind,
    draft: Draft,
    pub open: bool,
    pub comments: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

/// What the fake GitHub holds for its one user.
#[derive(Default)]
pub(crate) struct GitHub {
    pub issues: Vec<Issue>,
    clock: Clock,
    pub rate: super::RateLimits,
}

impl GitHub {
    pub fn seed_review_requests(&mut self, drafts: Vec<Draft>) {
        self.add(drafts, Kind::ReviewRequest);
    }

    fn add(&mut self, drafts: Vec<Draft>, kind: Kind) {
        let stamps = self.clock.seeding(drafts.len());
        for (draft, stamp) in drafts.into_iter().zip(stamps) {
            let index = self.issues.len();
            self.issues.push(Issue {
                id: 2_300_000_000 + index as u64 * 17,
                number: index as u64 + 1,
                repo: &REPOS[index % REPOS.len()],
                author: AUTHORS[index % AUTHORS.len()],
                kind,
                draft,
                open: true,
                comments: (index % 5) as u64,
                created_at: stamp - chrono::Duration::days(3 + (index % 11) as i64),
                updated_at: stamp,
                closed_at: None,
            });
        }
    }
}

impl Items for GitHub {
    fn len(&self) -> usize {
        self.issues.len()
    }

    fn seed(&mut self, drafts: Vec<Draft>) {
        self.add(drafts, Kind::AssignedIssue);
    }

    fn touch(&mut self, indexes: &[usize]) -> usize {
        edit_each(&mut self.issues, indexes, |_, issue| {
            issue.draft.revise();
            issue.comments += 1;
            issue.updated_at = self.clock.now();
        })
    }

    fn complete(&mut self, index: usize) {
        if let Some(issue) = self.issues.get_mut(index) {
            let now = self.clock.now();
            issue.open = false;
            issue.closed_at = Some(now);
            issue.updated_at = now;
        }
    }
}

impl Issue {
    pub fn is_pull_request(&self) -> bool {
        self.kind == Kind::ReviewRequest
    }

    /// The issue object of `/issues` (`with_repository`) and of `/search/issues` (without).
    /// `api` is the REST API's base URL, which the object's own `url`s start with.
    pub fn json(&self, api: &str, with_repository: bool) -> Value {
        let full_name = format!("{}/{}", self.repo.owner, self.repo.name);
        let repository_url = format!("{api}/repos/{full_name}");
        let url = format!("{repository_url}/issues/{}", self.number);
        let html_kind = if self.is_pull_request() {
            "pull"
        } else {
            "issues"
        };
        let html_url = format!("https://github.com/{full_name}/{html_kind}/{}", self.number);
        let me = user_json(LOGIN, USER_ID);
        let assignees = match self.kind {
            Kind::AssignedIssue => vec![me],
            Kind::ReviewRequest => vec![],
        };
        let mut issue = json!({
            "url": url,
            "repository_url": repository_url,
            "labels_url": format!("{url}/labels{{/name}}"),
            "comments_url": format!("{url}/comments"),
            "events_url": format!("{url}/events"),
            "html_url": html_url,
            "id": self.id,
            "node_id": format!("{}_kwDOF{:07X}", if self.is_pull_request() { "PR" } else { "I" }, self.id % 0xFFF_FFFF),
            "number": self.number,
            "title": self.draft.title(),
            "user": user_json(self.author.0, self.author.1),
            "labels": self.labels_json(&repository_url),
            "state": if self.open { "open" } else { "closed" },
            "locked": false,
            "assignee": assignees.first().cloned().unwrap_or(Value::Null),
            "assignees": assignees,
            "milestone": self.milestone_json(&repository_url, &full_name),
            "comments": self.comments,
            "created_at": iso_seconds(self.created_at),
            "updated_at": iso_seconds(self.updated_at),
            "closed_at": self.closed_at.map(iso_seconds),
            "author_association": "MEMBER",
            "active_lock_reason": null,
            "body": self.draft.body(),
            "timeline_url": format!("{url}/timeline"),
            "performed_via_github_app": null,
            "state_reason": if self.open { Value::Null } else { json!("completed") },
        });
        if self.is_pull_request() {
            let pulls = format!("{repository_url}/pulls/{}", self.number);
            issue["draft"] = json!(false);
            issue["pull_request"] = json!({
                "url": pulls,
                "html_url": html_url,
                "diff_url": format!("{html_url}.diff"),
                "patch_url": format!("{html_url}.patch"),
                "merged_at": self.closed_at.map(iso_seconds),
            });
        }
        if with_repository {
            issue["repository"] = json!({
                "id": self.repo.id,
                "node_id": format!("R_kgDOF{:07X}", self.repo.id % 0xFFF_FFFF),
                "name": self.repo.name,
                "full_name": full_name,
                "private": true,
                "owner": user_json(self.repo.owner, 9_919_000 + self.repo.owner.len() as u64),
                "html_url": format!("https://github.com/{full_name}"),
                "description": self.repo.description,
                "fork": false,
                "url": repository_url,
            });
        }
        issue
    }

    /// The draft's labels, plus one for a high priority (GitHub has no priority field).
    fn labels_json(&self, repository_url: &str) -> Vec<Value> {
        let priority = match self.draft.priority {
            Priority::Highest => Some("priority: urgent"),
            Priority::High => Some("priority: high"),
            Priority::Medium | Priority::Low => None,
        };
        self.draft
            .labels
            .iter()
            .map(String::as_str)
            .chain(priority)
            .map(|name| {
                let id = 5_000_000_000 + name.bytes().map(u64::from).sum::<u64>();
                let color = match name {
                    "bug" => "d73a4a",
                    name if name.starts_with("priority") => "b60205",
                    _ => "0e8a16",
                };
                json!({
                    "id": id,
                    "node_id": format!("LA_kwDOF{id:07X}"),
                    "url": format!("{repository_url}/labels/{}", name.replace(' ', "%20")),
                    "name": name,
                    "color": color,
                    "default": name == "bug",
                    "description": null,
                })
            })
            .collect()
    }

    /// A due date is the due date of the milestone the issue is in.
    fn milestone_json(&self, repository_url: &str, full_name: &str) -> Value {
        let Some(due) = self.draft.due else {
            return Value::Null;
        };
        let number = due.format("%Y%m%d").to_string().parse::<u64>().unwrap() % 1000;
        json!({
            "url": format!("{repository_url}/milestones/{number}"),
            "html_url": format!("https://github.com/{full_name}/milestone/{number}"),
            "labels_url": format!("{repository_url}/milestones/{number}/labels"),
            "id": 9_000_000 + number,
            "node_id": format!("MI_kwDOF{:07X}", 9_000_000 + number),
            "number": number,
            "title": format!("Sprint ending {}", due.format("%b %-d")),
            "description": "Two-week sprint",
            "creator": user_json(AUTHORS[0].0, AUTHORS[0].1),
            "open_issues": 4,
            "closed_issues": 9,
            "state": "open",
            "created_at": iso_seconds(self.created_at),
            "updated_at": iso_seconds(self.created_at),
            "due_on": format!("{}T07:00:00Z", due.format("%Y-%m-%d")),
            "closed_at": null,
        })
    }
}
