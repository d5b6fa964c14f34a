//! The controller's per-tenant Redis users against the enforcer's real lease script: a tenant's
//! credential runs the script on its own budgets, and nothing it holds reaches another tenant's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tenantry_controller::ratelimit::{self, RateLimitAccess};
use tenantry_enforcer::config::RedisFailure;
use tenantry_enforcer::metrics::Metrics;
use tenantry_enforcer::ratelimit::{Limit, Limiter, MonotonicClock, Outcome, RedisStore, Store};
use tenantry_tests::Redis;

fn limiter(url: &str, owner: &str, metrics: &Arc<Metrics>) -> Limiter {
    let store = RedisStore::new(url, owner, Duration::from_millis(500), metrics.clone()).unwrap();
    Limiter::new(
        Store::Redis(Box::new(store)),
        Arc::new(MonotonicClock::default()),
        RedisFailure::Closed,
        metrics.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_script_runs_with_a_tenants_own_credential_and_no_other() {
    let redis = Redis::start_with(&["--requirepass", "admin-secret"]).unwrap();
    let access = RateLimitAccess {
        address: format!("127.0.0.1:{}", redis.port),
        admin_password: "admin-secret".into(),
    };
    let tenants: BTreeSet<String> = ["acme", "globex"].map(String::from).into();
    ratelimit::provision(&access, &tenants).await.unwrap();

    // acme's pods, with acme's credential: callers into acme are limited through Redis.
    let metrics = Arc::new(Metrics::new());
    let acme = limiter(&access.tenant_url("acme"), "acme", &metrics);
    for caller in ["acme", "globex"] {
        let outcome = acme.check(&Arc::from(caller), Limit::new(100, 100)).await;
        assert!(
            matches!(outcome, Outcome::Allowed { .. }),
            "{caller} into acme: {outcome:?}"
        );
    }
    assert_eq!(metrics.redis_errors.get(), 0);

    // The same credential posing as globex's pods (its keyspace): refused, so refused requests
    // (closed mode), never someone else's budget spent.
    let metrics = Arc::new(Metrics::new());
    let posing = limiter(&access.tenant_url("acme"), "globex", &metrics);
    let outcome = posing
        .check(&Arc::from("globex"), Limit::new(100, 100))
        .await;
    assert!(
        matches!(outcome, Outcome::Unavailable { .. }),
        "{outcome:?}"
    );
    assert!(metrics.redis_errors.get() >= 1);
}
