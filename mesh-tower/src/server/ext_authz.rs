//! External authorization: Envoy's `ext_authz` filter, which Istio's CUSTOM
//! AuthorizationPolicies configure through the mesh config's extension providers.
//!
//! The filter asks an authorization service about each request it is enabled for (Istio
//! enables it only for requests its CUSTOM policies select: the RBAC filter before it marks
//! them in the dynamic metadata). The service is reached through the mesh like any outbound
//! call, so the call gets the mesh's routing, balancing and mTLS:
//!
//! - **HTTP**: the request's method, path (after `path_prefix`), host, `authorization` and
//!   the allowed headers go to the service, with no body; `200` allows the request, anything
//!   else is the denial the caller receives (status, body and the allowed headers).
//! - **gRPC**: `envoy.service.auth.v3.Authorization/Check` with the request's attributes;
//!   an OK status allows it, with the headers the service sets or removes.
//!
//! When the service cannot answer (connection failure, timeout, a broken answer) the request
//! is denied with `status_on_error` (403), unless the provider says `failOpen`. Denials carry
//! the response flag `UAEX`.
//!
//! Request bodies are not sent (`with_request_body` is reported once at configuration time):
//! the application receives the body as it streams, untouched.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_core::authz_service::{self, CheckRequest, CheckResponse, HeaderToSet};
use mesh_core::model::{ExtAuthz, ExtAuthzService, StringMatcher};

use super::{Caller, Reply};
use crate::MeshClient;
use crate::flags::ResponseFlags;
use crate::respond::{ResponseInfo, grpc_status};
use crate::rules::metadata::Metadata;

/// A configured ext_authz filter.
pub(crate) struct ExtAuthzFilter {
    config: Arc<ExtAuthz>,
    client: MeshClient,
    /// The cluster every check is sent to (`server_uri.cluster`, `envoy_grpc.cluster_name`).
    cluster: Arc<str>,
    service: Service,
}

enum Service {
    Http { base: String },
    Grpc { uri: http::Uri },
}

/// What the filter decided.
pub(crate) enum Decision {
    /// Not checked, or allowed: go on, with these changes.
    Continue(Changes),
    /// Refused with this answer.
    Deny(Reply),
}

/// Header changes an allowing answer asks for.
#[derive(Default)]
pub(crate) struct Changes {
    pub(crate) upstream: Vec<(HeaderName, HeaderValue, bool)>,
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) downstream: Vec<(HeaderName, HeaderValue, bool)>,
}

impl ExtAuthzFilter {
    /// Prepares the filter; `Err` names what makes it unusable (its requests are then denied).
    pub(crate) fn new(config: Arc<ExtAuthz>, client: MeshClient) -> Result<Self, String> {
        let cluster = match &config.service {
            ExtAuthzService::Http { cluster, .. } | ExtAuthzService::Grpc { cluster, .. } => {
                cluster.clone()
            }
        };
        let service = match &config.service {
            ExtAuthzService::Http { cluster, uri, .. } => {
                let authority = authority_of_cluster(cluster)
                    .or_else(|| {
                        uri.parse::<http::Uri>()
                            .ok()
                            .and_then(|u| u.authority().map(ToString::to_string))
                    })
                    .ok_or_else(|| {
                        format!("cannot tell where the authorization service is ({uri}, cluster {cluster})")
                    })?;
                Service::Http {
                    base: format!("http://{authority}"),
                }
            }
            ExtAuthzService::Grpc { cluster, authority } => {
                let target = authority_of_cluster(cluster)
                    .or_else(|| authority.as_deref().map(str::to_owned))
                    .ok_or_else(|| {
                        format!(
                            "cannot tell where the authorization service of cluster {cluster:?} is"
                        )
                    })?;
                let uri = format!("http://{target}/envoy.service.auth.v3.Authorization/Check")
                    .parse()
                    .map_err(|e| format!("authorization service {target:?}: {e}"))?;
                Service::Grpc { uri }
            }
        };
        if config.with_request_body.is_some() {
            tracing::warn!(
                "ext_authz with_request_body is not supported: checks are sent without the request body"
            );
        }
        Ok(Self {
            config,
            client,
            cluster,
            service,
        })
    }

    /// Checks a request, if the filter is enabled for it.
    pub(crate) async fn check<B>(
        &self,
        req: &Request<B>,
        caller: &Caller<'_>,
        metadata: &Metadata,
        grpc: bool,
    ) -> Decision {
        let c = &self.config;
        if c.enabled_metadata
            .as_ref()
            .is_some_and(|m| !metadata.matches(m))
            || c.filter_enabled
                .is_some_and(|f| !f.hit(fastrand::u32(0..1_000_000)))
        {
            return Decision::Continue(Changes::default());
        }
        let outcome = tokio::time::timeout(c.timeout, async {
            match &self.service {
                Service::Http { base } => self.check_http(base, req).await,
                Service::Grpc { uri } => self.check_grpc(uri, req, caller).await,
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {:?}", c.timeout)));
        match outcome {
            Ok(d) => d.into_decision(grpc),
            Err(why) if c.failure_mode_allow => {
                tracing::warn!(error = %why, "authorization service failed; allowing (failure_mode_allow)");
                Decision::Continue(Changes::default())
            }
            Err(why) => {
                tracing::warn!(error = %why, "authorization service failed; denying");
                Decision::Deny(Reply::new(
                    c.status_on_error,
                    "",
                    grpc,
                    ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
                ))
            }
        }
    }

    async fn check_http<B>(&self, base: &str, req: &Request<B>) -> Result<Answer, String> {
        let c = &self.config;
        let ExtAuthzService::Http { path_prefix, .. } = &c.service else {
            unreachable!("an HTTP service");
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut check = Request::builder()
            .method(req.method().clone())
            .uri(format!("{base}{path_prefix}{path}"));
        let host = mesh_core::model::authority_of(req);
        if !host.is_empty() {
            check = check.header(http::header::HOST, host);
        }
        for (name, value) in req.headers() {
            // Envoy always sends these, and the allowed ones.
            let always = name == http::header::AUTHORIZATION;
            if always
                || (name != http::header::HOST && any_matches(&c.allowed_headers, name.as_str()))
            {
                check = check.header(name, value);
            }
        }
        for (k, v) in c.headers_to_add.iter() {
            check = check.header(k, v);
        }
        let check = check
            .header(http::header::CONTENT_LENGTH, "0")
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| format!("building the check: {e}"))?;
        let rsp = self
            .client
            .send_to_cluster(&self.cluster, check)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(info) = ResponseInfo::of(&rsp)
            && local_failure(info.flags)
        {
            return Err(format!(
                "authorization service unreachable ({}, flags {})",
                rsp.status(),
                info.flags
            ));
        }
        let status = rsp.status();
        let headers = rsp.headers().clone();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status == StatusCode::OK {
            let upstream = pick(&headers, &c.allowed_upstream_headers, false);
            let downstream = pick(&headers, &c.allowed_client_headers_on_success, false);
            return Ok(Answer::Allow(Changes {
                upstream,
                remove: Vec::new(),
                downstream,
            }));
        }
        // A denial: the caller sees the service's answer, with the allowed headers (all of
        // them but the host and framing ones when none are listed).
        let headers = if c.allowed_client_headers.is_empty() {
            headers
                .iter()
                .filter(|(n, _)| {
                    ![
                        http::header::HOST,
                        http::header::CONTENT_LENGTH,
                        http::header::TRANSFER_ENCODING,
                    ]
                    .contains(n)
                })
                .map(|(n, v)| (n.clone(), v.clone(), true))
                .collect()
        } else {
            pick(&headers, &c.allowed_client_headers, true)
        };
        Ok(Answer::Deny {
            status,
            headers,
            body,
        })
    }

    async fn check_grpc<B>(
        &self,
        uri: &http::Uri,
        req: &Request<B>,
        caller: &Caller<'_>,
    ) -> Result<Answer, String> {
        let c = &self.config;
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let host = mesh_core::model::authority_of(req);
        let mut headers: Vec<(&str, String)> = Vec::new();
        for name in req.headers().keys() {
            if c.allowed_headers.is_empty() || any_matches(&c.allowed_headers, name.as_str()) {
                let joined = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(",");
                headers.push((name.as_str(), joined));
            }
        }
        let protocol = match req.version() {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        let message = authz_service::encode_request(&CheckRequest {
            source: caller.peer.addr,
            source_principal: caller.peer.spiffe_id.as_ref().map(|id| id.as_str()),
            destination: caller.local,
            destination_principal: None,
            id: req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            method: req.method().as_str(),
            path,
            host,
            scheme: if caller.peer.tls { "https" } else { "http" },
            protocol,
            headers,
            sni: caller.sni,
        });
        let mut frame = BytesMut::with_capacity(5 + message.len());
        frame.put_u8(0);
        frame.put_u32(message.len() as u32);
        frame.put_slice(&message);
        let mut call = Request::post(uri.clone())
            .version(http::Version::HTTP_2)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header("grpc-timeout", format!("{}m", c.timeout.as_millis().max(1)))
            .body(Full::new(frame.freeze()))
            .map_err(|e| format!("building the check: {e}"))?;
        for (k, v) in c.headers_to_add.iter() {
            call.headers_mut().append(k.clone(), v.clone());
        }
        let rsp = self
            .client
            .send_to_cluster(&self.cluster, call)
            .await
            .map_err(|e| e.to_string())?;
        if rsp.status() != StatusCode::OK {
            return Err(format!(
                "authorization service answered HTTP {}",
                rsp.status()
            ));
        }
        let head_status = grpc_status(rsp.headers());
        let collected = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        let status = collected.trailers().and_then(grpc_status).or(head_status);
        match status {
            Some(0) => {}
            Some(code) => return Err(format!("authorization service answered gRPC status {code}")),
            None => return Err("authorization service answered without a gRPC status".into()),
        }
        let mut body = collected.to_bytes();
        if body.len() < 5 || body[0] != 0 {
            return Err("authorization service sent no (uncompressed) message".into());
        }
        body.advance(1);
        let len = body.get_u32() as usize;
        if body.len() < len {
            return Err("authorization service sent a truncated message".into());
        }
        Ok(
            match authz_service::decode_response(&body[..len]).map_err(|e| e.to_string())? {
                CheckResponse::Allowed {
                    headers,
                    headers_to_remove,
                    response_headers,
                } => Answer::Allow(Changes {
                    upstream: convert(&headers),
                    remove: headers_to_remove
                        .iter()
                        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                        .collect(),
                    downstream: convert(&response_headers),
                }),
                CheckResponse::Denied {
                    status,
                    headers,
                    body,
                } => Answer::Deny {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                    headers: convert(&headers),
                    body: body.into(),
                },
                _ => Answer::Deny {
                    status: StatusCode::FORBIDDEN,
                    headers: Vec::new(),
                    body: Bytes::new(),
                },
            },
        )
    }
}

/// The authorization service's answer.
enum Answer {
    Allow(Changes),
    Deny {
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue, bool)>,
        body: Bytes,
    },
}

impl Answer {
    fn into_decision(self, grpc: bool) -> Decision {
        match self {
            Self::Allow(changes) => Decision::Continue(changes),
            Self::Deny {
                status,
                headers,
                body,
            } => {
                let mut reply = Reply::new(
                    status,
                    body,
                    grpc,
                    ResponseFlags::UNAUTHORIZED_EXTERNAL_SERVICE,
                );
                for (name, value, append) in headers {
                    reply.header(name, value, append);
                }
                Decision::Deny(reply)
            }
        }
    }
}

/// Local failures of the mesh client: the service was not reached.
fn local_failure(flags: ResponseFlags) -> bool {
    [
        ResponseFlags::NO_HEALTHY_UPSTREAM,
        ResponseFlags::UPSTREAM_CONNECTION_FAILURE,
        ResponseFlags::UPSTREAM_OVERFLOW,
        ResponseFlags::NO_ROUTE_FOUND,
        ResponseFlags::NO_CLUSTER_FOUND,
        ResponseFlags::UPSTREAM_REQUEST_TIMEOUT,
        ResponseFlags::UPSTREAM_REMOTE_RESET,
        ResponseFlags::UPSTREAM_CONNECTION_TERMINATION,
    ]
    .iter()
    .any(|f| flags.contains(*f))
}

fn any_matches(matchers: &[StringMatcher], name: &str) -> bool {
    matchers.iter().any(|m| m.matches(name))
}

/// The headers of `h` whose names match; `always_framing` adds the ones Envoy always passes
/// to a denied caller.
fn pick(
    h: &HeaderMap,
    matchers: &[StringMatcher],
    always_framing: bool,
) -> Vec<(HeaderName, HeaderValue, bool)> {
    h.iter()
        .filter(|(n, _)| {
            any_matches(matchers, n.as_str())
                || (always_framing
                    && [http::header::WWW_AUTHENTICATE, http::header::LOCATION].contains(n))
        })
        .map(|(n, v)| (n.clone(), v.clone(), false))
        .collect()
}

fn convert(list: &[HeaderToSet]) -> Vec<(HeaderName, HeaderValue, bool)> {
    list.iter()
        .filter_map(|h| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_str(&h.value).ok()?,
                h.append,
            ))
        })
        .collect()
}

/// `outbound|PORT|SUBSET|HOST` (istiod's and mesh-control's cluster names) → `HOST:PORT`,
/// the authority a check carries (it is sent to the cluster whatever its authority).
fn authority_of_cluster(cluster: &str) -> Option<String> {
    let mut parts = cluster.split('|');
    match (parts.next()?, parts.next()?, parts.next()?, parts.next()?) {
        ("outbound", port, _, host) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Some(format!("{host}:{port}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_cluster_names_give_the_service_authority() {
        assert_eq!(
            authority_of_cluster("outbound|8000||ext-authz.foo.svc.cluster.local").as_deref(),
            Some("ext-authz.foo.svc.cluster.local:8000")
        );
        assert_eq!(authority_of_cluster("ext-authz"), None);
    }
}
