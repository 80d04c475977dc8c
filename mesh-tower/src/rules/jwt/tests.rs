use std::sync::Arc;
use std::time::Duration;

use mesh_core::model::{
    JwksSource, JwtConfig, JwtPerRoute, JwtProvider, JwtRequirement, RouteMatcher,
};
use mesh_test_support::jwt::Issuer;

use super::*;

struct NoRemote;
impl RemoteKeys for NoRemote {
    fn remote(&self, uri: &str, _: &JwksSource) -> Result<Arc<RemoteJwks>, String> {
        Err(format!("no remote keys in this test ({uri})"))
    }
}

fn provider(issuer: &Issuer) -> JwtProvider {
    JwtProvider {
        issuer: issuer.issuer.as_str().into(),
        audiences: Box::new([]),
        jwks: JwksSource::Local(issuer.jwks().into()),
        from_headers: Box::new([]),
        from_params: Box::new([]),
        from_cookies: Box::new([]),
        forward: false,
        forward_payload_header: None,
        claim_to_headers: Box::new([]),
        payload_in_metadata: Some(issuer.issuer.as_str().into()),
        clock_skew: Duration::from_secs(60),
    }
}

/// What istiod builds for one RequestAuthentication rule: the provider, or no token at all.
fn istio_filter(p: JwtProvider) -> JwtFilter {
    let config = JwtConfig {
        providers: Box::new([("origins-0".into(), Arc::new(p))]),
        rules: Box::new([(
            RouteMatcher::any(),
            JwtRequirement::Any(Box::new([
                JwtRequirement::Provider("origins-0".into()),
                JwtRequirement::AllowMissing,
            ])),
        )]),
        requirement_map: Box::new([(
            "strict".into(),
            JwtRequirement::Provider("origins-0".into()),
        )]),
    };
    JwtFilter::new(Arc::new(config), &NoRemote)
}

fn request(token: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::get("http://httpbin:8000/headers");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(()).unwrap()
}

async fn run(f: &JwtFilter, req: &mut http::Request<()>) -> (Result<(), JwtError>, Metadata) {
    let mut md = Metadata::default();
    let r = f.authenticate(req, None, &mut md).await;
    (r, md)
}

#[tokio::test]
async fn a_missing_token_passes_and_publishes_nothing() {
    let f = istio_filter(provider(&Issuer::new("testing@secure.istio.io")));
    let (r, md) = run(&f, &mut request(None)).await;
    assert_eq!(r, Ok(()));
    assert!(md.is_empty());
}

#[tokio::test]
async fn a_valid_token_publishes_principal_and_claims_and_is_stripped() {
    let issuer = Issuer::new("testing@secure.istio.io");
    let f = istio_filter(provider(&issuer));
    let token = issuer.token(
        "testing@secure.istio.io",
        serde_json::json!({"groups": ["group1", "group2"], "aud": "httpbin"}),
    );
    let mut req = request(Some(&token));
    let (r, md) = run(&f, &mut req).await;
    assert_eq!(r, Ok(()));
    let get = |path: &[&str]| md.get(ISTIO_AUTHN_NAMESPACE, path).cloned();
    assert_eq!(
        get(&["request.auth.principal"]),
        Some(serde_json::json!(
            "testing@secure.istio.io/testing@secure.istio.io"
        ))
    );
    assert_eq!(
        get(&["request.auth.claims", "groups"]),
        Some(serde_json::json!(["group1", "group2"]))
    );
    assert_eq!(
        get(&["request.auth.claims", "sub"]),
        Some(serde_json::json!(["testing@secure.istio.io"]))
    );
    assert_eq!(
        get(&["request.auth.audiences"]),
        Some(serde_json::json!("httpbin"))
    );
    assert!(
        md.get(JWT_NAMESPACE, &["testing@secure.istio.io", "groups"])
            .is_some()
    );
    assert!(
        req.headers().get("authorization").is_none(),
        "not forwarded by default"
    );
    let v = req.extensions().get::<VerifiedJwt>().expect("extension");
    assert_eq!(
        (&*v.provider, v.issuer.as_str()),
        ("origins-0", "testing@secure.istio.io")
    );
}

#[tokio::test]
async fn bad_tokens_are_refused_with_envoys_reasons() {
    let issuer = Issuer::new("testing@secure.istio.io");
    let f = istio_filter(provider(&issuer));
    let (r, _) = run(&f, &mut request(Some("invalidToken"))).await;
    assert_eq!(r, Err(JwtError::Malformed));
    assert_eq!(JwtError::Malformed.status(), 401);

    let past = jsonwebtoken::get_current_timestamp() - 3600;
    let expired = issuer.token_with("x", past, serde_json::json!({}));
    assert_eq!(
        run(&f, &mut request(Some(&expired))).await.0,
        Err(JwtError::Expired)
    );

    let stranger = Issuer::new("someone-else");
    let foreign = stranger.token("x", serde_json::json!({}));
    assert_eq!(
        run(&f, &mut request(Some(&foreign))).await.0,
        Err(JwtError::UnknownIssuer)
    );

    // Same issuer name, another key: the signature does not verify.
    let impostor = Issuer::new("testing@secure.istio.io");
    let forged = impostor.token("x", serde_json::json!({}));
    let r = run(&f, &mut request(Some(&forged))).await.0;
    assert!(
        matches!(r, Err(JwtError::NoMatchingKey | JwtError::BadSignature)),
        "{r:?}"
    );
}

#[tokio::test]
async fn audiences_and_named_requirements_follow_envoy() {
    let issuer = Issuer::new("iss");
    let mut p = provider(&issuer);
    p.audiences = Box::new(["bookinfo".into()]);
    let f = istio_filter(p);
    let wrong = issuer.token("x", serde_json::json!({"aud": ["other"]}));
    let r = run(&f, &mut request(Some(&wrong))).await.0;
    assert_eq!(r, Err(JwtError::AudienceNotAllowed));
    assert_eq!(JwtError::AudienceNotAllowed.status(), 403);
    let right = issuer.token("x", serde_json::json!({"aud": ["other", "bookinfo"]}));
    assert_eq!(run(&f, &mut request(Some(&right))).await.0, Ok(()));

    // A route may require the token outright, or turn the filter off.
    let mut md = Metadata::default();
    let strict = JwtPerRoute::RequirementName("strict".into());
    let r = f
        .authenticate(&mut request(None), Some(&strict), &mut md)
        .await;
    assert_eq!(r, Err(JwtError::Missing));
    let r = f
        .authenticate(
            &mut request(Some("garbage")),
            Some(&JwtPerRoute::Disabled),
            &mut md,
        )
        .await;
    assert_eq!(r, Ok(()));

    // A route naming a requirement the filter lacks is refused, never let through
    // unverified (Envoy answers 403 too), even with a valid token.
    let unknown = JwtPerRoute::RequirementName("typo".into());
    let r = f
        .authenticate(&mut request(Some(&right)), Some(&unknown), &mut md)
        .await;
    assert_eq!(r, Err(JwtError::UnknownRequirement));
    assert_eq!(JwtError::UnknownRequirement.status(), 403);
}

#[tokio::test]
async fn claims_and_payload_go_to_headers_when_asked() {
    let issuer = Issuer::new("iss");
    let mut p = provider(&issuer);
    p.forward = true;
    p.forward_payload_header = Some(HeaderName::from_static("x-jwt-payload"));
    p.claim_to_headers = Box::new([
        ("sub".into(), HeaderName::from_static("x-sub")),
        ("org.team".into(), HeaderName::from_static("x-team")),
    ]);
    let f = istio_filter(p);
    let token = issuer.token("alice", serde_json::json!({"org": {"team": "mesh"}}));
    let mut req = request(Some(&token));
    assert_eq!(run(&f, &mut req).await.0, Ok(()));
    let h = req.headers();
    assert_eq!(h["x-sub"], "alice");
    assert_eq!(h["x-team"], "mesh");
    assert_eq!(h["x-jwt-payload"], token.split('.').nth(1).unwrap());
    assert!(h.contains_key("authorization"), "forwarded");
}

#[test]
fn tokens_are_found_where_providers_look() {
    let mut p = provider(&Issuer::new("iss"));
    let req = http::Request::get("http://h/p?access_token=abc")
        .body(())
        .unwrap();
    assert_eq!(
        extract(&p, &req).map(|t| t.value),
        Some("abc".to_owned()),
        "default query parameter"
    );
    p.from_headers = Box::new([(HeaderName::from_static("x-jwt"), "".into())]);
    assert!(
        extract(&p, &req).is_none(),
        "configured locations replace the defaults"
    );
    let req = http::Request::get("http://h/p")
        .header("x-jwt", "t0k")
        .body(())
        .unwrap();
    assert_eq!(extract(&p, &req).map(|t| t.value), Some("t0k".to_owned()));
}

#[tokio::test]
async fn a_provider_reading_cookies_takes_the_token_from_them_only() {
    let issuer = Issuer::new("iss");
    let mut p = provider(&issuer);
    p.from_cookies = Box::new(["session".into()]);
    let f = istio_filter(p);
    let token = issuer.token("alice", serde_json::json!({}));
    let with_cookie = |cookie: &str| {
        http::Request::get("http://httpbin:8000/headers")
            .header("cookie", "theme=dark")
            .header("cookie", cookie)
            .body(())
            .unwrap()
    };
    let mut req = with_cookie(&format!("a=b; session={token}; c=d"));
    assert_eq!(run(&f, &mut req).await.0, Ok(()));
    assert!(
        req.headers().get_all("cookie").iter().count() == 2,
        "a cookie is left in place once verified, as Envoy does"
    );
    let mut forged = with_cookie("session=not.a.token");
    assert_eq!(run(&f, &mut forged).await.0, Err(JwtError::Malformed));
    // Configured locations replace the defaults: a bearer token alone is no token here.
    let strict = JwtPerRoute::RequirementName("strict".into());
    let r = f
        .authenticate(
            &mut request(Some(&token)),
            Some(&strict),
            &mut Metadata::default(),
        )
        .await;
    assert_eq!(r, Err(JwtError::Missing));
}
