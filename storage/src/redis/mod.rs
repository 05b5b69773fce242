//! Redis: connections and key names here, and the fleet's protocol in one module each: the
//! queues' lists ([`queue_lists`]), the event stream ([`event_stream`]) and the signals
//! between processes ([`signals`]); leases are in [`crate::lease`].
//!
//! Every connection is built here with timeouts and reconnect back-off chosen for a fleet that
//! must ride out a Redis restart (apalis-redis's own `connect()`, with a 500 ms response
//! timeout, was DESIGN.md hazard 6).

pub mod event_stream;
pub mod queue_lists;
pub mod signals;

pub use event_stream::{announce_numbered, read_numbered};
pub use queue_lists::{
    MAX_ENTRY_BYTES, deliveries, dispatch_room, own_pushes, push_jobs, put_back, take_jobs,
    waiting, waiting_ids,
};
pub use signals::{clear_cancel, request_cancel, wake_dispatcher};

use std::time::Duration;

use futures::StreamExt;
use redis::{
    Client,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use taskfleet_jobs::Queue;
use tokio::sync::Notify;

pub use redis::RedisError;

/// Key names under one prefix, so several fleets (or parallel tests) can share one Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The list of dispatched job ids waiting for a worker of `queue`.
    pub fn queue_list(&self, queue: Queue) -> String {
        format!("{}:queue:{queue}:waiting", self.prefix)
    }

    /// The channel the API publishes on after accepting work, so the dispatcher wakes at once.
    pub fn dispatch_wake_channel(&self) -> String {
        format!("{}:wake:dispatch", self.prefix)
    }

    /// The Redis stream where the sequencer announces how far events are numbered, one entry
    /// a round; API processes read the events themselves from Postgres.
    pub fn event_stream(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The lease a worker holds on a running job.
    pub fn job_lease(&self, job_id: uuid::Uuid) -> String {
        format!("{}:lease:job:{job_id}", self.prefix)
    }

    /// Set while cancellation of a running job is requested; its heartbeat notices it.
    pub fn cancel_flag(&self, job_id: uuid::Uuid) -> String {
        format!("{}:cancel:{job_id}", self.prefix)
    }

    /// Carries the ids of running jobs to cancel, so their workers stop them at once.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// The lease whose holder is the fleet's leader.
    pub fn leader_lease(&self) -> String {
        format!("{}:lease:leader", self.prefix)
    }

    /// When Redis first answered for the fleet since it last started empty
    /// ([`crate::Lease::keyspace_age`]).
    pub fn keyspace_born(&self) -> String {
        format!("{}:keyspace:born", self.prefix)
    }
}

/// The oldest Redis major version taskfleet runs on: workers wait for work in `BLMPOP`,
/// which Redis 7.0 introduced.
pub const MIN_MAJOR_VERSION: u32 = 7;

/// The major version of the Redis server behind `conn`.
pub async fn major_version(conn: &mut ConnectionManager) -> Result<u32, RedisError> {
    let info: String = redis::cmd("INFO").arg("server").query_async(conn).await?;
    major_version_in(&info).ok_or_else(|| {
        RedisError::from(std::io::Error::other("INFO server names no redis_version"))
    })
}

/// The major version in the text of `INFO server` (`redis_version:7.0.15`).
fn major_version_in(info: &str) -> Option<u32> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))?;
    version.split('.').next()?.trim().parse().ok()
}

/// A connection manager with explicit timeouts that reconnects by itself.
pub async fn connect(url: &str) -> Result<ConnectionManager, RedisError> {
    let client = Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(6)
        .set_max_delay(Duration::from_secs(2));
    client.get_connection_manager_with_config(config).await
}

/// Subscribes to `channel` for as long as the process runs, resubscribing after Redis errors.
/// `on_message` gets each message's payload, and `None` after every (re)subscription, since
/// anything may have been published while nobody listened.
pub async fn listen(url: String, channel: String, mut on_message: impl FnMut(Option<String>)) {
    loop {
        match subscribe(&url, &channel).await {
            Ok(mut pubsub) => {
                on_message(None);
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    on_message(message.get_payload::<String>().ok());
                }
                tracing::debug!(%channel, "subscription ended; resubscribing");
            }
            Err(err) => tracing::debug!(%err, %channel, "subscription failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fires `notify` on every message of `channel` (see [`listen`]).
pub async fn forward_wakeups(url: String, channel: String, notify: std::sync::Arc<Notify>) {
    // One waiter per `Notify` (the dispatcher); a wake-up that arrives while it is busy is
    // kept as a permit rather than lost.
    listen(url, channel, move |_| notify.notify_one()).await
}

async fn subscribe(url: &str, channel: &str) -> Result<redis::aio::PubSub, RedisError> {
    let client = Client::open(url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::major_version_in;

    #[test]
    fn the_major_version_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(major_version_in(info), Some(7));
        assert_eq!(major_version_in("redis_version:6.2.14\r\n"), Some(6));
        assert_eq!(major_version_in("# Server\r\n"), None);
    }
}
