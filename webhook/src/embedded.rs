//! The embedded default for admission: the example cluster state, plus the example tenants and
//! shipped policies from [`tenantry_tenancy::embedded`].

pub use tenantry_tenancy::embedded::{TENANTS_YAML, directory, policies, policy_sources};

/// Objects that exist in the example cluster (usage and taken Ingress hosts).
pub const STATE_YAML: &str = include_str!("../../examples/state.yaml");
