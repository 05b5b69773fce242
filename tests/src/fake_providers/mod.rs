//! Fake GitHub, Atlassian (Jira, Confluence) and Google (Gmail, Drive) servers that answer as
//! the real providers do: their response shapes, pagination, error bodies, rate-limit headers
//! and OAuth token endpoints, written from the providers' public API documentation. The
//! integration tests and `make up`'s offline demo point the production clients at them. A fake
//! OpenAI (embeddings, and scripted chat models: a focus-list reviewer and a to-do assistant,
//! unary or streamed) stands in for the embedding and LLM providers the same way.
//!
//! One poem server on one port holds every provider under a path prefix (`/github`,
//! `/atlassian`, `/google`, `/openai`); [`FakeProviders::env`] lists the base URLs. Everything
//! the fakes know sits in one [`World`] behind one lock, which no handler holds across an
//! `await`.
//! Every request first passes [`traffic::control`] (request log, fault rules, latency), then
//! its provider's authentication, then the endpoint.
//!
//! Tests drive the data through the handle: `seed` adds numbered items, `touch` edits them,
//! `complete` closes them, and whatever the incremental endpoints report (GitHub `since`, JQL
//! `updated >=`, Drive changes, Gmail history) follows.

mod adf;
mod atlassian;
mod authorization;
mod clock;
mod demo;
mod draft;
#[cfg(test)]
mod fidelity;
mod github;
mod google;
mod openai;
mod openai_assistant;
mod page_token;
mod params;
mod query_tokens;
mod reply;
mod traffic;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use poem::{EndpointExt, Request, Route, Server, listener::TcpAcceptor};

use authorization::{Authorizations, CLIENT_ID, CLIENT_SECRET, Issuer};
pub use draft::{Draft, Priority};
pub use openai::{
    ChatMode, ChatToolResult, DEFAULT_DIMENSIONS as OPENAI_DEFAULT_DIMENSIONS, FAKE_REVIEW_REASON,
    OPENAI_API_KEY, UNKNOWN_TASK_ID,
};
pub use traffic::FaultRule;
use traffic::Traffic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeProvider {
    Github,
    Jira,
    Confluence,
    Gmail,
    Gdrive,
}

impl FakeProvider {
    /// What a numbered item of this provider is called: "GitHub issue 17".
    pub(crate) fn noun(self) -> &'static str {
        match self {
            FakeProvider::Github => "GitHub issue",
            FakeProvider::Jira => "Jira issue",
            FakeProvider::Confluence => "Confluence task",
            FakeProvider::Gmail => "Gmail message",
            FakeProvider::Gdrive => "Drive file",
        }
    }
}

/// What the handle asks of every provider's data.
pub(crate) trait Items {
    /// How many items were seeded (the index space of `touch` and `complete`).
    fn len(&self) -> usize;
    fn seed(&mut self, drafts: Vec<Draft>);
    /// Edits the items at `indexes` (out-of-range ones are skipped); returns how many changed.
    fn touch(&mut self, indexes: &[usize]) -> usize;
    fn complete(&mut self, index: usize);
}

/// Applies `edit` to the items at `indexes` that exist, in order; returns how many it edited.
pub(crate) fn edit_each<T>(
    items: &mut [T],
    indexes: &[usize],
    mut edit: impl FnMut(usize, &mut T),
) -> usize {
    let mut edited = 0;
    for &index in indexes {
        if let Some(item) = items.get_mut(index) {
            edit(index, item);
            edited += 1;
        }
    }
    edited
}

/// Everything the fakes know.
#[derive(Default)]
pub(crate) struct World {
    pub auth: Authorizations,
    pub traffic: Traffic,
    pub github: github::GitHub,
    pub jira: atlassian::jira::Jira,
    pub confluence: atlassian::confluence::Confluence,
    pub gmail: google::gmail::Mailbox,
    pub drive: google::Drive,
    pub openai: openai::OpenAi,
}

impl World {
    fn items(&mut self, provider: FakeProvider) -> &mut dyn Items {
        match provider {
            FakeProvider::Github => &mut self.github,
            FakeProvider::Jira => &mut self.jira,
            FakeProvider::Confluence => &mut self.confluence,
            FakeProvider::Gmail => &mut self.gmail,
            FakeProvider::Gdrive => &mut self.drive,
        }
    }
}

pub(crate) type Shared = Arc<Mutex<World>>;

/// The world a request is served from.
pub(crate) fn lock(req: &Request) -> MutexGuard<'_, World> {
    req.data::<Shared>()
        .expect("the server has its world")
        .lock()
        .unwrap()
}

/// The running fakes; the server stops when this is dropped.
pub struct FakeProviders {
    url: String,
    world: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProviders {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeProviders {
    /// Empty fakes on a free port of 127.0.0.1.
    pub async fn start() -> FakeProviders {
        FakeProviders::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> FakeProviders {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|err| panic!("fake providers cannot listen on {addr}: {err}"));
        let addr = listener.local_addr().expect("a bound address");
        let acceptor = TcpAcceptor::from_tokio(listener).expect("a TCP acceptor");
        let world = Shared::default();
        let app = Route::new()
            .nest("/github", github::routes())
            .nest("/atlassian", atlassian::routes())
            .nest("/google", google::routes())
            .nest("/openai", openai::routes())
            .around(traffic::control)
            .data(world.clone());
        let server = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(app).await;
        });
        FakeProviders {
            url: format!("http://{addr}"),
            world,
            server,
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Every environment variable the taskfleet API and workers need to use these fakes: the
    /// base URLs (the OpenAI-compatible embeddings endpoint's included), the fake's own
    /// registered OAuth client for each provider (other client ids and secrets are refused as
    /// the real providers refuse them), and leave to use the fake Atlassian site on this
    /// machine.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = &self.url;
        let bases = [
            ("GITHUB_API_URL", format!("{url}/github/api")),
            ("GITHUB_OAUTH_URL", format!("{url}/github")),
            ("ATLASSIAN_API_URL", format!("{url}/atlassian/api")),
            ("ATLASSIAN_AUTH_URL", format!("{url}/atlassian/auth")),
            ("GOOGLE_API_URL", format!("{url}/google/api")),
            ("GOOGLE_AUTH_URL", format!("{url}/google/accounts")),
            ("GOOGLE_TOKEN_URL", format!("{url}/google/token")),
            ("EMBED_BASE_URL", self.openai_base_url()),
            ("ALLOW_LOCAL_SITES", "true".to_owned()),
        ];
        let clients = ["GITHUB", "ATLASSIAN", "GOOGLE"]
            .into_iter()
            .flat_map(|provider| {
                [
                    (format!("{provider}_CLIENT_ID"), CLIENT_ID.to_owned()),
                    (
                        format!("{provider}_CLIENT_SECRET"),
                        CLIENT_SECRET.to_owned(),
                    ),
                ]
            });
        bases
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .chain(clients)
            .map(|(name, value)| (format!("TASKFLEET_{name}"), value))
            .collect()
    }

    /// [`FakeProviders::env`], and the fleet's own LLM (`TASKFLEET_LLM_*`) on the fake's
    /// OpenAI-compatible chat endpoint, answering as `model`.
    pub fn env_with_llm(&self, model: &str) -> Vec<(String, String)> {
        let mut vars = self.env();
        vars.extend([
            ("TASKFLEET_LLM_BASE_URL".to_owned(), self.openai_base_url()),
            ("TASKFLEET_LLM_MODEL".to_owned(), model.to_owned()),
            (
                "TASKFLEET_LLM_API_KEY".to_owned(),
                OPENAI_API_KEY.to_owned(),
            ),
        ]);
        vars
    }

    /// The base URL an OpenAI client takes (`{url}/openai/v1`; it appends `/embeddings` or
    /// `/chat/completions`). The fake accepts only the key [`OPENAI_API_KEY`].
    pub fn openai_base_url(&self) -> String {
        format!("{}/openai/v1", self.url)
    }

    /// The Jira/Confluence site API-token clients use, and the `url` accessible-resources
    /// reports for the one cloud site.
    pub fn site_url(&self) -> String {
        format!("{}/atlassian/site", self.url)
    }

    pub fn cloud_id(&self) -> String {
        atlassian::CLOUD_ID.to_owned()
    }

    /// Adds `n` numbered items ("GitHub issue 17"; bodies with text, some with due dates,
    /// labels and priorities). Github: issues assigned to the user. Jira: issues assigned, not
    /// done. Confluence: incomplete tasks assigned to the user. Gmail: inbox messages (each a
    /// `messageAdded` history record). Gdrive: files modified recently.
    pub fn seed(&self, provider: FakeProvider, n: usize) {
        let mut world = self.world();
        let items = world.items(provider);
        let first = items.len() + 1;
        items.seed(
            (first..first + n)
                .map(|number| Draft::numbered(provider.noun(), number))
                .collect(),
        );
    }

    /// Adds hand-written items (a test's own data set) after the ones already there.
    pub fn seed_drafts(&self, provider: FakeProvider, drafts: Vec<Draft>) {
        self.world().items(provider).seed(drafts);
    }

    /// GitHub PRs whose review is requested from the user (found only through
    /// `/search/issues`). They follow the issues in `touch`/`complete`'s seeding order.
    pub fn seed_github_review_requests(&self, n: usize) {
        let mut world = self.world();
        let first = world.github.len() + 1;
        world.github.seed_review_requests(
            (first..first + n)
                .map(|number| Draft::numbered("GitHub pull request", number))
                .collect(),
        );
    }

    /// The demo's data set: a week of realistic work across the five providers.
    pub fn seed_demo(&self) {
        let mut world = self.world();
        world.github.seed(demo::github_issues());
        world
            .github
            .seed_review_requests(demo::github_review_requests());
        world.jira.seed(demo::jira_issues());
        world.confluence.seed(demo::confluence_tasks());
        world.gmail.seed(demo::gmail_messages());
        world.drive.seed(demo::drive_files());
    }

    /// Edits items by their 0-based index in seeding order: new title and body, a newer
    /// updated time (GitHub updated_at, Jira fields.updated, Confluence updatedAt, Drive
    /// modifiedTime and a `changes` entry). Gmail messages are immutable: this adds that many
    /// new messages instead (with history records). Returns how many changed or were added.
    pub fn touch(&self, provider: FakeProvider, indexes: &[usize]) -> usize {
        self.world().items(provider).touch(indexes)
    }

    /// Closes or completes an item: GitHub state closed + closed_at, Jira status category
    /// done, Confluence status complete + completedAt, Drive trashed (a `changes` entry with
    /// file.trashed), Gmail: nothing.
    pub fn complete(&self, provider: FakeProvider, index: usize) {
        self.world().items(provider).complete(index);
    }

    /// A GitHub personal access token, accepted as `Authorization: Bearer X` or `token X`.
    pub fn add_github_pat(&self, token: &str) {
        self.world().auth.add_github_pat(token);
    }

    /// An Atlassian API token for Basic auth (email:token) on the site URL.
    pub fn add_atlassian_api_token(&self, email: &str, token: &str) {
        self.world().auth.add_atlassian_api_token(email, token);
    }

    /// GitHub's token endpoint issues expiring user tokens (expires_in + refresh_token) when
    /// true.
    pub fn set_github_expiring_tokens(&self, on: bool) {
        self.world().auth.github_expiring_tokens = on;
    }

    /// Every access token issued so far answers 401 from now on (refresh tokens still work;
    /// PATs and API tokens are not access tokens).
    pub fn expire_access_tokens(&self) {
        self.world().auth.expire_access_tokens();
    }

    /// Every refresh token issued so far answers invalid_grant from now on.
    pub fn revoke_refresh_tokens(&self) {
        self.world().auth.revoke_refresh_tokens();
    }

    /// Gmail history older than now is no longer kept: history.list with an older
    /// startHistoryId answers 404.
    pub fn expire_gmail_history(&self) {
        self.world().gmail.expire_history();
    }

    /// Imposes an answer on the next requests whose path contains `rule.path_contains`.
    /// Rules apply in the order added, OAuth endpoints included.
    pub fn fail_next(&self, rule: FaultRule) {
        self.world().traffic.add_rule(rule);
    }

    /// Every API (not OAuth) request waits this long before answering.
    pub fn set_latency(&self, latency: Duration) {
        self.world().traffic.latency = latency;
    }

    /// How the fake OpenAI chat model (`/openai/v1/chat/completions`) reviews focus lists from
    /// now on. Requests that offer an `add_task` tool meet the to-do assistant whatever the mode.
    pub fn set_chat_mode(&self, mode: ChatMode) {
        self.world().openai.chat.mode = mode;
    }

    /// The tool results the fake chat model has been sent, each once, in the order it first
    /// received them.
    pub fn chat_tool_results(&self) -> Vec<ChatToolResult> {
        self.world().openai.chat.tool_results.clone()
    }

    /// Every request body the fake chat model has received that parsed as JSON, in order
    /// (refused ones included): the history, system prompt and tools each turn was sent.
    pub fn chat_requests(&self) -> Vec<serde_json::Value> {
        self.world().openai.chat.requests.clone()
    }

    /// The prompt and completion tokens the fake chat model has reported in `usage`, summed
    /// over its answers.
    pub fn chat_usage(&self) -> (u64, u64) {
        let world = self.world();
        (
            world.openai.chat.prompt_tokens,
            world.openai.chat.completion_tokens,
        )
    }

    /// How many requests whose path (without the query) contains `path_contains` the fakes
    /// have received, faulted ones included.
    pub fn requests(&self, path_contains: &str) -> usize {
        self.world().traffic.requests(path_contains)
    }

    /// Refresh-token grants served by `provider`'s authorization server (Jira and Confluence
    /// share Atlassian's, Gmail and Drive share Google's).
    pub fn refreshes(&self, provider: FakeProvider) -> usize {
        self.world().auth.refreshes(Issuer::of(provider))
    }

    /// Authorization codes exchanged for tokens at `provider`'s authorization server.
    pub fn code_exchanges(&self, provider: FakeProvider) -> usize {
        self.world().auth.code_exchanges(Issuer::of(provider))
    }
}
