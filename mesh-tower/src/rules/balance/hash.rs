//! Consistent hashing: the request hash from a route's hash policies, Ketama rings and Maglev
//! tables.
//!
//! The hash functions are Envoy's (xxHash64, seed 0, over the same key text: a header's value,
//! `address_i` for ring points, the address with seeds 0 and 1 for Maglev permutations), so a
//! key lands on the host an Envoy sidecar with the same endpoints would choose. That keeps
//! session affinity intact when part of a fleet runs sidecars and part runs mesh.

use std::net::IpAddr;
use std::time::Duration;

use mesh_core::model::{HashPolicy, HashSource, RequestView};
use twox_hash::XxHash64;

/// xxHash64 with seed 0, Envoy's `HashUtil::xxHash64`.
pub(crate) fn hash_key(key: &[u8]) -> u64 {
    XxHash64::oneshot(0, key)
}

/// A request's hash, built from a route's hash policies.
#[derive(Debug, Default)]
pub(crate) struct RequestHasher {
    hash: Option<u64>,
    /// A cookie to set on the response because a policy generated it.
    pub(crate) set_cookie: Option<String>,
}

impl RequestHasher {
    /// Applies `policies` in order, combining their hashes as Envoy does (rotate left by one,
    /// then xor), stopping after a terminal policy that produced one.
    pub(crate) fn compute(
        policies: &[HashPolicy],
        req: &RequestView<'_>,
        source_ip: Option<IpAddr>,
    ) -> Self {
        let mut out = Self::default();
        for p in policies {
            let h = match &p.source {
                HashSource::Header(name) => req.headers.get(name).map(|v| hash_key(v.as_bytes())),
                HashSource::Cookie { name, ttl, path } => match cookie(req, name) {
                    Some(v) => Some(hash_key(v.as_bytes())),
                    None => ttl.map(|ttl| {
                        let value = format!("{:016x}", fastrand::u64(..));
                        out.set_cookie = Some(set_cookie(name, &value, ttl, path));
                        hash_key(value.as_bytes())
                    }),
                },
                HashSource::SourceIp => source_ip.map(|ip| hash_key(ip.to_string().as_bytes())),
                HashSource::QueryParameter(name) => {
                    query_param(req.query, name).map(|v| hash_key(v.as_bytes()))
                }
                HashSource::FilterState(_) => None,
            };
            if let Some(h) = h {
                out.hash = Some(match out.hash {
                    Some(acc) => acc.rotate_left(1) ^ h,
                    None => h,
                });
                if p.terminal {
                    break;
                }
            }
        }
        out
    }

    /// The hash, when a policy produced one.
    pub(crate) fn hash(&self) -> Option<u64> {
        self.hash
    }
}

fn cookie<'a>(req: &RequestView<'a>, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, ttl: Duration, path: &str) -> String {
    let mut s = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
    if !path.is_empty() {
        s.push_str("; Path=");
        s.push_str(path);
    }
    s.push_str("; HttpOnly");
    s
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
        .next()
}

/// A Ketama ring: points sorted by hash, each naming a host position.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// Builds a ring where each host gets points in proportion to its weight, at least
    /// `min_size` points in all and at most `max_size` (Envoy's scaling rule).
    pub(crate) fn build<'a>(
        keys: impl Iterator<Item = &'a str>,
        weights: &[u32],
        min_size: u64,
        max_size: u64,
    ) -> Self {
        let keys: Vec<&str> = keys.collect();
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        if keys.is_empty() || total == 0.0 {
            return Self {
                points: Box::new([]),
            };
        }
        let normalized: Vec<f64> = weights.iter().map(|&w| w as f64 / total).collect();
        let min_norm = normalized.iter().copied().fold(f64::INFINITY, f64::min);
        // Enough points that the lightest host gets at least one per `min_size` share.
        let scale = ((min_norm * min_size as f64).ceil() / min_norm).min(max_size as f64);
        let mut points = Vec::with_capacity(scale.ceil() as usize + keys.len());
        let mut target = 0.0;
        let mut placed = 0u64;
        let mut buf = String::new();
        for (pos, (key, w)) in keys.iter().zip(&normalized).enumerate() {
            target += scale * w;
            let mut i = 0u64;
            while (placed as f64) < target {
                buf.clear();
                buf.push_str(key);
                buf.push('_');
                buf.push_str(&i.to_string());
                points.push((hash_key(buf.as_bytes()), pos as u32));
                i += 1;
                placed += 1;
            }
        }
        points.sort_unstable_by_key(|p| p.0);
        Self {
            points: points.into(),
        }
    }

    /// The host position for `hash`: the first point at or after it, wrapping around.
    pub(crate) fn get(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|p| p.0 < hash);
        Some(self.points[if i == self.points.len() { 0 } else { i }].1 as usize)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }
}

/// A Maglev lookup table.
#[derive(Debug)]
pub(crate) struct Maglev {
    pub(super) table: Box<[u32]>,
}

impl Maglev {
    /// Fills a table of `size` slots (a prime) from each host's permutation, hosts taking
    /// turns in proportion to their weights.
    pub(crate) fn build<'a>(
        keys: impl Iterator<Item = &'a str>,
        weights: &[u32],
        size: u64,
    ) -> Self {
        let keys: Vec<&str> = keys.collect();
        if keys.is_empty() || size == 0 {
            return Self {
                table: Box::new([]),
            };
        }
        let max_w = weights.iter().copied().max().unwrap_or(1).max(1) as f64;
        struct Perm {
            offset: u64,
            skip: u64,
            next: u64,
            weight: f64,
            target: f64,
        }
        let mut perms: Vec<Perm> = keys
            .iter()
            .zip(weights)
            .map(|(k, &w)| Perm {
                offset: XxHash64::oneshot(0, k.as_bytes()) % size,
                skip: XxHash64::oneshot(1, k.as_bytes()) % (size - 1).max(1) + 1,
                next: 0,
                weight: w.max(1) as f64 / max_w,
                target: 0.0,
            })
            .collect();
        const EMPTY: u32 = u32::MAX;
        let mut table = vec![EMPTY; size as usize];
        let mut filled = 0u64;
        let mut iteration = 0u64;
        while filled < size {
            for (pos, p) in perms.iter_mut().enumerate() {
                if filled >= size {
                    break;
                }
                // A host of the heaviest weight fills a slot every round; one of a third of
                // that weight every third round.
                if (iteration as f64) * p.weight < p.target {
                    continue;
                }
                p.target += 1.0;
                let mut c = (p.offset + p.skip * p.next) % size;
                while table[c as usize] != EMPTY {
                    p.next += 1;
                    c = (p.offset + p.skip * p.next) % size;
                }
                table[c as usize] = pos as u32;
                p.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Self {
            table: table.into(),
        }
    }

    /// The host position for `hash`.
    pub(crate) fn get(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize] as usize)
    }
}
