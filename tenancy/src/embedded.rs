//! The embedded default: the example tenants and the shipped policies, built into every binary so
//! `tenantry demo`, `tenantry review` and a bare `tenantry-enforcer` work with nothing installed.

use std::path::{Path, PathBuf};

use crate::policy::{SCHEMA_FILE, SourceFile};
use crate::{Directory, PolicyEngine, PolicyError, SourceError};

pub const TENANTS_YAML: &str = include_str!("../../examples/tenants.yaml");

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

/// The shipped policies as source files named `<embedded>/policies/…`.
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
    crate::source::directory_from_yaml(TENANTS_YAML, Path::new("<embedded>/tenants.yaml"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_shipped_policy_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let (_, on_disk) = crate::policy::read_dir(&dir).unwrap();
        let (_, embedded) = super::policy_sources();
        let names = |files: &[crate::SourceFile]| -> Vec<String> {
            files
                .iter()
                .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names(&on_disk),
            names(&embedded),
            "add new policy files to POLICIES"
        );
    }
}
