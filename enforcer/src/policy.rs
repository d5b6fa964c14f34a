//! The traffic decision: `Tenant::"<caller>"` asks `Action::"request"` on this pod's `Service`,
//! evaluated by the same [`PolicyEngine`] as the webhook.
//!
//! Translation (directory → Cedar entities) is kept apart from the decision, and the decision is
//! total: a caller or owner that cannot be translated, or a policy that fails to evaluate, is a
//! deny with a reason, never an allow.

use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet,
    Request, RestrictedExpression,
};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use tenantry_tenancy::{Directory, PolicyEngine, Tenant};

/// The resource side of every request this enforcer sees.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub owner: String,
    pub name: String,
    pub namespace: String,
    pub shared: bool,
}

/// A decision with the reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

fn uid(kind: &str, id: &str) -> Result<EntityUid, String> {
    let kind = EntityTypeName::from_str(kind).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
}

fn tenant_entity(tenant: &Tenant) -> Result<Vec<Entity>, String> {
    let mut parents = HashSet::new();
    let mut out = Vec::new();
    if let Some(client) = &tenant.client {
        let c = uid("Client", &client.id)?;
        parents.insert(c.clone());
        let attrs = HashMap::from([(
            "name".to_string(),
            RestrictedExpression::new_string(client.id.to_string()),
        )]);
        out.push(Entity::new(c, attrs, HashSet::new()).map_err(|e| e.to_string())?);
    }
    out.push(tenant.entity()?.clone());
    Ok(out)
}

/// Whether any policy that can apply to `Action::"request"` reads the request context (method,
/// path). If none does, a decision depends only on the caller and the directory snapshot, and
/// [`DecisionCache`] can remember it; checked once per loaded policy set, conservatively (a policy
/// that cannot be re-parsed or mentions `context` anywhere counts as reading it).
pub fn reads_context(engine: &PolicyEngine) -> bool {
    let request = match uid("Action", "request") {
        Ok(u) => u,
        Err(_) => return true,
    };
    // The action groups `request` belongs to, from the schema: a policy on one of them applies.
    let groups: HashSet<EntityUid> = engine
        .action_entities()
        .iter()
        .find(|e| e.uid() == request)
        .map(|e| e.clone().into_inner().2)
        .unwrap_or_default();
    for file in engine.files() {
        if file.path.extension().is_none_or(|e| e != "cedar") {
            continue;
        }
        let Ok(set) = PolicySet::from_str(&file.text) else {
            return true;
        };
        for policy in set.policies() {
            let applies = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => a == request,
                ActionConstraint::In(actions) => {
                    actions.iter().any(|a| *a == request || groups.contains(a))
                }
            };
            if applies && policy.to_string().contains("context") {
                return true;
            }
        }
    }
    false
}

/// The snapshot the cached decisions were made with, and the decisions by caller.
type Cached = (Option<Arc<Directory>>, HashMap<Arc<str>, Decision>);

/// Decisions per caller for one directory snapshot, when policies do not read the context.
#[derive(Debug)]
pub struct DecisionCache {
    enabled: bool,
    inner: RwLock<Cached>,
}

impl DecisionCache {
    pub fn new(enabled: bool) -> DecisionCache {
        DecisionCache {
            enabled,
            inner: RwLock::new((None, HashMap::new())),
        }
    }

    /// The decision for `caller`, computed at most once per directory snapshot.
    pub fn decide(
        &self,
        engine: &PolicyEngine,
        directory: &Arc<Directory>,
        caller: &Arc<Tenant>,
        service: &ServiceSpec,
        method: &str,
        path: &str,
    ) -> Decision {
        if !self.enabled {
            return decide(engine, directory, caller, service, method, path);
        }
        {
            let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if guard.0.as_ref().is_some_and(|d| Arc::ptr_eq(d, directory))
                && let Some(d) = guard.1.get(&caller.id)
            {
                return d.clone();
            }
        }
        let decision = decide(engine, directory, caller, service, method, path);
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if !guard.0.as_ref().is_some_and(|d| Arc::ptr_eq(d, directory)) {
            *guard = (Some(directory.clone()), HashMap::new());
        }
        guard.1.insert(caller.id.clone(), decision.clone());
        decision
    }
}

/// Builds the Cedar request and entities for `caller` calling `service`.
pub fn translate(
    engine: &PolicyEngine,
    directory: &Directory,
    caller: &Tenant,
    service: &ServiceSpec,
    method: &str,
    path: &str,
) -> Result<(Request, Entities), String> {
    let owner = directory.tenant(&service.owner).ok_or_else(|| {
        format!(
            "this pod's tenant `{}` is not in the directory",
            service.owner
        )
    })?;
    let mut entities = tenant_entity(caller)?;
    if owner.id != caller.id {
        for e in tenant_entity(owner)? {
            if !entities.iter().any(|x| x.uid() == e.uid()) {
                entities.push(e);
            }
        }
    }
    let owner_uid = uid("Tenant", &owner.id)?;
    let service_uid = uid("Service", &service.name)?;
    let attrs = HashMap::from([
        (
            "name".to_string(),
            RestrictedExpression::new_string(service.name.clone()),
        ),
        (
            "namespace".to_string(),
            RestrictedExpression::new_string(service.namespace.clone()),
        ),
        (
            "owner".to_string(),
            RestrictedExpression::new_entity_uid(owner_uid.clone()),
        ),
        (
            "shared".to_string(),
            RestrictedExpression::new_bool(service.shared),
        ),
    ]);
    entities.push(
        Entity::new(service_uid.clone(), attrs, HashSet::from([owner_uid]))
            .map_err(|e| e.to_string())?,
    );
    entities.extend(engine.action_entities().iter().cloned());
    let schema = engine.schema();
    let entities = Entities::from_entities(entities, Some(schema)).map_err(|e| e.to_string())?;
    let action = uid("Action", "request")?;
    let context = Context::from_pairs([
        (
            "method".to_string(),
            RestrictedExpression::new_string(method.to_string()),
        ),
        (
            "path".to_string(),
            RestrictedExpression::new_string(path.to_string()),
        ),
    ])
    .map_err(|e| e.to_string())?;
    let request = Request::new(
        uid("Tenant", &caller.id)?,
        action,
        service_uid,
        context,
        Some(schema),
    )
    .map_err(|e| e.to_string())?;
    Ok((request, entities))
}

/// Decides whether `caller` may call `service`. Total: every failure is a deny.
pub fn decide(
    engine: &PolicyEngine,
    directory: &Directory,
    caller: &Arc<Tenant>,
    service: &ServiceSpec,
    method: &str,
    path: &str,
) -> Decision {
    let (request, entities) = match translate(engine, directory, caller, service, method, path) {
        Ok(r) => r,
        Err(e) => return Decision::Deny(format!("the request cannot be evaluated: {e}")),
    };
    let tenants: Vec<&str> = if *caller.id == *service.owner {
        vec![&*caller.id]
    } else {
        vec![&*caller.id, service.owner.as_str()]
    };
    let verdict = engine.authorize(&tenants, &request, &entities);
    if verdict.allowed {
        return Decision::Allow;
    }
    if let Some((_, message)) = verdict.denied_by.first() {
        return Decision::Deny(message.clone());
    }
    if !verdict.errors.is_empty() {
        return Decision::Deny("a traffic policy failed to evaluate".to_string());
    }
    Decision::Deny("no traffic policy permits this request".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (PolicyEngine, Directory) {
        (
            tenantry_tenancy::embedded::policies().unwrap(),
            tenantry_tenancy::embedded::directory().unwrap(),
        )
    }

    fn service(owner: &str, shared: bool) -> ServiceSpec {
        ServiceSpec {
            owner: owner.into(),
            name: "api".into(),
            namespace: format!("{owner}-prod"),
            shared,
        }
    }

    #[test]
    fn own_tenant_is_allowed_others_are_not() {
        let (engine, dir) = setup();
        let acme = dir.tenant("acme").unwrap();
        let globex = dir.tenant("globex").unwrap();
        assert_eq!(
            decide(&engine, &dir, acme, &service("acme", false), "GET", "/"),
            Decision::Allow
        );
        assert_eq!(
            decide(&engine, &dir, globex, &service("acme", false), "GET", "/"),
            Decision::Deny("a tenant may only call its own services".into())
        );
        assert_eq!(
            decide(&engine, &dir, globex, &service("acme", true), "GET", "/"),
            Decision::Allow
        );
    }

    #[test]
    fn suspended_caller_is_denied_even_on_its_own_pods() {
        let (engine, dir) = setup();
        let initech = dir.tenant("initech").unwrap();
        assert_eq!(
            decide(
                &engine,
                &dir,
                initech,
                &service("initech", false),
                "GET",
                "/"
            ),
            Decision::Deny("the calling tenant is suspended".into())
        );
    }

    #[test]
    fn deleted_tenants_neither_call_nor_are_called() {
        let (engine, dir) = setup();
        let mut file = dir.source().clone();
        file.tenants.get_mut("globex").unwrap().status = tenantry_tenancy::Status::Deleted;
        let dir = Directory::build(file, 2).unwrap();
        let globex = dir.tenant("globex").unwrap();
        let acme = dir.tenant("acme").unwrap();
        let deleted = Decision::Deny("the tenant is deleted".into());
        assert_eq!(
            decide(&engine, &dir, globex, &service("globex", false), "GET", "/"),
            deleted
        );
        // Even a shared service of a deleted tenant is closed to everyone else...
        assert_eq!(
            decide(&engine, &dir, acme, &service("globex", true), "GET", "/"),
            deleted
        );
        // ...while the active tenant beside it keeps calling its own and shared services.
        assert_eq!(
            decide(&engine, &dir, acme, &service("acme", false), "GET", "/"),
            Decision::Allow
        );
    }

    #[test]
    fn shipped_traffic_policies_do_not_read_the_context() {
        let (engine, _) = setup();
        assert!(!reads_context(&engine));
    }

    #[test]
    fn cached_decisions_follow_the_snapshot() {
        let (engine, dir) = setup();
        let dir = Arc::new(dir);
        let cache = DecisionCache::new(true);
        let acme = dir.tenant("acme").unwrap().clone();
        assert_eq!(
            cache.decide(&engine, &dir, &acme, &service("acme", false), "GET", "/"),
            Decision::Allow
        );
        // A new snapshot where acme is suspended: the cached allow must not survive it.
        let mut file = dir.source().clone();
        file.tenants.get_mut("acme").unwrap().status = tenantry_tenancy::Status::Suspended;
        let next = Arc::new(Directory::build(file, 2).unwrap());
        let acme = next.tenant("acme").unwrap().clone();
        assert!(matches!(
            cache.decide(&engine, &next, &acme, &service("acme", false), "GET", "/"),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn an_owner_missing_from_the_directory_denies() {
        let (engine, dir) = setup();
        let acme = dir.tenant("acme").unwrap();
        assert!(matches!(
            decide(&engine, &dir, acme, &service("nobody", false), "GET", "/"),
            Decision::Deny(_)
        ));
    }
}
