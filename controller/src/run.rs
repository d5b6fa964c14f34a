//! The controller process: configuration, the directory it follows, leader election, the
//! reconcile loop and its triggers, and `/healthz`, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tenantry_cluster::Ledger;
use tenantry_cluster::UsageView;
use tenantry_tenancy::config::parse_duration;
use tenantry_tenancy::{Directory, DirectoryStore, PostgresSource, TenantSource};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::apply::{self, Report};
use crate::desired::{MANAGED_BY, MANAGER, Options};

/// `tenantry-controller` flags. Every flag also reads `TENANTRY_<FLAG>`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tenantry-controller",
    version,
    about = "Tenantry's provisioning controller: namespaces, network isolation, RBAC by role, tier classes and defaults from the tenant directory"
)]
pub struct Config {
    /// Tenant source: a postgres:// URL or a YAML file (followed as it changes).
    #[arg(long, env = "TENANTRY_TENANTS")]
    pub tenants: String,
    /// Kubeconfig; in a pod, the in-cluster configuration is used without it.
    #[arg(long, env = "TENANTRY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Plain HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "TENANTRY_METRICS_LISTEN", default_value = "0.0.0.0:9091")]
    pub metrics_listen: SocketAddr,
    /// Reconcile at least this often, whatever happened.
    #[arg(long, env = "TENANTRY_RESYNC", default_value = "60s", value_parser = parse_duration)]
    pub resync: Duration,
    /// Namespace of the Lease that elects the one active replica.
    #[arg(
        long,
        env = "TENANTRY_LEASE_NAMESPACE",
        default_value = "tenantry-system"
    )]
    pub lease_namespace: String,
    /// Name of that Lease.
    #[arg(
        long,
        env = "TENANTRY_LEASE_NAME",
        default_value = "tenantry-controller"
    )]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, HOSTNAME).
    #[arg(long, env = "TENANTRY_IDENTITY")]
    pub identity: Option<String>,
    /// Namespaces whose pods may reach every tenant's pods (ingress controllers, monitoring).
    #[arg(
        long,
        env = "TENANTRY_PLATFORM_NAMESPACES",
        value_delimiter = ',',
        default_value = "ingress-nginx,monitoring"
    )]
    pub platform_namespaces: Vec<String>,
    /// The enforcer's proxy port, open to every peer in the isolating NetworkPolicies.
    #[arg(long, env = "TENANTRY_ENFORCER_PORT", default_value_t = 15001)]
    pub enforcer_port: u16,
    /// Default CPU request of containers that state none (LimitRange).
    #[arg(long, env = "TENANTRY_DEFAULT_CPU_REQUEST", default_value = "100m")]
    pub default_cpu_request: String,
    /// Default memory request of containers that state none (LimitRange).
    #[arg(long, env = "TENANTRY_DEFAULT_MEMORY_REQUEST", default_value = "128Mi")]
    pub default_memory_request: String,
    /// `host:port` of the Redis injected enforcers share rate limits through. With it, every
    /// tenant gets a Redis user limited to its own keyspace and its URL in the Secret
    /// `tenantry-ratelimit` of each of its namespaces (inject it with the webhook's
    /// `--sidecar-redis-secret tenantry-ratelimit`).
    #[arg(long, env = "TENANTRY_RATELIMIT_REDIS")]
    pub ratelimit_redis: Option<String>,
    /// Secret (in --lease-namespace) whose `password` is that Redis's admin password; created
    /// with a random one if absent (Redis and the webhook read it from there).
    #[arg(
        long,
        env = "TENANTRY_RATELIMIT_REDIS_SECRET",
        default_value = "tenantry-redis"
    )]
    pub ratelimit_redis_secret: String,
    /// Default memory limit of containers that state none (LimitRange).
    #[arg(long, env = "TENANTRY_DEFAULT_MEMORY_LIMIT", default_value = "512Mi")]
    pub default_memory_limit: String,
}

impl Config {
    pub fn options(&self) -> Options {
        Options {
            enforcer_port: self.enforcer_port,
            platform_namespaces: self.platform_namespaces.clone(),
            default_cpu_request: self.default_cpu_request.clone(),
            default_memory_request: self.default_memory_request.clone(),
            default_memory_limit: self.default_memory_limit.clone(),
            ratelimit: None,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    tenant: String,
    /// The ResourceQuota name of the tier's limit (`pods`, `requests.cpu`, `count/…`).
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

/// `tenantry_controller_*`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    applied: Counter,
    pruned: Counter,
    lifecycle: Family<ActionLabels, Counter>,
    drift: Counter,
    queued: Gauge,
    leader: Gauge,
    duration: Histogram,
    quota_used: Family<QuotaLabels, Gauge>,
    quota_limit: Family<QuotaLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tenantry_controller");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let applied = Counter::default();
        let pruned = Counter::default();
        let lifecycle = Family::<ActionLabels, Counter>::default();
        let drift = Counter::default();
        let queued = Gauge::default();
        let leader = Gauge::default();
        let duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register("objects_applied", "Objects applied", applied.clone());
        registry.register(
            "objects_pruned",
            "Managed objects deleted as no longer wanted",
            pruned.clone(),
        );
        registry.register(
            "lifecycle_actions",
            "Workloads scaled down or restored, and namespaces purged, by action",
            lifecycle.clone(),
        );
        registry.register(
            "drift_events",
            "Changes to managed objects seen by the watches",
            drift.clone(),
        );
        registry.register(
            "queued_changes",
            "Changes seen (directory versions, managed objects) that the next reconcile will take in",
            queued.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the Lease",
            leader.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            duration.clone(),
        );
        // Bounded by the directory: one series per tenant and limit its tier sets.
        let quota_used = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "quota_used",
            "What a tenant uses of each resource its tier limits, across all its namespaces (CPU in millicores, memory and storage in bytes)",
            quota_used.clone(),
        );
        let quota_limit = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "quota_limit",
            "The tenant's tier limit for each resource (same units as quota_used)",
            quota_limit.clone(),
        );
        Metrics {
            registry,
            reconciles,
            applied,
            pruned,
            lifecycle,
            drift,
            queued,
            leader,
            duration,
            quota_used,
            quota_limit,
        }
    }

    /// Usage against limits for every tenant, counted by the same ledger as admission; series
    /// of tenants and limits that are gone disappear.
    fn record_quotas(&self, directory: &Directory, usage: &dyn UsageView) {
        self.quota_used.clear();
        self.quota_limit.clear();
        for tenant in directory.tenants() {
            let mut namespaces: Vec<Arc<str>> = tenant
                .namespaces
                .iter()
                .map(|n| Arc::from(n.as_str()))
                .collect();
            namespaces.extend(usage.labelled_namespaces(&tenant.id));
            namespaces.sort();
            namespaces.dedup();
            let namespaces: Vec<&str> = namespaces.iter().map(|n| &**n).collect();
            for (resource, limit) in tenant.tier.limits.iter() {
                let labels = QuotaLabels {
                    tenant: tenant.id.to_string(),
                    resource: resource.to_string(),
                };
                self.quota_limit.get_or_create(&labels).set(limit);
                self.quota_used.get_or_create(&labels).set(usage.used(
                    &tenant.id,
                    &namespaces,
                    resource,
                ));
            }
        }
    }

    fn record(&self, outcome: &Result<Report, apply::ApplyError>, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        match outcome {
            Ok(report) => {
                self.reconciles
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                self.applied.inc_by(report.applied as u64);
                self.pruned.inc_by(report.pruned as u64);
                for (action, n) in [
                    ("scale_down", report.lifecycle.scaled_down),
                    ("restore", report.lifecycle.restored),
                    ("purge", report.lifecycle.purged),
                ] {
                    self.lifecycle
                        .get_or_create(&ActionLabels { action })
                        .inc_by(n as u64);
                }
            }
            Err(_) => {
                self.reconciles
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
struct Health {
    leader: AtomicBool,
    /// Unix seconds of the last successful reconcile (0: none yet).
    last_ok: AtomicI64,
    last_failed: AtomicBool,
}

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    directory: Arc<DirectoryStore>,
}

/// Sends a trigger whenever a managed object of kind `K` changes: drift is repaired by the next
/// reconcile, which reads the world fresh.
fn watch_managed<K>(client: &Client, triggers: &mpsc::Sender<()>, metrics: &Arc<Metrics>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (api, triggers, metrics) = (
        Api::<K>::all(client.clone()),
        triggers.clone(),
        metrics.clone(),
    );
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGER}"));
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                    metrics.drift.inc();
                    metrics.queued.inc();
                    let _ = triggers.try_send(());
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "watch of managed objects failed; retrying"),
            }
        }
    });
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let client = tenantry_cluster::watch::client(config.kubeconfig.as_deref()).await?;
    // Usage for the `Tenant` mirrors, counted by the webhook's own ledger and watches.
    let ledger = Arc::new(Ledger::new());
    let usage_ready = Arc::new(AtomicBool::new(false));
    // Usage known: reconcile now, so mirrors' status and the quota gauges need not wait for the
    // next resync.
    let (usage_synced, mut usage_known) = mpsc::channel::<()>(1);
    {
        let ready = usage_ready.clone();
        tenantry_cluster::watch::watch_usage(client.clone(), ledger.clone(), move || {
            ready.store(true, Ordering::Release);
            let _ = usage_synced.try_send(());
        });
    }
    let directory = Arc::new(DirectoryStore::unloaded());
    match TenantSource::parse(&config.tenants) {
        TenantSource::File(path) => {
            let loaded = tenantry_tenancy::source::load_file(&path)?;
            info!(tenants = loaded.tenant_count(), file = %path.display(), "tenant directory loaded");
            directory.publish(loaded);
            tokio::spawn(tenantry_tenancy::source::follow_file(
                path,
                directory.clone(),
                Duration::from_secs(2),
                |_| {},
            ));
        }
        TenantSource::Postgres(url) => {
            let source = PostgresSource::lazy(&url)?;
            tokio::spawn(source.watch(directory.clone(), Duration::from_secs(30)));
        }
    }
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let ops = Ops {
        metrics: metrics.clone(),
        health: health.clone(),
        directory: directory.clone(),
    };
    let listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_listen))?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    tokio::spawn(async move {
        let _ = axum::serve(listener, ops_router(ops)).await;
    });

    let (triggers, mut triggered) = mpsc::channel::<()>(1);
    watch_managed::<Namespace>(&client, &triggers, &metrics);
    watch_managed::<NetworkPolicy>(&client, &triggers, &metrics);
    watch_managed::<LimitRange>(&client, &triggers, &metrics);
    watch_managed::<ServiceAccount>(&client, &triggers, &metrics);
    watch_managed::<RoleBinding>(&client, &triggers, &metrics);
    watch_managed::<Secret>(&client, &triggers, &metrics);
    watch_managed::<PriorityClass>(&client, &triggers, &metrics);
    drop(triggers);

    let identity = config
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("tenantry-controller-{}", std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&identity)
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader, _lease) = manager.watch().await;
    info!(%identity, lease = %config.lease_name, "waiting for the Lease");

    let mut options = config.options();
    if let Some(address) = &config.ratelimit_redis {
        let admin_password = crate::ratelimit::admin_password(
            &client,
            &config.lease_namespace,
            &config.ratelimit_redis_secret,
        )
        .await?;
        info!(%address, "provisioning per-tenant rate-limit credentials");
        options.ratelimit = Some(crate::ratelimit::RateLimitAccess {
            address: address.clone(),
            admin_password,
        });
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tenantry-controller".into(),
            instance: Some(identity.clone()),
        },
    );
    let mut resync = tokio::time::interval(config.resync);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let mut reconciled_version = None;
    // After a failure, retry with exponential backoff (1 s, 2 s, … up to the resync period):
    // neither a hot loop against a failing API server nor a minute's wait for a transient error.
    let mut backoff = RETRY_MIN;
    let mut retry_at: Option<Instant> = None;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let mut due = false;
        tokio::select! {
            _ = resync.tick() => due = true,
            Some(()) = triggered.recv() => {
                // Changes come in bursts (our own applies among them): settle first.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while triggered.try_recv().is_ok() {}
                due = true;
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    anyhow::bail!("leader election stopped");
                }
                due = true;
            }
            Some(()) = usage_known.recv() => due = true,
            _ = poll.tick() => {}
            _ = &mut stop => break,
        }
        let is_leader = *leader.borrow();
        health.leader.store(is_leader, Ordering::Release);
        metrics.leader.set(i64::from(is_leader));
        if !is_leader || directory.freshness().loads == 0 {
            continue;
        }
        let snapshot = directory.current();
        if !due && reconciled_version == Some(snapshot.version()) {
            continue;
        }
        if retry_at.is_some_and(|at| Instant::now() < at) {
            continue;
        }
        metrics.queued.set(0);
        let started = Instant::now();
        let usage = ledger.view(None);
        let cx = apply::Context {
            client: &client,
            recorder: &recorder,
            options: &options,
            usage: usage_ready
                .load(Ordering::Acquire)
                .then_some(&usage as &dyn UsageView),
            now: jiff::Timestamp::now(),
        };
        let outcome = apply::reconcile(&cx, &snapshot).await;
        metrics.record(&outcome, started.elapsed());
        if let Some(usage) = cx.usage {
            metrics.record_quotas(&snapshot, usage);
        }
        match &outcome {
            Ok(report) => {
                reconciled_version = Some(snapshot.version());
                retry_at = None;
                backoff = RETRY_MIN;
                health.last_failed.store(false, Ordering::Release);
                health.last_ok.store(unix_now(), Ordering::Release);
                info!(
                    version = snapshot.version(),
                    applied = report.applied,
                    pruned = report.pruned,
                    scaled_down = report.lifecycle.scaled_down,
                    restored = report.lifecycle.restored,
                    purged = report.lifecycle.purged,
                    "reconciled"
                );
            }
            Err(e) => {
                health.last_failed.store(true, Ordering::Release);
                warn!(error = %e, retry_in = ?backoff, "reconcile failed");
                retry_at = Some(Instant::now() + backoff);
                // Retried once the backoff has passed, whatever triggers come meanwhile.
                reconciled_version = None;
                backoff = (backoff * 2).min(config.resync.max(RETRY_MIN));
            }
        }
    }
    info!("stopped");
    Ok(())
}

/// The first retry after a failed reconcile.
const RETRY_MIN: Duration = Duration::from_secs(1);

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

fn ops_router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

/// Ready once the directory has loaded and, on the leader, the last reconcile succeeded; a
/// standby replica is ready to take over.
async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    let loaded = ops.directory.freshness().loads > 0;
    let leader = ops.health.leader.load(Ordering::Acquire);
    let failing = leader && ops.health.last_failed.load(Ordering::Acquire);
    let ready = loaded && !failing;
    let detail = serde_json::json!({
        "ready": ready,
        "directory_loaded": loaded,
        "leader": leader,
        "last_reconcile_ok_unix": ops.health.last_ok.load(Ordering::Acquire),
        "last_reconcile_failed": failing,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(detail))
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics.encode(),
    )
}
