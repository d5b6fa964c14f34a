//! Prometheus metrics of the webhook, all under `tenantry_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub operation: &'static str,
    pub kind: String,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub policy: String,
    /// The tenant owning the object; empty for cluster-scoped and unowned objects.
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub denials: Family<DenialLabels, Counter>,
    pub audit_violations: Family<DenialLabels, Counter>,
    pub latency: Family<EndpointLabels, Histogram>,
    pub bad_requests: Counter,
    pub directory_version: Gauge,
    pub directory_age_seconds: Gauge,
    pub directory_stale: Gauge,
    pub policy_reloads: Family<ResultLabels, Counter>,
    pub policies_loaded: Gauge,
    pub tenants_reloads: Family<ResultLabels, Counter>,
    pub certificate_reloads: Family<ResultLabels, Counter>,
    pub certificate_expiry: Gauge,
    pub traffic_view_requests: Family<ResultLabels, Counter>,
    pub reservations: Gauge,
    pub tracked_objects: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tenantry");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews by endpoint, operation, kind and decision",
            requests.clone(),
        );
        // Bounded by the directory: policies × tenants, plus the empty tenant.
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "admission_denials",
            "Denials by the policy that denied and the tenant owning the object (empty when none)",
            denials.clone(),
        );
        let audit_violations = Family::<DenialLabels, Counter>::default();
        registry.register(
            "admission_audit_violations",
            "Requests an audit-mode policy (@mode(\"audit\")) would have denied, by policy and tenant",
            audit_violations.clone(),
        );
        // 50 µs … ~6.5 s: decisions are in-memory and fast, but a review that waits (a shared
        // quota reservation in Redis) must stay visible up to the API server's 5 s timeout.
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.00005, 2.0, 18,
            ))
        });
        registry.register(
            "admission_duration_seconds",
            "Time to decide one admission review, from parsed body to response",
            latency.clone(),
        );
        let bad_requests = Counter::default();
        registry.register(
            "admission_bad_requests",
            "Bodies that were not AdmissionReviews (HTTP 400)",
            bad_requests.clone(),
        );
        let directory_version = Gauge::default();
        registry.register(
            "directory_version",
            "Version of the tenant snapshot in use",
            directory_version.clone(),
        );
        let directory_age_seconds = Gauge::default();
        registry.register(
            "directory_age_seconds",
            "Seconds since the tenant source last confirmed the snapshot",
            directory_age_seconds.clone(),
        );
        let directory_stale = Gauge::default();
        registry.register(
            "directory_stale",
            "1 while the snapshot is older than --max-stale and writes to tenants are refused",
            directory_stale.clone(),
        );
        let policy_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy reloads by result (ok, error)",
            policy_reloads.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "policies_loaded",
            "Policies in the loaded set",
            policies_loaded.clone(),
        );
        let tenants_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tenants_file_reloads",
            "Tenants file reloads by result (ok, error)",
            tenants_reloads.clone(),
        );
        let certificate_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate reloads by result (ok, error)",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the serving certificate now in use expires (Unix time)",
            certificate_expiry.clone(),
        );
        let traffic_view_requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "traffic_view_requests",
            "Traffic view requests from enforcers by result (changed, not_modified, unavailable)",
            traffic_view_requests.clone(),
        );
        let reservations = Gauge::default();
        registry.register(
            "quota_reservations",
            "Admitted creates not yet observed",
            reservations.clone(),
        );
        let tracked_objects = Gauge::default();
        registry.register(
            "usage_tracked_objects",
            "Objects counted for quota usage",
            tracked_objects.clone(),
        );
        Metrics {
            registry,
            requests,
            denials,
            audit_violations,
            latency,
            bad_requests,
            directory_version,
            directory_age_seconds,
            directory_stale,
            policy_reloads,
            policies_loaded,
            tenants_reloads,
            certificate_reloads,
            certificate_expiry,
            traffic_view_requests,
            reservations,
            tracked_objects,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
