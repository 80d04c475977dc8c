//! Envoy's RBAC engine over the model: a policy matches when any of its permissions and any of
//! its principals match; an ALLOW filter allows only what a policy matches, a DENY filter denies
//! what one matches, a LOG filter (Istio's AUDIT) allows everything. Istio emits the DENY filter
//! before the ALLOW filter, so "DENY first, then ALLOW" is the filter order.
//!
//! Evaluated per request with no allocation: matchers borrow the request view.

use std::net::SocketAddr;

use mesh_core::identity::{PeerCertificate, SpiffeId};

use super::metadata::Metadata;
use super::metadata::RBAC_NAMESPACE;
use mesh_core::model::{Permission, Principal, RbacAction, RbacFilter, RbacPolicies, RequestView};

/// What RBAC sees of a request besides its headers.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The peer's address (`direct_remote_ip`, `source_ip`).
    pub peer: SocketAddr,
    /// The client's address as the connection manager decided it from `x-forwarded-for`
    /// (`remote_ip`).
    pub client: std::net::IpAddr,
    /// The local (destination) address.
    pub local: SocketAddr,
    /// The peer's verified SPIFFE ID.
    pub spiffe_id: Option<&'a SpiffeId>,
    /// The names of the peer's verified certificate, if it presented one.
    pub certificate: Option<&'a PeerCertificate>,
    /// The TLS server name the peer asked for.
    pub sni: Option<&'a str>,
    /// What earlier filters learnt (the JWT filter's principal and claims).
    pub metadata: &'a Metadata,
}

/// A filter's verdict.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Let through.
    Allow,
    /// Denied; the policy that decided, for logs (none for "no ALLOW policy matched").
    Deny(Option<&'a str>),
}

/// Evaluates one RBAC filter. Shadow rules are evaluated by the caller only when it reports
/// them; they never change the verdict.
pub fn evaluate<'a>(
    filter: &'a RbacFilter,
    req: &RequestView<'_>,
    conn: &Connection<'_>,
) -> Verdict<'a> {
    verdict(filter, Some(req), conn)
}

/// Evaluates a network RBAC filter for a connection, before any request: as in Envoy's,
/// `url_path` rules never match there (and `header` rules are refused when the listener
/// loads).
pub fn evaluate_connection<'a>(filter: &'a RbacFilter, conn: &Connection<'_>) -> Verdict<'a> {
    verdict(filter, None, conn)
}

fn verdict<'a>(
    filter: &'a RbacFilter,
    req: Option<&RequestView<'_>>,
    conn: &Connection<'_>,
) -> Verdict<'a> {
    let Some(rules) = &filter.rules else {
        return Verdict::Allow;
    };
    let matched = matching(rules, req, conn);
    match (rules.action, matched) {
        (RbacAction::Allow, Some(_)) | (RbacAction::Deny, None) | (RbacAction::Log, _) => {
            if let (RbacAction::Log, Some(p)) = (rules.action, matched) {
                let path = req.map_or("", |r| r.path);
                tracing::info!(policy = p, peer = %conn.peer, path, "RBAC audit");
            }
            Verdict::Allow
        }
        (RbacAction::Allow, None) => Verdict::Deny(None),
        (RbacAction::Deny, Some(p)) => Verdict::Deny(Some(p)),
    }
}

/// Envoy's body for a request RBAC refuses.
pub(crate) const DENIED: &str = "RBAC: access denied";

/// A filter's verdict on a request, with what its shadow rules would have done.
pub(crate) struct Decision<'a> {
    pub(crate) verdict: Verdict<'a>,
    pub(crate) shadow: Option<Shadow>,
}

/// What a filter's shadow rules would have done: the policy they matched, and whether they
/// allow the request.
pub(crate) struct Shadow {
    policy: Option<String>,
    allowed: bool,
}

impl Shadow {
    /// Publishes the result (as Envoy does) under `envoy.filters.http.rbac` as
    /// `<shadow_stat_prefix>shadow_effective_policy_id` and `…shadow_engine_result`.
    pub(crate) fn publish(self, filter: &RbacFilter, metadata: &mut Metadata) {
        let prefix = &filter.shadow_stat_prefix;
        if let Some(policy) = self.policy {
            metadata.set(
                RBAC_NAMESPACE,
                format!("{prefix}shadow_effective_policy_id"),
                policy.into(),
            );
        }
        metadata.set(
            RBAC_NAMESPACE,
            format!("{prefix}shadow_engine_result"),
            if self.allowed { "allowed" } else { "denied" }.into(),
        );
    }
}

/// Evaluates one RBAC filter over a request: its rules' verdict, and its shadow rules'
/// result (which never changes the verdict).
pub(crate) fn decide<'a>(
    filter: &'a RbacFilter,
    req: &RequestView<'_>,
    conn: &Connection<'_>,
) -> Decision<'a> {
    let verdict = evaluate(filter, req, conn);
    let shadow = filter.shadow_rules.as_ref().map(|rules| {
        let policy = first_match(rules, req, conn).map(str::to_owned);
        let allowed = match rules.action {
            RbacAction::Allow => policy.is_some(),
            RbacAction::Deny => policy.is_none(),
            RbacAction::Log => true,
        };
        tracing::debug!(shadow = %filter.shadow_stat_prefix, ?policy, allowed, path = req.path, "RBAC shadow rules");
        Shadow { policy, allowed }
    });
    if let Verdict::Deny(policy) = &verdict {
        tracing::debug!(?policy, peer = ?conn.spiffe_id, path = req.path, "RBAC denied");
    }
    Decision { verdict, shadow }
}

/// The name of the first policy of `rules` that matches (shadow-rule evaluation uses it too).
pub fn first_match<'a>(
    rules: &'a RbacPolicies,
    req: &RequestView<'_>,
    conn: &Connection<'_>,
) -> Option<&'a str> {
    matching(rules, Some(req), conn)
}

fn matching<'a>(
    rules: &'a RbacPolicies,
    req: Option<&RequestView<'_>>,
    conn: &Connection<'_>,
) -> Option<&'a str> {
    rules
        .policies
        .iter()
        .find(|(_, p)| {
            p.permissions.iter().any(|x| permission(x, req, conn))
                && p.principals.iter().any(|x| principal(x, req, conn))
        })
        .map(|(name, _)| &**name)
}

fn permission(p: &Permission, req: Option<&RequestView<'_>>, conn: &Connection<'_>) -> bool {
    match p {
        Permission::And(all) => all.iter().all(|x| permission(x, req, conn)),
        Permission::Or(any) => any.iter().any(|x| permission(x, req, conn)),
        Permission::Any => true,
        Permission::Header(h) => req.is_some_and(|r| h.matches(r)),
        Permission::UrlPath(m) => req.is_some_and(|r| m.matches(r.path)),
        Permission::DestinationIp(c) => c.contains(conn.local.ip()),
        Permission::DestinationPort(port) => conn.local.port() == *port,
        Permission::DestinationPortRange(start, end) => (*start..*end).contains(&conn.local.port()),
        Permission::Metadata(m) => conn.metadata.matches(m),
        Permission::Not(inner) => !permission(inner, req, conn),
        Permission::RequestedServerName(m) => conn.sni.is_some_and(|s| m.matches(s)),
    }
}

fn principal(p: &Principal, req: Option<&RequestView<'_>>, conn: &Connection<'_>) -> bool {
    match p {
        Principal::And(all) => all.iter().all(|x| principal(x, req, conn)),
        Principal::Or(any) => any.iter().any(|x| principal(x, req, conn)),
        Principal::Any => true,
        // Envoy's order: every URI SAN, every DNS SAN, then the subject. A TLS peer without
        // a certificate is not authenticated here (Envoy would let one through a rule with
        // no name; this is stricter, never wider).
        Principal::Authenticated(m) => match (conn.certificate, m) {
            (Some(_), None) => true,
            (Some(cert), Some(m)) => cert.any_name(|name| m.matches(name)),
            (None, _) => false,
        },
        Principal::SourceIp(c) | Principal::DirectRemoteIp(c) => c.contains(conn.peer.ip()),
        Principal::RemoteIp(c) => c.contains(conn.client),
        Principal::Header(h) => req.is_some_and(|r| h.matches(r)),
        Principal::UrlPath(m) => req.is_some_and(|r| m.matches(r.path)),
        Principal::Metadata(m) => conn.metadata.matches(m),
        Principal::FilterState { key, value } => {
            &**key == "io.istio.peer_principal"
                && conn.spiffe_id.is_some_and(|id| value.matches(id.as_str()))
        }
        Principal::Not(inner) => !principal(inner, req, conn),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use mesh_core::model::{HeaderMatch, HeaderMatcher, RbacPolicy, StringMatch, StringMatcher};

    use super::*;

    fn filter(action: RbacAction, policies: Vec<(&str, RbacPolicy)>) -> RbacFilter {
        RbacFilter {
            rules: Some(RbacPolicies {
                action,
                policies: policies
                    .into_iter()
                    .map(|(n, p)| (Arc::from(n), p))
                    .collect(),
            }),
            shadow_rules: None,
            stat_prefix: "".into(),
            shadow_stat_prefix: "".into(),
        }
    }

    fn method(m: &str) -> Permission {
        Permission::Header(HeaderMatcher {
            name: ":method".into(),
            kind: HeaderMatch::String(StringMatcher::exact(m)),
            invert: false,
            treat_missing_as_empty: false,
        })
    }

    fn principal_is(id: &str) -> Principal {
        Principal::Authenticated(Some(StringMatcher::exact(id)))
    }

    const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";

    fn check(f: &RbacFilter, m: &str, path: &str, who: Option<&str>) -> bool {
        let req = http::Request::builder()
            .method(m)
            .uri(format!("http://details{path}"))
            .body(())
            .unwrap();
        let id = who.map(|w| w.parse::<SpiffeId>().unwrap());
        let cert = who.map(|w| PeerCertificate {
            uri_sans: Box::new([w.into()]),
            ..Default::default()
        });
        let conn = Connection {
            peer: "10.0.0.1:5000".parse().unwrap(),
            client: "10.0.0.1".parse().unwrap(),
            local: "10.0.0.2:9080".parse().unwrap(),
            spiffe_id: id.as_ref(),
            certificate: cert.as_ref(),
            sni: None,
            metadata: &Metadata::default(),
        };
        evaluate(f, &RequestView::from_request(&req), &conn) == Verdict::Allow
    }

    #[test]
    fn an_empty_allow_denies_everything() {
        let f = filter(RbacAction::Allow, vec![]);
        assert!(!check(&f, "GET", "/", Some(PRODUCTPAGE)));
    }

    #[test]
    fn allow_needs_a_matching_principal_and_permission() {
        let f = filter(
            RbacAction::Allow,
            vec![(
                "viewer",
                RbacPolicy {
                    permissions: Box::new([method("GET")]),
                    principals: Box::new([principal_is(PRODUCTPAGE)]),
                },
            )],
        );
        assert!(check(&f, "GET", "/details/0", Some(PRODUCTPAGE)));
        assert!(!check(&f, "POST", "/details/0", Some(PRODUCTPAGE)));
        assert!(!check(
            &f,
            "GET",
            "/details/0",
            Some("spiffe://cluster.local/ns/default/sa/reviews")
        ));
        assert!(
            !check(&f, "GET", "/details/0", None),
            "plaintext peers have no principal"
        );
    }

    #[test]
    fn deny_blocks_only_what_matches_and_log_never_blocks() {
        let admin = Permission::UrlPath(StringMatcher {
            kind: StringMatch::Prefix("/admin".into()),
            ignore_case: false,
        });
        let deny = filter(
            RbacAction::Deny,
            vec![(
                "no-admin",
                RbacPolicy {
                    permissions: Box::new([admin.clone()]),
                    principals: Box::new([Principal::Any]),
                },
            )],
        );
        assert!(!check(&deny, "GET", "/admin/x", None));
        assert!(check(&deny, "GET", "/details/0", None));
        let audit = filter(
            RbacAction::Log,
            vec![(
                "audit",
                RbacPolicy {
                    permissions: Box::new([admin]),
                    principals: Box::new([Principal::Any]),
                },
            )],
        );
        assert!(check(&audit, "GET", "/admin/x", None));
    }

    #[test]
    fn not_and_source_ip_rules() {
        let f = filter(
            RbacAction::Allow,
            vec![(
                "not-from-10-0-0-1",
                RbacPolicy {
                    permissions: Box::new([Permission::Any]),
                    principals: Box::new([Principal::Not(Box::new(Principal::SourceIp(
                        mesh_core::model::Cidr {
                            addr: "10.0.0.1".parse().unwrap(),
                            prefix_len: 32,
                        },
                    )))]),
                },
            )],
        );
        assert!(!check(&f, "GET", "/", None), "the peer is 10.0.0.1");
    }
}
