//! The `tenantry-controller` binary against the in-process API server: it takes the Lease,
//! provisions the directory from a tenants file, follows the file as it changes (a suspension
//! scales workloads down), and reports on /readyz and /metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tenantry_tests::api_server::ApiServer;
use tenantry_tests::{KillOnDrop, free_port, repo_root};

/// `(status, body)` of a GET to the controller's metrics port, `None` while it does not listen.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, _, body) =
        tenantry_tests::raw_http::try_raw(addr, &format!("GET {path} HTTP/1.1"), &[]).ok()?;
    Some((status, body))
}

fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn the_controller_provisions_follows_the_directory_and_reports() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = ApiServer::new();
    api.event(
        "/apis/apps/v1/deployments",
        "ADDED",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop", "namespace": "globex-prod"},
            "spec": {"replicas": 2}}),
    );
    let addr = runtime.block_on(api.serve()).unwrap();
    let dir = std::env::temp_dir().join(format!("tenantry-controller-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    tenantry_tests::api_server::write_kubeconfig(addr, &kubeconfig).unwrap();
    let example = std::fs::read_to_string(repo_root().join("examples/tenants.yaml")).unwrap();
    let tenants = dir.join("tenants.yaml");
    write_atomically(&tenants, &example);
    let metrics_port = free_port().unwrap();
    let _controller = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tenantry-controller"))
            .arg(format!("--tenants={}", tenants.display()))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
            .arg("--identity=test-replica")
            .env("TENANTRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    eventually("it holds the Lease and provisions the directory", || {
        api.object(
            "/apis/networking.k8s.io/v1/networkpolicies",
            "acme-prod",
            "tenantry-isolation",
        )
        .is_some()
    });
    let lease = api
        .object(
            "/apis/coordination.k8s.io/v1/leases",
            "tenantry-system",
            "tenantry-controller",
        )
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "test-replica");
    eventually("the tenants are mirrored", || {
        api.objects("/apis/tenantry.dev/v1alpha1/tenants").len() == 3
    });
    eventually("it reports ready as the leader", || {
        http_get(metrics_port, "/readyz")
            .is_some_and(|(code, body)| code == 200 && body.contains("\"leader\":true"))
    });
    let (_, metrics) = http_get(metrics_port, "/metrics").unwrap();
    for line in [
        "tenantry_controller_reconciles_total{result=\"ok\"}",
        "tenantry_controller_leader 1",
        "tenantry_controller_objects_applied_total",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // The directory changes: globex is suspended on a tier that scales down.
    let suspended = example.replace(
        "  globex:\n    tier: free\n",
        "  globex:\n    tier: free\n    status: suspended\n    scale_down_on_suspend: true\n",
    );
    assert_ne!(suspended, example);
    write_atomically(&tenants, &suspended);
    eventually(
        "the suspended tenant's Deployment is scaled to zero",
        || {
            api.object("/apis/apps/v1/deployments", "globex-prod", "shop")
                .is_some_and(|d| d["spec"]["replicas"] == 0)
        },
    );
    eventually("the lifecycle is counted", || {
        http_get(metrics_port, "/metrics").is_some_and(|(_, m)| {
            m.contains("tenantry_controller_lifecycle_actions_total{action=\"scale_down\"} 1")
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
}
