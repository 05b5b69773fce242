//! Confluence: inline tasks assigned to the person (`GET /wiki/api/v2/tasks`, paged by
//! `_links.next`). The tasks API cannot filter by update time, so each sweep takes every
//! incomplete task, then (after the first sweep) the tasks completed since the previous
//! sweep began, which closes them here. Unchanged tasks cost an upsert that changes nothing.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskfleet_jobs::TaskStatus;

use crate::{
    Account, Connector, ConnectorConfig, Item, Page, Provider, ProviderError, ProviderSettings,
    adf, atlassian,
    http::Http,
    item::{TITLE_CHARS, clip, horizon_guess, snippet},
    join,
    oauth::OAuthClient,
    read_cursor, write_cursor,
};

const PAGE_SIZE: u32 = 100;

pub struct Confluence {
    http: Arc<Http>,
    api: String,
    oauth: Option<OAuthClient>,
}

impl Confluence {
    pub fn new(http: Arc<Http>, settings: &ProviderSettings) -> Confluence {
        Confluence {
            http,
            api: settings.atlassian_api_url.clone(),
            oauth: atlassian::oauth_client(settings, Provider::Confluence),
        }
    }

    async fn get(
        &self,
        account: &Account,
        path: &str,
    ) -> Result<crate::http::Answer, ProviderError> {
        let base = atlassian::base(&self.api, Provider::Confluence, "confluence", account)?;
        let request = account
            .credentials
            .authorize(self.http.client().get(join(&base, path)))
            .header("Accept", "application/json");
        self.http
            .send(Provider::Confluence, Some(account.connector_id), request)
            .await
    }

    async fn current_user(&self, account: &Account) -> Result<CurrentUser, ProviderError> {
        self.get(account, "/wiki/rest/api/user/current")
            .await?
            .json()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// When the previous sweep began: tasks completed after it are closed by this sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<DateTime<Utc>>,
    /// When this sweep began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started: Option<DateTime<Utc>>,
    #[serde(default)]
    phase: Phase,
    /// The `_links.next` path of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    account_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    #[default]
    Incomplete,
    Completed,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CurrentUser {
    account_id: String,
    display_name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Tasks {
    results: Vec<Task>,
    #[serde(rename = "_links", default)]
    links: Links,
}

#[derive(Debug, Default, Deserialize)]
struct Links {
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Task {
    id: String,
    page_id: Option<String>,
    blog_post_id: Option<String>,
    status: String,
    body: Option<Body>,
    updated_at: Option<DateTime<Utc>>,
    due_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
struct Body {
    atlas_doc_format: Option<Representation>,
}

#[derive(Debug, Deserialize)]
struct Representation {
    value: String,
}

impl Task {
    fn into_item(self, account: &Account, now: DateTime<Utc>) -> Item {
        let text = self
            .body
            .and_then(|body| body.atlas_doc_format)
            .and_then(|adf| serde_json::from_str::<Value>(&adf.value).ok())
            .map(|doc| adf::to_text(&doc))
            .unwrap_or_default();
        // The body is one task item, which flattens to "- its text".
        let first_line = text.lines().next().unwrap_or("").trim_start_matches("- ");
        let title = match clip(first_line, TITLE_CHARS) {
            empty if empty.is_empty() => format!("Confluence task {}", self.id),
            title => title,
        };
        let site = account.config.site_url.as_deref().unwrap_or("");
        let url = self
            .page_id
            .or(self.blog_post_id)
            .map(|page| format!("{site}/wiki/pages/viewpage.action?pageId={page}"));
        Item {
            source_ref: format!("{}/task/{}", atlassian::site_scope(account), self.id),
            title,
            snippet: snippet(&text),
            url,
            due_at: self.due_at,
            labels: vec!["confluence task".to_owned()],
            updated_at: self.updated_at,
            status: if self.status == "complete" {
                TaskStatus::Done
            } else {
                TaskStatus::Open
            },
            horizon: horizon_guess(self.due_at, false, now),
        }
    }
}

#[async_trait]
impl Connector for Confluence {
    fn provider(&self) -> Provider {
        Provider::Confluence
    }

    fn http(&self) -> &Http {
        &self.http
    }

    fn oauth(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }

    async fn discover(&self, account: &Account) -> Result<ConnectorConfig, ProviderError> {
        atlassian::discover(&self.http, &self.api, Provider::Confluence, account).await
    }

    async fn test(&self, account: &Account) -> Result<String, ProviderError> {
        let user = self.current_user(account).await?;
        Ok(user.email.or(user.display_name).unwrap_or(user.account_id))
    }

    async fn fetch(
        &self,
        account: &Account,
        cursor: Option<&Value>,
    ) -> Result<Page, ProviderError> {
        let mut cursor: Cursor = read_cursor(cursor);
        let now = Utc::now();
        let started = *cursor.started.get_or_insert(now);
        let account_id = match cursor.account_id.clone() {
            Some(id) => id,
            None => self.current_user(account).await?.account_id,
        };
        let path = match cursor.next.take() {
            Some(next) => next,
            None => {
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                query
                    .append_pair("assigned-to", &account_id)
                    .append_pair("body-format", "atlas_doc_format")
                    .append_pair("limit", &PAGE_SIZE.to_string());
                match (cursor.phase, cursor.since) {
                    (Phase::Completed, Some(since)) => query
                        .append_pair("status", "complete")
                        .append_pair("completed-at-from", &since.timestamp_millis().to_string()),
                    _ => query.append_pair("status", "incomplete"),
                };
                format!("/wiki/api/v2/tasks?{}", query.finish())
            }
        };
        if !path.starts_with("/wiki/") {
            return Err(ProviderError::Unreadable {
                provider: Provider::Confluence,
                detail: format!("a next-page link outside the wiki API: {path}"),
            });
        }
        let tasks: Tasks = self.get(account, &path).await?.json()?;
        let items = tasks
            .results
            .into_iter()
            .map(|task| task.into_item(account, now))
            .collect();
        cursor.account_id = Some(account_id);
        cursor.next = tasks.links.next;
        let done = match (&cursor.next, cursor.phase, cursor.since) {
            (Some(_), _, _) => false,
            (None, Phase::Incomplete, Some(_)) => {
                cursor.phase = Phase::Completed;
                false
            }
            (None, _, _) => {
                cursor = Cursor {
                    since: Some(started),
                    account_id: cursor.account_id,
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
    use crate::Credentials;
    use serde_json::json;

    #[test]
    fn a_task_becomes_an_item_titled_by_its_text() {
        let account = Account {
            connector_id: uuid::Uuid::nil(),
            credentials: Credentials::token("t".into(), Some("a@b.c".into())),
            config: ConnectorConfig {
                site_url: Some("https://acme.atlassian.net".into()),
                cloud_id: None,
            },
        };
        let body = json!({"type": "doc", "version": 1, "content": [{"type": "taskList", "content": [
            {"type": "taskItem", "attrs": {"localId": "1", "state": "TODO"}, "content": [
                {"type": "text", "text": "Review the Q1 budget "},
                {"type": "mention", "attrs": {"id": "x", "text": "@Ana"}}]}]}]});
        let task: Task = serde_json::from_value(json!({
            "id": "9001", "localId": "1", "spaceId": "65536", "pageId": "98304", "blogPostId": null,
            "status": "incomplete",
            "body": {"atlas_doc_format": {"value": body.to_string(), "representation": "atlas_doc_format"}},
            "createdBy": "x", "assignedTo": "x", "completedBy": null,
            "createdAt": "2026-11-20T09:00:00.000Z", "updatedAt": "2026-11-21T09:00:00.000Z",
            "dueAt": "2026-12-20T00:00:00.000Z", "completedAt": null
        }))
        .unwrap();
        let item = task.into_item(&account, "2026-12-02T10:00:00Z".parse().unwrap());
        assert_eq!(item.title, "Review the Q1 budget @Ana");
        assert_eq!(item.source_ref, "acme.atlassian.net/task/9001");
        assert_eq!(
            item.url.as_deref(),
            Some("https://acme.atlassian.net/wiki/pages/viewpage.action?pageId=98304")
        );
        assert_eq!(item.horizon, taskfleet_jobs::Horizon::Month);
    }
}
