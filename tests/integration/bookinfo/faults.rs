//! Fault injection (F1, F1b, F2, F3): the outcomes depend on the apps' own timeouts
//! (productpage 3 s with one retry to reviews; reviews v2 10 s and v3 2.5 s to ratings).

use std::time::Duration;

use super::{Task, task};

const REVIEWS_ERROR: &str = "Sorry, product reviews are currently unavailable for this book.";
const RATINGS_ERROR: &str = "Ratings service is currently unavailable";

async fn f1_delay(t: Task) {
    t.apply("virtual-service-all-v1.yaml").await;
    t.apply("virtual-service-reviews-test-v2.yaml").await;
    t.page_until(Some("jason"), "jason on v2", |p| p.stars() == Some("black"))
        .await;
    t.apply("virtual-service-ratings-test-delay.yaml").await;
    // Reviews v2 waits 7 s for ratings, within its 10 s; productpage gives up after 3 s, tries
    // once more, and gives up again: about 6 s.
    let p = t
        .page_until(Some("jason"), "F1: reviews unavailable", |p| {
            p.has(REVIEWS_ERROR)
        })
        .await;
    assert!(p.has("Error fetching product reviews"));
    assert!(
        p.took >= Duration::from_millis(5_900) && p.took < Duration::from_secs(8),
        "about 6 s: {:?}",
        p.took
    );
    let anon = t.page(None).await;
    assert!(
        anon.no_stars() && anon.took < Duration::from_secs(1),
        "{anon:?}"
    );
}
task!(
    f1_jason_waits_six_seconds_for_no_reviews,
    f1_jason_waits_six_seconds_for_no_reviews_istio,
    f1_delay
);

async fn f1b_fixed_by_v3(t: Task) {
    t.apply("virtual-service-reviews-test-v2.yaml").await;
    t.apply("virtual-service-reviews-v3.yaml").await;
    t.page_until(Some("jason"), "everyone on v3", |p| {
        p.stars() == Some("red")
    })
    .await;
    // A delay below v3's 2.5 s: red stars, about 2 s late.
    t.apply_yaml(
        "ratings-delay-2s.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - match: [{headers: {end-user: {exact: jason}}}]\n    fault: {delay: {percentage: {value: 100}, fixedDelay: 2s}}\n    route: [{destination: {host: ratings, subset: v1}}]\n  - route: [{destination: {host: ratings, subset: v1}}]\n",
    )
    .await;
    let p = t
        .page_until(Some("jason"), "F1b: 2 s late", |p| {
            p.took >= Duration::from_millis(1_900)
        })
        .await;
    assert_eq!(p.stars(), Some("red"), "{p:?}");
    // With 7 s, v3 gives up on ratings at 2.5 s and says so.
    t.apply("virtual-service-ratings-test-delay.yaml").await;
    let p = t
        .page_until(Some("jason"), "F1b: ratings unavailable", |p| {
            p.has(RATINGS_ERROR)
        })
        .await;
    assert!(p.has("Book Reviews") && p.stars().is_none(), "{p:?}");
    assert!(
        p.took >= Duration::from_millis(2_400) && p.took < Duration::from_millis(4_000),
        "about 2.5 s: {:?}",
        p.took
    );
}
task!(
    f1b_reviews_v3_gives_up_on_ratings_at_two_and_a_half_seconds,
    f1b_reviews_v3_gives_up_on_ratings_at_two_and_a_half_seconds_istio,
    f1b_fixed_by_v3
);

async fn f2_abort(t: Task) {
    t.apply("virtual-service-all-v1.yaml").await;
    t.apply("virtual-service-reviews-test-v2.yaml").await;
    t.apply("virtual-service-ratings-test-abort.yaml").await;
    let p = t
        .page_until(Some("jason"), "F2: ratings unavailable", |p| {
            p.has(RATINGS_ERROR)
        })
        .await;
    assert!(p.took < Duration::from_secs(1), "at once: {:?}", p.took);
    assert_eq!(p.body.matches(RATINGS_ERROR).count(), 2, "once per review");
    let anon = t.page(None).await;
    assert!(anon.no_stars() && !anon.has(RATINGS_ERROR), "{anon:?}");
}
task!(
    f2_jason_sees_ratings_unavailable,
    f2_jason_sees_ratings_unavailable_istio,
    f2_abort
);

async fn f3_details_abort(t: Task) {
    t.apply("fault-injection-details-v1.yaml").await;
    for user in [None, Some("jason")] {
        let p = t
            .page_until(user, "F3: details unavailable", |p| {
                p.has("Error fetching product details")
            })
            .await;
        assert!(p.has("Sorry, product details are currently unavailable for this book."));
        assert!(p.has("Book Reviews"), "reviews still shown: {p:?}");
    }
}
task!(
    f3_every_page_lacks_details,
    f3_every_page_lacks_details_istio,
    f3_details_abort
);
