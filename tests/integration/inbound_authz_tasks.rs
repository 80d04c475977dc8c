//! Istio's "Authorization on HTTP traffic" task (rows A1-A4 of bookinfo-scenarios.md) on four
//! small meshed services shaped like Bookinfo's: productpage calls details and reviews,
//! reviews calls ratings, every hop over Istio mTLS with its own identity, each server
//! enforcing what mesh-control makes of the task's AuthorizationPolicies.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_tower::MeshClient;

use super::meshed::{
    DETAILS, PRODUCTPAGE, RATINGS, REVIEWS, TestMesh, Workload, eventually, free_port, service,
};

const INGRESS: Workload<'static> = Workload::new("ingress", "default", "istio-ingressgateway");

type Rsp = http::Response<Full<Bytes>>;

fn ok(body: String) -> Result<Rsp, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from(body))))
}

/// GET `url`: the body when the answer is 200.
async fn fetch(client: &MeshClient, url: &str) -> Option<String> {
    let rsp = client
        .send(
            http::Request::get(url)
                .body(Full::<Bytes>::default())
                .ok()?,
        )
        .await
        .ok()?;
    if rsp.status() != 200 {
        return None;
    }
    let body = rsp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&body).into_owned())
}

/// The product page: details and reviews, or the page's error texts in their place.
async fn productpage(client: MeshClient) -> Result<Rsp, Infallible> {
    let details = match fetch(&client, "http://details:9080/details/0").await {
        Some(d) => format!("<h4>Book Details</h4>{d}"),
        None => "Error fetching product details".into(),
    };
    let reviews = match fetch(&client, "http://reviews:9080/reviews/0").await {
        Some(r) => format!("<h4>Book Reviews</h4>{r}"),
        None => "Error fetching product reviews".into(),
    };
    ok(format!(
        "<h1>The Comedy of Errors</h1><p>One of William Shakespeare's early plays</p>{details}{reviews}"
    ))
}

/// Reviews v3: red stars from ratings, or the ratings error text.
async fn reviews(client: MeshClient) -> Result<Rsp, Infallible> {
    let rating = match fetch(&client, "http://ratings:9080/ratings/0").await {
        Some(r) => format!("<div class=\"text-red-500\">{r}</div>"),
        None => "Ratings service is currently unavailable".into(),
    };
    ok(format!(
        "An extremely entertaining play by Shakespeare. {rating}"
    ))
}

fn config(addrs: &[(Workload<'_>, std::net::SocketAddr)]) -> String {
    let mut yaml = String::new();
    for (w, addr) in addrs {
        yaml += &service(*w, 9080, *addr);
        yaml += &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {app}}}\nspec: {{host: {app}, trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}}}\n---\n",
            app = w.app
        );
    }
    yaml
}

fn viewer(name: &str, app: &str, principal: Option<&str>) -> String {
    let from = principal.map_or(String::new(), |p| {
        format!("  - from: [{{source: {{principals: [\"{p}\"]}}}}]\n    to:")
    });
    let rule = if from.is_empty() {
        "  - to:".to_owned()
    } else {
        from
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  action: ALLOW\n  rules:\n{rule} [{{operation: {{methods: [GET]}}}}]\n---\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authz_http_task_a1_to_a4() {
    let addrs = [PRODUCTPAGE, DETAILS, REVIEWS, RATINGS].map(|w| (w, free_port()));
    let mesh = TestMesh::start(&config(&addrs)).await;
    let [pp, details, rv, ratings] = addrs.map(|(_, a)| a);

    let m = mesh.mesh(PRODUCTPAGE).await;
    let client = MeshClient::new(&m);
    let svc = tower::service_fn(move |_req| productpage(client.clone()));
    tokio::spawn(async move { mesh_tower::serve(&m, pp, svc).await.expect("productpage") });
    let svc =
        tower::service_fn(|_req| async { ok("{\"author\": \"William Shakespeare\"}".into()) });
    mesh.serve(DETAILS, details, svc).await;
    let m = mesh.mesh(REVIEWS).await;
    let client = MeshClient::new(&m);
    let svc = tower::service_fn(move |_req| reviews(client.clone()));
    tokio::spawn(async move { mesh_tower::serve(&m, rv, svc).await.expect("reviews") });
    let svc = tower::service_fn(|_req| async { ok("{\"Reviewer1\": 5, \"Reviewer2\": 4}".into()) });
    mesh.serve(RATINGS, ratings, svc).await;

    let ingress = MeshClient::new(&mesh.mesh(INGRESS).await);
    let page = || async {
        let a = super::get(&ingress, "http://productpage:9080/productpage", &[]).await;
        (a.status, a.body)
    };
    // Without policy, the whole page.
    let (_, body) = eventually("the page", page, |(s, b)| {
        *s == 200 && b.contains("text-red-500")
    })
    .await;
    assert!(body.contains("Book Details"), "{body}");

    // A1: allow-nothing in the namespace.
    mesh.apply(
        "allow-nothing.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-nothing, namespace: default}\nspec: {}\n",
    );
    let (_, body) = eventually("A1 403", page, |(s, _)| *s == 403).await;
    assert_eq!(body, "RBAC: access denied");

    // A2: productpage-viewer lets anyone GET the page; its calls are still denied.
    mesh.apply(
        "productpage.yaml",
        &viewer("productpage-viewer", "productpage", None),
    );
    let (_, body) = eventually("A2 200", page, |(s, _)| *s == 200).await;
    for text in [
        "William Shakespeare",
        "Error fetching product details",
        "Error fetching product reviews",
    ] {
        assert!(body.contains(text), "A2 page lacks {text:?}: {body}");
    }

    // A3: details and reviews admit productpage's identity; ratings still denies reviews.
    let pp_id = "cluster.local/ns/default/sa/bookinfo-productpage";
    mesh.apply(
        "details-reviews.yaml",
        &(viewer("details-viewer", "details", Some(pp_id))
            + &viewer("reviews-viewer", "reviews", Some(pp_id))),
    );
    let (_, body) = eventually("A3", page, |(_, b)| {
        b.contains("Book Reviews") && b.contains("Book Details")
    })
    .await;
    assert!(
        body.contains("Ratings service is currently unavailable"),
        "A3: {body}"
    );

    // A4: ratings admits reviews: the whole page again, red stars included.
    mesh.apply(
        "ratings.yaml",
        &viewer(
            "ratings-viewer",
            "ratings",
            Some("cluster.local/ns/default/sa/bookinfo-reviews"),
        ),
    );
    let (_, body) = eventually("A4", page, |(_, b)| b.contains("text-red-500")).await;
    assert!(
        body.contains("Book Details") && body.contains("Book Reviews"),
        "A4: {body}"
    );

    // Identities are what decide: ingress may not call details directly.
    let a = super::get(&ingress, "http://details:9080/details/0", &[]).await;
    assert_eq!((a.status, a.body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(mesh.cp.ads().nack_count(), 0);
}
