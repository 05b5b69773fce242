//! A fleet whose providers are the local fakes: the API and workers configured with
//! [`FakeProviders::env`], a tenant key, and the steps of connecting an account as a person
//! would (OAuth through the consent page's redirect, or a token).

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::{
    Api, TestEnv,
    fake_providers::{FakeProvider, FakeProviders},
    json, wait_for_some,
};

/// Queues a connector test's workers serve.
pub const CONNECTOR_QUEUES: &str = "ingest,test,executor,schedule";

/// The model name the fleet's LLM is given in [`ConnectorFleet::start_with_llm`].
pub const LLM_MODEL: &str = "gpt-4o-mini";

pub struct ConnectorFleet {
    pub env: TestEnv,
    pub api: Api,
    /// A key of tenant `acme`.
    pub key: String,
    pub fake: FakeProviders,
    /// Whether the processes have the fake's chat model as the fleet's LLM.
    with_llm: bool,
}

impl ConnectorFleet {
    /// The fakes, an API and one worker serving [`CONNECTOR_QUEUES`] with `worker_args`;
    /// `extra_env` goes to both processes.
    pub async fn start(worker_args: &[&str], extra_env: &[(&str, &str)]) -> ConnectorFleet {
        Self::start_in(TestEnv::new().await, worker_args, extra_env, false).await
    }

    /// [`ConnectorFleet::start`] with the fake OpenAI's chat model as the fleet's LLM
    /// (`TASKFLEET_LLM_*` = [`LLM_MODEL`] with the fake's key, for every process), and its
    /// logs kept for [`TestEnv::logs`].
    pub async fn start_with_llm(
        worker_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> ConnectorFleet {
        let mut env = TestEnv::new().await;
        env.capture_logs();
        Self::start_in(env, worker_args, extra_env, true).await
    }

    /// [`ConnectorFleet::start`] with the processes' logs kept for [`TestEnv::logs`].
    pub async fn start_logged(worker_args: &[&str], extra_env: &[(&str, &str)]) -> ConnectorFleet {
        let mut env = TestEnv::new().await;
        env.capture_logs();
        Self::start_in(env, worker_args, extra_env, false).await
    }

    async fn start_in(
        mut env: TestEnv,
        worker_args: &[&str],
        extra_env: &[(&str, &str)],
        with_llm: bool,
    ) -> ConnectorFleet {
        let fake = FakeProviders::start().await;
        let vars = Self::vars(&fake, with_llm, extra_env);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let api = env.start_api(&pairs).await;
        let key = env.create_key("acme");
        let mut fleet = ConnectorFleet {
            env,
            api,
            key,
            fake,
            with_llm,
        };
        fleet.start_worker(worker_args, extra_env);
        fleet
    }

    fn vars(
        fake: &FakeProviders,
        with_llm: bool,
        extra_env: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut vars = match with_llm {
            true => fake.env_with_llm(LLM_MODEL),
            false => fake.env(),
        };
        vars.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        vars
    }

    /// Starts one more worker with the fakes' environment.
    pub fn start_worker(&mut self, worker_args: &[&str], extra_env: &[(&str, &str)]) -> usize {
        let vars = Self::vars(&self.fake, self.with_llm, extra_env);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args = [&["--queues", CONNECTOR_QUEUES][..], worker_args].concat();
        self.env.start_worker_env(&args, &pairs)
    }

    /// A client that does not follow redirects, as a test of the consent page needs.
    pub fn browser() -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    /// Opens a consent page (the fake approves at once) and returns where it redirects: the
    /// API's callback with a code and the state.
    pub async fn consent(&self, authorize_url: &str) -> String {
        let answer = Self::browser().get(authorize_url).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 302, "the consent page redirects");
        answer.headers()["location"].to_str().unwrap().to_owned()
    }

    /// Follows the callback URL; the page's status and text.
    pub async fn callback(&self, url: &str) -> (u16, String) {
        let answer = Self::browser().get(url).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    }

    /// Connects `provider` through OAuth for `key`'s tenant; returns the connector as the API
    /// shows it afterwards.
    pub async fn connect_oauth_as(&self, key: &str, provider: &str, body: Value) -> Value {
        let mut body = body;
        body["provider"] = json!(provider);
        let (status, created) = self.api.post(key, "/v1/connectors", &body).await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["status"], "pending_auth", "{created}");
        let callback = self
            .consent(created["authorize_url"].as_str().unwrap())
            .await;
        let (status, page) = self.callback(&callback).await;
        assert_eq!(status, 200, "{page}");
        let (_, connector) = self
            .api
            .get(
                key,
                &format!("/v1/connectors/{}", created["id"].as_str().unwrap()),
            )
            .await;
        connector
    }

    pub async fn connect_oauth(&self, provider: &str) -> Value {
        self.connect_oauth_as(&self.key, provider, json!({})).await
    }

    /// Creates a connector with a token; the API's answer.
    pub async fn connect_token(&self, body: Value) -> Value {
        let (status, created) = self.api.post(&self.key, "/v1/connectors", &body).await;
        assert_eq!(status, 201, "{created}");
        created
    }

    /// POSTs to `path` (a connector's `/sync` or `/test`), which answers a job, and waits for
    /// the job to finish; returns it.
    pub async fn run(&self, path: &str) -> Value {
        let (status, job) = self.api.post(&self.key, path, &json!({})).await;
        assert!(matches!(status, 200 | 201), "{path}: {status} {job}");
        let id = job["id"].as_str().unwrap().parse().unwrap();
        self.api
            .wait_finished(&self.key, id, Duration::from_secs(60))
            .await
    }

    /// The ingest jobs of a connector, oldest first.
    pub async fn ingest_jobs(&self, connector_id: &str) -> Vec<Uuid> {
        sqlx::query_scalar(
            "SELECT id FROM jobs WHERE kind = 'ingest.connector'
               AND payload ->> 'connector_id' = $1 ORDER BY id",
        )
        .bind(connector_id)
        .fetch_all(&self.env.pool)
        .await
        .unwrap()
    }

    /// Waits for the connector's latest ingest job to finish; returns it.
    pub async fn wait_ingest(&self, connector_id: &str, within: Duration) -> Value {
        let id = wait_for_some(within, "an ingest job exists", || async {
            self.ingest_jobs(connector_id).await.last().copied()
        })
        .await;
        self.api.wait_finished(&self.key, id, within).await
    }

    /// Every task of the tenant from `source_kind`, through the API's pages.
    pub async fn tasks(&self, source_kind: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/tasks?source_kind={source_kind}&limit=100");
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let (status, page) = self.api.get(&self.key, &path).await;
            assert_eq!(status, 200, "{page}");
            all.extend(page["tasks"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return all,
            }
        }
    }

    /// The `item_ids` of every `embed.items` job, oldest job first.
    pub async fn embedded(&self) -> Vec<Vec<Uuid>> {
        let payloads: Vec<Value> =
            sqlx::query_scalar("SELECT payload FROM jobs WHERE kind = 'embed.items' ORDER BY id")
                .fetch_all(&self.env.pool)
                .await
                .unwrap();
        payloads
            .iter()
            .map(|payload| {
                payload["item_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_str().unwrap().parse().unwrap())
                    .collect()
            })
            .collect()
    }

    /// The connector's sealed credentials, opened with the tests' key: what the fleet holds.
    pub async fn credentials(&self, connector_id: &str) -> Value {
        let (tenant, sealed): (Uuid, String) =
            sqlx::query_as("SELECT tenant_id, credentials FROM connectors WHERE id = $1::uuid")
                .bind(connector_id)
                .fetch_one(&self.env.pool)
                .await
                .unwrap();
        let sealer = taskfleet_storage::Sealer::from_hex(crate::TEST_ENCRYPTION_KEY, &[]).unwrap();
        let context =
            taskfleet_storage::sealing::connector_context(tenant, connector_id.parse().unwrap());
        serde_json::from_slice(&sealer.open(&sealed, &context).unwrap()).unwrap()
    }

    pub async fn finish(self) {
        self.env.finish().await;
    }
}

/// The source kind of a provider's tasks.
pub fn source_kind(provider: FakeProvider) -> &'static str {
    match provider {
        FakeProvider::Github => "github",
        FakeProvider::Jira => "jira",
        FakeProvider::Confluence => "confluence",
        FakeProvider::Gmail => "gmail",
        FakeProvider::Gdrive => "gdrive",
    }
}
