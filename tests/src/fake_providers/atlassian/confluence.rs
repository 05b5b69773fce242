//! Confluence: inline tasks assigned to the user, `GET /wiki/rest/api/user/current`, and
//! `GET /wiki/api/v2/tasks` with its cursor paging (`_links.next`, a path from `/wiki/api/v2`
//! that keeps the request's other parameters, and the same link in a `Link` header).

use chrono::{DateTime, TimeZone, Utc};
use poem::{Request, Response, handler};
use serde_json::{Value, json};

use super::{ACCOUNT_ID, DISPLAY_NAME, EMAIL, base_before, confluence_error, site_url};
use crate::fake_providers::{
    Items, adf,
    clock::{Clock, iso_millis},
    draft::Draft,
    edit_each, lock, page_token,
    params::Params,
    reply,
};

/// Who wrote the pages the seeded tasks are on.
const AUTHORS: [&str; 2] = ["5d9b2f1e8c3a4b0012a7f3c1", "61c0e4a7b2d9f30069e5a8b4"];
const SPACE_ID: &str = "65539";

pub(crate) struct Task {
    number: usize,
    draft: Draft,
    completed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Task {
    fn id(&self) -> String {
        (1_900_000 + self.number).to_string()
    }

    fn created_by(&self) -> &'static str {
        AUTHORS[self.number % AUTHORS.len()]
    }

    /// Midnight UTC of the due date.
    fn due_at(&self) -> Option<DateTime<Utc>> {
        Some(self.draft.due?.and_hms_opt(0, 0, 0)?.and_utc())
    }

    fn json(&self, body_format: Option<&str>) -> Value {
        let body = match body_format {
            Some("atlas_doc_format") => json!({"atlas_doc_format": {
                "value": self.adf().to_string(),
                "representation": "atlas_doc_format",
            }}),
            Some("storage") => json!({"storage": {
                "value": self.storage(),
                "representation": "storage",
            }}),
            _ => json!({}),
        };
        json!({
            "id": self.id(),
            "localId": format!("{:08x}-5c1d-4e2f-9a3b-{:012x}", self.number * 7919, self.number),
            "spaceId": SPACE_ID,
            "pageId": (98_305 + self.number / 3 * 4).to_string(),
            "blogPostId": null,
            "status": if self.completed_at.is_some() { "complete" } else { "incomplete" },
            "body": body,
            "createdBy": self.created_by(),
            "assignedTo": ACCOUNT_ID,
            "completedBy": self.completed_at.map(|_| ACCOUNT_ID),
            "createdAt": iso_millis(self.created_at),
            "updatedAt": iso_millis(self.updated_at),
            "dueAt": self.due_at().map(iso_millis),
            "completedAt": self.completed_at.map(iso_millis),
        })
    }

    /// The task's line as Confluence's editor stores it: text, the assignee's mention, the
    /// due date.
    fn adf(&self) -> Value {
        let mut inlines = vec![
            adf::text_node(&format!("{} ", self.draft.title())),
            adf::mention(ACCOUNT_ID, DISPLAY_NAME),
        ];
        if let Some(due) = self.due_at() {
            inlines.push(adf::text_node(" "));
            inlines.push(adf::date(due.timestamp_millis()));
        }
        adf::document(vec![adf::paragraph(inlines)])
    }

    fn storage(&self) -> String {
        let title = self
            .draft
            .title()
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        let due = self
            .draft
            .due
            .map(|due| format!(" <time datetime=\"{}\" />", due.format("%Y-%m-%d")))
            .unwrap_or_default();
        format!(
            "<span class=\"placeholder-inline-tasks\">{title} <ac:link><ri:user ri:account-id=\"{ACCOUNT_ID}\" /></ac:link>{due}</span>"
        )
    }
}

/// What the fake Confluence holds for its one user.
#[derive(Default)]
pub(crate) struct Confluence {
    tasks: Vec<Task>,
    clock: Clock,
}

impl Items for Confluence {
    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn seed(&mut self, drafts: Vec<Draft>) {
        let stamps = self.clock.seeding(drafts.len());
        for (draft, stamp) in drafts.into_iter().zip(stamps) {
            let number = self.tasks.len() + 1;
            self.tasks.push(Task {
                number,
                draft,
                completed_at: None,
                created_at: stamp - chrono::Duration::days(1 + (number % 6) as i64),
                updated_at: stamp,
            });
        }
    }

    fn touch(&mut self, indexes: &[usize]) -> usize {
        edit_each(&mut self.tasks, indexes, |_, task| {
            task.draft.revise();
            task.updated_at = self.clock.now();
        })
    }

    fn complete(&mut self, index: usize) {
        if let Some(task) = self.tasks.get_mut(index) {
            let now = self.clock.now();
            task.completed_at = Some(now);
            task.updated_at = now;
        }
    }
}

#[handler]
pub(crate) async fn current_user(req: &Request) -> Response {
    let base = base_before(req, "/wiki/");
    reply::json(
        200,
        &json!({
            "type": "known",
            "accountId": ACCOUNT_ID,
            "accountType": "atlassian",
            "email": EMAIL,
            "publicName": DISPLAY_NAME,
            "profilePicture": {
                "path": "/wiki/aa-avatar/5b10ac8d82e05b22cc7d4ef5",
                "width": 48,
                "height": 48,
                "isDefault": false,
            },
            "displayName": DISPLAY_NAME,
            "isExternalCollaborator": false,
            "_links": {
                "self": format!("{base}/wiki/rest/api/user?accountId={ACCOUNT_ID}"),
                "base": format!("{base}/wiki"),
                "context": "/wiki",
            },
        }),
    )
}

/// An epoch-milliseconds filter: absent, or a bound; `Err` names a parameter Confluence would
/// refuse.
fn bound<'a>(params: &Params, name: &'a str) -> Result<Option<DateTime<Utc>>, &'a str> {
    match params.get(name) {
        None => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .map(Some)
            .ok_or(name),
    }
}

#[handler]
pub(crate) async fn list_tasks(req: &Request) -> Response {
    let params = Params::query(req);
    let status = params.get("status");
    if status.is_some_and(|status| !matches!(status, "complete" | "incomplete")) {
        return confluence_error(400, "INVALID_REQUEST_PARAMETER", "Invalid value for status");
    }
    // Array parameters come comma-separated or repeated.
    let list = |name| -> Vec<String> {
        params
            .all(name)
            .flat_map(|value| value.split(','))
            .map(str::to_owned)
            .collect()
    };
    let (assigned_to, created_by) = (list("assigned-to"), list("created-by"));
    // Every task the fake holds is assigned to its one user.
    let assigned_to_me = assigned_to.is_empty() || assigned_to.iter().any(|id| id == ACCOUNT_ID);
    let mut ranges = Vec::new();
    for (from, to) in [
        ("created-at-from", "created-at-to"),
        ("due-at-from", "due-at-to"),
        ("completed-at-from", "completed-at-to"),
    ] {
        match (bound(&params, from), bound(&params, to)) {
            (Ok(from), Ok(to)) => ranges.push((from, to)),
            (Err(name), _) | (_, Err(name)) => {
                return confluence_error(
                    400,
                    "INVALID_REQUEST_PARAMETER",
                    &format!("Invalid value for {name}"),
                );
            }
        }
    }
    let offset = match params.get("cursor").map(page_token::decode) {
        None => 0,
        Some(Some(offset)) => offset,
        Some(None) => return confluence_error(400, "INVALID_REQUEST_PARAMETER", "Invalid cursor"),
    };
    let limit = params.size("limit", 25, 250);

    let world = lock(req);
    let found: Vec<&Task> = world
        .confluence
        .tasks
        .iter()
        .filter(|task| match status {
            Some("complete") => task.completed_at.is_some(),
            Some(_) => task.completed_at.is_none(),
            None => true,
        })
        .filter(|_| assigned_to_me)
        .filter(|task| created_by.is_empty() || created_by.iter().any(|id| id == task.created_by()))
        .filter(|task| {
            let times = [Some(task.created_at), task.due_at(), task.completed_at];
            times.iter().zip(&ranges).all(|(time, (from, to))| {
                (from.is_none() && to.is_none())
                    || time.is_some_and(|time| {
                        from.is_none_or(|from| time >= from) && to.is_none_or(|to| time <= to)
                    })
            })
        })
        .collect();
    let (page, next) = page_token::page(&found, offset, limit);
    let body_format = params.get("body-format");
    let results: Vec<Value> = page.iter().map(|task| task.json(body_format)).collect();
    let base = format!("{}/wiki", site_url(req));
    let next = next.map(|next| {
        format!(
            "/wiki/api/v2/tasks?{}",
            params.with("cursor", &page_token::encode(next))
        )
    });
    let mut links = json!({"base": base});
    let mut response_links = Vec::new();
    if let Some(next) = &next {
        links["next"] = json!(next);
        response_links.push(format!("<{next}>; rel=\"next\""));
    }
    response_links.push(format!("<{base}>; rel=\"base\""));
    let mut response = reply::json(200, &json!({"results": results, "_links": links}));
    response.headers_mut().insert(
        "Link",
        response_links
            .join(", ")
            .parse()
            .expect("links are header values"),
    );
    response
}
