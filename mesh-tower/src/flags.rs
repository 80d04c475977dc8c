//! Envoy response flags: why a response is not simply the upstream's answer.
//!
//! Every local failure (and every injected fault) carries the flag Envoy would log in its
//! access log's `%RESPONSE_FLAGS%`, so metrics and logs tell a timeout from an ejection from an
//! overflow. The short names are Envoy's.

use std::fmt;

/// A set of Envoy response flags.
///
/// ```
/// use mesh_tower::ResponseFlags;
/// let f = ResponseFlags::UPSTREAM_OVERFLOW | ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED;
/// assert_eq!(f.to_string(), "UO,URX");
/// assert_eq!(ResponseFlags::NONE.to_string(), "-");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident = $bit:expr, $short:literal;)*) => {
        impl ResponseFlags {
            $($(#[$doc])* pub const $name: Self = Self(1 << $bit);)*

            const TABLE: &'static [(Self, &'static str)] = &[$((Self::$name, $short)),*];
        }
    };
}

flags! {
    /// `NR`: no route matched, or the host is not in the mesh registry.
    NO_ROUTE_FOUND = 0, "NR";
    /// `UH`: no healthy upstream host in the cluster.
    NO_HEALTHY_UPSTREAM = 1, "UH";
    /// `UF`: connecting to the upstream failed.
    UPSTREAM_CONNECTION_FAILURE = 2, "UF";
    /// `UO`: a circuit breaker overflowed.
    UPSTREAM_OVERFLOW = 3, "UO";
    /// `URX`: retries were exhausted (or denied) and the last attempt's answer is returned.
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 4, "URX";
    /// `UT`: the route timeout fired.
    UPSTREAM_REQUEST_TIMEOUT = 5, "UT";
    /// `DI`: a fault delay was injected.
    DELAY_INJECTED = 6, "DI";
    /// `FI`: a fault abort was injected.
    FAULT_INJECTED = 7, "FI";
    /// `UC`: the upstream connection closed before a response.
    UPSTREAM_CONNECTION_TERMINATION = 8, "UC";
    /// `UR`: the upstream reset the stream.
    UPSTREAM_REMOTE_RESET = 9, "UR";
    /// `NC`: the route's cluster does not exist.
    NO_CLUSTER_FOUND = 10, "NC";
    /// `UMSDR`: the route's max stream duration was reached.
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 11, "UMSDR";
    /// `UPE`: the upstream spoke invalid HTTP.
    UPSTREAM_PROTOCOL_ERROR = 12, "UPE";
    /// `DPE`: the request could not be sent as given (e.g. a body that failed).
    DOWNSTREAM_PROTOCOL_ERROR = 13, "DPE";
    /// `RL`: rate limited.
    RATE_LIMITED = 14, "RL";
    /// `UAEX`: denied by external authorization.
    UNAUTHORIZED_EXTERNAL_SERVICE = 15, "UAEX";
    /// `LR`: reset locally.
    LOCAL_RESET = 16, "LR";
    /// `DC`: the caller went away.
    DOWNSTREAM_CONNECTION_TERMINATION = 17, "DC";
    /// `SI`: the stream saw no activity for the connection manager's `stream_idle_timeout`.
    STREAM_IDLE_TIMEOUT = 18, "SI";
    /// `DT`: the stream outlived the connection manager's `max_stream_duration`.
    DURATION_TIMEOUT = 19, "DT";
}

impl ResponseFlags {
    /// No flag.
    pub const NONE: Self = Self(0);

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag in `other` is set.
    pub fn contains(self, other: Self) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    /// Adds `other`.
    pub fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

/// Envoy's access-log form: comma-separated short names, or `-` when empty.
impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, short) in Self::TABLE {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(short)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResponseFlags({self})")
    }
}
