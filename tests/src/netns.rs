//! Hosts on a network, for one test: each host a network namespace, joined to the test's own
//! namespace by two veth pairs, one on a bridge where Redis listens and one on a bridge where
//! Postgres is reached (through a proxy). Bringing a host's link down partitions it from that
//! service the way a switch port or a security group does: its packets stop, its connections
//! hang. Needs root (`CAP_NET_ADMIN`); [`Network::create`] says why when it cannot.

use std::process::Command;

use rand::Rng;

pub struct Network {
    /// Short and unique: interface names are at most 15 bytes.
    id: String,
    /// The second octet of the network's addresses, `10.{octet}.1.0/24` for Redis and
    /// `10.{octet}.2.0/24` for Postgres.
    octet: u8,
    hosts: Vec<String>,
}

/// Which of a host's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    Redis,
    Postgres,
}

impl Link {
    fn subnet(self) -> u8 {
        match self {
            Link::Redis => 1,
            Link::Postgres => 2,
        }
    }

    fn letter(self) -> char {
        match self {
            Link::Redis => 'r',
            Link::Postgres => 'p',
        }
    }
}

impl Network {
    /// The two bridges, or why they cannot be made (not root, no `ip`).
    pub fn create() -> Result<Network, String> {
        let mut rng = rand::rng();
        let network = Network {
            id: format!("tf{:04x}", rng.random::<u16>()),
            octet: rng.random_range(100..=250),
            hosts: Vec::new(),
        };
        for link in [Link::Redis, Link::Postgres] {
            let bridge = network.bridge(link);
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/24", network.gateway(link)),
                "dev",
                &bridge,
            ])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        Ok(network)
    }

    /// The address in the test's own namespace where hosts reach the service of `link`.
    pub fn gateway(&self, link: Link) -> String {
        format!("10.{}.{}.1", self.octet, link.subnet())
    }

    /// Adds host `index` (its namespace's name is returned) with both links up; its address
    /// on each is [`Network::address`].
    pub fn add_host(&mut self, index: usize) -> Result<String, String> {
        let host = format!("{}-h{index}", self.id);
        ip(&["netns", "add", &host])?;
        self.hosts.push(host.clone());
        ip(&["-n", &host, "link", "set", "lo", "up"])?;
        for link in [Link::Redis, Link::Postgres] {
            let outside = self.veth(index, link);
            let inside = format!("eth{}", link.letter());
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside, "netns", &host,
            ])?;
            ip(&["link", "set", &outside, "master", &self.bridge(link), "up"])?;
            let address = format!("{}/24", self.address(index, link));
            ip(&["-n", &host, "addr", "add", &address, "dev", &inside])?;
            ip(&["-n", &host, "link", "set", &inside, "up"])?;
        }
        Ok(host)
    }

    /// Host `index`'s address on `link`.
    pub fn address(&self, index: usize, link: Link) -> String {
        format!("10.{}.{}.{}", self.octet, link.subnet(), 10 + index)
    }

    /// Takes host `index`'s `link` down (`up` false) or brings it back.
    pub fn set_link(&self, index: usize, link: Link, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.veth(index, link), state]).expect("the link changes");
    }

    fn bridge(&self, link: Link) -> String {
        format!("{}b{}", self.id, link.letter())
    }

    fn veth(&self, index: usize, link: Link) -> String {
        format!("{}{}{index}", self.id, link.letter())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // A namespace takes its ends of the veth pairs with it, and the other ends go too.
        for host in &self.hosts {
            let _ = ip(&["netns", "del", host]);
        }
        for link in [Link::Redis, Link::Postgres] {
            let _ = ip(&["link", "del", &self.bridge(link)]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|err| format!("ip {}: {err}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
