//! Envoy's filter-chain selection (`FilterChainMatch`), and the overlap check Envoy makes when
//! a listener loads.
//!
//! Envoy builds a tree with one level per criterion, in this order: destination port,
//! destination IP, server name, transport protocol, application protocol, direct source IP,
//! source type, source IP, source port. At each level a connection goes to the most specific
//! branch that matches it (an exact port before "any port", the longest CIDR, an exact server
//! name before the longest wildcard, …) and never comes back up: if nothing deeper matches,
//! the listener's default chain is used, or the connection is closed. [`select`] walks the
//! same levels over a listener's chains.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::listener::{FilterChainMatch, SourceType};
use super::matcher::{Cidr, unmapped};

/// What is known of a connection when its filter chain is chosen.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionFacts<'a> {
    /// The local (destination) address.
    pub local: SocketAddr,
    /// The peer (source) address.
    pub peer: SocketAddr,
    /// The TLS server name (SNI), lower case, if the client sent one.
    pub server_name: Option<&'a str>,
    /// `tls` when the connection starts a TLS handshake, else `raw_buffer`.
    pub transport: &'a str,
    /// The client's ALPN protocols, in its order.
    pub alpn: &'a [&'a [u8]],
}

/// The index of the chain Envoy would choose among `chains`, or `None` (the default chain,
/// if the listener has one).
///
/// ```
/// use mesh_core::model::{ConnectionFacts, FilterChainMatch, select};
/// let plaintext = FilterChainMatch { transport_protocol: Some("raw_buffer".into()), ..Default::default() };
/// let port_9080 = FilterChainMatch { destination_port: Some(9080), ..Default::default() };
/// let facts = ConnectionFacts {
///     local: "10.0.0.2:9080".parse().unwrap(),
///     peer: "10.0.0.1:4000".parse().unwrap(),
///     server_name: None,
///     transport: "raw_buffer",
///     alpn: &[],
/// };
/// // The destination port decides first: the port-9080 chain, though the other matches too.
/// assert_eq!(select(&[&plaintext, &port_9080], &facts), Some(1));
/// ```
pub fn select(chains: &[&FilterChainMatch], c: &ConnectionFacts<'_>) -> Option<usize> {
    let mut candidates: Vec<usize> = (0..chains.len()).collect();
    let local_ip = unmapped(c.local.ip());
    let peer_ip = unmapped(c.peer.ip());
    let levels: [&Rank<'_>; 9] = [
        &|m| rank_port(m.destination_port, c.local.port()),
        &|m| rank_cidr(&m.prefix_ranges, local_ip),
        &|m| rank_server_name(&m.server_names, c.server_name),
        &|m| match m.transport_protocol.as_deref() {
            None => Some(0),
            Some(t) => (t == c.transport).then_some(1),
        },
        // Application protocols are ranked below, in the client's order.
        &|_| Some(0),
        &|m| rank_cidr(&m.direct_source_prefix_ranges, peer_ip),
        &|m| rank_source_type(m.source_type, local_ip, peer_ip),
        &|m| rank_cidr(&m.source_prefix_ranges, peer_ip),
        &|m| {
            if m.source_ports.is_empty() {
                Some(0)
            } else {
                m.source_ports.contains(&c.peer.port()).then_some(1)
            }
        },
    ];
    for (level, rank) in levels.iter().enumerate() {
        if level == 4 {
            narrow_alpn(chains, &mut candidates, c.alpn);
        } else {
            narrow(&mut candidates, |i| rank(chains[i]));
        }
        if candidates.is_empty() {
            return None;
        }
    }
    // Overlaps are refused when the listener loads, so at most one is left.
    candidates.first().copied()
}

/// How specific the branch is that a chain's match puts a connection in, at one level
/// (`None`: no branch of the chain matches).
type Rank<'a> = dyn Fn(&FilterChainMatch) -> Option<u32> + 'a;

/// Keeps the candidates of the most specific branch that matches.
fn narrow(candidates: &mut Vec<usize>, rank: impl Fn(usize) -> Option<u32>) {
    let ranks: Vec<Option<u32>> = candidates.iter().map(|&i| rank(i)).collect();
    let Some(best) = ranks.iter().flatten().max().copied() else {
        candidates.clear();
        return;
    };
    let mut r = ranks.into_iter();
    candidates.retain(|_| r.next().flatten() == Some(best));
}

/// Envoy walks the client's ALPN list in its order: the first protocol some chain names
/// decides; failing that, the chains that name none.
fn narrow_alpn(chains: &[&FilterChainMatch], candidates: &mut Vec<usize>, alpn: &[&[u8]]) {
    let names = |i: usize, p: &[u8]| {
        chains[i]
            .application_protocols
            .iter()
            .any(|a| a.as_bytes() == p)
    };
    for p in alpn {
        if candidates.iter().any(|&i| names(i, p)) {
            candidates.retain(|&i| names(i, p));
            return;
        }
    }
    candidates.retain(|&i| chains[i].application_protocols.is_empty());
}

fn rank_port(want: Option<u16>, port: u16) -> Option<u32> {
    match want {
        None => Some(0),
        Some(p) => (p == port).then_some(1),
    }
}

/// An empty list is Envoy's catch-all (rank 0); otherwise the longest range holding `ip`.
fn rank_cidr(ranges: &[Cidr], ip: IpAddr) -> Option<u32> {
    if ranges.is_empty() {
        return Some(0);
    }
    ranges
        .iter()
        .filter(|r| r.contains(ip))
        .map(|r| u32::from(r.prefix_len) + 1)
        .max()
}

/// An exact name before any wildcard, a longer wildcard (`*.b.example.com`) before a shorter
/// one, and chains that name none last. No server name matches only those.
fn rank_server_name(names: &[Box<str>], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    names
        .iter()
        .filter_map(|n| match n.strip_prefix('*') {
            None => n.eq_ignore_ascii_case(sni).then_some(u32::MAX),
            // `*.example.com` matches `a.example.com` and `a.b.example.com`, not the bare
            // domain.
            Some(suffix) => (sni.len() > suffix.len()
                && sni.as_bytes()[sni.len() - suffix.len()..]
                    .eq_ignore_ascii_case(suffix.as_bytes()))
            .then_some(suffix.len() as u32),
        })
        .max()
}

fn rank_source_type(want: SourceType, local: IpAddr, peer: IpAddr) -> Option<u32> {
    let is_local = peer == local || peer.is_loopback();
    match want {
        SourceType::Any => Some(0),
        SourceType::SameIpOrLoopback => is_local.then_some(1),
        SourceType::External => (!is_local).then_some(1),
    }
}

/// Most combinations the overlap check expands before refusing a listener as too large.
const MAX_COMBINATIONS: usize = 100_000;

/// Why a listener's chains cannot be told apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlapError {
    /// Two chains match the same connections (Envoy: "multiple filter chains with overlapping
    /// matching rules are defined").
    Overlap {
        /// The earlier chain.
        first: usize,
        /// The later one.
        second: usize,
    },
    /// The matches expand into more combinations than are checked.
    TooLarge,
}

/// Envoy's load-time check: every chain expanded into the combinations of values it matches
/// (each port, range, name, protocol …); two chains sharing a combination overlap.
pub fn check_overlaps(chains: &[&FilterChainMatch]) -> Result<(), OverlapError> {
    let mut seen: HashMap<Vec<String>, usize> = HashMap::new();
    let mut total = 0usize;
    for (index, m) in chains.iter().enumerate() {
        let or_any = |v: Vec<String>| if v.is_empty() { vec![String::new()] } else { v };
        let cidrs = |r: &[Cidr]| or_any(r.iter().map(canonical_cidr).collect());
        let levels: [Vec<String>; 9] = [
            vec![m.destination_port.map_or(String::new(), |p| p.to_string())],
            cidrs(&m.prefix_ranges),
            or_any(
                m.server_names
                    .iter()
                    .map(|n| n.to_ascii_lowercase())
                    .collect(),
            ),
            vec![m.transport_protocol.as_deref().unwrap_or("").to_owned()],
            or_any(
                m.application_protocols
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            ),
            cidrs(&m.direct_source_prefix_ranges),
            vec![format!("{:?}", m.source_type)],
            cidrs(&m.source_prefix_ranges),
            or_any(m.source_ports.iter().map(|p| p.to_string()).collect()),
        ];
        let count = levels.iter().map(Vec::len).product::<usize>();
        total = total.saturating_add(count);
        if total > MAX_COMBINATIONS {
            return Err(OverlapError::TooLarge);
        }
        let mut combination = vec![0usize; levels.len()];
        loop {
            let key: Vec<String> = combination
                .iter()
                .zip(&levels)
                .map(|(&i, values)| values[i].clone())
                .collect();
            if let Some(&first) = seen.get(&key)
                && first != index
            {
                return Err(OverlapError::Overlap {
                    first,
                    second: index,
                });
            }
            seen.insert(key, index);
            // The next combination, like an odometer.
            let mut level = levels.len();
            loop {
                if level == 0 {
                    break;
                }
                level -= 1;
                combination[level] += 1;
                if combination[level] < levels[level].len() {
                    break;
                }
                combination[level] = 0;
            }
            if combination.iter().all(|&i| i == 0) {
                break;
            }
        }
    }
    Ok(())
}

/// A range with its host bits cleared, so `10.1.2.3/16` and `10.1.0.0/16` are the same.
fn canonical_cidr(c: &Cidr) -> String {
    format!("{}/{}", c.network(), c.prefix_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        let (a, l) = s.split_once('/').unwrap();
        Cidr {
            addr: a.parse().unwrap(),
            prefix_len: l.parse().unwrap(),
        }
    }

    fn facts<'a>(local: &str, peer: &str, sni: Option<&'a str>, tls: bool) -> ConnectionFacts<'a> {
        ConnectionFacts {
            local: local.parse().unwrap(),
            peer: peer.parse().unwrap(),
            server_name: sni,
            transport: if tls { "tls" } else { "raw_buffer" },
            alpn: &[],
        }
    }

    #[test]
    fn the_most_specific_range_wins_and_is_never_left() {
        let wide = FilterChainMatch {
            prefix_ranges: Box::new([cidr("10.0.0.0/8")]),
            ..Default::default()
        };
        let narrow_tls = FilterChainMatch {
            prefix_ranges: Box::new([cidr("10.1.0.0/16")]),
            transport_protocol: Some("tls".into()),
            ..Default::default()
        };
        let chains = [&wide, &narrow_tls];
        assert_eq!(
            select(&chains, &facts("10.1.2.3:80", "1.2.3.4:5", None, true)),
            Some(1)
        );
        // The /16 branch is chosen by address, then fails on transport: Envoy does not fall
        // back to the /8 chain.
        assert_eq!(
            select(&chains, &facts("10.1.2.3:80", "1.2.3.4:5", None, false)),
            None
        );
        assert_eq!(
            select(&chains, &facts("10.2.0.1:80", "1.2.3.4:5", None, false)),
            Some(0)
        );
        assert_eq!(
            select(&chains, &facts("11.0.0.1:80", "1.2.3.4:5", None, false)),
            None
        );
    }

    #[test]
    fn an_exact_port_is_never_left_for_any_port() {
        let any = FilterChainMatch::default();
        let port_tls = FilterChainMatch {
            destination_port: Some(9080),
            transport_protocol: Some("tls".into()),
            ..Default::default()
        };
        let chains = [&any, &port_tls];
        assert_eq!(
            select(&chains, &facts("10.0.0.1:9080", "1.2.3.4:5", None, false)),
            None
        );
        assert_eq!(
            select(&chains, &facts("10.0.0.1:9081", "1.2.3.4:5", None, false)),
            Some(0)
        );
    }

    #[test]
    fn server_names_exact_then_longest_wildcard() {
        let wild = FilterChainMatch {
            server_names: Box::new(["*.example.com".into()]),
            ..Default::default()
        };
        let wilder = FilterChainMatch {
            server_names: Box::new(["*.b.example.com".into()]),
            ..Default::default()
        };
        let exact = FilterChainMatch {
            server_names: Box::new(["a.b.example.com".into()]),
            ..Default::default()
        };
        let none = FilterChainMatch::default();
        let chains = [&wild, &wilder, &exact, &none];
        let f = |sni| select(&chains, &facts("10.0.0.1:443", "1.2.3.4:5", sni, true));
        assert_eq!(f(Some("a.b.example.com")), Some(2));
        assert_eq!(f(Some("c.b.example.com")), Some(1));
        assert_eq!(f(Some("c.example.com")), Some(0));
        assert_eq!(
            f(Some("example.com")),
            Some(3),
            "a wildcard needs a label before it"
        );
        assert_eq!(f(None), Some(3));
    }

    #[test]
    fn alpn_in_the_clients_order() {
        let h2 = FilterChainMatch {
            application_protocols: Box::new(["h2".into()]),
            ..Default::default()
        };
        let h1 = FilterChainMatch {
            application_protocols: Box::new(["http/1.1".into()]),
            ..Default::default()
        };
        let chains = [&h2, &h1];
        let mut f = facts("10.0.0.1:443", "1.2.3.4:5", None, true);
        let alpn: [&[u8]; 2] = [b"http/1.1", b"h2"];
        f.alpn = &alpn;
        assert_eq!(select(&chains, &f), Some(1));
        f.alpn = &[];
        assert_eq!(select(&chains, &f), None);
    }

    #[test]
    fn source_type_ranges_and_ports() {
        let local_only = FilterChainMatch {
            source_type: SourceType::SameIpOrLoopback,
            ..Default::default()
        };
        let external = FilterChainMatch {
            source_type: SourceType::External,
            source_ports: Box::new([1234]),
            ..Default::default()
        };
        let chains = [&local_only, &external];
        assert_eq!(
            select(&chains, &facts("10.0.0.1:80", "127.0.0.1:9", None, false)),
            Some(0)
        );
        assert_eq!(
            select(&chains, &facts("10.0.0.1:80", "10.0.0.1:9", None, false)),
            Some(0)
        );
        assert_eq!(
            select(&chains, &facts("10.0.0.1:80", "10.9.0.1:1234", None, false)),
            Some(1)
        );
        assert_eq!(
            select(&chains, &facts("10.0.0.1:80", "10.9.0.1:1", None, false)),
            None
        );
    }

    #[test]
    fn overlaps_are_found_after_expansion() {
        let a = FilterChainMatch {
            server_names: Box::new(["a.example.com".into(), "b.example.com".into()]),
            ..Default::default()
        };
        let b = FilterChainMatch {
            server_names: Box::new(["B.example.com".into()]),
            ..Default::default()
        };
        assert_eq!(
            check_overlaps(&[&a, &b]),
            Err(OverlapError::Overlap {
                first: 0,
                second: 1
            })
        );
        let c = FilterChainMatch {
            prefix_ranges: Box::new([cidr("10.1.2.3/16")]),
            ..Default::default()
        };
        let d = FilterChainMatch {
            prefix_ranges: Box::new([cidr("10.1.0.0/16")]),
            ..Default::default()
        };
        assert!(
            check_overlaps(&[&c, &d]).is_err(),
            "the same range, spelt two ways"
        );
        let tls = FilterChainMatch {
            transport_protocol: Some("tls".into()),
            ..Default::default()
        };
        let raw = FilterChainMatch {
            transport_protocol: Some("raw_buffer".into()),
            ..Default::default()
        };
        assert_eq!(check_overlaps(&[&tls, &raw]), Ok(()));
        assert!(
            check_overlaps(&[&FilterChainMatch::default(), &FilterChainMatch::default()]).is_err()
        );
    }
}
