//! The scenarios and load modes of BENCHMARKS.md, and which modes each scenario runs.

use std::fmt;
use std::str::FromStr;

/// What sits between the application client and the application server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stack {
    /// Nothing: hyper (or tonic) to hyper (or tonic).
    Bare,
    /// MeshClient with one route to one cluster; the mesh's inbound side, passthrough.
    MeshMin,
    /// Header match and weighted split, retries, circuit breaker, outlier detection, metrics
    /// and tracing on the client; authorization, metrics and tracing on the server.
    MeshFull,
    /// `MeshFull` over Istio mutual TLS (STRICT, SPIFFE checks).
    MeshFullMtls,
    /// bare client → Envoy → Envoy → bare server.
    Envoy2,
    /// The Envoy pair over mutual TLS.
    Envoy2Mtls,
}

impl Stack {
    /// Whether the mesh library is on both sides.
    pub(crate) fn is_mesh(self) -> bool {
        matches!(self, Self::MeshMin | Self::MeshFull | Self::MeshFullMtls)
    }

    /// Whether an Envoy pair carries the traffic.
    pub(crate) fn is_envoy(self) -> bool {
        matches!(self, Self::Envoy2 | Self::Envoy2Mtls)
    }

    /// Whether the hop is mutual TLS.
    pub(crate) fn mtls(self) -> bool {
        matches!(self, Self::MeshFullMtls | Self::Envoy2Mtls)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::MeshMin => "mesh-min",
            Self::MeshFull => "mesh-full",
            Self::MeshFullMtls => "mesh-full-mtls",
            Self::Envoy2 => "envoy2",
            Self::Envoy2Mtls => "envoy2-mtls",
        }
    }
}

impl FromStr for Stack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            Self::Bare,
            Self::MeshMin,
            Self::MeshFull,
            Self::MeshFullMtls,
            Self::Envoy2,
            Self::Envoy2Mtls,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| format!("unknown stack {s:?}"))
    }
}

impl fmt::Display for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of the scenario table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scenario {
    /// Its id in the output (`mesh-full-mtls`, `grpc-envoy2-mtls`, …).
    pub(crate) name: &'static str,
    pub(crate) stack: Stack,
    /// tonic unary calls instead of HTTP GETs.
    pub(crate) grpc: bool,
    /// Trace sampling of the mesh sides (0 without the mesh).
    pub(crate) sampling: f64,
    /// Share of the server's answers that are 503 (per mille).
    pub(crate) fail_per_mille: u32,
}

const fn scenario(name: &'static str, stack: Stack, grpc: bool, sampling: f64) -> Scenario {
    Scenario {
        name,
        stack,
        grpc,
        sampling,
        fail_per_mille: 0,
    }
}

/// Every scenario, in the order they run within a rep.
pub(crate) const SCENARIOS: &[Scenario] = &[
    scenario("bare", Stack::Bare, false, 0.0),
    scenario("mesh-min", Stack::MeshMin, false, 0.0),
    scenario("mesh-full", Stack::MeshFull, false, 0.01),
    scenario("mesh-full-trace100", Stack::MeshFull, false, 1.0),
    scenario("mesh-full-mtls", Stack::MeshFullMtls, false, 0.01),
    scenario("envoy2", Stack::Envoy2, false, 0.0),
    scenario("envoy2-mtls", Stack::Envoy2Mtls, false, 0.0),
    scenario("grpc-bare", Stack::Bare, true, 0.0),
    scenario("grpc-mesh-full-mtls", Stack::MeshFullMtls, true, 0.01),
    scenario("grpc-envoy2-mtls", Stack::Envoy2Mtls, true, 0.0),
    Scenario {
        fail_per_mille: 10,
        ..scenario("faulty", Stack::MeshFull, false, 0.01)
    },
];

impl Scenario {
    /// Looks a scenario up by name.
    pub(crate) fn named(name: &str) -> Option<Self> {
        SCENARIOS.iter().copied().find(|s| s.name == name)
    }

    /// The load modes this scenario runs.
    pub(crate) fn modes(&self) -> &'static [Mode] {
        if self.fail_per_mille > 0 {
            // Success rate and added latency: at a steady rate, and saturated.
            &[Mode::Rate(1000), Mode::MaxH1]
        } else if self.grpc {
            &[Mode::MaxH2, Mode::Rate(1000), Mode::Rate(4000)]
        } else {
            &[Mode::MaxH1, Mode::MaxH2, Mode::Rate(1000), Mode::Rate(4000)]
        }
    }

    /// The scenario this one is compared with as "the floor": the bare one of its protocol.
    pub(crate) fn bare(&self) -> &'static str {
        if self.grpc { "grpc-bare" } else { "bare" }
    }

    /// The sidecar pair this one is compared with.
    pub(crate) fn envoy_pair(&self) -> &'static str {
        if self.grpc {
            "grpc-envoy2-mtls"
        } else {
            "envoy2-mtls"
        }
    }
}

/// How load is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// 32 connections, closed loop, HTTP/1.1.
    MaxH1,
    /// 8 connections × 16 streams, closed loop, HTTP/2.
    MaxH2,
    /// Open loop at this many requests a second, latency from each intended send time.
    Rate(u32),
}

impl Mode {
    /// The wire protocol between the application and the first hop.
    pub(crate) fn proto(self, grpc: bool) -> &'static str {
        match (grpc, self) {
            (true, _) => "grpc",
            (false, Self::MaxH2) => "h2",
            (false, _) => "h1",
        }
    }

    /// Connections and requests in flight on each (closed loop), or `None` (open loop).
    pub(crate) fn closed_loop(self) -> Option<(usize, usize)> {
        match self {
            Self::MaxH1 => Some((32, 1)),
            Self::MaxH2 => Some((8, 16)),
            Self::Rate(_) => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MaxH1 => f.write_str("max-h1"),
            Self::MaxH2 => f.write_str("max-h2"),
            Self::Rate(r) => write!(f, "rate@{r}"),
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max-h1" => Ok(Self::MaxH1),
            "max-h2" => Ok(Self::MaxH2),
            _ => s
                .strip_prefix("rate@")
                .and_then(|r| r.parse().ok())
                .filter(|&r| r > 0)
                .map(Self::Rate)
                .ok_or_else(|| format!("unknown mode {s:?} (max-h1, max-h2, rate@N)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_modes_round_trip() {
        for s in SCENARIOS {
            assert_eq!(Scenario::named(s.name), Some(*s));
            assert_eq!(s.stack.to_string().parse::<Stack>(), Ok(s.stack));
            for m in s.modes() {
                assert_eq!(m.to_string().parse::<Mode>(), Ok(*m));
            }
        }
        assert!("rate@0".parse::<Mode>().is_err());
    }

    #[test]
    fn every_scenario_has_its_comparisons() {
        for s in SCENARIOS {
            assert!(Scenario::named(s.bare()).is_some());
            assert!(Scenario::named(s.envoy_pair()).is_some());
        }
    }
}
