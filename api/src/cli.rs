//! Command line of `taskfleet-api`: serve (the default), `migrate`, `keys create`, `keys list`,
//! `keys revoke`, `keys reseal`.

use clap::{Parser, Subcommand};
use taskfleet_connectors::ProviderSettings;
use taskfleet_storage::{EncryptionKeys, LlmSettings};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskfleet-api",
    about = "The taskfleet REST API and its admin commands"
)]
pub struct ApiArgs {
    #[arg(long, env = "DATABASE_URL", global = true, default_value = "")]
    pub database_url: String,
    #[command(flatten)]
    pub postgres: taskfleet_storage::StatementLimits,
    /// Postgres connections of the shared pool. The process opens at most this many, plus
    /// 4 for the ledger's statements about one job, plus 2 while it migrates at start.
    #[arg(long = "pg-max-connections", env = "TASKFLEET_PG_MAX_CONNECTIONS",
          default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub pg_max_connections: u32,
    #[arg(
        long,
        env = "REDIS_URL",
        global = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    #[command(flatten)]
    pub redis_tls: taskfleet_storage::redis::RedisTlsArgs,
    /// Prefix of every Redis key; must match the workers'.
    #[arg(
        long,
        env = "TASKFLEET_REDIS_PREFIX",
        global = true,
        default_value = "taskfleet"
    )]
    pub redis_prefix: String,
    #[arg(long, env = "TASKFLEET_API_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: String,
    #[command(flatten)]
    pub request_limits: crate::request_limits::RequestLimitArgs,
    /// How long an API key that authenticated is remembered, in seconds: a key revoked
    /// meanwhile works on for up to this long on each API process. 0 looks every request's
    /// key up in Postgres.
    #[arg(long, env = "TASKFLEET_API_KEY_CACHE_SECS", default_value_t = 2)]
    pub api_key_cache_secs: u64,
    /// Event streams (SSE) one API key may hold open on this API process at once.
    #[arg(long, env = "TASKFLEET_SSE_STREAMS_PER_KEY", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub sse_streams_per_key: u64,
    /// Most events one SSE request replays after `Last-Event-ID`; the stream then ends and
    /// the client resumes from the last event it got.
    #[arg(long, env = "TASKFLEET_SSE_REPLAY_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..))]
    pub sse_replay_max: i64,
    /// How long `/readyz` waits for its `noop` job to come back, in milliseconds.
    #[arg(long, env = "TASKFLEET_READY_TIMEOUT_MS", default_value_t = 5_000)]
    pub ready_timeout_ms: u64,
    /// Accept jobs for the `fault` executor tool (failure injection for tests). Never in
    /// production.
    #[arg(long, env = "TASKFLEET_FAULT_INJECTION", default_value_t = false)]
    pub fault_injection: bool,
    #[command(flatten)]
    pub rate_limits: crate::rate_limit::RateLimitArgs,
    /// JWT bearer tokens from an identity provider, beside API keys.
    #[command(flatten)]
    pub jwt: crate::jwt::JwtArgs,
    /// The operator's allow list of executor commands, a TOML file (see
    /// `deploy/executor-tools.toml`); jobs naming any other command are refused with 422.
    #[arg(long, env = "TASKFLEET_EXECUTOR_TOOLS")]
    pub executor_tools: Option<std::path::PathBuf>,
    /// Emit logs as JSON lines.
    #[arg(long, env = "TASKFLEET_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Where people reach this API (scheme, host, port): OAuth providers send them back to
    /// `{public url}/v1/oauth/callback/{provider}`. Default `http://` and the listen address.
    #[arg(long, env = "TASKFLEET_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Origins of browser front-ends that may call the API (`https://app.example.com`,
    /// comma-separated). Unset: no cross-origin requests.
    #[arg(long, env = "TASKFLEET_CORS_ORIGINS")]
    pub cors_origins: Option<String>,
    #[command(flatten)]
    pub encryption: EncryptionKeys,
    #[command(flatten)]
    pub providers: ProviderSettings,
    /// The fleet's LLM and the monthly token budget: what chat submissions are checked
    /// against, and what `POST /v1/llm/test` calls for tenants without their own.
    #[command(flatten)]
    pub llm: LlmSettings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl ApiArgs {
    /// What `executor.run` jobs may name; a broken allow list stops the start.
    pub fn executor_rules(&self) -> anyhow::Result<taskfleet_jobs::ExecutorRules> {
        taskfleet_jobs::ExecutorRules::load(self.fault_injection, self.executor_tools.as_deref())
            .map_err(anyhow::Error::msg)
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.addr))
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the API server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyScope {
    Submit,
    Read,
    Operator,
}

impl KeyScope {
    pub fn role(self) -> taskfleet_storage::Role {
        match self {
            KeyScope::Submit => taskfleet_storage::Role::Tenant,
            KeyScope::Read => taskfleet_storage::Role::Reader,
            KeyScope::Operator => taskfleet_storage::Role::Operator,
        }
    }
}

/// `30d`, `12h`, `45m`, `90s`.
fn lifetime(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{text}` is not a lifetime like 30d, 12h, 45m or 90s");
    let unit = text.chars().last().ok_or_else(bad)?;
    let count: u64 = text[..text.len() - unit.len_utf8()]
        .parse()
        .map_err(|_| bad())?;
    let seconds = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return Err(bad()),
    };
    match count {
        0 => Err(bad()),
        n => Ok(std::time::Duration::from_secs(n.saturating_mul(seconds))),
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a tenant (the tenant is created if new) and print it.
    ///
    /// Examples: `keys create --tenant acme` (reads and submits), `keys create --tenant acme
    /// --scope read --expires-in 90d` (a dashboard on a wall), `keys create --tenant ops
    /// --scope operator`.
    Create {
        #[arg(long)]
        tenant: String,
        /// `submit` (read, submit, cancel and change the tenant's own), `read` (read only),
        /// or `operator` (every tenant's, plus workers and queue pauses).
        #[arg(long, value_enum, default_value = "submit")]
        scope: KeyScope,
        /// The same as `--scope operator`.
        #[arg(long, conflicts_with = "scope")]
        operator: bool,
        /// How long the key works: `30d`, `12h`, `45m` or `90s`. Default: until revoked.
        #[arg(long, value_parser = lifetime)]
        expires_in: Option<std::time::Duration>,
    },
    /// List API keys (never the keys themselves): prefix, tenant, scope, created, last used
    /// (to the minute), expiry, revocation.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke an API key. API processes refuse it within their TASKFLEET_API_KEY_CACHE_SECS.
    Revoke {
        /// The whole key, or its first 12 characters (`tfk_` and 8 more) when no other key
        /// starts with them.
        key: String,
    },
    /// Seal every connector's credentials and every tenant's LLM API key under
    /// TASKFLEET_ENCRYPTION_KEY, opening them with it or TASKFLEET_ENCRYPTION_KEYS_OLD;
    /// afterwards the old keys can be retired.
    Reseal,
}
