//! Bookinfo's Istio tasks (bookinfo-scenarios.md) on the real product page of
//! examples/bookinfo, started per test on loopback with Istio mutual TLS between the
//! services. A "jason" page is fetched as a reader would: signed in through `/login`, then
//! with the session cookie.
//!
//! Each task runs twice: with the project's own networking YAML, and with Istio's unmodified
//! files from ../shared/istio-samples.

mod faults;
mod httpbin_tasks;
mod routing;
mod security;
mod timeouts;

use std::time::{Duration, Instant};

use mesh_bookinfo::{Bookinfo, Options, networking};

/// Where a task's YAML comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Files {
    /// examples/bookinfo/networking, written here.
    Ours,
    /// ../shared/istio-samples, Istio's own.
    Istio,
}

impl Files {
    /// A task file by its Istio name, or `None` when Istio's folder is not there (which
    /// `mesh_test_support::shared_dir` allows only when told to).
    pub(crate) fn get(self, name: &str) -> Option<String> {
        match self {
            Files::Ours => Some(
                networking::FILES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .unwrap_or_else(|| panic!("no file {name} in examples/bookinfo/networking"))
                    .1
                    .to_owned(),
            ),
            Files::Istio => {
                let dir = mesh_test_support::shared_dir("istio-samples")?;
                Some(
                    std::fs::read_to_string(dir.join(name))
                        .unwrap_or_else(|e| panic!("{name}: {e}")),
                )
            }
        }
    }
}

/// A running Bookinfo and the way tasks are applied to it.
pub(crate) struct Task {
    pub(crate) bookinfo: Bookinfo,
    files: Files,
}

/// Starts Bookinfo with `files`' subsets and mutual TLS (`destination-rule-all-mtls.yaml`),
/// or `None` when Istio's files are asked for and absent.
pub(crate) async fn start(files: Files) -> Option<Task> {
    mesh_test_support::trace_init();
    let mtls = files.get("destination-rule-all-mtls.yaml")?;
    let bookinfo = Bookinfo::start(Options::ephemeral())
        .await
        .expect("Bookinfo starts");
    if files == Files::Istio {
        bookinfo
            .apply("destination-rule-all.yaml", &mtls)
            .expect("Istio's destination rules apply");
    }
    Some(Task { bookinfo, files })
}

impl Task {
    /// Applies a task file, as `kubectl apply -f` would (newer definitions replace older).
    pub(crate) async fn apply(&self, name: &str) {
        let yaml = self.files.get(name).expect("the files are here");
        self.apply_yaml(name, &yaml).await;
    }

    /// Applies YAML written in the test (the tasks' inline snippets).
    pub(crate) async fn apply_yaml(&self, name: &str, yaml: &str) {
        // A distinct modification time from the files before it: the newest definition wins.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let version = self
            .bookinfo
            .apply(name, yaml)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Every workload has it before the page is looked at: a page served from the old
        // configuration could otherwise satisfy a task's first check by chance.
        self.bookinfo
            .synced(version)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    /// The product page as `user` sees it (signed in through the page's form), with the
    /// time it took.
    pub(crate) async fn page(&self, user: Option<&str>) -> Page {
        let addr = self.bookinfo.productpage;
        let mut cookie = None;
        if let Some(u) = user {
            let (status, headers, _) = mesh_test_support::http::exchange(
                addr,
                "POST",
                "/login",
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("referer", "/productpage"),
                ],
                format!("username={u}&passwd=password").into(),
            )
            .await
            .expect("sign in");
            assert_eq!(status, 302, "sign in redirects");
            let set = headers["set-cookie"].to_str().unwrap().to_owned();
            cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let started = Instant::now();
        let (status, body) = mesh_test_support::http::get(addr, "/productpage", &headers)
            .await
            .expect("the product page answers");
        Page {
            status,
            body,
            took: started.elapsed(),
        }
    }

    /// Polls `user`'s page until `ok` holds (configuration takes a moment to reach every
    /// workload), failing after 15 s with the last page.
    pub(crate) async fn page_until(
        &self,
        user: Option<&str>,
        what: &str,
        ok: impl Fn(&Page) -> bool,
    ) -> Page {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let p = self.page(user).await;
            if ok(&p) {
                return p;
            }
            assert!(Instant::now() < deadline, "{what}: still {p:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Task {
    /// Waits until `window` pages in a row satisfy `ok`: for changes no single page proves
    /// (a split that no longer includes some version).
    pub(crate) async fn settled(&self, what: &str, window: usize, ok: impl Fn(&Page) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut run = 0;
        while run < window {
            let p = self.page(None).await;
            run = if ok(&p) { run + 1 } else { 0 };
            assert!(Instant::now() < deadline, "{what}: still {p:?}");
        }
    }
}

/// What a page shows.
pub(crate) struct Page {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) took: Duration,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("status", &self.status)
            .field("stars", &self.stars())
            .field("took", &self.took)
            .field("details", &self.has("Book Details"))
            .field("reviews", &self.has("Book Reviews"))
            .field("body", &self.body.chars().take(200).collect::<String>())
            .finish()
    }
}

impl Page {
    /// Whether the page holds `text`.
    pub(crate) fn has(&self, text: &str) -> bool {
        self.body.contains(text)
    }

    /// The stars shown: `None` (reviews v1, or none at all), else the colour (`black` for
    /// v2, `red` for v3); either way the count of filled stars must be Bookinfo's 5 + 4.
    pub(crate) fn stars(&self) -> Option<&'static str> {
        let filled = self.body.matches("glyphicon glyphicon-star\"").count();
        let color = if self.has("text-black-500") {
            "black"
        } else if self.has("text-red-500\">") && filled > 0 {
            "red"
        } else {
            return None;
        };
        assert_eq!(filled, 9, "5 + 4 stars with {color}: {self:?}");
        Some(color)
    }

    /// Reviews shown without stars (reviews v1).
    pub(crate) fn no_stars(&self) -> bool {
        self.has("Book Reviews")
            && self.stars().is_none()
            && !self.has("Ratings service is currently unavailable")
    }
}

/// A task for both file sets: `$name` with ours, `$name_istio` with Istio's.
macro_rules! task {
    ($name:ident, $istio:ident, $body:path) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let t = super::start(super::Files::Ours).await.expect("our files");
            $body(t).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $istio() {
            if let Some(t) = super::start(super::Files::Istio).await {
                $body(t).await;
            }
        }
    };
}
pub(crate) use task;

/// Counts the pages of `n` anonymous requests by what they show.
pub(crate) async fn sample(t: &Task, n: usize) -> (usize, usize, usize) {
    let (mut none, mut black, mut red) = (0, 0, 0);
    for _ in 0..n {
        let p = t.page(None).await;
        assert_eq!(p.status, 200, "{p:?}");
        match p.stars() {
            None => none += 1,
            Some("black") => black += 1,
            Some(_) => red += 1,
        }
    }
    (none, black, red)
}

/// Whether `got` of `n` is within five standard deviations of a share `p` (the tasks check
/// 50 ± 10 of 100, two deviations: that fails one run in twenty).
pub(crate) fn about(got: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (got as f64 - mean).abs() <= 5.0 * sd.max(0.5)
}
