//! The PostgreSQL tenant source: migrations, snapshot loading, LISTEN/NOTIFY, and the writes
//! behind `tenantry tenants …`.
//!
//! A snapshot is read in one `REPEATABLE READ` transaction, so it is never a mix of two states.
//! Every change to a directory table bumps `directory_version` and notifies
//! `tenantry_directory`; the watcher reloads on notification and also re-checks the version on a
//! timer, because a notification sent while the listener was reconnecting is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::directory::{Directory, DirectoryError};
use crate::model::{
    ClientSpec, Identities, Members, QuantitySpec, RateLimit, Role, Scheduling, Status, TeamSpec,
    TenantSpec, TenantsFile, TierSpec,
};
use crate::source::redact_url;
use crate::store::DirectoryStore;

/// The channel every directory change is announced on.
pub const CHANNEL: &str = "tenantry_directory";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Error)]
pub enum PostgresError {
    #[error("cannot connect to PostgreSQL at `{url}`: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("PostgreSQL failed while {doing}: {source}")]
    Query {
        doing: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database has no Tenantry tables yet: run `tenantry migrate --tenants <url>` first"
    )]
    NotMigrated,
    #[error("unknown tenant `{0}`")]
    UnknownTenant(String),
    #[error("unknown tier `{0}`")]
    UnknownTier(String),
    #[error("tenant `{tenant}` has no team `{team}`")]
    UnknownTeam { tenant: String, team: String },
    #[error("column `{column}` holds invalid JSON: {source}")]
    Json {
        column: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("column `{column}` holds an invalid value: {message}")]
    Column {
        column: &'static str,
        message: String,
    },
    #[error("the directory in PostgreSQL is invalid: {0}")]
    Invalid(#[from] DirectoryError),
    #[error("namespace `{namespace}` already belongs to tenant `{owner}`")]
    NamespaceTaken { namespace: String, owner: String },
}

fn query_error(doing: &'static str) -> impl FnOnce(sqlx::Error) -> PostgresError {
    move |source| {
        // 42P01: undefined_table
        let missing_table = source
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code == "42P01");
        if missing_table {
            PostgresError::NotMigrated
        } else {
            PostgresError::Query { doing, source }
        }
    }
}

/// A connection pool to the tenant database.
#[derive(Clone, Debug)]
pub struct PostgresSource {
    pool: PgPool,
    url: String,
}

impl PostgresSource {
    /// Connects with a small pool: a webhook or enforcer needs one connection for LISTEN and one
    /// for reloads, never one per request.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, PostgresError> {
        let failed = |source| PostgresError::Connect {
            url: redact_url(url),
            source,
        };
        // One direct connection first: a pool retries until its timeout and then reports only
        // "pool timed out", where this says why at once (connection refused, unknown host,
        // password authentication failed).
        match tokio::time::timeout(timeout, PgConnection::connect(url)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
            }
            Ok(Err(source)) => return Err(failed(source)),
            Err(_) => {
                let silent = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", timeout.as_secs_f32()),
                );
                return Err(failed(sqlx::Error::Io(silent)));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(timeout)
            .connect(url)
            .await
            .map_err(|source| PostgresError::Connect {
                url: redact_url(url),
                source,
            })?;
        Ok(PostgresSource {
            pool,
            url: url.to_string(),
        })
    }

    /// A source that opens no connection until used: what a watcher needs, since
    /// [`PostgresSource::watch`] keeps its own single connection. Fails only on a malformed URL.
    pub fn lazy(url: &str) -> Result<Self, PostgresError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy(url)
            .map_err(|source| PostgresError::Connect {
                url: redact_url(url),
                source,
            })?;
        Ok(PostgresSource {
            pool,
            url: url.to_string(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or upgrades the tables. Safe to run repeatedly and from several replicas.
    pub async fn migrate(&self) -> Result<(), PostgresError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The current directory version, cheap enough to poll.
    pub async fn version(&self) -> Result<u64, PostgresError> {
        let v: i64 = sqlx::query_scalar("SELECT version FROM directory_version")
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("reading the directory version"))?;
        Ok(v as u64)
    }

    /// Reads one consistent snapshot and validates it.
    pub async fn load(&self) -> Result<Directory, PostgresError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(query_error("starting a snapshot"))?;
        let (file, version) = read_file(&mut *tx).await?;
        tx.commit()
            .await
            .map_err(query_error("ending the snapshot"))?;
        Ok(Directory::build(file, version)?)
    }

    /// Loads a tenants file into the database: tiers, clients and the listed tenants are created
    /// or replaced; tenants not in the file are left alone. Running it twice changes nothing.
    /// The result is validated as a whole before it commits.
    pub async fn import(&self, file: &TenantsFile) -> Result<(), PostgresError> {
        Directory::build(file.clone(), 0)?;
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting the import"))?;
        for (name, tier) in &file.tiers {
            write_tier(&mut tx, name, tier).await?;
        }
        for (id, client) in &file.clients {
            sqlx::query(
                "INSERT INTO clients (id, display_name) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name",
            )
            .bind(id)
            .bind(&client.display_name)
            .execute(&mut *tx)
            .await
            .map_err(query_error("writing a client"))?;
        }
        for (id, tenant) in &file.tenants {
            write_tenant(&mut tx, id, tenant).await?;
        }
        let (merged, _) = read_file(&mut *tx).await?;
        Directory::build(merged, 0)?;
        tx.commit()
            .await
            .map_err(query_error("committing the import"))?;
        Ok(())
    }

    /// Moves a tenant to another tier.
    pub async fn set_tier(&self, tenant: &str, tier: &str) -> Result<(), PostgresError> {
        let exists: Option<String> = sqlx::query_scalar("SELECT name FROM tiers WHERE name = $1")
            .bind(tier)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("looking up the tier"))?;
        if exists.is_none() {
            return Err(PostgresError::UnknownTier(tier.to_string()));
        }
        self.update_tenant("UPDATE tenants SET tier = $2 WHERE id = $1", tenant, tier)
            .await
    }

    /// Suspends or resumes a tenant (a deleted one is restored, its purge cancelled); for
    /// deletion see [`PostgresSource::delete_tenant`].
    pub async fn set_status(&self, tenant: &str, status: Status) -> Result<(), PostgresError> {
        self.update_tenant(
            "UPDATE tenants SET status = $2, purge_after = NULL WHERE id = $1",
            tenant,
            status.as_str(),
        )
        .await
    }

    /// Soft-deletes a tenant: everything it does is refused from now on, and the provisioning
    /// controller deletes its namespaces at `purge_after`.
    pub async fn delete_tenant(
        &self,
        tenant: &str,
        purge_after: jiff::Timestamp,
    ) -> Result<(), PostgresError> {
        self.update_tenant(
            "UPDATE tenants SET status = 'deleted', purge_after = $2::timestamptz WHERE id = $1",
            tenant,
            &purge_after.to_string(),
        )
        .await
    }

    /// Adds (or re-roles) a member of `tenant`, or of its `team`. `kind` is `user`, `group` or
    /// `serviceaccount` (`namespace:name`).
    pub async fn set_member(
        &self,
        tenant: &str,
        team: Option<&str>,
        kind: &str,
        name: &str,
        role: Role,
    ) -> Result<(), PostgresError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        require_tenant(&mut tx, tenant).await?;
        if let Some(team) = team {
            let found: Option<String> =
                sqlx::query_scalar("SELECT name FROM teams WHERE tenant = $1 AND name = $2")
                    .bind(tenant)
                    .bind(team)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(query_error("looking up the team"))?;
            if found.is_none() {
                return Err(PostgresError::UnknownTeam {
                    tenant: tenant.to_string(),
                    team: team.to_string(),
                });
            }
        }
        sqlx::query(
            "INSERT INTO members (tenant, team, kind, name, role) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, team, kind, name) DO UPDATE SET role = EXCLUDED.role",
        )
        .bind(tenant)
        .bind(team.unwrap_or(""))
        .bind(kind)
        .bind(name)
        .bind(role.as_str())
        .execute(&mut *tx)
        .await
        .map_err(query_error("writing a member"))?;
        commit_if_valid(tx).await
    }

    /// Removes a member of `tenant` (or of its `team`); returns whether there was one.
    pub async fn remove_member(
        &self,
        tenant: &str,
        team: Option<&str>,
        kind: &str,
        name: &str,
    ) -> Result<bool, PostgresError> {
        let done = sqlx::query(
            "DELETE FROM members WHERE tenant = $1 AND team = $2 AND kind = $3 AND name = $4",
        )
        .bind(tenant)
        .bind(team.unwrap_or(""))
        .bind(kind)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(query_error("removing a member"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives `tenant` a namespace (idempotent). A namespace another tenant holds is refused,
    /// and so is a name the directory would refuse; nothing changes then.
    pub async fn add_namespace(&self, tenant: &str, namespace: &str) -> Result<(), PostgresError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(query_error("starting a transaction"))?;
        require_tenant(&mut tx, tenant).await?;
        let holder: Option<String> =
            sqlx::query_scalar("SELECT tenant FROM tenant_namespaces WHERE namespace = $1")
                .bind(namespace)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_error("looking up the namespace"))?;
        match holder {
            Some(holder) if holder == tenant => return Ok(()),
            Some(holder) => {
                return Err(DirectoryError::NamespaceClaimedTwice {
                    namespace: namespace.to_string(),
                    first: holder,
                    second: tenant.to_string(),
                }
                .into());
            }
            None => {}
        }
        sqlx::query("INSERT INTO tenant_namespaces (namespace, tenant) VALUES ($1, $2)")
            .bind(namespace)
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .map_err(query_error("adding the namespace"))?;
        commit_if_valid(tx).await
    }

    /// Takes a namespace from `tenant` (and from its team, if one had it); returns whether the
    /// tenant had it. The namespace itself stays in the cluster: it is no longer the tenant's.
    pub async fn remove_namespace(
        &self,
        tenant: &str,
        namespace: &str,
    ) -> Result<bool, PostgresError> {
        let done =
            sqlx::query("DELETE FROM tenant_namespaces WHERE tenant = $1 AND namespace = $2")
                .bind(tenant)
                .bind(namespace)
                .execute(&self.pool)
                .await
                .map_err(query_error("removing the namespace"))?;
        Ok(done.rows_affected() > 0)
    }

    async fn update_tenant(
        &self,
        sql: &'static str,
        tenant: &str,
        value: &str,
    ) -> Result<(), PostgresError> {
        let done = sqlx::query(sql)
            .bind(tenant)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(query_error("updating the tenant"))?;
        if done.rows_affected() == 0 {
            return Err(PostgresError::UnknownTenant(tenant.to_string()));
        }
        Ok(())
    }

    /// Keeps `store` current until the task is dropped: LISTEN for changes, reload on each,
    /// re-check the version every `resync`, reconnect with backoff after failures. Failures are
    /// recorded in the store (which keeps serving the last good snapshot), never swallowed.
    pub async fn watch(self, store: Arc<DirectoryStore>, resync: Duration) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let err = self.follow(&store, resync).await;
            warn!(error = %err, "tenant directory watch failed; serving the last snapshot");
            store.record_failure(err.to_string());
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow(&self, store: &DirectoryStore, resync: Duration) -> PostgresError {
        // One connection does everything: LISTEN, snapshot reads and version checks. Its own
        // one-connection pool gives reconnects a short timeout, so an outage is reported quickly.
        let pool = match PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy(&self.url)
        {
            Ok(pool) => pool,
            Err(source) => {
                return PostgresError::Connect {
                    url: redact_url(&self.url),
                    source,
                };
            }
        };
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(source) => {
                return PostgresError::Connect {
                    url: redact_url(&self.url),
                    source,
                };
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            return query_error("subscribing to directory changes")(e);
        }
        // Anything committed before LISTEN took effect is caught by this load.
        if let Err(e) = reload(&mut listener, store).await {
            return e;
        }
        let mut tick = tokio::time::interval(resync);
        tick.tick().await;
        loop {
            tokio::select! {
                note = listener.try_recv() => match note {
                    Ok(Some(n)) => {
                        debug!(payload = n.payload(), "directory change notified");
                        // Fold a burst of notifications (one per statement) into one reload.
                        while listener.next_buffered().is_some() {}
                        if let Err(e) = reload(&mut listener, store).await { return e; }
                    }
                    // The connection dropped and is re-established by the next query; what was
                    // notified meanwhile is lost, so catch up now.
                    Ok(None) => {
                        if let Err(e) = reload(&mut listener, store).await { return e; }
                    }
                    Err(e) => return query_error("waiting for directory changes")(e),
                },
                _ = tick.tick() => {
                    let version: Result<i64, _> = sqlx::query_scalar("SELECT version FROM directory_version")
                        .fetch_one(&mut listener)
                        .await;
                    match version {
                        Ok(v) if v as u64 != store.current().version() => {
                            info!(version = v, "resync found a missed change");
                            if let Err(e) = reload(&mut listener, store).await { return e; }
                        }
                        Ok(_) => store.record_fresh(),
                        Err(e) => return query_error("reading the directory version")(e),
                    }
                }
            }
        }
    }
}

/// Reads one consistent snapshot over the listener's connection and publishes it.
async fn reload(listener: &mut PgListener, store: &DirectoryStore) -> Result<(), PostgresError> {
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *listener)
        .await
        .map_err(query_error("starting a snapshot"))?;
    let read = read_file(listener).await;
    // Always end the transaction, so the connection is clean for the next read.
    let ended = sqlx::query("COMMIT").execute(&mut *listener).await;
    let (file, version) = read?;
    ended.map_err(query_error("ending the snapshot"))?;
    let directory = Directory::build(file, version)?;
    if directory.version() != store.current().version() {
        info!(
            version = directory.version(),
            tenants = directory.tenant_count(),
            "tenant directory loaded"
        );
    }
    store.publish(directory);
    Ok(())
}

async fn write_tier(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    tier: &TierSpec,
) -> Result<(), PostgresError> {
    let json = |v: serde_json::Result<String>| {
        v.map_err(|source| PostgresError::Json {
            column: "tiers",
            source,
        })
    };
    let node_selector = json(serde_json::to_string(&tier.scheduling.node_selector))?;
    let tolerations = json(serde_json::to_string(&tier.scheduling.tolerations))?;
    sqlx::query(
        "INSERT INTO tiers (name, rate_limit_rps, rate_limit_burst, priority_class, node_selector, tolerations, pod_security, network_isolation, scale_down_on_suspend)
         VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9)
         ON CONFLICT (name) DO UPDATE SET
           rate_limit_rps = EXCLUDED.rate_limit_rps, rate_limit_burst = EXCLUDED.rate_limit_burst,
           priority_class = EXCLUDED.priority_class, node_selector = EXCLUDED.node_selector,
           tolerations = EXCLUDED.tolerations, pod_security = EXCLUDED.pod_security,
           network_isolation = EXCLUDED.network_isolation,
           scale_down_on_suspend = EXCLUDED.scale_down_on_suspend",
    )
    .bind(name)
    .bind(tier.rate_limit.map(|r| r.requests_per_second as i32))
    .bind(tier.rate_limit.map(|r| r.burst as i32))
    .bind(&tier.scheduling.priority_class)
    .bind(node_selector)
    .bind(tolerations)
    .bind(tier.pod_security.as_str())
    .bind(tier.network_isolation.as_str())
    .bind(tier.scale_down_on_suspend)
    .execute(&mut **tx)
    .await
    .map_err(query_error("writing a tier"))?;
    sqlx::query("DELETE FROM tier_limits WHERE tier = $1")
        .bind(name)
        .execute(&mut **tx)
        .await
        .map_err(query_error("replacing tier limits"))?;
    for (resource, quantity) in &tier.limits {
        sqlx::query("INSERT INTO tier_limits (tier, resource, quantity) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(resource)
            .bind(quantity.to_string())
            .execute(&mut **tx)
            .await
            .map_err(query_error("writing a tier limit"))?;
    }
    Ok(())
}

async fn write_tenant(
    tx: &mut Transaction<'_, Postgres>,
    id: &str,
    tenant: &TenantSpec,
) -> Result<(), PostgresError> {
    sqlx::query(
        "INSERT INTO tenants (id, tier, status, client, scale_down_on_suspend, purge_after)
         VALUES ($1, $2, $3, $4, $5, $6::timestamptz)
         ON CONFLICT (id) DO UPDATE SET tier = EXCLUDED.tier, status = EXCLUDED.status,
           client = EXCLUDED.client, scale_down_on_suspend = EXCLUDED.scale_down_on_suspend,
           purge_after = EXCLUDED.purge_after",
    )
    .bind(id)
    .bind(&tenant.tier)
    .bind(tenant.status.as_str())
    .bind(&tenant.client)
    .bind(tenant.scale_down_on_suspend)
    .bind(tenant.purge_after.map(|t| t.to_string()))
    .execute(&mut **tx)
    .await
    .map_err(query_error("writing a tenant"))?;
    for table in [
        "DELETE FROM members WHERE tenant = $1",
        "DELETE FROM teams WHERE tenant = $1",
    ] {
        sqlx::query(table)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(query_error("replacing tenant members"))?;
    }
    sqlx::query("DELETE FROM tenant_namespaces WHERE tenant = $1")
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(query_error("replacing tenant namespaces"))?;
    for ns in &tenant.namespaces {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT tenant FROM tenant_namespaces WHERE namespace = $1")
                .bind(ns)
                .fetch_optional(&mut **tx)
                .await
                .map_err(query_error("checking namespace ownership"))?;
        if let Some(owner) = owner {
            return Err(PostgresError::NamespaceTaken {
                namespace: ns.clone(),
                owner,
            });
        }
        sqlx::query("INSERT INTO tenant_namespaces (namespace, tenant) VALUES ($1, $2)")
            .bind(ns)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(query_error("writing a tenant namespace"))?;
    }
    write_members(tx, id, "", &tenant.members).await?;
    for (team, spec) in &tenant.teams {
        sqlx::query("INSERT INTO teams (tenant, name) VALUES ($1, $2)")
            .bind(id)
            .bind(team)
            .execute(&mut **tx)
            .await
            .map_err(query_error("writing a team"))?;
        for ns in &spec.namespaces {
            sqlx::query(
                "INSERT INTO team_namespaces (namespace, tenant, team) VALUES ($1, $2, $3)",
            )
            .bind(ns)
            .bind(id)
            .bind(team)
            .execute(&mut **tx)
            .await
            .map_err(query_error("writing a team namespace"))?;
        }
        write_members(tx, id, team, &spec.members()).await?;
    }
    Ok(())
}

async fn write_members(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    team: &str,
    members: &Members,
) -> Result<(), PostgresError> {
    // One row per identity: listed under several roles, it keeps the strongest.
    let mut strongest: BTreeMap<(&str, &str), Role> = BTreeMap::new();
    for (role, users, groups, sas) in members.by_role() {
        let kinds = [("user", users), ("group", groups), ("serviceaccount", sas)];
        for (kind, names) in kinds {
            for name in names {
                let r = strongest.entry((kind, name.as_str())).or_insert(role);
                *r = (*r).max(role);
            }
        }
    }
    for ((kind, name), role) in strongest {
        sqlx::query(
            "INSERT INTO members (tenant, team, kind, name, role) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, team, kind, name) DO UPDATE SET role = EXCLUDED.role",
        )
        .bind(tenant)
        .bind(team)
        .bind(kind)
        .bind(name)
        .bind(role.as_str())
        .execute(&mut **tx)
        .await
        .map_err(query_error("writing a member"))?;
    }
    Ok(())
}

/// A member list triple.
type Lists<'a> = (
    &'a mut Vec<String>,
    &'a mut Vec<String>,
    &'a mut Vec<String>,
);

/// The users, groups and service accounts lists holding `role` (tenants' members and teams
/// spell them the same way).
fn role_lists<'a>(
    role: Role,
    developers: Lists<'a>,
    admins: &'a mut Identities,
    viewers: &'a mut Identities,
) -> Lists<'a> {
    match role {
        Role::Developer => developers,
        Role::Admin => (
            &mut admins.users,
            &mut admins.groups,
            &mut admins.serviceaccounts,
        ),
        Role::Viewer => (
            &mut viewers.users,
            &mut viewers.groups,
            &mut viewers.serviceaccounts,
        ),
    }
}

/// Reads every directory table into the file form, plus the version it corresponds to.
/// Refuses, inside `tx`, a change to a tenant the directory does not have.
async fn require_tenant(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
) -> Result<(), PostgresError> {
    let exists: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await
        .map_err(query_error("looking up the tenant"))?;
    match exists {
        Some(_) => Ok(()),
        None => Err(PostgresError::UnknownTenant(tenant.to_string())),
    }
}

/// Commits `tx` only if the directory it leaves is still valid (a service account name, a
/// namespace name, say): a refused change leaves nothing behind.
async fn commit_if_valid(mut tx: Transaction<'_, Postgres>) -> Result<(), PostgresError> {
    let (file, version) = read_file(&mut *tx).await?;
    Directory::build(file, version)?;
    tx.commit().await.map_err(query_error("committing"))
}

async fn read_file<C>(tx: &mut C) -> Result<(TenantsFile, u64), PostgresError>
where
    for<'a> &'a mut C: sqlx::Executor<'a, Database = Postgres>,
{
    let version: i64 = sqlx::query_scalar("SELECT version FROM directory_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error("reading the directory version"))?;
    let mut file = TenantsFile::default();

    let rows = sqlx::query(
        "SELECT name, rate_limit_rps, rate_limit_burst, priority_class,
                node_selector::text AS node_selector, tolerations::text AS tolerations, pod_security,
                network_isolation, scale_down_on_suspend
         FROM tiers",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(query_error("reading tiers"))?;
    for row in rows {
        let rps: Option<i32> = row.get("rate_limit_rps");
        let burst: Option<i32> = row.get("rate_limit_burst");
        let node_selector: String = row.get("node_selector");
        let tolerations: String = row.get("tolerations");
        let pod_security: String = row.get("pod_security");
        let network_isolation: String = row.get("network_isolation");
        let tier = TierSpec {
            scale_down_on_suspend: row.get("scale_down_on_suspend"),
            network_isolation: network_isolation.parse().map_err(|message| {
                PostgresError::Column {
                    column: "tiers.network_isolation",
                    message,
                }
            })?,
            pod_security: pod_security
                .parse()
                .map_err(|message| PostgresError::Column {
                    column: "tiers.pod_security",
                    message,
                })?,
            limits: BTreeMap::new(),
            rate_limit: rps.zip(burst).map(|(r, b)| RateLimit {
                requests_per_second: r.max(0) as u32,
                burst: b.max(0) as u32,
            }),
            scheduling: Scheduling {
                priority_class: row.get("priority_class"),
                node_selector: serde_json::from_str(&node_selector).map_err(|source| {
                    PostgresError::Json {
                        column: "tiers.node_selector",
                        source,
                    }
                })?,
                tolerations: serde_json::from_str(&tolerations).map_err(|source| {
                    PostgresError::Json {
                        column: "tiers.tolerations",
                        source,
                    }
                })?,
            },
        };
        file.tiers.insert(row.get("name"), tier);
    }
    let limits: Vec<(String, String, String)> =
        sqlx::query_as("SELECT tier, resource, quantity FROM tier_limits")
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error("reading tier limits"))?;
    for (tier, resource, quantity) in limits {
        if let Some(t) = file.tiers.get_mut(&tier) {
            t.limits.insert(resource, QuantitySpec::Text(quantity));
        }
    }
    let clients: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, display_name FROM clients")
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error("reading clients"))?;
    for (id, display_name) in clients {
        file.clients.insert(id, ClientSpec { display_name });
    }
    let tenants = sqlx::query(
        "SELECT id, tier, status, client, scale_down_on_suspend,
                (extract(epoch FROM purge_after) * 1000000)::bigint AS purge_after_us
         FROM tenants",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(query_error("reading tenants"))?;
    for row in tenants {
        let status: String = row.get("status");
        let purge_after = row
            .get::<Option<i64>, _>("purge_after_us")
            .map(|us| {
                jiff::Timestamp::from_microsecond(us).map_err(|e| PostgresError::Column {
                    column: "tenants.purge_after",
                    message: e.to_string(),
                })
            })
            .transpose()?;
        let spec = TenantSpec {
            tier: row.get("tier"),
            // The CHECK constraint admits only the known statuses; anything else is suspended
            // rather than active, because "could not read" must never mean "no restriction".
            status: status.parse().unwrap_or(Status::Suspended),
            client: row.get("client"),
            namespaces: Vec::new(),
            members: Members::default(),
            teams: BTreeMap::new(),
            scale_down_on_suspend: row.get("scale_down_on_suspend"),
            purge_after,
        };
        file.tenants.insert(row.get("id"), spec);
    }
    let namespaces: Vec<(String, String)> =
        sqlx::query_as("SELECT namespace, tenant FROM tenant_namespaces ORDER BY namespace")
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error("reading tenant namespaces"))?;
    for (ns, tenant) in namespaces {
        if let Some(t) = file.tenants.get_mut(&tenant) {
            t.namespaces.push(ns);
        }
    }
    let teams: Vec<(String, String)> = sqlx::query_as("SELECT tenant, name FROM teams")
        .fetch_all(&mut *tx)
        .await
        .map_err(query_error("reading teams"))?;
    for (tenant, name) in teams {
        if let Some(t) = file.tenants.get_mut(&tenant) {
            t.teams.insert(name, TeamSpec::default());
        }
    }
    let team_namespaces: Vec<(String, String, String)> =
        sqlx::query_as("SELECT namespace, tenant, team FROM team_namespaces ORDER BY namespace")
            .fetch_all(&mut *tx)
            .await
            .map_err(query_error("reading team namespaces"))?;
    for (ns, tenant, team) in team_namespaces {
        if let Some(t) = file
            .tenants
            .get_mut(&tenant)
            .and_then(|t| t.teams.get_mut(&team))
        {
            t.namespaces.push(ns);
        }
    }
    let members: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT tenant, team, kind, name, role FROM members ORDER BY tenant, team, kind, name",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(query_error("reading members"))?;
    for (tenant, team, kind, name, role) in members {
        let role: Role = role.parse().map_err(|message| PostgresError::Column {
            column: "members.role",
            message,
        })?;
        let Some(t) = file.tenants.get_mut(&tenant) else {
            continue;
        };
        let lists = if team.is_empty() {
            let m = &mut t.members;
            let developers = (&mut m.users, &mut m.groups, &mut m.serviceaccounts);
            role_lists(role, developers, &mut m.admins, &mut m.viewers)
        } else {
            let Some(m) = t.teams.get_mut(&team) else {
                continue;
            };
            let developers = (&mut m.users, &mut m.groups, &mut m.serviceaccounts);
            role_lists(role, developers, &mut m.admins, &mut m.viewers)
        };
        let (users, groups, sas) = lists;
        match kind.as_str() {
            "user" => users.push(name),
            "group" => groups.push(name),
            _ => sas.push(name),
        }
    }
    Ok((file, version as u64))
}
