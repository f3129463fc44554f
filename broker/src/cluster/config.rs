//! The cluster's settings, resolved from the `-nid -mbs -csk -crp -csp -ol -cad -csl -csb -csv -ssp -cht` flags and
//! the failure-detector timings. `config` parses the flags; the rules about which combinations
//! make sense, and the parsing of node names and seed lists, live here with their tests.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

pub use super::shared::SharedPolicy;

/// The gossip port a seed is assumed to listen on when its entry names none.
pub const DEFAULT_SEED_PORT: u16 = 7946;

/// Longest node name: it travels in every sync datagram (after a one-byte length).
pub const MAX_NODE_ID_LEN: usize = 64;

/// Smallest `-csl` other than 0 (no limit): a record's framing and a short topic.
pub const MIN_SYNC_LIMIT: usize = 64;
/// Smallest `-csb`: a few datagrams' worth.
pub const MIN_SYNC_BUFFER: usize = 64 << 10;

/// Everything the cluster tasks need; present only when `-nid` is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: String,
    /// The address peers must use to reach this node (`-nid=name@addr` or `-cad`); `None` picks
    /// one at start (see `membership::advertised_ip`).
    pub advertise: Option<IpAddr>,
    pub seeds: Vec<Seed>,
    pub key: ClusterKey,
    pub gossip_port: u16,
    pub sync_port: u16,
    /// How often seeds that are not members are resolved and asked to let this node in.
    pub rejoin_interval: Duration,
    /// Largest forwarded record (7 bytes of framing + topic + payload, + the MQTT 5 expiry and
    /// properties in sync version 2; see `sync::record_len`); `None`: no limit (`-csl 0`).
    pub sync_limit: Option<usize>,
    /// Bytes held per peer for QoS 1 and 2 messages not yet acknowledged (`-csb`).
    pub sync_buffer: usize,
    /// The newest sync version this node writes, reads and advertises (`-csv`).
    pub sync_version: u8,
    /// Where shared subscription groups' messages go (`-ssp`).
    pub shared_policy: SharedPolicy,
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub indirect_probes: usize,
    pub suspect_to_down: Duration,
    /// How long a CONNECT waits for the other nodes to give up its client id (`-cht`).
    pub handover_timeout: Duration,
}

/// The flags as given, before their rules are checked.
#[derive(Debug, Default)]
pub struct ClusterFlags {
    pub node_id: Option<String>,
    pub seeds: Option<String>,
    pub key: Option<String>,
    pub advertise: Option<String>,
    pub gossip_port: u16,
    pub sync_port: u16,
    pub rejoin_secs: u64,
    pub sync_limit: usize,
    pub sync_buffer: usize,
    pub sync_version: u8,
    pub shared_policy: SharedPolicy,
    pub probe_period_ms: u64,
    pub probe_rtt_ms: u64,
    pub indirect_probes: usize,
    pub suspect_to_down_ms: u64,
    pub handover_timeout_ms: u64,
}

impl ClusterFlags {
    /// `None` when cluster mode is off (no `-nid`); an error message naming the flag otherwise.
    pub fn resolve(self) -> Result<Option<ClusterConfig>, String> {
        let seeds = match self.seeds.as_deref().map(str::trim) {
            None | Some("") => Vec::new(),
            Some(list) => parse_seeds(list)?,
        };
        let Some(node) = self.node_id else {
            if !seeds.is_empty() {
                return Err(
                    "-mbs needs -nid: name this node in the cluster (e.g. -nid=node1)".to_string(),
                );
            }
            return Ok(None);
        };
        let (node_id, nid_address) = match node.rsplit_once('@') {
            Some((name, address)) => (name, Some(parse_ip("-nid", address)?)),
            None => (node.as_str(), None),
        };
        validate_node_id(node_id)?;
        let cad = self
            .advertise
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(|address| parse_ip("-cad", address))
            .transpose()?;
        let advertise = match (nid_address, cad) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "-nid names address {a} but -cad says {b}: give the address once"
                ))
            }
            (a, b) => a.or(b),
        };
        let key = match self.key {
            Some(key) if !key.is_empty() => ClusterKey(key.into_bytes()),
            _ => {
                return Err(
                    "-nid needs -csk: the cluster key that authenticates every datagram \
                     between nodes (the same on every node)"
                        .to_string(),
                )
            }
        };
        if self.sync_limit != 0 && self.sync_limit < MIN_SYNC_LIMIT {
            return Err(format!(
                "-csl {} is too small: 0 (no limit) or at least {MIN_SYNC_LIMIT} bytes",
                self.sync_limit
            ));
        }
        if self.sync_buffer < MIN_SYNC_BUFFER {
            return Err(format!(
                "-csb {} is too small: at least {MIN_SYNC_BUFFER} bytes",
                self.sync_buffer
            ));
        }
        let versions = super::sync::OLDEST_VERSION..=super::sync::NEWEST_VERSION;
        if !versions.contains(&self.sync_version) {
            return Err(format!(
                "-csv {} is not a sync version this release knows: {} to {}",
                self.sync_version,
                versions.start(),
                versions.end()
            ));
        }
        if self.probe_rtt_ms >= self.probe_period_ms {
            return Err(format!(
                "-cpr ({} ms) must be shorter than -cpp ({} ms): the probe round trip ends \
                 within a probe period",
                self.probe_rtt_ms, self.probe_period_ms
            ));
        }
        Ok(Some(ClusterConfig {
            node_id: node_id.to_string(),
            advertise,
            seeds,
            key,
            gossip_port: self.gossip_port,
            sync_port: self.sync_port,
            rejoin_interval: Duration::from_secs(self.rejoin_secs),
            sync_limit: (self.sync_limit != 0).then_some(self.sync_limit),
            sync_buffer: self.sync_buffer,
            sync_version: self.sync_version,
            shared_policy: self.shared_policy,
            probe_period: Duration::from_millis(self.probe_period_ms),
            probe_rtt: Duration::from_millis(self.probe_rtt_ms),
            indirect_probes: self.indirect_probes,
            suspect_to_down: Duration::from_millis(self.suspect_to_down_ms),
            handover_timeout: Duration::from_millis(self.handover_timeout_ms),
        }))
    }
}

/// The cluster key (`-csk`). Compared, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(pub Vec<u8>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// One `-mbs` entry: a host name or address, and its gossip port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn parse_ip(flag: &str, address: &str) -> Result<IpAddr, String> {
    let bare = address.trim_start_matches('[').trim_end_matches(']');
    bare.parse().map_err(|_| {
        format!("{flag}: {address:?} is not an IP address (the address peers reach this node at)")
    })
}

/// Node names travel in datagrams and logs and become pod names in Kubernetes: printable ASCII
/// without spaces, `@` (it separates the address) or `,`.
fn validate_node_id(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("-nid: the node name must not be empty".to_string());
    }
    if name.len() > MAX_NODE_ID_LEN {
        return Err(format!(
            "-nid: the node name is {} bytes; at most {MAX_NODE_ID_LEN}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '@' | ','))
    {
        return Err(format!(
            "-nid: {name:?} contains {bad:?}; use letters, digits and punctuation other than @ and ,"
        ));
    }
    Ok(())
}

/// `host[:port],host[:port],...`; IPv6 addresses in brackets.
fn parse_seeds(list: &str) -> Result<Vec<Seed>, String> {
    let mut seeds = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(format!("-mbs {list:?}: empty entry between commas"));
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("-mbs: missing ']' in {entry:?}"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("-mbs: unexpected text after ']' in {entry:?}")),
                },
            }
        } else {
            match entry.split_once(':') {
                Some((_, rest)) if rest.contains(':') => {
                    return Err(format!(
                        "-mbs: write IPv6 seed {entry:?} in brackets, as [address]:port"
                    ))
                }
                Some((host, port)) => (host, Some(port)),
                None => (entry, None),
            }
        };
        if host.is_empty() {
            return Err(format!("-mbs: no host in {entry:?}"));
        }
        let port = match port {
            None => DEFAULT_SEED_PORT,
            Some(digits) => match digits.parse::<u16>() {
                Ok(port) if port != 0 && digits.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => return Err(format!("-mbs: invalid port {digits:?} in {entry:?}")),
            },
        };
        let seed = Seed {
            host: host.to_string(),
            port,
        };
        if !seeds.contains(&seed) {
            seeds.push(seed);
        }
    }
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ClusterFlags {
        ClusterFlags {
            gossip_port: 7946,
            sync_port: 7947,
            rejoin_secs: 10,
            sync_limit: 0,
            sync_buffer: 16 << 20,
            sync_version: 5,
            probe_period_ms: 1000,
            probe_rtt_ms: 500,
            indirect_probes: 3,
            suspect_to_down_ms: 3000,
            handover_timeout_ms: 2000,
            ..ClusterFlags::default()
        }
    }

    fn seed(host: &str, port: u16) -> Seed {
        Seed {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn no_node_id_means_no_cluster() {
        assert_eq!(flags().resolve(), Ok(None));
        let with_key = ClusterFlags {
            key: Some("k".into()),
            ..flags()
        };
        assert_eq!(with_key.resolve(), Ok(None));
    }

    #[test]
    fn seeds_without_a_node_id_are_an_error() {
        let error = ClusterFlags {
            seeds: Some("10.0.0.1:7946".into()),
            ..flags()
        }
        .resolve()
        .unwrap_err();
        assert!(error.contains("-mbs needs -nid"), "{error}");
    }

    #[test]
    fn a_node_id_needs_a_key() {
        let error = ClusterFlags {
            node_id: Some("node1".into()),
            ..flags()
        }
        .resolve()
        .unwrap_err();
        assert!(error.contains("-nid needs -csk"), "{error}");
    }

    #[test]
    fn the_original_example_resolves() {
        let config = ClusterFlags {
            node_id: Some("node1".into()),
            key: Some("12345678".into()),
            seeds: Some("192.168.1.101:7946,192.168.1.102:7946".into()),
            ..flags()
        }
        .resolve()
        .unwrap()
        .unwrap();
        assert_eq!(config.node_id, "node1");
        assert_eq!(config.advertise, None);
        assert_eq!(
            config.seeds,
            vec![seed("192.168.1.101", 7946), seed("192.168.1.102", 7946)]
        );
        assert_eq!(config.key, ClusterKey(b"12345678".to_vec()));
        assert_eq!(config.probe_period, Duration::from_secs(1));
        assert!(!format!("{config:?}").contains("12345678"));
    }

    #[test]
    fn node_id_may_carry_the_advertised_address() {
        let resolve = |nid: &str, cad: Option<&str>| {
            ClusterFlags {
                node_id: Some(nid.into()),
                key: Some("k".into()),
                advertise: cad.map(str::to_string),
                ..flags()
            }
            .resolve()
        };
        let config = resolve("n1@10.1.2.3", None).unwrap().unwrap();
        assert_eq!(config.node_id, "n1");
        assert_eq!(config.advertise, Some("10.1.2.3".parse().unwrap()));
        let config = resolve("n1", Some("[fd00::1]")).unwrap().unwrap();
        assert_eq!(config.advertise, Some("fd00::1".parse().unwrap()));
        assert!(resolve("n1@10.1.2.3", Some("10.1.2.3")).is_ok());
        assert!(resolve("n1@10.1.2.3", Some("10.1.2.4")).is_err());
        assert!(resolve("n1@not-an-ip", None).is_err());
        assert!(resolve("@10.1.2.3", None).is_err());
    }

    #[test]
    fn bad_node_names_are_refused() {
        for name in ["", "a b", "a,b", "é", &"x".repeat(MAX_NODE_ID_LEN + 1)] {
            assert!(validate_node_id(name).is_err(), "{name:?}");
        }
        for name in ["node1", "coolpy7-0", "a.b_c", &"x".repeat(MAX_NODE_ID_LEN)] {
            assert!(validate_node_id(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn seed_lists() {
        assert_eq!(
            parse_seeds("a, b:7000,[fd00::2]:7001,[fd00::3],a").unwrap(),
            vec![
                seed("a", 7946),
                seed("b", 7000),
                seed("fd00::2", 7001),
                seed("fd00::3", 7946)
            ]
        );
        assert_eq!(
            parse_seeds("c7-0.c7-headless.ns.svc.cluster.local:7946").unwrap(),
            vec![seed("c7-0.c7-headless.ns.svc.cluster.local", 7946)]
        );
        for bad in [
            "a,,b", ":7946", "a:", "a:0", "a:70000", "a:+1", "fd00::1", "[fd00::1", "[x]y",
        ] {
            assert!(parse_seeds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_and_timings_are_checked() {
        let base = || ClusterFlags {
            node_id: Some("n".into()),
            key: Some("k".into()),
            ..flags()
        };
        assert!(ClusterFlags {
            sync_limit: 10,
            ..base()
        }
        .resolve()
        .is_err());
        for (limit, want) in [(0, None), (64, Some(64)), (70_000, Some(70_000))] {
            let config = ClusterFlags {
                sync_limit: limit,
                ..base()
            }
            .resolve();
            assert_eq!(config.unwrap().unwrap().sync_limit, want, "-csl {limit}");
        }
        assert!(ClusterFlags {
            sync_buffer: MIN_SYNC_BUFFER - 1,
            ..base()
        }
        .resolve()
        .is_err());
        assert!(ClusterFlags {
            probe_rtt_ms: 1000,
            ..base()
        }
        .resolve()
        .is_err());
        for (version, ok) in [
            (0, false),
            (1, true),
            (2, true),
            (3, true),
            (4, true),
            (5, true),
            (6, true),
            (7, false),
        ] {
            let resolved = ClusterFlags {
                sync_version: version,
                ..base()
            }
            .resolve();
            assert_eq!(resolved.is_ok(), ok, "-csv {version}: {resolved:?}");
            if let Ok(Some(config)) = resolved {
                assert_eq!(config.sync_version, version);
            }
        }
    }
}
