//! The `matchConditions` of the shipped webhook configurations (deploy/base/webhooks.yaml),
//! evaluated with a real CEL interpreter on requests shaped as the API server presents them.
//!
//! An exclusion is safe only when (1) it matches identities the API server authenticates and a
//! tenant cannot take, never a name or label the tenant chooses, and (2) Tenantry would have
//! allowed every write it skips, unchanged but for the stamped labels. (1) is checked here
//! against the look-alikes an attacker would try; (2) by running each skipped write through the
//! real decision, for an active, a suspended and a deleted tenant (and, with quotas, in
//! policies/tests/cluster-records.yaml).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::PathBuf;

use serde_json::{Value, json};
use tenantry_tenancy::model::TenantsFile;
use tenantry_tenancy::{Directory, PolicyEngine};
use tenantry_webhook::admission::Operation;
use tenantry_webhook::review::{self, Identity, Write};
use tenantry_webhook::usage::NoUsage;
use tenantry_webhook::{AdmissionRequest, Boundary, InjectionConfig, Inputs, embedded};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `(name, expression)` of each webhook's conditions, by webhook name.
fn conditions() -> Vec<(String, Vec<(String, String)>)> {
    let text = std::fs::read_to_string(repo_root().join("deploy/base/webhooks.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let mut out = Vec::new();
    for doc in docs {
        for hook in doc["webhooks"].as_array().unwrap() {
            let conditions = hook["matchConditions"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            (
                                c["name"].as_str().unwrap().to_string(),
                                c["expression"].as_str().unwrap().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((hook["name"].as_str().unwrap().to_string(), conditions));
        }
    }
    out
}

/// The AdmissionRequest as CEL sees it: the API server omits an empty `groups`.
fn as_cel_input(req: &AdmissionRequest) -> Value {
    let mut v = serde_json::to_value(req).unwrap();
    if req.user_info.groups.is_empty() {
        v["userInfo"].as_object_mut().unwrap().remove("groups");
    }
    v
}

/// Whether the API server would send `req` to a webhook with these conditions: every
/// condition must evaluate to true; an error would fail the request (failurePolicy: Fail), which
/// these expressions must never cause.
fn sent(conditions: &[(String, String)], req: &AdmissionRequest) -> bool {
    let input = as_cel_input(req);
    conditions.iter().all(|(name, expression)| {
        let program = cel::Program::compile(expression)
            .unwrap_or_else(|e| panic!("condition `{name}` does not compile: {e}"));
        let mut context = cel::Context::default();
        context.add_variable("request", input.clone()).unwrap();
        match program.execute(&context) {
            Ok(cel::Value::Bool(b)) => b,
            other => panic!("condition `{name}` gave {other:?} for {input}"),
        }
    })
}

/// A write as the API server shapes it, with no groups but the implicit ones unless given.
fn request(user: &str, groups: &[&str], namespace: &str, object: Value) -> AdmissionRequest {
    let identity = Identity {
        user: user.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let write = Write {
        object,
        old: None,
        identity,
        namespace: Some(namespace.to_string()),
        operation: Operation::Create,
        dry_run: false,
        subresource: None,
        name: None,
    };
    review::admission_request(&write, "0d1c9a0e-6a4b-4a57-9b0f-1f4c2b6b8e11").unwrap()
}

fn core_event() -> Value {
    json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web-0.17"},
           "involvedObject": {"kind": "Pod", "name": "web-0"}, "reason": "Started",
           "source": {"component": "kubelet", "host": "worker-1"}})
}

fn new_event() -> Value {
    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "web-0.18"},
           "regarding": {"kind": "Pod", "name": "web-0"}, "reason": "Scheduled",
           "eventTime": "2026-11-30T12:00:00.000000Z", "action": "Binding",
           "reportingController": "default-scheduler", "reportingInstance": "default-scheduler-1"})
}

fn slice() -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-abcde", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": ["10.244.1.7"], "targetRef": {"kind": "Pod", "name": "web-0"}}]})
}

fn endpoints() -> Value {
    json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "web"},
           "subsets": [{"addresses": [{"ip": "10.244.1.7"}], "ports": [{"port": 8080}]}]})
}

const KUBELET: &str = "system:node:worker-1";
const SLICE_CONTROLLER: &str = "system:serviceaccount:kube-system:endpointslice-controller";

/// Writes the conditions skip: `(what, user, groups, object)`.
fn skipped() -> Vec<(&'static str, &'static str, Vec<&'static str>, Value)> {
    vec![
        (
            "a kubelet's Event",
            KUBELET,
            vec!["system:nodes"],
            core_event(),
        ),
        (
            "a kubelet's events.k8s.io Event",
            KUBELET,
            vec!["system:nodes"],
            new_event(),
        ),
        (
            "the scheduler's Event",
            "system:kube-scheduler",
            vec![],
            new_event(),
        ),
        (
            "the controller manager's Event",
            "system:kube-controller-manager",
            vec![],
            core_event(),
        ),
        (
            "the ReplicaSet controller's Event",
            "system:serviceaccount:kube-system:replicaset-controller",
            vec![],
            core_event(),
        ),
        (
            "the EndpointSlice controller's slice",
            SLICE_CONTROLLER,
            vec![],
            slice(),
        ),
        (
            "the mirroring controller's slice",
            "system:serviceaccount:kube-system:endpointslicemirroring-controller",
            vec![],
            slice(),
        ),
        (
            "the Endpoints controller's Endpoints",
            "system:serviceaccount:kube-system:endpoint-controller",
            vec![],
            endpoints(),
        ),
    ]
}

/// Look-alikes an attacker would try: each must still reach Tenantry.
fn still_sent() -> Vec<(&'static str, &'static str, Vec<&'static str>, Value)> {
    let crd_event = json!({"apiVersion": "example.com/v1", "kind": "Event",
                           "metadata": {"name": "x"}, "spec": {}});
    vec![
        ("a tenant member's Event", "alice", vec![], core_event()),
        (
            "an Event from a service account of a namespace whose name starts with kube-system",
            "system:serviceaccount:kube-system-tools:replicaset-controller",
            vec![],
            core_event(),
        ),
        (
            "an Event from a user named like a node but without the system:nodes group",
            KUBELET,
            vec![],
            core_event(),
        ),
        (
            "an Event from a user in system:nodes without a node's name",
            "alice",
            vec!["system:nodes"],
            core_event(),
        ),
        (
            "a tenant's service account named like the EndpointSlice controller",
            "system:serviceaccount:acme-dev:endpointslice-controller",
            vec![],
            slice(),
        ),
        (
            "a kubelet writing an EndpointSlice",
            KUBELET,
            vec!["system:nodes"],
            slice(),
        ),
        (
            "the EndpointSlice controller writing a Pod",
            SLICE_CONTROLLER,
            vec![],
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                   "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        ),
        (
            "a kube-system controller writing a ConfigMap",
            "system:serviceaccount:kube-system:replicaset-controller",
            vec![],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        ),
        (
            "a kubelet writing a custom resource named events in another group",
            KUBELET,
            vec!["system:nodes"],
            crd_event,
        ),
        ("a tenant member's Endpoints", "alice", vec![], endpoints()),
        (
            "the kube-system ReplicaSet controller's EndpointSlice",
            "system:serviceaccount:kube-system:replicaset-controller",
            vec![],
            slice(),
        ),
    ]
}

#[test]
fn both_webhooks_carry_the_same_conditions() {
    let all = conditions();
    assert_eq!(all.len(), 2, "one mutating and one validating webhook");
    assert!(!all[0].1.is_empty(), "{} has no matchConditions", all[0].0);
    assert_eq!(all[0].1, all[1].1, "{} and {} differ", all[0].0, all[1].0);
}

#[test]
fn the_cluster_records_are_skipped_and_every_look_alike_is_still_sent() {
    for (hook, conditions) in conditions() {
        for (what, user, groups, object) in skipped() {
            let req = request(user, &groups, "acme-dev", object);
            assert!(!sent(&conditions, &req), "{hook}: {what} should be skipped");
        }
        for (what, user, groups, object) in still_sent() {
            let req = request(user, &groups, "acme-dev", object);
            assert!(sent(&conditions, &req), "{hook}: {what} must still be sent");
        }
    }
}

#[test]
fn every_skipped_write_would_have_been_allowed_unchanged_but_for_labels() {
    let mut file: TenantsFile = serde_saphyr::from_str(embedded::TENANTS_YAML).unwrap();
    // The embedded example has an active tenant (acme) and a suspended one (initech); add a
    // deleted one, whose writes are the most restricted.
    let mut hooli = file.tenants["globex"].clone();
    hooli.status = tenantry_tenancy::model::Status::Deleted;
    hooli.purge_after = Some("2026-12-30T09:00:00Z".parse().unwrap());
    hooli.namespaces = vec!["hooli-prod".into()];
    hooli.members = Default::default();
    hooli.teams = Default::default();
    file.tenants.insert("hooli".into(), hooli);
    let directory = Directory::build(file, 1).unwrap();
    let (schema, sources) = embedded::policy_sources();
    let policies = PolicyEngine::from_sources(&schema, &sources).unwrap();
    let injection = InjectionConfig::default();
    let boundary = Boundary::default();
    let inputs = Inputs {
        directory: &directory,
        usage: &NoUsage,
        policies: &policies,
        injection: &injection,
        boundary: &boundary,
    };
    for namespace in ["acme-dev", "initech-prod", "hooli-prod"] {
        for (what, user, groups, object) in skipped() {
            let req = request(user, &groups, namespace, object);
            let outcome = review::run(&inputs, &req).unwrap();
            assert!(
                outcome.allowed,
                "{what} in {namespace} would be denied ({}), so skipping it changes a decision",
                outcome.message
            );
            for op in outcome.patch.as_array().unwrap() {
                let path = op["path"].as_str().unwrap();
                assert!(
                    path.starts_with("/metadata/labels"),
                    "{what} in {namespace}: the webhook would change {path}"
                );
            }
        }
    }
}
