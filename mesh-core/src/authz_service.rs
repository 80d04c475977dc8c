//! The wire form of Envoy's external authorization service
//! (`envoy.service.auth.v3.Authorization/Check`), which Istio's CUSTOM AuthorizationPolicies
//! call through the `ext_authz` filter's gRPC service.
//!
//! Like `xds::translate`, this is a seam where protobuf stops: the data path builds a plain
//! [`CheckRequest`], gets bytes to frame as a gRPC message, and reads the answer back as a
//! plain [`CheckResponse`].
//!
//! ```
//! use mesh_core::authz_service::{CheckRequest, CheckResponse, decode_response, encode_request};
//! let req = CheckRequest {
//!     source: "10.0.0.1:40000".parse().unwrap(),
//!     destination: "10.0.0.2:9080".parse().unwrap(),
//!     method: "GET",
//!     path: "/details/0",
//!     host: "details:9080",
//!     ..CheckRequest::default()
//! };
//! let bytes = encode_request(&req);
//! assert!(!bytes.is_empty());
//! // An empty answer (status OK, no HTTP part) allows the request.
//! assert!(matches!(decode_response(&[]), Ok(CheckResponse::Allowed { .. })));
//! ```

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::auth::v3 as auth;
use prost::Message;

/// What the authorization service is told about a request.
#[derive(Clone, Debug)]
pub struct CheckRequest<'a> {
    /// The caller's address.
    pub source: SocketAddr,
    /// The caller's verified identity (SPIFFE ID), if any.
    pub source_principal: Option<&'a str>,
    /// The address the request arrived on.
    pub destination: SocketAddr,
    /// This workload's identity, if it has one.
    pub destination_principal: Option<&'a str>,
    /// The request id (`x-request-id`).
    pub id: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path with its query.
    pub path: &'a str,
    /// The authority.
    pub host: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// Request headers (lower-case names; repeated headers joined with `,`).
    pub headers: Vec<(&'a str, String)>,
    /// The TLS server name the caller asked for.
    pub sni: Option<&'a str>,
}

impl Default for CheckRequest<'_> {
    fn default() -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            source: unspecified,
            source_principal: None,
            destination: unspecified,
            destination_principal: None,
            id: "",
            method: "GET",
            path: "/",
            host: "",
            scheme: "http",
            protocol: "HTTP/1.1",
            headers: Vec::new(),
            sni: None,
        }
    }
}

/// A header the service asks to set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderToSet {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
    /// Append to an existing value rather than replace it.
    pub append: bool,
}

/// The service's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckResponse {
    /// Let the request through, with these changes.
    Allowed {
        /// Headers set on the request to the application.
        headers: Vec<HeaderToSet>,
        /// Headers removed from it.
        headers_to_remove: Vec<String>,
        /// Headers added to the response to the caller.
        response_headers: Vec<HeaderToSet>,
    },
    /// Refuse it with this answer.
    Denied {
        /// HTTP status (403 unless the service says otherwise).
        status: u16,
        /// Headers of the answer.
        headers: Vec<HeaderToSet>,
        /// Body of the answer.
        body: String,
    },
}

/// Encodes a `CheckRequest` message.
pub fn encode_request(r: &CheckRequest<'_>) -> Vec<u8> {
    use auth::attribute_context as ac;
    let peer = |addr: SocketAddr, principal: Option<&str>| ac::Peer {
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        principal: principal.unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let query = r.path.split_once('?').map_or("", |(_, q)| q);
    let msg = auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(peer(r.source, r.source_principal)),
            destination: Some(peer(r.destination, r.destination_principal)),
            request: Some(ac::Request {
                http: Some(ac::HttpRequest {
                    id: r.id.to_owned(),
                    method: r.method.to_owned(),
                    headers: r
                        .headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), v.clone()))
                        .collect(),
                    // Envoy sends the path with its query here, and the query alone too.
                    path: r.path.to_owned(),
                    host: r.host.to_owned(),
                    scheme: r.scheme.to_owned(),
                    query: query.to_owned(),
                    protocol: r.protocol.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            tls_session: r.sni.map(|sni| ac::TlsSession {
                sni: sni.to_owned(),
            }),
            ..Default::default()
        }),
    };
    msg.encode_to_vec()
}

/// An authorization service's answer that does not decode as a `CheckResponse`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("invalid CheckResponse: {0}")]
pub struct InvalidCheckResponse(#[source] pub prost::DecodeError);

// The deprecated `append` is what says "overwrite" in these messages; `append_action`'s
// default would say "append", contrary to the documented default.
#[allow(deprecated)]
/// Decodes a `CheckResponse` message. A status other than OK denies; so does a denied HTTP
/// response.
pub fn decode_response(bytes: &[u8]) -> Result<CheckResponse, InvalidCheckResponse> {
    let msg = auth::CheckResponse::decode(bytes).map_err(InvalidCheckResponse)?;
    let code = msg.status.as_ref().map_or(0, |s| s.code);
    let headers = |list: &[core::HeaderValueOption]| -> Vec<HeaderToSet> {
        list.iter()
            .filter_map(|h| {
                let hv = h.header.as_ref()?;
                // `append` defaults to false in these messages (Envoy's documented rule).
                let append = h.append.is_some_and(|b| b.value);
                Some(HeaderToSet {
                    name: hv.key.to_ascii_lowercase(),
                    value: if hv.value.is_empty() {
                        String::from_utf8_lossy(&hv.raw_value).into_owned()
                    } else {
                        hv.value.clone()
                    },
                    append,
                })
            })
            .collect()
    };
    use auth::check_response::HttpResponse;
    Ok(match (code, msg.http_response) {
        (0, Some(HttpResponse::OkResponse(ok))) => CheckResponse::Allowed {
            headers: headers(&ok.headers),
            headers_to_remove: ok.headers_to_remove,
            response_headers: headers(&ok.response_headers_to_add),
        },
        (0, None) => CheckResponse::Allowed {
            headers: Vec::new(),
            headers_to_remove: Vec::new(),
            response_headers: Vec::new(),
        },
        (_, Some(HttpResponse::DeniedResponse(d))) => CheckResponse::Denied {
            status: d
                .status
                .map(|s| s.code)
                .filter(|c| (100..600).contains(c))
                .map_or(403, |c| c as u16),
            headers: headers(&d.headers),
            body: d.body,
        },
        (0, Some(HttpResponse::ErrorResponse(_))) | (_, _) => CheckResponse::Denied {
            status: 403,
            headers: Vec::new(),
            body: String::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_attributes() {
        let req = CheckRequest {
            method: "POST",
            path: "/a?b=c",
            host: "details:9080",
            headers: vec![("x-ext-authz", "allow".into())],
            source_principal: Some("spiffe://cluster.local/ns/default/sa/productpage"),
            ..CheckRequest::default()
        };
        let msg = auth::CheckRequest::decode(encode_request(&req).as_slice()).unwrap();
        let attrs = msg.attributes.unwrap();
        let http = attrs.request.unwrap().http.unwrap();
        assert_eq!(
            (http.method.as_str(), http.path.as_str()),
            ("POST", "/a?b=c")
        );
        assert_eq!(
            (http.host.as_str(), http.query.as_str()),
            ("details:9080", "b=c")
        );
        assert_eq!(http.headers["x-ext-authz"], "allow");
        assert_eq!(
            attrs.source.unwrap().principal,
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
    }

    #[allow(deprecated)]
    fn header(k: &str, v: &str, append: bool) -> core::HeaderValueOption {
        core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }),
            append: Some(envoy_types::pb::google::protobuf::BoolValue { value: append }),
            ..Default::default()
        }
    }

    #[test]
    fn answers_are_read_as_decisions() {
        use auth::check_response::HttpResponse;
        let denied = auth::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
                headers: vec![header("X-Why", "no", false)],
                body: "denied".into(),
            })),
            ..Default::default()
        };
        assert_eq!(
            decode_response(&denied.encode_to_vec()).unwrap(),
            CheckResponse::Denied {
                status: 401,
                headers: vec![HeaderToSet {
                    name: "x-why".into(),
                    value: "no".into(),
                    append: false,
                }],
                body: "denied".into(),
            }
        );
        let ok = auth::CheckResponse {
            status: Some(Default::default()),
            http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                headers: vec![header("x-user", "alice", true)],
                headers_to_remove: vec!["x-secret".into()],
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            decode_response(&ok.encode_to_vec()).unwrap(),
            CheckResponse::Allowed {
                headers: vec![HeaderToSet {
                    name: "x-user".into(),
                    value: "alice".into(),
                    append: true,
                }],
                headers_to_remove: vec!["x-secret".into()],
                response_headers: vec![],
            }
        );
        // A non-OK status without an HTTP part still denies.
        let bare = auth::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            decode_response(&bare.encode_to_vec()),
            Ok(CheckResponse::Denied { status: 403, .. })
        ));
    }
}
