//! A fleet of real enforcer processes following one webhook's traffic view, with one Postgres at
//! its default `max_connections` (100) behind the webhook: the data path injected sidecars use.
//!
//! It checks that the fleet becomes ready, that Postgres holds only the webhook's connection
//! however many enforcers run, that no enforcer holds a credential, and that a suspension
//! committed in Postgres is enforced (403) by every enforcer. It prints the figures
//! `BENCHMARKS.md` records: `TENANTRY_FLEET_SIZE=300 bench/fleet.sh` runs it at scale (the suite
//! runs 20). Timing is reported, not asserted beyond a generous functional bound.
//!
//! The rate limit is per pod here (no Redis): this measures the directory's data path.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tenantry_tenancy::{PostgresSource, Status};
use tenantry_tests::{KillOnDrop, Postgres, free_port, repo_root, wait_for_port};

/// `tenantry-enforcer` and `tenantry-webhook`: this build's, or those in
/// `TENANTRY_FLEET_BIN_DIR` (`bench/fleet.sh` measures the release build that way).
fn binary(name: &str) -> PathBuf {
    let path = match std::env::var_os("TENANTRY_FLEET_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(BIN).with_file_name(name),
    };
    assert!(
        path.is_file(),
        "{} not found: the fleet test drives the real binaries (cargo build --workspace)",
        path.display()
    );
    path
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn a_fleet_follows_one_webhooks_traffic_view_and_postgres_sees_only_the_webhook() {
    let size: usize = std::env::var("TENANTRY_FLEET_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pg = Postgres::start().unwrap();
    let source = runtime.block_on(async {
        let source = PostgresSource::connect(&pg.url(), Duration::from_secs(5))
            .await
            .unwrap();
        source.migrate().await.unwrap();
        let text = std::fs::read_to_string(repo_root().join("examples/tenants.yaml")).unwrap();
        let file =
            tenantry_tenancy::source::parse_yaml(&text, std::path::Path::new("tenants.yaml"))
                .unwrap();
        source.import(&file).await.unwrap();
        source
    });

    // The webhook: Postgres behind it, the traffic view in front of the fleet.
    let dir = temp_dir("fleet");
    let generated = tenantry_certs::generate(&["127.0.0.1".to_string()], 1).unwrap();
    std::fs::write(dir.join("tls.crt"), &generated.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &generated.key).unwrap();
    let view_port = free_port().unwrap();
    let ops_port = free_port().unwrap();
    let _webhook = KillOnDrop(
        Command::new(binary("tenantry-webhook"))
            .arg(format!("--listen=127.0.0.1:{}", free_port().unwrap()))
            .arg(format!("--metrics-listen=127.0.0.1:{ops_port}"))
            .arg(format!("--traffic-view-listen=127.0.0.1:{view_port}"))
            .arg(format!("--tls-cert={}", dir.join("tls.crt").display()))
            .arg(format!("--tls-key={}", dir.join("tls.key").display()))
            .arg(format!("--tenants={}", pg.url()))
            .arg(format!(
                "--policies={}",
                repo_root().join("policies").display()
            ))
            .env("TENANTRY_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], view_port)),
        Duration::from_secs(30),
    )
    .unwrap();
    let view = format!("http://127.0.0.1:{view_port}/v1/traffic-view");

    // The fleet: enforcers of acme's pods, each with nothing but the view's URL.
    let app = echo_upstream();
    let started = Instant::now();
    let fleet: Vec<Enforcer> = (0..size)
        .map(|_| {
            Enforcer::start_with(
                "acme",
                app,
                &["--tenants", &view, "--workers", "1"],
                Command::new(binary("tenantry-enforcer")),
            )
        })
        .collect();
    let ready_in = started.elapsed();
    for e in &fleet {
        let (status, _, body) = get(e.addr, "/", &["X-Tenant-ID: acme"]);
        assert_eq!(status, 200, "{body}");
    }
    let rss: Vec<u64> = fleet.iter().map(Enforcer::rss_kb).collect();
    let connections: i64 = runtime.block_on(async {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .fetch_one(source.pool())
        .await
        .unwrap()
    });
    // The webhook's watcher: one connection. (The test's own pool is excluded above only for
    // its querying backend; an idle pooled one may remain.)
    assert!(
        connections <= 3,
        "{size} enforcers, yet Postgres serves {connections} client connections"
    );

    // Suspend acme in Postgres; every enforcer must refuse acme's traffic.
    let committed = Instant::now();
    runtime
        .block_on(source.set_status("acme", Status::Suspended))
        .unwrap();
    let mut pending: Vec<usize> = (0..fleet.len()).collect();
    let mut took = vec![Duration::ZERO; fleet.len()];
    while !pending.is_empty() {
        assert!(
            committed.elapsed() < Duration::from_secs(30),
            "{} enforcers still admit a suspended tenant after 30 s",
            pending.len()
        );
        pending.retain(|&i| {
            let (status, _, _) = get(fleet[i].addr, "/", &["X-Tenant-ID: acme"]);
            if status == 403 {
                took[i] = committed.elapsed();
                false
            } else {
                true
            }
        });
    }
    took.sort();
    let mean_rss = rss.iter().sum::<u64>() / rss.len() as u64;
    eprintln!(
        "fleet of {size}: ready in {ready_in:?}; Postgres client connections {connections}; \
         RSS per enforcer mean {mean_rss} kB, max {} kB; suspension → 403 at every enforcer: \
         p50 {:?}, p99 {:?}, max {:?} (includes this test's polling of each in turn)",
        rss.iter().max().unwrap(),
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took.last().unwrap()
    );
    // No enforcer was given anything secret.
    for e in &fleet {
        let environ = std::fs::read(format!("/proc/{}/cmdline", e.pid())).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&environ).contains("postgres://"));
    }
}
