//! Checks beyond the schema, like `istioctl analyze`: things that parse but cannot work.
//! Errors make `validate` fail and `serve` keep the last good configuration; warnings are
//! reported and served around.

use crate::config::istio::{AuthorizationPolicy, HttpRoute, StringMatch};
use crate::config::{Config, Diagnostic, Object, Severity, Spec};
use crate::registry::Registry;

/// Every problem found, errors and warnings.
pub fn analyze(config: &Config, registry: &Registry) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for o in &config.objects {
        let ns = o.metadata.namespace();
        match &o.spec {
            Spec::VirtualService(vs) => {
                for (i, r) in vs.http.iter().enumerate() {
                    http_route(o, i, r, registry, ns, config, &mut out);
                }
            }
            Spec::AuthorizationPolicy(p) => authorization(o, p, registry, ns, config, &mut out),
            _ => {}
        }
    }
    out
}

/// CUSTOM policies need a provider the mesh config defines, reaching a known service; a
/// policy that lacks them still loads (as in istiod) and fails closed.
fn authorization(
    o: &Object,
    p: &AuthorizationPolicy,
    registry: &Registry,
    ns: &str,
    config: &Config,
    out: &mut Vec<Diagnostic>,
) {
    let custom = p.action.as_deref() == Some("CUSTOM");
    match (&p.provider, custom) {
        (None, true) => out.push(diag(
            o,
            "spec.provider",
            "CUSTOM needs a provider (an extension provider of the mesh config)".into(),
            Severity::Error,
        )),
        (Some(_), false) => out.push(diag(
            o,
            "spec.provider",
            "a provider is only used with action CUSTOM".into(),
            Severity::Error,
        )),
        (Some(provider), true) => {
            let defined = config.objects.iter().find_map(|x| match &x.spec {
                Spec::MeshConfig(m) => m
                    .extension_providers
                    .iter()
                    .find(|e| e.name == provider.name),
                _ => None,
            });
            let fail_closed = "requests the policy selects are denied";
            match defined {
                None => out.push(diag(
                    o,
                    "spec.provider.name",
                    format!(
                        "provider {:?} is not among the mesh config's extensionProviders (the istio ConfigMap); {fail_closed}",
                        provider.name
                    ),
                    Severity::Warning,
                )),
                Some(e) => {
                    let service = match (&e.envoy_ext_authz_http, &e.envoy_ext_authz_grpc) {
                        (Some(h), _) => Some(&h.service),
                        (_, Some(g)) => Some(&g.service),
                        _ => None,
                    };
                    match service {
                        None => out.push(diag(
                            o,
                            "spec.provider.name",
                            format!(
                                "provider {:?} has no envoyExtAuthzHttp or envoyExtAuthzGrpc settings; {fail_closed}",
                                provider.name
                            ),
                            Severity::Warning,
                        )),
                        Some(s) if registry.resolve(s, ns).is_none() => out.push(diag(
                            o,
                            "spec.provider.name",
                            format!(
                                "provider {:?} names service {s:?}, which is not in the registry; {fail_closed}",
                                provider.name
                            ),
                            Severity::Warning,
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
        (None, false) => {}
    }
}

fn diag(o: &Object, field: &str, message: String, severity: Severity) -> Diagnostic {
    Diagnostic {
        origin: o.origin.clone(),
        field: Some(field.into()),
        message: format!("{} {}: {message}", o.spec.kind(), o.metadata.name),
        severity,
    }
}

fn http_route(
    o: &Object,
    i: usize,
    r: &HttpRoute,
    registry: &Registry,
    ns: &str,
    config: &Config,
    out: &mut Vec<Diagnostic>,
) {
    let at = |f: &str| format!("spec.http[{i}]{f}");
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
        r.delegate.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => out.push(diag(
            o,
            &at(""),
            "needs a route, redirect, directResponse or delegate".into(),
            Severity::Error,
        )),
        1 => {}
        _ => out.push(diag(
            o,
            &at(""),
            "route, redirect, directResponse and delegate are mutually exclusive".into(),
            Severity::Error,
        )),
    }
    if r.route.len() > 1 {
        let weights: Vec<i32> = r.route.iter().map(|d| d.weight.unwrap_or(0)).collect();
        let sum: i64 = weights.iter().map(|w| i64::from(*w)).sum();
        if weights.iter().any(|w| *w < 0) {
            out.push(diag(
                o,
                &at(".route"),
                "weights must not be negative".into(),
                Severity::Error,
            ));
        } else if sum != 100 {
            out.push(diag(
                o,
                &at(".route"),
                format!("the destination weights add up to {sum}, not 100"),
                Severity::Error,
            ));
        }
    }
    for (j, d) in r
        .route
        .iter()
        .map(|d| &d.destination)
        .chain(r.mirror.iter())
        .enumerate()
    {
        let field = at(&format!(".route[{j}].destination"));
        match registry.resolve(&d.host, ns) {
            None => out.push(diag(
                o,
                &format!("{field}.host"),
                format!("no service {:?} is known", d.host),
                Severity::Warning,
            )),
            Some(svc) => {
                if let Some(subset) = &d.subset {
                    let defined = config.objects.iter().any(|x| match &x.spec {
                        Spec::DestinationRule(dr) => {
                            registry
                                .resolve(&dr.host, x.metadata.namespace())
                                .is_some_and(|s| s.hostname == svc.hostname)
                                && dr.subsets.iter().any(|s| &s.name == subset)
                        }
                        _ => false,
                    });
                    if !defined {
                        out.push(diag(
                            o,
                            &format!("{field}.subset"),
                            format!(
                                "no DestinationRule defines subset {subset:?} of {}",
                                svc.hostname
                            ),
                            Severity::Warning,
                        ));
                    }
                }
            }
        }
    }
    let percent = |p: Option<f64>, field: &str, out: &mut Vec<Diagnostic>| {
        if let Some(v) = p.filter(|v| !(0.0..=100.0).contains(v)) {
            out.push(diag(
                o,
                &at(field),
                format!("{v} is not a percentage (0-100)"),
                Severity::Error,
            ));
        }
    };
    if let Some(f) = &r.fault {
        if let Some(a) = &f.abort {
            percent(
                a.percentage.map(|p| p.value),
                ".fault.abort.percentage.value",
                out,
            );
            match (&a.http_status, &a.grpc_status) {
                (Some(s), _) if !(200..600).contains(s) => out.push(diag(
                    o,
                    &at(".fault.abort.httpStatus"),
                    format!("{s} is not an HTTP status"),
                    Severity::Error,
                )),
                (None, None) => out.push(diag(
                    o,
                    &at(".fault.abort"),
                    "httpStatus or grpcStatus is required".into(),
                    Severity::Error,
                )),
                _ => {}
            }
        }
        if let Some(d) = &f.delay {
            percent(
                d.percentage.map(|p| p.value),
                ".fault.delay.percentage.value",
                out,
            );
            if d.fixed_delay.is_none() {
                out.push(diag(
                    o,
                    &at(".fault.delay.fixedDelay"),
                    "is required".into(),
                    Severity::Error,
                ));
            }
        }
    }
    percent(
        r.mirror_percentage.map(|p| p.value),
        ".mirrorPercentage.value",
        out,
    );
    if let Some(retries) = &r.retries
        && retries.attempts < 0
    {
        out.push(diag(
            o,
            &at(".retries.attempts"),
            "must not be negative".into(),
            Severity::Error,
        ));
    }
    for (k, m) in r.matches.iter().enumerate() {
        let regexes = m
            .uri
            .iter()
            .map(|u| ("uri".to_owned(), u))
            .chain(m.headers.iter().map(|(h, v)| (format!("headers.{h}"), v)));
        for (name, sm) in regexes {
            if let StringMatch::Regex(re) = sm
                && let Err(e) = regex::Regex::new(re)
            {
                out.push(diag(
                    o,
                    &at(&format!(".match[{k}].{name}.regex")),
                    format!("invalid regex: {e}"),
                    Severity::Error,
                ));
            }
        }
    }
}
