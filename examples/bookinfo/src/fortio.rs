//! A load tool in the role of fortio in Istio's circuit-breaking task
//! (`fortio load -c C -qps 0 -n N URL`): `C` connections' worth of concurrent requests, back
//! to back, `N` in all, through the mesh; the answer is the count of each status code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_tower::MeshClient;

/// Status codes and how often each came back (0 for requests that got no answer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Codes(pub BTreeMap<u16, usize>);

impl Codes {
    /// How many answers had `code`.
    pub fn count(&self, code: u16) -> usize {
        self.0.get(&code).copied().unwrap_or(0)
    }

    /// Every answer.
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// Sends `n` GETs to `url` through `client`, `concurrency` at a time.
pub async fn load(client: &MeshClient, url: &str, concurrency: usize, n: usize) -> Codes {
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, url, next) = (client.clone(), url.to_owned(), next.clone());
            tokio::spawn(async move {
                let mut codes = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let Ok(req) = http::Request::get(url.as_str()).body(Full::<Bytes>::default())
                    else {
                        codes.push(0);
                        continue;
                    };
                    let code = match client.send(req).await {
                        Ok(rsp) => {
                            let code = rsp.status().as_u16();
                            let _ = rsp.into_body().collect().await;
                            code
                        }
                        Err(_) => 0,
                    };
                    codes.push(code);
                }
                codes
            })
        })
        .collect();
    let mut out = Codes::default();
    for w in workers {
        for code in w.await.unwrap_or_default() {
            *out.0.entry(code).or_default() += 1;
        }
    }
    out
}
