//! Gmail: the inbox, its history, and the endpoints a sync uses: `profile`, `messages.list`,
//! `messages.get` (formats `full`, `metadata` with `metadataHeaders`, `minimal`) and
//! `history.list`.
//!
//! Messages never change, so `touch` delivers new ones. Each delivery is a `messageAdded`
//! history record with the next history id; `expire_history` forgets the records before now,
//! after which an older `startHistoryId` is answered 404 as Gmail does.

use base64::{Engine, engine::general_purpose::URL_SAFE};
use chrono::{DateTime, Utc};
use poem::{Request, Response, handler, web::Path};
use serde_json::{Value, json};

use super::{EMAIL, invalid_parameter, missing_parameter, not_found};
use crate::fake_providers::{
    FakeProvider, Items,
    clock::Clock,
    draft::{Draft, Priority},
    lock, page_token,
    params::Params,
    reply,
};

/// Who writes to the user when the draft does not say: (name, address).
const SENDERS: [(&str, &str); 3] = [
    ("Priya Raman", "priya.raman@example.com"),
    ("Marcus Chen", "marcus.chen@example.com"),
    ("Sofia Alvarez", "sofia.alvarez@example.com"),
];

pub(crate) struct Message {
    id: String,
    draft: Draft,
    sender: (&'static str, &'static str),
    labels: Vec<&'static str>,
    history_id: u64,
    received: DateTime<Utc>,
}

impl Message {
    fn reference(&self) -> Value {
        json!({"id": self.id, "threadId": self.id})
    }

    fn snippet(&self) -> String {
        self.draft.summary().chars().take(140).collect()
    }

    /// The message's headers, in the order a mail carries them.
    fn headers(&self) -> Vec<(&'static str, String)> {
        let (name, address) = self.sender;
        vec![
            ("Delivered-To", EMAIL.to_owned()),
            (
                "Date",
                self.received
                    .format("%a, %-d %b %Y %H:%M:%S +0000")
                    .to_string(),
            ),
            ("From", format!("{name} <{address}>")),
            ("To", format!("Demo User <{EMAIL}>")),
            ("Subject", self.draft.title()),
            ("Message-ID", format!("<{}@mail.example.com>", self.id)),
            ("MIME-Version", "1.0".to_owned()),
            (
                "Content-Type",
                "multipart/alternative; boundary=\"000000000000a1b2c3\"".to_owned(),
            ),
        ]
    }

    fn json(&self, format: &str, wanted_headers: &[&str]) -> Value {
        let mut json = json!({
            "id": self.id,
            "threadId": self.id,
            "labelIds": self.labels,
            "snippet": self.snippet(),
            "sizeEstimate": 2_400 + self.draft.body().len() * 2,
            "historyId": self.history_id.to_string(),
            "internalDate": self.received.timestamp_millis().to_string(),
        });
        if format == "minimal" {
            return json;
        }
        let headers: Vec<Value> = self
            .headers()
            .into_iter()
            .filter(|(name, _)| {
                format == "full"
                    || wanted_headers.is_empty()
                    || wanted_headers
                        .iter()
                        .any(|wanted| wanted.eq_ignore_ascii_case(name))
            })
            .map(|(name, value)| json!({"name": name, "value": value}))
            .collect();
        json["payload"] = json!({
            "partId": "",
            "mimeType": "multipart/alternative",
            "filename": "",
            "headers": headers,
        });
        if format == "full" {
            let text = self.draft.body();
            let html = format!("<div dir=\"ltr\">{}</div>", text.replace('\n', "<br>"));
            let part = |id: &str, mime: &str, content: &str| {
                json!({
                    "partId": id,
                    "mimeType": mime,
                    "filename": "",
                    "headers": [{"name": "Content-Type", "value": format!("{mime}; charset=\"UTF-8\"")}],
                    "body": {"size": content.len(), "data": URL_SAFE.encode(content)},
                })
            };
            json["payload"]["body"] = json!({"size": 0});
            json["payload"]["parts"] = json!([
                part("0", "text/plain", &text),
                part("1", "text/html", &html)
            ]);
        }
        json
    }
}

/// The user's mailbox.
pub(crate) struct Mailbox {
    messages: Vec<Message>,
    /// The current history id: that of the newest record.
    history_id: u64,
    /// Records with ids below this are no longer kept.
    kept_from: u64,
    clock: Clock,
}

impl Default for Mailbox {
    fn default() -> Mailbox {
        Mailbox {
            messages: Vec::new(),
            history_id: 4_210_337,
            kept_from: 0,
            clock: Clock::default(),
        }
    }
}

impl Mailbox {
    pub fn expire_history(&mut self) {
        self.kept_from = self.history_id;
    }

    fn deliver(&mut self, draft: Draft, received: DateTime<Utc>) {
        let index = self.messages.len();
        self.history_id += 1;
        let mut labels = vec!["INBOX"];
        if index.is_multiple_of(2) {
            labels.push("UNREAD");
        }
        if matches!(draft.priority, Priority::Highest | Priority::High) {
            labels.push("IMPORTANT");
        }
        labels.push(if index % 3 == 2 {
            "CATEGORY_UPDATES"
        } else {
            "CATEGORY_PERSONAL"
        });
        self.messages.push(Message {
            // Gmail's ids are 16 hex digits, growing with the time of arrival.
            id: format!(
                "{:x}",
                (received.timestamp_millis() as u64) << 20 | (index as u64 & 0xf_ffff)
            ),
            sender: draft.author.unwrap_or(SENDERS[index % SENDERS.len()]),
            draft,
            labels,
            history_id: self.history_id,
            received,
        });
    }
}

impl Items for Mailbox {
    fn len(&self) -> usize {
        self.messages.len()
    }

    fn seed(&mut self, drafts: Vec<Draft>) {
        let stamps = self.clock.seeding(drafts.len());
        for (draft, stamp) in drafts.into_iter().zip(stamps) {
            self.deliver(draft, stamp);
        }
    }

    /// Delivers one new message per index: a message is never edited.
    fn touch(&mut self, indexes: &[usize]) -> usize {
        for _ in indexes {
            let number = self.messages.len() + 1;
            let received = self.clock.now();
            self.deliver(
                Draft::numbered(FakeProvider::Gmail.noun(), number),
                received,
            );
        }
        indexes.len()
    }

    fn complete(&mut self, _index: usize) {}
}

#[handler]
pub(crate) async fn profile(req: &Request) -> Response {
    let world = lock(req);
    let mailbox = &world.gmail;
    reply::json(
        200,
        &json!({
            "emailAddress": EMAIL,
            "messagesTotal": mailbox.messages.len(),
            "threadsTotal": mailbox.messages.len(),
            "historyId": mailbox.history_id.to_string(),
        }),
    )
}

/// `messages.list`, newest first. `q` is accepted and not applied: every message the fake
/// holds is recent and in the inbox.
#[handler]
pub(crate) async fn list_messages(req: &Request) -> Response {
    let params = Params::query(req);
    let label_ids: Vec<&str> = params.all("labelIds").collect();
    let offset = match params.get("pageToken").map(page_token::decode) {
        None => 0,
        Some(Some(offset)) => offset,
        Some(None) => return invalid_parameter("pageToken"),
    };
    let world = lock(req);
    let mut found: Vec<&Message> = world
        .gmail
        .messages
        .iter()
        .filter(|message| label_ids.iter().all(|label| message.labels.contains(label)))
        .collect();
    found.reverse();
    let (page, next) = page_token::page(&found, offset, params.size("maxResults", 100, 500));
    let mut body = json!({"resultSizeEstimate": found.len()});
    if !page.is_empty() {
        body["messages"] = page.iter().map(|message| message.reference()).collect();
    }
    if let Some(next) = next {
        body["nextPageToken"] = json!(page_token::encode(next));
    }
    reply::json(200, &body)
}

#[handler]
pub(crate) async fn get_message(req: &Request, Path(id): Path<String>) -> Response {
    let params = Params::query(req);
    let format = params.get("format").unwrap_or("full");
    if !matches!(format, "full" | "metadata" | "minimal") {
        return invalid_parameter("format");
    }
    let wanted_headers: Vec<&str> = params.all("metadataHeaders").collect();
    let world = lock(req);
    match world.gmail.messages.iter().find(|message| message.id == id) {
        Some(message) => reply::json(200, &message.json(format, &wanted_headers)),
        None => not_found(),
    }
}

/// `history.list`: the `messageAdded` records after `startHistoryId`, oldest first.
#[handler]
pub(crate) async fn list_history(req: &Request) -> Response {
    let params = Params::query(req);
    let Some(start) = params.get("startHistoryId") else {
        return missing_parameter(
            "Missing required parameter: startHistoryId",
            "startHistoryId",
        );
    };
    let Ok(start) = start.parse::<u64>() else {
        return invalid_parameter("startHistoryId");
    };
    let offset = match params.get("pageToken").map(page_token::decode) {
        None => 0,
        Some(Some(offset)) => offset,
        Some(None) => return invalid_parameter("pageToken"),
    };
    let types: Vec<&str> = params
        .all("historyTypes")
        .flat_map(|value| value.split(','))
        .collect();
    let label = params.get("labelId");
    let world = lock(req);
    let mailbox = &world.gmail;
    if start < mailbox.kept_from {
        return not_found();
    }
    let wants_added = types.is_empty() || types.contains(&"messageAdded");
    let records: Vec<&Message> = mailbox
        .messages
        .iter()
        .filter(|message| wants_added && message.history_id > start)
        .filter(|message| label.is_none_or(|label| message.labels.contains(&label)))
        .collect();
    let (page, next) = page_token::page(&records, offset, params.size("maxResults", 100, 500));
    let mut body = json!({"historyId": mailbox.history_id.to_string()});
    if !page.is_empty() {
        body["history"] = page
            .iter()
            .map(|message| {
                json!({
                    "id": message.history_id.to_string(),
                    "messages": [message.reference()],
                    "messagesAdded": [{"message": {
                        "id": message.id,
                        "threadId": message.id,
                        "labelIds": message.labels,
                    }}],
                })
            })
            .collect();
    }
    if let Some(next) = next {
        body["nextPageToken"] = json!(page_token::encode(next));
    }
    reply::json(200, &body)
}
