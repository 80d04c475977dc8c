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

// The deprecated `append` is what says "overwrite" in these messages; `append_action`'s
// default would say "append", contrary to the documented default.
#[allow(deprecated)]
/// Decodes a `CheckResponse` message. A status other than OK denies; so does a denied HTTP
/// response.
pub fn decode_response(bytes: &[u8]) -> Result<CheckResponse, String> {
    let msg =
        auth::CheckResponse::decode(bytes).map_err(|e| format!("invalid CheckResponse: {e}"))?;
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

#[allow(deprecated)]
/// Encodes a `CheckResponse` (for test authorization servers).
pub fn encode_response(r: &CheckResponse) -> Vec<u8> {
    use auth::check_response::HttpResponse;
    let options = |list: &[HeaderToSet]| -> Vec<core::HeaderValueOption> {
        list.iter()
            .map(|h| core::HeaderValueOption {
                header: Some(core::HeaderValue {
                    key: h.name.clone(),
                    value: h.value.clone(),
                    ..Default::default()
                }),
                append: Some(envoy_types::pb::google::protobuf::BoolValue { value: h.append }),
                ..Default::default()
            })
            .collect()
    };
    let msg = match r {
        CheckResponse::Allowed {
            headers,
            headers_to_remove,
            response_headers,
        } => auth::CheckResponse {
            status: Some(Default::default()),
            http_response: Some(HttpResponse::OkResponse(auth::OkHttpResponse {
                headers: options(headers),
                headers_to_remove: headers_to_remove.clone(),
                response_headers_to_add: options(response_headers),
                ..Default::default()
            })),
            ..Default::default()
        },
        CheckResponse::Denied {
            status,
            headers,
            body,
        } => auth::CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(auth::DeniedHttpResponse {
                status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus {
                    code: i32::from(*status),
                }),
                headers: options(headers),
                body: body.clone(),
            })),
            ..Default::default()
        },
    };
    msg.encode_to_vec()
}

/// Decodes a `CheckRequest` into what a test authorization server looks at: method, path,
/// host, headers and the source principal.
pub fn decode_request(bytes: &[u8]) -> Result<DecodedCheck, String> {
    let msg =
        auth::CheckRequest::decode(bytes).map_err(|e| format!("invalid CheckRequest: {e}"))?;
    let attrs = msg.attributes.unwrap_or_default();
    let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
    Ok(DecodedCheck {
        method: http.method,
        path: http.path,
        host: http.host,
        headers: http.headers.into_iter().collect(),
        source_principal: attrs.source.map(|s| s.principal).unwrap_or_default(),
    })
}

/// A decoded `CheckRequest`, the parts tests look at.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct DecodedCheck {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Authority.
    pub host: String,
    /// Headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// The caller's principal.
    pub source_principal: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        let req = CheckRequest {
            method: "POST",
            path: "/a?b=c",
            host: "details:9080",
            headers: vec![("x-ext-authz", "allow".into())],
            source_principal: Some("spiffe://cluster.local/ns/default/sa/productpage"),
            ..CheckRequest::default()
        };
        let d = decode_request(&encode_request(&req)).unwrap();
        assert_eq!((d.method.as_str(), d.path.as_str()), ("POST", "/a?b=c"));
        assert_eq!(d.headers["x-ext-authz"], "allow");
        assert_eq!(
            d.source_principal,
            "spiffe://cluster.local/ns/default/sa/productpage"
        );
        let denied = CheckResponse::Denied {
            status: 401,
            headers: vec![HeaderToSet {
                name: "x-why".into(),
                value: "no".into(),
                append: false,
            }],
            body: "denied".into(),
        };
        assert_eq!(decode_response(&encode_response(&denied)).unwrap(), denied);
        let ok = CheckResponse::Allowed {
            headers: vec![HeaderToSet {
                name: "x-user".into(),
                value: "alice".into(),
                append: false,
            }],
            headers_to_remove: vec!["x-secret".into()],
            response_headers: vec![],
        };
        assert_eq!(decode_response(&encode_response(&ok)).unwrap(), ok);
    }
}
