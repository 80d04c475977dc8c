//! istiod's resource names for proxyless clients.

/// A parsed `outbound|port|subset|host` cluster (or route configuration) name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundName<'a> {
    /// Port.
    pub port: u16,
    /// Subset (empty for the whole service).
    pub subset: &'a str,
    /// Fully qualified host.
    pub host: &'a str,
}

impl<'a> OutboundName<'a> {
    /// Parses `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub fn parse(name: &'a str) -> Option<Self> {
        let mut parts = name.split('|');
        if parts.next()? != "outbound" {
            return None;
        }
        let port = parts.next()?.parse().ok()?;
        let subset = parts.next()?;
        let host = parts.next()?;
        if parts.next().is_some() || host.is_empty() {
            return None;
        }
        Some(Self { port, subset, host })
    }
}

/// `outbound|port|subset|host`.
pub fn outbound(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Splits a client listener name `host:port` (the target a client dials).
pub fn split_listener(name: &str) -> Option<(&str, u16)> {
    let (host, port) = name.rsplit_once(':')?;
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let n = OutboundName::parse("outbound|9080|v1|reviews.default.svc.cluster.local").unwrap();
        assert_eq!(
            (n.port, n.subset, n.host),
            (9080, "v1", "reviews.default.svc.cluster.local")
        );
        assert_eq!(outbound(9080, "", "r"), "outbound|9080||r");
        assert!(OutboundName::parse("inbound|9080||r").is_none());
        assert_eq!(split_listener("reviews:9080"), Some(("reviews", 9080)));
    }
}
