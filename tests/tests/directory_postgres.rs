//! The Postgres tenant source against a real PostgreSQL started for each test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantry_tenancy::model::Status;
use tenantry_tenancy::{Directory, DirectoryStore, PostgresError, PostgresSource, TenantsFile};
use tenantry_tests::{Postgres, repo_root};

fn example() -> TenantsFile {
    let text = std::fs::read_to_string(repo_root().join("examples/tenants.yaml")).unwrap();
    tenantry_tenancy::source::parse_yaml(&text, Path::new("tenants.yaml")).unwrap()
}

async fn migrated(pg: &Postgres) -> PostgresSource {
    let source = PostgresSource::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    source.migrate().await.unwrap();
    source
}

/// A comparable summary of what a directory decides with.
fn summary(d: &Directory) -> Vec<String> {
    let mut out = Vec::new();
    for t in d.tenants() {
        let limits: Vec<String> = t
            .tier
            .limits
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push(format!(
            "{} tier={} status={} client={:?} ns={:?} limits={limits:?} sched={:?} rate={:?} pss={} net={} scale_down={} purge={:?}",
            t.id,
            t.tier.name,
            t.status,
            t.client.as_ref().map(|c| c.id.to_string()),
            t.namespaces,
            t.tier.scheduling,
            t.tier.rate_limit,
            t.tier.pod_security.as_str(),
            t.tier.network_isolation.as_str(),
            t.scale_down_on_suspend,
            t.purge_after,
        ));
        for team in &t.teams {
            out.push(format!("{}/{} ns={:?}", t.id, team.name, team.namespaces));
        }
    }
    for user in ["alice", "bob", "dana", "peter", "nobody"] {
        out.push(format!("user {user}: {:?}", d.user_memberships(user)));
    }
    out.push(format!(
        "group acme-devs: {:?}",
        d.group_memberships("acme-devs")
    ));
    out.push(format!(
        "sa acme-prod:deployer: {:?}",
        d.serviceaccount_memberships("acme-prod", "deployer")
    ));
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_yaml_loads_back_as_the_same_directory() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let from_pg = source.load().await.unwrap();
    let from_yaml = Directory::build(example(), 1).unwrap();
    assert_eq!(summary(&from_pg), summary(&from_yaml));
    assert!(from_pg.version() > 1, "every import bumps the version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_and_its_purge_time_round_trip_and_restoring_cancels_it() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    let mut file = example();
    let globex = file.tenants.get_mut("globex").unwrap();
    globex.status = Status::Deleted;
    globex.purge_after = Some("2026-12-30T09:15:00.123456Z".parse().unwrap());
    globex.scale_down_on_suspend = Some(false);
    source.import(&file).await.unwrap();
    let loaded = source.load().await.unwrap();
    assert_eq!(
        summary(&loaded),
        summary(&Directory::build(file, 1).unwrap())
    );
    let globex = loaded.tenant("globex").unwrap();
    assert!(
        globex.scaled_down(),
        "a deleted tenant is always scaled down"
    );
    assert!(globex.purge_due("2026-12-30T09:15:01Z".parse().unwrap()));
    assert!(!globex.purge_due("2026-12-30T09:14:59Z".parse().unwrap()));
    // initech is suspended on business, whose tier scales suspended tenants down.
    assert!(loaded.tenant("initech").unwrap().scaled_down());

    source
        .delete_tenant("acme", "2027-01-01T00:00:00Z".parse().unwrap())
        .await
        .unwrap();
    let acme = source.load().await.unwrap();
    let acme = acme.tenant("acme").unwrap();
    assert_eq!(acme.status, Status::Deleted);
    assert_eq!(
        acme.purge_after,
        Some("2027-01-01T00:00:00Z".parse().unwrap())
    );
    source.set_status("acme", Status::Active).await.unwrap();
    let restored = source.load().await.unwrap();
    assert_eq!(restored.tenant("acme").unwrap().purge_after, None);

    // Only a deleted tenant has a purge time, whoever writes the table.
    let refused = sqlx::query("UPDATE tenants SET purge_after = now() WHERE id = 'acme'")
        .execute(source.pool())
        .await;
    assert!(refused.is_err(), "an active tenant with a purge time");
    assert!(matches!(
        source.delete_tenant("hooli", jiff::Timestamp::now()).await,
        Err(PostgresError::UnknownTenant(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_idempotent_and_migrations_rerun_cleanly() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let first = summary(&source.load().await.unwrap());
    source.migrate().await.unwrap();
    source.import(&example()).await.unwrap();
    assert_eq!(summary(&source.load().await.unwrap()), first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_claimed_by_a_second_tenant_is_refused_and_nothing_changes() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let before = summary(&source.load().await.unwrap());
    let mut other = TenantsFile {
        tiers: example().tiers,
        ..TenantsFile::default()
    };
    let mut thief = example().tenants["globex"].clone();
    thief.namespaces = vec!["acme-prod".into()];
    other.tenants.insert("hooli".into(), thief);
    let err = source.import(&other).await.unwrap_err();
    assert!(
        matches!(&err, PostgresError::NamespaceTaken { namespace, owner } if namespace == "acme-prod" && owner == "acme"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "namespace `acme-prod` already belongs to tenant `acme`"
    );
    assert_eq!(
        summary(&source.load().await.unwrap()),
        before,
        "the failed import rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_status_and_membership_changes_reach_the_snapshot_quickly() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let store = Arc::new(DirectoryStore::unloaded());
    let watcher = tokio::spawn(source.clone().watch(store.clone(), Duration::from_secs(30)));
    wait_until(&store, Duration::from_secs(10), |d| {
        d.tenant("acme").is_some()
    })
    .await;

    // Tier change, committed through the same API `tenantry tenants set-tier` uses.
    let started = Instant::now();
    source.set_tier("globex", "business").await.unwrap();
    wait_until(&store, Duration::from_secs(5), |d| {
        &*d.tenant("globex").unwrap().tier.name == "business"
    })
    .await;
    let tier_delay = started.elapsed();

    let started = Instant::now();
    source
        .set_status("globex", Status::Suspended)
        .await
        .unwrap();
    wait_until(&store, Duration::from_secs(5), |d| {
        d.tenant("globex").unwrap().is_suspended()
    })
    .await;
    let status_delay = started.elapsed();

    // Membership and namespace changes made with plain SQL, as an operator's tooling would.
    let started = Instant::now();
    sqlx::query("INSERT INTO members (tenant, kind, name) VALUES ('globex', 'user', 'carol')")
        .execute(source.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO tenant_namespaces (namespace, tenant) VALUES ('globex-staging', 'globex')",
    )
    .execute(source.pool())
    .await
    .unwrap();
    wait_until(&store, Duration::from_secs(5), |d| {
        !d.user_memberships("carol").is_empty() && d.namespace_owner("globex-staging").is_some()
    })
    .await;
    let sql_delay = started.elapsed();
    eprintln!(
        "directory change → snapshot: tier {tier_delay:?}, status {status_delay:?}, membership+namespace {sql_delay:?}"
    );
    assert!(store.freshness().last_error.is_none());
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_listener_is_disconnected_are_caught_up() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let store = Arc::new(DirectoryStore::unloaded());
    let watcher = tokio::spawn(
        source
            .clone()
            .watch(store.clone(), Duration::from_millis(500)),
    );
    wait_until(&store, Duration::from_secs(10), |d| {
        d.tenant("acme").is_some()
    })
    .await;

    // Kill the LISTEN connection and change data before it can reconnect.
    let admin = PostgresSource::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' OR state = 'idle'")
        .execute(admin.pool())
        .await
        .ok();
    admin.set_tier("acme", "free").await.unwrap();
    wait_until(&store, Duration::from_secs(10), |d| {
        &*d.tenant("acme").unwrap().tier.name == "free"
    })
    .await;
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_data_in_postgres_keeps_the_last_good_snapshot_and_reports_why() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let store = Arc::new(DirectoryStore::unloaded());
    let watcher = tokio::spawn(
        source
            .clone()
            .watch(store.clone(), Duration::from_millis(200)),
    );
    wait_until(&store, Duration::from_secs(10), |d| {
        d.tenant("acme").is_some()
    })
    .await;
    let good_version = store.current().version();

    sqlx::query("UPDATE tier_limits SET quantity = '4GB' WHERE tier = 'free' AND resource = 'requests.memory'")
        .execute(source.pool())
        .await
        .unwrap();
    let direct = source.load().await.unwrap_err().to_string();
    assert!(
        direct.contains("tiers.free.limits.requests.memory: `4GB` is not a Kubernetes quantity"),
        "{direct}"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    while store.freshness().last_error.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reported = store
        .freshness()
        .last_error
        .expect("the failure is recorded");
    assert!(reported.contains("4GB"), "{reported}");
    assert_eq!(
        store.current().version(),
        good_version,
        "the last good snapshot stays in place"
    );
    assert!(store.current().tenant("globex").is_some());
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_clear_error() {
    let port = tenantry_tests::free_port().unwrap();
    let url = format!("postgres://tenantry:secret@127.0.0.1:{port}/tenantry");
    let err = PostgresSource::connect(&url, Duration::from_secs(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "cannot connect to PostgreSQL at `postgres://tenantry:***@127.0.0.1:{port}/tenantry`"
        )),
        "{err}"
    );
    assert!(
        !err.contains("secret"),
        "passwords never reach messages: {err}"
    );
    assert!(
        err.to_lowercase().contains("refused"),
        "the cause, not a pool timeout: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_added_and_removed_and_a_claimed_one_is_refused() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    source
        .add_namespace("globex", "globex-staging")
        .await
        .unwrap();
    source
        .add_namespace("globex", "globex-staging")
        .await
        .unwrap(); // idempotent
    let d = source.load().await.unwrap();
    assert!(
        d.tenant("globex")
            .unwrap()
            .namespaces
            .contains(&"globex-staging".to_string())
    );
    let err = source
        .add_namespace("globex", "acme-prod")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("claimed by two tenants"), "{err}");
    assert!(matches!(
        source.add_namespace("nobody", "x").await.unwrap_err(),
        PostgresError::UnknownTenant(_)
    ));
    assert!(
        source
            .load()
            .await
            .unwrap()
            .tenant("acme")
            .unwrap()
            .namespaces
            .contains(&"acme-prod".to_string())
    );
    assert!(
        source
            .remove_namespace("globex", "globex-staging")
            .await
            .unwrap()
    );
    assert!(
        !source
            .remove_namespace("globex", "globex-staging")
            .await
            .unwrap()
    );
    let d = source.load().await.unwrap();
    assert!(
        !d.tenant("globex")
            .unwrap()
            .namespaces
            .contains(&"globex-staging".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_database_says_what_to_run() {
    let pg = Postgres::start().unwrap();
    let source = PostgresSource::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let err = source.load().await.unwrap_err();
    assert!(matches!(err, PostgresError::NotMigrated), "{err}");
    assert!(err.to_string().contains("tenantry migrate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_recovers_after_postgres_restarts() {
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let store = Arc::new(DirectoryStore::unloaded());
    let watcher = tokio::spawn(
        source
            .clone()
            .watch(store.clone(), Duration::from_millis(300)),
    );
    wait_until(&store, Duration::from_secs(10), |d| {
        d.tenant("acme").is_some()
    })
    .await;

    pg.stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.freshness().last_error.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        store.freshness().last_error.is_some(),
        "the outage is reported"
    );
    assert!(
        store.current().tenant("acme").is_some(),
        "decisions keep the last snapshot"
    );

    pg.restart().unwrap();
    let admin = PostgresSource::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    admin.set_status("acme", Status::Suspended).await.unwrap();
    wait_until(&store, Duration::from_secs(15), |d| {
        d.tenant("acme").unwrap().is_suspended()
    })
    .await;
    assert!(store.freshness().last_error.is_none(), "recovered");
    watcher.abort();
}

async fn wait_until(store: &DirectoryStore, timeout: Duration, done: impl Fn(&Directory) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if done(&store.current()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot did not change within {timeout:?}: {:?}",
            store.freshness()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_holds_exactly_one_connection() {
    let pg = Postgres::start().unwrap();
    let setup = migrated(&pg).await;
    setup.import(&example()).await.unwrap();
    setup.pool().close().await;
    let store = Arc::new(DirectoryStore::unloaded());
    let watcher = tokio::spawn(
        PostgresSource::lazy(&pg.url())
            .unwrap()
            .watch(store.clone(), Duration::from_millis(100)),
    );
    wait_until(&store, Duration::from_secs(10), |d| {
        d.tenant("acme").is_some()
    })
    .await;
    // Let a few resync checks and a reload run first.
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg.url())
        .await
        .unwrap();
    sqlx::query("UPDATE tenants SET tier = 'business' WHERE id = 'globex'")
        .execute(&admin)
        .await
        .unwrap();
    wait_until(&store, Duration::from_secs(5), |d| {
        &*d.tenant("globex").unwrap().tier.name == "business"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(others, 1, "the watcher's single connection");
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_with_roles_reroled_and_removed() {
    use tenantry_tenancy::Role;
    let pg = Postgres::start().unwrap();
    let source = migrated(&pg).await;
    source.import(&example()).await.unwrap();
    let store = Arc::new(DirectoryStore::unloaded());
    let watcher = tokio::spawn(source.clone().watch(store.clone(), Duration::from_secs(30)));
    wait_until(&store, Duration::from_secs(10), |d| {
        d.tenant("acme").is_some()
    })
    .await;

    // Through the same API `tenantry tenants add-member` uses.
    source
        .set_member("globex", None, "user", "erin", Role::Viewer)
        .await
        .unwrap();
    source
        .set_member(
            "acme",
            Some("backend"),
            "group",
            "backend-leads",
            Role::Admin,
        )
        .await
        .unwrap();
    wait_until(&store, Duration::from_secs(5), |d| {
        d.user_memberships("erin").first().map(|m| m.role) == Some(Role::Viewer)
            && d.group_memberships("backend-leads")
                .first()
                .is_some_and(|m| m.role == Role::Admin && m.team.as_deref() == Some("backend"))
    })
    .await;
    // Running it again changes the role: one row per identity.
    source
        .set_member("globex", None, "user", "erin", Role::Admin)
        .await
        .unwrap();
    wait_until(&store, Duration::from_secs(5), |d| {
        d.user_memberships("erin")
            .iter()
            .map(|m| m.role)
            .collect::<Vec<_>>()
            == [Role::Admin]
    })
    .await;

    // Refused, and nothing changes: an unknown tenant or team, a malformed service account.
    let err = source
        .set_member("nobody", None, "user", "x", Role::Developer)
        .await
        .unwrap_err();
    assert!(matches!(err, PostgresError::UnknownTenant(_)), "{err}");
    let err = source
        .set_member("acme", Some("frontend"), "user", "x", Role::Developer)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "tenant `acme` has no team `frontend`");
    let err = source
        .set_member(
            "acme",
            None,
            "serviceaccount",
            "no-namespace",
            Role::Developer,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-namespace"), "{err}");
    assert!(
        source
            .load()
            .await
            .unwrap()
            .serviceaccount_memberships("", "no-namespace")
            .is_empty()
    );

    assert!(
        source
            .remove_member("globex", None, "user", "erin")
            .await
            .unwrap()
    );
    assert!(
        !source
            .remove_member("globex", None, "user", "erin")
            .await
            .unwrap()
    );
    wait_until(&store, Duration::from_secs(5), |d| {
        d.user_memberships("erin").is_empty()
    })
    .await;
    watcher.abort();
}
