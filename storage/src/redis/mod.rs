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

use std::{collections::HashMap, path::PathBuf, time::Duration};

use futures::StreamExt;
use redis::{
    Client, ClientTlsConfig, Cmd, FromRedisValue, Pipeline, RedisFuture, TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
};
use taskfleet_jobs::Queue;
use tokio::sync::Notify;

pub use redis::RedisError;

/// Key names under one prefix, so several fleets (or parallel tests) can share one Redis.
///
/// Every key carries a hash tag (the part in braces), so that on a Redis Cluster the keys one
/// script or pipeline touches together live in one slot (ADR 0018): a queue's list has its
/// queue's tag, the leader's lease and its epoch counter the leader's, and a job's lease and
/// cancel flag the tag of the job's shard, which its shard's keyspace birth shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// Jobs' keys are spread over this many hash tags. A shard rather than a tag per job, so
/// that the keyspace birth a lease is taken back against lives in the lease's slot while
/// there are only this many of them, and a batch of leases needs at most this many
/// pipelines on a cluster.
pub const JOB_SHARDS: u128 = 64;

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Keys {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The list of dispatched job ids waiting for a worker of `queue`.
    pub fn queue_list(&self, queue: Queue) -> String {
        format!("{}:queue:{{{queue}}}:waiting", self.prefix)
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
        format!("{}:lease:job:{}:{job_id}", self.prefix, job_tag(job_id))
    }

    /// Set while cancellation of a running job is requested; its heartbeat notices it.
    pub fn cancel_flag(&self, job_id: uuid::Uuid) -> String {
        format!("{}:cancel:{}:{job_id}", self.prefix, job_tag(job_id))
    }

    /// Carries the ids of running jobs to cancel, so their workers stop them at once.
    pub fn cancel_channel(&self) -> String {
        format!("{}:cancel", self.prefix)
    }

    /// The lease whose holder is the fleet's leader.
    pub fn leader_lease(&self) -> String {
        format!("{}:lease:{{leader}}", self.prefix)
    }

    /// When the Redis holding `job_id`'s lease first answered for the fleet since it last
    /// started empty ([`crate::Lease::keyspace_ages`]): one key per job shard, since on a
    /// cluster each primary starts empty on its own.
    pub fn keyspace_born(&self, job_id: uuid::Uuid) -> String {
        format!("{}:keyspace:born:{}", self.prefix, job_tag(job_id))
    }

    /// Every job shard's keyspace birth.
    pub fn keyspace_births(&self) -> Vec<String> {
        (0..JOB_SHARDS)
            .map(|shard| format!("{}:keyspace:born:{}", self.prefix, shard_tag(shard)))
            .collect()
    }
}

/// The hash tag of a job's keys: its shard's. A UUID's low bits are random (v4 and v7 alike).
fn job_tag(job_id: uuid::Uuid) -> String {
    shard_tag(job_id.as_u128() % JOB_SHARDS)
}

/// The hash tag of a job shard's keys.
fn shard_tag(shard: u128) -> String {
    format!("{{j{shard}}}")
}

/// The oldest Redis major version taskfleet runs on: workers wait for work in `BLMPOP`,
/// which Redis 7.0 introduced.
pub const MIN_MAJOR_VERSION: u32 = 7;

/// The major version of the Redis server behind `conn` (on a cluster, of one of its nodes).
pub async fn major_version(conn: &mut Connection) -> Result<u32, RedisError> {
    let info: String = conn.ask_one_node(redis::cmd("INFO").arg("server")).await?;
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

/// A connection to the fleet's Redis: a single server, or a Redis Cluster, whose client
/// follows slots as they move and a failed primary to its promoted replica. Clones share it.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }

    /// Sends a command about the server rather than a key (`INFO`) to one node: a cluster
    /// client would send it to every primary and answer with a map.
    async fn ask_one_node<T: FromRedisValue>(&mut self, cmd: &Cmd) -> Result<T, RedisError> {
        match self {
            Connection::Single(conn) => cmd.query_async(conn).await,
            Connection::Cluster(conn) => {
                let value = conn
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                Ok(T::from_redis_value(value)?)
            }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connection::Single(_) => "Connection::Single",
            Connection::Cluster(_) => "Connection::Cluster",
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The PEM files a `rediss://` connection needs beyond the system's roots: the authority
/// that signed a server's certificate when no public one did, and a client certificate for a
/// server that asks for one (Redis's `tls-auth-clients yes`, its default with TLS).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisTlsArgs {
    /// PEM file of the authority (or authorities) the Redis server's certificate must be
    /// signed by, instead of the system's roots. `rediss://` only.
    #[arg(long = "redis-tls-ca-file", env = "REDIS_TLS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM file of this process's client certificate (chain), for a Redis that asks for one.
    #[arg(long = "redis-tls-cert-file", env = "REDIS_TLS_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long = "redis-tls-key-file", env = "REDIS_TLS_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

/// How to reach Redis: `REDIS_URL` (one server, or a cluster's nodes; `rediss://` speaks TLS)
/// and the certificates read from [`RedisTlsArgs`] once, at start.
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    certificates: Option<TlsCertificates>,
}

impl std::fmt::Debug for RedisConfig {
    // Not the URL: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("tls", &self.is_tls())
            .field("certificates", &self.certificates.is_some())
            .finish()
    }
}

impl RedisConfig {
    /// A plain or TLS connection as the URL's scheme says, trusting the system's roots.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            certificates: None,
        }
        .with_crypto_provider()
    }

    /// Reads the PEM files `tls` names. Files given for a URL that is not `rediss://`, or
    /// that cannot be read, are refused here rather than ignored.
    pub fn with_tls_files(
        url: impl Into<String>,
        tls: &RedisTlsArgs,
    ) -> Result<RedisConfig, String> {
        let config = RedisConfig::new(url);
        let RedisTlsArgs {
            ca_file,
            cert_file,
            key_file,
        } = tls;
        if ca_file.is_none() && cert_file.is_none() && key_file.is_none() {
            return Ok(config);
        }
        if !config.is_tls() {
            return Err(
                "REDIS_TLS_CA_FILE, REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE are for \
                        TLS: REDIS_URL must start with rediss://"
                    .to_owned(),
            );
        }
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|err| format!("{what} {}: {err}", path.display()))
        };
        let root_cert = ca_file
            .as_ref()
            .map(|path| read("REDIS_TLS_CA_FILE", path))
            .transpose()?;
        let client_tls = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read("REDIS_TLS_CERT_FILE", cert)?,
                client_key: read("REDIS_TLS_KEY_FILE", key)?,
            }),
            (None, None) => None,
            _ => {
                return Err(
                    "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together: a client \
                     certificate needs its key"
                        .to_owned(),
                );
            }
        };
        let config = RedisConfig {
            certificates: Some(TlsCertificates {
                client_tls,
                root_cert,
            }),
            ..config
        };
        // The PEM files are parsed when a client is built: a file that holds no certificate
        // or key is said now, not at every attempt to connect.
        let first = nodes(&config.url).map_err(|err| err.to_string())?.remove(0);
        config
            .client(&first)
            .map_err(|err| format!("the REDIS_TLS_* files: {err}"))?;
        Ok(config)
    }

    fn is_tls(&self) -> bool {
        self.url.trim_start().starts_with("rediss://")
    }

    /// redis's rustls connector takes the process's default crypto provider, and a worker
    /// links two (ring for HTTP and Postgres, aws-lc-rs through the object store's SDK), so
    /// that none would be chosen: ring is made the default, unless one already is.
    fn with_crypto_provider(self) -> RedisConfig {
        if self.is_tls() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        self
    }

    /// The first node whose TLS handshake fails, and why.
    async fn tls_failure(&self) -> Option<RedisError> {
        for node in nodes(&self.url).ok()? {
            let Ok(client) = self.client(&node) else {
                continue;
            };
            let asked = tokio::time::timeout(
                CONNECTION_TIMEOUT,
                client.get_multiplexed_async_connection(),
            );
            if let Ok(Err(err)) = asked.await
                && crate::tls_failed(&err)
            {
                return Some(err);
            }
        }
        None
    }

    /// A client for one node.
    fn client(&self, node: &str) -> Result<Client, RedisError> {
        match &self.certificates {
            Some(certificates) => Client::build_with_tls(node, certificates.clone()),
            None => Client::open(node),
        }
    }
}

/// A connection with explicit timeouts that reconnects by itself. The URL names one server or
/// several nodes of a cluster, comma-separated (`redis://a:7000,b:7001`: later nodes take the
/// first one's scheme and credentials); a single node that says it is in a cluster is used
/// as the cluster's seed.
pub async fn connect(config: &RedisConfig) -> Result<Connection, RedisError> {
    let nodes = nodes(&config.url)?;
    if let [node] = nodes.as_slice() {
        let client = config.client(node)?;
        let conn_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(6)
            .set_max_delay(Duration::from_secs(2));
        let mut single = client
            .get_connection_manager_with_config(conn_config)
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut single)
            .await?;
        if !info.lines().any(|line| line.trim() == "cluster_enabled:1") {
            return Ok(Connection::Single(single));
        }
    }
    let mut cluster = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        // Through a failover (`cluster-node-timeout` and the replicas' vote) a command is
        // retried, following the new slot map, within the response timeout; callers retry
        // past it as they do on one server.
        .retries(12)
        .min_retry_wait(100)
        .max_retry_wait(2_000);
    if let Some(certificates) = &config.certificates {
        cluster = cluster.certs(certificates.clone());
    }
    Ok(Connection::Cluster(
        cluster.build()?.get_async_connection().await?,
    ))
}

/// [`connect`], waiting while Redis cannot be reached, so a process started before Redis
/// comes up once it does. What waiting does not mend comes back at once: a TLS handshake
/// that failed ([`crate::tls_failed`]), or TLS settings the client cannot use (a key that
/// does not go with its certificate).
pub async fn connect_when_reachable(config: &RedisConfig) -> Result<Connection, Unusable> {
    let attempt = || async {
        match connect(config).await {
            // The cluster client gives its nodes' errors back as text; a node asked alone
            // says whether TLS failed. Asked here, at start, not by every reconnection.
            Err(err) if config.is_tls() && !crate::tls_failed(&err) => {
                Err(config.tls_failure().await.unwrap_or(err))
            }
            connected => connected,
        }
    };
    crate::retry_while("Redis", attempt, |err| {
        !crate::tls_failed(err) && err.kind() != redis::ErrorKind::InvalidClientConfig
    })
    .await
    .map_err(|err| Unusable(err.to_string()))
}

/// Why this process cannot use Redis, as one message (the redis crate's error repeats its
/// cause as its source).
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to Redis: {0}")]
pub struct Unusable(String);

const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The node URLs in `url` (see [`connect`]).
fn nodes(url: &str) -> Result<Vec<String>, RedisError> {
    let mut parts = url
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty());
    let invalid = |why: &str| {
        RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "REDIS_URL",
            why.to_owned(),
        ))
    };
    let first = parts.next().ok_or_else(|| invalid("names no server"))?;
    // Not the URL itself in the error: it may carry a password.
    let base = url::Url::parse(first).map_err(|err| invalid(&format!("the first node: {err}")))?;
    let mut nodes = vec![first.to_owned()];
    for part in parts {
        if part.contains("://") {
            nodes.push(part.to_owned());
            continue;
        }
        let (host, port) = part
            .rsplit_once(':')
            .ok_or_else(|| invalid(&format!("{part}: a further node is host:port")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(&format!("{part}: the port is not a number")))?;
        let mut node = base.clone();
        node.set_host(Some(host))
            .map_err(|err| invalid(&format!("{part}: {err}")))?;
        node.set_port(Some(port))
            .map_err(|()| invalid(&format!("{part}: this URL takes no port")))?;
        nodes.push(node.to_string());
    }
    Ok(nodes)
}

/// Runs commands on keys that may live in different cluster slots, as one pipeline per hash
/// tag (a cluster refuses a pipeline across slots), concurrently; on a single server, as one
/// pipeline. `add(pipe, i)` appends the one command for `keys[i]` whose reply is kept, after
/// `prelude`'s commands, which must be ignored. The replies come back in the order of `keys`.
pub async fn pipeline_by_slot<T: FromRedisValue>(
    conn: &Connection,
    keys: &[String],
    prelude: impl Fn(&mut Pipeline),
    add: impl Fn(&mut Pipeline, usize),
) -> Result<Vec<T>, RedisError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let groups: Vec<Vec<usize>> = if conn.is_cluster() {
        let mut by_tag: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            by_tag.entry(hash_tag(key)).or_default().push(i);
        }
        by_tag.into_values().collect()
    } else {
        vec![(0..keys.len()).collect()]
    };
    let replies = futures::future::try_join_all(groups.iter().map(|group| {
        let mut pipe = redis::pipe();
        prelude(&mut pipe);
        for &i in group {
            add(&mut pipe, i);
        }
        let mut conn = conn.clone();
        async move { pipe.query_async::<Vec<T>>(&mut conn).await }
    }))
    .await?;
    let mut ordered: Vec<Option<T>> = keys.iter().map(|_| None).collect();
    for (group, replies) in groups.iter().zip(replies) {
        for (&i, reply) in group.iter().zip(replies) {
            ordered[i] = Some(reply);
        }
    }
    ordered
        .into_iter()
        .map(|reply| {
            reply.ok_or_else(|| RedisError::from(std::io::Error::other("a pipeline lost a reply")))
        })
        .collect()
}

/// What decides `key`'s cluster slot: its hash tag (the text between the first `{` and the
/// next `}`, when not empty), else the whole key.
fn hash_tag(key: &str) -> &str {
    key.split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(tag, _)| tag)
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key)
}

/// Subscribes to `channel` for as long as the process runs, resubscribing after Redis errors
/// (to the next node named in `url`, on a cluster, where every node relays every message).
/// `on_message` gets each message's payload, and `None` after every (re)subscription, since
/// anything may have been published while nobody listened.
pub async fn listen(
    config: RedisConfig,
    channel: String,
    mut on_message: impl FnMut(Option<String>),
) {
    let nodes = match nodes(&config.url) {
        Ok(nodes) => nodes,
        Err(err) => {
            tracing::error!(%err, %channel, "cannot subscribe: REDIS_URL is not valid");
            return;
        }
    };
    for node in nodes.iter().cycle() {
        match subscribe(&config, node, &channel).await {
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
pub async fn forward_wakeups(config: RedisConfig, channel: String, notify: std::sync::Arc<Notify>) {
    // One waiter per `Notify` (the dispatcher); a wake-up that arrives while it is busy is
    // kept as a permit rather than lost.
    listen(config, channel, move |_| notify.notify_one()).await
}

async fn subscribe(
    config: &RedisConfig,
    node: &str,
    channel: &str,
) -> Result<redis::aio::PubSub, RedisError> {
    let client = config.client(node)?;
    let mut pubsub = tokio::time::timeout(CONNECTION_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::{hash_tag, major_version_in, nodes};

    #[test]
    fn the_major_version_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n";
        assert_eq!(major_version_in(info), Some(7));
        assert_eq!(major_version_in("redis_version:6.2.14\r\n"), Some(6));
        assert_eq!(major_version_in("# Server\r\n"), None);
    }

    #[test]
    fn a_cluster_is_named_by_its_nodes_and_later_ones_take_the_first_ones_credentials() {
        assert_eq!(
            nodes("redis://:secret@a:7000, b:7001,redis://c:7002").unwrap(),
            [
                "redis://:secret@a:7000",
                "redis://:secret@b:7001",
                "redis://c:7002"
            ]
        );
        assert_eq!(
            nodes("redis://127.0.0.1:6379").unwrap(),
            ["redis://127.0.0.1:6379"]
        );
        assert!(nodes("redis://a:7000,b").is_err());
        assert!(nodes("").is_err());
    }

    #[test]
    fn keys_with_one_hash_tag_share_a_slot() {
        assert_eq!(hash_tag("tf:lease:job:{j7}:0193"), "j7");
        assert_eq!(hash_tag("tf:cancel:{j7}:0193"), "j7");
        assert_eq!(hash_tag("tf:events"), "tf:events");
        assert_eq!(hash_tag("tf:{}:x"), "tf:{}:x");
    }
}
