//! The tenants file: tiers, white-label clients and tenants, exactly as users write them.
//!
//! This is the serialised form shared by the YAML source and `tenantry tenants import`; the
//! Postgres source produces the same structure from its tables. It is checked and indexed into a
//! [`crate::Directory`] before anything decides with it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The names of an enum's variants as they are written (YAML, Postgres, flags, Cedar): `as_str`,
/// `FromStr` with an error listing the accepted names, and `Display`.
macro_rules! names {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok($ty::$variant),)+
                    _ => Err(format!(
                        concat!("`{}` is not a ", $what, " (", names!(@list $($name),+), ")"),
                        s
                    )),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
    (@list $first:literal $(, $rest:literal)*) => {
        concat!($first $(, ", ", $rest)*)
    };
}

/// The whole tenants file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    #[serde(default)]
    pub tiers: BTreeMap<String, TierSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clients: BTreeMap<String, ClientSpec>,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSpec>,
}

impl TenantsFile {
    /// What enforcers need to decide traffic, and nothing more: tiers with their rate limits
    /// and Pod Security level, clients, and each tenant's tier, status and client. No
    /// namespaces, members, teams, quotas or scheduling: this view is served to every tenant
    /// pod without a credential, so it must not tell a tenant more than that.
    pub fn traffic_view(&self) -> TenantsFile {
        TenantsFile {
            tiers: self
                .tiers
                .iter()
                .map(|(name, tier)| {
                    let view = TierSpec {
                        rate_limit: tier.rate_limit,
                        pod_security: tier.pod_security,
                        ..TierSpec::default()
                    };
                    (name.clone(), view)
                })
                .collect(),
            clients: self
                .clients
                .keys()
                .map(|id| (id.clone(), ClientSpec::default()))
                .collect(),
            tenants: self
                .tenants
                .iter()
                .map(|(id, tenant)| {
                    let view = TenantSpec {
                        tier: tenant.tier.clone(),
                        status: tenant.status,
                        client: tenant.client.clone(),
                        namespaces: Vec::new(),
                        members: Members::default(),
                        teams: BTreeMap::new(),
                        scale_down_on_suspend: None,
                        purge_after: None,
                    };
                    (id.clone(), view)
                })
                .collect(),
        }
    }
}

/// A service tier: quota limits, a rate limit for the enforcer, and pod scheduling.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// ResourceQuota vocabulary, counted across all namespaces of a tenant; absent = unlimited.
    #[serde(default)]
    pub limits: BTreeMap<String, QuantitySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Scheduling::is_empty")]
    pub scheduling: Scheduling,
    /// The Pod Security Standard the tier's pods must meet: `baseline` (the default) or
    /// `restricted`.
    #[serde(default, skip_serializing_if = "PodSecurityLevel::is_default")]
    pub pod_security: PodSecurityLevel,
    /// Which pods may reach the tier's pods (besides through the enforcer's port): `shared`
    /// (the default: any namespace of the same tenant), `namespace` (the same namespace only) or
    /// `dedicated` (the same namespace, on the tier's own node pool).
    #[serde(default, skip_serializing_if = "NetworkIsolation::is_default")]
    pub network_isolation: NetworkIsolation,
    /// Whether suspending a tenant of this tier scales its Deployments and StatefulSets to zero
    /// (restored on resume). Deleted tenants are always scaled down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scale_down_on_suspend: bool,
}

/// How far a tier's pods are isolated on the network; the provisioning controller writes it
/// into each namespace's NetworkPolicy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkIsolation {
    #[default]
    Shared,
    Namespace,
    Dedicated,
}

names!(NetworkIsolation, "network isolation", Shared => "shared", Namespace => "namespace", Dedicated => "dedicated");

impl NetworkIsolation {
    pub fn is_default(&self) -> bool {
        *self == NetworkIsolation::Shared
    }
}

/// A Kubernetes Pod Security Standards level. `privileged` is deliberately absent: tenant pods
/// never get the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    #[default]
    Baseline,
    Restricted,
}

names!(PodSecurityLevel, "pod security level", Baseline => "baseline", Restricted => "restricted");

impl PodSecurityLevel {
    pub fn is_default(&self) -> bool {
        *self == PodSecurityLevel::Baseline
    }
}

/// A quantity as written: YAML lets people write `10` or `"4Gi"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuantitySpec {
    Integer(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for QuantitySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantitySpec::Integer(n) => write!(f, "{n}"),
            QuantitySpec::Float(x) => write!(f, "{x}"),
            QuantitySpec::Text(s) => f.write_str(s),
        }
    }
}

/// Requests per second and burst, per tenant, shared by all of its enforcers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

/// Where a tier's pods run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl Scheduling {
    pub fn is_empty(&self) -> bool {
        self.priority_class.is_none()
            && self.node_selector.is_empty()
            && self.tolerations.is_empty()
    }
}

/// A pod toleration, in the Kubernetes field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// A white-label client: a reseller or parent organisation of several tenants.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// One tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub tier: String,
    #[serde(default)]
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub members: Members,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, TeamSpec>,
    /// Overrides the tier's `scale_down_on_suspend` for this tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_on_suspend: Option<bool>,
    /// For a `deleted` tenant: when the provisioning controller deletes its namespaces, and with
    /// them its data (RFC 3339). Absent: kept until an operator sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_after: Option<jiff::Timestamp>,
}

/// Whether a tenant may write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Active,
    Suspended,
    /// Soft-deleted: everything blocked, data kept until `purge_after`.
    Deleted,
}

names!(Status, "tenant status", Active => "active", Suspended => "suspended", Deleted => "deleted");

/// Kubernetes identities that belong to a tenant. Those listed directly are developers; those
/// under `admins` and `viewers` are members with that role instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Members {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// `namespace:name`
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serviceaccounts: Vec<String>,
    /// The tenant's owners and administrators: full access in its namespaces.
    #[serde(default, skip_serializing_if = "Identities::is_empty")]
    pub admins: Identities,
    /// Read-only members.
    #[serde(default, skip_serializing_if = "Identities::is_empty")]
    pub viewers: Identities,
}

/// Users, groups and service accounts (`namespace:name`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serviceaccounts: Vec<String>,
}

impl Identities {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty() && self.serviceaccounts.is_empty()
    }
}

/// What a member may do, in the tenant's namespaces or its team's. Ordered by power: an identity
/// listed twice has the stronger role.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads (Kubernetes `view`).
    Viewer,
    /// Deploys and operates workloads (Kubernetes `edit`).
    #[default]
    Developer,
    /// Full access, role bindings included (Kubernetes `admin`): owners and administrators.
    Admin,
}

names!(Role, "member role", Admin => "admin", Developer => "developer", Viewer => "viewer");

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Developer, Role::Viewer];

    /// The Kubernetes ClusterRole a role is bound to in the tenant's namespaces.
    pub fn cluster_role(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "edit",
            Role::Viewer => "view",
        }
    }
}

/// A team inside a tenant: its own namespaces and members.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serviceaccounts: Vec<String>,
    /// The team's administrators.
    #[serde(default, skip_serializing_if = "Identities::is_empty")]
    pub admins: Identities,
    /// The team's read-only members.
    #[serde(default, skip_serializing_if = "Identities::is_empty")]
    pub viewers: Identities,
}

/// A role with the users, groups and service accounts holding it.
pub type RoleHolders<'a> = (Role, &'a [String], &'a [String], &'a [String]);

impl Members {
    /// Every listed identity with its role: `(role, users, groups, serviceaccounts)`.
    pub fn by_role(&self) -> [RoleHolders<'_>; 3] {
        [
            (
                Role::Developer,
                &self.users,
                &self.groups,
                &self.serviceaccounts,
            ),
            (
                Role::Admin,
                &self.admins.users,
                &self.admins.groups,
                &self.admins.serviceaccounts,
            ),
            (
                Role::Viewer,
                &self.viewers.users,
                &self.viewers.groups,
                &self.viewers.serviceaccounts,
            ),
        ]
    }
}

impl TeamSpec {
    /// The team's members as [`Members`].
    pub fn members(&self) -> Members {
        Members {
            users: self.users.clone(),
            groups: self.groups.clone(),
            serviceaccounts: self.serviceaccounts.clone(),
            admins: self.admins.clone(),
            viewers: self.viewers.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_list_the_accepted() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!("deleted".parse::<Status>(), Ok(Status::Deleted));
        assert_eq!(
            "gone".parse::<Status>(),
            Err("`gone` is not a tenant status (active, suspended, deleted)".to_string())
        );
        assert_eq!(
            "owner".parse::<Role>(),
            Err("`owner` is not a member role (admin, developer, viewer)".to_string())
        );
        assert_eq!(
            "strict".parse::<NetworkIsolation>(),
            Err("`strict` is not a network isolation (shared, namespace, dedicated)".to_string())
        );
        assert_eq!(
            "privileged".parse::<PodSecurityLevel>(),
            Err("`privileged` is not a pod security level (baseline, restricted)".to_string())
        );
    }
}
