//! Request authentication: Envoy's `jwt_authn` filter, which istiod and mesh-control build
//! from RequestAuthentication.
//!
//! Each provider names an issuer, its keys (inline or fetched), where its tokens travel
//! (headers with a prefix, query parameters; `Authorization: Bearer` and `access_token` by
//! default) and what to do with a verified token (forward it or strip it, copy claims to
//! headers, publish the payload). The first rule whose route match fits the request gives the
//! requirement; a route may name another one or turn the filter off.
//!
//! Outcomes follow Envoy: a missing token fails a requirement that names a provider (401
//! `Jwt is missing`) but passes `allow_missing`, which is what Istio builds, so a request
//! without a token goes on and an AuthorizationPolicy may still require a principal (403);
//! a token that is present and bad is always refused (401, or 403 for an audience the
//! provider does not accept).
//!
//! A verified token is published as dynamic metadata for the RBAC rules that follow: under
//! `istio_authn`, `request.auth.principal` (`iss/sub`), `request.auth.audiences`,
//! `request.auth.presenter` and `request.auth.claims` (every claim as a list of strings), the
//! keys Istio's authorization rules read; and the whole payload under
//! `envoy.filters.http.jwt_authn`, named by the provider's `payload_in_metadata`. The
//! application gets it as a [`VerifiedJwt`] request extension.

use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use mesh_core::model::{
    JwksSource, JwtConfig, JwtPerRoute, JwtProvider, JwtRequirement, RequestView,
};
use serde_json::Value;

use super::jwks::{KeySet, RemoteJwks};
use super::metadata::{ISTIO_AUTHN_NAMESPACE, JWT_NAMESPACE, Metadata};

/// A token that passed the request's JWT requirement, in the request's extensions.
///
/// ```
/// # fn handler(req: http::Request<()>) {
/// if let Some(jwt) = req.extensions().get::<mesh_tower::server::VerifiedJwt>() {
///     println!("{} says {}", jwt.issuer, jwt.claims["sub"]);
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifiedJwt {
    /// The provider that verified it.
    pub provider: Arc<str>,
    /// Its `iss`.
    pub issuer: String,
    /// Its payload.
    pub claims: Value,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwtError {
    Missing,
    Malformed,
    UnknownIssuer,
    NoMatchingKey,
    KeysUnavailable,
    BadSignature,
    Expired,
    NotYetValid,
    AudienceNotAllowed,
    /// The route names a requirement the filter does not have: refused, as Envoy does,
    /// rather than let through unverified.
    UnknownRequirement,
}

impl JwtError {
    /// Envoy's wording.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Self::Missing => "Jwt is missing",
            Self::Malformed => "Jwt is not in the form of Header.Payload.Signature",
            Self::UnknownIssuer => "Jwt issuer is not configured",
            Self::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::KeysUnavailable => "Jwks remote fetch is failed",
            Self::BadSignature => "Jwt verification fails",
            Self::Expired => "Jwt is expired",
            Self::NotYetValid => "Jwt not yet valid",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::UnknownRequirement => "Jwt requirement of the route is not configured",
        }
    }

    /// 403 for a token of the wrong audience, 401 for the rest (Envoy's choice).
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::AudienceNotAllowed | Self::UnknownRequirement => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// Envoy's answer to `req`, refused for this reason.
    pub(crate) fn refusal<B>(&self, req: &http::Request<B>) -> Refusal {
        let realm = format!(
            "http://{}{}",
            RequestView::from_request(req).authority,
            req.uri().path()
        );
        Refusal {
            status: self.status(),
            message: self.message(),
            challenge: self.challenge(&realm),
        }
    }

    /// The `www-authenticate` challenge for `realm`.
    pub(crate) fn challenge(&self, realm: &str) -> Option<HeaderValue> {
        let v = match self {
            Self::Missing => format!("Bearer realm=\"{realm}\""),
            _ => format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
        };
        HeaderValue::from_str(&v).ok()
    }
}

/// How a refused request is answered.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: &'static str,
    /// `www-authenticate`.
    pub(crate) challenge: Option<HeaderValue>,
}

/// A configured `jwt_authn` filter.
pub(crate) struct JwtFilter {
    config: Arc<JwtConfig>,
    providers: Box<[Provider]>,
}

struct Provider {
    name: Arc<str>,
    config: Arc<JwtProvider>,
    keys: Keys,
}

enum Keys {
    Local(Result<Arc<KeySet>, String>),
    Remote(Result<Arc<RemoteJwks>, String>),
}

/// Where the remote key sets come from: one per URI, kept across configurations.
pub(crate) trait RemoteKeys {
    /// The shared remote set for this source.
    fn remote(&self, uri: &str, source: &JwksSource) -> Result<Arc<RemoteJwks>, String>;
}

impl JwtFilter {
    /// Prepares the filter: inline key sets are parsed now (a bad one is reported once and
    /// its provider refuses every token), remote ones come from `remote`.
    pub(crate) fn new(config: Arc<JwtConfig>, remote: &dyn RemoteKeys) -> Self {
        let providers = config
            .providers
            .iter()
            .map(|(name, p)| {
                let keys = match &p.jwks {
                    JwksSource::Local(json) => Keys::Local(KeySet::parse(json).map(Arc::new)),
                    source @ JwksSource::Remote { uri, .. } => Keys::Remote(remote.remote(uri, source)),
                };
                let broken = match &keys {
                    Keys::Local(Err(e)) | Keys::Remote(Err(e)) => Some(e),
                    _ => None,
                };
                if let Some(e) = broken {
                    tracing::error!(provider = %name, issuer = %p.issuer, error = %e, "JWT provider cannot verify tokens; its tokens are refused");
                }
                Provider {
                    name: name.clone(),
                    config: p.clone(),
                    keys,
                }
            })
            .collect();
        Self { config, providers }
    }

    /// Authenticates a request: `Ok` to let it through (with what verified tokens say
    /// published in `metadata` and the request), `Err` to refuse it.
    pub(crate) async fn authenticate<B>(
        &self,
        req: &mut http::Request<B>,
        per_route: Option<&JwtPerRoute>,
        metadata: &mut Metadata,
    ) -> Result<(), JwtError> {
        let requirement = match per_route {
            Some(JwtPerRoute::Disabled) => return Ok(()),
            Some(JwtPerRoute::RequirementName(n)) => Some(
                self.config
                    .requirement_map
                    .iter()
                    .find(|(name, _)| name == n)
                    .map(|(_, r)| r)
                    .ok_or(JwtError::UnknownRequirement)?,
            ),
            None => {
                let view = RequestView::from_request(req);
                let sample = fastrand::u32(0..1_000_000);
                self.config
                    .rules
                    .iter()
                    .find(|(m, _)| m.matches(&view, sample))
                    .map(|(_, r)| r)
            }
        };
        let Some(requirement) = requirement else {
            return Ok(());
        };
        // Each provider looks for its token; most requests carry none and stop here.
        let tokens: Vec<(usize, Token)> = self
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| extract(&p.config, req).map(|t| (i, t)))
            .collect();
        let mut results: Vec<Option<Result<Value, JwtError>>> = vec![None; self.providers.len()];
        for (i, token) in &tokens {
            results[*i] = Some(self.providers[*i].verify(&token.value).await);
        }
        let ctx = Evaluation {
            filter: self,
            results: &results,
        };
        ctx.satisfies(requirement)?;
        self.publish(req, &tokens, &results, metadata);
        Ok(())
    }

    /// Publishes verified tokens (by issuer, as Istio orders them) and applies their
    /// providers' header settings.
    fn publish<B>(
        &self,
        req: &mut http::Request<B>,
        tokens: &[(usize, Token)],
        results: &[Option<Result<Value, JwtError>>],
        metadata: &mut Metadata,
    ) {
        let mut verified: Vec<(&Provider, &Token, &Value)> = tokens
            .iter()
            .filter_map(|(i, t)| match &results[*i] {
                Some(Ok(claims)) => Some((&self.providers[*i], t, claims)),
                _ => None,
            })
            .collect();
        verified.sort_by(|a, b| a.0.config.issuer.cmp(&b.0.config.issuer));
        for (p, token, claims) in &verified {
            let cfg = &p.config;
            if let Some(key) = &cfg.payload_in_metadata {
                metadata.set(JWT_NAMESPACE, &**key, (*claims).clone());
            }
            if let Some(h) = &cfg.forward_payload_header
                && let Some(payload) = token.value.split('.').nth(1)
                && let Ok(v) = HeaderValue::from_str(payload)
            {
                req.headers_mut().insert(h.clone(), v);
            }
            for (claim, header) in cfg.claim_to_headers.iter() {
                if let Some(v) = claim_path(claims, claim).and_then(claim_header_value) {
                    req.headers_mut().insert(header.clone(), v);
                }
            }
            if !cfg.forward
                && let Location::Header(name) = &token.location
            {
                req.headers_mut().remove(name);
            }
        }
        if let Some((p, _, claims)) = verified.first() {
            istio_authn(metadata, claims);
            req.extensions_mut().insert(VerifiedJwt {
                provider: p.name.clone(),
                issuer: p.config.issuer.to_string(),
                claims: (*claims).clone(),
            });
        }
    }
}

/// The keys Istio's authorization rules read, from a verified payload.
fn istio_authn(metadata: &mut Metadata, claims: &Value) {
    let text = |k: &str| claims.get(k).and_then(Value::as_str);
    if let (Some(iss), Some(sub)) = (text("iss"), text("sub")) {
        metadata.set(
            ISTIO_AUTHN_NAMESPACE,
            "request.auth.principal",
            Value::String(format!("{iss}/{sub}")),
        );
    }
    if let Some(aud) = claims.get("aud") {
        metadata.set(ISTIO_AUTHN_NAMESPACE, "request.auth.audiences", aud.clone());
    }
    if let Some(azp) = text("azp") {
        metadata.set(
            ISTIO_AUTHN_NAMESPACE,
            "request.auth.presenter",
            Value::String(azp.to_owned()),
        );
    }
    // Every claim as a list of strings, so `request.auth.claims[groups]` matches one element
    // whether the token carries a string or a list.
    let lists: serde_json::Map<String, Value> = claims
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let items = match v {
                Value::Array(items) => items.iter().filter_map(scalar).collect(),
                other => scalar(other).into_iter().collect(),
            };
            (k.clone(), Value::Array(items))
        })
        .collect();
    metadata.set(
        ISTIO_AUTHN_NAMESPACE,
        "request.auth.claims",
        Value::Object(lists),
    );
}

fn scalar(v: &Value) -> Option<Value> {
    match v {
        Value::String(_) => Some(v.clone()),
        Value::Number(n) => Some(Value::String(n.to_string())),
        Value::Bool(b) => Some(Value::String(b.to_string())),
        _ => None,
    }
}

/// A claim by name; `a.b` reaches into nested objects (Envoy's claim paths).
fn claim_path<'a>(claims: &'a Value, name: &str) -> Option<&'a Value> {
    claims
        .get(name)
        .or_else(|| name.split('.').try_fold(claims, |v, k| v.get(k)))
}

fn claim_header_value(v: &Value) -> Option<HeaderValue> {
    match v {
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
        Value::Bool(b) => Some(HeaderValue::from_static(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// A requirement checked against the request's verification results.
struct Evaluation<'a> {
    filter: &'a JwtFilter,
    results: &'a [Option<Result<Value, JwtError>>],
}

impl Evaluation<'_> {
    fn provider_result(&self, name: &str) -> Result<&Value, JwtError> {
        let i = self
            .filter
            .providers
            .iter()
            .position(|p| &*p.name == name)
            .ok_or(JwtError::UnknownIssuer)?;
        match &self.results[i] {
            None => Err(JwtError::Missing),
            Some(r) => r.as_ref().map_err(Clone::clone),
        }
    }

    fn satisfies(&self, r: &JwtRequirement) -> Result<(), JwtError> {
        match r {
            JwtRequirement::Provider(name) => self.provider_result(name).map(drop),
            JwtRequirement::ProviderAudiences(name, audiences) => {
                let claims = self.provider_result(name)?;
                if audience_allowed(claims, audiences) {
                    Ok(())
                } else {
                    Err(JwtError::AudienceNotAllowed)
                }
            }
            JwtRequirement::Any(list) => {
                let mut first_failure = None;
                for r in list.iter() {
                    match self.satisfies(r) {
                        Ok(()) => return Ok(()),
                        // A token that failed says more than one that is missing.
                        Err(JwtError::Missing) => {}
                        Err(e) => {
                            first_failure.get_or_insert(e);
                        }
                    }
                }
                Err(first_failure.unwrap_or(JwtError::Missing))
            }
            JwtRequirement::All(list) => list.iter().try_for_each(|r| self.satisfies(r)),
            JwtRequirement::AllowMissingOrFailed => Ok(()),
            JwtRequirement::AllowMissing => {
                // Passes when no token is present; a present one must be valid.
                match self.results.iter().flatten().find_map(|r| r.as_ref().err()) {
                    Some(e) if !self.results.iter().flatten().any(Result::is_ok) => Err(e.clone()),
                    _ => Ok(()),
                }
            }
        }
    }
}

fn audience_allowed(claims: &Value, allowed: &[Box<str>]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match claims.get("aud") {
        Some(Value::String(a)) => allowed.iter().any(|x| **x == *a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| allowed.iter().any(|x| &**x == a)),
        _ => false,
    }
}

impl Provider {
    async fn verify(&self, token: &str) -> Result<Value, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
        let unverified = payload(token).ok_or(JwtError::Malformed)?;
        let cfg = &self.config;
        if !cfg.issuer.is_empty()
            && unverified.get("iss").and_then(Value::as_str) != Some(&*cfg.issuer)
        {
            return Err(JwtError::UnknownIssuer);
        }
        let keys = match &self.keys {
            Keys::Local(Ok(k)) => k.clone(),
            Keys::Local(Err(_)) => return Err(JwtError::NoMatchingKey),
            Keys::Remote(Ok(r)) => r.keys().await.map_err(|_| JwtError::KeysUnavailable)?,
            Keys::Remote(Err(_)) => return Err(JwtError::KeysUnavailable),
        };
        let mut validation = Validation::new(header.alg);
        validation.required_spec_claims.clear();
        validation.leeway = cfg.clock_skew.as_secs();
        validation.validate_nbf = true;
        // Issuer and audience are Envoy's checks, done here with its outcomes.
        validation.validate_aud = false;
        let mut last = JwtError::NoMatchingKey;
        for key in keys.candidates(header.kid.as_deref(), header.alg) {
            match jsonwebtoken::decode::<Value>(token, key, &validation) {
                Ok(data) => {
                    if !audience_allowed(&data.claims, &cfg.audiences) {
                        return Err(JwtError::AudienceNotAllowed);
                    }
                    return Ok(data.claims);
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => return Err(JwtError::Expired),
                        K::ImmatureSignature => return Err(JwtError::NotYetValid),
                        K::InvalidSignature => JwtError::BadSignature,
                        K::InvalidAlgorithm => JwtError::NoMatchingKey,
                        _ => JwtError::Malformed,
                    };
                }
            }
        }
        if header.alg == Algorithm::HS256 && last == JwtError::NoMatchingKey {
            tracing::debug!(provider = %self.name, "HMAC token with no symmetric key in the JWKS");
        }
        Err(last)
    }
}

/// The payload of a token, unverified (to read its issuer before choosing keys).
fn payload(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, body, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A token found in a request, and where.
struct Token {
    value: String,
    location: Location,
}

enum Location {
    Header(HeaderName),
    Query,
    /// A cookie: left in place once verified, as Envoy does.
    Cookie,
}

/// The provider's token in the request, from its locations in order: headers, query
/// parameters, cookies (Envoy's default when none is configured: `Authorization: Bearer …`,
/// then the `access_token` query parameter).
fn extract<B>(p: &JwtProvider, req: &http::Request<B>) -> Option<Token> {
    if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
        return header_token(req, &http::header::AUTHORIZATION, "Bearer ")
            .or_else(|| query_token(req, "access_token"));
    }
    p.from_headers
        .iter()
        .find_map(|(name, prefix)| header_token(req, name, prefix))
        .or_else(|| {
            p.from_params
                .iter()
                .find_map(|param| query_token(req, param))
        })
        .or_else(|| p.from_cookies.iter().find_map(|c| cookie_token(req, c)))
}

/// The token in cookie `name`, from the first `Cookie` header that has it.
fn cookie_token<B>(req: &http::Request<B>, name: &str) -> Option<Token> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            // One enclosing pair of quotes is removed, as Envoy's cookie parser does.
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim() == name && !v.is_empty()).then(|| Token {
                value: v.to_owned(),
                location: Location::Cookie,
            })
        })
}

/// The token in header `name` after `prefix` (ASCII case aside), up to a space or comma.
fn header_token<B>(req: &http::Request<B>, name: &HeaderName, prefix: &str) -> Option<Token> {
    req.headers().get_all(name).iter().find_map(|value| {
        let value = value.to_str().ok()?;
        let rest = if prefix.is_empty() {
            value
        } else if value.len() >= prefix.len()
            && value.is_char_boundary(prefix.len())
            && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        {
            &value[prefix.len()..]
        } else {
            return None;
        };
        let token = rest
            .trim()
            .split([',', ' '])
            .next()
            .filter(|t| !t.is_empty())?;
        Some(Token {
            value: token.to_owned(),
            location: Location::Header(name.clone()),
        })
    })
}

/// The token in query parameter `param`.
fn query_token<B>(req: &http::Request<B>, param: &str) -> Option<Token> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == param && !v.is_empty()).then(|| Token {
            value: v.to_owned(),
            location: Location::Query,
        })
    })
}

#[cfg(test)]
mod tests;
