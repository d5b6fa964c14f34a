//! Table tests: this manifest, written by this identity, yields these Cedar facts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use serde_json::Value;
use tenantry_webhook::pod::{EnforcerState, SchedulingState};
use tenantry_webhook::review::{self, Identity, Write};
use tenantry_webhook::translate::{self, ObjectFacts};
use tenantry_webhook::{InjectionConfig, Inputs, Ledger, Operation, embedded};

struct Row {
    name: &'static str,
    user: &'static str,
    groups: &'static [&'static str],
    namespace: &'static str,
    manifest: &'static str,
    check: fn(&ObjectFacts, &[String]),
}

fn strings(v: &[std::sync::Arc<str>]) -> Vec<&str> {
    v.iter().map(|s| &**s).collect()
}

const ROWS: &[Row] = &[
    Row {
        name: "a ConfigMap in a team namespace is owned and expects team and client labels",
        user: "alice",
        groups: &[],
        namespace: "acme-dev",
        manifest: "{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}",
        check: |f, tenants| {
            assert_eq!(f.owner.as_deref(), Some("acme"));
            assert!(!f.self_service);
            let want = [
                "tenantry.dev/client=globalcorp",
                "tenantry.dev/team=backend",
                "tenantry.dev/tenant=acme",
                "tenantry.dev/tier=enterprise",
            ];
            assert_eq!(
                f.directory_labels
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                want
            );
            assert!(f.tenantry_labels.is_empty());
            assert_eq!(tenants, ["acme"]);
            assert!(!f.pod.is_pod);
        },
    },
    Row {
        name: "a self-service namespace is owned by prefix",
        user: "alice",
        groups: &[],
        namespace: "",
        manifest: "{apiVersion: v1, kind: Namespace, metadata: {name: acme-sandbox}}",
        check: |f, _| {
            assert_eq!(f.namespace, "acme-sandbox");
            assert_eq!(f.owner.as_deref(), Some("acme"));
            assert!(f.self_service);
        },
    },
    Row {
        name: "a platform namespace has no owner and expects no tenant labels",
        user: "ops",
        groups: &[],
        namespace: "monitoring",
        manifest: "{apiVersion: v1, kind: ConfigMap, metadata: {name: c, labels: {tenantry.dev/tenant: acme}}}",
        check: |f, tenants| {
            assert_eq!(f.owner, None);
            assert!(f.directory_labels.is_empty());
            assert_eq!(
                f.tenantry_labels.iter().collect::<Vec<_>>(),
                ["tenantry.dev/tenant=acme"]
            );
            assert!(tenants.is_empty());
        },
    },
    Row {
        name: "a member of one tenant writing into another involves both tenants",
        user: "bob",
        groups: &["globex-devs"],
        namespace: "acme-prod",
        manifest: "{apiVersion: v1, kind: Secret, metadata: {name: s}}",
        check: |f, tenants| {
            assert_eq!(f.owner.as_deref(), Some("acme"));
            assert_eq!(tenants, ["acme", "globex"]);
        },
    },
    Row {
        name: "a NetworkPolicy peer by namespace name references its owner",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: r#"{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: n},
            spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: acme-prod}}}]}]}}"#,
        check: |f, _| {
            assert_eq!(strings(&f.references.tenants), ["acme"]);
            assert!(!f.references.any_tenant);
        },
    },
    Row {
        name: "a NetworkPolicy peer by tenant label, and one by arbitrary labels",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: r#"{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: n},
            spec: {podSelector: {}, egress: [{to: [{namespaceSelector: {matchLabels: {tenantry.dev/tenant: initech}}},
                                                  {namespaceSelector: {matchLabels: {team: web}}}]}]}}"#,
        check: |f, _| {
            assert_eq!(strings(&f.references.tenants), ["initech"]);
            assert!(f.references.any_tenant);
        },
    },
    Row {
        name: "a NetworkPolicy to a platform namespace references nobody",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: r#"{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: n},
            spec: {podSelector: {}, ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [ingress-nginx]}]}}]}]}}"#,
        check: |f, _| {
            assert!(f.references.tenants.is_empty());
            assert!(!f.references.any_tenant);
        },
    },
    Row {
        name: "RoleBinding subjects: a foreign service account, a foreign user, everyone",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: r#"{apiVersion: rbac.authorization.k8s.io/v1, kind: RoleBinding, metadata: {name: rb},
            roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: edit},
            subjects: [{kind: ServiceAccount, name: deployer, namespace: acme-prod},
                       {kind: User, name: peter, apiGroup: rbac.authorization.k8s.io},
                       {kind: Group, name: system:authenticated, apiGroup: rbac.authorization.k8s.io}]}"#,
        check: |f, _| {
            assert_eq!(strings(&f.references.tenants), ["acme", "initech"]);
            assert!(f.references.any_tenant);
        },
    },
    Row {
        name: "an ExternalName Service aliasing another tenant's Service",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: "{apiVersion: v1, kind: Service, metadata: {name: db}, spec: {type: ExternalName, externalName: postgres.acme-prod.svc.cluster.local}}",
        check: |f, _| assert_eq!(strings(&f.references.tenants), ["acme"]),
    },
    Row {
        name: "an Ingress host another tenant serves (from the state)",
        user: "alice",
        groups: &[],
        namespace: "acme-prod",
        manifest: "{apiVersion: networking.k8s.io/v1, kind: Ingress, metadata: {name: i}, spec: {rules: [{host: shop.globex.example}, {host: acme.example}]}}",
        check: |f, _| assert_eq!(strings(&f.references.tenants), ["globex"]),
    },
    Row {
        name: "HTTPRoute backends in another tenant's namespace",
        user: "alice",
        groups: &[],
        namespace: "acme-prod",
        manifest: r#"{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, metadata: {name: r},
            spec: {parentRefs: [{name: gw, namespace: gateway-system}], rules: [{backendRefs: [{name: api, namespace: globex-prod, port: 80}]}]}}"#,
        check: |f, _| assert_eq!(strings(&f.references.tenants), ["globex"]),
    },
    Row {
        name: "an EndpointSlice pointing at another tenant's pod",
        user: "alice",
        groups: &[],
        namespace: "acme-prod",
        manifest: r#"{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: e}, addressType: IPv4,
            endpoints: [{addresses: [10.0.0.9], targetRef: {kind: Pod, name: web-1, namespace: globex-prod}}]}"#,
        check: |f, _| assert_eq!(strings(&f.references.tenants), ["globex"]),
    },
    Row {
        name: "a Deployment template on the host network is caught before its pods exist",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: r#"{apiVersion: apps/v1, kind: Deployment, metadata: {name: d},
            spec: {template: {spec: {hostNetwork: true, hostPID: true, containers: [{name: a, image: x}]}}}}"#,
        check: |f, _| {
            assert!(f.pod.host_network && f.pod.host_pid && !f.pod.host_ipc);
            assert!(!f.pod.is_pod);
            assert_eq!(f.pod.enforcer, EnforcerState::NotApplicable);
        },
    },
    Row {
        name: "a pod that opts out of injection",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: r#"{apiVersion: v1, kind: Pod, metadata: {name: p, annotations: {tenantry.dev/inject: "false"}},
            spec: {priorityClassName: tenant-free, containers: [{name: a, image: x}]}}"#,
        check: |f, _| {
            assert!(f.pod.is_pod);
            assert_eq!(f.pod.enforcer, EnforcerState::OptedOut);
            assert_eq!(f.pod.scheduling, SchedulingState::Tier);
        },
    },
    Row {
        name: "a pod tolerating every taint is not scheduled as its tier says",
        user: "bob",
        groups: &[],
        namespace: "globex-prod",
        manifest: r#"{apiVersion: v1, kind: Pod, metadata: {name: p},
            spec: {priorityClassName: tenant-free, tolerations: [{operator: Exists}], containers: [{name: a, image: x}]}}"#,
        check: |f, _| {
            assert_eq!(f.pod.enforcer, EnforcerState::Missing);
            assert_eq!(f.pod.scheduling, SchedulingState::Altered);
        },
    },
    Row {
        name: "a service account of a tenant namespace acts for that tenant",
        user: "system:serviceaccount:globex-prod:ci",
        groups: &[],
        namespace: "acme-prod",
        manifest: "{apiVersion: v1, kind: ConfigMap, metadata: {name: c}}",
        check: |_, tenants| assert_eq!(tenants, ["acme", "globex"]),
    },
];

/// Every row translated as written: its identity, namespace and manifest, as a CREATE, against
/// the embedded directory and policies and `usage`.
fn translate_rows(usage: &Ledger) -> Vec<(&'static Row, translate::Translation)> {
    let directory = embedded::directory().unwrap();
    let policies = embedded::policies().unwrap();
    let injection = InjectionConfig::default();
    let boundary = tenantry_webhook::Boundary::default();
    let view = usage.view(None);
    let inputs = Inputs {
        directory: &directory,
        usage: &view,
        policies: &policies,
        injection: &injection,
        boundary: &boundary,
    };
    ROWS.iter()
        .map(|row| {
            let object: Value = serde_saphyr::from_str(row.manifest)
                .unwrap_or_else(|e| panic!("{}: {e}", row.name));
            let write = Write {
                object,
                old: None,
                identity: Identity {
                    user: row.user.into(),
                    groups: row.groups.iter().map(|g| g.to_string()).collect(),
                },
                namespace: (!row.namespace.is_empty()).then(|| row.namespace.to_string()),
                operation: Operation::Create,
                dry_run: false,
                subresource: None,
                name: None,
            };
            let req = review::admission_request(&write, "uid").unwrap();
            let translation =
                translate::translate(&inputs, &req).unwrap_or_else(|e| panic!("{}: {e}", row.name));
            (row, translation)
        })
        .collect()
}

#[test]
fn manifests_yield_the_expected_facts() {
    let state: Vec<Value> = serde_saphyr::from_multiple(embedded::STATE_YAML).unwrap();
    let usage = Ledger::from_objects(&state).unwrap();
    for (row, translation) in translate_rows(&usage) {
        let tenants: Vec<String> = translation.tenants.iter().map(|t| t.to_string()).collect();
        eprintln!("row: {}", row.name);
        (row.check)(&translation.facts, &tenants);
    }
}

#[test]
fn translated_requests_conform_to_the_schema() {
    // The decision skips per-request schema checks for speed; this proves the shape once.
    let policies = embedded::policies().unwrap();
    let schema = policies.schema();
    for (row, t) in translate_rows(&Ledger::new()) {
        cedar_policy::Request::new(
            t.request.principal().unwrap().clone(),
            t.request.action().unwrap().clone(),
            t.request.resource().unwrap().clone(),
            t.request.context().unwrap().clone(),
            Some(schema),
        )
        .unwrap_or_else(|e| panic!("{}: request does not match the schema: {e}", row.name));
        let entities: Vec<cedar_policy::Entity> = t.entities.iter().cloned().collect();
        let non_actions = entities
            .into_iter()
            .filter(|e| e.uid().type_name().basename() != "Action");
        cedar_policy::Entities::from_entities(non_actions, Some(schema))
            .unwrap_or_else(|e| panic!("{}: entities do not match the schema: {e}", row.name));
    }
}

/// Translation hands Cedar its entity store as already closed (Cedar does not close it again
/// per review), so closing it again must add nothing — in any build, not only the debug builds
/// that check it as they translate. And the closure reaches the white-label client: a member of
/// `acme` (client `globalcorp`) and an object of `acme` are `in` the client; a member of `globex`,
/// which has none, is in no client.
#[test]
fn translated_hierarchies_are_already_closed() {
    let ancestors = |store: &cedar_policy::Entities, uid: &cedar_policy::EntityUid| {
        store
            .ancestors(uid)
            .map(|a| {
                a.map(ToString::to_string)
                    .collect::<std::collections::BTreeSet<_>>()
            })
            .unwrap_or_default()
    };
    let client = "Client::\"globalcorp\"".to_string();
    let (mut in_client, mut outside) = (0, 0);
    for (row, t) in translate_rows(&Ledger::new()) {
        let closed =
            cedar_policy::Entities::from_entities(t.entities.iter().cloned(), None).unwrap();
        for entity in t.entities.iter() {
            assert_eq!(
                ancestors(&t.entities, &entity.uid()),
                ancestors(&closed, &entity.uid()),
                "{}: {} was not closed",
                row.name,
                entity.uid()
            );
        }
        let principal = ancestors(&t.entities, t.request.principal().unwrap());
        match row.user {
            "alice" => {
                assert!(principal.contains(&client), "{}: {principal:?}", row.name);
                in_client += 1;
            }
            "bob" => {
                assert!(
                    !principal.iter().any(|a| a.starts_with("Client::")),
                    "{}: {principal:?}",
                    row.name
                );
                outside += 1;
            }
            _ => {}
        }
        if t.facts.owner.as_deref() == Some("acme") {
            let object = ancestors(&t.entities, t.request.resource().unwrap());
            assert!(object.contains(&client), "{}: {object:?}", row.name);
        }
    }
    assert!(in_client > 0 && outside > 0);
}
