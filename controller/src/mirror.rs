//! `kubectl get tenants`: a cluster-scoped `Tenant` custom resource per tenant of the directory,
//! written by the controller as a read-only mirror — tier, status, namespaces, members by role,
//! and in `status` the tenant's usage against its tier's limits, counted by the same ledger the
//! webhook admits with. Postgres (or the tenants file) stays the source of truth: nobody but the
//! controller is granted writes on these objects, and edits are overwritten on the next
//! reconcile.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tenantry_cluster::UsageView;
use tenantry_tenancy::Directory;
use tenantry_tenancy::directory::Tenant as DirectoryTenant;
use tenantry_tenancy::model::{Members, Role};
use tenantry_tenancy::quantity::{self, Unit};
use tracing::warn;

use crate::apply::{ApplyError, FIELD_MANAGER};
use crate::desired::{MANAGED_BY, MANAGER};

/// A tenant as the directory describes it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tenantry.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    status = "TenantStatus",
    doc = "A read-only mirror of a tenant of Tenantry's directory, written by tenantry-controller",
    printcolumn = r#"{"name":"Tier","type":"string","jsonPath":".spec.tier"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".spec.status"}"#,
    printcolumn = r#"{"name":"Client","type":"string","jsonPath":".spec.client"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#,
    printcolumn = r#"{"name":"Purge-After","type":"date","jsonPath":".spec.purgeAfter","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    pub tier: String,
    /// `active`, `suspended` or `deleted`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Every namespace of the tenant: listed in the directory, its teams', and those it created
    /// itself (self-service).
    pub namespaces: Vec<String>,
    pub members: MembersByRole,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, TeamMirror>,
    /// For a deleted tenant: when its namespaces are deleted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_after: Option<String>,
}

/// Identities by their effective role (the strongest one held), as `User:NAME`, `Group:NAME`
/// or `ServiceAccount:NAMESPACE:NAME`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MembersByRole {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub developers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub viewers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TeamMirror {
    pub namespaces: Vec<String>,
    pub members: MembersByRole,
}

/// Usage against limits, per ResourceQuota name of the tier's limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TenantStatus {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage: BTreeMap<String, ResourceUsage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceUsage {
    pub used: String,
    pub limit: String,
}

fn by_role(members: &Members) -> MembersByRole {
    let mut strongest: BTreeMap<String, Role> = BTreeMap::new();
    for (role, users, groups, serviceaccounts) in members.by_role() {
        let identities = users
            .iter()
            .map(|u| format!("User:{u}"))
            .chain(groups.iter().map(|g| format!("Group:{g}")))
            .chain(
                serviceaccounts
                    .iter()
                    .map(|s| format!("ServiceAccount:{s}")),
            );
        for identity in identities {
            let held = strongest.entry(identity).or_insert(role);
            *held = (*held).max(role);
        }
    }
    let mut out = MembersByRole::default();
    for (identity, role) in strongest {
        match role {
            Role::Admin => out.admins.push(identity),
            Role::Developer => out.developers.push(identity),
            Role::Viewer => out.viewers.push(identity),
        }
    }
    out
}

/// The mirror of `tenant`, whose namespaces (self-service ones included) are `namespaces`.
pub fn tenant(
    directory: &Directory,
    tenant: &DirectoryTenant,
    namespaces: &BTreeSet<String>,
) -> Tenant {
    let source = directory.source().tenants.get(&*tenant.id);
    let members = source.map(|s| by_role(&s.members)).unwrap_or_default();
    let teams = source
        .map(|s| {
            s.teams
                .iter()
                .map(|(name, team)| {
                    let mirror = TeamMirror {
                        namespaces: team.namespaces.clone(),
                        members: by_role(&team.members()),
                    };
                    (name.clone(), mirror)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut object = Tenant::new(
        &tenant.id,
        TenantSpec {
            tier: tenant.tier.name.to_string(),
            status: tenant.status.as_str().to_string(),
            client: tenant.client.as_ref().map(|c| c.id.to_string()),
            namespaces: namespaces.iter().cloned().collect(),
            members,
            teams,
            purge_after: tenant.purge_after.map(|t| t.to_string()),
        },
    );
    object
        .labels_mut()
        .insert(MANAGED_BY.to_string(), MANAGER.to_string());
    object
}

/// `tenant`'s usage against its tier's limits, over `namespaces`.
pub fn status(
    tenant: &DirectoryTenant,
    namespaces: &[String],
    usage: &dyn UsageView,
) -> TenantStatus {
    let namespaces: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let usage = tenant
        .tier
        .limits
        .iter()
        .map(|(resource, limit)| {
            let unit = Unit::of_resource(resource);
            let used = usage.used(&tenant.id, &namespaces, resource);
            (
                resource.to_string(),
                ResourceUsage {
                    used: quantity::format(used, unit),
                    limit: quantity::format(limit, unit),
                },
            )
        })
        .collect();
    TenantStatus { usage }
}

/// Applies the mirrors (and their status, where `usage` is known and it changed), then deletes
/// mirrors of tenants no longer in the directory. Without the CRD installed, says so and does
/// nothing: the mirror is a view, provisioning does not depend on it.
pub async fn apply_mirror(
    client: &Client,
    directory: &Directory,
    mirrors: &[Tenant],
    usage: Option<&dyn UsageView>,
) -> Result<usize, ApplyError> {
    let api: Api<Tenant> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut applied = 0;
    for mirror in mirrors {
        let name = mirror.name_any();
        let current = match api.patch(&name, &params, &Patch::Apply(mirror)).await {
            Ok(current) => current,
            Err(kube::Error::Api(e)) if e.code == 404 => {
                warn!(
                    "the Tenant CRD (tenants.tenantry.dev) is not installed: `kubectl get tenants` shows nothing until it is"
                );
                return Ok(applied);
            }
            Err(source) => {
                return Err(ApplyError::Apply {
                    kind: "Tenant".into(),
                    name,
                    source,
                });
            }
        };
        applied += 1;
        let (Some(usage), Some(tenant)) = (usage, directory.tenant(&name)) else {
            continue;
        };
        let status = status(tenant, &mirror.spec.namespaces, usage);
        if current.status.as_ref() == Some(&status) {
            continue;
        }
        let patch = serde_json::json!({
            "apiVersion": "tenantry.dev/v1alpha1",
            "kind": "Tenant",
            "status": status,
        });
        api.patch_status(&name, &params, &Patch::Apply(&patch))
            .await
            .map_err(|source| ApplyError::Apply {
                kind: "Tenant status".into(),
                name: name.clone(),
                source,
            })?;
    }
    let wanted: BTreeSet<(String, String)> = mirrors
        .iter()
        .map(|m| (String::new(), m.name_any()))
        .collect();
    crate::apply::prune(api.clone(), |_| api.clone(), &wanted).await?;
    Ok(applied)
}
