//! JSON Web Key Sets: inline ones parsed once per configuration, remote ones fetched through
//! the mesh and cached (Envoy's `local_jwks` and `remote_jwks`).
//!
//! A remote set is fetched when a request first needs it and kept for `cache_duration`; once
//! stale, requests go on with the stale keys while one background fetch replaces them, so a
//! JWKS server's hiccup never stalls authentication of tokens it already vouched for. Keys
//! that could not be refreshed within a second `cache_duration` are no longer used: tokens
//! then fail (401) until a fetch succeeds, so how stale keys get is bounded by the
//! configuration. A failed fetch is retried by the next request that needs the keys, at most
//! once a second. An
//! The keys are fetched from the cluster `http_uri.cluster` names, as Envoy fetches them
//! (never by routing the URI's host: a route could send them elsewhere); an `https` URI only
//! over TLS that cluster's context verifies; a document over 1 MiB is refused.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::body::{BoxError, RspBody};

/// What fetches a remote key set (`remote_jwks`): an HTTP GET sent to the cluster the
/// provider names (`http_uri.cluster`), never routed by the URI's host.
/// [`MeshClient`](crate::MeshClient) is one; give it to
/// [`AuthenticationLayer::with_client`](crate::layer::AuthenticationLayer::with_client).
///
/// With `tls` (an `https` URI), the request must go out only over TLS that the cluster's
/// context verifies: a fetcher that cannot promise that fails the fetch instead.
pub trait FetchJwks: Send + Sync + 'static {
    /// Sends `req` to `cluster` and returns the answer's head and body.
    fn fetch(
        &self,
        cluster: Arc<str>,
        req: http::Request<http_body_util::Empty<bytes::Bytes>>,
        tls: bool,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<RspBody>, BoxError>> + Send>>;
}

/// Keys ready to verify signatures.
pub(crate) struct KeySet {
    keys: Box<[Key]>,
}

struct Key {
    kid: Option<String>,
    /// The algorithm the key is for, when the JWK says.
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| (&k.kid, k.alg)))
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS document. Keys of a kind this library cannot use are skipped; a document
    /// with no usable key is an error.
    pub(crate) fn parse(json: &str) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(json).map_err(|e| format!("invalid JWKS: {e}"))?;
        let keys: Box<[Key]> = set.keys.iter().filter_map(key).collect();
        if keys.is_empty() {
            return Err(format!(
                "the JWKS has no usable key ({} given)",
                set.keys.len()
            ));
        }
        Ok(Self { keys })
    }

    /// The keys that may have signed a token with this header: the one with its `kid`, or
    /// every key of the algorithm's family when the token names none.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a DecodingKey> + 'a {
        let family = alg.family();
        self.keys
            .iter()
            .filter(move |k| {
                k.family == family
                    && k.alg.is_none_or(|a| a == alg)
                    && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
            })
            .map(|k| &k.key)
    }
}

fn key(jwk: &Jwk) -> Option<Key> {
    let key = DecodingKey::from_jwk(jwk).ok()?;
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::try_from(a).ok());
    Some(Key {
        kid: jwk.common.key_id.clone(),
        alg,
        family: key.family(),
        key,
    })
}

/// A key set fetched over HTTP, shared by every configuration that names the same URI.
pub(crate) struct RemoteJwks {
    uri: http::Uri,
    /// The cluster the keys are fetched through (`http_uri.cluster`).
    cluster: Arc<str>,
    timeout: Duration,
    cache_duration: Duration,
    client: Arc<dyn FetchJwks>,
    state: watch::Sender<Option<Fetched>>,
    fetching: AtomicBool,
}

#[derive(Clone)]
struct Fetched {
    keys: Result<Arc<KeySet>, String>,
    /// When these keys (or this error) were fetched: a failed refresh keeps good keys with
    /// their own time, so their age, and how stale they may get, is never reset.
    fetched: Instant,
    /// The last attempt, to pace retries after a failure.
    tried: Instant,
}

/// What a cached key set may still be used for.
#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    /// Within `cache_duration`.
    Fresh,
    /// Expired, within one more `cache_duration`: used while a refresh runs.
    Stale,
    /// Older: not used; a request waits for a fetch, and fails closed without one.
    TooOld,
}

fn freshness(age: Duration, cache_duration: Duration) -> Freshness {
    if age < cache_duration {
        Freshness::Fresh
    } else if age < cache_duration.saturating_mul(2) {
        Freshness::Stale
    } else {
        Freshness::TooOld
    }
}

/// Clears the one-fetch-at-a-time latch when dropped (after a fetch, or if it panics).
struct Unlatch<'a>(&'a AtomicBool);

impl Drop for Unlatch<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The largest key set read (a server sending more is refused, not buffered).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How soon a failed fetch may be tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

impl RemoteJwks {
    /// A remote set at `uri`, fetched by `client` from `cluster` (whatever the URI's host:
    /// its authority is only the request's `Host`).
    pub(crate) fn new(
        uri: &str,
        cluster: &Arc<str>,
        timeout: Duration,
        cache_duration: Duration,
        client: Arc<dyn FetchJwks>,
    ) -> Result<Arc<Self>, String> {
        let uri: http::Uri = uri
            .parse()
            .map_err(|e| format!("invalid JWKS URI {uri:?}: {e}"))?;
        if uri.authority().is_none() {
            return Err(format!("JWKS URI {uri} has no host"));
        }
        Ok(Arc::new(Self {
            uri,
            cluster: cluster.clone(),
            timeout,
            // A floor: with none, keys just fetched would already be too old to use.
            cache_duration: cache_duration.max(RETRY_AFTER_FAILURE),
            client,
            state: watch::channel(None).0,
            fetching: AtomicBool::new(false),
        }))
    }

    /// The current keys, fetching them first if there are none (or only too old ones).
    /// Keys are fresh for `cache_duration`; after that they stay in use for one more
    /// `cache_duration` while a refresh runs (a JWKS server's hiccup does not fail tokens it
    /// vouched for), and then no longer: keys that could not be refreshed for that long no
    /// longer verify anything, so a revoked key cannot serve for ever.
    pub(crate) async fn keys(self: &Arc<Self>) -> Result<Arc<KeySet>, String> {
        let current = self.state.borrow().clone();
        if let Some(f) = &current {
            let retry_ok = f.tried.elapsed() >= RETRY_AFTER_FAILURE;
            match (&f.keys, freshness(f.fetched.elapsed(), self.cache_duration)) {
                (Ok(keys), Freshness::Fresh) => return Ok(keys.clone()),
                (Ok(keys), Freshness::Stale) => {
                    if retry_ok {
                        self.refresh();
                    }
                    return Ok(keys.clone());
                }
                (Ok(_), Freshness::TooOld) if !retry_ok => {
                    return Err(format!(
                        "the keys of {} are older than twice their cache duration and could not be refreshed",
                        self.uri
                    ));
                }
                (Err(e), _) if !retry_ok => return Err(e.clone()),
                _ => {}
            }
        }
        let mut rx = self.state.subscribe();
        rx.borrow_and_update();
        self.refresh();
        // The fetch runs in its own task, so a caller that goes away does not cancel it;
        // this only bounds how long this request waits.
        let cache_duration = self.cache_duration;
        let wait = async {
            loop {
                if rx.changed().await.is_err() {
                    return Err("JWKS fetcher stopped".to_owned());
                }
                if let Some(f) = rx.borrow_and_update().clone() {
                    return match f.keys {
                        Ok(_)
                            if freshness(f.fetched.elapsed(), cache_duration)
                                == Freshness::TooOld =>
                        {
                            Err(format!("the keys of {} could not be refreshed", self.uri))
                        }
                        keys => keys,
                    };
                }
            }
        };
        tokio::time::timeout(self.timeout + Duration::from_millis(100), wait)
            .await
            .unwrap_or_else(|_| Err(format!("fetching {} timed out", self.uri)))
    }

    /// Starts one background fetch unless one is running.
    fn refresh(self: &Arc<Self>) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            // Should the fetch panic, the next request may fetch again.
            let unlatch = Unlatch(&this.fetching);
            let keys = match tokio::time::timeout(this.timeout, this.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "fetching {} timed out after {:?}",
                    this.uri, this.timeout
                )),
            };
            match &keys {
                Ok(k) => tracing::debug!(uri = %this.uri, keys = ?k, "JWKS fetched"),
                Err(e) => tracing::warn!(uri = %this.uri, error = %e, "JWKS fetch failed"),
            }
            // A failure keeps the last good keys, with their own age (they stay usable only
            // while stale, not too old).
            let now = Instant::now();
            let keep = this.state.borrow().as_ref().and_then(|f| match &f.keys {
                Ok(k) => Some((k.clone(), f.fetched)),
                Err(_) => None,
            });
            let fetched = match (keys, keep) {
                (Err(_), Some((good, fetched))) => Fetched {
                    keys: Ok(good),
                    fetched,
                    tried: now,
                },
                (keys, _) => Fetched {
                    keys,
                    fetched: now,
                    tried: now,
                },
            };
            // Unlatched first: a request that finds the new value unusable, or subscribed
            // just before it, may start the next fetch instead of waiting for nothing.
            drop(unlatch);
            this.state.send_replace(Some(fetched));
        });
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, String> {
        let req = http::Request::get(self.uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        // Keys that sign tokens must come from the server the URI names, over TLS that the
        // cluster's context verifies.
        let tls = self.uri.scheme_str() == Some("https");
        let rsp = self
            .client
            .fetch(self.cluster.clone(), req, tls)
            .await
            .map_err(|e| format!("fetching {} from cluster {}: {e}", self.uri, self.cluster))?;
        if rsp.status() != http::StatusCode::OK {
            let flags = crate::respond::ResponseInfo::of(&rsp).map(|i| i.flags);
            return Err(format!(
                "fetching {} from cluster {}: status {}{}",
                self.uri,
                self.cluster,
                rsp.status(),
                flags
                    .filter(|f| !f.is_empty())
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default()
            ));
        }
        let body = http_body_util::Limited::new(rsp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("fetching {}: {e}", self.uri))?
            .to_bytes();
        let text = std::str::from_utf8(&body).map_err(|_| "JWKS is not UTF-8".to_owned())?;
        KeySet::parse(text).map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_then_stale_then_too_old() {
        let cache = Duration::from_secs(300);
        assert_eq!(freshness(Duration::from_secs(299), cache), Freshness::Fresh);
        assert_eq!(freshness(Duration::from_secs(300), cache), Freshness::Stale);
        assert_eq!(freshness(Duration::from_secs(599), cache), Freshness::Stale);
        assert_eq!(
            freshness(Duration::from_secs(600), cache),
            Freshness::TooOld
        );
        // A huge cache_duration does not overflow.
        assert_eq!(
            freshness(Duration::from_secs(1), Duration::MAX),
            Freshness::Fresh
        );
    }

    #[test]
    fn unusable_documents_are_refused_with_the_reason() {
        assert!(
            KeySet::parse("not json")
                .unwrap_err()
                .contains("invalid JWKS")
        );
        assert!(
            KeySet::parse(r#"{"keys":[]}"#)
                .unwrap_err()
                .contains("no usable key")
        );
    }

    #[test]
    fn keys_are_picked_by_kid_and_family() {
        // Istio's sample key (security/tools/jwt/samples/jwks.json), RSA.
        let jwks = r#"{"keys":[{"e":"AQAB","kid":"DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ","kty":"RSA","n":"xAE7eB6qugXyCAG3yhh7pkDkT65pHymX-P7KfIupjf59vsdo91bSP9C8H07pSAGQO1MV_xFj9VswgsCg4R6otmg5PV2He95lZdHtOcU5DXIg_pbhLdKXbi66GlVeK6ABZOUW3WYtnNHD-91gVuoeJT_DwtGGcp4ignkgXfkiEm4sw-4sfb4qdt5oLbyVpmW6x9cfa7vs2WTfURiCrBoUqgBo_-4WTiULmmHSGZHOjzwa8WtrtOQGsAFjIbno85jp6MnGGGZPYZbDAa_b3y5u-YpW7ypZrvD8BgtKVjgtQgZhLAGezMt0ua3DRrWnKqTZ0BJ_EyxOGuHJrLsn00fnMQ"}]}"#;
        let set = KeySet::parse(jwks).unwrap();
        let kid = "DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ";
        assert_eq!(set.candidates(Some(kid), Algorithm::RS256).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 1);
        assert_eq!(set.candidates(Some("other"), Algorithm::RS256).count(), 0);
        assert_eq!(
            set.candidates(None, Algorithm::ES256).count(),
            0,
            "an RSA key never verifies an EC signature"
        );
    }
}
