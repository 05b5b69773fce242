//! Command line and environment settings of `taskfleet-worker`.

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use clap::Parser;
use taskfleet_agents::AgentSettings;
use taskfleet_connectors::ProviderSettings;
use taskfleet_jobs::Queue;
use taskfleet_storage::{EncryptionKeys, job_cleaner::CleanerConfig};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskfleet-worker",
    about = "Runs taskfleet jobs from the Redis queues"
)]
pub struct WorkerArgs {
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[command(flatten)]
    pub postgres: taskfleet_storage::StatementLimits,
    /// Postgres connections of the shared pool. The process opens at most this many, plus
    /// 4 for the ledger's statements about one job, plus 2 listeners while it leads the
    /// fleet, plus 2 while it migrates at start.
    #[arg(long = "pg-max-connections", env = "TASKFLEET_PG_MAX_CONNECTIONS",
          default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=10_000))]
    pub pg_max_connections: u32,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    #[command(flatten)]
    pub redis_tls: taskfleet_storage::redis::RedisTlsArgs,
    /// Prefix of every Redis key, so several fleets can share one Redis.
    #[arg(long, env = "TASKFLEET_REDIS_PREFIX", default_value = "taskfleet")]
    pub redis_prefix: String,
    /// Queues this process serves, comma separated.
    #[arg(
        long,
        env = "TASKFLEET_QUEUES",
        value_delimiter = ',',
        default_value = "ingest,embed,agent,test,executor,schedule"
    )]
    pub queues: Vec<Queue>,
    /// Jobs run at once per queue: `64` for every queue, or `64,embed=4` to override one.
    /// The default gives the queues whose jobs wait (on providers, models, commands' slots)
    /// many executors, and `embed`, whose local model works the cores, few.
    #[arg(long, env = "TASKFLEET_CONCURRENCY", default_value = "64,embed=4")]
    pub concurrency: Concurrency,
    /// Most jobs of one queue held in Redis at a time; the rest wait in the ledger.
    #[arg(long, env = "TASKFLEET_DISPATCH_WINDOW", default_value_t = 500,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub dispatch_window: i64,
    /// A dispatched job not started after this many seconds is pushed to Redis again.
    #[arg(long, env = "TASKFLEET_REDISPATCH_AFTER_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub redispatch_after_secs: u64,
    /// Time-to-live of the leader lease, in milliseconds; renewed every third of it.
    #[arg(long, env = "TASKFLEET_LEADER_TTL_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(300..))]
    pub leader_ttl_ms: u64,
    /// Time-to-live of a running job's lease, in milliseconds; heartbeated every third of it.
    /// A job whose worker stops heartbeating runs again after about this long.
    #[arg(long, env = "TASKFLEET_LEASE_TTL_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: u64,
    /// A job whose worker went silent (its lease lapsed) this many times is dead, with an
    /// error starting `stalled`: a job that kills its process stops taking workers down.
    #[arg(long, env = "TASKFLEET_MAX_STALLS", default_value_t = 3,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub max_stalls: i32,
    /// How long an idempotency key keeps returning its first job, in seconds.
    #[arg(
        long,
        env = "TASKFLEET_IDEMPOTENCY_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub idempotency_retention_secs: u64,
    /// How long a succeeded job is kept, with its events: `30s`, `15m`, `12h`, `7d`.
    #[arg(
        long,
        env = "TASKFLEET_RETENTION_SUCCEEDED",
        default_value = "1d",
        value_parser = retention
    )]
    pub retention_succeeded: Duration,
    /// How long a cancelled job is kept, with its events.
    #[arg(
        long,
        env = "TASKFLEET_RETENTION_CANCELLED",
        default_value = "7d",
        value_parser = retention
    )]
    pub retention_cancelled: Duration,
    /// How long a dead job is kept, with its events.
    #[arg(
        long,
        env = "TASKFLEET_RETENTION_DEAD",
        default_value = "30d",
        value_parser = retention
    )]
    pub retention_dead: Duration,
    /// Firings kept per schedule, the newest; older ones are deleted.
    #[arg(
        long,
        env = "TASKFLEET_RETENTION_FIRINGS",
        default_value_t = 100,
        value_parser = clap::value_parser!(i64).range(1..)
    )]
    pub retention_firings: i64,
    /// Admit the `fault` executor tool (failure injection for tests). Never in production.
    #[arg(long, env = "TASKFLEET_FAULT_INJECTION", default_value_t = false)]
    pub fault_injection: bool,
    /// The operator's allow list of executor commands, a TOML file (see
    /// `deploy/executor-tools.toml`). Read by the API too, which refuses jobs it does not allow.
    #[arg(long, env = "TASKFLEET_EXECUTOR_TOOLS")]
    pub executor_tools: Option<std::path::PathBuf>,
    /// User ids executor commands run as when the worker runs as root, one per run
    /// (`FIRST-LAST`; they need no entry in /etc/passwd, and root is never one).
    #[arg(
        long,
        env = "TASKFLEET_EXECUTOR_UIDS",
        default_value = "2000000000-2000065535"
    )]
    pub executor_uids: String,
    /// Executor commands running at once in this process, at most; by default one per core.
    /// The executor queue's concurrency may be far higher: its built-in tools need no core
    /// of their own, and its commands wait here for one.
    #[arg(long, env = "TASKFLEET_COMMAND_SLOTS",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub command_slots: Option<u32>,
    /// The sandbox warden's binary; by default `taskfleet-sandbox` beside the worker's.
    #[arg(long, env = "TASKFLEET_SANDBOX_BIN")]
    pub sandbox_bin: Option<std::path::PathBuf>,
    /// On SIGTERM, how long running jobs may take to finish, in seconds.
    #[arg(long, env = "TASKFLEET_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,
    /// Emit logs as JSON lines.
    #[arg(long, env = "TASKFLEET_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (e.g. `127.0.0.1:9101`); off when
    /// unset.
    #[arg(long, env = "TASKFLEET_WORKER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub encryption: EncryptionKeys,
    #[command(flatten)]
    pub providers: ProviderSettings,
    #[command(flatten)]
    pub agents: AgentSettings,
}

impl WorkerArgs {
    /// What `executor.run` jobs may name; a broken allow list stops the start.
    pub fn executor_rules(&self) -> anyhow::Result<taskfleet_jobs::ExecutorRules> {
        taskfleet_jobs::ExecutorRules::load(self.fault_injection, self.executor_tools.as_deref())
            .map_err(anyhow::Error::msg)
    }

    /// How allow-listed commands are run: the warden's binary, the user they run as, and
    /// how many at once.
    pub fn sandbox(
        &self,
        rules: &taskfleet_jobs::ExecutorRules,
    ) -> anyhow::Result<crate::handlers::command::Sandbox> {
        let slots = match self.command_slots {
            Some(slots) => slots as usize,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        crate::handlers::command::Sandbox::new(
            self.sandbox_bin.clone(),
            &self.executor_uids,
            slots,
            rules,
        )
    }

    pub fn leader_ttl(&self) -> Duration {
        Duration::from_millis(self.leader_ttl_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    /// The job cleaner's settings.
    pub fn retention(&self) -> CleanerConfig {
        CleanerConfig {
            succeeded: self.retention_succeeded,
            cancelled: self.retention_cancelled,
            dead: self.retention_dead,
            firings_per_schedule: self.retention_firings,
            ..CleanerConfig::default()
        }
    }
}

/// The longest retention: Postgres computes `now()` minus it, which must stay a date.
const LONGEST_RETENTION: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A retention period: a whole number of seconds, minutes, hours or days (`30s`, `15m`,
/// `12h`, `7d`), more than none and at most ten years.
fn retention(s: &str) -> Result<Duration, String> {
    let invalid = || format!("`{s}` is not a period such as 30s, 15m, 12h or 7d");
    let digits = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(invalid)?;
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().map_err(|_| invalid())?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(invalid()),
    };
    match Duration::from_secs(n.saturating_mul(unit)) {
        Duration::ZERO => Err("a retention must be longer than none".to_owned()),
        period if period > LONGEST_RETENTION => {
            Err("a retention can be at most 3650d (ten years)".to_owned())
        }
        period => Ok(period),
    }
}

/// Per-queue concurrency: a default and overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    default: usize,
    overrides: BTreeMap<Queue, usize>,
}

impl Concurrency {
    pub fn for_queue(&self, queue: Queue) -> usize {
        self.overrides.get(&queue).copied().unwrap_or(self.default)
    }
}

impl FromStr for Concurrency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let positive = |n: &str| match n.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("`{n}` is not a positive number of jobs")),
        };
        // A queue the string leaves out gets as many as the shipped default's plain number.
        let mut concurrency = Concurrency {
            default: 64,
            overrides: BTreeMap::new(),
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            match part.split_once('=') {
                Some((queue, n)) => {
                    let queue = queue.trim().parse::<Queue>().map_err(|e| e.to_string())?;
                    concurrency.overrides.insert(queue, positive(n)?);
                }
                None => concurrency.default = positive(part)?,
            }
        }
        Ok(concurrency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_has_a_default_and_per_queue_overrides() {
        let c: Concurrency = "8,executor=64".parse().unwrap();
        assert_eq!(c.for_queue(Queue::Executor), 64);
        assert_eq!(c.for_queue(Queue::Ingest), 8);
        assert_eq!(
            "ingest=2"
                .parse::<Concurrency>()
                .unwrap()
                .for_queue(Queue::Agent),
            64
        );
        let shipped = WorkerArgs::try_parse_from(["taskfleet-worker", "--database-url", "x"])
            .unwrap()
            .concurrency;
        assert_eq!(shipped.for_queue(Queue::Executor), 64);
        assert_eq!(shipped.for_queue(Queue::Embed), 4);
        assert!("0".parse::<Concurrency>().is_err());
        assert!("mail=3".parse::<Concurrency>().is_err());
    }

    #[test]
    fn retentions_are_whole_periods_and_default_to_the_cleaners() {
        assert_eq!(retention("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(retention("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(retention("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for wrong in ["", "7", "d", "1.5h", "-1d", "7 d", "1w", "0s", "3651d"] {
            assert!(retention(wrong).is_err(), "{wrong:?} accepted");
        }
        let args = WorkerArgs::parse_from(["taskfleet-worker", "--database-url", "postgres://"]);
        assert_eq!(args.retention(), CleanerConfig::default());
    }
}
