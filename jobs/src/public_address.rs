//! Which addresses a URL that a tenant typed may reach. A tenant's LLM base URL is called by
//! the API (`POST /v1/llm/test`, whose answer the tenant reads) and by the workers, from inside
//! the fleet's network: it must not reach this machine, a private network, or a cloud's
//! metadata service. The check runs on every address a host name resolves to, when the
//! connection is made (so a name that later resolves elsewhere is caught too), and on literal
//! addresses in the URL.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is a public unicast address on the internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local() // 169.254/16: cloud metadata services
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // 100.64/10, carrier NAT (Alibaba's metadata)
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24, protocol assignments
        || (a == 198 && (18..20).contains(&b)) // 198.18/15, benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // NAT64 of any IPv4 address
        || (first == 0x2001 && ip.segments()[1] == 0xdb8)) // documentation
}

/// Whether a URL's `host` (a name, or a literal address, bracketed for IPv6) is refused before
/// any lookup: `localhost` names and literal addresses that are not public. Other names are
/// judged by what they resolve to.
pub fn is_refused_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    // "localhost." is "localhost" too: a trailing dot only marks the name fully qualified.
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| !is_public(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(text: &str) -> bool {
        is_public(text.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_refused() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "0.1.2.3",
            "198.18.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!public(internal), "{internal}");
        }
    }

    #[test]
    fn internet_addresses_pass() {
        for outside in [
            "8.8.8.8",
            "104.18.6.192",
            "2606:4700::6812:6c0",
            "::ffff:8.8.4.4",
        ] {
            assert!(public(outside), "{outside}");
        }
    }

    #[test]
    fn local_names_and_literals_are_refused_before_lookup() {
        assert!(is_refused_host("localhost"));
        assert!(is_refused_host("api.LOCALHOST"));
        assert!(is_refused_host("localhost."));
        assert!(is_refused_host("[::1]"));
        assert!(is_refused_host("169.254.169.254"));
        assert!(!is_refused_host("api.openai.com"));
        assert!(!is_refused_host("8.8.8.8"));
    }
}
