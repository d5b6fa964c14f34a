//! The real `tenantry-webhook` binary over real HTTPS, with AdmissionReview bodies shaped like
//! the API server's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantry_tests::https::{Client, Reply};
use tenantry_tests::{free_port, repo_root};

const TENANTS: &str = r#"
tiers:
  small:
    limits: { pods: 5, count/configmaps: 100 }
    scheduling: { priority_class: tenant-small }
tenants:
  acme:
    tier: small
    namespaces: [acme-dev]
    members: { users: [alice] }
  globex:
    tier: small
    namespaces: [globex-prod]
    members: { users: [bob] }
"#;

struct Webhook {
    child: Child,
    addr: SocketAddr,
    ops: SocketAddr,
    dir: PathBuf,
    client: Client,
    ca: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tenantry-webhook-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).unwrap();
    for entry in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join("policies").join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

async fn start(name: &str, tenants: &str, extra: &[&str]) -> Webhook {
    let dir = scratch(name);
    let generated =
        tenantry_certs::generate(&["localhost".to_string(), "127.0.0.1".to_string()], 30).unwrap();
    std::fs::write(dir.join("tls.crt"), &generated.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &generated.key).unwrap();
    std::fs::write(dir.join("ca.crt"), &generated.ca_cert).unwrap();
    std::fs::write(dir.join("ca.key"), &generated.ca_key).unwrap();
    let tenants_arg = if tenants.starts_with("postgres://") {
        tenants.to_string()
    } else {
        std::fs::write(dir.join("tenants.yaml"), tenants).unwrap();
        dir.join("tenants.yaml").to_str().unwrap().to_string()
    };
    let (port, ops_port) = (free_port().unwrap(), free_port().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_tenantry-webhook"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            &format!("127.0.0.1:{ops_port}"),
        ])
        .args([
            "--tls-cert",
            dir.join("tls.crt").to_str().unwrap(),
            "--tls-key",
            dir.join("tls.key").to_str().unwrap(),
        ])
        .args([
            "--tenants",
            &tenants_arg,
            "--policies",
            dir.join("policies").to_str().unwrap(),
        ])
        .args(["--reload-interval", "100ms"])
        .args(extra)
        .env("TENANTRY_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let hook = Webhook {
        child,
        addr: ([127, 0, 0, 1], port).into(),
        ops: ([127, 0, 0, 1], ops_port).into(),
        dir,
        client: Client::https(&generated.ca_cert, "localhost").unwrap(),
        ca: generated.ca_cert,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = Client::http().get(hook.ops, "/readyz").await
            && r.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "webhook did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hook
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A Pod CREATE review by `user` in `namespace`, named `name`, with a fresh uid.
fn pod_review(user: &str, namespace: &str, name: &str, dry_run: bool) -> Value {
    let mut review = fixture("pod-create.json");
    let req = &mut review["request"];
    req["uid"] = json!(format!("uid-{name}"));
    req["name"] = json!(name);
    req["namespace"] = json!(namespace);
    req["dryRun"] = json!(dry_run);
    req["userInfo"] = json!({"username": user, "groups": ["system:authenticated"]});
    req["object"]["metadata"]["name"] = json!(name);
    req["object"]["metadata"]["namespace"] = json!(namespace);
    review
}

impl Webhook {
    async fn post(&self, path: &str, review: &Value) -> Reply {
        self.client
            .post(self.addr, path, serde_json::to_vec(review).unwrap())
            .await
            .unwrap()
    }

    /// Mutate, apply the patch, validate: the API server's sequence. Returns the validation
    /// response.
    async fn admit(&self, review: &Value) -> Value {
        let m = self.post("/mutate", review).await;
        assert_eq!(m.status, 200, "{}", m.text());
        let m: Value = serde_json::from_slice(&m.body).unwrap();
        let mut review = review.clone();
        if let Some(patch) = m["response"]["patch"].as_str() {
            use base64::Engine as _;
            let ops = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&ops).unwrap();
            json_patch::patch(&mut review["request"]["object"], &patch).unwrap();
        }
        let v = self.post("/validate", &review).await;
        assert_eq!(v.status, 200, "{}", v.text());
        let v: Value = serde_json::from_slice(&v.body).unwrap();
        v["response"].clone()
    }

    async fn metrics(&self) -> String {
        Client::http()
            .get(self.ops, "/metrics")
            .await
            .unwrap()
            .text()
    }
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_are_decided_over_https_and_counted() {
    let hook = start("https", TENANTS, &[]).await;
    let review = pod_review("alice", "acme-dev", "web", false);
    let m = hook.post("/mutate", &review).await;
    assert_eq!(m.status, 200);
    let m: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(m["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(m["kind"], "AdmissionReview");
    assert_eq!(m["response"]["uid"], "uid-web");
    assert_eq!(m["response"]["patchType"], "JSONPatch");

    let allowed = hook.admit(&review).await;
    assert_eq!(allowed["allowed"], true, "{allowed}");
    let denied = hook
        .admit(&pod_review("bob", "acme-dev", "intruder", false))
        .await;
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["uid"], "uid-intruder");
    assert_eq!(denied["status"]["code"], 403);
    assert!(
        denied["status"]["message"]
            .as_str()
            .unwrap()
            .contains("[policy cross-tenant-write]")
    );

    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            hook.client.get(hook.addr, path).await.unwrap().status,
            200,
            "{path} over HTTPS"
        );
    }
    let metrics = hook.metrics().await;
    assert!(
        metric(
            &metrics,
            "tenantry_admission_requests_total{endpoint=\"validate\",operation=\"CREATE\",kind=\"Pod\",decision=\"denied\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(metrics.contains("tenantry_admission_duration_seconds_bucket"));
    assert!(metric(&metrics, "tenantry_directory_version") >= 1.0);
    assert!(metric(&metrics, "tenantry_policies_loaded") >= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_reviews_get_400_and_huge_ones_413() {
    let hook = start("bad", TENANTS, &["--max-body-bytes", "65536"]).await;
    let r = hook
        .client
        .post(hook.addr, "/validate", b"{\"hello\": 1}".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not an AdmissionReview"),
        "{body}"
    );
    // The refusal comes from Content-Length, before the body is read, so the client may still be
    // writing when it arrives: send the head and part of the body, then read.
    let head =
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 70000\r\n\r\n".to_string();
    let status = raw_exchange(&hook, head, &[b' '; 1000], Duration::from_secs(5)).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(
        metric(
            &hook.metrics().await,
            "tenantry_admission_bad_requests_total"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_parallel_creates_never_overshoot_the_limit() {
    let hook = Arc::new(start("parallel", TENANTS, &[]).await);
    // Dry runs are decided but reserve nothing.
    for i in 0..3 {
        let r = hook
            .admit(&pod_review("alice", "acme-dev", &format!("dry-{i}"), true))
            .await;
        assert_eq!(r["allowed"], true);
    }
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let hook = hook.clone();
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let r = hook
                .admit(&pod_review("alice", "acme-dev", &format!("p-{i}"), false))
                .await;
            if r["allowed"] == true {
                admitted.fetch_add(1, Ordering::SeqCst);
            } else {
                let message = r["status"]["message"].as_str().unwrap().to_string();
                assert!(message.contains("[policy quota-pods]"), "{message}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        5,
        "exactly the tier's 5 pods"
    );
    // Settled: denied creates released their reservations; what fits is admitted, what does not is not.
    let metrics = hook.metrics().await;
    assert_eq!(
        metric(&metrics, "tenantry_quota_reservations"),
        0.0,
        "{metrics}"
    );
    let mut configmap = fixture("pod-update.json");
    let req = &mut configmap["request"];
    req["operation"] = json!("CREATE");
    req["oldObject"] = Value::Null;
    req["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    req["resource"] = json!({"group": "", "version": "v1", "resource": "configmaps"});
    req["userInfo"] = json!({"username": "alice", "groups": []});
    req["object"] = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "acme-dev"}});
    assert_eq!(
        hook.admit(&configmap).await["allowed"],
        true,
        "a create that fits is admitted"
    );
    assert_eq!(
        hook.admit(&pod_review("alice", "acme-dev", "one-more", false))
            .await["allowed"],
        false
    );
    assert_eq!(
        hook.admit(&pod_review("bob", "globex-prod", "other-tenant", false))
            .await["allowed"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_failed_request() {
    let hook = Arc::new(start("rotate", TENANTS, &[]).await);
    let first = hook
        .client
        .get(hook.addr, "/healthz")
        .await
        .unwrap()
        .peer_certificate
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen_new = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (hook, stop, sent, failed, seen_new, first) = (
            hook.clone(),
            stop.clone(),
            sent.clone(),
            failed.clone(),
            seen_new.clone(),
            first.clone(),
        );
        tokio::spawn(async move {
            let review = pod_review("alice", "acme-dev", "web", true);
            let body = serde_json::to_vec(&review).unwrap();
            while !stop.load(Ordering::SeqCst) {
                // A new connection per request: every request is a fresh handshake.
                match hook.client.post(hook.addr, "/validate", body.clone()).await {
                    Ok(r) if r.status == 200 => {
                        if r.peer_certificate.as_ref() != Some(&first) {
                            seen_new.store(true, Ordering::SeqCst);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let ca_key = std::fs::read_to_string(hook.dir.join("ca.key")).unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let renewed =
            tenantry_certs::renew(&hook.ca, &ca_key, &["localhost".to_string()], 30).unwrap();
        // Key first, then certificate, as a rotating tool would: the mismatched moment must not
        // break anything.
        tenantry_certs::write_atomic(&hook.dir.join("tls.key"), &renewed.key).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        tenantry_certs::write_atomic(&hook.dir.join("tls.crt"), &renewed.cert).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert!(sent.load(Ordering::SeqCst) > 20, "the client kept sending");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed during rotation"
    );
    assert!(
        seen_new.load(Ordering::SeqCst),
        "the new certificate was served"
    );
    let metrics = hook.metrics().await;
    assert!(
        metric(
            &metrics,
            "tenantry_certificate_reloads_total{result=\"ok\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_and_tenant_reloads_apply_and_broken_ones_keep_the_last_good_set() {
    let hook = start("reload", TENANTS, &[]).await;
    let review = pod_review("alice", "acme-dev", "web", true);
    assert_eq!(hook.admit(&review).await["allowed"], true);

    // A broken policy file: reported, and the good set keeps deciding.
    std::fs::write(
        hook.dir.join("policies/broken.cedar"),
        "@id(\"x\")\nforbid (principal, action, resource) when {",
    )
    .unwrap();
    wait_for(|| async {
        metric(
            &hook.metrics().await,
            "tenantry_policy_reloads_total{result=\"error\"}",
        ) >= 1.0
    })
    .await;
    assert_eq!(hook.admit(&review).await["allowed"], true);

    // A valid new policy takes effect.
    std::fs::write(
        hook.dir.join("policies/broken.cedar"),
        "@id(\"no-web\")\n@message(\"no pods named web\")\nforbid (principal, action == Action::\"create\", resource)\nwhen { resource.name == \"web\" };\n",
    )
    .unwrap();
    wait_for(|| async { hook.admit(&review).await["allowed"] == false }).await;
    let denied = hook.admit(&review).await;
    assert!(
        denied["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no pods named web")
    );
    std::fs::remove_file(hook.dir.join("policies/broken.cedar")).unwrap();
    wait_for(|| async { hook.admit(&review).await["allowed"] == true }).await;

    // Suspending a tenant in the tenants file takes effect; a broken file keeps the last good one.
    let suspended = TENANTS.replace(
        "    tier: small\n    namespaces: [acme-dev]",
        "    tier: small\n    status: suspended\n    namespaces: [acme-dev]",
    );
    tenantry_certs::write_atomic(&hook.dir.join("tenants.yaml"), &suspended).unwrap();
    let suspended_message = || async {
        hook.admit(&review).await["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("suspended-tenant")
    };
    wait_for(suspended_message).await;
    tenantry_certs::write_atomic(&hook.dir.join("tenants.yaml"), "tiers: [broken").unwrap();
    wait_for(|| async {
        metric(
            &hook.metrics().await,
            "tenantry_tenants_file_reloads_total{result=\"error\"}",
        ) >= 1.0
    })
    .await;
    let still = hook.admit(&review).await;
    assert!(
        still["status"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("suspended-tenant"),
        "{still}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let mut hook = start("sigterm", TENANTS, &[]).await;
    let review = pod_review("alice", "acme-dev", "web", true);
    assert_eq!(hook.admit(&review).await["allowed"], true);
    let pid = hook.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = hook.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(
        hook.client.get(hook.addr, "/healthz").await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changes_reach_decisions_within_a_second_and_outages_fail_closed() {
    let pg = tenantry_tests::Postgres::start().unwrap();
    let source = tenantry_tenancy::PostgresSource::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    source.migrate().await.unwrap();
    let file: tenantry_tenancy::TenantsFile = serde_saphyr::from_str(TENANTS).unwrap();
    source.import(&file).await.unwrap();
    let hook = start(
        "postgres",
        &pg.url(),
        &["--max-stale", "3s", "--resync", "500ms"],
    )
    .await;
    let review = pod_review("alice", "acme-dev", "web", true);
    assert_eq!(hook.admit(&review).await["allowed"], true);

    let started = Instant::now();
    source
        .set_status("acme", tenantry_tenancy::Status::Suspended)
        .await
        .unwrap();
    wait_for(|| async { hook.admit(&review).await["allowed"] == false }).await;
    let delay = started.elapsed();
    eprintln!("suspension committed in Postgres → denied by the webhook after {delay:?}");
    assert!(delay < Duration::from_secs(1), "{delay:?}");
    source
        .set_status("acme", tenantry_tenancy::Status::Active)
        .await
        .unwrap();
    wait_for(|| async { hook.admit(&review).await["allowed"] == true }).await;

    // Outage: the last snapshot keeps deciding, readiness says why, and past --max-stale writes
    // are refused rather than allowed.
    pg.stop().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        hook.admit(&review).await["allowed"],
        true,
        "within the bound, the last snapshot decides"
    );
    wait_for(|| async { hook.admit(&review).await["allowed"] == false }).await;
    let stale = hook.admit(&review).await;
    assert_eq!(stale["status"]["code"], 503);
    assert!(
        stale["status"]["message"]
            .as_str()
            .unwrap()
            .contains("refusing writes"),
        "{stale}"
    );
    let ready = Client::http().get(hook.ops, "/readyz").await.unwrap();
    assert_eq!(ready.status, 503);
    assert!(ready.text().contains("last_error"), "{}", ready.text());

    pg.restart().unwrap();
    wait_for(|| async { hook.admit(&review).await["allowed"] == true }).await;
    assert_eq!(
        Client::http()
            .get(hook.ops, "/readyz")
            .await
            .unwrap()
            .status,
        200
    );
}

async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "condition not reached in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_never_overshoot_together() {
    let mut redis = tenantry_tests::Redis::start().unwrap();
    let url = redis.url();
    let a = Arc::new(start("redis-a", TENANTS, &["--redis", &url]).await);
    let b = Arc::new(start("redis-b", TENANTS, &["--redis", &url]).await);
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let hook = if i % 2 == 0 { a.clone() } else { b.clone() };
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let r = hook
                .admit(&pod_review("alice", "acme-dev", &format!("p-{i}"), false))
                .await;
            if r["allowed"] == true {
                admitted.fetch_add(1, Ordering::SeqCst);
            }
            r["status"]["message"].as_str().unwrap_or("").to_string()
        }));
    }
    let mut refusals = std::collections::BTreeSet::new();
    for t in tasks {
        refusals.insert(t.await.unwrap());
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        5,
        "two replicas together admit exactly the tier's 5 pods; refusals: {refusals:?}"
    );

    // Redis gone: creates the tier limits are refused (503), others still decided.
    redis.kill();
    let r = a
        .admit(&pod_review("bob", "globex-prod", "while-down", false))
        .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 503);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot reserve quota"),
        "{r}"
    );
    assert_eq!(
        a.admit(&pod_review("bob", "globex-prod", "dry", true))
            .await["allowed"],
        true,
        "dry runs need no reservation"
    );
    redis.restart().unwrap();
    wait_for(|| async {
        a.admit(&pod_review("bob", "globex-prod", "after", false))
            .await["allowed"]
            == true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_redis_cluster_never_overshoot_together() {
    let cluster = tenantry_tests::RedisCluster::start().unwrap();
    let url = cluster.url();
    let a = Arc::new(start("cluster-a", TENANTS, &["--redis", &url]).await);
    let b = Arc::new(start("cluster-b", TENANTS, &["--redis", &url]).await);
    let admitted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let hook = if i % 2 == 0 { a.clone() } else { b.clone() };
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            let r = hook
                .admit(&pod_review("alice", "acme-dev", &format!("c-{i}"), false))
                .await;
            if r["allowed"] == true {
                admitted.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 5);
    // Another tenant's reservations live in another slot and are unaffected.
    assert_eq!(
        a.admit(&pod_review("bob", "globex-prod", "g-1", false))
            .await["allowed"],
        true
    );
}

// --- the boundary, over HTTPS, with reviews shaped as the API server sends them -------------------

/// Existing objects for the boundary tests: the example state plus pods with addresses.
const BOUNDARY_STATE: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: api-1, namespace: acme-prod }
spec: { containers: [{ name: api, image: acme/api }] }
status: { phase: Running, podIP: 10.244.1.5 }
---
apiVersion: v1
kind: Pod
metadata: { name: web-9, namespace: globex-prod }
spec: { containers: [{ name: web, image: nginx }] }
status: { phase: Running, podIP: 10.244.2.9 }
"#;

async fn boundary_webhook(name: &str) -> Webhook {
    let tenants = std::fs::read_to_string(repo_root().join("examples/tenants.yaml")).unwrap();
    let state = std::env::temp_dir().join(format!(
        "tenantry-boundary-state-{}-{name}.yaml",
        std::process::id()
    ));
    let example = std::fs::read_to_string(repo_root().join("examples/state.yaml")).unwrap();
    std::fs::write(&state, format!("{example}\n---\n{BOUNDARY_STATE}")).unwrap();
    start(
        name,
        &tenants,
        &[
            "--state",
            state.to_str().unwrap(),
            "--cluster-cidrs",
            "10.244.0.0/16,10.96.0.0/12",
        ],
    )
    .await
}

/// The review with another identity.
fn as_user(mut review: Value, user: &str, groups: &[&str]) -> Value {
    review["request"]["userInfo"] = json!({"username": user, "groups": groups});
    review["request"]["uid"] = json!(format!(
        "{}-{user}",
        review["request"]["uid"].as_str().unwrap()
    ));
    review
}

/// Sends a review to /validate and returns (allowed, message).
async fn validate(hook: &Webhook, review: &Value) -> (bool, String) {
    let v = hook.post("/validate", review).await;
    assert_eq!(v.status, 200, "{}", v.text());
    let v: Value = serde_json::from_slice(&v.body).unwrap();
    assert_eq!(v["response"]["uid"], review["request"]["uid"], "uid echoed");
    (
        v["response"]["allowed"].as_bool().unwrap(),
        v["response"]["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

/// A user and groups replacing a fixture's, or the fixture's own.
type Identity<'a> = Option<(&'a str, &'a [&'a str])>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subresources_reviews_and_cluster_components_are_decided_by_what_they_do() {
    let hook = boundary_webhook("subresources").await;
    // (fixture, identity override, allowed, policy that must deny)
    let bob = Some(("bob", &["globex-devs", "system:authenticated"][..]));
    let alice = Some(("alice", &["acme-devs", "system:authenticated"][..]));
    let cases: &[(&str, Identity, bool, &str)] = &[
        // The kubelet's TokenRequest for a pod's projected token: refused before.
        ("sa-token-kubelet.json", None, true, ""),
        ("sa-token-kubelet.json", bob, false, "cross-tenant-write"),
        ("sa-token-kubelet.json", alice, true, ""),
        (
            "pod-eviction-cross-tenant.json",
            None,
            false,
            "cross-tenant-write",
        ),
        ("pod-eviction-own.json", None, true, ""),
        (
            "deployment-scale-cross-tenant.json",
            None,
            false,
            "cross-tenant-write",
        ),
        ("deployment-scale-cross-tenant.json", alice, true, ""),
        (
            "pod-proxy-cross-tenant.json",
            None,
            false,
            "cross-tenant-write",
        ),
        ("pod-proxy-cross-tenant.json", alice, true, ""),
        (
            "service-proxy-cross-tenant.json",
            None,
            false,
            "cross-tenant-write",
        ),
        ("pod-binding-scheduler.json", None, true, ""),
        ("pod-binding-scheduler.json", alice, false, "pod-binding"),
        // kubectl auth can-i, TokenReview, LocalSubjectAccessReview persist nothing.
        ("ssar-tenant.json", None, true, ""),
        ("ssar-tenant.json", bob, true, ""),
        ("tokenreview.json", None, true, ""),
        ("lsar.json", None, true, ""),
        ("lsar.json", bob, true, ""),
        (
            "service-status-lb-tenant.json",
            None,
            false,
            "load-balancer-status",
        ),
        (
            "service-status-lb-tenant.json",
            Some((
                "system:serviceaccount:kube-system:service-controller",
                &["system:serviceaccounts"][..],
            )),
            true,
            "",
        ),
        ("pod-status-kubelet.json", None, true, ""),
        ("pod-resize.json", None, true, ""),
    ];
    for (name, identity, allowed, policy) in cases {
        let mut review = fixture(name);
        if let Some((user, groups)) = identity {
            review = as_user(review, user, groups);
        }
        let (got, message) = validate(&hook, &review).await;
        assert_eq!(got, *allowed, "{name} as {identity:?}: {message}");
        if !policy.is_empty() {
            assert!(
                message.contains(&format!("[policy {policy}]")),
                "{name}: {message}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_tenants_are_cleaned_up_by_the_cluster_but_stopped_themselves() {
    let hook = boundary_webhook("suspended").await;
    // The garbage collector's finalizer removal is the last review before the object goes: a
    // denial makes it retry forever. initech is suspended.
    let mut gc = fixture("gc-finalizer-removal-suspended.json");
    for object in ["object", "oldObject"] {
        let o = &mut gc["request"][object]["metadata"];
        o["namespace"] = json!("initech-prod");
        o["labels"] = json!({"tenantry.dev/tenant": "initech", "tenantry.dev/tier": "business"});
    }
    gc["request"]["namespace"] = json!("initech-prod");
    let (allowed, message) = validate(&hook, &gc).await;
    assert!(
        allowed,
        "the garbage collector cleans up a suspended tenant: {message}"
    );
    let by_peter = as_user(gc.clone(), "peter", &["system:authenticated"]);
    let (allowed, message) = validate(&hook, &by_peter).await;
    assert!(
        !allowed && message.contains("[policy suspended-tenant]"),
        "{message}"
    );
    // The kubelet still issues tokens for initech's pods while they stop.
    let mut token = fixture("sa-token-kubelet.json");
    token["request"]["namespace"] = json!("initech-prod");
    let (allowed, message) = validate(&hook, &token).await;
    assert!(allowed, "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_service_namespaces_are_the_creators_and_pre_existing_ones_nobodys() {
    let hook = boundary_webhook("namespaces").await;
    // generateName: no name at mutation, the generated one at validation.
    let m = hook
        .post(
            "/mutate",
            &fixture("namespace-create-generatename-mutating.json"),
        )
        .await;
    let m: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(m["response"]["allowed"], true, "{m}");
    let mut review = fixture("namespace-create-generatename.json");
    {
        use base64::Engine as _;
        let ops = base64::engine::general_purpose::STANDARD
            .decode(m["response"]["patch"].as_str().expect("labels are stamped"))
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&ops).unwrap();
        json_patch::patch(&mut review["request"]["object"], &patch).unwrap();
    }
    assert_eq!(
        review["request"]["object"]["metadata"]["labels"]["tenantry.dev/tenant"],
        "globex"
    );
    let (allowed, message) = validate(&hook, &review).await;
    assert!(allowed, "{message}");
    let created = review["request"]["name"].as_str().unwrap().to_string();

    let config_map = |namespace: &str, uid: &str| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": "c", "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "bob", "groups": ["globex-devs", "system:authenticated"]},
            "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": namespace}},
            "dryRun": false}})
    };
    // Right after the create, before any watch could report it, bob writes into it.
    let r = hook.admit(&config_map(&created, "cm-1")).await;
    assert_eq!(
        r["allowed"], true,
        "bob writes into the namespace he just created: {r}"
    );
    // A namespace that matches globex's prefix but was never created through the webhook.
    let (allowed, message) = validate(&hook, &config_map("globex-legacy", "cm-2")).await;
    assert!(
        !allowed && message.contains("[policy cross-tenant-write]"),
        "{message}"
    );
    // A reserved name is nobody's, even created by a tenant.
    let mut reserved = fixture("namespace-create-generatename.json");
    reserved["request"]["name"] = json!("globex-system");
    reserved["request"]["object"]["metadata"]["name"] = json!("globex-system");
    let (allowed, message) = validate(&hook, &reserved).await;
    assert!(
        !allowed && message.contains("[policy cross-tenant-write]"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_cannot_reach_the_node_or_around_the_enforcer() {
    let hook = boundary_webhook("podsecurity").await;
    let pod = |name: &str, spec_patch: Value| {
        let mut r = pod_review("bob", "globex-prod", name, false);
        let spec = r["request"]["object"]["spec"].as_object_mut().unwrap();
        for (k, v) in spec_patch.as_object().unwrap() {
            spec.insert(k.clone(), v.clone());
        }
        r
    };
    let plain = hook.admit(&pod("plain", json!({}))).await;
    assert_eq!(plain["allowed"], true, "{plain}");
    for (name, patch, policy) in [
        (
            "priv",
            json!({"containers": [{"name": "web", "image": "nginx", "securityContext": {"privileged": true}}]}),
            "pod-privileged",
        ),
        (
            "root",
            json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
            "pod-host-path",
        ),
        (
            "port",
            json!({"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
            "pod-host-ports",
        ),
        (
            "netadmin",
            json!({"containers": [{"name": "web", "image": "nginx", "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}),
            "enforcer-capabilities",
        ),
        (
            "uid",
            json!({"containers": [{"name": "web", "image": "nginx", "securityContext": {"runAsUser": 1337}}]}),
            "enforcer-uid",
        ),
    ] {
        let r = hook.admit(&pod(name, patch)).await;
        assert_eq!(r["allowed"], false, "{name}: {r}");
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("[policy {policy}]")),
            "{name}: {r}"
        );
    }
    // kubectl debug with a privileged profile, through pods/ephemeralcontainers.
    let mut debug = fixture("pod-ephemeralcontainers.json");
    debug = as_user(debug, "alice", &["acme-devs", "system:authenticated"]);
    let (allowed, message) = validate(&hook, &debug).await;
    assert!(allowed, "an ordinary debug container: {message}");
    let containers = debug["request"]["object"]["spec"]["ephemeralContainers"]
        .as_array_mut()
        .unwrap();
    let last = containers.last_mut().unwrap();
    last["securityContext"] = json!({"privileged": true});
    let (allowed, message) = validate(&hook, &debug).await;
    assert!(
        !allowed && message.contains("[policy pod-privileged]"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_addresses_are_attributed_to_the_pods_that_hold_them() {
    let hook = boundary_webhook("endpoints").await;
    let slice = |uid: &str, address: &str| {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": uid, "kind": {"group": "discovery.k8s.io", "version": "v1", "kind": "EndpointSlice"},
            "resource": {"group": "discovery.k8s.io", "version": "v1", "resource": "endpointslices"},
            "name": uid, "namespace": "globex-prod", "operation": "CREATE",
            "userInfo": {"username": "bob", "groups": ["globex-devs", "system:authenticated"]},
            "object": {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": uid, "namespace": "globex-prod",
                    "labels": {"tenantry.dev/tenant": "globex", "tenantry.dev/tier": "free"}},
                "addressType": "IPv4", "endpoints": [{"addresses": [address]}], "ports": [{"port": 8080}]},
            "dryRun": false}})
    };
    let (allowed, message) = validate(&hook, &slice("steal", "10.244.1.5")).await;
    assert!(
        !allowed && message.contains("[policy cross-tenant-reference]"),
        "acme's pod: {message}"
    );
    let (allowed, message) = validate(&hook, &slice("own", "10.244.2.9")).await;
    assert!(allowed, "globex's own pod: {message}");
    let (allowed, message) = validate(&hook, &slice("guess", "10.244.77.1")).await;
    assert!(
        !allowed && message.contains("[policy reference-any-tenant]"),
        "{message}"
    );
    let (allowed, message) = validate(&hook, &slice("external", "192.0.2.10")).await;
    assert!(allowed, "an external address: {message}");
}

/// Writes `head` and `body` on a fresh TLS connection and returns the status line the server
/// answers with (or fails the test after `patience`).
async fn raw_exchange(hook: &Webhook, head: String, body: &[u8], patience: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = hook.client.connect_tls(hook.addr).await.unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    let mut reply = vec![0u8; 512];
    let n = tokio::time::timeout(patience, tls.read(&mut reply))
        .await
        .expect("the server answers without waiting for the rest of the body")
        .unwrap();
    String::from_utf8_lossy(&reply[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_bodies_and_idle_connections_cannot_hold_the_webhook() {
    let hook = start(
        "limits",
        TENANTS,
        &[
            "--max-body-bytes",
            "65536",
            "--body-read-timeout",
            "300ms",
            "--max-connections",
            "3",
        ],
    )
    .await;
    let head = |length: usize| {
        format!(
            "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // 16 MiB announced, one byte sent: refused from the header, not after 4 MiB have arrived.
    let status = raw_exchange(&hook, head(16 << 20), b"{", Duration::from_secs(5)).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    // A small body that never finishes arriving: refused once the read timeout passes.
    let status = raw_exchange(&hook, head(100), b"{\"kind\":", Duration::from_secs(5)).await;
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    // A body under the limit that arrives promptly is decided as ever.
    let review = serde_json::to_vec(&pod_review("alice", "acme-dev", "ok", true)).unwrap();
    let status = raw_exchange(&hook, head(review.len()), &review, Duration::from_secs(5)).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Connections beyond --max-connections wait for a slot instead of being served, so idle
    // ones cannot exhaust the process; a slot frees as soon as a connection closes.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(hook.client.connect_tls(hook.addr).await.unwrap());
    }
    let waiting = tokio::spawn({
        let client = hook.client.clone();
        let addr = hook.addr;
        async move { client.get(addr, "/healthz").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection is not served while three are held"
    );
    drop(idle.pop());
    let reply = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_view_serves_enforcers_only_what_traffic_needs_and_long_polls_for_changes() {
    let view_port = free_port().unwrap();
    let hook = start(
        "view",
        TENANTS,
        &["--traffic-view-listen", &format!("127.0.0.1:{view_port}")],
    )
    .await;
    let view: SocketAddr = ([127, 0, 0, 1], view_port).into();
    let (status, headers, body) = tokio::task::spawn_blocking(move || {
        tenantry_tests::raw_http::get(view, "/v1/traffic-view", &[])
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let etag = headers
        .iter()
        .find(|(k, _)| k == "etag")
        .map(|(_, v)| v.clone())
        .unwrap();
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["tenants"]["tenants"]["acme"]["tier"], "small");
    assert_eq!(served["tenants"]["tenants"]["acme"]["status"], "active");
    // Nothing a tenant may not know: members, namespaces, quotas, scheduling.
    for secret in [
        "alice",
        "bob",
        "acme-dev",
        "globex-prod",
        "tenant-small",
        "pods",
    ] {
        assert!(
            !body.contains(secret),
            "`{secret}` in the traffic view: {body}"
        );
    }

    // The same view: the poll waits, then says nothing changed.
    let tag = etag.clone();
    let started = Instant::now();
    let (status, _, _) = tokio::task::spawn_blocking(move || {
        tenantry_tests::raw_http::get(
            view,
            "/v1/traffic-view?wait=1",
            &[&format!("If-None-Match: {tag}")],
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 304);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A member-only change does not wake the poll; a suspension does, at once.
    let tag = etag.clone();
    let poll = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let reply = tenantry_tests::raw_http::get(
            view,
            "/v1/traffic-view?wait=20",
            &[&format!("If-None-Match: {tag}")],
        );
        (reply, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let members_only = TENANTS.replace("users: [alice]", "users: [alice, carol]");
    tenantry_certs::write_atomic(&hook.dir.join("tenants.yaml"), &members_only).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!poll.is_finished(), "a member change woke the fleet");
    let suspended = members_only.replace(
        "  acme:\n    tier: small\n",
        "  acme:\n    tier: small\n    status: suspended\n",
    );
    tenantry_certs::write_atomic(&hook.dir.join("tenants.yaml"), &suspended).unwrap();
    let ((status, headers, body), took) = poll.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["tenants"]["tenants"]["acme"]["status"], "suspended");
    assert!(headers.iter().any(|(k, v)| k == "etag" && *v != etag));
}
