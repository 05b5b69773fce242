//! `GET /issues` (the user's assigned issues) and `GET /search/issues`, with GitHub's paging:
//! `per_page` (default 30, at most 100), `page`, and a `Link` header of absolute URLs that
//! keep every query parameter of the request.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use poem::{Request, Response, handler};
use serde_json::{Value, json};

use super::{
    LOGIN,
    issues::{Issue, Kind},
};
use crate::fake_providers::{lock, params::Params, reply};

#[handler]
pub(crate) async fn assigned_issues(req: &Request) -> Response {
    let params = Params::query(req);
    let state = params.get("state").unwrap_or("open");
    if !matches!(state, "open" | "closed" | "all") {
        return validation_failed("Issue", "state");
    }
    let since = match params.get("since").map(parse_time) {
        None => None,
        Some(Some(since)) => Some(since),
        Some(None) => return validation_failed("Issue", "since"),
    };
    let world = lock(req);
    let mut found: Vec<&Issue> = world
        .github
        .issues
        .iter()
        .filter(|issue| issue.kind == Kind::AssignedIssue)
        .filter(|issue| match state {
            "open" => issue.open,
            "closed" => !issue.open,
            _ => true,
        })
        .filter(|issue| since.is_none_or(|since| issue.updated_at >= since))
        .collect();
    sort(
        &mut found,
        params.get("sort").unwrap_or("created"),
        params.get("direction") != Some("asc"),
    );
    let api = api_base(req);
    let (items, link) = page(req, &params, &found);
    let body = Value::Array(items.iter().map(|issue| issue.json(&api, true)).collect());
    with_link(reply::json(200, &body), link)
}

#[handler]
pub(crate) async fn search_issues(req: &Request) -> Response {
    let params = Params::query(req);
    let Some(query) = params.get("q").filter(|q| !q.trim().is_empty()) else {
        return validation_failed("Search", "q");
    };
    let Some(terms) = query
        .split_whitespace()
        .map(Term::parse)
        .collect::<Option<Vec<_>>>()
    else {
        return validation_failed("Search", "q");
    };
    let world = lock(req);
    let mut found: Vec<&Issue> = world
        .github
        .issues
        .iter()
        .filter(|issue| terms.iter().all(|term| term.matches(issue)))
        .collect();
    // Without `sort`, "best match" puts the most recently updated first here.
    sort(
        &mut found,
        params.get("sort").unwrap_or("updated"),
        params.get("order") != Some("asc"),
    );
    let api = api_base(req);
    let total_count = found.len();
    let (items, link) = page(req, &params, &found);
    let items: Vec<Value> = items
        .iter()
        .map(|issue| {
            let mut item = issue.json(&api, false);
            item["score"] = json!(1.0);
            item
        })
        .collect();
    let body = json!({"total_count": total_count, "incomplete_results": false, "items": items});
    with_link(reply::json(200, &body), link)
}

/// One qualifier of a search query; words that are not qualifiers this fake knows are
/// ignored, as free text that matches everything would be.
enum Term {
    PullRequests,
    Issues,
    Open,
    Closed,
    ReviewRequestedFrom(String),
    AssignedTo(String),
    Updated(Comparison, DateTime<Utc>),
    Anything,
}

#[derive(Clone, Copy)]
enum Comparison {
    After,
    AtOrAfter,
    Before,
    AtOrBefore,
    /// A bare date: that whole day.
    OnDay,
}

impl Term {
    /// `None` for a qualifier whose value cannot be read.
    fn parse(word: &str) -> Option<Term> {
        let Some((qualifier, value)) = word.split_once(':') else {
            return Some(Term::Anything);
        };
        Some(match (qualifier.to_ascii_lowercase().as_str(), value) {
            ("is" | "type", "pr") => Term::PullRequests,
            ("is" | "type", "issue") => Term::Issues,
            ("is" | "state", "open") => Term::Open,
            ("is" | "state", "closed") => Term::Closed,
            ("review-requested", login) => Term::ReviewRequestedFrom(login.to_owned()),
            ("assignee", login) => Term::AssignedTo(login.to_owned()),
            ("updated", value) => {
                let (comparison, time) = [
                    (">=", Comparison::AtOrAfter),
                    ("<=", Comparison::AtOrBefore),
                    (">", Comparison::After),
                    ("<", Comparison::Before),
                ]
                .into_iter()
                .find_map(|(op, comparison)| Some((comparison, value.strip_prefix(op)?)))
                .unwrap_or((Comparison::OnDay, value));
                Term::Updated(comparison, parse_time(time)?)
            }
            _ => Term::Anything,
        })
    }

    fn matches(&self, issue: &Issue) -> bool {
        match self {
            Term::PullRequests => issue.is_pull_request(),
            Term::Issues => !issue.is_pull_request(),
            Term::Open => issue.open,
            Term::Closed => !issue.open,
            Term::ReviewRequestedFrom(login) => {
                issue.kind == Kind::ReviewRequest && login.eq_ignore_ascii_case(LOGIN)
            }
            Term::AssignedTo(login) => {
                issue.kind == Kind::AssignedIssue && login.eq_ignore_ascii_case(LOGIN)
            }
            Term::Updated(comparison, time) => {
                let updated = issue.updated_at;
                match comparison {
                    Comparison::After => updated > *time,
                    Comparison::AtOrAfter => updated >= *time,
                    Comparison::Before => updated < *time,
                    Comparison::AtOrBefore => updated <= *time,
                    Comparison::OnDay => updated.date_naive() == time.date_naive(),
                }
            }
            Term::Anything => true,
        }
    }
}

/// ISO 8601 as GitHub reads it: `2026-11-30T10:00:00Z`, with an offset, without a zone (UTC),
/// or a bare date (its midnight UTC).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    if let Ok(time) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S") {
        return Some(time.and_utc());
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

fn sort(issues: &mut [&Issue], by: &str, descending: bool) {
    issues.sort_by_key(|issue| match by {
        "updated" => (issue.updated_at.timestamp(), issue.id),
        "comments" => (issue.comments as i64, issue.id),
        _ => (issue.created_at.timestamp(), issue.id),
    });
    if descending {
        issues.reverse();
    }
}

fn api_base(req: &Request) -> String {
    format!("{}/github/api", reply::origin(req))
}

/// The requested page of `found` and its `Link` header (none when there is one page only).
fn page<'a>(
    req: &Request,
    params: &Params,
    found: &'a [&'a Issue],
) -> (&'a [&'a Issue], Option<String>) {
    let per_page = params.size("per_page", 30, 100);
    let page = params
        .get("page")
        .and_then(|page| page.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let last = found.len().div_ceil(per_page).max(1);
    let start = ((page - 1) * per_page).min(found.len());
    let items = &found[start..(start + per_page).min(found.len())];
    if last == 1 && page == 1 {
        return (items, None);
    }
    let url = format!("{}{}", reply::origin(req), req.original_uri().path());
    let link_to = |page: usize, rel: &str| {
        format!(
            "<{url}?{}>; rel=\"{rel}\"",
            params.with("page", &page.to_string())
        )
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link_to((page - 1).min(last), "prev"));
    }
    if page < last {
        links.push(link_to(page + 1, "next"));
        links.push(link_to(last, "last"));
    }
    if page > 1 {
        links.push(link_to(1, "first"));
    }
    (items, Some(links.join(", ")))
}

fn with_link(mut response: Response, link: Option<String>) -> Response {
    if let Some(link) = link {
        response
            .headers_mut()
            .insert("Link", link.parse().expect("a link is a valid header"));
    }
    response
}

fn validation_failed(resource: &str, field: &str) -> Response {
    reply::json(
        422,
        &json!({
            "message": "Validation Failed",
            "errors": [{"resource": resource, "field": field, "code": "invalid"}],
            "documentation_url": "https://docs.github.com/rest",
            "status": "422",
        }),
    )
}
