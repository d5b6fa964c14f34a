//! Policy test cases: a YAML file of writes and the decisions they must get.
//!
//! ```yaml
//! tenants: ../../examples/tenants.yaml   # optional: path (relative to this file) or inline mapping
//! state: ../../examples/state.yaml       # optional: path or inline list of objects
//! cluster_cidrs: [10.244.0.0/16]         # optional: as the webhook's --cluster-cidrs
//! cases:
//!   - name: members write in their own namespaces
//!     user: alice                        # or system:serviceaccount:NS:NAME
//!     groups: [acme-devs]                # optional
//!     namespace: acme-dev                # optional, as kubectl -n
//!     operation: CREATE                  # CREATE (default), UPDATE, DELETE, CONNECT
//!     dry_run: false                     # optional
//!     subresource: pods/eviction         # optional: `object` is then the subresource's body
//!     parent: web                        # optional: the parent's name if the body has none
//!     object: { apiVersion: v1, kind: ConfigMap, metadata: { name: c } }
//!     old: { … }                         # the current object, for UPDATE
//!     expect:
//!       allowed: false
//!       policy: cross-tenant-write       # must be among the denying policies
//!       message: own tenant              # must appear in the message
//!       labels: { tenantry.dev/tenant: acme }   # must be on the final object
//! ```
//! Without `tenants`/`state`, cases run against the embedded example directory and state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;
use tenantry_tenancy::{Directory, PolicyEngine, TenantsFile};
use tenantry_webhook::review::{self, Identity, Outcome, Write};
use tenantry_webhook::{InjectionConfig, Inputs, Ledger, Operation, embedded};

use crate::inputs;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub tenants: Option<Included<TenantsFile>>,
    #[serde(default)]
    pub state: Option<Included<Vec<Value>>>,
    /// The cluster's pod and service CIDRs, as the webhook's `--cluster-cidrs`.
    #[serde(default)]
    pub cluster_cidrs: Vec<String>,
    pub cases: Vec<Case>,
}

/// Data given inline, or a path relative to the case file.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Included<T> {
    Path(PathBuf),
    Inline(T),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default = "create")]
    pub operation: String,
    #[serde(default)]
    pub dry_run: bool,
    /// `pods/eviction`, `serviceaccounts/token`, …: `object` is the subresource's body.
    #[serde(default)]
    pub subresource: Option<String>,
    /// The parent object's name, when the body does not carry it.
    #[serde(default, rename = "parent")]
    pub name_of_parent: Option<String>,
    pub object: Value,
    #[serde(default)]
    pub old: Option<Value>,
    pub expect: Expect,
}

fn create() -> String {
    "CREATE".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub allowed: bool,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// An audit-mode policy expected to report the request (which it never denies).
    #[serde(default)]
    pub audited: Option<String>,
}

/// A loaded case file with the directory and usage its cases run against.
pub struct Suite {
    pub directory: Directory,
    pub usage: Ledger,
    pub boundary: tenantry_webhook::Boundary,
    pub cases: Vec<Case>,
}

pub fn load(path: &Path) -> Result<Suite> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    load_str(&text, path)
}

pub fn load_str(text: &str, path: &Path) -> Result<Suite> {
    let file: CaseFile = serde_saphyr::from_str(text)
        .with_context(|| format!("`{}` is not a valid test file", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let directory = match file.tenants {
        None => embedded::directory()?,
        Some(Included::Path(p)) => tenantry_tenancy::source::load_file(&base.join(p))?,
        Some(Included::Inline(t)) => Directory::build(t, 1)
            .with_context(|| format!("`{}`: inline tenants are invalid", path.display()))?,
    };
    let objects = match file.state {
        None => inputs::parse_documents(embedded::STATE_YAML)?,
        Some(Included::Path(p)) => inputs::read_documents(&base.join(p))?,
        Some(Included::Inline(objects)) => objects,
    };
    let usage = Ledger::from_objects(&objects).map_err(anyhow::Error::msg)?;
    let mut boundary = tenantry_webhook::Boundary::default();
    for cidr in &file.cluster_cidrs {
        boundary.cluster_cidrs.push(
            cidr.parse()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("`{}`: cluster_cidrs", path.display()))?,
        );
    }
    Ok(Suite {
        directory,
        usage,
        boundary,
        cases: file.cases,
    })
}

/// The AdmissionRequest the API server would send for a case.
pub fn request_for(case: &Case, index: usize) -> Result<tenantry_webhook::AdmissionRequest> {
    let operation: Operation = case.operation.parse().map_err(anyhow::Error::msg)?;
    let write = Write {
        object: case.object.clone(),
        old: case.old.clone(),
        identity: Identity {
            user: case.user.clone(),
            groups: case.groups.clone(),
        },
        namespace: case.namespace.clone(),
        operation,
        dry_run: case.dry_run,
        subresource: case.subresource.clone(),
        name: case.name_of_parent.clone(),
    };
    Ok(review::admission_request(&write, &format!("case-{index}"))?)
}

/// What is wrong with `outcome` against the case's expectations (empty: as expected).
pub fn check(case: &Case, outcome: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    let e = &case.expect;
    if outcome.allowed != e.allowed {
        let got = if outcome.allowed {
            "allowed".to_string()
        } else {
            format!("denied: {}", outcome.message)
        };
        failures.push(format!(
            "expected {}, got {got}",
            if e.allowed { "allowed" } else { "denied" }
        ));
    }
    if let Some(policy) = &e.policy
        && !outcome.reasons.contains(policy)
    {
        failures.push(format!(
            "expected policy `{policy}` to deny, denying: {:?}",
            outcome.reasons
        ));
    }
    if let Some(message) = &e.message
        && !outcome.message.contains(message.as_str())
    {
        failures.push(format!(
            "expected message containing {message:?}, got {:?}",
            outcome.message
        ));
    }
    if let Some(policy) = &e.audited
        && !outcome.audited.contains(policy)
    {
        failures.push(format!(
            "expected audit policy `{policy}` to report, reporting: {:?}",
            outcome.audited
        ));
    }
    for (key, want) in &e.labels {
        let got = outcome
            .object
            .pointer("/metadata/labels")
            .and_then(|l| l.get(key))
            .and_then(Value::as_str);
        if got != Some(want.as_str()) {
            failures.push(format!("expected label {key}={want}, got {got:?}"));
        }
    }
    failures
}

/// The outcome of one case, and what was wrong with it.
pub struct CaseResult {
    pub outcome: Outcome,
    pub failures: Vec<String>,
}

pub fn run_case(suite: &Suite, policies: &PolicyEngine, index: usize) -> Result<CaseResult> {
    let injection = InjectionConfig::default();
    let view = suite.usage.view(None);
    let inputs = Inputs {
        directory: &suite.directory,
        usage: &view,
        policies,
        injection: &injection,
        boundary: &suite.boundary,
    };
    let request = request_for(&suite.cases[index], index)?;
    let outcome = review::run(&inputs, &request)?;
    let failures = check(&suite.cases[index], &outcome);
    Ok(CaseResult { outcome, failures })
}
