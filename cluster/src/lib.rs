//! What Tenantry observes of a cluster, shared by the webhook (quotas, hosts, addresses) and the
//! provisioning controller (usage in each `Tenant`'s status), so both count exactly alike: a kube
//! client, the usage [`ledger`] fed by kube-rs [`watch`]es, and how much an object adds
//! ([`usage`], [`resources`]).

pub mod json;
pub mod ledger;
pub mod resources;
pub mod usage;
pub mod watch;

pub use ledger::Ledger;
pub use usage::UsageView;

pub use tenantry_tenancy::labels::LABEL_TENANT;

/// `(group, version, resource)` Tenantry lists and watches to count usage and Ingress hosts.
pub const WATCHED_RESOURCES: &[(&str, &str, &str)] = &[
    ("", "v1", "namespaces"),
    ("", "v1", "pods"),
    ("", "v1", "services"),
    ("", "v1", "persistentvolumeclaims"),
    ("", "v1", "configmaps"),
    ("", "v1", "secrets"),
    ("apps", "v1", "deployments"),
    ("apps", "v1", "statefulsets"),
    ("apps", "v1", "daemonsets"),
    ("apps", "v1", "replicasets"),
    ("batch", "v1", "jobs"),
    ("batch", "v1", "cronjobs"),
    ("", "v1", "persistentvolumes"),
    ("networking.k8s.io", "v1", "ingresses"),
    ("gateway.networking.k8s.io", "v1", "gateways"),
    ("gateway.networking.k8s.io", "v1", "httproutes"),
    ("gateway.networking.k8s.io", "v1", "grpcroutes"),
    ("gateway.networking.k8s.io", "v1alpha2", "tlsroutes"),
];

/// `(group, version, kind)` of the Gateway API kinds whose hosts Tenantry tracks; optional,
/// since their CRDs may not be installed.
pub const GATEWAY_KINDS: &[(&str, &str, &str)] = &[
    ("gateway.networking.k8s.io", "v1", "Gateway"),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute"),
    ("gateway.networking.k8s.io", "v1", "GRPCRoute"),
    ("gateway.networking.k8s.io", "v1alpha2", "TLSRoute"),
];
