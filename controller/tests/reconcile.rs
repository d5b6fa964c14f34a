//! The reconcile against an in-process API server (`tenantry_tests::api_server`): what a tenant
//! directory becomes in the cluster, what is pruned, what is never touched, and drift repaired.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tenantry_cluster::UsageView;
use tenantry_controller::apply;
use tenantry_controller::desired::Options;
use tenantry_tenancy::{Directory, embedded};
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

/// One reconcile as the controller runs it, at `now()`, with no usage known.
async fn reconcile(
    client: &kube::Client,
    directory: &Directory,
) -> Result<apply::Report, apply::ApplyError> {
    reconcile_with(client, directory, None).await
}

async fn reconcile_with(
    client: &kube::Client,
    directory: &Directory,
    usage: Option<&dyn UsageView>,
) -> Result<apply::Report, apply::ApplyError> {
    let recorder = recorder(client);
    let options = Options::default();
    let cx = apply::Context {
        client,
        recorder: &recorder,
        options: &options,
        usage,
        now: now(),
    };
    apply::reconcile(&cx, directory).await
}

fn recorder(client: &kube::Client) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: "tenantry-controller".into(),
            instance: Some("test".into()),
        },
    )
}

fn now() -> jiff::Timestamp {
    "2026-11-30T09:00:00Z".parse().unwrap()
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

    let report = reconcile(&client, &directory).await.unwrap();
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
    // Every write is a server-side apply under Tenantry's field manager (or a prune), besides
    // the Events it records.
    let writes = api.writes();
    assert!(!writes.is_empty());
    for write in writes.iter().filter(|w| !w.contains("/events")) {
        assert!(
            write.starts_with("DELETE ")
                || (write.starts_with("PATCH(apply)")
                    && write.contains("fieldManager=tenantry-controller")
                    && write.contains("force=true")),
            "{write}"
        );
    }

    // Each namespace provisioned for the first time gets an Event saying so; globex-lab was
    // already stamped for globex.
    let provisioned = |api: &ApiServer| -> Vec<String> {
        let mut out: Vec<String> = api
            .objects("/apis/events.k8s.io/v1/events")
            .iter()
            .filter(|e| e["reason"] == "Provisioned")
            .map(|e| e["regarding"]["name"].as_str().unwrap().to_string())
            .collect();
        out.sort();
        out
    };
    assert_eq!(
        provisioned(&api),
        ["acme-dev", "acme-prod", "globex-prod", "initech-prod"]
    );

    // Drift: someone deletes globex's isolation; the next reconcile puts it back.
    let policy = api
        .object(NETWORKPOLICIES, "globex-prod", "tenantry-isolation")
        .unwrap();
    api.event(NETWORKPOLICIES, "DELETED", policy);
    let again = reconcile(&client, &directory).await.unwrap();
    assert_eq!(again.pruned, 0);
    assert!(
        api.object(NETWORKPOLICIES, "globex-prod", "tenantry-isolation")
            .is_some()
    );
    assert_eq!(provisioned(&api).len(), 4, "announced once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_cannot_be_provisioned_does_not_hold_up_the_others() {
    let api = ApiServer::new();
    // Writes into acme-dev, the first namespace, are refused (say, by an admission webhook).
    api.refuse("/api/v1/namespaces/acme-dev");
    api.refuse("/apis/networking.k8s.io/v1/namespaces/acme-dev");
    let client = client(&api).await;
    let directory = embedded::directory().unwrap();
    let err = reconcile(&client, &directory).await.unwrap_err();
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
    // Only what was provisioned is announced.
    let provisioned: Vec<String> = api
        .objects("/apis/events.k8s.io/v1/events")
        .iter()
        .filter(|e| e["reason"] == "Provisioned")
        .map(|e| e["regarding"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        provisioned.contains(&"acme-prod".to_string()),
        "{provisioned:?}"
    );
    assert!(
        !provisioned.contains(&"acme-dev".to_string()),
        "{provisioned:?}"
    );
}

const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
const STATEFULSETS: &str = "/apis/apps/v1/statefulsets";
const EVENTS: &str = "/apis/events.k8s.io/v1/events";

fn workload(kind: &str, namespace: &str, name: &str, replicas: Option<i64>) -> Value {
    let mut object = json!({"apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:1"}]}}}});
    if let Some(r) = replicas {
        object["spec"]["replicas"] = json!(r);
    }
    object
}

fn replicas(api: &ApiServer, collection: &str, namespace: &str, name: &str) -> Value {
    api.object(collection, namespace, name).unwrap()["spec"]["replicas"].clone()
}

/// The example directory with changes to its tenants.
fn directory_with(change: impl FnOnce(&mut tenantry_tenancy::TenantsFile)) -> Directory {
    let mut file = embedded::directory().unwrap().source().clone();
    change(&mut file);
    Directory::build(file, 2).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_scales_workloads_to_zero_and_resuming_gives_their_replicas_back() {
    let api = ApiServer::new();
    for (collection, object) in [
        (
            DEPLOYMENTS,
            workload("Deployment", "initech-prod", "web", Some(3)),
        ),
        (
            DEPLOYMENTS,
            workload("Deployment", "initech-prod", "idle", Some(0)),
        ),
        (
            STATEFULSETS,
            workload("StatefulSet", "initech-prod", "db", None),
        ),
        (
            DEPLOYMENTS,
            workload("Deployment", "acme-prod", "api", Some(2)),
        ),
    ] {
        api.event(collection, "ADDED", object);
    }
    let client = client(&api).await;
    // initech is suspended on business, a tier that scales suspended tenants down.
    let suspended = embedded::directory().unwrap();
    let report = reconcile(&client, &suspended).await.unwrap();
    assert_eq!(report.lifecycle.scaled_down, 2, "{report:?}");
    let web = api.object(DEPLOYMENTS, "initech-prod", "web").unwrap();
    assert_eq!(web["spec"]["replicas"], 0);
    assert_eq!(
        web["metadata"]["labels"]["tenantry.dev/scaled-down"],
        "true"
    );
    assert_eq!(web["metadata"]["labels"]["app"], "web", "other labels kept");
    assert_eq!(
        web["metadata"]["annotations"]["tenantry.dev/replicas-before-scale-down"],
        "3"
    );
    let db = api.object(STATEFULSETS, "initech-prod", "db").unwrap();
    assert_eq!(db["spec"]["replicas"], 0);
    assert_eq!(
        db["metadata"]["annotations"]["tenantry.dev/replicas-before-scale-down"], "1",
        "absent replicas mean 1"
    );
    let idle = api.object(DEPLOYMENTS, "initech-prod", "idle").unwrap();
    assert!(
        idle["metadata"]["labels"]
            .get("tenantry.dev/scaled-down")
            .is_none()
    );
    assert_eq!(
        replicas(&api, DEPLOYMENTS, "acme-prod", "api"),
        2,
        "active tenants untouched"
    );
    // Scaling is a merge patch (replicas stay owned by whoever set them), never an apply.
    let scale_writes: Vec<String> = api
        .writes()
        .into_iter()
        .filter(|w| w.contains("/deployments/") || w.contains("/statefulsets/"))
        .collect();
    assert!(
        scale_writes.iter().all(
            |w| w.starts_with("PATCH(merge)") && w.contains("fieldManager=tenantry-controller")
        ),
        "{scale_writes:?}"
    );
    // People see why: an Event on each workload.
    let events = api.objects(EVENTS);
    let scaled: Vec<_> = events
        .iter()
        .filter(|e| e["reason"] == "ScaledDown")
        .map(|e| e["regarding"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(scaled.len(), 2, "{events:?}");
    // Suspended members have no access left.
    assert!(
        names(&api.objects(ROLEBINDINGS))
            .iter()
            .all(|b| !b.starts_with("initech-prod/"))
    );

    // Someone with cluster rights scales web up during the suspension: back to zero, the
    // record of its replicas before the suspension kept.
    let mut web = api.object(DEPLOYMENTS, "initech-prod", "web").unwrap();
    web["spec"]["replicas"] = json!(5);
    api.event(DEPLOYMENTS, "MODIFIED", web);
    let again = reconcile(&client, &suspended).await.unwrap();
    assert_eq!(again.lifecycle.scaled_down, 1);
    let web = api.object(DEPLOYMENTS, "initech-prod", "web").unwrap();
    assert_eq!(web["spec"]["replicas"], 0);
    assert_eq!(
        web["metadata"]["annotations"]["tenantry.dev/replicas-before-scale-down"],
        "3"
    );
    let idempotent = reconcile(&client, &suspended).await.unwrap();
    assert_eq!(idempotent.lifecycle, Default::default());

    // Resumed: replicas back, marks gone, members bound again.
    let resumed = directory_with(|f| {
        f.tenants.get_mut("initech").unwrap().status = tenantry_tenancy::Status::Active;
    });
    let report = reconcile(&client, &resumed).await.unwrap();
    assert_eq!(report.lifecycle.restored, 2, "{report:?}");
    let web = api.object(DEPLOYMENTS, "initech-prod", "web").unwrap();
    assert_eq!(web["spec"]["replicas"], 3);
    assert!(
        web["metadata"]["labels"]
            .get("tenantry.dev/scaled-down")
            .is_none()
    );
    assert!(
        web["metadata"]["annotations"]
            .get("tenantry.dev/replicas-before-scale-down")
            .is_none()
    );
    assert_eq!(replicas(&api, STATEFULSETS, "initech-prod", "db"), 1);
    assert_eq!(replicas(&api, DEPLOYMENTS, "initech-prod", "idle"), 0);
    assert!(
        names(&api.objects(ROLEBINDINGS)).contains(&"initech-prod/tenantry-developer".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tenant_is_purged_after_its_grace_period_and_only_its_labelled_namespaces() {
    let api = ApiServer::new();
    api.event(
        DEPLOYMENTS,
        "ADDED",
        workload("Deployment", "globex-prod", "shop", Some(2)),
    );
    // Listed for globex only once its purge is due, so never provisioned (labelled) for it:
    // someone else's data.
    api.event(
        NAMESPACES,
        "ADDED",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shared-data"}}),
    );
    let client = client(&api).await;
    let active = embedded::directory().unwrap();
    reconcile(&client, &active).await.unwrap();
    api.event(
        NAMESPACES,
        "ADDED",
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "globex-lab", "labels": {"tenantry.dev/tenant": "globex"}}}),
    );

    let deleted = |purge_after: &str| {
        let purge_after: jiff::Timestamp = purge_after.parse().unwrap();
        directory_with(move |f| {
            let globex = f.tenants.get_mut("globex").unwrap();
            globex.status = tenantry_tenancy::Status::Deleted;
            globex.purge_after = Some(purge_after);
            if purge_after <= now() {
                globex.namespaces.push("shared-data".into());
            }
        })
    };
    // Within the grace period: data kept, workloads down, no access.
    let report = reconcile(&client, &deleted("2026-12-30T09:00:00Z"))
        .await
        .unwrap();
    assert_eq!(report.lifecycle.purged, 0);
    assert_eq!(report.lifecycle.scaled_down, 1);
    assert!(api.object(NAMESPACES, "", "globex-prod").is_some());
    assert!(
        names(&api.objects(ROLEBINDINGS))
            .iter()
            .all(|b| !b.starts_with("globex-"))
    );

    // Past it: globex's labelled namespaces, self-service included, are deleted; the listed one
    // that is not labelled for globex is not.
    let report = reconcile(&client, &deleted("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    assert_eq!(report.lifecycle.purged, 2, "{report:?}");
    let left = names(&api.objects(NAMESPACES));
    assert!(!left.contains(&"globex-prod".to_string()), "{left:?}");
    assert!(!left.contains(&"globex-lab".to_string()), "{left:?}");
    assert!(left.contains(&"shared-data".to_string()), "{left:?}");
    assert!(left.contains(&"acme-prod".to_string()), "{left:?}");
    let purging: Vec<_> = api
        .objects(EVENTS)
        .into_iter()
        .filter(|e| e["reason"] == "Purging")
        .collect();
    assert_eq!(purging.len(), 2);
    // Nothing is re-created for a purged tenant.
    let again = reconcile(&client, &deleted("2026-11-30T08:00:00Z"))
        .await
        .unwrap();
    assert_eq!(again.lifecycle.purged, 0);
    assert!(api.object(NAMESPACES, "", "globex-prod").is_none());
}

const TENANTS: &str = "/apis/tenantry.dev/v1alpha1/tenants";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_tenant_crd_provisioning_goes_on() {
    let api = ApiServer::new();
    api.missing("/apis/tenantry.dev");
    let client = client(&api).await;
    let report = reconcile(&client, &embedded::directory().unwrap())
        .await
        .unwrap();
    assert_eq!(report.mirrored, 0);
    assert!(
        api.object(NETWORKPOLICIES, "acme-prod", "tenantry-isolation")
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_is_mirrored_with_its_members_by_role_and_usage_against_limits() {
    let api = ApiServer::new();
    // A mirror of a tenant that left the directory.
    api.event(
        TENANTS,
        "ADDED",
        json!({"apiVersion": "tenantry.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "umbrella", "labels": {"app.kubernetes.io/managed-by": "tenantry"}},
            "spec": {"tier": "free", "status": "active", "namespaces": [], "members": {}}}),
    );
    let client = client(&api).await;
    let directory = embedded::directory().unwrap();
    let pod = |name: &str, cpu: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "globex-prod"},
            "spec": {"containers": [{"name": "app", "image": "shop:1",
                "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}}}]}})
    };
    let objects = [pod("shop-1", "250m"), pod("shop-2", "1250m")];
    let ledger = tenantry_cluster::Ledger::from_objects(&objects).unwrap();
    let usage = ledger.view(None);

    let report = reconcile_with(&client, &directory, Some(&usage))
        .await
        .unwrap();
    assert_eq!(report.mirrored, 3, "{report:?}");
    assert_eq!(names(&api.objects(TENANTS)), ["acme", "globex", "initech"]);

    let acme = api.object(TENANTS, "", "acme").unwrap();
    assert_eq!(
        acme["spec"],
        json!({
            "tier": "enterprise",
            "status": "active",
            "client": "globalcorp",
            "namespaces": ["acme-dev", "acme-prod"],
            // alice is listed as a developer and an admin: the stronger role shows.
            "members": {
                "admins": ["User:alice"],
                "developers": ["Group:acme-devs", "ServiceAccount:acme-prod:deployer"],
                "viewers": ["User:dana"],
            },
            "teams": {"backend": {"namespaces": ["acme-dev"], "members": {"developers": ["User:alice"]}}},
        })
    );
    assert_eq!(
        acme["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "tenantry"
    );
    let globex = api.object(TENANTS, "", "globex").unwrap();
    assert_eq!(
        globex["status"]["usage"]["pods"],
        json!({"used": "2", "limit": "10"})
    );
    assert_eq!(
        globex["status"]["usage"]["requests.cpu"],
        json!({"used": "1500m", "limit": "2"})
    );
    assert_eq!(
        globex["status"]["usage"]["requests.memory"],
        json!({"used": "2Gi", "limit": "4Gi"})
    );
    assert_eq!(
        api.object(TENANTS, "", "initech").unwrap()["spec"]["status"],
        "suspended"
    );

    // Usage unchanged: no status write. Usage not known yet: the status is left as it was.
    let status_writes = || {
        api.writes()
            .iter()
            .filter(|w| w.contains("/tenants/") && w.contains("/status"))
            .count()
    };
    let before = status_writes();
    reconcile_with(&client, &directory, Some(&usage))
        .await
        .unwrap();
    reconcile(&client, &directory).await.unwrap();
    assert_eq!(status_writes(), before);
    assert_eq!(
        api.object(TENANTS, "", "globex").unwrap()["status"]["usage"]["pods"]["used"],
        "2"
    );
}
