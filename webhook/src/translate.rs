//! AdmissionRequest → Cedar: the principal with its tenant hierarchy, the object with its owner,
//! labels, references and pod facts, and the quota context.
//!
//! This is kept apart from the decision so it can be tested table-style ("this manifest yields
//! these entities") and so the policies, not this code, say what is allowed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use serde_json::Value;
use tenantry_tenancy::directory::{Membership, NamespaceOwner};
use tenantry_tenancy::{Directory, PolicyEngine};
use thiserror::Error;

use crate::admission::{AdmissionRequest, Operation};
use crate::pod::{self, EnforcerState, InjectionConfig, SchedulingState};
use crate::references::{self, References};
use crate::usage::{self, Amounts, UsageView};

pub const LABEL_TENANT: &str = "tenantry.dev/tenant";
pub const LABEL_TIER: &str = "tenantry.dev/tier";
pub const LABEL_TEAM: &str = "tenantry.dev/team";
pub const LABEL_CLIENT: &str = "tenantry.dev/client";
/// The labels Tenantry stamps; the directory alone decides their values.
pub const STAMPED_LABELS: [&str; 4] = [LABEL_TENANT, LABEL_TIER, LABEL_TEAM, LABEL_CLIENT];

/// Everything a decision reads. All in memory: no decision waits on the network.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub directory: &'a Directory,
    pub usage: &'a dyn UsageView,
    pub policies: &'a PolicyEngine,
    pub injection: &'a InjectionConfig,
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
    user: EntityTypeName,
    service_account: EntityTypeName,
    group: EntityTypeName,
    team: EntityTypeName,
    tenant: EntityTypeName,
    client: EntityTypeName,
    object: EntityTypeName,
    action: EntityTypeName,
}

#[allow(clippy::expect_used)] // constant names that are valid Cedar identifiers
static TYPES: LazyLock<Types> = LazyLock::new(|| {
    let t = |n: &str| EntityTypeName::from_str(n).expect("valid Cedar type name");
    Types {
        user: t("User"),
        service_account: t("ServiceAccount"),
        group: t("Group"),
        team: t("Team"),
        tenant: t("Tenant"),
        client: t("Client"),
        object: t("Object"),
        action: t("Action"),
    }
});

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

/// The object facts that are not in the object itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFacts {
    pub namespace: String,
    pub owner: Option<Arc<str>>,
    pub self_service: bool,
    pub references: References,
    pub tenantry_labels: BTreeSet<String>,
    pub directory_labels: BTreeSet<String>,
    pub pod: PodFacts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub is_pod: bool,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub enforcer: EnforcerState,
    pub scheduling: SchedulingState,
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

/// The namespace an object lives in; for a Namespace, its own name.
pub fn object_namespace(req: &AdmissionRequest) -> String {
    if req.resource.group.is_empty() && req.resource.resource == "namespaces" {
        let from_object = req
            .subject()
            .pointer("/metadata/name")
            .and_then(Value::as_str);
        return req
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .or(from_object)
            .unwrap_or("")
            .to_string();
    }
    req.namespace.clone().unwrap_or_default()
}

/// The labels the directory says an object in a namespace of `owner` carries.
pub fn directory_labels(owner: &NamespaceOwner<'_>) -> Vec<(&'static str, Arc<str>)> {
    let tenant = owner.tenant;
    let mut labels = vec![
        (LABEL_TENANT, tenant.id.clone()),
        (LABEL_TIER, tenant.tier.name.clone()),
    ];
    if let Some(team) = owner.team {
        labels.push((LABEL_TEAM, team.clone()));
    }
    if let Some(client) = &tenant.client {
        labels.push((LABEL_CLIENT, client.id.clone()));
    }
    labels
}

fn labels_of(object: &Value) -> Option<&serde_json::Map<String, Value>> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
}

fn stamped_on(object: &Value) -> BTreeSet<String> {
    let Some(labels) = labels_of(object) else {
        return BTreeSet::new();
    };
    STAMPED_LABELS
        .iter()
        .filter_map(|k| {
            labels
                .get(*k)
                .map(|v| format!("{k}={}", v.as_str().unwrap_or("")))
        })
        .collect()
}

/// Works out the facts about the object under review.
pub fn object_facts(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
) -> Result<ObjectFacts, TranslateError> {
    let directory = inputs.directory;
    let namespace = object_namespace(req);
    let owner = directory.namespace_owner(&namespace);
    let object = req.subject();
    let kind = req.kind.kind.as_str();
    let group = req.resource.group.as_str();
    let writes = matches!(req.operation, Operation::Create | Operation::Update);
    let subresource = req.subresource();

    let tenantry_labels = if writes {
        stamped_on(object)
    } else {
        BTreeSet::new()
    };
    let directory_labels = match (&owner, req.operation, subresource) {
        // Subresources cannot be stamped: their labels simply must not change.
        (_, Operation::Update, s) if !s.is_empty() => stamped_on(&req.old_object),
        (Some(o), _, _) if writes => directory_labels(o)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        _ => BTreeSet::new(),
    };

    let references = if writes && subresource.is_empty() {
        references::references(directory, inputs.usage, group, kind, &namespace, object)
    } else {
        References::default()
    };

    let is_pod = group.is_empty() && req.resource.resource == "pods";
    let spec = if writes {
        pod::pod_spec(kind, object)
    } else {
        None
    };
    let flag = |name: &str| {
        spec.and_then(|s| s.get(name))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let mut pod_facts = PodFacts {
        is_pod,
        host_network: flag("hostNetwork"),
        host_pid: flag("hostPID"),
        host_ipc: flag("hostIPC"),
        enforcer: EnforcerState::NotApplicable,
        scheduling: SchedulingState::NotApplicable,
    };
    if let (true, Some(o), Some(spec)) = (is_pod && kind == "Pod", &owner, spec) {
        match req.operation {
            Operation::Create if subresource.is_empty() => {
                let port =
                    pod::app_port(object, inputs.injection).map_err(TranslateError::BadObject)?;
                let expected = pod::Injection::for_pod(
                    inputs.injection,
                    &o.tenant.id,
                    &o.tenant.tier.name,
                    port,
                );
                pod_facts.enforcer =
                    pod::enforcer_state_on_create(object, &expected, inputs.injection.mode);
                pod_facts.scheduling = pod::scheduling_state_on_create(spec, &o.tenant.tier);
            }
            Operation::Update => {
                pod_facts.enforcer = pod::enforcer_state_on_update(object, &req.old_object);
                let old_spec = req.old_object.get("spec").unwrap_or(&Value::Null);
                pod_facts.scheduling = pod::scheduling_state_on_update(spec, old_spec);
            }
            _ => {}
        }
    }

    Ok(ObjectFacts {
        namespace,
        owner: owner.as_ref().map(|o| o.tenant.id.clone()),
        self_service: owner.as_ref().is_some_and(|o| o.by_prefix),
        references,
        tenantry_labels,
        directory_labels,
        pod: pod_facts,
    })
}

fn quota_facts(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
    owner: Option<&NamespaceOwner<'_>>,
) -> Result<QuotaFacts, TranslateError> {
    let group = req.resource.group.as_str();
    let resource = req.resource.resource.as_str();
    let counted_resource = usage::count_key(group, resource);
    let counts = req.operation == Operation::Create && req.subresource().is_empty();
    let (Some(owner), true) = (owner, counts) else {
        return Ok(QuotaFacts {
            counted_resource,
            ..QuotaFacts::default()
        });
    };
    let tenant = &owner.tenant.id;
    let requested = usage::amounts_of(group, resource, &req.object)
        .map_err(|e| TranslateError::BadObject(e.to_string()))?;
    let used = |key: &str| inputs.usage.used(tenant, key);
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

fn amounts_record(a: &Amounts) -> Result<RestrictedExpression, TranslateError> {
    RestrictedExpression::new_record(
        a.fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), RestrictedExpression::new_long(v))),
    )
    .map_err(internal)
}

/// The principal's ancestors: its groups, and the teams, tenants and clients above them.
struct PrincipalBuilder<'a> {
    directory: &'a Directory,
    tenants: BTreeSet<Arc<str>>,
    parents: HashSet<EntityUid>,
}

impl PrincipalBuilder<'_> {
    fn add(&mut self, memberships: &[Membership]) {
        for m in memberships {
            self.tenants.insert(m.tenant.clone());
            self.parents.insert(uid(&TYPES.tenant, &m.tenant));
            if let Some(team) = &m.team {
                self.parents
                    .insert(uid(&TYPES.team, &format!("{}/{}", m.tenant, team)));
            }
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
    let attrs = HashMap::from([
        ("name".to_string(), string(&t.id)),
        ("tier".to_string(), string(&t.tier.name)),
        ("status".to_string(), string(t.status.as_str())),
    ]);
    let parents: HashSet<EntityUid> = t.client.iter().map(|c| uid(&TYPES.client, &c.id)).collect();
    Entity::new(uid(&TYPES.tenant, id), attrs, parents)
        .map(Some)
        .map_err(internal)
}

/// Builds the Cedar request for an admission request.
pub fn translate(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
) -> Result<Translation, TranslateError> {
    let directory = inputs.directory;
    let facts = object_facts(inputs, req)?;
    let owner = directory.namespace_owner(&facts.namespace);
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
        if let Some(home) = directory.namespace_owner(sa_namespace) {
            builder.add(&[Membership {
                tenant: home.tenant.id.clone(),
                team: home.team.cloned(),
            }]);
        }
        let attrs = HashMap::from([
            ("name".to_string(), string(sa_name)),
            ("namespace".to_string(), string(sa_namespace)),
        ]);
        (
            uid(&TYPES.service_account, &format!("{sa_namespace}:{sa_name}")),
            attrs,
        )
    } else {
        builder.add(directory.user_memberships(&info.username));
        let attrs = HashMap::from([("name".to_string(), string(&info.username))]);
        (uid(&TYPES.user, &info.username), attrs)
    };
    attrs.insert(
        "tenant_member".to_string(),
        RestrictedExpression::new_bool(!builder.tenants.is_empty()),
    );
    let mut tenants: BTreeSet<Arc<str>> = builder.tenants.clone();
    entities.push(Entity::new(principal.clone(), attrs, builder.parents).map_err(internal)?);
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
        .or_else(|| object.pointer("/metadata/name").and_then(Value::as_str));
    let resource_uid = uid(
        &TYPES.object,
        &format!(
            "{}/{}/{}/{}",
            req.resource.resource,
            facts.namespace,
            name.unwrap_or(""),
            req.uid
        ),
    );
    let p = &facts.pod;
    let pod_record = RestrictedExpression::new_record([
        (
            "is_pod".to_string(),
            RestrictedExpression::new_bool(p.is_pod),
        ),
        (
            "host_network".to_string(),
            RestrictedExpression::new_bool(p.host_network),
        ),
        (
            "host_pid".to_string(),
            RestrictedExpression::new_bool(p.host_pid),
        ),
        (
            "host_ipc".to_string(),
            RestrictedExpression::new_bool(p.host_ipc),
        ),
        ("enforcer".to_string(), string(p.enforcer.as_str())),
        ("scheduling".to_string(), string(p.scheduling.as_str())),
    ])
    .map_err(internal)?;
    let set =
        |items: &BTreeSet<String>| RestrictedExpression::new_set(items.iter().map(|s| string(s)));
    let mut attrs = HashMap::from([
        ("kind".to_string(), string(&req.kind.kind)),
        ("group".to_string(), string(&req.resource.group)),
        ("resource".to_string(), string(&req.resource.resource)),
        ("subresource".to_string(), string(req.subresource())),
        ("name".to_string(), string(name.unwrap_or(""))),
        ("namespace".to_string(), string(&facts.namespace)),
        (
            "self_service".to_string(),
            RestrictedExpression::new_bool(facts.self_service),
        ),
        (
            "referenced_tenants".to_string(),
            RestrictedExpression::new_set(
                facts
                    .references
                    .tenants
                    .iter()
                    .map(|t| RestrictedExpression::new_entity_uid(uid(&TYPES.tenant, t))),
            ),
        ),
        (
            "references_any_tenant".to_string(),
            RestrictedExpression::new_bool(facts.references.any_tenant),
        ),
        ("tenantry_labels".to_string(), set(&facts.tenantry_labels)),
        ("directory_labels".to_string(), set(&facts.directory_labels)),
        ("pod".to_string(), pod_record),
    ]);
    let mut parents = HashSet::new();
    if let Some(o) = &facts.owner {
        attrs.insert(
            "owner".to_string(),
            RestrictedExpression::new_entity_uid(uid(&TYPES.tenant, o)),
        );
        parents.insert(uid(&TYPES.tenant, o));
        if let Some(client) = directory.tenant(o).and_then(|t| t.client.as_ref()) {
            parents.insert(uid(&TYPES.client, &client.id));
        }
    }
    let tags = labels_of(object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), string(v))));
    entities
        .push(Entity::new_with_tags(resource_uid.clone(), attrs, parents, tags).map_err(internal)?);
    // Only the request's own action is looked up (for `action in …`); it carries its ancestors.
    let action = uid(&TYPES.action, req.operation.action());
    entities.extend(
        inputs
            .policies
            .action_entities()
            .iter()
            .filter(|e| e.uid() == action)
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
    let limits = RestrictedExpression::new_record(
        quota
            .limits
            .iter()
            .map(|(k, v)| (k.to_string(), RestrictedExpression::new_long(*v))),
    )
    .map_err(internal)?;
    let context = Context::from_pairs([
        ("operation".to_string(), string(req.operation.as_str())),
        (
            "dry_run".to_string(),
            RestrictedExpression::new_bool(req.is_dry_run()),
        ),
        ("old_tenant_label".to_string(), string(old_tenant_label)),
        (
            "counted_resource".to_string(),
            string(&quota.counted_resource),
        ),
        ("limits".to_string(), limits),
        ("usage".to_string(), amounts_record(&quota.usage)?),
        ("requested".to_string(), amounts_record(&quota.requested)?),
    ])
    .map_err(internal)?;

    let request = Request::new(principal, action, resource_uid, context, None).map_err(internal)?;
    let entities = Entities::from_entities(entities, None).map_err(internal)?;
    Ok(Translation {
        request,
        entities,
        tenants: tenants.into_iter().collect(),
        facts,
        quota,
    })
}
