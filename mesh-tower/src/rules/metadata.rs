//! Dynamic metadata: what a request's filters learn about it and leave for the filters after
//! them, as Envoy's `dynamic_metadata` does. The JWT filter publishes the verified token's
//! principal and claims under `istio_authn` (where Istio's RBAC rules look for
//! `request.auth.principal` and `request.auth.claims`) and the payload under
//! `envoy.filters.http.jwt_authn`; RBAC shadow rules publish the policy they matched under
//! `envoy.filters.http.rbac` (which is how Istio's CUSTOM policies select the requests
//! ext_authz checks).
//!
//! Most requests collect none, and an empty `Metadata` does not allocate.

use mesh_core::model::{MetadataMatcher, ValueMatch};
use serde_json::{Map, Value};

/// Metadata namespace of the JWT filter's payloads.
pub(crate) const JWT_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// Metadata namespace Istio's authorization rules read request principals and claims from.
pub(crate) const ISTIO_AUTHN_NAMESPACE: &str = "istio_authn";
/// Metadata namespace of the RBAC filter's shadow-rule results.
pub(crate) const RBAC_NAMESPACE: &str = "envoy.filters.http.rbac";

/// A request's dynamic metadata: JSON objects by filter namespace.
///
/// ```
/// use mesh_tower::server::Metadata;
/// let mut m = Metadata::default();
/// m.set("istio_authn", "request.auth.principal", "issuer/subject".into());
/// assert_eq!(m.get("istio_authn", &["request.auth.principal"]).and_then(|v| v.as_str()), Some("issuer/subject"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    namespaces: Vec<(Box<str>, Map<String, Value>)>,
}

impl Metadata {
    /// Sets `key` in `namespace`, replacing what was there.
    pub fn set(&mut self, namespace: &str, key: impl Into<String>, value: Value) {
        let i = match self.namespaces.iter().position(|(n, _)| &**n == namespace) {
            Some(i) => i,
            None => {
                self.namespaces.push((namespace.into(), Map::new()));
                self.namespaces.len() - 1
            }
        };
        self.namespaces[i].1.insert(key.into(), value);
    }

    /// The value at `path` inside `namespace`, following object keys.
    pub fn get(&self, namespace: &str, path: &[impl AsRef<str>]) -> Option<&Value> {
        let (_, map) = self.namespaces.iter().find(|(n, _)| &**n == namespace)?;
        let (first, rest) = path.split_first()?;
        rest.iter()
            .try_fold(map.get(first.as_ref())?, |v, key| v.get(key.as_ref()))
    }

    /// Whether nothing has been set.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    /// Evaluates an Envoy `MetadataMatcher`: a missing value matches nothing (so an inverted
    /// matcher matches it).
    pub fn matches(&self, m: &MetadataMatcher) -> bool {
        let found = self
            .get(&m.filter, &m.path)
            .is_some_and(|v| value_matches(v, &m.value));
        found != m.invert
    }
}

/// Envoy's `ValueMatcher` over a JSON value.
///
/// One liberty: a string matcher also matches a list holding a matching string. Istio's
/// `request.auth.audiences` is a string for single-audience tokens and a list otherwise, and
/// its rules use string matchers for it.
fn value_matches(v: &Value, m: &ValueMatch) -> bool {
    match m {
        ValueMatch::String(s) => match v {
            Value::String(x) => s.matches(x),
            Value::Array(items) => items
                .iter()
                .any(|i| i.as_str().is_some_and(|x| s.matches(x))),
            _ => false,
        },
        ValueMatch::ListAny(inner) => v
            .as_array()
            .is_some_and(|items| items.iter().any(|i| value_matches(i, inner))),
        ValueMatch::Present => !v.is_null(),
        ValueMatch::Bool(b) => v.as_bool() == Some(*b),
        ValueMatch::DoubleRange(start, end) => v.as_f64().is_some_and(|x| *start <= x && x < *end),
        ValueMatch::Null => v.is_null(),
        ValueMatch::Or(any) => any.iter().any(|m| value_matches(v, m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::StringMatcher;

    fn matcher(path: &[&str], value: ValueMatch) -> MetadataMatcher {
        MetadataMatcher {
            filter: ISTIO_AUTHN_NAMESPACE.into(),
            path: path.iter().map(|p| Box::from(*p)).collect(),
            value,
            invert: false,
        }
    }

    #[test]
    fn matchers_follow_paths_into_claims() {
        let mut m = Metadata::default();
        m.set(
            ISTIO_AUTHN_NAMESPACE,
            "request.auth.claims",
            serde_json::json!({"groups": ["group1", "group2"], "iss": ["issuer"]}),
        );
        let group = |g: &str| {
            matcher(
                &["request.auth.claims", "groups"],
                ValueMatch::ListAny(Box::new(ValueMatch::String(StringMatcher::exact(g)))),
            )
        };
        assert!(m.matches(&group("group1")));
        assert!(!m.matches(&group("group3")));
        let missing = matcher(&["request.auth.principal"], ValueMatch::Present);
        assert!(!m.matches(&missing), "absent values match nothing");
        assert!(
            m.matches(&MetadataMatcher {
                invert: true,
                ..missing
            }),
            "…so their inversion matches"
        );
    }

    #[test]
    fn string_matchers_accept_a_list_of_audiences() {
        let mut m = Metadata::default();
        m.set(
            ISTIO_AUTHN_NAMESPACE,
            "request.auth.audiences",
            serde_json::json!(["a", "b"]),
        );
        let aud = |a: &str| {
            matcher(
                &["request.auth.audiences"],
                ValueMatch::String(StringMatcher::exact(a)),
            )
        };
        assert!(m.matches(&aud("b")));
        assert!(!m.matches(&aud("c")));
    }
}
