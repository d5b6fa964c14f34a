//! The embedded default: example tenants, example cluster state and the shipped policies, built
//! into the binaries so `tenantry demo` and `tenantry review` work with nothing else installed.

use std::path::{Path, PathBuf};

use tenantry_tenancy::policy::{SCHEMA_FILE, SourceFile};
use tenantry_tenancy::{Directory, PolicyEngine, PolicyError, SourceError};

pub const TENANTS_YAML: &str = include_str!("../../examples/tenants.yaml");
pub const STATE_YAML: &str = include_str!("../../examples/state.yaml");

const SCHEMA: &str = include_str!("../../policies/tenantry.cedarschema");
const POLICIES: &[(&str, &str)] = &[
    (
        "baseline.cedar",
        include_str!("../../policies/baseline.cedar"),
    ),
    (
        "isolation.cedar",
        include_str!("../../policies/isolation.cedar"),
    ),
    ("pods.cedar", include_str!("../../policies/pods.cedar")),
    ("quotas.cedar", include_str!("../../policies/quotas.cedar")),
    (
        "references.cedar",
        include_str!("../../policies/references.cedar"),
    ),
    (
        "traffic.cedar",
        include_str!("../../policies/traffic.cedar"),
    ),
];

/// The shipped policies as source files named `<embedded>/…`.
pub fn policy_sources() -> (SourceFile, Vec<SourceFile>) {
    let file = |name: &str, text: &str| SourceFile {
        path: PathBuf::from("<embedded>/policies").join(name),
        text: text.to_string(),
    };
    let policies = POLICIES.iter().map(|(n, t)| file(n, t)).collect();
    (file(SCHEMA_FILE, SCHEMA), policies)
}

pub fn policies() -> Result<PolicyEngine, PolicyError> {
    let (schema, policies) = policy_sources();
    PolicyEngine::from_sources(&schema, &policies)
}

pub fn directory() -> Result<Directory, SourceError> {
    tenantry_tenancy::source::directory_from_yaml(
        TENANTS_YAML,
        Path::new("<embedded>/tenants.yaml"),
    )
}
