//! The project's own Bookinfo networking YAML (written here, with the semantics of Istio's
//! `samples/bookinfo/networking`), embedded so the launcher and the tests need nothing else,
//! and the services YAML for the ports Bookinfo runs on.

use std::net::SocketAddr;

use crate::{NAMESPACE, WORKLOADS};

macro_rules! files {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $($(#[$doc])* pub const $name: &str = include_str!(concat!("../networking/", $file));)*
        /// Every file, by its name.
        pub const FILES: &[(&str, &str)] = &[$(($file, $name)),*];
    };
}

files! {
    /// Version subsets for every service.
    DESTINATION_RULE_ALL = "destination-rule-all.yaml";
    /// Version subsets, and Istio mutual TLS on every hop.
    DESTINATION_RULE_ALL_MTLS = "destination-rule-all-mtls.yaml";
    /// Every service to v1.
    ALL_V1 = "virtual-service-all-v1.yaml";
    /// jason to reviews v2, others v1.
    REVIEWS_TEST_V2 = "virtual-service-reviews-test-v2.yaml";
    /// jason to reviews v2, others v3.
    REVIEWS_JASON_V2_V3 = "virtual-service-reviews-jason-v2-v3.yaml";
    /// reviews v1 50 %, v3 50 %.
    REVIEWS_50_V3 = "virtual-service-reviews-50-v3.yaml";
    /// reviews v1 80 %, v2 20 %.
    REVIEWS_80_20 = "virtual-service-reviews-80-20.yaml";
    /// reviews v1 90 %, v2 10 %.
    REVIEWS_90_10 = "virtual-service-reviews-90-10.yaml";
    /// reviews v2 50 %, v3 50 %.
    REVIEWS_V2_V3 = "virtual-service-reviews-v2-v3.yaml";
    /// reviews v3.
    REVIEWS_V3 = "virtual-service-reviews-v3.yaml";
    /// A 7 s delay on jason's ratings calls.
    RATINGS_TEST_DELAY = "virtual-service-ratings-test-delay.yaml";
    /// HTTP 500 on jason's ratings calls.
    RATINGS_TEST_ABORT = "virtual-service-ratings-test-abort.yaml";
    /// 555 on every details call.
    FAULT_INJECTION_DETAILS_V1 = "fault-injection-details-v1.yaml";
}

/// Bookinfo's Services (port 9080, as in Istio's bookinfo.yaml) and one WorkloadEntry per
/// workload at `addrs` (in [`WORKLOADS`] order), with its labels and service account.
pub fn services(addrs: &[SocketAddr]) -> String {
    let mut out =
        String::from("# Bookinfo on one machine: Services select WorkloadEntries on loopback.\n");
    let mut apps: Vec<&str> = WORKLOADS.iter().map(|w| w.app).collect();
    apps.dedup();
    for app in apps {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: {app}, namespace: {NAMESPACE}, labels: {{ app: {app}, service: {app} }} }}\n\
             spec:\n  ports: [{{ port: 9080, name: http }}]\n  selector: {{ app: {app} }}\n---\n"
        ));
    }
    for (w, addr) in WORKLOADS.iter().zip(addrs) {
        out.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{ name: {}, namespace: {NAMESPACE} }}\n\
             spec: {{ address: {}, ports: {{ http: {} }}, labels: {{ app: {}, version: {} }}, serviceAccount: {} }}\n---\n",
            w.name,
            addr.ip(),
            addr.port(),
            w.app,
            w.version,
            w.service_account
        ));
    }
    out
}
