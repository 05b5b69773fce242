//! Jira: issues assigned to the person (`POST /rest/api/3/search/jql`, paged by
//! `nextPageToken` until `isLast`), with due date, priority and issue links; descriptions
//! are ADF, flattened to text. The first sweep takes the open issues; later ones take every
//! assigned issue updated since the newest seen (so resolved ones are seen resolving), with a
//! day's overlap because JQL reads minutes in the person's own time zone.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use taskfleet_jobs::TaskStatus;

use crate::{
    Account, Connector, ConnectorConfig, Item, Page, Provider, ProviderError, ProviderSettings,
    adf, atlassian,
    http::Http,
    item::{horizon_guess, snippet},
    join,
    oauth::OAuthClient,
    read_cursor, write_cursor,
};

const PAGE_SIZE: u32 = 100;
const FIELDS: [&str; 9] = [
    "summary",
    "description",
    "duedate",
    "priority",
    "labels",
    "issuelinks",
    "updated",
    "status",
    "project",
];
/// Priorities that make an issue pressing.
const PRESSING: [&str; 4] = ["Highest", "High", "Blocker", "Critical"];

pub struct Jira {
    http: Arc<Http>,
    api: String,
    oauth: Option<OAuthClient>,
}

impl Jira {
    pub fn new(http: Arc<Http>, settings: &ProviderSettings) -> Jira {
        Jira {
            http,
            api: settings.atlassian_api_url.clone(),
            oauth: atlassian::oauth_client(settings, Provider::Jira),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    newest: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Myself {
    display_name: Option<String>,
    email_address: Option<String>,
    account_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SearchResults {
    issues: Vec<Issue>,
    next_page_token: Option<String>,
    #[serde(default)]
    is_last: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Issue {
    id: String,
    key: String,
    fields: Fields,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    summary: String,
    description: Option<Value>,
    duedate: Option<NaiveDate>,
    priority: Option<Named>,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    issuelinks: Vec<Link>,
    #[serde(with = "jira_time")]
    updated: DateTime<Utc>,
    status: Status,
    project: Option<Project>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    status_category: StatusCategory,
}

#[derive(Debug, Deserialize)]
struct StatusCategory {
    key: String,
}

#[derive(Debug, Deserialize)]
struct Project {
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Link {
    #[serde(rename = "type")]
    kind: LinkType,
    outward_issue: Option<LinkedIssue>,
    inward_issue: Option<LinkedIssue>,
}

#[derive(Debug, Deserialize)]
struct LinkType {
    inward: String,
    outward: String,
}

#[derive(Debug, Deserialize)]
struct LinkedIssue {
    key: String,
}

/// Jira's instants: `2026-11-30T10:00:00.000+0000` (an offset without a colon).
mod jira_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f%z")
            .or_else(|_| DateTime::parse_from_rfc3339(&text))
            .map(|at| at.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

impl Issue {
    fn into_item(self, account: &Account, now: DateTime<Utc>) -> Item {
        let fields = self.fields;
        let due_at = fields
            .duedate
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|at| at.and_utc());
        let priority = fields.priority.map(|p| p.name);
        let pressing = priority.as_deref().is_some_and(|p| PRESSING.contains(&p));
        let mut labels = vec![self.key.clone()];
        labels.extend(
            fields
                .project
                .map(|project| format!("project {}", project.key)),
        );
        labels.extend(priority);
        labels.extend(fields.labels);
        labels.extend(fields.issuelinks.into_iter().filter_map(|link| {
            match (link.outward_issue, link.inward_issue) {
                (Some(other), _) => Some(format!("{} {}", link.kind.outward, other.key)),
                (None, Some(other)) => Some(format!("{} {}", link.kind.inward, other.key)),
                (None, None) => None,
            }
        }));
        let site = account.config.site_url.as_deref().unwrap_or("");
        Item {
            source_ref: format!("{}/{}", atlassian::site_scope(account), self.id),
            title: fields.summary,
            snippet: snippet(
                &fields
                    .description
                    .as_ref()
                    .map(adf::to_text)
                    .unwrap_or_default(),
            ),
            url: Some(format!("{site}/browse/{}", self.key)),
            due_at,
            labels,
            updated_at: Some(fields.updated),
            status: if fields.status.status_category.key == "done" {
                TaskStatus::Done
            } else {
                TaskStatus::Open
            },
            horizon: horizon_guess(due_at, pressing, now),
        }
    }
}

/// The JQL of a sweep: open issues first, then whatever changed since `since`.
fn jql(since: Option<DateTime<Utc>>) -> String {
    match since {
        None => "assignee = currentUser() AND statusCategory != Done ORDER BY updated ASC".into(),
        Some(since) => format!(
            "assignee = currentUser() AND updated >= \"{}\" ORDER BY updated ASC",
            (since - chrono::Duration::days(1)).format("%Y/%m/%d %H:%M")
        ),
    }
}

#[async_trait]
impl Connector for Jira {
    fn provider(&self) -> Provider {
        Provider::Jira
    }

    fn http(&self) -> &Http {
        &self.http
    }

    fn oauth(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }

    async fn discover(&self, account: &Account) -> Result<ConnectorConfig, ProviderError> {
        atlassian::discover(&self.http, &self.api, Provider::Jira, account).await
    }

    async fn test(&self, account: &Account) -> Result<String, ProviderError> {
        let base = atlassian::base(&self.api, Provider::Jira, "jira", account)?;
        let request = account
            .credentials
            .authorize(self.http.client().get(join(&base, "/rest/api/3/myself")))
            .header("Accept", "application/json");
        let me: Myself = self
            .http
            .send(Provider::Jira, Some(account.connector_id), request)
            .await?
            .json()?;
        Ok(me
            .email_address
            .or(me.display_name)
            .unwrap_or(me.account_id))
    }

    async fn fetch(
        &self,
        account: &Account,
        cursor: Option<&Value>,
    ) -> Result<Page, ProviderError> {
        let mut cursor: Cursor = read_cursor(cursor);
        let base = atlassian::base(&self.api, Provider::Jira, "jira", account)?;
        let mut body = json!({
            "jql": jql(cursor.since),
            "maxResults": PAGE_SIZE,
            "fields": FIELDS,
        });
        if let Some(token) = &cursor.next_page_token {
            body["nextPageToken"] = json!(token);
        }
        let request = account
            .credentials
            .authorize(
                self.http
                    .client()
                    .post(join(&base, "/rest/api/3/search/jql")),
            )
            .header("Accept", "application/json")
            .json(&body);
        let results: SearchResults = self
            .http
            .send(Provider::Jira, Some(account.connector_id), request)
            .await?
            .json()?;
        let now = Utc::now();
        cursor.newest = cursor.newest.max(
            results
                .issues
                .iter()
                .map(|issue| issue.fields.updated)
                .max(),
        );
        let items = results
            .issues
            .into_iter()
            .map(|issue| issue.into_item(account, now))
            .collect();
        // `isLast` may be left out; without a token there is no next page either way.
        let done = results.is_last == Some(true) || results.next_page_token.is_none();
        let next = if done {
            Cursor {
                since: cursor.newest.or(cursor.since),
                ..Cursor::default()
            }
        } else {
            Cursor {
                next_page_token: results.next_page_token,
                ..cursor
            }
        };
        Ok(Page {
            items,
            gone: Vec::new(),
            cursor: write_cursor(&next),
            done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credentials;

    #[test]
    fn an_issue_becomes_an_item_with_its_links_and_priority() {
        let account = Account {
            connector_id: uuid::Uuid::nil(),
            credentials: Credentials::token("t".into(), None),
            config: ConnectorConfig {
                site_url: Some("https://acme.atlassian.net".into()),
                cloud_id: Some("c1".into()),
            },
        };
        let issue: Issue = serde_json::from_value(json!({
            "id": "10042", "key": "OPS-7", "self": "https://api.atlassian.com/ex/jira/c1/rest/api/3/issue/10042",
            "fields": {
                "summary": "Rotate the TLS certificates",
                "description": {"type": "doc", "version": 1, "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "They expire on Friday."}]}]},
                "duedate": "2026-12-03",
                "priority": {"id": "2", "name": "High"},
                "labels": ["security"],
                "issuelinks": [{"id": "1", "type": {"name": "Blocks", "inward": "is blocked by", "outward": "blocks"},
                                "outwardIssue": {"id": "10050", "key": "OPS-9", "fields": {"summary": "Deploy"}}}],
                "updated": "2026-11-30T10:00:00.000+0000",
                "status": {"name": "In Progress", "statusCategory": {"key": "indeterminate", "name": "In Progress"}},
                "project": {"key": "OPS", "name": "Operations"}
            }
        }))
        .unwrap();
        let now: DateTime<Utc> = "2026-12-02T10:00:00Z".parse().unwrap();
        let item = issue.into_item(&account, now);
        assert_eq!(item.source_ref, "acme.atlassian.net/10042");
        assert_eq!(
            item.url.as_deref(),
            Some("https://acme.atlassian.net/browse/OPS-7")
        );
        assert_eq!(item.snippet, "They expire on Friday.");
        assert_eq!(
            item.labels,
            ["OPS-7", "project OPS", "High", "security", "blocks OPS-9"]
        );
        assert_eq!(
            item.updated_at,
            Some("2026-11-30T10:00:00Z".parse().unwrap())
        );
        assert_eq!(item.horizon, taskfleet_jobs::Horizon::Today);
    }

    #[test]
    fn later_sweeps_ask_for_changes_with_a_days_overlap() {
        assert_eq!(
            jql(None),
            "assignee = currentUser() AND statusCategory != Done ORDER BY updated ASC"
        );
        assert_eq!(
            jql(Some("2026-12-02T10:05:00Z".parse().unwrap())),
            "assignee = currentUser() AND updated >= \"2026/12/01 10:05\" ORDER BY updated ASC"
        );
    }
}
