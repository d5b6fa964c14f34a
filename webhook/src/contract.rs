//! Names the webhook server shares with its deployment: endpoints, default ports, the
//! Kubernetes names in `deploy/`, and the kinds whose usage it watches (which RBAC must allow).
//! The `deploy/` tests check the manifests against these constants.

pub const MUTATE_PATH: &str = "/mutate";
pub const VALIDATE_PATH: &str = "/validate";
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
pub const METRICS_PATH: &str = "/metrics";

/// HTTPS for the API server (`--listen`).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8443";
/// Plain HTTP for the enforcers' traffic view (`--traffic-view-listen`).
pub const DEFAULT_TRAFFIC_VIEW_PORT: u16 = 8081;
/// Plain HTTP for probes and Prometheus (`--metrics-listen`).
pub const DEFAULT_METRICS_LISTEN: &str = "0.0.0.0:9090";

pub const NAMESPACE: &str = "tenantry-system";
pub const SERVICE_NAME: &str = "tenantry-webhook";
pub const SERVICE_ACCOUNT: &str = "tenantry-webhook";
/// Name of both the MutatingWebhookConfiguration and the ValidatingWebhookConfiguration.
pub const WEBHOOK_CONFIGURATION: &str = "tenantry";
pub const MUTATING_WEBHOOK_NAME: &str = "mutate.tenantry.dev";
pub const VALIDATING_WEBHOOK_NAME: &str = "validate.tenantry.dev";

/// Namespaces Tenantry never intercepts, excluded by the API-server-set
/// `kubernetes.io/metadata.name` label (a label tenants cannot set).
pub const EXCLUDED_NAMESPACES: &[&str] = &["kube-system", "kube-node-lease", NAMESPACE];

/// The kinds whose usage is watched (which RBAC must allow), and the optional Gateway API kinds.
pub use tenantry_cluster::{GATEWAY_KINDS, WATCHED_RESOURCES};

/// Subresources whose requests can cross a tenant boundary or grow usage and must reach the
/// webhook; [`crate::request::SUBRESOURCES`] says how each is decided.
pub const INTERCEPTED_SUBRESOURCES: &[&str] = &[
    "pods/ephemeralcontainers",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "pods/proxy",
    "pods/eviction",
    "pods/binding",
    "pods/resize",
    "services/proxy",
    "services/status",
    "nodes/proxy",
    "namespaces/status",
    "namespaces/finalize",
    "serviceaccounts/token",
    "*/scale",
];
