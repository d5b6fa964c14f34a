//! `tenantry-enforcer`: the sidecar Tenantry injects into every tenant pod.
//!
//! It sits in front of the application on localhost and lets a request through only when the
//! caller has proved which tenant it is ([`identity`]: one valid `X-Tenant-ID`, optionally a JWT
//! that agrees), the Cedar traffic policies allow that tenant to call this pod's service
//! ([`policy`]), and the tenant's rate limit, shared with every other enforcer through Redis, has
//! room ([`ratelimit`]). The hot path never waits on the network except for one Redis round trip
//! per leased batch of tokens. [`proxy`] forwards with pooled keep-alive connections and streaming
//! bodies; [`admin`] serves health and metrics; [`redirect`] is the `init-redirect` init step.
//! `main.rs` only parses configuration and calls [`run`].

pub mod admin;
pub mod canonical;
pub mod config;
pub mod demo;
pub mod identity;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod redirect;
pub mod upstream;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tenantry_tenancy::{DirectoryStore, PolicyEngine, PostgresSource, TenantSource};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::Config;

use crate::config::{RedisFailure, Tenants};
use crate::metrics::Metrics;
use crate::policy::ServiceSpec;
use crate::ratelimit::{Limiter, MemoryStore, MonotonicClock, RedisStore, Store};

/// How often the Postgres watcher re-checks the directory version besides LISTEN/NOTIFY.
const RESYNC: Duration = Duration::from_secs(30);

/// Loads tenant data per `--tenants`. A Postgres source is watched in the background: the store
/// starts unloaded (`/readyz` false) and is filled by the first load.
pub async fn directory_store(source: &Tenants) -> anyhow::Result<Arc<DirectoryStore>> {
    match source {
        Tenants::Example => Ok(Arc::new(DirectoryStore::loaded(
            tenantry_tenancy::embedded::directory().context("loading the embedded tenants")?,
        ))),
        Tenants::View(url) => {
            let store = Arc::new(DirectoryStore::unloaded());
            tokio::spawn(view::follow(url.clone(), store.clone()));
            Ok(store)
        }
        Tenants::Source(TenantSource::File(path)) => Ok(Arc::new(DirectoryStore::loaded(
            tenantry_tenancy::source::load_file(path)
                .with_context(|| format!("loading tenants from {}", path.display()))?,
        ))),
        Tenants::Source(TenantSource::Postgres(url)) => {
            let store = Arc::new(DirectoryStore::unloaded());
            let url = url.clone();
            let watched = store.clone();
            // One connection per enforcer (fine for a few; a fleet follows the webhook's
            // traffic view instead): the watcher LISTENs and reads snapshots on it, and
            // reconnects with backoff by itself.
            let source = PostgresSource::lazy(&url)?;
            tokio::spawn(source.watch(watched, RESYNC));
            Ok(store)
        }
    }
}

/// An enforcer running in this process (the binary, the demo, tests).
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains in-flight requests, and waits for that to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Builds the enforcer from `config` with the given directory, binds, and starts serving.
pub async fn start(config: Config, directory: Arc<DirectoryStore>) -> anyhow::Result<Running> {
    start_with(config, directory, None).await
}

/// Like [`start`], with an explicit rate-limit store (the demo uses memory with a tiny limit).
pub async fn start_with(
    config: Config,
    directory: Arc<DirectoryStore>,
    store: Option<Store>,
) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        metrics
            .open_files_limit
            .set(i64::try_from(soft).unwrap_or(i64::MAX));
    }
    let policies: Arc<PolicyEngine> = Arc::new(match &config.policies {
        Some(dir) => PolicyEngine::load_dir(dir)
            .with_context(|| format!("loading policies from {}", dir.display()))?,
        None => tenantry_tenancy::embedded::policies().context("loading the embedded policies")?,
    });
    let jwt = match &config.jwt {
        Some(j) => Some(identity::JwtVerifier::load(j).context("loading the JWT keys")?),
        None => None,
    };
    let clock = Arc::new(MonotonicClock::default());
    // With Redis, every worker gets its own limiter (its own connection and leases): the hot
    // path then touches no memory another core writes, and the global limit still holds since
    // tokens only come from the shared bucket (each worker counts as a peer for the fallback
    // share). An in-memory bucket *is* the limit, so it is shared by all workers.
    let limiters: proxy::LimiterFactory = if !config.rate_limit {
        Arc::new(|| None)
    } else {
        match (store, &config.redis) {
            (Some(store), _) => {
                let shared = Arc::new(Limiter::new(
                    store,
                    clock,
                    config.redis_failure,
                    metrics.clone(),
                ));
                Arc::new(move || Some(shared.clone()))
            }
            (None, Some(url)) => {
                // Fail fast on a malformed URL.
                RedisStore::new(url, &config.tenant, config.redis_timeout, metrics.clone())
                    .context("configuring Redis")?;
                let (url, owner, timeout, failure, metrics) = (
                    url.clone(),
                    config.tenant.clone(),
                    config.redis_timeout,
                    config.redis_failure,
                    metrics.clone(),
                );
                let split = u32::try_from(config.workers.max(1)).unwrap_or(u32::MAX);
                Arc::new(move || {
                    let store = RedisStore::new(&url, &owner, timeout, metrics.clone()).ok()?;
                    let limiter = Limiter::new(
                        Store::Redis(Box::new(store)),
                        clock.clone(),
                        failure,
                        metrics.clone(),
                    );
                    Some(Arc::new(limiter.split(split)))
                })
            }
            (None, None) => {
                let store = Store::Memory(MemoryStore::new(clock.clone()));
                let shared = Arc::new(Limiter::new(
                    store,
                    clock,
                    config.redis_failure,
                    metrics.clone(),
                ));
                Arc::new(move || Some(shared.clone()))
            }
        }
    };
    let service = ServiceSpec {
        owner: config.tenant.clone(),
        name: config.service.clone(),
        namespace: config.namespace.clone(),
        shared: config.shared,
    };
    let mut state = proxy::State::new(
        directory.clone(),
        policies,
        service,
        jwt,
        limiters,
        metrics.clone(),
        config.upstream,
        config.upstream_timeout,
        config.upstream_idle_timeout,
        config.max_body_bytes,
    )
    .context("the upstream address")?;
    state.trusted_proxies = config.trusted_proxies.clone();
    let state = Arc::new(state);
    let listeners = bind(config.listen, config.workers)
        .with_context(|| format!("binding {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding {}", config.admin_listen))?;
    let addr = listeners.first().context("no listener")?.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin = admin::Admin {
        directory,
        metrics: metrics.clone(),
    };
    tokio::spawn(admin::serve(admin, admin_listener, wait(stopped.clone())));
    let drain = config.drain_timeout;
    let connections = proxy::Connections::new(config.connections);
    let task = if config.workers == 0 {
        let listener = listeners.into_iter().next().context("no listener")?;
        let listener = TcpListener::from_std(listener)?;
        tokio::spawn(proxy::serve(
            state,
            listener,
            connections,
            wait(stopped),
            drain,
        ))
    } else {
        // Thread per core: each worker has its own single-threaded runtime, its own
        // SO_REUSEPORT listener and its own upstream pools, so a request is accepted, checked,
        // forwarded and answered on one thread with no cross-thread wake-ups (like nginx's
        // worker processes). Directory, policies, limiter and metrics are shared.
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let state = state.clone();
            let stopped = stopped.clone();
            let connections = connections.clone();
            let thread = std::thread::Builder::new()
                .name(format!("enforcer-worker-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(error = %e, "cannot start a worker runtime");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => {
                                let state = Arc::new(state.for_worker());
                                proxy::serve(state, l, connections, wait(stopped), drain).await
                            }
                            Err(e) => warn!(error = %e, "cannot register a worker listener"),
                        }
                    });
                })
                .context("starting a worker thread")?;
            threads.push(thread);
        }
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
    };
    info!(%addr, %admin_addr, upstream = %config.upstream, tenant = %config.tenant, "enforcer listening");
    Ok(Running {
        addr,
        admin_addr,
        metrics,
        stop,
        task,
    })
}

/// `workers` listening sockets on `addr` (one for `workers == 0`), all with SO_REUSEPORT so the
/// kernel spreads connections across workers. Returned as std sockets, to be registered by the
/// runtime that serves each one.
fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = Vec::new();
    for _ in 0..workers.max(1) {
        // Port 0 is resolved by the first bind; the others join that port.
        let at = out.first().map_or(Ok(addr), |l| l.local_addr())?;
        let socket = if at.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        #[cfg(unix)]
        socket.set_reuseport(workers > 1)?;
        socket.set_nodelay(true)?;
        socket.bind(at)?;
        out.push(socket.listen(1024)?.into_std()?);
    }
    Ok(out)
}

/// Runs until SIGTERM or Ctrl-C, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.redis.is_none() && config.rate_limit {
        info!("no --redis: rate limits are enforced per pod");
    }
    if config.redis_failure == RedisFailure::Closed && config.redis.is_none() {
        warn!("--redis-failure closed has no effect without --redis");
    }
    raise_open_files_limit();
    let directory = directory_store(&config.tenants).await?;
    let running = start(config, directory).await?;
    shutdown_signal().await;
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// Raises the soft open-file limit to the hard one: every client connection is a descriptor,
/// and the usual soft limit (1024) would turn a few hundred idle sockets into refused requests.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open-file limit"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
