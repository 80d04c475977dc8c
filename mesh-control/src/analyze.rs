//! Checks beyond the schema, like `istioctl analyze`: things that parse but cannot work.
//! Errors make `validate` fail and `serve` keep the last good configuration; warnings are
//! reported and served around.

use crate::config::istio::{
    AuthorizationPolicy, HttpRoute, PolicyTargetReference, StringMatch, WorkloadSelector,
};
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
            Spec::AuthorizationPolicy(p) => {
                authorization(o, p, registry, ns, config, &mut out);
                authorization_rules(o, p, &mut out);
                targets(
                    o,
                    p.selector.as_ref(),
                    crate::config::istio::target_refs(&p.target_ref, &p.target_refs),
                    config,
                    &mut out,
                );
            }
            Spec::RequestAuthentication(r) => targets(
                o,
                r.selector.as_ref(),
                crate::config::istio::target_refs(&r.target_ref, &r.target_refs),
                config,
                &mut out,
            ),
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

/// Every rule of an AuthorizationPolicy is generated as istiod generates it, or refused here:
/// nothing in a rule is dropped, since dropping part of an ALLOW rule widens it.
fn authorization_rules(o: &Object, p: &AuthorizationPolicy, out: &mut Vec<Diagnostic>) {
    use crate::generate::authz::{condition_key_error, parse_port};
    let action = p.action.as_deref().unwrap_or("ALLOW");
    let err = |out: &mut Vec<Diagnostic>, field: String, message: String| {
        out.push(diag(o, &field, message, Severity::Error))
    };
    if !matches!(action, "ALLOW" | "DENY" | "AUDIT" | "CUSTOM") {
        err(
            out,
            "spec.action".into(),
            format!("unknown action {action:?}"),
        );
    }
    if p.rules.is_empty() && matches!(action, "DENY" | "CUSTOM") {
        err(
            out,
            "spec.rules".into(),
            format!(
                "{action} action without `rules` is meaningless; add an empty rule `{{}}` to match every request"
            ),
        );
    }
    let cidr = |v: &str| -> Result<(), String> {
        let (addr, len) = match v.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (v, None),
        };
        let ip: std::net::IpAddr = addr.parse().map_err(|_| format!("bad IP address ({v})"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.map(str::parse::<u8>) {
            None => Ok(()),
            Some(Ok(l)) if l <= max => Ok(()),
            Some(_) => Err(format!("bad CIDR range ({v})")),
        }
    };
    for (i, rule) in p.rules.iter().enumerate() {
        let at = |f: &str| format!("spec.rules[{i}]{f}");
        for (j, from) in rule.from.iter().enumerate() {
            let s = &from.source;
            let lists: [(&str, &Vec<String>); 14] = [
                ("principals", &s.principals),
                ("notPrincipals", &s.not_principals),
                ("requestPrincipals", &s.request_principals),
                ("notRequestPrincipals", &s.not_request_principals),
                ("namespaces", &s.namespaces),
                ("notNamespaces", &s.not_namespaces),
                ("serviceAccounts", &s.service_accounts),
                ("notServiceAccounts", &s.not_service_accounts),
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ];
            empty_values(&lists, &at(&format!(".from[{j}].source")), out, &err);
            let lists = [
                ("ipBlocks", &s.ip_blocks),
                ("notIpBlocks", &s.not_ip_blocks),
                ("remoteIpBlocks", &s.remote_ip_blocks),
                ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
            ];
            for (name, list) in lists {
                for (k, v) in list.iter().enumerate() {
                    if let Err(why) = cidr(v) {
                        err(out, at(&format!(".from[{j}].source.{name}[{k}]")), why);
                    }
                }
            }
            if !s.service_accounts.is_empty()
                && (!s.principals.is_empty() || !s.namespaces.is_empty())
            {
                err(
                    out,
                    at(&format!(".from[{j}].source")),
                    "cannot set serviceAccounts with namespaces or principals".into(),
                );
            }
            for (name, list) in [
                ("trustDomains", &s.trust_domains),
                ("notTrustDomains", &s.not_trust_domains),
            ] {
                for (k, v) in list.iter().enumerate() {
                    let stars = v.matches('*').count();
                    if v.contains('/')
                        || stars > 1
                        || (stars == 1 && !v.starts_with('*') && !v.ends_with('*'))
                    {
                        err(
                            out,
                            at(&format!(".from[{j}].source.{name}[{k}]")),
                            format!(
                                "{v:?}: a trust domain has no `/` and at most one `*`, at the start or the end"
                            ),
                        );
                    }
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let op = &to.operation;
            let lists: [(&str, &Vec<String>); 8] = [
                ("hosts", &op.hosts),
                ("notHosts", &op.not_hosts),
                ("ports", &op.ports),
                ("notPorts", &op.not_ports),
                ("methods", &op.methods),
                ("notMethods", &op.not_methods),
                ("paths", &op.paths),
                ("notPaths", &op.not_paths),
            ];
            empty_values(&lists, &at(&format!(".to[{j}].operation")), out, &err);
            for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, v) in list.iter().enumerate() {
                    if let Err(why) = parse_port(v) {
                        err(out, at(&format!(".to[{j}].operation.{name}[{k}]")), why);
                    }
                }
            }
            for (name, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                for (k, v) in list.iter().enumerate() {
                    if v.contains('{') || v.contains('}') {
                        err(
                            out,
                            at(&format!(".to[{j}].operation.{name}[{k}]")),
                            format!(
                                "{v:?}: path templates ({{*}}, {{**}}) are not supported by mesh-control"
                            ),
                        );
                    }
                }
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            let field = at(&format!(".when[{j}]"));
            if let Some(why) = condition_key_error(&c.key) {
                err(out, format!("{field}.key"), why);
                continue;
            }
            if c.values.is_empty() && c.not_values.is_empty() {
                err(
                    out,
                    field.clone(),
                    format!(
                        "at least one of `values` or `notValues` must be set for key {}",
                        c.key
                    ),
                );
            }
            for (name, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                for (k, v) in list.iter().enumerate() {
                    let checked = match c.key.as_str() {
                        "destination.port" => parse_port(v).map(|_| ()),
                        "source.ip" | "remote.ip" | "destination.ip" => cidr(v),
                        _ => Ok(()),
                    };
                    if let Err(why) = checked {
                        err(out, format!("{field}.{name}[{k}]"), why);
                    }
                }
            }
        }
        if action == "CUSTOM" {
            let custom_only = |what: &str, out: &mut Vec<Diagnostic>| {
                err(
                    out,
                    at(""),
                    format!("{what} is currently not supported with CUSTOM action"),
                )
            };
            for from in &rule.from {
                let s = &from.source;
                for (what, set) in [
                    ("From.Principals", !s.principals.is_empty()),
                    ("From.NotPrincipals", !s.not_principals.is_empty()),
                    ("From.RequestPrincipals", !s.request_principals.is_empty()),
                    (
                        "From.NotRequestPrincipals",
                        !s.not_request_principals.is_empty(),
                    ),
                    ("From.Namespaces", !s.namespaces.is_empty()),
                    ("From.NotNamespaces", !s.not_namespaces.is_empty()),
                    ("From.ServiceAccounts", !s.service_accounts.is_empty()),
                    (
                        "From.NotServiceAccounts",
                        !s.not_service_accounts.is_empty(),
                    ),
                    ("From.TrustDomains", !s.trust_domains.is_empty()),
                    ("From.NotTrustDomains", !s.not_trust_domains.is_empty()),
                ] {
                    if set {
                        custom_only(what, out);
                    }
                }
            }
            for c in &rule.when {
                if c.key.starts_with("request.auth.")
                    || matches!(
                        c.key.as_str(),
                        "source.namespace"
                            | "source.serviceAccount"
                            | "source.trustDomain"
                            | "source.principal"
                    )
                {
                    custom_only(&format!("when key {}", c.key), out);
                }
            }
        }
    }
}

/// istiod's checks of a `source` or an `operation`: it names something, and no value is empty
/// (an empty source or operation would match every request).
fn empty_values(
    lists: &[(&str, &Vec<String>)],
    field: &str,
    out: &mut Vec<Diagnostic>,
    err: &dyn Fn(&mut Vec<Diagnostic>, String, String),
) {
    if lists.iter().all(|(_, l)| l.is_empty()) {
        err(out, field.to_owned(), "must not be empty".into());
    }
    for (name, list) in lists {
        if list.iter().any(String::is_empty) {
            err(
                out,
                format!("{field}.{name}"),
                format!("empty value not allowed, found in {name}"),
            );
        }
    }
}

/// A policy's `targetRef` / `targetRefs`, as Istio validates them, and what they attach to
/// here: the workloads of a Service or ServiceEntry; Gateways, of which there are none.
fn targets<'a>(
    o: &Object,
    selector: Option<&WorkloadSelector>,
    refs: impl Iterator<Item = &'a PolicyTargetReference>,
    config: &Config,
    out: &mut Vec<Diagnostic>,
) {
    const KINDS: [&str; 4] = [
        "core/Service",
        "networking.istio.io/ServiceEntry",
        "gateway.networking.k8s.io/Gateway",
        "gateway.networking.k8s.io/GatewayClass",
    ];
    let refs: Vec<&PolicyTargetReference> = refs.collect();
    if refs.is_empty() {
        return;
    }
    if selector.is_some() {
        out.push(diag(
            o,
            "spec.selector",
            "only one of targetRefs or selector can be set".into(),
            Severity::Error,
        ));
    }
    let ns = o.metadata.namespace();
    for (i, t) in refs.iter().enumerate() {
        let field = format!("spec.targetRefs[{i}]");
        let kind = t.group_kind();
        if t.name.is_empty() {
            out.push(diag(
                o,
                &format!("{field}.name"),
                "targetRef name must be set".into(),
                Severity::Error,
            ));
        }
        if !t.namespace.is_empty() {
            out.push(diag(
                o,
                &format!("{field}.namespace"),
                "targetRef namespace must not be set; cross namespace referencing is not supported"
                    .into(),
                Severity::Error,
            ));
        }
        if !KINDS.contains(&kind.as_str()) {
            out.push(diag(
                o,
                &format!("{field}.kind"),
                format!("targetRef must be to one of {KINDS:?} but was {kind}"),
                Severity::Error,
            ));
            continue;
        }
        if kind.starts_with("gateway.networking.k8s.io/") {
            out.push(diag(
                o,
                &field,
                format!("{kind} {}: mesh-control serves no gateways, so the policy attaches to no workload", t.name),
                Severity::Warning,
            ));
            continue;
        }
        // The labels the target selects: its workloads are what the policy attaches to.
        let selects = config.objects.iter().find_map(|x| {
            if x.metadata.namespace() != ns || x.metadata.name != t.name {
                return None;
            }
            match (&x.spec, kind.as_str()) {
                (Spec::Service(svc), "core/Service") => Some(!svc.selector.is_empty()),
                (Spec::ServiceEntry(se), "networking.istio.io/ServiceEntry") => Some(
                    se.workload_selector
                        .as_ref()
                        .is_some_and(|w| !w.labels.is_empty()),
                ),
                _ => None,
            }
        });
        match selects {
            None => out.push(diag(
                o,
                &field,
                format!(
                    "no {} {:?} in namespace {ns}: the policy attaches to no workload",
                    t.kind, t.name
                ),
                Severity::Warning,
            )),
            // A waypoint would apply it to the service's traffic; here policy attaches to the
            // workloads a selector names, and there are none to name: refused rather than
            // dropped, since a DENY dropped lets everything through.
            Some(false) => out.push(diag(
                o,
                &field,
                format!(
                    "{} {:?} selects no workloads (no selector), so the policy cannot be attached",
                    t.kind, t.name
                ),
                Severity::Error,
            )),
            Some(true) => {}
        }
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
