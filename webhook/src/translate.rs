//! AdmissionRequest → Cedar: the principal with its tenant hierarchy, the object with its owner,
//! labels, references and pod facts, and the quota context.
//!
//! This is kept apart from the decision so it can be tested table-style ("this manifest yields
//! these entities") and so the policies, not this code, say what is allowed.

use std::collections::{BTreeSet, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{Entities, EntityTypeName, Request};
use cedar_policy_core::ast::{
    Context, Eid, Entity, EntityType, EntityUID, EntityUIDEntry, Literal, PartialValue,
    Value as CedarValue,
};
use cedar_policy_core::entities::{NoEntitiesSchema, TCComputation};
use cedar_policy_core::extensions::Extensions;
use serde_json::Value;
use smol_str::SmolStr;
use tenantry_cluster::json::At;
use tenantry_tenancy::directory::{Membership, NamespaceOwner};
use tenantry_tenancy::{Directory, PolicyEngine};
use thiserror::Error;

use crate::admission::{AdmissionRequest, Operation};
use crate::boundary::Boundary;
use crate::facts::labels_of;
pub use crate::facts::{ObjectFacts, PodFacts, ServiceFacts, directory_labels, object_facts};
use crate::pod::InjectionConfig;
use crate::podsecurity::PodSecurity;
use crate::usage::{self, Amounts, UsageView};

pub use tenantry_tenancy::labels::{
    LABEL_CLIENT, LABEL_TEAM, LABEL_TENANT, LABEL_TIER, STAMPED_LABELS,
};

/// Everything a decision reads. All in memory: no decision waits on the network.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub directory: &'a Directory,
    pub usage: &'a dyn UsageView,
    pub policies: &'a PolicyEngine,
    pub injection: &'a InjectionConfig,
    pub boundary: &'a Boundary,
}

impl<'a> Inputs<'a> {
    /// Who owns `namespace`, as the boundary draws it: never a reserved name (`kube-*`,
    /// `*-system`, `default`, …); the directory's listing; else the tenant whose `<tenant>-`
    /// prefix it carries *and* whose label it carries — stamped when that tenant created it
    /// through the webhook. A pre-existing namespace that merely matches a prefix (`flux-system`
    /// for a tenant `flux`, `team-a` for `team`) is nobody's.
    pub fn owner(&self, namespace: &str) -> Option<NamespaceOwner<'a>> {
        if namespace.is_empty() || self.boundary.is_reserved(namespace) {
            return None;
        }
        if let Some(listed) = self.directory.listed_owner(namespace) {
            return Some(listed);
        }
        let by_prefix = self.directory.prefix_owner(namespace)?;
        let label = self.usage.namespace_label(namespace)?;
        (*label == *by_prefix.tenant.id).then_some(by_prefix)
    }

    /// The owner of the namespace a request writes into. A Namespace being created is its
    /// prefix's tenant's: creating it through the webhook is what makes it so.
    pub fn request_owner(&self, req: &AdmissionRequest) -> Option<NamespaceOwner<'a>> {
        let namespace = object_namespace(req);
        let creates_namespace = req.operation == Operation::Create
            && req.subresource().is_empty()
            && req.resource.group.is_empty()
            && req.resource.resource == "namespaces";
        if creates_namespace
            && !self.boundary.is_reserved(&namespace)
            && self.directory.listed_owner(&namespace).is_none()
        {
            return self.directory.prefix_owner(&namespace);
        }
        self.owner(&namespace)
    }

    /// Every namespace of `tenant` now: those the directory lists, and the self-service ones it
    /// created. Quotas count over these.
    pub fn tenant_namespaces(&self, tenant: &str) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self
            .directory
            .tenant(tenant)
            .into_iter()
            .flat_map(|t| t.namespaces.iter().map(|n| Arc::from(n.as_str())))
            .collect();
        out.extend(
            self.usage
                .labelled_namespaces(tenant)
                .into_iter()
                .filter(|ns| {
                    self.owner(ns)
                        .is_some_and(|o| *o.tenant.id == *tenant && o.by_prefix)
                }),
        );
        out.sort();
        out.dedup();
        out
    }
}

/// Why a request could not be put to the policies. Each becomes a denial, never an allow.
#[derive(Debug, Error)]
pub enum TranslateError {
    /// The object itself is unreadable (HTTP 400 in the response status).
    #[error("{0}")]
    BadObject(String),
    /// Tenantry could not build the Cedar request (a bug; HTTP 500 in the response status).
    #[error("cannot evaluate policies for this request: {0}")]
    Internal(String),
}

impl TranslateError {
    pub fn code(&self) -> u16 {
        match self {
            TranslateError::BadObject(_) => 400,
            TranslateError::Internal(_) => 500,
        }
    }
}

fn internal(e: impl std::fmt::Display) -> TranslateError {
    TranslateError::Internal(e.to_string())
}

struct Types {
    user: EntityType,
    service_account: EntityType,
    group: EntityType,
    team: EntityType,
    role: EntityType,
    tenant: EntityType,
    client: EntityType,
    object: EntityType,
    action: EntityType,
}

#[allow(clippy::expect_used)] // constant names that are valid Cedar identifiers
static TYPES: LazyLock<Types> = LazyLock::new(|| {
    let t = |n: &str| {
        let name = EntityTypeName::from_str(n).expect("valid Cedar type name");
        AsRef::<EntityType>::as_ref(&name).clone()
    };
    Types {
        user: t("User"),
        service_account: t("ServiceAccount"),
        group: t("Group"),
        team: t("Team"),
        role: t("Role"),
        tenant: t("Tenant"),
        client: t("Client"),
        object: t("Object"),
        action: t("Action"),
    }
});

// Entities, attributes and the context are built as Cedar values directly (cedar-policy-core),
// not as restricted expressions that Cedar would then parse-evaluate back into the same values:
// that round trip, and re-closing a hierarchy built closed, were a third of a review.

fn uid(ty: &EntityType, id: &str) -> EntityUID {
    EntityUID::from_components(ty.clone(), Eid::new(id), None)
}

fn string(s: &str) -> CedarValue {
    CedarValue::from(s)
}

fn flag(b: bool) -> CedarValue {
    CedarValue::from(b)
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> CedarValue {
    set_of(items.into_iter().map(|s| Literal::from(s.as_str())))
}

/// A set of literals. Cedar's general `Value::set` collects its lookup table through an
/// iterator that gives no size, growing it again and again; from literals it is sized once.
fn set_of(lits: impl IntoIterator<Item = Literal>) -> CedarValue {
    CedarValue::set_of_lits(lits, None)
}

fn record(fields: impl IntoIterator<Item = (&'static str, CedarValue)>) -> CedarValue {
    CedarValue::record(fields, None)
}

fn attributes(
    fields: impl IntoIterator<Item = (&'static str, CedarValue)>,
) -> impl Iterator<Item = (SmolStr, PartialValue)> {
    fields
        .into_iter()
        .map(|(k, v)| (SmolStr::new_static(k), PartialValue::from(v)))
}

/// The quota numbers behind the context, kept to explain a quota denial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaFacts {
    pub counted_resource: String,
    pub limits: Vec<(&'static str, i64)>,
    pub usage: Amounts,
    pub requested: Amounts,
}

/// A request ready for the policy engine.
pub struct Translation {
    pub request: Request,
    pub entities: Entities,
    /// The owner and the principal's tenants: the policy slices to evaluate.
    pub tenants: Vec<Arc<str>>,
    pub facts: ObjectFacts,
    pub quota: QuotaFacts,
}

/// The namespace an object lives in; for a Namespace, its own name (or, before the API server
/// has generated one, its `generateName`, which carries the same `<tenant>-` prefix).
pub fn object_namespace(req: &AdmissionRequest) -> String {
    if req.resource.group.is_empty() && req.resource.resource == "namespaces" {
        let field = |f: &str| {
            req.subject()
                .at(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
        };
        return req
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .or_else(|| field("name"))
            .or_else(|| field("generateName"))
            .unwrap_or("")
            .to_string();
    }
    req.namespace.clone().unwrap_or_default()
}

fn quota_facts(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
    owner: Option<&NamespaceOwner<'_>>,
) -> Result<QuotaFacts, TranslateError> {
    let group = req.resource.group.as_str();
    let resource = req.resource.resource.as_str();
    let counted_resource = usage::count_key(group, resource);
    let counts = matches!(req.operation, Operation::Create | Operation::Update)
        && matches!(req.subresource(), "" | "resize");
    let (Some(owner), true) = (owner, counts) else {
        return Ok(QuotaFacts {
            counted_resource,
            ..QuotaFacts::default()
        });
    };
    let tenant = &owner.tenant.id;
    let requested = requested_amounts(req)?;
    let namespaces = inputs.tenant_namespaces(tenant);
    let namespaces: Vec<&str> = namespaces.iter().map(|n| &**n).collect();
    let used = |key: &str| inputs.usage.used(tenant, &namespaces, key);
    let usage = Amounts {
        namespaces: used("namespaces"),
        pods: used("pods"),
        services: used("services"),
        persistentvolumeclaims: used("persistentvolumeclaims"),
        requests_cpu: used("requests.cpu"),
        requests_memory: used("requests.memory"),
        requests_storage: used("requests.storage"),
        limits_cpu: used("limits.cpu"),
        limits_memory: used("limits.memory"),
        count: used(&counted_resource),
    };
    let tier_limits = &owner.tenant.tier.limits;
    let limits = Amounts::default()
        .fields()
        .into_iter()
        .filter_map(|(key, _)| {
            let name = if key == "count" {
                counted_resource.as_str()
            } else {
                key
            };
            tier_limits.get(name).map(|limit| (key, limit))
        })
        .collect();
    Ok(QuotaFacts {
        counted_resource,
        limits,
        usage,
        requested,
    })
}

/// What a write adds to its tenant's usage: the whole object on CREATE; on UPDATE (a resize, a
/// claim expanded, a pod's resources through any path) only what grows.
pub fn requested_amounts(req: &AdmissionRequest) -> Result<Amounts, TranslateError> {
    let (group, resource) = (req.resource.group.as_str(), req.resource.resource.as_str());
    let new = usage::amounts_of(group, resource, &req.object)
        .map_err(|e| TranslateError::BadObject(e.to_string()))?;
    if req.operation != Operation::Update {
        return Ok(new);
    }
    // An old object whose quantities Tenantry cannot read (while the new one's it can) is
    // counted as nothing: the whole new object is growth. Guessing "unchanged" would let a resize
    // past the tier through on a parse failure. An update that leaves the quantities as they
    // were cannot reach here: the same text would have failed above.
    let old = usage::amounts_of(group, resource, &req.old_object).unwrap_or_default();
    Ok(new.growth_since(&old))
}

fn amounts_record(a: &Amounts) -> CedarValue {
    record(
        a.fields()
            .into_iter()
            .map(|(k, v)| (k, CedarValue::from(v))),
    )
}

/// The principal's ancestors: its groups, and the roles, teams, tenants and clients above them.
struct PrincipalBuilder<'a> {
    directory: &'a Directory,
    tenants: BTreeSet<Arc<str>>,
    parents: HashSet<EntityUID>,
}

impl PrincipalBuilder<'_> {
    fn add(&mut self, memberships: &[Membership]) {
        for m in memberships {
            self.tenants.insert(m.tenant.clone());
            self.parents.insert(uid(&TYPES.tenant, &m.tenant));
            // Roles are `Role::"<tenant>/<role>"` and `Role::"<tenant>/<team>/<role>"`.
            let role = match &m.team {
                Some(team) => {
                    self.parents
                        .insert(uid(&TYPES.team, &format!("{}/{}", m.tenant, team)));
                    format!("{}/{}/{}", m.tenant, team, m.role)
                }
                None => format!("{}/{}", m.tenant, m.role),
            };
            self.parents.insert(uid(&TYPES.role, &role));
            if let Some(client) = self
                .directory
                .tenant(&m.tenant)
                .and_then(|t| t.client.as_ref())
            {
                self.parents.insert(uid(&TYPES.client, &client.id));
            }
        }
    }
}

fn tenant_entity(directory: &Directory, id: &str) -> Result<Option<Entity>, TranslateError> {
    let Some(t) = directory.tenant(id) else {
        return Ok(None);
    };
    t.entity()
        .map(|e| Some(AsRef::<Entity>::as_ref(e).clone()))
        .map_err(TranslateError::Internal)
}

/// The pod security facts as Cedar record fields.
fn security_record(f: &PodSecurity) -> [(&'static str, CedarValue); 19] {
    let b = |name: &'static str, v: bool| (name, flag(v));
    let strings = |name: &'static str, v: &BTreeSet<String>| (name, strings(v));
    let longs =
        |name: &'static str, v: &BTreeSet<i64>| (name, set_of(v.iter().map(|n| Literal::from(*n))));
    [
        b("privileged", f.privileged),
        b("host_process", f.host_process),
        strings("host_paths", &f.host_paths),
        longs("host_ports", &f.host_ports),
        strings("added_capabilities", &f.added_capabilities),
        b("apparmor_unconfined", f.apparmor_unconfined),
        b("selinux_custom", f.selinux_custom),
        b("proc_mount_unmasked", f.proc_mount_unmasked),
        b("seccomp_unconfined", f.seccomp_unconfined),
        strings("sysctls", &f.sysctls),
        strings("restricted_volume_types", &f.restricted_volume_types),
        strings("network_volumes", &f.network_volumes),
        b("privilege_escalation", f.privilege_escalation),
        b("may_run_as_root", f.may_run_as_root),
        longs("run_as_users", &f.run_as_users),
        b("seccomp_unset", f.seccomp_unset),
        b("capabilities_kept", f.capabilities_kept),
        b("share_process_namespace", f.share_process_namespace),
        b("targets_enforcer", f.targets_enforcer),
    ]
}

/// Builds the Cedar request for an admission request.
pub fn translate(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
) -> Result<Translation, TranslateError> {
    let directory = inputs.directory;
    let facts = object_facts(inputs, req)?;
    let owner = inputs.request_owner(req);
    let quota = quota_facts(inputs, req, owner.as_ref())?;

    // The store holds only entities whose attributes policies read: the principal, the object,
    // the tenants involved and the request's action. Groups, teams and clients appear as
    // ancestor uids on the principal (all of them, transitively), which is all `in` needs.
    let mut entities: Vec<Entity> = Vec::with_capacity(6);
    let mut builder = PrincipalBuilder {
        directory,
        tenants: BTreeSet::new(),
        parents: HashSet::new(),
    };
    let groups: BTreeSet<&String> = req.user_info.groups.iter().collect();
    for group in groups {
        builder.parents.insert(uid(&TYPES.group, group));
        builder.add(directory.group_memberships(group));
    }
    let info = &req.user_info;
    let (principal, mut attrs) = if let Some((sa_namespace, sa_name)) = info.service_account() {
        builder.add(directory.serviceaccount_memberships(sa_namespace, sa_name));
        // A service account of a tenant namespace acts for that tenant, listed or not.
        if let Some(home) = inputs.owner(sa_namespace) {
            builder.add(&[Membership {
                tenant: home.tenant.id.clone(),
                team: home.team.cloned(),
                role: tenantry_tenancy::model::Role::Developer,
            }]);
        }
        (
            uid(&TYPES.service_account, &format!("{sa_namespace}:{sa_name}")),
            vec![
                ("name", string(sa_name)),
                ("namespace", string(sa_namespace)),
            ],
        )
    } else {
        builder.add(directory.user_memberships(&info.username));
        (
            uid(&TYPES.user, &info.username),
            vec![("name", string(&info.username))],
        )
    };
    attrs.push(("tenant_member", flag(!builder.tenants.is_empty())));
    attrs.push((
        "cluster_component",
        flag(inputs.boundary.is_cluster_component(info)),
    ));
    let mut tenants: BTreeSet<Arc<str>> = builder.tenants.clone();
    entities.push(Entity::new_with_attr_partial_value(
        principal.clone(),
        attributes(attrs),
        HashSet::new(),
        builder.parents,
        [],
    ));
    if let Some(o) = &facts.owner {
        tenants.insert(o.clone());
    }
    for tenant in &tenants {
        if let Some(e) = tenant_entity(directory, tenant)? {
            entities.push(e);
        }
    }

    // The object.
    let object = req.subject();
    let name = req
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .or_else(|| object.at("/metadata/name").and_then(Value::as_str));
    // The object's id is only its handle in this request's entity store (its attributes say
    // what it is), and short: Cedar hashes it on every attribute access.
    let resource_uid = uid(&TYPES.object, "request");
    let p = &facts.pod;
    let pod_record = record(
        [
            ("is_pod", flag(p.is_pod)),
            ("host_network", flag(p.host_network)),
            ("host_pid", flag(p.host_pid)),
            ("host_ipc", flag(p.host_ipc)),
            ("enforcer", string(p.enforcer.as_str())),
            ("scheduling", string(p.scheduling.as_str())),
            ("enforcer_port_conflict", flag(p.enforcer_port_conflict)),
        ]
        .into_iter()
        .chain(security_record(&p.security)),
    );
    let mut attrs = vec![
        ("kind", string(&req.kind.kind)),
        ("group", string(&req.resource.group)),
        ("resource", string(&req.resource.resource)),
        ("subresource", string(req.subresource())),
        ("name", string(name.unwrap_or(""))),
        ("namespace", string(&facts.namespace)),
        ("self_service", flag(facts.self_service)),
        (
            "referenced_tenants",
            set_of(
                facts
                    .references
                    .tenants
                    .iter()
                    .map(|t| Literal::from(uid(&TYPES.tenant, t))),
            ),
        ),
        ("references_any_tenant", flag(facts.references.any_tenant)),
        ("tenantry_labels", strings(&facts.tenantry_labels)),
        ("directory_labels", strings(&facts.directory_labels)),
        ("pod", pod_record),
        ("service_external_ips", flag(facts.service.external_ips)),
        (
            "load_balancer_status",
            flag(facts.service.load_balancer_status),
        ),
        (
            "namespace_security_changed",
            flag(facts.namespace_security_changed),
        ),
        ("volume_claim", string(facts.volume_claim)),
        ("managed_by_tenantry", flag(facts.managed_by_tenantry)),
    ];
    let mut parents = HashSet::new();
    if let Some(o) = &facts.owner {
        attrs.push(("owner", CedarValue::from(uid(&TYPES.tenant, o))));
        parents.insert(uid(&TYPES.tenant, o));
        if let Some(client) = directory.tenant(o).and_then(|t| t.client.as_ref()) {
            parents.insert(uid(&TYPES.client, &client.id));
        }
    }
    let tags = labels_of(object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((SmolStr::from(k), PartialValue::from(string(v.as_str()?)))));
    entities.push(Entity::new_with_attr_partial_value(
        resource_uid.clone(),
        attributes(attrs),
        HashSet::new(),
        parents,
        tags,
    ));
    // Only the request's own action is looked up (for `action in …`); it carries its ancestors.
    let action = uid(&TYPES.action, req.operation.action());
    entities.extend(
        inputs
            .policies
            .action_entities()
            .iter()
            .map(AsRef::<Entity>::as_ref)
            .filter(|e| *e.uid() == action)
            .cloned(),
    );

    // The context.
    let old_tenant_label = if req.operation == Operation::Update {
        labels_of(&req.old_object)
            .and_then(|l| l.get(LABEL_TENANT))
            .and_then(Value::as_str)
            .unwrap_or("")
    } else {
        ""
    };
    let limits = record(quota.limits.iter().map(|(k, v)| (*k, CedarValue::from(*v))));
    let context = [
        ("operation", string(req.operation.as_str())),
        ("dry_run", flag(req.is_dry_run())),
        ("old_tenant_label", string(old_tenant_label)),
        ("counted_resource", string(&quota.counted_resource)),
        ("limits", limits),
        ("usage", amounts_record(&quota.usage)),
        ("requested", amounts_record(&quota.requested)),
    ];
    let context = Context::Value(Arc::new(
        context
            .into_iter()
            .map(|(k, v)| (SmolStr::new_static(k), v))
            .collect(),
    ));

    let request = cedar_policy_core::ast::Request::new_unchecked(
        EntityUIDEntry::known(principal, None),
        EntityUIDEntry::known(action, None),
        EntityUIDEntry::known(resource_uid, None),
        Some(context),
    );
    let entities = cedar_policy_core::entities::Entities::from_entities(
        entities,
        None::<&NoEntitiesSchema>,
        CLOSURE,
        Extensions::none(),
    )
    .map_err(internal)?;
    Ok(Translation {
        request: Request::from(request),
        entities: Entities::from(entities),
        tenants: tenants.into_iter().collect(),
        facts,
        quota,
    })
}

/// Every ancestor is listed on its entity as it is built (the principal's groups, roles, teams,
/// tenants and clients; the object's owner and client; the action's groups from the schema), so
/// Cedar need not close the hierarchy again per review. Builds with debug assertions — every
/// test — check that it is closed instead, so an ancestor left out fails the suite rather than
/// weakening an `in`.
const CLOSURE: TCComputation = if cfg!(debug_assertions) {
    TCComputation::EnforceAlreadyComputed
} else {
    TCComputation::AssumeAlreadyComputed
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::{self, Identity, Write};
    use serde_json::json;

    fn resize(old_cpu: &str, new_cpu: &str) -> AdmissionRequest {
        let pod = |cpu: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}})
        };
        let write = Write {
            object: pod(new_cpu),
            old: Some(pod(old_cpu)),
            identity: Identity::default(),
            namespace: Some("acme-dev".into()),
            operation: Operation::Update,
            dry_run: false,
            subresource: Some("pods/resize".into()),
            name: None,
        };
        review::admission_request(&write, "uid").unwrap()
    }

    #[test]
    fn an_update_is_charged_only_what_it_grows() {
        assert_eq!(
            requested_amounts(&resize("1", "3")).unwrap().requests_cpu,
            2000
        );
        assert_eq!(
            requested_amounts(&resize("3", "1")).unwrap().requests_cpu,
            0
        );
        let grown = requested_amounts(&resize("1", "3")).unwrap();
        assert_eq!(
            (grown.pods, grown.count),
            (0, 0),
            "no new pod, no new object"
        );
    }

    #[test]
    fn an_unreadable_old_object_never_hides_growth() {
        // Counting "unchanged" on a parse failure would let a resize past the tier through.
        assert_eq!(
            requested_amounts(&resize("lots", "3"))
                .unwrap()
                .requests_cpu,
            3000
        );
    }
}
