//! Google Drive: files modified in the last 30 days or shared with the person (metadata only).
//! A first sweep notes the `changes` start token, then lists the files; later sweeps read the
//! changes list from the token: changed files are items again, removed or trashed ones are
//! gone.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use taskfleet_jobs::TaskStatus;

use crate::{
    Account, Connector, Item, Page, Provider, ProviderError, ProviderSettings, google,
    http::{Answer, Http},
    item::{TITLE_CHARS, clip, horizon_guess, snippet},
    oauth::OAuthClient,
    read_cursor, write_cursor,
};

const PAGE_SIZE: &str = "100";
const FILE_FIELDS: &str = "id,name,mimeType,modifiedTime,webViewLink,sharedWithMeTime,trashed,\
                           description,owners(displayName,emailAddress),lastModifyingUser(displayName)";
/// How far back a first sweep looks.
const RECENT_DAYS: i64 = 30;

pub struct Gdrive {
    http: Arc<Http>,
    api: String,
    oauth: Option<OAuthClient>,
}

impl Gdrive {
    pub fn new(http: Arc<Http>, settings: &ProviderSettings) -> Gdrive {
        Gdrive {
            http,
            api: settings.google_api_url.clone(),
            oauth: google::oauth_client(settings, Provider::Gdrive),
        }
    }

    async fn get(
        &self,
        account: &Account,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer, ProviderError> {
        let path = format!("/drive/v3{path}");
        google::get(
            &self.http,
            Provider::Gdrive,
            &self.api,
            account,
            &path,
            query,
        )
        .await
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cursor {
    #[serde(default)]
    mode: Mode,
    /// Full sweep: the changes token noted when it began. Changes: the page to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    changes_token: Option<String>,
    /// Full sweep: the next page of the file list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_token: Option<String>,
    /// Full sweep: files modified after this are listed. Fixed when the sweep begins, since
    /// a page token belongs to the query that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modified_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Full,
    Changes,
}

#[derive(Debug, Deserialize)]
struct About {
    user: DriveUser,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DriveUser {
    display_name: Option<String>,
    email_address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartToken {
    start_page_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileList {
    #[serde(default)]
    files: Vec<File>,
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeList {
    #[serde(default)]
    changes: Vec<Change>,
    next_page_token: Option<String>,
    new_start_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Change {
    file_id: Option<String>,
    #[serde(default)]
    removed: bool,
    file: Option<File>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct File {
    id: String,
    name: String,
    mime_type: String,
    modified_time: Option<DateTime<Utc>>,
    web_view_link: Option<String>,
    shared_with_me_time: Option<DateTime<Utc>>,
    #[serde(default)]
    trashed: bool,
    description: Option<String>,
    last_modifying_user: Option<Person>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Person {
    display_name: Option<String>,
}

/// A file's kind in words, from its MIME type.
fn kind(mime_type: &str) -> &'static str {
    match mime_type {
        "application/vnd.google-apps.document" => "document",
        "application/vnd.google-apps.spreadsheet" => "spreadsheet",
        "application/vnd.google-apps.presentation" => "presentation",
        "application/vnd.google-apps.folder" => "folder",
        "application/pdf" => "pdf",
        _ => "file",
    }
}

impl File {
    fn into_item(self, now: DateTime<Utc>) -> Item {
        let kind = kind(&self.mime_type);
        let modified_by = self
            .last_modifying_user
            .and_then(|person| person.display_name)
            .map(|name| format!(", last modified by {name}"))
            .unwrap_or_default();
        let text = match self.description.filter(|d| !d.trim().is_empty()) {
            Some(description) => description,
            None => format!("{kind}{modified_by}"),
        };
        let mut labels = vec![kind.to_owned()];
        if self.shared_with_me_time.is_some() {
            labels.push("shared with me".to_owned());
        }
        Item {
            source_ref: self.id,
            title: clip(&self.name, TITLE_CHARS),
            snippet: snippet(&text),
            url: self.web_view_link,
            due_at: None,
            labels,
            updated_at: self.modified_time,
            status: TaskStatus::Open,
            horizon: horizon_guess(None, false, now),
        }
    }
}

#[async_trait]
impl Connector for Gdrive {
    fn provider(&self) -> Provider {
        Provider::Gdrive
    }

    fn http(&self) -> &Http {
        &self.http
    }

    fn oauth(&self) -> Option<&OAuthClient> {
        self.oauth.as_ref()
    }

    async fn test(&self, account: &Account) -> Result<String, ProviderError> {
        let about: About = self
            .get(account, "/about", &[("fields", "user")])
            .await?
            .json()?;
        Ok(about
            .user
            .email_address
            .or(about.user.display_name)
            .unwrap_or_else(|| "Google Drive".to_owned()))
    }

    async fn fetch(
        &self,
        account: &Account,
        cursor: Option<&Value>,
    ) -> Result<Page, ProviderError> {
        let mut cursor: Cursor = read_cursor(cursor);
        let now = Utc::now();
        if cursor.mode == Mode::Changes
            && let Some(token) = cursor.changes_token.clone()
        {
            let fields = format!(
                "nextPageToken,newStartPageToken,changes(fileId,removed,file({FILE_FIELDS}))"
            );
            let query = [
                ("pageToken", token.as_str()),
                ("pageSize", PAGE_SIZE),
                ("includeRemoved", "true"),
                ("fields", fields.as_str()),
            ];
            let list: ChangeList = self.get(account, "/changes", &query).await?.json()?;
            let mut items = Vec::new();
            let mut gone = Vec::new();
            for change in list.changes {
                match change.file {
                    Some(file) if !change.removed && !file.trashed => {
                        items.push(file.into_item(now))
                    }
                    Some(file) => gone.push(file.id),
                    None => gone.extend(change.file_id),
                }
            }
            let done = list.next_page_token.is_none();
            let next = Cursor {
                mode: Mode::Changes,
                changes_token: list
                    .next_page_token
                    .or(list.new_start_page_token)
                    .or(Some(token)),
                page_token: None,
                modified_after: None,
            };
            return Ok(Page {
                items,
                gone,
                cursor: write_cursor(&next),
                done,
            });
        }
        if cursor.changes_token.is_none() {
            let start: StartToken = self
                .get(account, "/changes/startPageToken", &[])
                .await?
                .json()?;
            cursor.changes_token = Some(start.start_page_token);
        }
        let since = *cursor
            .modified_after
            .get_or_insert(now - chrono::Duration::days(RECENT_DAYS));
        let q = format!(
            "trashed = false and (modifiedTime > '{}' or sharedWithMe)",
            since.format("%Y-%m-%dT%H:%M:%SZ")
        );
        let fields = format!("nextPageToken,files({FILE_FIELDS})");
        let mut query = vec![
            ("q", q.as_str()),
            ("orderBy", "modifiedTime desc"),
            ("pageSize", PAGE_SIZE),
            ("fields", fields.as_str()),
        ];
        if let Some(token) = &cursor.page_token {
            query.push(("pageToken", token));
        }
        let list: FileList = self.get(account, "/files", &query).await?.json()?;
        let items = list
            .files
            .into_iter()
            .map(|file| file.into_item(now))
            .collect();
        let done = list.next_page_token.is_none();
        cursor.page_token = list.next_page_token;
        if done {
            cursor.mode = Mode::Changes;
            cursor.modified_after = None;
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
    fn a_file_becomes_an_item_named_by_its_kind() {
        let file: File = serde_json::from_value(json!({
            "id": "1AbC", "name": "Roadmap 2027", "mimeType": "application/vnd.google-apps.document",
            "modifiedTime": "2026-12-01T08:00:00.000Z",
            "webViewLink": "https://docs.google.com/document/d/1AbC/edit",
            "sharedWithMeTime": "2026-11-30T08:00:00.000Z",
            "owners": [{"displayName": "Ana", "emailAddress": "ana@acme.test"}],
            "lastModifyingUser": {"displayName": "Ana"}
        }))
        .unwrap();
        let item = file.into_item("2026-12-02T10:00:00Z".parse().unwrap());
        assert_eq!(item.title, "Roadmap 2027");
        assert_eq!(item.snippet, "document, last modified by Ana");
        assert_eq!(item.labels, ["document", "shared with me"]);
        assert_eq!(item.source_ref, "1AbC");
    }
}
