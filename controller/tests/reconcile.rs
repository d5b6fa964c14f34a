//! The reconcile against an in-process API server (`tenantry_tests::api_server`): what a tenant
//! directory becomes in the cluster, what is pruned, what is never touched, and drift repaired.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use serde_json::{Value, json};
use tenantry_controller::apply;
use tenantry_controller::desired::Options;
use tenantry_tenancy::embedded;
use tenantry_tests::api_server::ApiServer;

const ROLEBINDINGS: &str = "/apis/rbac.authorization.k8s.io/v1/rolebindings";
const NETWORKPOLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
const NAMESPACES: &str = "/api/v1/namespaces";
const CLASSES: &str = "/apis/scheduling.k8s.io/v1/priorityclasses";

async fn client(api: &ApiServer) -> kube::Client {
    let addr = api.serve().await.unwrap();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn names(objects: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = objects
        .iter()
        .map(|o| {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
            let name = o["metadata"]["name"].as_str().unwrap();
            if ns.is_empty() {
                name.to_string()
            } else {
                format!("{ns}/{name}")
            }
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_becomes_namespaces_isolation_and_rbac_and_only_managed_objects_are_pruned() {
    let api = ApiServer::new();
    // Someone else's RoleBinding in a tenant namespace: never touched.
    api.event(
        ROLEBINDINGS,
        "ADDED",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "ops-debug", "namespace": "acme-prod"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}),
    );
    // A binding Tenantry made for a role nobody holds any more: pruned.
    api.event(
        ROLEBINDINGS,
        "ADDED",
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tenantry-viewer", "namespace": "globex-prod",
                         "labels": {"app.kubernetes.io/managed-by": "tenantry"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"}}),
    );
    // A self-service namespace globex created through the webhook, and one that only matches
    // its prefix.
    api.event(
        NAMESPACES,
        "ADDED",
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "globex-lab", "labels": {"tenantry.dev/tenant": "globex"}}}),
    );
    api.event(
        NAMESPACES,
        "ADDED",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "globex-legacy"}}),
    );
    let client = client(&api).await;
    let directory = embedded::directory().unwrap();

    let report = apply::reconcile(&client, &directory, &Options::default())
        .await
        .unwrap();
    assert_eq!(report.pruned, 1, "{report:?}");
    assert_eq!(
        names(&api.objects(CLASSES)),
        ["tenant-business", "tenant-enterprise", "tenant-free"]
    );
    assert_eq!(
        names(&api.objects(NAMESPACES)),
        [
            "acme-dev",
            "acme-prod",
            "globex-lab",
            "globex-legacy",
            "globex-prod",
            "initech-prod"
        ]
    );
    let legacy = api.object(NAMESPACES, "", "globex-legacy").unwrap();
    assert!(
        legacy["metadata"]["labels"].is_null(),
        "not adopted: {legacy}"
    );
    let lab = api.object(NAMESPACES, "", "globex-lab").unwrap();
    assert_eq!(
        lab["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "baseline"
    );
    assert_eq!(
        names(&api.objects(NETWORKPOLICIES)),
        [
            "acme-dev/tenantry-isolation",
            "acme-prod/tenantry-isolation",
            "globex-lab/tenantry-isolation",
            "globex-prod/tenantry-isolation",
            "initech-prod/tenantry-isolation"
        ]
    );
    let bindings = names(&api.objects(ROLEBINDINGS));
    assert!(
        bindings.contains(&"acme-prod/ops-debug".to_string()),
        "{bindings:?}"
    );
    assert!(bindings.contains(&"acme-prod/tenantry-admin".to_string()));
    assert!(bindings.contains(&"globex-lab/tenantry-developer".to_string()));
    assert!(
        !bindings.contains(&"globex-prod/tenantry-viewer".to_string()),
        "pruned"
    );
    // Every write is a server-side apply under Tenantry's field manager (or a prune).
    let writes = api.writes();
    assert!(!writes.is_empty());
    for write in writes {
        assert!(
            write.starts_with("DELETE ")
                || (write.contains("fieldManager=tenantry-controller")
                    && write.contains("force=true")),
            "{write}"
        );
    }

    // Drift: someone deletes globex's isolation; the next reconcile puts it back.
    let policy = api
        .object(NETWORKPOLICIES, "globex-prod", "tenantry-isolation")
        .unwrap();
    api.event(NETWORKPOLICIES, "DELETED", policy);
    let again = apply::reconcile(&client, &directory, &Options::default())
        .await
        .unwrap();
    assert_eq!(again.pruned, 0);
    assert!(
        api.object(NETWORKPOLICIES, "globex-prod", "tenantry-isolation")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_cannot_be_provisioned_does_not_hold_up_the_others() {
    let api = ApiServer::new();
    // Writes into acme-dev, the first namespace, are refused (say, by an admission webhook).
    api.refuse("/api/v1/namespaces/acme-dev");
    api.refuse("/apis/networking.k8s.io/v1/namespaces/acme-dev");
    let client = client(&api).await;
    let directory = embedded::directory().unwrap();
    let err = apply::reconcile(&client, &directory, &Options::default())
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("1 namespace(s) could not be provisioned"),
        "{message}"
    );
    // Every namespace after it was still provisioned.
    for ns in ["acme-prod", "globex-prod", "initech-prod"] {
        assert!(
            api.object(NETWORKPOLICIES, ns, "tenantry-isolation")
                .is_some(),
            "{ns}"
        );
    }
    assert!(
        api.object(NETWORKPOLICIES, "acme-dev", "tenantry-isolation")
            .is_none()
    );
}
