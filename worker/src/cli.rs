//! Command line and environment settings of `taskfleet-worker`.

use std::{collections::BTreeMap, str::FromStr, time::Duration};

use clap::Parser;
use taskfleet_agents::AgentSettings;
use taskfleet_connectors::ProviderSettings;
use taskfleet_jobs::Queue;
use taskfleet_storage::EncryptionKeys;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskfleet-worker",
    about = "Runs taskfleet jobs from the Redis queues"
)]
pub struct WorkerArgs {
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
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
    /// Jobs run at once per queue: `16` for every queue, or `16,executor=64` to override one.
    #[arg(long, env = "TASKFLEET_CONCURRENCY", default_value = "16")]
    pub concurrency: Concurrency,
    /// Most jobs of one queue held in Redis at a time; the rest wait in the ledger.
    #[arg(long, env = "TASKFLEET_DISPATCH_WINDOW", default_value_t = 500)]
    pub dispatch_window: i64,
    /// A dispatched job not started after this many seconds is pushed to Redis again.
    #[arg(long, env = "TASKFLEET_REDISPATCH_AFTER_SECS", default_value_t = 30)]
    pub redispatch_after_secs: u64,
    /// Time-to-live of the leader lease, in milliseconds; renewed every third of it.
    #[arg(long, env = "TASKFLEET_LEADER_TTL_MS", default_value_t = 10_000)]
    pub leader_ttl_ms: u64,
    /// Time-to-live of a running job's lease, in milliseconds; heartbeated every third of it.
    /// A job whose worker stops heartbeating runs again after about this long.
    #[arg(long, env = "TASKFLEET_LEASE_TTL_MS", default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// How long an idempotency key keeps returning its first job, in seconds.
    #[arg(
        long,
        env = "TASKFLEET_IDEMPOTENCY_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub idempotency_retention_secs: u64,
    /// Admit the `fault` executor tool (failure injection for tests). Never in production.
    #[arg(long, env = "TASKFLEET_FAULT_INJECTION", default_value_t = false)]
    pub fault_injection: bool,
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
    pub fn leader_ttl(&self) -> Duration {
        Duration::from_millis(self.leader_ttl_ms)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
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
        let mut concurrency = Concurrency {
            default: 16,
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
            16
        );
        assert!("0".parse::<Concurrency>().is_err());
        assert!("mail=3".parse::<Concurrency>().is_err());
    }
}
