//! A real Redis Cluster for one test: Debian's `redis-server` nodes on free ports, joined by
//! `redis-cli --cluster create`, each primary with a replica. A test can kill a primary and
//! wait for its replica to take over, as a managed cluster does when a host dies. Or the
//! same speaking TLS only, between nodes too, as a managed cluster with in-transit
//! encryption does.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use uuid::Uuid;

use crate::{free_port, spawn_server, tls_servers::Certificates, wait_until};

pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    /// `redis-cli`'s TLS flags (the test's authority and client certificate), when the
    /// nodes speak TLS.
    cli_tls: Vec<String>,
}

struct Node {
    port: u16,
    process: Child,
}

/// How long a primary may not answer before its replica is promoted. Short, so a test's
/// failover takes seconds; managed clusters use 5–15 s.
const NODE_TIMEOUT_MS: u64 = 2_000;

impl RedisCluster {
    /// Starts `primaries` primaries with one replica each and waits until the cluster serves
    /// every slot.
    pub async fn start(primaries: usize) -> RedisCluster {
        RedisCluster::started(primaries, None).await
    }

    /// [`RedisCluster::start`], the nodes on TLS ports only (clients, the cluster bus and
    /// replication), with the server certificate of `certificates`, asking clients for one
    /// of their authority.
    pub async fn start_tls(primaries: usize, certificates: &Certificates) -> RedisCluster {
        RedisCluster::started(primaries, Some(certificates)).await
    }

    async fn started(primaries: usize, tls: Option<&Certificates>) -> RedisCluster {
        let dir =
            std::env::temp_dir().join(format!("tf-redis-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let nodes: Vec<Node> = (0..primaries * 2)
            .map(|_| {
                let port = free_port();
                let node_dir = dir.join(port.to_string());
                std::fs::create_dir_all(&node_dir).expect("node directory");
                let mut cmd = Command::new("redis-server");
                match tls {
                    None => cmd.args(["--port", &port.to_string()]),
                    Some(certificates) => cmd
                        .args(["--port", "0", "--tls-port", &port.to_string()])
                        .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                        .args(["--tls-cert-file", &certificates.path("server.pem")])
                        .args(["--tls-key-file", &certificates.path("server.key")])
                        .args(["--tls-ca-cert-file", &certificates.path("ca.pem")]),
                };
                cmd.args(["--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    // The bus port is the port + 10,000 unless given: past 55,535 it would
                    // not exist.
                    .args(["--cluster-port", &free_port().to_string()])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                    // A replica fails over however long ago it last heard from its primary:
                    // the test's replicas have had little to replicate.
                    .args(["--cluster-replica-validity-factor", "0"])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&node_dir);
                let process = spawn_server(&mut cmd, "redis-server (Debian package redis-server)");
                Node { port, process }
            })
            .collect();
        let cli_tls = match tls {
            None => Vec::new(),
            Some(certificates) => vec![
                "--tls".to_owned(),
                "--cacert".to_owned(),
                certificates.path("ca.pem"),
                "--cert".to_owned(),
                certificates.path("client.pem"),
                "--key".to_owned(),
                certificates.path("client.key"),
            ],
        };
        let cluster = RedisCluster {
            dir,
            nodes,
            cli_tls,
        };
        for node in &cluster.nodes {
            let port = node.port;
            let cluster = &cluster;
            wait_until(
                Duration::from_secs(10),
                "a cluster node answers",
                || async move {
                    cluster
                        .cli(port, &["PING"])
                        .is_some_and(|out| out.trim() == "PONG")
                },
            )
            .await;
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(&cluster.cli_tls)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs (Debian package redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until_serving().await;
        wait_until(
            Duration::from_secs(30),
            "every replica has synced",
            || async {
                let synced = cluster
                    .nodes
                    .iter()
                    .filter(|node| {
                        cluster
                            .cli(node.port, &["INFO", "replication"])
                            .is_some_and(|info| info.contains("master_link_status:up"))
                    })
                    .count();
                synced == primaries
            },
        )
        .await;
        cluster
    }

    /// `REDIS_URL` for the cluster: every node, so a client finds it with any of them down.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                let scheme = if self.cli_tls.is_empty() {
                    "redis"
                } else {
                    "rediss"
                };
                format!("{scheme}://127.0.0.1:{}", node.port)
            })
            .collect();
        nodes.join(",")
    }

    /// Waits until every live node sees every slot served.
    pub async fn wait_until_serving(&self) {
        wait_until(
            Duration::from_secs(30),
            "the cluster serves every slot",
            || async {
                self.live_ports().iter().all(|&port| {
                    self.cli(port, &["CLUSTER", "INFO"]).is_some_and(|info| {
                        info.lines().any(|line| line.trim() == "cluster_state:ok")
                    })
                })
            },
        )
        .await;
    }

    /// The ports of the primaries, as the live nodes see them.
    pub fn primaries(&self) -> Vec<u16> {
        let port = self.live_ports()[0];
        let nodes = self
            .cli(port, &["CLUSTER", "NODES"])
            .expect("a live node answers");
        nodes
            .lines()
            .filter(|line| {
                let flags = line.split(' ').nth(2).unwrap_or("");
                flags.split(',').any(|flag| flag == "master") && !flags.contains("fail")
            })
            .filter_map(|line| {
                let address = line.split(' ').nth(1)?;
                address
                    .split(['@', ','])
                    .next()?
                    .rsplit_once(':')?
                    .1
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// The port of the primary serving `key`.
    pub fn primary_of(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        let slot: u16 = self
            .cli(port, &["CLUSTER", "KEYSLOT", key])
            .and_then(|slot| slot.trim().parse().ok())
            .expect("CLUSTER KEYSLOT answers");
        let shards = self
            .cli(port, &["CLUSTER", "SLOTS"])
            .expect("CLUSTER SLOTS answers");
        // redis-cli prints the nested reply one value a line: start, end, then the primary's
        // host, port and id, then each replica's.
        let lines: Vec<&str> = shards.lines().map(str::trim).collect();
        lines
            .windows(4)
            .find_map(|window| {
                let start: u16 = window[0].parse().ok()?;
                let end: u16 = window[1].parse().ok()?;
                (window[2] == "127.0.0.1" && start <= slot && slot <= end)
                    .then(|| window[3].parse().ok())?
            })
            .expect("a primary serves the slot")
    }

    /// How many calls of `command` (lowercase, e.g. `evalsha`) the node at `port` served.
    pub fn calls(&self, port: u16, command: &str) -> u64 {
        let stats = self
            .cli(port, &["INFO", "commandstats"])
            .unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the cluster has stopped counting the dead node at `port` among its
    /// primaries, a replica serves its slots in its place, and every slot is served.
    ///
    /// The replicas' election needs the surviving primaries' failure reports to meet within
    /// two node timeouts; on a loaded machine they can keep missing that window. After 20 s
    /// the dead primary's replica is told to take over, as an operator would, so the test
    /// goes on to what it is about: the fleet on a cluster whose primary was replaced.
    pub async fn wait_for_failover(&self, port: u16) {
        let primaries = self.primaries().len();
        let replaced = || {
            let now = self.primaries();
            !now.contains(&port) && now.len() == primaries
        };
        let elected_by = tokio::time::Instant::now() + Duration::from_secs(20);
        while !replaced() && tokio::time::Instant::now() < elected_by {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !replaced() {
            let master = format!("master_port:{port}");
            let replica = self
                .live_ports()
                .into_iter()
                .find(|&node| {
                    self.cli(node, &["INFO", "replication"])
                        .is_some_and(|info| info.lines().any(|line| line.trim() == master))
                })
                .expect("the dead primary has a replica");
            eprintln!("no election after 20 s; replica {replica} takes over from {port}");
            self.cli(replica, &["CLUSTER", "FAILOVER", "TAKEOVER"])
                .expect("the replica answers");
        }
        wait_until(
            Duration::from_secs(40),
            "a replica replaces the dead primary",
            || async { replaced() },
        )
        .await;
        self.wait_until_serving().await;
    }

    /// Kills the node at `port` with SIGKILL, as a host dying does.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .expect("a node of this cluster");
        node.process.kill().expect("the node is killed");
        node.process.wait().expect("the node exits");
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|node| self.cli(node.port, &["PING"]).is_some())
            .map(|node| node.port)
            .collect()
    }

    /// What `redis-cli -p port args…` printed, or `None` when the node did not answer.
    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(&self.cli_tls)
            .args(["-p", &port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.process.kill();
            let _ = node.process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
