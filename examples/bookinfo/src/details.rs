//! details (Ruby's `details.rb` in Istio's sample): the book's facts by product id.

use http::{Method, Request, StatusCode};
use serde_json::json;

use crate::web::{self, Reply};

/// The details of a product.
pub fn details(id: u32) -> serde_json::Value {
    json!({
        "id": id,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    })
}

/// Serves `GET /details/{id}` and `GET /health`.
pub async fn handle<B>(req: Request<B>) -> Reply {
    let path = req.uri().path();
    if req.method() != Method::GET {
        return web::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method not allowed"}),
        );
    }
    if path == "/health" {
        return web::json(StatusCode::OK, &json!({"status": "Details is healthy"}));
    }
    match web::product_id(path, "/details/", "please provide numeric product id") {
        Ok(id) => web::json(StatusCode::OK, &details(id)),
        Err((status, error)) => web::json(status, &error),
    }
}
