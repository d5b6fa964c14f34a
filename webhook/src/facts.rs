//! The facts Tenantry learns about the object under review, one small extractor per concern:
//! ownership and stamped labels ([`label_facts`]), what a pod or pod template asks of the node
//! ([`pod_facts`]), what a Service claims of the network ([`service_facts`]), which volume a claim
//! names ([`volume_claim`]), whether a Namespace write touches security labels
//! ([`namespace_security_changed`]), and what the object points at in other tenants
//! ([`crate::references`]). [`object_facts`] gathers them; [`crate::translate`] hands them to
//! Cedar. Subresources are decided on their parent: each extractor says how it reads one.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::Value;
use tenantry_cluster::json::At;
use tenantry_tenancy::directory::NamespaceOwner;

use crate::admission::{AdmissionRequest, Operation};
use crate::boundary::Boundary;
use crate::pod::{self, EnforcerState, SchedulingState};
use crate::podsecurity::PodSecurity;
use crate::references::{self, References};
use crate::request;
use crate::translate::{
    Inputs, LABEL_CLIENT, LABEL_TEAM, LABEL_TENANT, LABEL_TIER, STAMPED_LABELS, TranslateError,
    object_namespace,
};

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
    pub service: ServiceFacts,
    /// A Namespace write touches a protected label or annotation.
    pub namespace_security_changed: bool,
    /// The object is (or was, before this write) one the provisioning controller manages.
    pub managed_by_tenantry: bool,
    /// Where the volume a claim names stands (see [`volume_claim`]).
    pub volume_claim: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub is_pod: bool,
    pub host_network: bool,
    pub host_pid: bool,
    pub host_ipc: bool,
    pub enforcer: EnforcerState,
    pub scheduling: SchedulingState,
    /// What the pod spec asks of the node (on UPDATE: what the update adds).
    pub security: PodSecurity,
    /// A container port or the app port is one of the enforcer's own.
    pub enforcer_port_conflict: bool,
}

/// What a Service write claims of the network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFacts {
    /// `spec.externalIPs` gains an address.
    pub external_ips: bool,
    /// `status.loadBalancer` gains or changes ingress addresses.
    pub load_balancer_status: bool,
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

pub(crate) fn labels_of(object: &Value) -> Option<&serde_json::Map<String, Value>> {
    object.at("/metadata/labels").and_then(Value::as_object)
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

/// The stamped labels the object carries, and the ones it must carry. Subresources are never
/// stamped: one whose body is the parent (status, ephemeralcontainers, resize, finalize) must
/// leave the parent's labels as they were; the others (a TokenRequest, an Eviction, a Scale)
/// carry no labels of the parent at all.
fn label_facts(
    req: &AdmissionRequest,
    owner: Option<&NamespaceOwner<'_>>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return (BTreeSet::new(), BTreeSet::new());
    }
    if !req.subresource().is_empty() {
        return if request::body_is_parent(req) {
            (stamped_on(&req.object), stamped_on(&req.old_object))
        } else {
            (BTreeSet::new(), BTreeSet::new())
        };
    }
    let expected = owner.map_or_else(BTreeSet::new, |o| {
        directory_labels(o)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    });
    (stamped_on(&req.object), expected)
}

/// The pod facts of a Pod (through any subresource whose body is the pod) or of a workload's
/// pod template. On UPDATE, security facts are what the update adds.
fn pod_facts(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
    owner: Option<&NamespaceOwner<'_>>,
) -> Result<PodFacts, TranslateError> {
    let kind = req.kind.kind.as_str();
    let object = req.subject();
    let is_pod = req.resource.group.is_empty() && req.resource.resource == "pods";
    let writes = matches!(req.operation, Operation::Create | Operation::Update);
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
    let mut facts = PodFacts {
        is_pod,
        host_network: flag("hostNetwork"),
        host_pid: flag("hostPID"),
        host_ipc: flag("hostIPC"),
        enforcer: EnforcerState::NotApplicable,
        scheduling: SchedulingState::NotApplicable,
        security: PodSecurity::default(),
        enforcer_port_conflict: false,
    };
    let Some(spec) = spec else {
        return Ok(facts);
    };
    let mut skip_injected = false;
    let mut app_port = None;
    if let (true, Some(o)) = (is_pod && kind == "Pod", owner) {
        match req.operation {
            Operation::Create if req.subresource().is_empty() => {
                let port =
                    pod::app_port(object, inputs.injection).map_err(TranslateError::BadObject)?;
                app_port = Some(port);
                let expected = inputs
                    .injection
                    .injection(&o.tenant.id, &o.tenant.tier.name, port);
                facts.enforcer =
                    pod::enforcer_state_on_create(object, &expected, inputs.injection.mode);
                facts.scheduling = pod::scheduling_state_on_create(spec, &o.tenant.tier);
                // The injected containers are judged by `enforcer-required` against exactly
                // what Tenantry injects; anything else under their names is the tenant's.
                skip_injected = facts.enforcer == EnforcerState::Injected;
            }
            Operation::Update => {
                facts.enforcer = pod::enforcer_state_on_update(object, &req.old_object);
                let old_spec = req.old_object.get("spec").unwrap_or(&Value::Null);
                facts.scheduling = pod::scheduling_state_on_update(spec, old_spec);
            }
            _ => {}
        }
    }
    let security = PodSecurity::of(spec, skip_injected);
    facts.security = match req.operation {
        Operation::Update => {
            let old_spec = pod::pod_spec(kind, &req.old_object).unwrap_or(&Value::Null);
            security.added_since(&PodSecurity::of(old_spec, false))
        }
        _ => security,
    };
    let enforcer_ports = [inputs.injection.proxy_port, inputs.injection.admin_port];
    facts.enforcer_port_conflict = enforcer_ports
        .iter()
        .any(|p| facts.security.container_ports.contains(&i64::from(*p)) || app_port == Some(*p));
    Ok(facts)
}

/// What a Service write claims of the network: external IPs (CVE-2020-8554: traffic to any
/// address, another tenant's included, is captured) and load-balancer addresses in its status.
fn service_facts(req: &AdmissionRequest) -> ServiceFacts {
    let is_service = req.resource.group.is_empty() && req.resource.resource == "services";
    if !is_service || !matches!(req.operation, Operation::Create | Operation::Update) {
        return ServiceFacts::default();
    }
    let non_empty = |v: &Value, ptr: &str| {
        v.at(ptr)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    let external_ips = |v: &Value| {
        v.at("/spec/externalIPs")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let load_balancer = |v: &Value| {
        v.at("/status/loadBalancer")
            .filter(|_| non_empty(v, "/status/loadBalancer/ingress"))
            .cloned()
    };
    ServiceFacts {
        external_ips: external_ips(&req.object)
            .iter()
            .any(|ip| !external_ips(&req.old_object).contains(ip)),
        load_balancer_status: load_balancer(&req.object).is_some()
            && load_balancer(&req.object) != load_balancer(&req.old_object),
    }
}

/// Where the PersistentVolume a claim names in `spec.volumeName` stands: `""` (no name, or
/// unchanged by this update), `available` (unclaimed or claimed by this very claim, and not
/// reserved for another tenant), `taken` (claimed by another claim: naming it would take over a
/// released volume's data once an admin clears it), `reserved` (labelled for another tenant),
/// `unknown` (no such volume observed: it could appear later as anyone's).
fn volume_claim(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
    owner: Option<&NamespaceOwner<'_>>,
) -> &'static str {
    let is_claim = req.resource.group.is_empty()
        && req.resource.resource == "persistentvolumeclaims"
        && req.subresource().is_empty();
    if !is_claim || !matches!(req.operation, Operation::Create | Operation::Update) {
        return "";
    }
    let name_of = |v: &Value| {
        v.at("/spec/volumeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
    };
    let Some(volume) = name_of(&req.object) else {
        return "";
    };
    if name_of(&req.old_object).as_deref() == Some(volume.as_str()) {
        return "";
    }
    let Some(v) = inputs.usage.volume(&volume) else {
        return "unknown";
    };
    let namespace = req.namespace.as_deref().unwrap_or("");
    let claim = req
        .object
        .at("/metadata/name")
        .and_then(Value::as_str)
        .or(req.name.as_deref())
        .unwrap_or("");
    let owner_id = owner.map(|o| &*o.tenant.id);
    if v.tenant_label
        .as_deref()
        .is_some_and(|t| Some(t) != owner_id)
    {
        return "reserved";
    }
    match (&v.claim_namespace, &v.claim_name) {
        (None, _) => "available",
        (Some(ns), Some(n)) if **ns == *namespace && n == claim => "available",
        _ => "taken",
    }
}

/// The label the provisioning controller puts on everything it manages.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tenantry");

/// Whether the object under review is, or was before this write, managed by the provisioning
/// controller: a write that removes the label is as much a change to a managed object as one
/// that keeps it. Subresource bodies are judged by their parent's labels where they carry them.
fn managed_by_tenantry(req: &AdmissionRequest) -> bool {
    let carries = |v: &Value| {
        v.at("/metadata/labels")
            .and_then(|l| l.get(MANAGED_BY.0))
            .and_then(Value::as_str)
            == Some(MANAGED_BY.1)
    };
    carries(&req.object) || carries(&req.old_object)
}

/// Whether a Namespace write sets, changes or removes a label or annotation under one of the
/// operator's protected prefixes (`pod-security.kubernetes.io/`).
fn namespace_security_changed(boundary: &Boundary, req: &AdmissionRequest) -> bool {
    let is_namespace = req.resource.group.is_empty() && req.resource.resource == "namespaces";
    if !is_namespace || !matches!(req.operation, Operation::Create | Operation::Update) {
        return false;
    }
    let protected = |object: &Value| -> BTreeSet<(String, String)> {
        ["labels", "annotations"]
            .iter()
            .filter_map(|f| {
                object
                    .at(&format!("/metadata/{f}"))
                    .and_then(Value::as_object)
            })
            .flatten()
            .filter(|(k, _)| boundary.is_protected_namespace_key(k))
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
            .collect()
    };
    protected(&req.object) != protected(&req.old_object)
}

/// Works out the facts about the object under review.
pub fn object_facts(
    inputs: &Inputs<'_>,
    req: &AdmissionRequest,
) -> Result<ObjectFacts, TranslateError> {
    let namespace = object_namespace(req);
    let owner = inputs.request_owner(req);
    let object = req.subject();
    let kind = req.kind.kind.as_str();
    let group = req.resource.group.as_str();
    let writes = matches!(req.operation, Operation::Create | Operation::Update);
    let subresource = req.subresource();

    let (tenantry_labels, directory_labels) = label_facts(req, owner.as_ref());

    let references = if writes && subresource.is_empty() {
        references::references(inputs, group, kind, &namespace, object)
    } else {
        References::default()
    };

    let pod = pod_facts(inputs, req, owner.as_ref())?;
    let service = service_facts(req);
    let namespace_security_changed = namespace_security_changed(inputs.boundary, req);
    let managed_by_tenantry = managed_by_tenantry(req);
    let volume_claim = volume_claim(inputs, req, owner.as_ref());

    Ok(ObjectFacts {
        namespace,
        owner: owner.as_ref().map(|o| o.tenant.id.clone()),
        self_service: owner.as_ref().is_some_and(|o| o.by_prefix),
        references,
        tenantry_labels,
        directory_labels,
        pod,
        service,
        namespace_security_changed,
        managed_by_tenantry,
        volume_claim,
    })
}
