//! The checked, indexed tenant directory: one immutable snapshot that every decision reads.
//!
//! Building a [`Directory`] is where tenant data is validated (unknown tiers, a namespace claimed by
//! two tenants, malformed quantities...), so a decision never meets half-valid data. Lookups are
//! hash lookups whose cost does not grow with the number of tenants.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use thiserror::Error;

use crate::model::{
    Members, NetworkIsolation, PodSecurityLevel, RateLimit, Role, Scheduling, Status, TenantsFile,
};
use crate::quantity::{self, QuantityError, Unit};

/// Why tenant data was refused. Every message names the place in the tenants data.
#[derive(Debug, Error)]
pub enum DirectoryError {
    #[error("tenants.{tenant}.tier: unknown tier `{tier}`")]
    UnknownTier { tenant: String, tier: String },
    #[error("tenants.{tenant}.client: unknown client `{client}`")]
    UnknownClient { tenant: String, client: String },
    #[error("namespace `{namespace}` is claimed by two tenants: `{first}` and `{second}`")]
    NamespaceClaimedTwice {
        namespace: String,
        first: String,
        second: String,
    },
    #[error("tiers.{tier}.limits.{resource}: {source}")]
    Quantity {
        tier: String,
        resource: String,
        #[source]
        source: QuantityError,
    },
    #[error(
        "tiers.{tier}.limits: unknown resource `{resource}` (use ResourceQuota names such as `pods`, `requests.cpu`, `count/deployments.apps`)"
    )]
    UnknownLimit { tier: String, resource: String },
    #[error("{place}: `{value}` is not a valid {what}")]
    InvalidName {
        place: String,
        value: String,
        what: &'static str,
    },
    #[error(
        "tenants.{tenant}.teams.{team}.namespaces: `{namespace}` is not one of tenant `{tenant}`'s namespaces"
    )]
    TeamNamespaceNotOwned {
        tenant: String,
        team: String,
        namespace: String,
    },
    #[error(
        "tenants.{tenant}.teams: namespace `{namespace}` is in two teams: `{first}` and `{second}`"
    )]
    NamespaceInTwoTeams {
        tenant: String,
        namespace: String,
        first: String,
        second: String,
    },
    #[error(
        "tenants.{tenant}.purge_after: only a deleted tenant has a purge time (its status is `{status}`)"
    )]
    PurgeWithoutDeletion { tenant: String, status: Status },
}

/// A tier with its limits parsed into integers.
#[derive(Debug)]
pub struct Tier {
    pub name: Arc<str>,
    pub limits: Limits,
    pub rate_limit: Option<RateLimit>,
    pub scheduling: Scheduling,
    pub pod_security: PodSecurityLevel,
    pub network_isolation: NetworkIsolation,
    pub scale_down_on_suspend: bool,
}

/// Quota limits in ResourceQuota names; CPU in millicores, everything else in whole units.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Limits(BTreeMap<String, i64>);

impl Limits {
    pub fn get(&self, resource: &str) -> Option<i64> {
        self.0.get(resource).copied()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, i64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// The quota names Tenantry counts, besides `count/<resource>[.<group>]`.
pub const COUNTED_RESOURCES: &[&str] = &[
    "namespaces",
    "pods",
    "services",
    "persistentvolumeclaims",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "limits.cpu",
    "limits.memory",
];

/// Maps the aliases ResourceQuota accepts onto the names Tenantry counts under.
pub fn canonical_resource(name: &str) -> Option<String> {
    let canonical = match name {
        "cpu" => "requests.cpu".to_string(),
        "memory" => "requests.memory".to_string(),
        "configmaps" | "secrets" | "replicationcontrollers" | "resourcequotas" => {
            format!("count/{name}")
        }
        n if COUNTED_RESOURCES.contains(&n) => n.to_string(),
        n => {
            let rest = n.strip_prefix("count/")?;
            let valid = !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
            if !valid {
                return None;
            }
            n.to_string()
        }
    };
    Some(canonical)
}

/// A white-label client.
#[derive(Debug)]
pub struct Client {
    pub id: Arc<str>,
    pub display_name: Option<String>,
}

/// A team inside a tenant.
#[derive(Debug)]
pub struct Team {
    pub name: Arc<str>,
    pub namespaces: Vec<String>,
}

/// A tenant, with its tier and client resolved.
#[derive(Debug)]
pub struct Tenant {
    pub id: Arc<str>,
    pub tier: Arc<Tier>,
    pub status: Status,
    pub client: Option<Arc<Client>>,
    pub namespaces: Vec<String>,
    pub teams: Vec<Team>,
    /// Whether its workloads are scaled to zero while suspended (the tier's setting unless the
    /// tenant overrides it).
    pub scale_down_on_suspend: bool,
    /// When a deleted tenant's namespaces are deleted for good.
    pub purge_after: Option<jiff::Timestamp>,
    /// Its Cedar entity, built on first use and kept for the life of this snapshot: decisions
    /// clone it rather than rebuild it on every request.
    entity: std::sync::OnceLock<Result<cedar_policy::Entity, String>>,
}

impl Tenant {
    /// `Tenant::"<id>"` with the attributes policies read, the client as parent.
    pub fn entity(&self) -> Result<&cedar_policy::Entity, String> {
        self.entity
            .get_or_init(|| crate::policy::tenant_entity(self))
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn is_suspended(&self) -> bool {
        self.status == Status::Suspended
    }

    /// Whether its workloads should be scaled to zero now: deleted, or suspended on a tier (or
    /// with an override) that says so.
    pub fn scaled_down(&self) -> bool {
        match self.status {
            Status::Active => false,
            Status::Suspended => self.scale_down_on_suspend,
            Status::Deleted => true,
        }
    }

    /// Whether its namespaces are due to be deleted at `now`.
    pub fn purge_due(&self, now: jiff::Timestamp) -> bool {
        self.status == Status::Deleted && self.purge_after.is_some_and(|at| at <= now)
    }
}

/// Who owns a namespace, and how that was decided.
#[derive(Debug, Clone)]
pub struct NamespaceOwner<'a> {
    pub tenant: &'a Arc<Tenant>,
    pub team: Option<&'a Arc<str>>,
    /// Owned because the name starts with `<tenant>-`, not because the directory lists it.
    pub by_prefix: bool,
}

/// Membership of an identity in a tenant, and in one of its teams, with its role there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub tenant: Arc<str>,
    pub team: Option<Arc<str>>,
    pub role: Role,
}

#[derive(Debug)]
struct NamespaceEntry {
    tenant: Arc<str>,
    team: Option<Arc<str>>,
}

/// One immutable, validated snapshot of all tenant data.
#[derive(Debug)]
pub struct Directory {
    version: u64,
    source: TenantsFile,
    tiers: HashMap<Arc<str>, Arc<Tier>>,
    clients: HashMap<Arc<str>, Arc<Client>>,
    tenants: HashMap<Arc<str>, Arc<Tenant>>,
    namespaces: HashMap<String, NamespaceEntry>,
    users: HashMap<String, Vec<Membership>>,
    groups: HashMap<String, Vec<Membership>>,
    serviceaccounts: HashMap<String, Vec<Membership>>,
}

impl Directory {
    /// Checks and indexes tenant data. `version` orders snapshots from the same source.
    pub fn build(file: TenantsFile, version: u64) -> Result<Directory, DirectoryError> {
        let mut tiers = HashMap::new();
        for (name, spec) in &file.tiers {
            check_label_value(name, || format!("tiers.{name}"), "tier name")?;
            let mut limits = BTreeMap::new();
            for (resource, value) in &spec.limits {
                let canonical =
                    canonical_resource(resource).ok_or_else(|| DirectoryError::UnknownLimit {
                        tier: name.clone(),
                        resource: resource.clone(),
                    })?;
                let parsed = quantity::parse(&value.to_string(), Unit::of_resource(&canonical))
                    .map_err(|source| DirectoryError::Quantity {
                        tier: name.clone(),
                        resource: resource.clone(),
                        source,
                    })?;
                limits.insert(canonical, parsed);
            }
            let name: Arc<str> = name.as_str().into();
            let tier = Tier {
                name: name.clone(),
                limits: Limits(limits),
                rate_limit: spec.rate_limit,
                scheduling: spec.scheduling.clone(),
                pod_security: spec.pod_security,
                network_isolation: spec.network_isolation,
                scale_down_on_suspend: spec.scale_down_on_suspend,
            };
            tiers.insert(name, Arc::new(tier));
        }

        let mut clients = HashMap::new();
        for (id, spec) in &file.clients {
            check_label_value(id, || format!("clients.{id}"), "client id")?;
            let id: Arc<str> = id.as_str().into();
            let client = Client {
                id: id.clone(),
                display_name: spec.display_name.clone(),
            };
            clients.insert(id, Arc::new(client));
        }

        let mut tenants = HashMap::new();
        let mut namespaces: HashMap<String, NamespaceEntry> = HashMap::new();
        let mut users: HashMap<String, Vec<Membership>> = HashMap::new();
        let mut groups: HashMap<String, Vec<Membership>> = HashMap::new();
        let mut serviceaccounts: HashMap<String, Vec<Membership>> = HashMap::new();

        for (id, spec) in &file.tenants {
            check_dns_label(id, || format!("tenants.{id}"), "tenant id (a DNS label)")?;
            let tenant_id: Arc<str> = id.as_str().into();
            let tier = tiers
                .get(spec.tier.as_str())
                .ok_or_else(|| DirectoryError::UnknownTier {
                    tenant: id.clone(),
                    tier: spec.tier.clone(),
                })?
                .clone();
            if spec.purge_after.is_some() && spec.status != Status::Deleted {
                return Err(DirectoryError::PurgeWithoutDeletion {
                    tenant: id.clone(),
                    status: spec.status,
                });
            }
            let client = match &spec.client {
                None => None,
                Some(c) => Some(
                    clients
                        .get(c.as_str())
                        .ok_or_else(|| DirectoryError::UnknownClient {
                            tenant: id.clone(),
                            client: c.clone(),
                        })?
                        .clone(),
                ),
            };
            for ns in &spec.namespaces {
                check_dns_label(ns, || format!("tenants.{id}.namespaces"), "namespace name")?;
                if let Some(other) = namespaces.get(ns) {
                    return Err(DirectoryError::NamespaceClaimedTwice {
                        namespace: ns.clone(),
                        first: other.tenant.to_string(),
                        second: id.clone(),
                    });
                }
                namespaces.insert(
                    ns.clone(),
                    NamespaceEntry {
                        tenant: tenant_id.clone(),
                        team: None,
                    },
                );
            }
            index_members(
                (&mut users, &mut groups, &mut serviceaccounts),
                &spec.members,
                &tenant_id,
                None,
                || format!("tenants.{id}.members"),
            )?;

            let mut teams = Vec::new();
            for (team_name, team) in &spec.teams {
                check_label_value(
                    team_name,
                    || format!("tenants.{id}.teams.{team_name}"),
                    "team name",
                )?;
                let team_id: Arc<str> = team_name.as_str().into();
                for ns in &team.namespaces {
                    let entry = namespaces
                        .get_mut(ns)
                        .filter(|e| e.tenant == tenant_id)
                        .ok_or_else(|| DirectoryError::TeamNamespaceNotOwned {
                            tenant: id.clone(),
                            team: team_name.clone(),
                            namespace: ns.clone(),
                        })?;
                    if let Some(first) = &entry.team {
                        return Err(DirectoryError::NamespaceInTwoTeams {
                            tenant: id.clone(),
                            namespace: ns.clone(),
                            first: first.to_string(),
                            second: team_name.clone(),
                        });
                    }
                    entry.team = Some(team_id.clone());
                }
                index_members(
                    (&mut users, &mut groups, &mut serviceaccounts),
                    &team.members(),
                    &tenant_id,
                    Some(&team_id),
                    || format!("tenants.{id}.teams.{team_name}"),
                )?;
                teams.push(Team {
                    name: team_id,
                    namespaces: team.namespaces.clone(),
                });
            }

            let scale_down_on_suspend = spec
                .scale_down_on_suspend
                .unwrap_or(tier.scale_down_on_suspend);
            let tenant = Tenant {
                id: tenant_id.clone(),
                tier,
                status: spec.status,
                client,
                namespaces: spec.namespaces.clone(),
                teams,
                scale_down_on_suspend,
                purge_after: spec.purge_after,
                entity: std::sync::OnceLock::new(),
            };
            tenants.insert(tenant_id, Arc::new(tenant));
        }

        // An identity listed twice in one tenant or team has the stronger of its roles.
        for index in [&mut users, &mut groups, &mut serviceaccounts] {
            for memberships in index.values_mut() {
                memberships.sort_by(|a, b| {
                    (&a.tenant, &a.team, std::cmp::Reverse(a.role)).cmp(&(
                        &b.tenant,
                        &b.team,
                        std::cmp::Reverse(b.role),
                    ))
                });
                memberships.dedup_by(|later, first| {
                    later.tenant == first.tenant && later.team == first.team
                });
            }
        }

        Ok(Directory {
            version,
            source: file,
            tiers,
            clients,
            tenants,
            namespaces,
            users,
            groups,
            serviceaccounts,
        })
    }

    /// An empty directory: no tenants, so no namespace is owned.
    pub fn empty() -> Directory {
        #[allow(clippy::expect_used)] // an empty file has nothing that can fail validation
        Directory::build(TenantsFile::default(), 0).expect("the empty directory is valid")
    }

    /// The same snapshot under another version (file sources count their reloads).
    pub fn with_version(mut self, version: u64) -> Directory {
        self.version = version;
        self
    }

    /// Orders snapshots of one source; increases with every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The data this snapshot was built from, for `tenants show` and export.
    pub fn source(&self) -> &TenantsFile {
        &self.source
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.values()
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    pub fn tier(&self, name: &str) -> Option<&Arc<Tier>> {
        self.tiers.get(name)
    }

    pub fn client(&self, id: &str) -> Option<&Arc<Client>> {
        self.clients.get(id)
    }

    /// The tenant owning `namespace`: listed in the directory, or else named `<tenant>-…`
    /// (self-service namespaces; the longest matching tenant id wins).
    ///
    /// The webhook narrows this: a name prefix makes a namespace a tenant's only when the tenant
    /// created it through the webhook (see `tenantry_webhook::translate::Inputs::owner`).
    pub fn namespace_owner(&self, namespace: &str) -> Option<NamespaceOwner<'_>> {
        self.listed_owner(namespace)
            .or_else(|| self.prefix_owner(namespace))
    }

    /// The tenant the directory lists `namespace` under.
    pub fn listed_owner(&self, namespace: &str) -> Option<NamespaceOwner<'_>> {
        let entry = self.namespaces.get(namespace)?;
        let tenant = self.tenants.get(&entry.tenant)?;
        Some(NamespaceOwner {
            tenant,
            team: entry.team.as_ref(),
            by_prefix: false,
        })
    }

    /// The tenant whose id prefixes `namespace` (`acme-sandbox` → `acme`), listed or not.
    pub fn prefix_owner(&self, namespace: &str) -> Option<NamespaceOwner<'_>> {
        // Longest prefix first: with tenants `acme` and `acme-labs`, `acme-labs-x` is acme-labs'.
        namespace.rmatch_indices('-').find_map(|(at, _)| {
            let tenant = self.tenants.get(&namespace[..at])?;
            Some(NamespaceOwner {
                tenant,
                team: None,
                by_prefix: true,
            })
        })
    }

    pub fn user_memberships(&self, name: &str) -> &[Membership] {
        self.users.get(name).map_or(&[], Vec::as_slice)
    }

    pub fn group_memberships(&self, name: &str) -> &[Membership] {
        self.groups.get(name).map_or(&[], Vec::as_slice)
    }

    /// Memberships of the service account `namespace:name`.
    pub fn serviceaccount_memberships(&self, namespace: &str, name: &str) -> &[Membership] {
        // Keys are `namespace:name`; a short stack key avoids an allocation in the common case.
        let mut key = String::with_capacity(namespace.len() + name.len() + 1);
        key.push_str(namespace);
        key.push(':');
        key.push_str(name);
        self.serviceaccounts.get(&key).map_or(&[], Vec::as_slice)
    }
}

type Indexes<'a> = (
    &'a mut HashMap<String, Vec<Membership>>,
    &'a mut HashMap<String, Vec<Membership>>,
    &'a mut HashMap<String, Vec<Membership>>,
);

/// Indexes the members of a tenant (`team` None) or of one of its teams, each with its role.
fn index_members(
    (users, groups, serviceaccounts): Indexes<'_>,
    members: &Members,
    tenant: &Arc<str>,
    team: Option<&Arc<str>>,
    place: impl Fn() -> String,
) -> Result<(), DirectoryError> {
    for (role, user_names, group_names, sa_names) in members.by_role() {
        let member = Membership {
            tenant: tenant.clone(),
            team: team.cloned(),
            role,
        };
        for user in user_names {
            users.entry(user.clone()).or_default().push(member.clone());
        }
        for group in group_names {
            groups
                .entry(group.clone())
                .or_default()
                .push(member.clone());
        }
        for sa in sa_names {
            let valid = sa.split_once(':').is_some_and(|(ns, name)| {
                is_dns_label(ns) && !name.is_empty() && !name.contains(':')
            });
            if !valid {
                let list = match role {
                    Role::Developer => "serviceaccounts",
                    Role::Admin => "admins.serviceaccounts",
                    Role::Viewer => "viewers.serviceaccounts",
                };
                return Err(DirectoryError::InvalidName {
                    place: format!("{}.{list}", place()),
                    value: sa.clone(),
                    what: "service account (expected `namespace:name`)",
                });
            }
            serviceaccounts
                .entry(sa.clone())
                .or_default()
                .push(member.clone());
        }
    }
    Ok(())
}

/// RFC 1123 label: what namespaces and tenant ids must be.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes label value: what the stamped tier, team and client labels must be.
pub fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

fn check_dns_label(
    value: &str,
    place: impl Fn() -> String,
    what: &'static str,
) -> Result<(), DirectoryError> {
    if is_dns_label(value) {
        Ok(())
    } else {
        Err(DirectoryError::InvalidName {
            place: place(),
            value: value.to_string(),
            what,
        })
    }
}

fn check_label_value(
    value: &str,
    place: impl Fn() -> String,
    what: &'static str,
) -> Result<(), DirectoryError> {
    if is_label_value(value) {
        Ok(())
    } else {
        Err(DirectoryError::InvalidName {
            place: place(),
            value: value.to_string(),
            what,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Directory, DirectoryError> {
        let file: TenantsFile = serde_saphyr::from_str(yaml).unwrap();
        Directory::build(file, 1)
    }

    const BASE: &str = r#"
tiers:
  free:
    limits: { pods: 10, requests.cpu: "2", requests.memory: 4Gi, configmaps: 5 }
tenants:
  acme:
    tier: free
    namespaces: [acme-dev, acme-prod]
    members: { users: [alice], groups: [acme-devs], serviceaccounts: ["acme-prod:deployer"] }
    teams:
      backend: { namespaces: [acme-dev], users: [bob] }
  acme-labs:
    tier: free
    namespaces: [labs]
"#;

    #[test]
    fn indexes_namespaces_members_and_teams() {
        let d = parse(BASE).unwrap();
        let owner = d.namespace_owner("acme-dev").unwrap();
        assert_eq!(&*owner.tenant.id, "acme");
        assert_eq!(owner.team.map(|t| &**t), Some("backend"));
        assert!(!owner.by_prefix);
        assert_eq!(d.user_memberships("alice")[0].tenant.as_ref(), "acme");
        assert_eq!(
            d.user_memberships("bob")[0].team.as_deref(),
            Some("backend")
        );
        assert_eq!(d.group_memberships("acme-devs").len(), 1);
        assert_eq!(
            d.serviceaccount_memberships("acme-prod", "deployer").len(),
            1
        );
        assert!(d.user_memberships("mallory").is_empty());
        let limits = &d.tenant("acme").unwrap().tier.limits;
        assert_eq!(limits.get("requests.cpu"), Some(2000));
        assert_eq!(limits.get("requests.memory"), Some(4 << 30));
        assert_eq!(limits.get("count/configmaps"), Some(5));
        assert_eq!(limits.get("services"), None);
    }

    #[test]
    fn members_have_roles_and_the_strongest_listing_wins() {
        let d = parse(
            r#"
tiers: { free: {} }
tenants:
  acme:
    tier: free
    namespaces: [acme-dev]
    members:
      users: [alice, dave]
      admins: { users: [alice], groups: [acme-owners] }
      viewers: { users: [carol], serviceaccounts: ["acme-dev:audit"] }
    teams:
      backend: { namespaces: [acme-dev], users: [erin], admins: { users: [frank] } }
"#,
        )
        .unwrap();
        let role = |m: &[Membership]| m.iter().map(|m| m.role).collect::<Vec<_>>();
        assert_eq!(
            role(d.user_memberships("alice")),
            [Role::Admin],
            "listed twice: the stronger"
        );
        assert_eq!(role(d.user_memberships("dave")), [Role::Developer]);
        assert_eq!(role(d.user_memberships("carol")), [Role::Viewer]);
        assert_eq!(role(d.group_memberships("acme-owners")), [Role::Admin]);
        assert_eq!(
            role(d.serviceaccount_memberships("acme-dev", "audit")),
            [Role::Viewer]
        );
        let frank = &d.user_memberships("frank")[0];
        assert_eq!(
            (frank.team.as_deref(), frank.role),
            (Some("backend"), Role::Admin)
        );
        assert_eq!(role(d.user_memberships("erin")), [Role::Developer]);
        let err = parse(
            "tiers: { free: {} }\ntenants:\n  acme: { tier: free, members: { viewers: { serviceaccounts: [audit] } } }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tenants.acme.members.viewers.serviceaccounts"),
            "{err}"
        );
    }

    #[test]
    fn self_service_namespaces_belong_to_the_longest_matching_tenant() {
        let d = parse(BASE).unwrap();
        let owner = d.namespace_owner("acme-feature-x").unwrap();
        assert_eq!(&*owner.tenant.id, "acme");
        assert!(owner.by_prefix);
        assert_eq!(
            &*d.namespace_owner("acme-labs-x").unwrap().tenant.id,
            "acme-labs"
        );
        assert!(d.namespace_owner("acme").is_none());
        assert!(d.namespace_owner("kube-system").is_none());
        assert!(d.namespace_owner("globex-dev").is_none());
    }

    #[test]
    fn bad_data_is_refused_with_its_place() {
        let cases = [
            (
                BASE.replace(
                    "tier: free\n    namespaces: [labs]",
                    "tier: gold\n    namespaces: [labs]",
                ),
                "tenants.acme-labs.tier: unknown tier `gold`",
            ),
            (
                BASE.replace("[labs]", "[acme-dev]"),
                "namespace `acme-dev` is claimed by two tenants: `acme` and `acme-labs`",
            ),
            (
                BASE.replace("4Gi", "4GB"),
                "tiers.free.limits.requests.memory: `4GB` is not a Kubernetes quantity",
            ),
            (
                BASE.replace("pods: 10", "pod: 10"),
                "tiers.free.limits: unknown resource `pod`",
            ),
            (
                BASE.replace("acme-prod:deployer", "deployer"),
                "tenants.acme.members.serviceaccounts: `deployer` is not a valid service account",
            ),
            (
                BASE.replace(
                    "backend: { namespaces: [acme-dev]",
                    "backend: { namespaces: [labs]",
                ),
                "tenants.acme.teams.backend.namespaces: `labs` is not one of tenant `acme`'s namespaces",
            ),
            (
                BASE.replace("  acme-labs:", "  Acme_Labs:"),
                "tenants.Acme_Labs: `Acme_Labs` is not a valid tenant id",
            ),
            (
                BASE.replace(
                    "tier: free\n    namespaces: [labs]",
                    "tier: free\n    purge_after: 2027-01-01T00:00:00Z\n    namespaces: [labs]",
                ),
                "tenants.acme-labs.purge_after: only a deleted tenant has a purge time (its status is `active`)",
            ),
        ];
        for (yaml, want) in cases {
            let err = parse(&yaml).unwrap_err().to_string();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
        }
    }
}
