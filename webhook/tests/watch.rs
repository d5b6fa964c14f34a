//! The webhook's real watch code (`cluster::watch_usage`, kube-rs watchers) against a small
//! in-process API server that lists objects and streams watch events exactly as the API server's
//! list and watch endpoints do, and the real HTTPS webhook deciding on what the watches saw.
//!
//! The API server is `tenantry_tests::api_server`, a second real implementation, not a mock: it
//! speaks HTTP, answers lists with a resourceVersion, streams `{"type": …, "object": …}` lines
//! to watchers, and answers 404 for kinds whose CRDs are not installed (the Gateway API here).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_tests::api_server::ApiServer;
use tenantry_tests::https::Client;
use tenantry_webhook::server::{self, AppState};
use tenantry_webhook::{cluster, embedded};

/// The cluster-wide collection an object lives under (how the webhook watches).
fn collection(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let (_, plural) = tenantry_webhook::usage::resource_of(api_version, kind);
    ApiServer::collection_of(object, &plural)
}

/// Stores an object (before the watches start, or as a watch event after).
fn event(api: &ApiServer, kind: &str, object: Value) {
    api.event(&collection(&object), kind, object);
}

struct World {
    api: ApiServer,
    state: Arc<AppState>,
    hook: server::LocalWebhook,
    client: Client,
}

/// The example directory, a webhook watching the fake API server, and its HTTPS endpoint.
async fn world(seed: Vec<Value>) -> World {
    let api = ApiServer::new();
    // The Gateway API's CRDs are not installed here.
    api.missing("/apis/gateway.networking.k8s.io/");
    for object in seed {
        event(&api, "ADDED", object);
    }
    let addr = api.serve().await.unwrap();
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let mut state = AppState::local(
        embedded::directory().unwrap(),
        embedded::policies().unwrap(),
    );
    state.observes_cluster = true;
    state.usage_ready.store(false, Ordering::Release);
    let state = Arc::new(state);
    let synced = state.clone();
    cluster::watch_usage(client, state.ledger.clone(), move || {
        synced.usage_ready.store(true, Ordering::Release);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !state.usage_ready.load(Ordering::Acquire) {
        assert!(
            Instant::now() < deadline,
            "usage never became ready (Gateway API kinds are absent here: they must not block it)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hook = server::start_local(state.clone()).await.unwrap();
    let client = Client::https(&hook.ca_pem, "127.0.0.1").unwrap();
    World {
        api,
        state,
        hook,
        client,
    }
}

impl World {
    /// Mutates, applies the patch, validates: (allowed, message).
    async fn admit(&self, request: Value) -> (bool, String) {
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
        let m = self
            .client
            .post(
                self.hook.addr,
                "/mutate",
                serde_json::to_vec(&review).unwrap(),
            )
            .await
            .unwrap();
        let m: Value = serde_json::from_slice(&m.body).unwrap();
        let mut review = review;
        if let Some(patch) = m["response"]["patch"].as_str() {
            use base64::Engine as _;
            let ops = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&ops).unwrap();
            json_patch::patch(&mut review["request"]["object"], &patch).unwrap();
        }
        let v = self
            .client
            .post(
                self.hook.addr,
                "/validate",
                serde_json::to_vec(&review).unwrap(),
            )
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&v.body).unwrap();
        (
            v["response"]["allowed"].as_bool().unwrap(),
            v["response"]["status"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    }

    /// Waits until the ledger reflects what the watches were sent.
    async fn settle(&self, check: impl Fn(&AppState) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check(&self.state) {
            assert!(
                Instant::now() < deadline,
                "the watch event never reached the ledger"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn create(user: &str, groups: &[&str], namespace: &str, object: Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let (group, resource) = tenantry_webhook::usage::resource_of(api_version, kind);
    let version = api_version.rsplit('/').next().unwrap();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let uid = format!("uid-{name}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    json!({"uid": uid, "kind": {"group": group, "version": version, "kind": kind},
           "resource": {"group": group, "version": version, "resource": resource},
           "name": name, "namespace": namespace, "operation": "CREATE",
           "userInfo": {"username": user, "groups": groups},
           "object": object, "dryRun": false})
}

fn ingress(name: &str, namespace: &str, host: &str) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"rules": [{"host": host}]}})
}

const ALICE: (&str, &[&str]) = ("alice", &["acme-devs", "system:authenticated"]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_held_per_object_and_follow_watch_events() {
    let w = world(vec![
        ingress("shop-a", "globex-prod", "shop.globex.example"),
        ingress("shop-b", "globex-prod", "shop.globex.example"),
    ])
    .await;
    let claim = |name: &str, host: &str| {
        create(
            ALICE.0,
            ALICE.1,
            "acme-prod",
            ingress(name, "acme-prod", host),
        )
    };
    let (allowed, message) = w.admit(claim("grab-1", "shop.globex.example")).await;
    assert!(
        !allowed && message.contains("cross-tenant-reference"),
        "{message}"
    );

    // globex deletes one of the two Ingresses serving the host: it is still globex's.
    event(
        &w.api,
        "DELETED",
        ingress("shop-a", "globex-prod", "shop.globex.example"),
    );
    w.settle(|s| s.ledger.objects() == 1).await;
    let (allowed, message) = w.admit(claim("grab-2", "shop.globex.example")).await;
    assert!(!allowed, "still served by shop-b: {message}");

    // The other moves to a new host: the old one is free at once, the new one is held.
    event(
        &w.api,
        "MODIFIED",
        ingress("shop-b", "globex-prod", "new.globex.example"),
    );
    w.settle(|s| {
        use tenantry_webhook::UsageView;
        s.ledger
            .view(None)
            .host_namespaces("shop.globex.example")
            .is_empty()
    })
    .await;
    let (allowed, message) = w.admit(claim("grab-3", "shop.globex.example")).await;
    assert!(allowed, "the old host is free: {message}");
    let (allowed, _) = w.admit(claim("grab-4", "new.globex.example")).await;
    assert!(!allowed, "the new host is held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_given_to_a_tenant_is_charged_to_it_at_once() {
    // `legacy` already runs a pod using 1500m CPU before anyone's directory lists it.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "old", "namespace": "legacy"},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "1500m"}}}]},
        "status": {"phase": "Running", "podIP": "10.244.9.9"}});
    let w = world(vec![pod]).await;
    let new_pod = |name: &str, dry_run: bool| {
        let mut r = create(
            "bob",
            &["globex-devs", "system:authenticated"],
            "globex-prod",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "globex-prod"},
                   "spec": {"containers": [{"name": "c", "image": "x", "resources": {"requests": {"cpu": "400m"}}}]}}),
        );
        r["dryRun"] = json!(dry_run);
        r
    };
    // globex (free tier, 2 CPUs) uses nothing yet: 450m (with the enforcer) and another 450m fit.
    let (allowed, message) = w.admit(new_pod("first", false)).await;
    assert!(allowed, "{message}");
    let (allowed, message) = w.admit(new_pod("probe", true)).await;
    assert!(allowed, "{message}");
    // The operator adds `legacy` to globex in the directory: its pod now counts for globex,
    // with no restart and no relist (1500m + 450m + 450m > 2).
    let mut file = embedded::directory().unwrap().source().clone();
    file.tenants
        .get_mut("globex")
        .unwrap()
        .namespaces
        .push("legacy".into());
    w.state
        .directory
        .publish(tenantry_tenancy::Directory::build(file, 2).unwrap());
    let (allowed, message) = w.admit(new_pod("probe", true)).await;
    assert!(
        !allowed && message.contains("quota-requests-cpu"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_the_api_server_refuses_as_a_duplicate_holds_no_quota() {
    // globex's free tier allows 10 pods; `web-1` exists (watched).
    let existing = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "globex-prod"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}, "status": {"phase": "Running"}});
    let mut seed = vec![existing.clone()];
    for i in 0..8 {
        let mut p = existing.clone();
        p["metadata"]["name"] = json!(format!("other-{i}"));
        seed.push(p);
    }
    let w = world(seed).await;
    let pod = |name: &str| {
        create(
            "bob",
            &["globex-devs", "system:authenticated"],
            "globex-prod",
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "globex-prod"},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        )
    };
    // A retried create of `web-1`: the API server will answer AlreadyExists. Its reservation must
    // not take the tenant's last free pod for the reservation's lifetime.
    let (allowed, message) = w.admit(pod("web-1")).await;
    assert!(allowed, "{message}");
    assert_eq!(
        w.state.ledger.reservations(),
        0,
        "no reservation is held for a duplicate"
    );
    let (allowed, message) = w.admit(pod("tenth")).await;
    assert!(allowed, "the tenth pod still fits: {message}");
    // And the eleventh does not: the tenth's reservation holds until the watch shows it.
    let (allowed, message) = w.admit(pod("eleventh")).await;
    assert!(!allowed && message.contains("quota-pods"), "{message}");
    let mut tenth = existing.clone();
    tenth["metadata"]["name"] = json!("tenth");
    event(&w.api, "ADDED", tenth);
    w.settle(|s| s.ledger.reservations() == 0).await;
}
