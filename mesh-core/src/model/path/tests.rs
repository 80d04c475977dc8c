use super::*;

fn canon(p: &str) -> Option<String> {
    canonicalize(p.as_bytes()).map(|c| String::from_utf8(c.into_owned()).expect("ASCII out"))
}

/// What Envoy 1.40 forwarded with `normalize_path: true` alone, byte for byte (`None`: 400),
/// recorded from a real Envoy; `tests/integration/inbound_normalization.rs` keeps checking
/// the same corpus against it.
const ENVOY_NORMALIZE_PATH: &[(&str, Option<&str>)] = &[
    ("/a/../b", Some("/b")),
    ("/a/./b", Some("/a/b")),
    ("/a/%2e%2e/b", Some("/b")),
    ("/a/%2E./b", Some("/b")),
    ("/a/.%2e/b", Some("/b")),
    ("/%61dmin", Some("/admin")),
    ("/a%2fb", Some("/a%2fb")),
    ("/a%2Fb", Some("/a%2Fb")),
    ("/a%5cb", Some("/a%5cb")),
    ("/a\\b", Some("/a/b")),
    ("/a//b", Some("/a//b")),
    ("/a%7e", Some("/a~")),
    ("/a%7E", Some("/a~")),
    ("/a%3a", Some("/a%3a")),
    ("/a%3A", Some("/a%3A")),
    ("/a%2d", Some("/a-")),
    ("/%zz", Some("/%zz")),
    ("/a%", Some("/a%")),
    ("/a%2", Some("/a%2")),
    ("/a%25", Some("/a%25")),
    ("/a%00", None),
    ("/a%20b", Some("/a%20b")),
    ("/..", Some("/")),
    ("/../..", Some("/")),
    ("/a/..", Some("/")),
    ("/a/.", Some("/a/")),
    ("/a\"b", Some("/a%22b")),
    ("/a{b}", Some("/a%7Bb%7D")),
    ("/a|b", Some("/a%7Cb")),
    ("/a^b", Some("/a%5Eb")),
    ("/a`b", Some("/a%60b")),
    ("/a<b", Some("/a%3Cb")),
    ("/a/%2e/b", Some("/a/b")),
    ("/a/.../b", Some("/a/.../b")),
    ("/a/..b/c", Some("/a/..b/c")),
    ("/a/b..", Some("/a/b..")),
    ("/.a", Some("/.a")),
    ("/a/..;/b", Some("/b")),
    ("/a/..%2fb", Some("/a/..%2fb")),
    ("/a/%2e%2e%2fb", Some("/a/..%2fb")),
    ("/a/..\\b", Some("/b")),
    ("/a/.\\b", Some("/a/b")),
    ("/a/b/%2e", Some("/a/b/")),
    ("/a/b/%2e%2e", Some("/a/")),
    ("/a%2e%2e", Some("/a..")),
    ("/a/%2e%2E", Some("/")),
    ("/a/%252e%252e/b", Some("/a/%252e%252e/b")),
    ("/a/%%32e", Some("/a/%252e")),
    ("/a/%2%65", Some("/a/%252e")),
    ("/%41%5A%61%7A%30%39%2D%2E%5F%7E", Some("/AZaz09-._~")),
    (
        "/%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%40",
        Some("/%21%24%26%27%28%29%2A%2B%2C%3B%3D%3A%40"),
    ),
    ("/%2F%3F%23%5B%5D", Some("/%2F%3F%23%5B%5D")),
    ("/%80%ff%FF", Some("/%80%ff%FF")),
    ("/a/./../b", Some("/b")),
    ("//a", Some("//a")),
    ("///", Some("///")),
    ("/./", Some("/")),
    ("/.", Some("/")),
    ("/a;b", Some("/a;b")),
    ("/a'b", Some("/a'b")),
    ("/a!b", Some("/a!b")),
    ("/a$b", Some("/a$b")),
    ("/a@b", Some("/a@b")),
    ("/a[b]", Some("/a[b]")),
    ("/a%7f", Some("/a%7f")),
    ("/a%1f", Some("/a%1f")),
    ("/a%09", Some("/a%09")),
    ("/%2e", Some("/")),
    ("/%2e%2e", Some("/")),
    // Literal dots followed by `;`: the segment runs to the next `/`.
    ("/a/.;/b", Some("/a/b")),
    ("/a/..;x/b", Some("/b")),
    ("/a/..;", Some("/")),
    ("/a/b/..;", Some("/a/")),
    ("/a;x/../b", Some("/b")),
    ("/a/..%3b/b", Some("/a/..%3b/b")),
    ("/a/..;;/b", Some("/b")),
    ("/a/.;x/b", Some("/a/b")),
    ("/a/%2e%2e;/b", Some("/a/..;/b")),
    ("/;/b", Some("/;/b")),
    ("/a/...;/b", Some("/a/...;/b")),
    ("/a/%2e.;/b", Some("/a/..;/b")),
    ("/a/%2e;/b", Some("/a/.;/b")),
    ("/a/..;x%2fb/c", Some("/c")),
    ("/a/b/.;/..;/c", Some("/a/c")),
    ("/a/..;x;y/b", Some("/b")),
    ("/a/x..;/b", Some("/a/x..;/b")),
    ("/a/..;%2e%2e/b", Some("/b")),
    ("/a/.;./b", Some("/a/b")),
    ("/a/;/b", Some("/a/;/b")),
    ("/..;/a", Some("/a")),
    ("/a/..;x", Some("/")),
    ("/a/..;x\\b/c", Some("/c")),
    ("/a/.;x\\b", Some("/a/")),
    ("/a/..\\;/b", Some("/;/b")),
    ("/a/..;/..", Some("/")),
    ("/a/b/c/..;/..;", Some("/a/")),
    ("/a/.%2e;x/b", Some("/a/..;x/b")),
    ("/a/..%3bx/b", Some("/a/..%3bx/b")),
    // `;` after dots only counts right after a literal `/`.
    ("/a\\.;/b", Some("/a/.;/b")),
    ("/a\\..;/b", Some("/a/..;/b")),
    ("/0\\..;/../admin", Some("/0/admin")),
    ("/a/x/..;x\\..\\b", Some("/a/")),
    ("/a//..;/b", Some("/a/b")),
    ("/a/b/..;/..;/c", Some("/c")),
    (
        "/%5C//%u002e%5C%%32e\\.;..//",
        Some("/%5C//%u002e%5C%252e/.;..//"),
    ),
];

#[test]
fn canonicalize_agrees_with_envoy() {
    for (input, envoy) in ENVOY_NORMALIZE_PATH {
        assert_eq!(canon(input).as_deref(), *envoy, "{input:?}");
    }
}

#[test]
fn a_second_pass_removes_what_envoy_leaves_behind() {
    // Envoy forwards these with `..;` / `.;` segments that Tomcat-style servers resolve;
    // normalizing to a fixed point removes them before policy sees the path.
    let fully = |p: &str| {
        canonicalize_fully(p.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap())
    };
    assert_eq!(fully("/a/.%2e;x/b").as_deref(), Some("/b"));
    assert_eq!(fully("/a/%2e%2e;/b").as_deref(), Some("/b"));
    assert_eq!(fully("/a/%2e;/b").as_deref(), Some("/a/b"));
    assert_eq!(fully("/a/b").as_deref(), Some("/a/b"));
    assert_eq!(fully("/a/%00"), None);
}

#[test]
fn escaped_slashes_and_merging_as_envoy() {
    let forward = PathNormalization {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::UnescapeAndForward,
    };
    let f = |p: &str| match forward.apply(p) {
        PathAction::Keep => p.to_owned(),
        PathAction::Forward(x) => x,
        other => panic!("{p}: {other:?}"),
    };
    // Recorded from Envoy 1.40 with the same settings.
    assert_eq!(f("/a%2fb"), "/a/b");
    assert_eq!(f("/a%5Cb/.."), "/a/");
    assert_eq!(f("/a%2F..%2Fb"), "/b");
    assert_eq!(f("/a//b%2f%2f"), "/a/b/");
    assert_eq!(f("/a?x=%2f"), "/a?x=%2f");
    assert_eq!(f("/a%2fb?q=1"), "/a/b?q=1");
    assert_eq!(f("/%2F"), "//");

    let redirect = PathNormalization {
        normalize: true,
        escaped_slashes: EscapedSlashes::UnescapeAndRedirect,
        ..Default::default()
    };
    assert_eq!(
        redirect.apply("/a%2fb/../c?q=%2f"),
        PathAction::Redirect("/a/c?q=%2f".into())
    );
    assert_eq!(
        redirect.apply("/x/%2e%2e/a%5cb"),
        PathAction::Redirect("/a/b".into())
    );
    assert_eq!(redirect.apply("/a?x=%2f"), PathAction::Keep);

    let reject = PathNormalization {
        escaped_slashes: EscapedSlashes::RejectRequest,
        ..Default::default()
    };
    assert_eq!(reject.apply("/a%2fb"), PathAction::Reject);
    assert_eq!(reject.apply("/a%5Cb/.."), PathAction::Reject);
    assert_eq!(reject.apply("/a?x=%2f"), PathAction::Keep);

    let merge = PathNormalization {
        merge_slashes: true,
        ..Default::default()
    };
    assert_eq!(
        merge.apply("//a//b?x=//y"),
        PathAction::Forward("/a/b?x=//y".into())
    );
    assert_eq!(merge.apply("/a/../b"), PathAction::Keep);
}

#[test]
fn the_query_is_never_touched() {
    let base = PathNormalization {
        normalize: true,
        ..Default::default()
    };
    assert_eq!(
        base.apply("/a/b/..?x=/../y"),
        PathAction::Forward("/a/?x=/../y".into())
    );
    assert_eq!(base.apply("/a?b%2e%2e"), PathAction::Keep);
    assert_eq!(base.apply("/a?"), PathAction::Keep);
}

mod properties {
    use proptest::prelude::*;

    use super::super::*;

    /// Path pieces an attacker combines: dots, escapes of every kind, slashes both ways,
    /// parameters, and plain names.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/", "\\", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", ";", ";x", "a",
            "admin", "%61", "%41", "%", "%%", "%2", "%zz", "%25", "%3b", "~", "%7e", "-", "{",
            "%u002e", "//", "/./", "/../", "%00",
        ])
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    fn base() -> PathNormalization {
        PathNormalization {
            normalize: true,
            ..Default::default()
        }
    }

    fn settings() -> impl Strategy<Value = PathNormalization> {
        (
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![
                EscapedSlashes::KeepUnchanged,
                EscapedSlashes::UnescapeAndForward,
            ]),
        )
            .prop_map(
                |(normalize, merge_slashes, escaped_slashes)| PathNormalization {
                    normalize,
                    merge_slashes,
                    escaped_slashes,
                },
            )
    }

    fn normalized(n: &PathNormalization, p: &str) -> Option<String> {
        match n.apply(p) {
            PathAction::Keep => Some(p.to_owned()),
            PathAction::Forward(x) => Some(x),
            PathAction::Redirect(_) | PathAction::Reject => None,
        }
    }

    /// Whether a path (no query) has a segment a server could read as `.` or `..`: literal,
    /// escaped, or with Tomcat-style parameters.
    fn has_dot_segment(p: &str) -> bool {
        p.split(['/', '\\']).any(|segment| {
            let name = segment.split(';').next().unwrap_or("");
            let decoded = name.replace("%2e", ".").replace("%2E", ".");
            decoded == "." || decoded == ".."
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn normalization_is_idempotent(p in path(), n in settings()) {
            if let Some(once) = normalized(&n, &p) {
                prop_assert_eq!(normalized(&n, &once), Some(once.clone()), "from {:?}", p);
            }
        }

        #[test]
        fn a_normalized_path_has_no_dot_segments(p in path()) {
            if let Some(once) = normalized(&base(), &p) {
                prop_assert!(!has_dot_segment(&once), "{:?} gave {:?}", p, once);
            }
        }

        #[test]
        fn the_output_is_visible_ascii(p in prop::collection::vec(any::<u8>(), 0..40)) {
            if let Some(c) = canonicalize_fully(&p) {
                prop_assert!(c.iter().all(|b| (0x21..0x7f).contains(b)), "{:?}", c);
                prop_assert_eq!(c.first(), Some(&b'/'));
            }
        }
    }
}
