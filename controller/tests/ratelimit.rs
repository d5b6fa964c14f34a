//! Per-tenant rate-limit credentials against a real Redis with an admin password: each tenant's
//! user reaches its own keyspace with the lease script's commands and nothing else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::BTreeSet;

use tenantry_controller::ratelimit::{self, RateLimitAccess};
use tenantry_tenancy::redis_store::RedisTarget;
use tenantry_tests::Redis;

async fn run(url: &str, key: &str) -> Result<i64, redis::RedisError> {
    let mut conn = RedisTarget::parse(url).unwrap().multiplexed().await?;
    redis::Script::new("redis.call('HSET', KEYS[1], 'tokens', 1) return 1")
        .key(key)
        .invoke_async(&mut conn)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_credential_reaches_its_own_budgets_only() {
    let redis = Redis::start_with(&["--requirepass", "admin-secret"]).unwrap();
    let access = RateLimitAccess {
        address: format!("127.0.0.1:{}", redis.port),
        admin_password: "admin-secret".into(),
    };
    let tenants: BTreeSet<String> = ["acme", "globex"].map(String::from).into();
    assert_eq!(ratelimit::provision(&access, &tenants).await.unwrap(), 0);
    let acme = access.tenant_url("acme");

    // The lease script on acme's keyspace: callers into acme's services.
    assert_eq!(
        run(&acme, "tenantry:ratelimit:{acme}:acme").await.unwrap(),
        1
    );
    assert_eq!(
        run(&acme, "tenantry:ratelimit:{acme}:globex")
            .await
            .unwrap(),
        1
    );
    // globex's budgets, quota reservations, or anything else: refused.
    for other in [
        "tenantry:ratelimit:{globex}:globex",
        "tenantry:ratelimit:{globex}:acme",
        "tenantry:reservations:{acme}:expiry",
    ] {
        let err = run(&acme, other).await.unwrap_err();
        assert!(
            err.to_string().contains("NOPERM") || err.to_string().contains("permission"),
            "{other}: {err}"
        );
    }
    let mut conn = RedisTarget::parse(&acme)
        .unwrap()
        .multiplexed()
        .await
        .unwrap();
    for command in [
        vec!["FLUSHALL"],
        vec!["KEYS", "*"],
        vec!["DEL", "tenantry:ratelimit:{acme}:acme"],
        vec!["CONFIG", "GET", "*"],
    ] {
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let err = cmd
            .query_async::<redis::Value>(&mut conn)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("NOPERM") || err.to_string().contains("permission"),
            "{command:?}: {err}"
        );
    }
    // A wrong password is no way in.
    let wrong = acme.replace(&access.password("acme"), &access.password("globex"));
    assert!(run(&wrong, "tenantry:ratelimit:{acme}:acme").await.is_err());

    // globex leaves the directory: its user goes; acme's stays as it was.
    let remaining: BTreeSet<String> = ["acme"].map(String::from).into();
    assert_eq!(ratelimit::provision(&access, &remaining).await.unwrap(), 1);
    assert!(
        run(
            &access.tenant_url("globex"),
            "tenantry:ratelimit:{globex}:globex"
        )
        .await
        .is_err()
    );
    assert_eq!(
        run(&acme, "tenantry:ratelimit:{acme}:acme").await.unwrap(),
        1
    );
}
