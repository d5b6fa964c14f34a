//! Tenant data from a real PostgreSQL: suspending a tenant there turns its requests into 403
//! within one second (LISTEN/NOTIFY, no polling on the request path).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tenantry_tenancy::{PostgresSource, Status};
use tenantry_tests::Postgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_in_postgres_is_enforced_within_one_second() {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()
        .unwrap();
    let source = PostgresSource::connect(&pg.url(), Duration::from_secs(10))
        .await
        .unwrap();
    source.migrate().await.unwrap();
    let file = tenantry_tenancy::source::parse_yaml(
        tenantry_tenancy::embedded::TENANTS_YAML,
        std::path::Path::new("tenants.yaml"),
    )
    .unwrap();
    source.import(&file).await.unwrap();

    let app = echo_upstream();
    let url = pg.url();
    let e = tokio::task::spawn_blocking(move || Enforcer::start("acme", app, &["--tenants", &url]))
        .await
        .unwrap();
    let addr = e.addr;
    let call = move || get(addr, "/", &["X-Tenant-ID: acme"]);
    assert_eq!(tokio::task::spawn_blocking(call).await.unwrap().0, 200);

    source.set_status("acme", Status::Suspended).await.unwrap();
    let changed = Instant::now();
    let (status, body) = tokio::task::spawn_blocking(move || {
        loop {
            let (status, _, body) = call();
            if status != 200 || changed.elapsed() > Duration::from_secs(3) {
                return (status, body);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let took = changed.elapsed();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("suspended"), "{body}");
    assert!(took <= Duration::from_secs(1), "took {took:?}");

    source.set_status("acme", Status::Active).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while tokio::task::spawn_blocking(call).await.unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "resuming was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(e);
}
