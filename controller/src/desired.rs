//! The desired state: (directory snapshot, observed self-service namespaces) → every object
//! Tenantry owns in the cluster. Pure, so it is table-tested without a cluster and the reconcile
//! loop only has to apply what it returns under one field manager.
//!
//! Per tier: the PriorityClass its scheduling names. Per tenant namespace: the Namespace (its
//! stamped labels and the tier's Pod Security level), a NetworkPolicy isolating it, a LimitRange
//! giving default requests (so no pod escapes CPU and memory quotas by asking for nothing),
//! RoleBindings of the members by role (team members only in their team's namespaces), and a
//! ServiceAccount for the tenant's automation.
//!
//! The lifecycle is part of the same function: a suspended or deleted tenant keeps its namespaces
//! and isolation but loses its RoleBindings (no access at all, reads included); its namespaces are
//! listed for scale-down where the tier (or tenant) says so, always when deleted; and a deleted
//! tenant whose purge time has passed is no longer provisioned: its namespaces are listed for
//! deletion instead.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, Secret, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tenantry_tenancy::Directory;
use tenantry_tenancy::directory::Tenant;
use tenantry_tenancy::model::{Members, NetworkIsolation, Role, Status};

use crate::mirror;
use crate::ratelimit::{self, RateLimitAccess};

/// `app.kubernetes.io/managed-by` on everything Tenantry owns; the controller touches nothing
/// without it, and the webhook keeps tenants from changing what carries it.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "tenantry";
pub use tenantry_tenancy::labels::{LABEL_CLIENT, LABEL_TEAM, LABEL_TENANT, LABEL_TIER};
/// The label the API server sets on every namespace to its name; nobody can forge it.
const NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
/// The NetworkPolicy, LimitRange and ServiceAccount names in every tenant namespace.
pub const ISOLATION: &str = "tenantry-isolation";
pub const DEFAULTS: &str = "tenantry-defaults";
pub const AUTOMATION: &str = "tenantry-automation";

/// Operator settings the desired state depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The enforcer's proxy port: open to every peer, since the enforcer decides per request.
    pub enforcer_port: u16,
    /// Namespaces whose pods may reach every tenant (an ingress controller, monitoring).
    pub platform_namespaces: Vec<String>,
    /// Default requests (and limits) for containers that state none.
    pub default_cpu_request: String,
    pub default_memory_request: String,
    pub default_memory_limit: String,
    /// Per-tenant Redis credentials for the enforcers' shared rate limits, when configured.
    pub ratelimit: Option<RateLimitAccess>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            enforcer_port: 15001,
            platform_namespaces: vec!["ingress-nginx".into(), "monitoring".into()],
            default_cpu_request: "100m".into(),
            default_memory_request: "128Mi".into(),
            default_memory_limit: "512Mi".into(),
            ratelimit: None,
        }
    }
}

/// Everything Tenantry owns in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceObjects {
    pub namespace: Namespace,
    pub network_policy: NetworkPolicy,
    pub limit_range: LimitRange,
    pub role_bindings: Vec<RoleBinding>,
    pub service_account: ServiceAccount,
    /// The tenant's rate-limit Redis URL (`tenantry-ratelimit`), for its injected enforcers.
    pub ratelimit_secret: Option<Secret>,
}

/// Everything Tenantry owns in the cluster, and what the lifecycle asks of tenant workloads.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub priority_classes: Vec<PriorityClass>,
    pub namespaces: Vec<NamespaceObjects>,
    /// Namespaces whose Deployments and StatefulSets run no replicas (suspended or deleted
    /// tenants); everywhere else, workloads Tenantry scaled down get their replicas back.
    pub scaled_down: BTreeSet<String>,
    /// Namespaces to delete, with the tenant they must be labelled for: deleted tenants past
    /// their purge time.
    pub purge: BTreeMap<String, String>,
    /// The `Tenant` mirror of every tenant.
    pub tenants: Vec<mirror::Tenant>,
}

fn managed(
    name: &str,
    namespace: Option<&str>,
    mut labels: BTreeMap<String, String>,
) -> ObjectMeta {
    labels.insert(MANAGED_BY.into(), MANAGER.into());
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The labels the directory says a namespace of `tenant` (in `team`) carries.
fn tenant_labels(tenant: &Tenant, team: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_TENANT.to_string(), tenant.id.to_string()),
        (LABEL_TIER.to_string(), tenant.tier.name.to_string()),
    ]);
    if let Some(team) = team {
        labels.insert(LABEL_TEAM.into(), team.to_string());
    }
    if let Some(client) = &tenant.client {
        labels.insert(LABEL_CLIENT.into(), client.id.to_string());
    }
    labels
}

/// The desired state of the cluster for `directory`, with `self_service` the namespaces a tenant
/// created through the webhook (name → tenant, as their labels say).
pub fn desired(
    directory: &Directory,
    self_service: &BTreeMap<String, String>,
    options: &Options,
    now: jiff::Timestamp,
) -> DesiredState {
    let mut state = DesiredState::default();
    let mut classes = BTreeSet::new();
    for tenant in directory.tenants() {
        if let Some(class) = &tenant.tier.scheduling.priority_class {
            classes.insert(class.clone());
        }
    }
    state.priority_classes = classes.into_iter().map(|c| priority_class(&c)).collect();

    let mut tenants: Vec<_> = directory.tenants().collect();
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    for tenant in tenants {
        let mut namespaces: BTreeMap<String, Option<String>> = tenant
            .namespaces
            .iter()
            .map(|ns| (ns.clone(), None))
            .collect();
        for team in &tenant.teams {
            for ns in &team.namespaces {
                namespaces.insert(ns.clone(), Some(team.name.to_string()));
            }
        }
        for (ns, owner) in self_service {
            if owner == &*tenant.id {
                namespaces.entry(ns.clone()).or_insert(None);
            }
        }
        let all: BTreeSet<String> = namespaces.keys().cloned().collect();
        state.tenants.push(mirror::tenant(directory, tenant, &all));
        if tenant.purge_due(now) {
            for ns in namespaces.into_keys() {
                state.purge.insert(ns, tenant.id.to_string());
            }
            continue;
        }
        if tenant.scaled_down() {
            state.scaled_down.extend(namespaces.keys().cloned());
        }
        let automation_home = namespaces.keys().next().cloned();
        for (ns, team) in &namespaces {
            state.namespaces.push(namespace_objects(
                directory,
                tenant,
                ns,
                team.as_deref(),
                automation_home.as_deref(),
                options,
            ));
        }
    }
    state
}

fn priority_class(name: &str) -> PriorityClass {
    PriorityClass {
        metadata: managed(name, None, BTreeMap::new()),
        // Tiers order their pods by these classes' names; their values are the operator's to set
        // once (a PriorityClass value cannot change), so Tenantry creates them neutral and never
        // lets a tenant pod preempt another tenant's.
        value: Some(0),
        preemption_policy: Some("Never".into()),
        global_default: Some(false),
        description: Some(format!("Tenantry tier scheduling class `{name}`")),
    }
}

fn namespace_objects(
    directory: &Directory,
    tenant: &Tenant,
    ns: &str,
    team: Option<&str>,
    automation_home: Option<&str>,
    options: &Options,
) -> NamespaceObjects {
    let mut labels = tenant_labels(tenant, team);
    labels.insert(
        "pod-security.kubernetes.io/enforce".into(),
        tenant.tier.pod_security.as_str().into(),
    );
    let namespace = Namespace {
        metadata: managed(ns, None, labels),
        ..Namespace::default()
    };
    NamespaceObjects {
        namespace,
        network_policy: network_policy(tenant, ns, team, options),
        limit_range: limit_range(tenant, ns, team, options),
        role_bindings: role_bindings(directory, tenant, ns, team, automation_home),
        service_account: ServiceAccount {
            metadata: managed(AUTOMATION, Some(ns), tenant_labels(tenant, team)),
            ..ServiceAccount::default()
        },
        ratelimit_secret: options.ratelimit.as_ref().map(|access| Secret {
            metadata: managed(ratelimit::SECRET, Some(ns), tenant_labels(tenant, team)),
            data: Some(BTreeMap::from([(
                ratelimit::SECRET_KEY.to_string(),
                ByteString(access.tenant_url(&tenant.id).into_bytes()),
            )])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        }),
    }
}

/// Ingress from the tenant itself (its namespaces, or only this one on `namespace` and
/// `dedicated` tiers), from the platform's namespaces, and to the enforcer's port from anyone
/// (the enforcer decides per request whether the caller may call). Namespaces are matched by
/// labels nobody else can set: the tenant label Tenantry stamps, the name the API server sets.
fn network_policy(
    tenant: &Tenant,
    ns: &str,
    team: Option<&str>,
    options: &Options,
) -> NetworkPolicy {
    let by_label = |key: &str, value: &str| NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    let own = match tenant.tier.network_isolation {
        NetworkIsolation::Shared => by_label(LABEL_TENANT, &tenant.id),
        NetworkIsolation::Namespace | NetworkIsolation::Dedicated => by_label(NAMESPACE_NAME, ns),
    };
    let mut from = vec![own];
    from.extend(
        options
            .platform_namespaces
            .iter()
            .map(|p| by_label(NAMESPACE_NAME, p)),
    );
    let rules = vec![
        NetworkPolicyIngressRule {
            from: Some(from),
            ports: None,
        },
        NetworkPolicyIngressRule {
            from: None,
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(i32::from(options.enforcer_port))),
                protocol: Some("TCP".into()),
                end_port: None,
            }]),
        },
    ];
    NetworkPolicy {
        // The same labels the webhook stamps on every object in the namespace, so its mutation
        // never changes what the controller applies.
        metadata: managed(ISOLATION, Some(ns), tenant_labels(tenant, team)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            egress: None,
        }),
    }
}

fn limit_range(tenant: &Tenant, ns: &str, team: Option<&str>, options: &Options) -> LimitRange {
    let q = |s: &str| Quantity(s.to_string());
    LimitRange {
        metadata: managed(DEFAULTS, Some(ns), tenant_labels(tenant, team)),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default_request: Some(BTreeMap::from([
                    ("cpu".to_string(), q(&options.default_cpu_request)),
                    ("memory".to_string(), q(&options.default_memory_request)),
                ])),
                default: Some(BTreeMap::from([(
                    "memory".to_string(),
                    q(&options.default_memory_limit),
                )])),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

/// The subjects of `members` holding `role`.
fn subjects(members: &Members, role: Role) -> Vec<Subject> {
    let Some((_, users, groups, sas)) = members.by_role().into_iter().find(|(r, ..)| *r == role)
    else {
        return Vec::new();
    };
    let rbac = |kind: &str, name: &str| Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: kind.into(),
        name: name.into(),
        namespace: None,
    };
    let mut out: Vec<Subject> = users.iter().map(|u| rbac("User", u)).collect();
    out.extend(groups.iter().map(|g| rbac("Group", g)));
    out.extend(sas.iter().filter_map(|sa| {
        let (namespace, name) = sa.split_once(':')?;
        Some(Subject {
            api_group: None,
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(namespace.into()),
        })
    }));
    out
}

/// One RoleBinding per role held in this namespace: the tenant's members by role, and in a
/// team's namespace the team's members by role too. The automation ServiceAccount develops.
/// A suspended or deleted tenant has none: its members lose all access, reads included.
fn role_bindings(
    directory: &Directory,
    tenant: &Tenant,
    ns: &str,
    team: Option<&str>,
    automation_home: Option<&str>,
) -> Vec<RoleBinding> {
    if tenant.status != Status::Active {
        return Vec::new();
    }
    let spec = directory.source().tenants.get(&*tenant.id);
    let tenant_members = spec.map(|s| s.members.clone()).unwrap_or_default();
    let team_members = team
        .and_then(|t| spec.and_then(|s| s.teams.get(t)))
        .map(|t| t.members());
    let mut out = Vec::new();
    for role in Role::ALL {
        let mut subjects_of_role = subjects(&tenant_members, role);
        if let Some(members) = &team_members {
            subjects_of_role.extend(subjects(members, role));
        }
        if role == Role::Developer
            && let Some(home) = automation_home
        {
            subjects_of_role.push(Subject {
                api_group: None,
                kind: "ServiceAccount".into(),
                name: AUTOMATION.into(),
                namespace: Some(home.into()),
            });
        }
        if subjects_of_role.is_empty() {
            continue;
        }
        out.push(RoleBinding {
            metadata: managed(
                &format!("tenantry-{}", role.as_str()),
                Some(ns),
                tenant_labels(tenant, team),
            ),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: role.cluster_role().into(),
            },
            subjects: Some(subjects_of_role),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn directory() -> Directory {
        tenantry_tenancy::embedded::directory().unwrap()
    }

    fn now() -> jiff::Timestamp {
        "2026-11-30T09:00:00Z".parse().unwrap()
    }

    fn find<'a>(state: &'a DesiredState, ns: &str) -> &'a NamespaceObjects {
        state
            .namespaces
            .iter()
            .find(|n| n.namespace.metadata.name.as_deref() == Some(ns))
            .unwrap_or_else(|| panic!("no namespace {ns}"))
    }

    fn subjects_of(b: &RoleBinding) -> Vec<String> {
        b.subjects
            .iter()
            .flatten()
            .map(|s| match &s.namespace {
                Some(ns) => format!("{}:{ns}:{}", s.kind, s.name),
                None => format!("{}:{}", s.kind, s.name),
            })
            .collect()
    }

    #[test]
    fn every_tier_class_and_listed_namespace_is_provisioned() {
        let state = desired(&directory(), &BTreeMap::new(), &Options::default(), now());
        let classes: Vec<_> = state
            .priority_classes
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            classes,
            ["tenant-business", "tenant-enterprise", "tenant-free"]
        );
        assert!(
            state
                .priority_classes
                .iter()
                .all(|c| c.preemption_policy.as_deref() == Some("Never"))
        );
        let names: Vec<_> = state
            .namespaces
            .iter()
            .map(|n| n.namespace.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            ["acme-dev", "acme-prod", "globex-prod", "initech-prod"]
        );
        for n in &state.namespaces {
            for meta in [
                &n.namespace.metadata,
                &n.network_policy.metadata,
                &n.limit_range.metadata,
                &n.service_account.metadata,
            ] {
                assert_eq!(
                    meta.labels.as_ref().unwrap()[MANAGED_BY],
                    MANAGER,
                    "{meta:?}"
                );
            }
        }
    }

    #[test]
    fn namespaces_carry_the_directorys_labels_and_the_tiers_pod_security_level() {
        let state = desired(&directory(), &BTreeMap::new(), &Options::default(), now());
        let dev = find(&state, "acme-dev")
            .namespace
            .metadata
            .labels
            .clone()
            .unwrap();
        assert_eq!(dev[LABEL_TENANT], "acme");
        assert_eq!(dev[LABEL_TIER], "enterprise");
        assert_eq!(dev[LABEL_TEAM], "backend");
        assert_eq!(dev[LABEL_CLIENT], "globalcorp");
        assert_eq!(dev["pod-security.kubernetes.io/enforce"], "baseline");
        // Every object in a team namespace carries what the webhook would stamp on it.
        let objects = find(&state, "acme-dev");
        for meta in [
            &objects.network_policy.metadata,
            &objects.limit_range.metadata,
            &objects.service_account.metadata,
        ] {
            assert_eq!(
                meta.labels.as_ref().unwrap()[LABEL_TEAM],
                "backend",
                "{meta:?}"
            );
        }
        let initech = find(&state, "initech-prod")
            .namespace
            .metadata
            .labels
            .clone()
            .unwrap();
        assert_eq!(initech["pod-security.kubernetes.io/enforce"], "restricted");
        assert!(!initech.contains_key(LABEL_TEAM));
    }

    #[test]
    fn isolation_follows_the_tier() {
        let state = desired(&directory(), &BTreeMap::new(), &Options::default(), now());
        let peers = |ns: &str| -> Vec<BTreeMap<String, String>> {
            let spec = find(&state, ns).network_policy.spec.clone().unwrap();
            assert_eq!(
                spec.pod_selector,
                Some(LabelSelector::default()),
                "every pod"
            );
            spec.ingress.unwrap()[0]
                .from
                .clone()
                .unwrap()
                .into_iter()
                .map(|p| p.namespace_selector.unwrap().match_labels.unwrap())
                .collect()
        };
        // globex is on the free tier (shared): any namespace of globex may reach it.
        assert_eq!(
            peers("globex-prod")[0],
            BTreeMap::from([(LABEL_TENANT.to_string(), "globex".to_string())])
        );
        // acme is on the enterprise tier (dedicated): only the namespace itself.
        assert_eq!(
            peers("acme-prod")[0],
            BTreeMap::from([(NAMESPACE_NAME.to_string(), "acme-prod".to_string())])
        );
        // The platform's namespaces, by their unforgeable name label.
        assert!(peers("globex-prod").contains(&BTreeMap::from([(
            NAMESPACE_NAME.to_string(),
            "monitoring".to_string()
        )])));
        // The enforcer's port is open to everyone: the enforcer decides per request.
        let spec = find(&state, "globex-prod")
            .network_policy
            .spec
            .clone()
            .unwrap();
        let enforcer = &spec.ingress.unwrap()[1];
        assert!(enforcer.from.is_none());
        assert_eq!(
            enforcer.ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(15001))
        );
    }

    #[test]
    fn members_are_bound_by_role_and_team_members_only_in_their_team() {
        let state = desired(&directory(), &BTreeMap::new(), &Options::default(), now());
        let bindings = |ns: &str| -> BTreeMap<String, (String, Vec<String>)> {
            find(&state, ns)
                .role_bindings
                .iter()
                .map(|b| {
                    (
                        b.metadata.name.clone().unwrap(),
                        (b.role_ref.name.clone(), subjects_of(b)),
                    )
                })
                .collect()
        };
        let prod = bindings("acme-prod");
        assert_eq!(prod["tenantry-admin"].0, "admin");
        assert!(prod["tenantry-admin"].1.contains(&"User:alice".to_string()));
        assert_eq!(prod["tenantry-developer"].0, "edit");
        assert!(
            prod["tenantry-developer"]
                .1
                .contains(&"Group:acme-devs".to_string())
        );
        assert!(
            prod["tenantry-developer"]
                .1
                .contains(&"ServiceAccount:acme-prod:deployer".to_string())
        );
        assert_eq!(
            prod["tenantry-viewer"],
            ("view".to_string(), vec!["User:dana".to_string()])
        );
        // The automation account lives in the tenant's first namespace and develops everywhere.
        assert!(
            prod["tenantry-developer"]
                .1
                .contains(&format!("ServiceAccount:acme-dev:{AUTOMATION}"))
        );
        // globex has no admins or viewers: no empty bindings.
        let globex = bindings("globex-prod");
        assert_eq!(globex.keys().collect::<Vec<_>>(), ["tenantry-developer"]);
    }

    #[test]
    fn self_service_namespaces_are_provisioned_for_their_creator() {
        let observed = BTreeMap::from([("globex-lab".to_string(), "globex".to_string())]);
        let state = desired(&directory(), &observed, &Options::default(), now());
        let lab = find(&state, "globex-lab");
        assert_eq!(
            lab.namespace.metadata.labels.as_ref().unwrap()[LABEL_TENANT],
            "globex"
        );
        assert!(
            lab.role_bindings
                .iter()
                .any(|b| subjects_of(b).contains(&"User:bob".to_string()))
        );
        // A namespace observed for a tenant that no longer exists is not provisioned.
        let gone = BTreeMap::from([("umbrella-x".to_string(), "umbrella".to_string())]);
        let state = desired(&directory(), &gone, &Options::default(), now());
        assert!(
            state
                .namespaces
                .iter()
                .all(|n| n.namespace.metadata.name.as_deref() != Some("umbrella-x"))
        );
    }

    #[test]
    fn containers_that_ask_for_nothing_get_default_requests() {
        let state = desired(&directory(), &BTreeMap::new(), &Options::default(), now());
        let spec = find(&state, "globex-prod")
            .limit_range
            .spec
            .clone()
            .unwrap();
        let item = &spec.limits[0];
        assert_eq!(item.type_, "Container");
        let requests = item.default_request.as_ref().unwrap();
        assert_eq!(requests["cpu"], Quantity("100m".into()));
        assert_eq!(requests["memory"], Quantity("128Mi".into()));
    }

    /// The example directory with globex deleted (purge at `purge_after`) and a self-service
    /// namespace of globex observed.
    fn with_globex_deleted(purge_after: &str) -> (Directory, BTreeMap<String, String>) {
        let mut file = directory().source().clone();
        let globex = file.tenants.get_mut("globex").unwrap();
        globex.status = Status::Deleted;
        globex.purge_after = Some(purge_after.parse().unwrap());
        let observed = BTreeMap::from([("globex-lab".to_string(), "globex".to_string())]);
        (Directory::build(file, 2).unwrap(), observed)
    }

    #[test]
    fn suspended_and_deleted_tenants_keep_their_namespaces_but_lose_all_access() {
        let (dir, observed) = with_globex_deleted("2026-12-30T09:00:00Z");
        let state = desired(&dir, &observed, &Options::default(), now());
        for ns in ["globex-prod", "globex-lab", "initech-prod"] {
            let objects = find(&state, ns);
            assert!(objects.role_bindings.is_empty(), "{ns}: no access at all");
            assert_eq!(
                objects.network_policy.metadata.name.as_deref(),
                Some(ISOLATION)
            );
        }
        assert!(!find(&state, "acme-prod").role_bindings.is_empty());
        assert!(state.purge.is_empty(), "the grace period has not passed");
    }

    #[test]
    fn workloads_are_scaled_down_when_deleted_or_suspended_on_a_tier_that_says_so() {
        let (dir, observed) = with_globex_deleted("2026-12-30T09:00:00Z");
        let state = desired(&dir, &observed, &Options::default(), now());
        // globex deleted (always), initech suspended on business (scale_down_on_suspend).
        assert_eq!(
            state.scaled_down.iter().collect::<Vec<_>>(),
            ["globex-lab", "globex-prod", "initech-prod"]
        );
        // A tenant override keeps initech running while suspended.
        let mut file = dir.source().clone();
        file.tenants
            .get_mut("initech")
            .unwrap()
            .scale_down_on_suspend = Some(false);
        let state = desired(
            &Directory::build(file, 3).unwrap(),
            &observed,
            &Options::default(),
            now(),
        );
        assert!(!state.scaled_down.contains("initech-prod"));
        // Active tenants never are.
        assert!(!state.scaled_down.contains("acme-prod"));
    }

    #[test]
    fn a_deleted_tenant_past_its_purge_time_has_its_namespaces_deleted_and_nothing_provisioned() {
        let (dir, observed) = with_globex_deleted("2026-11-30T08:59:59Z");
        let state = desired(&dir, &observed, &Options::default(), now());
        assert_eq!(
            state.purge,
            BTreeMap::from([
                ("globex-lab".to_string(), "globex".to_string()),
                ("globex-prod".to_string(), "globex".to_string()),
            ])
        );
        assert!(
            state.namespaces.iter().all(|n| !n
                .namespace
                .metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with("globex")),
            "nothing is applied into namespaces being deleted"
        );
        assert!(!state.scaled_down.contains("globex-prod"));
        // Without a purge time, a deleted tenant is kept indefinitely.
        let mut file = dir.source().clone();
        file.tenants.get_mut("globex").unwrap().purge_after = None;
        let state = desired(
            &Directory::build(file, 3).unwrap(),
            &observed,
            &Options::default(),
            now(),
        );
        assert!(state.purge.is_empty());
        assert!(state.scaled_down.contains("globex-prod"));
    }

    #[test]
    fn with_rate_limit_credentials_each_namespace_gets_its_tenants_url_only() {
        let options = Options {
            ratelimit: Some(RateLimitAccess {
                address: "redis:6379".into(),
                admin_password: "admin".into(),
            }),
            ..Options::default()
        };
        let state = desired(&directory(), &BTreeMap::new(), &options, now());
        let url = |ns: &str| {
            let secret = find(&state, ns).ratelimit_secret.clone().unwrap();
            assert_eq!(secret.metadata.name.as_deref(), Some(ratelimit::SECRET));
            String::from_utf8(secret.data.unwrap()[ratelimit::SECRET_KEY].0.clone()).unwrap()
        };
        assert!(url("acme-prod").starts_with("redis://tenantry-tenant-acme:"));
        assert_eq!(
            url("acme-prod"),
            url("acme-dev"),
            "one credential per tenant"
        );
        assert!(url("globex-prod").starts_with("redis://tenantry-tenant-globex:"));
        assert_ne!(url("globex-prod"), url("acme-prod"));
        let without = desired(&directory(), &BTreeMap::new(), &Options::default(), now());
        assert!(find(&without, "acme-prod").ratelimit_secret.is_none());
    }
}
