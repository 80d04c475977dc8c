//! Request routing (R1-R3) and traffic shifting (S1-S4).

use super::{Task, about, sample, task};

async fn r1_all_v1(t: Task) {
    t.apply("virtual-service-all-v1.yaml").await;
    for _ in 0..20 {
        let p = t.page_until(None, "R1: reviews v1", |p| p.no_stars()).await;
        assert!(p.has("Book Details"), "{p:?}");
    }
    let p = t.page(Some("jason")).await;
    assert!(p.no_stars() && p.has("Sign out") && p.has("jason"), "{p:?}");
}
task!(
    r1_every_page_shows_reviews_v1,
    r1_every_page_shows_reviews_v1_istio,
    r1_all_v1
);

async fn r2_user_identity(t: Task) {
    t.apply("virtual-service-all-v1.yaml").await;
    t.apply("virtual-service-reviews-test-v2.yaml").await;
    let p = t
        .page_until(Some("jason"), "R2: jason sees v2", |p| {
            p.stars() == Some("black")
        })
        .await;
    assert!(p.has("Book Details"));
    for _ in 0..10 {
        assert_eq!(t.page(Some("jason")).await.stars(), Some("black"));
        assert!(t.page(None).await.no_stars());
    }
}
task!(
    r2_jason_sees_black_stars_others_none,
    r2_jason_sees_black_stars_others_none_istio,
    r2_user_identity
);

async fn r3_jason_v2_others_v3(t: Task) {
    t.apply("virtual-service-reviews-jason-v2-v3.yaml").await;
    t.page_until(None, "R3: others see v3", |p| p.stars() == Some("red"))
        .await;
    for i in 0..10 {
        let p = t.page(Some("jason")).await;
        assert_eq!(p.stars(), Some("black"), "jason, page {i}: {p:?}");
        let p = t.page(None).await;
        assert_eq!(p.stars(), Some("red"), "anonymous, page {i}: {p:?}");
    }
}
task!(
    r3_jason_black_others_red,
    r3_jason_black_others_red_istio,
    r3_jason_v2_others_v3
);

const N: usize = 300;

async fn s1_fifty_fifty(t: Task) {
    t.apply("virtual-service-all-v1.yaml").await;
    t.apply("virtual-service-reviews-50-v3.yaml").await;
    t.page_until(None, "S1 applied", |p| p.stars() == Some("red"))
        .await;
    let (none, black, red) = sample(&t, N).await;
    assert_eq!(black, 0);
    assert!(
        about(red, N, 0.5) && none + red == N,
        "S1: {red} red of {N}"
    );
}
task!(
    s1_half_the_pages_show_red_stars,
    s1_half_the_pages_show_red_stars_istio,
    s1_fifty_fifty
);

async fn s2_all_v3(t: Task) {
    t.apply("virtual-service-all-v1.yaml").await;
    t.apply("virtual-service-reviews-v3.yaml").await;
    t.page_until(None, "S2 applied", |p| p.stars() == Some("red"))
        .await;
    let (none, black, red) = sample(&t, 100).await;
    assert_eq!((none, black, red), (0, 0, 100));
}
task!(
    s2_every_page_shows_red_stars,
    s2_every_page_shows_red_stars_istio,
    s2_all_v3
);

async fn s3_eighty_twenty_and_ninety_ten(t: Task) {
    t.apply("virtual-service-reviews-80-20.yaml").await;
    // Without a VirtualService every version serves; once v3 is gone, the split is in place.
    t.settled("S3 applied", 50, |p| p.stars() != Some("red"))
        .await;
    let (none, black, red) = sample(&t, N).await;
    assert!(
        red == 0 && about(black, N, 0.2) && none + black == N,
        "80/20: {black} black of {N}"
    );
    t.apply("virtual-service-reviews-90-10.yaml").await;
    // No page tells 80/20 from 90/10: give the push a moment, then count.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (none, black, _) = sample(&t, N).await;
    assert!(
        about(black, N, 0.1) && none + black == N,
        "90/10: {black} black of {N}"
    );
}
task!(
    s3_eighty_twenty_then_ninety_ten,
    s3_eighty_twenty_then_ninety_ten_istio,
    s3_eighty_twenty_and_ninety_ten
);

async fn s4_v2_v3(t: Task) {
    t.apply("virtual-service-reviews-v2-v3.yaml").await;
    t.settled("S4 applied", 50, |p| p.stars().is_some()).await;
    let (none, black, red) = sample(&t, N).await;
    assert!(
        none == 0 && about(black, N, 0.5) && black + red == N,
        "S4: {black} black, {red} red"
    );
}
task!(
    s4_every_page_has_stars_half_black,
    s4_every_page_has_stars_half_black_istio,
    s4_v2_v3
);
