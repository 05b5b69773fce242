//! Redis connections and key names.
//!
//! apalis-redis's `connect()` uses a 500 ms response timeout and any Redis error ends the
//! worker (DESIGN.md hazard 6), so every connection is built here with timeouts and reconnect
//! back-off chosen for a fleet that must ride out a Redis restart.

use std::time::Duration;

use futures::StreamExt;
use redis::{
    AsyncCommands, Client,
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

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The apalis-redis queue name of `queue`; apalis derives all its keys from it.
    pub fn queue(&self, queue: Queue) -> String {
        format!("{}:queue:{}", self.prefix, queue)
    }

    /// The channel the API publishes on after accepting work, so the dispatcher wakes at once.
    pub fn dispatch_wake_channel(&self) -> String {
        format!("{}:wake:dispatch", self.prefix)
    }

    /// The channel apalis-redis publishes on when a task lands in `queue`'s active list.
    pub fn queue_available_channel(&self, queue: Queue) -> String {
        format!("tasks:{}:active:available", self.queue(queue))
    }

    /// A named lease (the leader lease is `lease("leader")`).
    pub fn lease(&self, name: &str) -> String {
        format!("{}:lease:{}", self.prefix, name)
    }
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

/// Tells the dispatcher that new work was accepted. Best effort: the dispatcher also polls,
/// so a lost wake-up delays dispatch by one poll interval and loses nothing.
pub async fn wake_dispatcher(conn: &mut ConnectionManager, keys: &Keys) {
    let published: Result<i64, _> = conn.publish(keys.dispatch_wake_channel(), 1).await;
    if let Err(err) = published {
        tracing::debug!(%err, "could not publish a dispatcher wake-up");
    }
}

/// Subscribes to `channel` and fires `notify` on every message, resubscribing after Redis
/// errors. Runs until the process ends.
pub async fn forward_wakeups(url: String, channel: String, notify: std::sync::Arc<Notify>) {
    loop {
        match subscribe(&url, &channel).await {
            Ok(mut pubsub) => {
                // Anything may have been published while we were not listening.
                notify.notify_waiters();
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {
                    notify.notify_waiters();
                }
                tracing::debug!(%channel, "wake-up subscription ended; resubscribing");
            }
            Err(err) => tracing::debug!(%err, %channel, "wake-up subscription failed"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn subscribe(url: &str, channel: &str) -> Result<redis::aio::PubSub, RedisError> {
    let client = Client::open(url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}
