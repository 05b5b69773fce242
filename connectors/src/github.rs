//! GitHub: issues and pull requests assigned to the person (`GET /issues?filter=assigned`),
//! then pull requests whose review is asked of them (`GET /search/issues`), each paged by the
//! `Link` header. Later sweeps ask for everything updated since the previous sweep began
//! (less a margin for clocks), in every state, so closed issues and merged pull requests are
//! seen closing. Pages are offsets into a list sorted by update time: an item updated during a
//! sweep moves to the end and may be missed by it, and the next sweep, starting before that
//! update, finds it.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskfleet_jobs::TaskStatus;

use crate::{
    Account, Connector, Item, Page, Provider, ProviderError, ProviderSettings,
    http::{Answer, Http},
    item::{horizon_guess, snippet},
    join,
    oauth::{OAuthClient, TokenBody},
    read_cursor, write_cursor,
};

const PER_PAGE: u32 = 100;
/// How far before a sweep's start the next one looks: GitHub's clock and ours may differ.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(5);

pub struct Github {
    http: Arc<Http>,
    api: String,
    oauth: Option<OAuthClient>,
}

impl Github {
    pub fn new(http: Arc<Http>, settings: &ProviderSettings) -> Github {
        let oauth = settings
            .client(Provider::Github)
            .map(|(client_id, client_secret)| OAuthClient {
                provider: Provider::Github,
                client_id,
                client_secret,
                authorize_url: join(&settings.github_oauth_url, "/login/oauth/authorize"),
                token_url: join(&settings.github_oauth_url, "/login/oauth/access_token"),
                // Read-only: the profile and organisation membership. Issues of private
                // repositories need a fine-grained personal token with read access to issues.
                scopes: "read:user read:org",
                pkce: true,
                token_body: TokenBody::Form,
                extra: &[],
            });
        Github {
            http,
            api: settings.github_api_url.clone(),
            oauth,
        }
    }

    async fn get(&self, account: &Account, url: &str) -> Result<Answer, ProviderError> {
        // Only the configured API gets the token, whatever a `Link` header says.
        if !within(&self.api, url) {
            return Err(ProviderError::Unreadable {
                provider: Provider::Github,
                detail: format!("a next-page link outside the API: {url}"),
            });
        }
        let request = account
            .credentials
            .authorize(self.http.client().get(url))
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        self.http
            .send(Provider::Github, Some(account.connector_id), request)
            .await
    }
}

/// Where a sweep is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// Items updated at or after this are fetched; none on the first sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<DateTime<Utc>>,
    #[serde(default)]
    phase: Phase,
    /// The next page of the phase (a `Link` URL); none at the phase's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    /// When this sweep began: the next sweep's `since`, less [`CLOCK_MARGIN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started: Option<DateTime<Utc>>,
    /// The person's login, for the review-request search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    login: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    #[default]
    Assigned,
    Review,
}

#[derive(Debug, Deserialize)]
struct User {
    login: String,
}

#[derive(Debug, Deserialize)]
struct SearchResults {
    items: Vec<Issue>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    id: u64,
    number: u64,
    title: String,
    body: Option<String>,
    state: String,
    html_url: String,
    repository_url: String,
    #[serde(default)]
    labels: Vec<Label>,
    milestone: Option<Milestone>,
    updated_at: DateTime<Utc>,
    pull_request: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Label {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Milestone {
    due_on: Option<DateTime<Utc>>,
}

impl Issue {
    fn into_item(self, review_requested: bool, now: DateTime<Utc>) -> Item {
        // `repository_url` is `{api}/repos/{owner}/{name}`.
        let repository = self
            .repository_url
            .rsplit_once("/repos/")
            .map_or(self.repository_url.as_str(), |(_, name)| name);
        let mut labels = vec![format!("{repository}#{}", self.number)];
        if self.pull_request.is_some() {
            labels.push("pull request".to_owned());
        }
        if review_requested {
            labels.push("review requested".to_owned());
        }
        labels.extend(self.labels.into_iter().map(|label| label.name));
        let due_at = self.milestone.and_then(|milestone| milestone.due_on);
        Item {
            source_ref: self.id.to_string(),
            snippet: snippet(self.body.as_deref().unwrap_or("")),
            title: self.title,
            url: Some(self.html_url),
            due_at,
            labels,
            updated_at: Some(self.updated_at),
            status: if self.state == "open" {
                TaskStatus::Open
            } else {
                TaskStatus::Done
            },
            horizon: horizon_guess(due_at, review_requested, now),
        }
    }
}

/// Whether `url` is under `api`: the same scheme, host and port, and a path below its path.
fn within(api: &str, url: &str) -> bool {
    let (Ok(api), Ok(url)) = (url::Url::parse(api), url::Url::parse(url)) else {
        return false;
    };
    let base = api.path().trim_end_matches('/');
    api.origin() == url.origin()
        && (url.path() == base || url.path().starts_with(&format!("{base}/")))
}

/// The `rel="next"` URL of a `Link` header.
fn next_link(answer: &Answer) -> Option<String> {
    let link = answer.headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|param| param.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

#[async_trait]
impl Connector for Github {
    fn provider(&self) -> Provider {
        Provider::Github
    }

    fn http(&self) -> &Http {
        &self.http
    }

    fn oauth(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }

    async fn test(&self, account: &Account) -> Result<String, ProviderError> {
        let user: User = self.get(account, &join(&self.api, "/user")).await?.json()?;
        Ok(user.login)
    }

    async fn fetch(
        &self,
        account: &Account,
        cursor: Option<&Value>,
    ) -> Result<Page, ProviderError> {
        let mut cursor: Cursor = read_cursor(cursor);
        let now = Utc::now();
        cursor.started.get_or_insert(now);
        let (url, review) = match (cursor.phase, cursor.next.take()) {
            (_, Some(next)) => (next, cursor.phase == Phase::Review),
            (Phase::Assigned, None) => {
                let mut url = url::Url::parse(&join(&self.api, "/issues")).map_err(|err| {
                    ProviderError::NotConfigured {
                        provider: Provider::Github,
                        detail: format!("TASKFLEET_GITHUB_API_URL: {err}"),
                    }
                })?;
                url.query_pairs_mut()
                    .append_pair("filter", "assigned")
                    .append_pair(
                        "state",
                        if cursor.since.is_some() {
                            "all"
                        } else {
                            "open"
                        },
                    )
                    .append_pair("sort", "updated")
                    .append_pair("direction", "asc")
                    .append_pair("per_page", &PER_PAGE.to_string());
                if let Some(since) = cursor.since {
                    url.query_pairs_mut()
                        .append_pair("since", &since.to_rfc3339());
                }
                (url.to_string(), false)
            }
            (Phase::Review, None) => {
                let login = match cursor.login.clone() {
                    Some(login) => login,
                    None => self.test(account).await?,
                };
                // Later sweeps take closed and merged ones too, which closes their tasks.
                let query = match cursor.since {
                    None => format!("is:pr is:open review-requested:{login}"),
                    Some(since) => format!(
                        "is:pr review-requested:{login} updated:>={}",
                        since.format("%Y-%m-%dT%H:%M:%SZ")
                    ),
                };
                let mut url = url::Url::parse(&join(&self.api, "/search/issues"))
                    .expect("the API URL parsed above");
                url.query_pairs_mut()
                    .append_pair("q", &query)
                    .append_pair("sort", "updated")
                    .append_pair("order", "asc")
                    .append_pair("per_page", &PER_PAGE.to_string());
                cursor.login = Some(login);
                (url.to_string(), true)
            }
        };
        let answer = self.get(account, &url).await?;
        let issues: Vec<Issue> = if review {
            answer.json::<SearchResults>()?.items
        } else {
            answer.json()?
        };
        let items = issues
            .into_iter()
            .map(|issue| issue.into_item(review, now))
            .collect();
        cursor.next = next_link(&answer);
        let done = match (&cursor.next, cursor.phase) {
            (Some(_), _) => false,
            (None, Phase::Assigned) => {
                cursor.phase = Phase::Review;
                false
            }
            (None, Phase::Review) => {
                cursor = Cursor {
                    since: cursor.started.map(|started| started - CLOCK_MARGIN),
                    login: cursor.login,
                    ..Cursor::default()
                };
                true
            }
        };
        Ok(Page {
            items,
            gone: Vec::new(),
            cursor: write_cursor(&cursor),
            done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use reqwest::{StatusCode, header::HeaderMap};
    use serde_json::json;

    #[test]
    fn the_next_link_is_found_among_the_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "link",
            r#"<https://api.github.com/issues?page=1>; rel="prev", <https://api.github.com/issues?filter=assigned&page=3>; rel="next", <https://api.github.com/issues?page=5>; rel="last""#
                .parse()
                .unwrap(),
        );
        let answer = Answer {
            provider: Provider::Github,
            status: StatusCode::OK,
            headers,
            body: Bytes::new(),
        };
        assert_eq!(
            next_link(&answer).as_deref(),
            Some("https://api.github.com/issues?filter=assigned&page=3")
        );
    }

    #[test]
    fn only_links_under_the_api_get_the_token() {
        let api = "https://api.github.com";
        assert!(within(api, "https://api.github.com/issues?page=2"));
        assert!(!within(
            api,
            "https://api.github.com.evil.test/issues?page=2"
        ));
        assert!(!within(api, "http://api.github.com/issues"));
        assert!(!within(api, "https://api.github.com:8443/issues"));
        let enterprise = "https://ghe.acme.test/api/v3";
        assert!(within(
            enterprise,
            "https://ghe.acme.test/api/v3/issues?page=2"
        ));
        assert!(!within(enterprise, "https://ghe.acme.test/api/v30/issues"));
        assert!(!within(enterprise, "https://ghe.acme.test/login"));
    }

    #[test]
    fn an_issue_becomes_an_item() {
        let now: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let issue: Issue = serde_json::from_value(json!({
            "id": 1347, "node_id": "MDU6SXNzdWUxMzQ3", "number": 42,
            "title": "Login fails on Safari", "body": "Steps:\n\n1. open\n2. log in",
            "state": "open", "html_url": "https://github.com/acme/web/issues/42",
            "url": "https://api.github.com/repos/acme/web/issues/42",
            "repository_url": "https://api.github.com/repos/acme/web",
            "labels": [{"id": 1, "name": "bug", "color": "f00", "description": null}],
            "milestone": {"title": "v2", "due_on": "2026-12-03T08:00:00Z"},
            "updated_at": "2026-12-01T09:00:00Z", "comments": 3,
            "pull_request": {"url": "https://api.github.com/repos/acme/web/pulls/42"}
        }))
        .unwrap();
        let item = issue.into_item(true, now);
        assert_eq!(item.source_ref, "1347");
        assert_eq!(item.snippet, "Steps: 1. open 2. log in");
        assert_eq!(
            item.labels,
            ["acme/web#42", "pull request", "review requested", "bug"]
        );
        assert_eq!(item.horizon, taskfleet_jobs::Horizon::Today);
        assert_eq!(item.status, TaskStatus::Open);
    }
}
