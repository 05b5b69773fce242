//! Drive: the user's recent files and the change log, and the endpoints a sync uses:
//! `about`, `files.list` (with its `q`), `changes.getStartPageToken` and `changes.list`.
//!
//! A change log entry stands for a file's latest state: a file changed twice since a page
//! token appears once, at its latest change, as Drive reports it. Trashing a file is a change
//! with `removed: false` and `file.trashed: true`.

use chrono::{DateTime, Utc};
use poem::{Request, Response, handler};
use serde_json::{Value, json};

use super::{
    DISPLAY_NAME, EMAIL,
    drive_query::{self, Facts},
    invalid_parameter, missing_parameter,
};
use crate::fake_providers::{
    Items,
    clock::{Clock, iso_millis},
    draft::Draft,
    edit_each, lock, page_token,
    params::Params,
    reply,
};

/// Someone a file belongs to or was modified by.
struct Person {
    name: &'static str,
    email: &'static str,
    permission_id: &'static str,
}

const ME: Person = Person {
    name: DISPLAY_NAME,
    email: EMAIL,
    permission_id: "06482917354028591365",
};

const COLLEAGUES: [Person; 2] = [
    Person {
        name: "Priya Raman",
        email: "priya.raman@example.com",
        permission_id: "13859204759183746520",
    },
    Person {
        name: "Marcus Chen",
        email: "marcus.chen@example.com",
        permission_id: "09182736450918273645",
    },
];

impl Person {
    fn json(&self) -> Value {
        json!({
            "kind": "drive#user",
            "displayName": self.name,
            "photoLink": format!("https://lh3.googleusercontent.com/a/default-user=s64-{}", self.permission_id),
            "me": self.email == EMAIL,
            "permissionId": self.permission_id,
            "emailAddress": self.email,
        })
    }
}

/// (MIME type, the editor's URL path, file name suffix), in turn for seeded files.
const KINDS: [(&str, &str, &str); 4] = [
    (
        "application/vnd.google-apps.document",
        "https://docs.google.com/document/d/{id}/edit?usp=drivesdk",
        "",
    ),
    (
        "application/vnd.google-apps.spreadsheet",
        "https://docs.google.com/spreadsheets/d/{id}/edit?usp=drivesdk",
        "",
    ),
    (
        "application/vnd.google-apps.presentation",
        "https://docs.google.com/presentation/d/{id}/edit?usp=drivesdk",
        "",
    ),
    (
        "application/pdf",
        "https://drive.google.com/file/d/{id}/view?usp=drivesdk",
        ".pdf",
    ),
];

pub(crate) struct File {
    id: String,
    number: usize,
    draft: Draft,
    owner: &'static Person,
    last_modifier: &'static Person,
    /// When a colleague shared the file with the user; `None` for the user's own files.
    shared_with_me: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    modified: DateTime<Utc>,
    trashed: bool,
}

impl File {
    fn kind(&self) -> (&'static str, &'static str, &'static str) {
        KINDS[(self.number - 1) % KINDS.len()]
    }

    fn name(&self) -> String {
        format!("{}{}", self.draft.title(), self.kind().2)
    }

    /// What `q` is evaluated on; `name` is [`File::name`].
    fn facts<'a>(&'a self, name: &'a str) -> Facts<'a> {
        Facts {
            trashed: self.trashed,
            modified: self.modified,
            created: self.created,
            shared_with_me: self.shared_with_me.is_some(),
            owned_by_me: self.shared_with_me.is_none(),
            mime_type: self.kind().0,
            name,
        }
    }

    fn json(&self) -> Value {
        let (mime_type, link, _) = self.kind();
        let mut json = json!({
            "kind": "drive#file",
            "id": self.id,
            "name": self.name(),
            "mimeType": mime_type,
            "description": self.draft.summary(),
            "trashed": self.trashed,
            "webViewLink": link.replace("{id}", &self.id),
            "iconLink": format!("https://drive-thirdparty.googleusercontent.com/16/type/{mime_type}"),
            "createdTime": iso_millis(self.created),
            "modifiedTime": iso_millis(self.modified),
            "owners": [self.owner.json()],
            "lastModifyingUser": self.last_modifier.json(),
            "shared": self.shared_with_me.is_some() || self.number.is_multiple_of(2),
            "ownedByMe": self.shared_with_me.is_none(),
        });
        if let Some(shared) = self.shared_with_me {
            json["sharedWithMeTime"] = json!(iso_millis(shared));
        }
        json
    }
}

struct Change {
    id: u64,
    file: usize,
    time: DateTime<Utc>,
}

/// The latest change of each file, oldest first.
struct ChangeLog {
    changes: Vec<Change>,
    /// The id the next change will get: the start page token of "from now on".
    next: u64,
}

impl ChangeLog {
    fn record(&mut self, file: usize, time: DateTime<Utc>) {
        self.changes.retain(|change| change.file != file);
        self.changes.push(Change {
            id: self.next,
            file,
            time,
        });
        self.next += 1;
    }
}

/// The user's Drive.
pub(crate) struct Drive {
    files: Vec<File>,
    log: ChangeLog,
    clock: Clock,
}

impl Default for Drive {
    fn default() -> Drive {
        Drive {
            files: Vec::new(),
            log: ChangeLog {
                changes: Vec::new(),
                next: 18_204,
            },
            clock: Clock::default(),
        }
    }
}

impl Items for Drive {
    fn len(&self) -> usize {
        self.files.len()
    }

    /// Odd-numbered files were shared by a colleague, even ones are the user's own.
    fn seed(&mut self, drafts: Vec<Draft>) {
        let stamps = self.clock.seeding(drafts.len());
        for (draft, stamp) in drafts.into_iter().zip(stamps) {
            let number = self.files.len() + 1;
            let colleague = &COLLEAGUES[number % COLLEAGUES.len()];
            let shared = number % 2 == 1;
            self.files.push(File {
                // Drive's ids: 33 characters starting with 1.
                id: format!("1Fk{:030x}", number as u128 * 0x9E37_79B9_7F4A_7C15),
                number,
                draft,
                owner: if shared { colleague } else { &ME },
                last_modifier: if number.is_multiple_of(3) {
                    colleague
                } else {
                    &ME
                },
                shared_with_me: shared.then(|| stamp - chrono::Duration::hours(2)),
                created: stamp - chrono::Duration::days(4 + (number % 12) as i64),
                modified: stamp,
                trashed: false,
            });
            self.log.record(number - 1, stamp);
        }
    }

    fn touch(&mut self, indexes: &[usize]) -> usize {
        edit_each(&mut self.files, indexes, |index, file| {
            let now = self.clock.now();
            file.draft.revise();
            file.modified = now;
            file.last_modifier = &ME;
            self.log.record(index, now);
        })
    }

    /// Trashing does not change `modifiedTime`; it is a change all the same.
    fn complete(&mut self, index: usize) {
        if index < self.files.len() {
            let now = self.clock.now();
            self.files[index].trashed = true;
            self.log.record(index, now);
        }
    }
}

/// `about.get`: Drive requires `fields`; the fake answers `user` whatever it names.
#[handler]
pub(crate) async fn about(req: &Request) -> Response {
    if Params::query(req).get("fields").is_none() {
        return missing_parameter(
            "The 'fields' parameter is required for this method.",
            "fields",
        );
    }
    reply::json(200, &json!({"user": ME.json()}))
}

/// `files.list`. `fields` is not applied: every answer has every field of the file shape.
#[handler]
pub(crate) async fn list_files(req: &Request) -> Response {
    let params = Params::query(req);
    let query = match params.get("q").map(drive_query::parse) {
        None => None,
        Some(Some(query)) => Some(query),
        Some(None) => return invalid_parameter("q"),
    };
    let Some(order) = params
        .get("orderBy")
        .map_or(Some(Order::ModifiedDescending), Order::parse)
    else {
        return invalid_parameter("orderBy");
    };
    let offset = match params.get("pageToken").map(page_token::decode) {
        None => 0,
        Some(Some(offset)) => offset,
        Some(None) => return invalid_parameter("pageToken"),
    };
    let world = lock(req);
    let mut found: Vec<&File> = world
        .drive
        .files
        .iter()
        .filter(|file| {
            let name = file.name();
            query
                .as_ref()
                .is_none_or(|query| query.matches(&file.facts(&name)))
        })
        .collect();
    order.sort(&mut found);
    let (page, next) = page_token::page(&found, offset, params.size("pageSize", 100, 1000));
    let mut body = json!({
        "kind": "drive#fileList",
        "incompleteSearch": false,
        "files": page.iter().map(|file| file.json()).collect::<Vec<_>>(),
    });
    if let Some(next) = next {
        body["nextPageToken"] = json!(page_token::encode(next));
    }
    reply::json(200, &body)
}

/// The `orderBy` keys the fake knows.
enum Order {
    ModifiedDescending,
    ModifiedAscending,
    Name,
}

impl Order {
    /// The first key of an `orderBy` list ("folder,modifiedTime desc,name" sorts by folder
    /// first, and the fake has no folders, so `folder` is skipped).
    fn parse(text: &str) -> Option<Order> {
        let key = text
            .split(',')
            .map(str::trim)
            .find(|key| !key.starts_with("folder"))?;
        match key {
            "modifiedTime desc" | "modifiedByMeTime desc" | "recency desc" => {
                Some(Order::ModifiedDescending)
            }
            "modifiedTime" | "modifiedByMeTime" | "recency" => Some(Order::ModifiedAscending),
            "name" | "name_natural" => Some(Order::Name),
            _ => None,
        }
    }

    fn sort(&self, files: &mut [&File]) {
        match self {
            Order::ModifiedDescending => files.sort_by_key(|file| std::cmp::Reverse(file.modified)),
            Order::ModifiedAscending => files.sort_by_key(|file| file.modified),
            Order::Name => files.sort_by_key(|file| file.name()),
        }
    }
}

#[handler]
pub(crate) async fn start_page_token(req: &Request) -> Response {
    let next_change = lock(req).drive.log.next;
    reply::json(
        200,
        &json!({"kind": "drive#startPageToken", "startPageToken": next_change.to_string()}),
    )
}

/// `changes.list` from a page token (the id of the first change to report).
#[handler]
pub(crate) async fn list_changes(req: &Request) -> Response {
    let params = Params::query(req);
    let Some(token) = params.get("pageToken") else {
        return missing_parameter("Required parameter: pageToken", "pageToken");
    };
    let Ok(from) = token.parse::<u64>() else {
        return invalid_parameter("pageToken");
    };
    let page_size = params.size("pageSize", 100, 1000);
    let world = lock(req);
    let drive = &world.drive;
    if from > drive.log.next {
        return invalid_parameter("pageToken");
    }
    let pending: Vec<&Change> = drive
        .log
        .changes
        .iter()
        .filter(|change| change.id >= from)
        .collect();
    let page = &pending[..page_size.min(pending.len())];
    let changes: Vec<Value> = page
        .iter()
        .map(|change| {
            let file = &drive.files[change.file];
            json!({
                "kind": "drive#change",
                "changeType": "file",
                "removed": false,
                "fileId": file.id,
                "time": iso_millis(change.time),
                "file": file.json(),
            })
        })
        .collect();
    let mut body = json!({"kind": "drive#changeList", "changes": changes});
    match pending.get(page.len()) {
        Some(next) => body["nextPageToken"] = json!(next.id.to_string()),
        None => body["newStartPageToken"] = json!(drive.log.next.to_string()),
    }
    reply::json(200, &body)
}
