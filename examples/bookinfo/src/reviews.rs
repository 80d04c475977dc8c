//! reviews (Java's `LibertyRestEndpoint` in Istio's sample), in its three versions: v1 shows
//! no stars; v2 asks ratings (10 s timeout) and shows black stars; v3 asks ratings (2.5 s
//! timeout) and shows red stars. When ratings cannot answer, each review says so.

use std::time::Duration;

use http::{Request, StatusCode};
use mesh_tower::MeshClient;
use serde_json::{Value, json};

use crate::web::{self, Called, Reply};

/// Which reviews.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// No ratings.
    V1,
    /// Black stars.
    V2,
    /// Red stars.
    V3,
}

impl Version {
    /// `v1`, `v2`, `v3`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }

    /// The star colour and the ratings timeout, for versions that call ratings.
    fn ratings(self) -> Option<(&'static str, Duration)> {
        match self {
            Self::V1 => None,
            Self::V2 => Some(("black", Duration::from_millis(10_000))),
            Self::V3 => Some(("red", Duration::from_millis(2_500))),
        }
    }
}

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// A reviews service of one version.
#[derive(Clone)]
pub struct Reviews {
    /// Which one.
    pub version: Version,
    /// The pod name it reports (`podname`).
    pub podname: String,
    /// Its way to ratings.
    pub client: MeshClient,
}

impl Reviews {
    /// Serves `GET /reviews/{id}` and `GET /health`.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply {
        let path = req.uri().path();
        if path == "/health" {
            return web::json(StatusCode::OK, &json!({"status": "Reviews is healthy"}));
        }
        let id = match web::product_id(path, "/reviews/", "please provide numeric product ID") {
            Ok(id) => id,
            Err((status, error)) => return web::json(status, &error),
        };
        let ratings = match self.version.ratings() {
            None => None,
            Some((color, timeout)) => {
                let headers = web::propagated(req.headers());
                let url = format!("http://ratings:9080/ratings/{id}");
                Some((color, ratings(&self.client, &url, &headers, timeout).await))
            }
        };
        let reviews: Vec<Value> = REVIEWS
            .iter()
            .map(|(reviewer, text)| {
                let mut r = json!({"reviewer": reviewer, "text": text});
                match &ratings {
                    None => {}
                    Some((color, Some(stars))) => {
                        if let Some(n) = stars.get(*reviewer) {
                            r["rating"] = json!({"stars": n, "color": color});
                        }
                    }
                    Some((_, None)) => {
                        r["rating"] = json!({"error": "Ratings service is currently unavailable"});
                    }
                }
                r
            })
            .collect();
        web::json(
            StatusCode::OK,
            &json!({
                "id": id.to_string(),
                "podname": self.podname,
                "clustername": "null",
                "reviews": reviews,
            }),
        )
    }
}

/// The `ratings` object of a 200 answer, or `None`.
async fn ratings(
    client: &MeshClient,
    url: &str,
    headers: &http::HeaderMap,
    timeout: Duration,
) -> Option<serde_json::Map<String, Value>> {
    match web::get(client, url, headers, timeout).await {
        Called::Answer(StatusCode::OK, body) => serde_json::from_slice::<Value>(&body)
            .ok()?
            .get("ratings")?
            .as_object()
            .cloned(),
        _ => None,
    }
}
