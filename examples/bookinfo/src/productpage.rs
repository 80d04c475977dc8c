//! productpage (Python's `productpage.py` in Istio's sample): the page a reader sees. It asks
//! details (3 s timeout, no retry) and reviews (two tries of 3 s each), and renders both, or
//! its error texts in their place. Signing in keeps the user in a session cookie; the user's
//! name then travels as `end-user` on every call, which is what the tasks' `end-user: jason`
//! routes match.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use mesh_tower::MeshClient;
use serde_json::{Value, json};

use crate::web::{self, Called, Reply};

const TIMEOUT: Duration = Duration::from_secs(3);
const DETAILS_ERROR: &str = "Sorry, product details are currently unavailable for this book.";
const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_ERROR: &str = "Sorry, product ratings are currently unavailable for this book.";

/// The product page service.
#[derive(Clone)]
pub struct ProductPage {
    client: MeshClient,
    results: Arc<Results>,
}

/// `request_result{destination_app, response_code}`, the sample's own Prometheus counter.
#[derive(Default)]
struct Results {
    details: [AtomicU64; 2],
    reviews: [AtomicU64; 2],
}

fn product(id: u32) -> Value {
    json!({
        "id": id,
        "title": "The Comedy of Errors",
        "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play.",
    })
}

impl ProductPage {
    /// A product page calling details and reviews through `client`.
    pub fn new(client: MeshClient) -> Self {
        Self {
            client,
            results: Arc::default(),
        }
    }

    /// Serves the page, the JSON API, sign-in and sign-out, health and metrics.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: http_body::Body,
    {
        let path = req.uri().path().to_owned();
        let user = session_user(req.headers());
        let headers = forward_headers(req.headers(), user.as_deref());
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/" | "/index.html") => web::text(StatusCode::OK, "text/html", INDEX),
            (Method::GET, "/health") => {
                web::text(StatusCode::OK, "text/plain", "Product page is healthy")
            }
            (Method::GET, "/metrics") => {
                web::text(StatusCode::OK, "text/plain; version=0.0.4", self.metrics())
            }
            (Method::GET, "/productpage") => {
                let (ds, details) = self.details(0, &headers).await;
                let (rs, reviews) = self.reviews(0, &headers).await;
                let page = render(user.as_deref(), &product(0), ds, &details, rs, &reviews);
                web::text(StatusCode::OK, "text/html; charset=utf-8", page)
            }
            (Method::POST, "/login") => self.login(req).await,
            (Method::GET, "/logout") => Ok(redirect(req.headers(), "session=; Max-Age=0; Path=/")),
            (Method::GET, "/api/v1/products") => web::json(StatusCode::OK, &json!([product(0)])),
            (Method::GET, p) if p.starts_with("/api/v1/products/") => self.api(p, &headers).await,
            _ => web::text(StatusCode::NOT_FOUND, "text/plain", "Not Found"),
        }
    }

    async fn api(&self, path: &str, headers: &HeaderMap) -> Reply {
        let rest = path.trim_start_matches("/api/v1/products/");
        let mut parts = rest.split('/');
        let Some(Ok(id)) = parts.next().map(str::parse::<u32>) else {
            return web::json(
                StatusCode::BAD_REQUEST,
                &json!({"error": "please provide numeric product id"}),
            );
        };
        let (status, body) = match parts.next() {
            None => self.details(id, headers).await,
            Some("reviews") => self.reviews(id, headers).await,
            Some("ratings") => self.ratings(id, headers).await,
            Some(_) => return web::text(StatusCode::NOT_FOUND, "text/plain", "Not Found"),
        };
        web::json(status, &body)
    }

    async fn details(&self, id: u32, headers: &HeaderMap) -> (StatusCode, Value) {
        let url = format!("http://details:9080/details/{id}");
        let called = web::get(&self.client, &url, headers, TIMEOUT).await;
        self.count(&self.results.details, &called);
        answer(called, DETAILS_ERROR)
    }

    /// Two tries, as productpage.py makes them, each with its own 3 s timeout.
    async fn reviews(&self, id: u32, headers: &HeaderMap) -> (StatusCode, Value) {
        let url = format!("http://reviews:9080/reviews/{id}");
        let mut last = Called::Failed;
        for _ in 0..2 {
            last = web::get(&self.client, &url, headers, TIMEOUT).await;
            self.count(&self.results.reviews, &last);
            if matches!(last, Called::Answer(StatusCode::OK, _)) {
                break;
            }
        }
        answer(last, REVIEWS_ERROR)
    }

    async fn ratings(&self, id: u32, headers: &HeaderMap) -> (StatusCode, Value) {
        let url = format!("http://ratings:9080/ratings/{id}");
        answer(
            web::get(&self.client, &url, headers, TIMEOUT).await,
            RATINGS_ERROR,
        )
    }

    fn count(&self, counters: &[AtomicU64; 2], called: &Called) {
        let ok = matches!(called, Called::Answer(StatusCode::OK, _));
        counters[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    fn metrics(&self) -> String {
        let mut out = String::from(
            "# HELP request_result Response codes of productpage's calls\n# TYPE request_result counter\n",
        );
        for (app, c) in [
            ("details", &self.results.details),
            ("reviews", &self.results.reviews),
        ] {
            for (i, code) in ["200", "error"].iter().enumerate() {
                out.push_str(&format!(
                    "request_result{{destination_app=\"{app}\",response_code=\"{code}\"}} {}\n",
                    c[i].load(Ordering::Relaxed)
                ));
            }
        }
        out
    }

    async fn login<B>(&self, req: Request<B>) -> Reply
    where
        B: http_body::Body,
    {
        let headers = req.headers().clone();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let user = form_field(&body, "username").unwrap_or_default();
        if user.is_empty()
            || !user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return web::text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "a user name of letters and digits, please",
            );
        }
        Ok(redirect(
            &headers,
            &format!("session={user}; Path=/; HttpOnly"),
        ))
    }
}

/// 302 back where the reader came from (the `Referer`, as Flask's `redirect` does here).
fn redirect(headers: &HeaderMap, cookie: &str) -> Response<web::Body> {
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/productpage")
        .to_owned();
    let mut rsp = Response::new(Full::new(Bytes::new()));
    *rsp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(&back) {
        rsp.headers_mut().insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(cookie) {
        rsp.headers_mut().insert(header::SET_COOKIE, v);
    }
    rsp
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.replace('+', " "))
    })
}

/// The signed-in user, from the `session` cookie.
fn session_user(h: &HeaderMap) -> Option<String> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("session="))
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

/// What productpage sends on: the propagated headers, and `end-user` when someone is signed in.
fn forward_headers(from: &HeaderMap, user: Option<&str>) -> HeaderMap {
    let mut h = web::propagated(from);
    if let Some(u) = user.and_then(|u| HeaderValue::from_str(u).ok()) {
        h.insert("end-user", u);
    }
    h
}

fn answer(called: Called, error: &str) -> (StatusCode, Value) {
    match called {
        Called::Answer(StatusCode::OK, body) => match serde_json::from_slice(&body) {
            Ok(v) => (StatusCode::OK, v),
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": error})),
        },
        Called::Answer(status, _) => (status, json!({"error": error})),
        Called::Failed => (StatusCode::INTERNAL_SERVER_ERROR, json!({"error": error})),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STAR: &str = "<svg id=\"glyphicon glyphicon-star\" class=\"w-5 h-5\" fill=\"currentColor\" viewBox=\"0 0 20 20\"><path d=\"M10 1l2.9 6 6.1.9-4.5 4.3 1.1 6.1L10 15.4 4.4 18.3l1.1-6.1L1 7.9 7.1 7z\"/></svg>";
const EMPTY_STAR: &str = "<svg class=\"w-5 h-5\" fill=\"none\" stroke=\"currentColor\" viewBox=\"0 0 20 20\"><path d=\"M10 1l2.9 6 6.1.9-4.5 4.3 1.1 6.1L10 15.4 4.4 18.3l1.1-6.1L1 7.9 7.1 7z\"/></svg>";

/// The page, with the markers Istio's tasks look for (see bookinfo-scenarios.md).
fn render(
    user: Option<&str>,
    product: &Value,
    details_status: StatusCode,
    details: &Value,
    reviews_status: StatusCode,
    reviews: &Value,
) -> String {
    let mut page = String::with_capacity(8 * 1024);
    page.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Simple Bookstore App</title></head>\n<body class=\"bg-white\">\n<nav class=\"flex justify-between\"><a href=\"/\">BookInfo Sample</a>");
    match user {
        Some(u) => page.push_str(&format!(
            "<span class=\"user\">{}</span> <a href=\"/logout\">Sign out</a>",
            escape(u)
        )),
        None => page.push_str(
            "<form method=\"post\" action=\"/login\"><input name=\"username\" placeholder=\"User Name\"><input name=\"passwd\" type=\"password\"><button type=\"submit\">Sign in</button></form>",
        ),
    }
    page.push_str("</nav>\n");
    page.push_str(&format!(
        "<h1 class=\"text-3xl font-bold\">{}</h1>\n<p>{}</p>\n",
        escape(product["title"].as_str().unwrap_or("")),
        product["descriptionHtml"].as_str().unwrap_or(""),
    ));
    page.push_str("<div class=\"details\">\n");
    if details_status == StatusCode::OK {
        page.push_str("<h4 class=\"text-2xl\">Book Details</h4>\n<table>");
        for (label, key) in [
            ("Type", "type"),
            ("Pages", "pages"),
            ("Publisher", "publisher"),
            ("Language", "language"),
            ("ISBN-10", "ISBN-10"),
            ("ISBN-13", "ISBN-13"),
        ] {
            let v = match &details[key] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            page.push_str(&format!(
                "<tr><th>{label}:</th><td>{}</td></tr>",
                escape(&v)
            ));
        }
        page.push_str("</table>\n");
    } else {
        page.push_str(&format!(
            "<h4 class=\"text-2xl\">Error fetching product details</h4>\n<p>{}</p>\n",
            escape(details["error"].as_str().unwrap_or(DETAILS_ERROR))
        ));
    }
    page.push_str("</div>\n<div class=\"reviews\">\n");
    if reviews_status == StatusCode::OK {
        page.push_str("<h4 class=\"text-2xl\">Book Reviews</h4>\n");
        for r in reviews["reviews"].as_array().into_iter().flatten() {
            page.push_str(&format!(
                "<blockquote><p>{}</p><small>{}</small>",
                escape(r["text"].as_str().unwrap_or("")),
                escape(r["reviewer"].as_str().unwrap_or("")),
            ));
            let rating = &r["rating"];
            if let Some(stars) = rating["stars"].as_u64() {
                let color = rating["color"].as_str().unwrap_or("black");
                page.push_str(&format!(
                    "<div class=\"flex gap-x-1 text-{}-500\">",
                    escape(color)
                ));
                let stars = stars.min(5) as usize;
                page.push_str(&STAR.repeat(stars));
                page.push_str(&EMPTY_STAR.repeat(5 - stars));
                page.push_str("</div>");
            } else if let Some(e) = rating["error"].as_str() {
                page.push_str(&format!("<p class=\"text-red-500\">{}</p>", escape(e)));
            }
            page.push_str("</blockquote>\n");
        }
        page.push_str(&format!(
            "<p>Reviews served by: <u>{}</u></p>\n",
            escape(reviews["podname"].as_str().unwrap_or(""))
        ));
    } else {
        page.push_str(&format!(
            "<h4 class=\"text-2xl\">Error fetching product reviews</h4>\n<p>{}</p>\n",
            escape(reviews["error"].as_str().unwrap_or(REVIEWS_ERROR))
        ));
    }
    page.push_str("</div>\n</body></html>\n");
    page
}

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>Simple Bookstore App</title></head><body>\n<h3>Hello! This is a simple bookstore application consisting of three services as shown below</h3>\n<p>Click on one of the links below to auto generate a request to the backend as a real user or a tester</p>\n<p><a href=\"/productpage?u=normal\">Normal user</a></p>\n<p><a href=\"/productpage?u=test\">Test user</a></p>\n</body></html>\n";
