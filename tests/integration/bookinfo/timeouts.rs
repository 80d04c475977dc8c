//! Request timeouts (T1, T2), with the task's inline VirtualServices.

use std::time::Duration;

use super::{Task, task};

const REVIEWS_V2: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v2}}]}]\n";
const RATINGS_DELAY_2S: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - fault: {delay: {percentage: {value: 100}, fixedDelay: 2s}}\n    route: [{destination: {host: ratings, subset: v1}}]\n";

async fn timeouts(t: Task) {
    t.apply("virtual-service-all-v1.yaml").await;
    t.apply_yaml("reviews-v2.yaml", REVIEWS_V2).await;
    t.apply_yaml("ratings-delay.yaml", RATINGS_DELAY_2S).await;
    // T1: black stars, about 2 s late.
    let p = t
        .page_until(None, "T1", |p| {
            p.stars() == Some("black") && p.took >= Duration::from_millis(1_900)
        })
        .await;
    assert!(p.took < Duration::from_secs(3), "{:?}", p.took);
    // T2: a 0.5 s timeout on the reviews route: productpage's two tries each end at 0.5 s.
    t.apply_yaml(
        "reviews-v2.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews, subset: v2}}], timeout: 0.5s}]\n",
    )
    .await;
    let p = t
        .page_until(None, "T2", |p| {
            p.has("Sorry, product reviews are currently unavailable for this book.")
        })
        .await;
    assert!(
        p.took >= Duration::from_millis(950) && p.took < Duration::from_millis(1_800),
        "about 1 s: {:?}",
        p.took
    );
}
task!(
    t1_t2_a_route_timeout_cuts_each_try,
    t1_t2_a_route_timeout_cuts_each_try_istio,
    timeouts
);
