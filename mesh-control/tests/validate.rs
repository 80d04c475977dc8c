//! `mesh-control validate`: Istio's own samples are accepted; broken YAML is rejected with
//! file:line:column and the field path.

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_control::config::{self, Spec};

fn shared_samples() -> Option<PathBuf> {
    mesh_test_support::shared_dir("istio-samples")
}

/// Every sample file on its own, as a user applies them (several redefine the same
/// VirtualService: they are alternatives, not one configuration).
fn sample_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("httpbin")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn istio_samples_are_accepted() {
    let Some(dir) = shared_samples() else { return };
    let mut objects = Vec::new();
    for file in sample_files(&dir) {
        let config = config::load_files(std::slice::from_ref(&file)).unwrap_or_else(|errors| {
            panic!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        mesh_control::registry::Registry::build(&config).unwrap_or_else(|errors| {
            panic!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        objects.extend(config.objects);
    }
    let count = |kind: &str| objects.iter().filter(|o| o.spec.kind() == kind).count();
    assert!(count("VirtualService") >= 15, "{}", count("VirtualService"));
    assert!(count("DestinationRule") >= 3);
    assert!(
        count("Service") >= 4 && count("Deployment") >= 6,
        "bookinfo.yaml's services and deployments"
    );
    let reviews_v2 = objects
        .iter()
        .find(|o| o.metadata.name == "reviews-v2" && o.spec.kind() == "Deployment")
        .expect("reviews-v2 deployment");
    let Spec::Deployment(d) = &reviews_v2.spec else {
        unreachable!()
    };
    assert_eq!(
        d.template.spec.service_account_name.as_deref(),
        Some("bookinfo-reviews")
    );
    assert_eq!(
        d.template
            .metadata
            .labels
            .get("version")
            .map(String::as_str),
        Some("v2")
    );
}

fn errors(yaml: &str) -> Vec<String> {
    config::parse_str(yaml, Path::new("broken.yaml"))
        .expect_err("must be rejected")
        .iter()
        .map(ToString::to_string)
        .collect()
}

const HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n";

#[test]
fn bad_duration_has_file_line_and_field() {
    let e = errors(&format!(
        "{HEAD}  http:\n  - timeout: soon\n    route:\n    - destination: {{host: reviews}}\n"
    ));
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("broken.yaml:8:"), "{}", e[0]);
    assert!(e[0].contains("spec.http[0].timeout"), "{}", e[0]);
    assert!(e[0].contains("\"soon\" is not a duration"), "{}", e[0]);
}

#[test]
fn misspelled_field_is_an_error_in_the_right_document() {
    let first = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: reviews\n";
    let e = errors(&format!(
        "{first}---\n{HEAD}  http:\n  - route:\n    - destination:\n        host: reviews\n        subst: v2\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("broken.yaml:17:"),
        "absolute line in the second document: {}",
        e[0]
    );
    assert!(
        e[0].contains("spec.http[0].route[0].destination"),
        "{}",
        e[0]
    );
    assert!(e[0].contains("unknown field `subst`"), "{}", e[0]);
}

#[test]
fn string_match_needs_exactly_one_kind() {
    let e = errors(&format!(
        "{HEAD}  http:\n  - match:\n    - uri: {{prefix: /a, exact: /b}}\n    route:\n    - destination: {{host: reviews}}\n"
    ));
    assert!(e[0].contains("spec.http[0].match[0].uri"), "{}", e[0]);
    assert!(
        e[0].contains("exactly one of exact, prefix or regex"),
        "{}",
        e[0]
    );
}

#[test]
fn wrong_type_and_missing_name() {
    let e = errors(&format!(
        "{HEAD}  http:\n  - retries: {{attempts: many}}\n    route:\n    - destination: {{host: reviews}}\n"
    ));
    assert!(
        e[0].contains("spec.http[0].retries.attempts") && e[0].contains("invalid type"),
        "{}",
        e[0]
    );
    let e = errors(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nspec: {host: reviews}\n",
    );
    assert!(e[0].contains("metadata.name: is required"), "{}", e[0]);
}

#[test]
fn yaml_syntax_error_is_located() {
    let e = errors("apiVersion: v1\nkind: Service\nmetadata: {name: x\n");
    assert!(e[0].starts_with("broken.yaml:"), "{}", e[0]);
    assert!(e[0].contains("error:"), "{}", e[0]);
}

#[test]
fn the_cli_exits_non_zero_and_prints_locations() {
    let dir = std::env::temp_dir().join(format!("mesh-control-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("vs.yaml");
    std::fs::write(&file, format!("{HEAD}  http:\n  - timeout: 3 seconds\n    route:\n    - destination: {{host: reviews}}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-control"))
        .arg("validate")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:8:", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("spec.http[0].timeout"), "{stderr}");
    std::fs::write(
        &file,
        format!(
            "{HEAD}  http:\n  - timeout: 3s\n    route:\n    - destination: {{host: reviews}}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-control"))
        .arg("validate")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_object_twice_in_one_file_names_both_places() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec: {host: reviews}\n";
    let dir = tempfile_dir("dup-one-file");
    std::fs::write(dir.join("a.yaml"), format!("{dr}---\n{dr}")).unwrap();
    let e = config::load_dir(&dir).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(e.len(), 1);
    let msg = e[0].to_string();
    assert!(
        msg.contains("a.yaml:6:1")
            && msg.contains("DestinationRule default/reviews is already defined at")
            && msg.contains("a.yaml:1:1"),
        "{msg}"
    );
}

#[test]
fn the_most_recently_written_file_wins_like_kubectl_apply() {
    let vs = |subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http: [{{route: [{{destination: {{host: reviews, subset: {subset}}}}}]}}]\n"
        )
    };
    let dir = tempfile_dir("dup-files");
    // b.yaml first, then a.yaml: the later write wins although it sorts first.
    std::fs::write(dir.join("b.yaml"), vs("v1")).unwrap();
    let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(dir.join("b.yaml"))
        .unwrap()
        .set_modified(earlier)
        .unwrap();
    std::fs::write(dir.join("a.yaml"), vs("v2")).unwrap();
    let c = config::load_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c.objects.len(), 1);
    assert!(c.objects[0].origin.file.ends_with("a.yaml"));
    let w = c
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        w.contains("b.yaml:1:1")
            && w.contains(
                "VirtualService default/reviews is replaced by the more recently written"
            )
            && w.contains("a.yaml:1:1"),
        "{w}"
    );
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mesh-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn analyzed(yaml: &str) -> Vec<String> {
    let config = config::parse_str(yaml, Path::new("a.yaml")).unwrap();
    let registry = mesh_control::registry::Registry::build(&config).unwrap();
    mesh_control::analyze::analyze(&config, &registry)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn semantic_errors_and_warnings() {
    let services = "apiVersion: v1\nkind: Service\nmetadata: {name: reviews}\nspec: {ports: [{port: 9080, name: http}]}\n---\n";
    let d = analyzed(&format!(
        "{services}{HEAD}  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}, weight: 50}}\n    - {{destination: {{host: ghost}}, weight: 40}}\n"
    ));
    assert!(d.iter().any(|x| x.contains("a.yaml:6:1: error: spec.http[0].route: VirtualService reviews: the destination weights add up to 90, not 100")), "{d:#?}");
    assert!(
        d.iter().any(
            |x| x.contains("warning: spec.http[0].route[0].destination.subset")
                && x.contains("no DestinationRule defines subset \"v1\"")
        ),
        "{d:#?}"
    );
    assert!(
        d.iter().any(
            |x| x.contains("warning: spec.http[0].route[1].destination.host")
                && x.contains("no service \"ghost\"")
        ),
        "{d:#?}"
    );

    let d = analyzed(&format!(
        "{HEAD}  http:\n  - match: [{{uri: {{regex: \"/a(\"}}}}]\n    fault: {{abort: {{percentage: {{value: 150}}}}}}\n    route: [{{destination: {{host: reviews}}}}]\n"
    ));
    assert!(
        d.iter()
            .any(|x| x.contains("error: spec.http[0].match[0].uri.regex")
                && x.contains("invalid regex")),
        "{d:#?}"
    );
    assert!(
        d.iter().any(
            |x| x.contains("error: spec.http[0].fault.abort.percentage.value")
                && x.contains("150 is not a percentage")
        ),
        "{d:#?}"
    );
    assert!(d.iter().any(|x| x.contains("error: spec.http[0].fault.abort: VirtualService reviews: httpStatus or grpcStatus is required")), "{d:#?}");
}

#[test]
fn mesh_config_errors_point_into_the_configmap() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |-\n    extensionProviders:\n    - name: authz\n      envoyExtAuthzHttp:\n        service: authz\n        port: eighty\n",
    )
    .unwrap();
    let errors = mesh_control::control::load(dir.path(), 1).expect_err("bad port");
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("mesh.yaml:10:")
            && text.contains("data.mesh.extensionProviders[0].envoyExtAuthzHttp.port"),
        "{text}"
    );
}

#[test]
fn custom_policies_need_a_known_provider() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("authz.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-provider, namespace: default}\nspec: {action: CUSTOM, rules: [{}]}\n",
    )
    .unwrap();
    let errors = mesh_control::control::load(dir.path(), 1).expect_err("no provider");
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("spec.provider") && text.contains("CUSTOM needs a provider"),
        "{text}"
    );

    std::fs::write(
        dir.path().join("authz.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: unknown, namespace: default}\nspec: {action: CUSTOM, provider: {name: nope}, rules: [{}]}\n",
    )
    .unwrap();
    mesh_control::control::load(dir.path(), 1).expect("warnings do not block serving");
    let config = mesh_control::config::load_dir(dir.path()).unwrap();
    let registry = mesh_control::registry::Registry::build(&config).unwrap();
    let warnings = mesh_control::analyze::analyze(&config, &registry)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        warnings.contains("\"nope\"") && warnings.contains("denied"),
        "{warnings}"
    );
}
