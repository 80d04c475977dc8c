//! ratings (Node's `ratings.js` in Istio's sample): stars by product id; `POST` stores new
//! ones in memory, as ratings v1 does.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::web::{self, Reply};

/// Ratings by product id (product 0 starts with Reviewer1: 5, Reviewer2: 4).
#[derive(Clone, Default)]
pub struct Ratings {
    stored: Arc<ArcSwap<HashMap<u32, serde_json::Value>>>,
}

impl Ratings {
    fn of(&self, id: u32) -> serde_json::Value {
        self.stored
            .load()
            .get(&id)
            .cloned()
            .unwrap_or_else(|| json!({"Reviewer1": 5, "Reviewer2": 4}))
    }

    /// Serves `GET /ratings/{id}`, `POST /ratings/{id}` and `GET /health`.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: http_body::Body,
    {
        let path = req.uri().path().to_owned();
        if path == "/health" {
            return web::json(StatusCode::OK, &json!({"status": "Ratings is healthy"}));
        }
        let id = match web::product_id(&path, "/ratings/", "please provide numeric product ID") {
            Ok(id) => id,
            Err((status, error)) => return web::json(status, &error),
        };
        match *req.method() {
            Method::GET => web::json(StatusCode::OK, &json!({"id": id, "ratings": self.of(id)})),
            Method::POST => {
                let Ok(body) = req.into_body().collect().await else {
                    return web::json(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "unreadable body"}),
                    );
                };
                let Ok(ratings) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
                else {
                    return web::json(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": "please provide valid ratings JSON"}),
                    );
                };
                self.stored.rcu(|m| {
                    let mut m = HashMap::clone(m);
                    m.insert(id, ratings.clone());
                    m
                });
                web::json(StatusCode::OK, &json!({"id": id, "ratings": ratings}))
            }
            _ => web::json(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method not allowed"}),
            ),
        }
    }
}
