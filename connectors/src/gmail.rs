//! Gmail: inbox messages, metadata only (subject, from, date, snippet, labels; never a body).
//! A first sweep lists the last 30 days of the inbox after noting the mailbox's `historyId`;
//! later sweeps read `history.list` from it for messages added to the inbox. Gmail keeps
//! history for about a week: a 404 for an old `historyId` means a full sweep again.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskfleet_jobs::TaskStatus;

use crate::{
    Account, Connector, Item, Page, Provider, ProviderError, ProviderSettings, google,
    http::Http,
    item::{TITLE_CHARS, clip, horizon_guess, snippet},
    oauth::OAuthClient,
    read_cursor, write_cursor,
};

const PAGE_SIZE: &str = "100";
/// Messages whose metadata is asked for at once (the rate limits still apply).
const CONCURRENT_GETS: usize = 8;
/// Labels that make a message pressing.
const PRESSING: [&str; 2] = ["IMPORTANT", "STARRED"];

pub struct Gmail {
    http: Arc<Http>,
    api: String,
    oauth: Option<OAuthClient>,
}

impl Gmail {
    pub fn new(http: Arc<Http>, settings: &ProviderSettings) -> Gmail {
        Gmail {
            http,
            api: settings.google_api_url.clone(),
            oauth: google::oauth_client(settings, Provider::Gmail),
        }
    }

    async fn get(
        &self,
        account: &Account,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<crate::http::Answer, ProviderError> {
        let path = format!("/gmail/v1/users/me{path}");
        google::get(
            &self.http,
            Provider::Gmail,
            &self.api,
            account,
            &path,
            query,
        )
        .await
    }

    async fn profile(&self, account: &Account) -> Result<Profile, ProviderError> {
        self.get(account, "/profile", &[]).await?.json()
    }

    /// The messages' metadata as items; messages deleted meanwhile are left out.
    async fn items(
        &self,
        account: &Account,
        email: &str,
        ids: Vec<String>,
    ) -> Result<Vec<Item>, ProviderError> {
        let now = Utc::now();
        futures::stream::iter(ids)
            .map(|id| async move {
                let query = [
                    ("format", "metadata"),
                    ("metadataHeaders", "Subject"),
                    ("metadataHeaders", "From"),
                    ("metadataHeaders", "Date"),
                ];
                let answer = self
                    .get(account, &format!("/messages/{id}"), &query)
                    .await?;
                if answer.status == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let message: Message = answer.json()?;
                Ok(Some(message.into_item(email, now)))
            })
            .buffered(CONCURRENT_GETS)
            .try_filter_map(|item| async move { Ok(item) })
            .try_collect()
            .await
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    /// Where history is read from; during a first sweep, the mailbox's history when the
    /// sweep began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history_id: Option<String>,
    /// The mailbox's address, which scopes message ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_token: Option<String>,
    /// The newest history id seen while paging history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest_history_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Full,
    History,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    email_address: String,
    history_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageList {
    #[serde(default)]
    messages: Vec<MessageRef>,
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageRef {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct History {
    #[serde(default)]
    history: Vec<HistoryRecord>,
    next_page_token: Option<String>,
    history_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HistoryRecord {
    #[serde(default)]
    messages_added: Vec<Added>,
}

#[derive(Debug, Deserialize)]
struct Added {
    message: MessageRef,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    id: String,
    thread_id: String,
    #[serde(default)]
    label_ids: Vec<String>,
    #[serde(default)]
    snippet: String,
    internal_date: Option<String>,
    payload: Option<Payload>,
}

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    headers: Vec<Header>,
}

#[derive(Debug, Deserialize)]
struct Header {
    name: String,
    value: String,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.payload
            .as_ref()?
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value.as_str())
    }

    fn into_item(self, email: &str, now: DateTime<Utc>) -> Item {
        let subject = self.header("Subject").unwrap_or("").trim();
        let title = if subject.is_empty() {
            "(no subject)".to_owned()
        } else {
            clip(subject, TITLE_CHARS)
        };
        let from = self.header("From").map(|from| format!("from {from}"));
        let updated_at = self
            .internal_date
            .as_deref()
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis);
        let pressing = self
            .label_ids
            .iter()
            .any(|l| PRESSING.contains(&l.as_str()));
        let mut labels: Vec<String> = from.into_iter().collect();
        labels.extend(self.label_ids);
        Item {
            source_ref: format!("{email}/{}", self.id),
            title,
            snippet: snippet(&self.snippet),
            url: Some(format!(
                "https://mail.google.com/mail/?authuser={email}#all/{}",
                self.thread_id
            )),
            due_at: None,
            labels,
            updated_at,
            status: TaskStatus::Open,
            horizon: horizon_guess(None, pressing, now),
        }
    }
}

#[async_trait]
impl Connector for Gmail {
    fn provider(&self) -> Provider {
        Provider::Gmail
    }

    fn http(&self) -> &Http {
        &self.http
    }

    fn oauth(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }

    async fn test(&self, account: &Account) -> Result<String, ProviderError> {
        Ok(self.profile(account).await?.email_address)
    }

    async fn fetch(
        &self,
        account: &Account,
        cursor: Option<&Value>,
    ) -> Result<Page, ProviderError> {
        let mut cursor: Cursor = read_cursor(cursor);
        if cursor.mode == Mode::History {
            let start = cursor.history_id.clone().unwrap_or_default();
            let mut query = vec![
                ("startHistoryId", start.as_str()),
                ("historyTypes", "messageAdded"),
                ("labelId", "INBOX"),
                ("maxResults", PAGE_SIZE),
            ];
            if let Some(token) = &cursor.page_token {
                query.push(("pageToken", token));
            }
            let answer = self.get(account, "/history", &query).await?;
            if answer.status != reqwest::StatusCode::NOT_FOUND {
                let history: History = answer.json()?;
                let mut ids: Vec<String> = history
                    .history
                    .into_iter()
                    .flat_map(|record| record.messages_added)
                    .map(|added| added.message.id)
                    .collect();
                ids.dedup();
                let email = match cursor.email.clone() {
                    Some(email) => email,
                    None => self.profile(account).await?.email_address,
                };
                let items = self.items(account, &email, ids).await?;
                let latest = history.history_id.or(cursor.latest_history_id.take());
                let (next, done) = match history.next_page_token {
                    Some(token) => (
                        Cursor {
                            page_token: Some(token),
                            latest_history_id: latest,
                            email: Some(email),
                            ..cursor
                        },
                        false,
                    ),
                    None => (
                        Cursor {
                            mode: Mode::History,
                            history_id: latest.or(cursor.history_id),
                            email: Some(email),
                            ..Cursor::default()
                        },
                        true,
                    ),
                };
                return Ok(Page {
                    items,
                    gone: Vec::new(),
                    cursor: write_cursor(&next),
                    done,
                });
            }
            // The history id is too old: sweep the inbox again.
            tracing::info!(connector_id = %account.connector_id, "Gmail history expired; full sweep");
            cursor = Cursor::default();
        }
        if cursor.history_id.is_none() || cursor.email.is_none() {
            let profile = self.profile(account).await?;
            cursor.history_id = Some(profile.history_id);
            cursor.email = Some(profile.email_address);
        }
        let mut query = vec![
            ("labelIds", "INBOX"),
            ("q", "newer_than:30d"),
            ("maxResults", PAGE_SIZE),
        ];
        if let Some(token) = &cursor.page_token {
            query.push(("pageToken", token));
        }
        let list: MessageList = self.get(account, "/messages", &query).await?.json()?;
        let email = cursor.email.clone().unwrap_or_default();
        let ids = list.messages.into_iter().map(|m| m.id).collect();
        let items = self.items(account, &email, ids).await?;
        let done = list.next_page_token.is_none();
        cursor.page_token = list.next_page_token;
        if done {
            cursor.mode = Mode::History;
        }
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
    use serde_json::json;

    #[test]
    fn a_message_becomes_an_item_with_its_headers_and_labels() {
        let message: Message = serde_json::from_value(json!({
            "id": "18c1f0a2b3", "threadId": "18c1f0a2b0", "labelIds": ["INBOX", "IMPORTANT", "UNREAD"],
            "snippet": "Can you send the signed contract by Thursday?", "historyId": "4242",
            "internalDate": "1764669600000", "sizeEstimate": 5120,
            "payload": {"partId": "", "mimeType": "multipart/alternative", "filename": "", "headers": [
                {"name": "Subject", "value": "Contract for ACME"},
                {"name": "From", "value": "Ana <ana@acme.test>"},
                {"name": "Date", "value": "Tue, 02 Dec 2026 10:00:00 +0000"}]}
        }))
        .unwrap();
        let item = message.into_item("me@example.com", "2026-12-02T10:00:00Z".parse().unwrap());
        assert_eq!(item.source_ref, "me@example.com/18c1f0a2b3");
        assert_eq!(item.title, "Contract for ACME");
        assert_eq!(item.labels[0], "from Ana <ana@acme.test>");
        assert!(item.labels.contains(&"IMPORTANT".to_owned()));
        assert_eq!(item.horizon, taskfleet_jobs::Horizon::Week);
        assert_eq!(
            item.updated_at,
            DateTime::from_timestamp_millis(1_764_669_600_000)
        );
    }
}
