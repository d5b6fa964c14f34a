//! Per-tenant rate limits shared by every enforcer through Redis, at almost no cost per request.
//!
//! Three layers, as in governor: the pure token-bucket arithmetic on nanoseconds ([`Bucket`]),
//! the stores that hold the shared bucket ([`Store`]: one atomic Lua script on Redis, or memory),
//! and the [`Limiter`] that leases tokens from the store in batches so most requests only touch a
//! local counter. Tokens are only ever created by the shared bucket, so however leases are split
//! between pods the global limit holds; a lease is sized to a small slice of the rate so tokens
//! parked in one pod cannot skew the total by more than a few percent.
//!
//! When Redis is slow or down, a short timeout and a circuit breaker keep requests from waiting on
//! it; meanwhile `--redis-failure open` admits from a local bucket holding this pod's share of the
//! limit (the share is learnt from Redis: every enforcer registers itself in the script), and
//! `closed` refuses with 503. The breaker probes again on its own, so recovery is automatic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tenantry_tenancy::redis_store::{RedisTarget, SharedConnection};
use thiserror::Error;
use tracing::{info, warn};

use crate::config::RedisFailure;
use crate::metrics::Metrics;

const NANOS: f64 = 1e9;

/// A tier's limit: `rate` tokens per second, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

impl Limit {
    pub fn new(requests_per_second: u32, burst: u32) -> Limit {
        Limit {
            rate: f64::from(requests_per_second.max(1)),
            burst: f64::from(burst.max(1)),
        }
    }

    /// This pod's part of the limit when `peers` enforcers share it.
    pub fn share(self, peers: u32) -> Limit {
        let n = f64::from(peers.max(1));
        Limit {
            rate: self.rate / n,
            burst: (self.burst / n).max(1.0),
        }
    }

    /// Tokens leased per round trip: 50 ms of the rate, at most a quarter of the burst. At
    /// 1000 req/s that is 50 tokens (0.02 round trips per request); the tokens a pod can hold
    /// unused are bounded by one lease, which keeps several pods within a few percent of the limit.
    pub fn lease_size(self) -> u64 {
        let by_rate = (self.rate * 0.05).floor();
        let by_burst = (self.burst / 4.0).floor();
        by_rate.min(by_burst).max(1.0) as u64
    }

    /// Seconds until an empty bucket holding `remaining` is full again.
    pub fn reset_after(self, remaining: f64) -> u64 {
        ((self.burst - remaining).max(0.0) / self.rate).ceil() as u64
    }
}

/// A token bucket: pure arithmetic, the caller supplies the time. No window edges, so no double
/// burst: at any instant at most `burst + rate × elapsed` tokens have been granted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub at_ns: u64,
}

impl Bucket {
    pub fn full(limit: Limit, now_ns: u64) -> Bucket {
        Bucket {
            tokens: limit.burst,
            at_ns: now_ns,
        }
    }

    fn refill(&mut self, limit: Limit, now_ns: u64) {
        if now_ns > self.at_ns {
            let elapsed = (now_ns - self.at_ns) as f64 / NANOS;
            self.tokens = (self.tokens + elapsed * limit.rate).min(limit.burst);
            self.at_ns = now_ns;
        }
    }

    /// Takes up to `n` whole tokens; returns how many were granted.
    pub fn take(&mut self, limit: Limit, now_ns: u64, n: u64) -> u64 {
        self.refill(limit, now_ns);
        let granted = (self.tokens.floor() as u64).min(n);
        self.tokens -= granted as f64;
        granted
    }

    /// Nanoseconds until `n` tokens are available (0 if they are now).
    pub fn wait_ns(&self, limit: Limit, n: f64) -> u64 {
        let missing = n.min(limit.burst) - self.tokens;
        if missing <= 0.0 {
            0
        } else {
            (missing / limit.rate * NANOS).ceil() as u64
        }
    }
}

/// Where time comes from; tests use [`FakeClock`] instead of sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ns(&self) -> u64;
}

#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[derive(Debug, Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the shared bucket answered to one lease request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grant {
    pub granted: u64,
    /// Whole tokens left in the shared bucket.
    pub remaining: u64,
    /// How long until a full lease is available, when less than one was granted.
    pub wait: Duration,
    /// Enforcers that took tokens for this tenant recently (this one included).
    pub peers: u32,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("rate limiter circuit is open")]
    CircuitOpen,
}

/// One atomic script: returns `refund` unused tokens, takes up to `want`, registers this enforcer
/// among the tenant's peers, and always (re)sets both keys' expiry. Redis's own clock is used, so
/// enforcers' clocks never disagree about the bucket.
const LEASE_SCRIPT: &str = r#"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
local me = ARGV[5]
local peer_ttl = tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
end
tokens = math.min(burst, tokens + refund)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
redis.call('ZADD', KEYS[2], now, me)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - peer_ttl)
redis.call('PEXPIRE', KEYS[2], peer_ttl * 2)
local peers = redis.call('ZCARD', KEYS[2])
local wait = 0
if granted < want then
  wait = math.ceil((math.min(want, burst) - tokens) * 1000 / rate)
end
return {granted, math.floor(tokens), wait, peers}
"#;

/// How long an enforcer counts as a peer after its last lease.
const PEER_TTL_MS: u64 = 10_000;

/// The shared bucket.
#[derive(Debug)]
pub enum Store {
    Redis(Box<RedisStore>),
    Memory(MemoryStore),
}

impl Store {
    async fn lease(
        &self,
        tenant: &str,
        limit: Limit,
        want: u64,
        refund: u64,
    ) -> Result<Grant, StoreError> {
        match self {
            Store::Redis(r) => r.lease(tenant, limit, want, refund).await,
            Store::Memory(m) => Ok(m.lease(tenant, limit, want, refund)),
        }
    }
}

/// Buckets in this process: per-pod limits without Redis, the demo, tests.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> MemoryStore {
        MemoryStore {
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lease(&self, tenant: &str, limit: Limit, want: u64, refund: u64) -> Grant {
        let now = self.clock.now_ns();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(tenant.to_string())
            .or_insert_with(|| Bucket::full(limit, now));
        bucket.refill(limit, now);
        bucket.tokens = (bucket.tokens + refund as f64).min(limit.burst);
        let granted = bucket.take(limit, now, want);
        let wait = if granted < want {
            Duration::from_nanos(bucket.wait_ns(limit, want as f64))
        } else {
            Duration::ZERO
        };
        Grant {
            granted,
            remaining: bucket.tokens.floor() as u64,
            wait,
            peers: 1,
        }
    }
}

/// The Redis bucket: one connection (multiplexed), re-established after failures; a Redis
/// Cluster works alike (`redis+cluster://…`).
///
/// Buckets live in the keyspace of the tenant that owns this pod: a caller's budget for this
/// tenant's services is `tenantry:ratelimit:{OWNER}:CALLER`. So the credential of a tenant's
/// pods (a Redis ACL user limited to `tenantry:ratelimit:{OWNER}*`) can spend or reset only the
/// budgets of traffic into that tenant, never another tenant's; and every key of one bucket
/// shares the owner's hash slot.
pub struct RedisStore {
    target: RedisTarget,
    owner: String,
    connection: tokio::sync::Mutex<Option<SharedConnection>>,
    script: redis::Script,
    timeout: Duration,
    instance: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("instance", &self.instance)
            .finish()
    }
}

impl RedisStore {
    pub fn new(
        url: &str,
        owner: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<RedisStore, StoreError> {
        Ok(RedisStore {
            target: RedisTarget::parse(url)?,
            owner: owner.to_string(),
            connection: tokio::sync::Mutex::new(None),
            script: redis::Script::new(LEASE_SCRIPT),
            timeout,
            instance: instance_id().to_string(),
            metrics,
        })
    }

    async fn connection(&self) -> Result<SharedConnection, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connect = self.target.multiplexed();
        let c = tokio::time::timeout(self.timeout, connect)
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))??;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn lease(
        &self,
        tenant: &str,
        limit: Limit,
        want: u64,
        refund: u64,
    ) -> Result<Grant, StoreError> {
        let mut con = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(bucket_key(&self.owner, tenant))
            .key(format!("{}:peers", bucket_key(&self.owner, tenant)))
            .arg(limit.rate)
            .arg(limit.burst)
            .arg(want)
            .arg(refund)
            .arg(&self.instance)
            .arg(PEER_TTL_MS);
        self.metrics.redis_round_trips.inc();
        let answer = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(u64, u64, u64, u32)>(&mut con),
        )
        .await;
        let result = match answer {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        };
        match result {
            Ok((granted, remaining, wait_ms, peers)) => Ok(Grant {
                granted,
                remaining,
                wait: Duration::from_millis(wait_ms),
                peers,
            }),
            Err(e) => {
                // Start over with a fresh connection next time; a multiplexed connection that
                // timed out may be stuck behind a dead socket.
                *self.connection.lock().await = None;
                Err(e)
            }
        }
    }
}

/// The bucket of `caller`'s traffic into `owner`'s services.
pub fn bucket_key(owner: &str, caller: &str) -> String {
    format!("tenantry:ratelimit:{{{owner}}}:{caller}")
}

/// This process's name among a tenant's peers: one per pod, however many workers it runs.
fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "enforcer".to_string());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{host}-{}-{nanos}", std::process::id())
    })
}

/// Consecutive failures open the circuit for a while; then one probe decides.
#[derive(Debug)]
struct Breaker {
    failures: u32,
    open_until_ns: u64,
}

const BREAKER_THRESHOLD: u32 = 3;
const BREAKER_OPEN: Duration = Duration::from_millis(500);
/// A lease is used for at most this long; then what is left goes back to the shared bucket.
const LEASE_TTL: Duration = Duration::from_secs(1);

/// The local end of one tenant's shared bucket.
#[derive(Debug)]
struct Lease {
    tokens: u64,
    expires_ns: u64,
    /// Do not ask the store again before this (it said the bucket is empty).
    retry_at_ns: u64,
    /// The store's last word, for the `RateLimit-*` headers.
    remaining: u64,
    peers: u32,
    /// This pod's share, used while the store is unavailable (open mode).
    fallback: Option<Bucket>,
}

#[derive(Debug)]
struct TenantLimiter {
    lease: Mutex<Lease>,
    refill: tokio::sync::Mutex<()>,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Allowed {
        limit: u64,
        remaining: u64,
        reset: u64,
    },
    Limited {
        limit: u64,
        retry_after: u64,
        reset: u64,
    },
    /// The store is unavailable and `--redis-failure closed`.
    Unavailable { retry_after: u64 },
}

/// Leases tokens from the [`Store`] and answers most requests locally.
#[derive(Debug)]
pub struct Limiter {
    store: Store,
    clock: Arc<dyn Clock>,
    failure: RedisFailure,
    tenants: RwLock<HashMap<Arc<str>, Arc<TenantLimiter>>>,
    breaker: Mutex<Breaker>,
    metrics: Arc<Metrics>,
    /// How many limiters of this process split its share of the limit (one per worker).
    split: u32,
}

enum Local {
    Done(Outcome),
    Fetch { refund: u64 },
}

impl Limiter {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        failure: RedisFailure,
        metrics: Arc<Metrics>,
    ) -> Limiter {
        Limiter {
            store,
            clock,
            failure,
            tenants: RwLock::new(HashMap::new()),
            breaker: Mutex::new(Breaker {
                failures: 0,
                open_until_ns: 0,
            }),
            metrics,
            split: 1,
        }
    }

    /// This limiter is one of `n` in the process (one per worker) that split the pod's share
    /// of a tenant's limit while the store is unavailable.
    pub fn split(mut self, n: u32) -> Limiter {
        self.split = n.max(1);
        self
    }

    fn tenant(&self, tenant: &Arc<str>) -> Arc<TenantLimiter> {
        if let Some(t) = self
            .tenants
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return t.clone();
        }
        let mut map = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        map.entry(tenant.clone())
            .or_insert_with(|| {
                Arc::new(TenantLimiter {
                    lease: Mutex::new(Lease {
                        tokens: 0,
                        expires_ns: 0,
                        retry_at_ns: 0,
                        remaining: 0,
                        peers: 1,
                        fallback: None,
                    }),
                    refill: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    fn local(&self, t: &TenantLimiter, limit: Limit, now: u64) -> Local {
        let mut lease = t.lease.lock().unwrap_or_else(|p| p.into_inner());
        if lease.tokens > 0 && now < lease.expires_ns {
            lease.tokens -= 1;
            let remaining = lease.remaining + lease.tokens;
            return Local::Done(Outcome::Allowed {
                limit: limit.burst as u64,
                remaining,
                reset: limit.reset_after(remaining as f64),
            });
        }
        if now < lease.retry_at_ns {
            let wait = Duration::from_nanos(lease.retry_at_ns - now);
            return Local::Done(Outcome::Limited {
                limit: limit.burst as u64,
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
                reset: limit.reset_after(0.0),
            });
        }
        let refund = std::mem::take(&mut lease.tokens);
        Local::Fetch { refund }
    }

    /// Decides one request of `tenant` under `limit`.
    pub async fn check(&self, tenant: &Arc<str>, limit: Limit) -> Outcome {
        let t = self.tenant(tenant);
        if let Local::Done(o) = self.local(&t, limit, self.clock.now_ns()) {
            return o;
        }
        // One fetch per tenant at a time; the others wait for it and then use its lease.
        let _refill = t.refill.lock().await;
        let now = self.clock.now_ns();
        let refund = match self.local(&t, limit, now) {
            Local::Done(o) => return o,
            Local::Fetch { refund } => refund,
        };
        // The pod's lease is split between its workers, so the tokens a pod can park stay at
        // one lease whatever the number of workers.
        let want = (limit.lease_size() / u64::from(self.split)).max(1);
        match self.call_store(tenant, limit, want, refund).await {
            Ok(grant) => {
                let now = self.clock.now_ns();
                let mut lease = t.lease.lock().unwrap_or_else(|p| p.into_inner());
                lease.tokens = grant.granted;
                lease.expires_ns = now + LEASE_TTL.as_nanos() as u64;
                lease.remaining = grant.remaining;
                lease.peers = grant.peers.max(1);
                lease.fallback = None;
                lease.retry_at_ns = if grant.granted == 0 {
                    now + grant.wait.as_nanos() as u64
                } else {
                    0
                };
                drop(lease);
                match self.local(&t, limit, now) {
                    Local::Done(o) => o,
                    // Granted nothing and nothing to wait for: the bucket is empty right now.
                    Local::Fetch { .. } => Outcome::Limited {
                        limit: limit.burst as u64,
                        retry_after: 1,
                        reset: limit.reset_after(0.0),
                    },
                }
            }
            Err(e) => {
                self.metrics.redis_errors.inc();
                match self.failure {
                    RedisFailure::Closed => {
                        self.metrics
                            .fallback_decisions
                            .get_or_create(&crate::metrics::ModeLabel { mode: "closed" })
                            .inc();
                        if !matches!(e, StoreError::CircuitOpen) {
                            warn!(error = %e, "rate limiter store unavailable; refusing (closed mode)");
                        }
                        Outcome::Unavailable { retry_after: 1 }
                    }
                    RedisFailure::Open => {
                        self.metrics
                            .fallback_decisions
                            .get_or_create(&crate::metrics::ModeLabel { mode: "open" })
                            .inc();
                        if !matches!(e, StoreError::CircuitOpen) {
                            warn!(error = %e, "rate limiter store unavailable; using this pod's share locally");
                        }
                        let mut lease = t.lease.lock().unwrap_or_else(|p| p.into_inner());
                        let share = limit.share(lease.peers.saturating_mul(self.split));
                        let bucket = lease
                            .fallback
                            .get_or_insert_with(|| Bucket::full(share, now));
                        if bucket.take(share, now, 1) == 1 {
                            let remaining = bucket.tokens.floor() as u64;
                            Outcome::Allowed {
                                limit: limit.burst as u64,
                                remaining,
                                reset: share.reset_after(remaining as f64),
                            }
                        } else {
                            let wait = Duration::from_nanos(bucket.wait_ns(share, 1.0));
                            Outcome::Limited {
                                limit: limit.burst as u64,
                                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
                                reset: share.reset_after(0.0),
                            }
                        }
                    }
                }
            }
        }
    }

    async fn call_store(
        &self,
        tenant: &str,
        limit: Limit,
        want: u64,
        refund: u64,
    ) -> Result<Grant, StoreError> {
        let now = self.clock.now_ns();
        {
            let b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if b.failures >= BREAKER_THRESHOLD && now < b.open_until_ns {
                return Err(StoreError::CircuitOpen);
            }
        }
        let result = self.store.lease(tenant, limit, want, refund).await;
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                if b.failures >= BREAKER_THRESHOLD {
                    info!("rate limiter store is back; circuit closed");
                }
                b.failures = 0;
                self.metrics.circuit_open.set(0);
            }
            Err(_) => {
                b.failures = b.failures.saturating_add(1);
                if b.failures >= BREAKER_THRESHOLD {
                    // Open (or re-open after a failed probe).
                    b.open_until_ns = self.clock.now_ns() + BREAKER_OPEN.as_nanos() as u64;
                    self.metrics.circuit_open.set(1);
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_has_no_double_burst_at_window_edges() {
        let limit = Limit::new(10, 20);
        let mut b = Bucket::full(limit, 0);
        assert_eq!(b.take(limit, 0, 100), 20);
        // A second later exactly `rate` more, not another burst.
        assert_eq!(b.take(limit, 1_000_000_000, 100), 10);
        assert_eq!(b.take(limit, 1_000_000_000, 1), 0);
        assert_eq!(b.wait_ns(limit, 1.0), 100_000_000);
        // Idle for a long time: capped at the burst.
        assert_eq!(b.take(limit, 100_000_000_000, 100), 20);
    }

    #[test]
    fn lease_sizes() {
        assert_eq!(Limit::new(1000, 2000).lease_size(), 50);
        assert_eq!(Limit::new(10, 20).lease_size(), 1);
        assert_eq!(Limit::new(100_000, 40).lease_size(), 10);
    }

    fn limiter(clock: Arc<FakeClock>) -> Limiter {
        let metrics = Arc::new(Metrics::new());
        Limiter::new(
            Store::Memory(MemoryStore::new(clock.clone())),
            clock,
            RedisFailure::Open,
            metrics,
        )
    }

    #[tokio::test]
    async fn admits_burst_then_rate_with_a_fake_clock() {
        let clock = Arc::new(FakeClock::default());
        let l = limiter(clock.clone());
        let tenant: Arc<str> = Arc::from("acme");
        let limit = Limit::new(100, 200);
        let mut allowed = 0;
        for _ in 0..1000 {
            if matches!(l.check(&tenant, limit).await, Outcome::Allowed { .. }) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 200);
        let mut allowed = 0;
        for _ in 0..100 {
            clock.advance(Duration::from_millis(10));
            for _ in 0..10 {
                if matches!(l.check(&tenant, limit).await, Outcome::Allowed { .. }) {
                    allowed += 1;
                }
            }
        }
        // One second at 100/s, give or take the one lease parked locally.
        assert!((95..=105).contains(&allowed), "{allowed}");
        match l.check(&tenant, limit).await {
            Outcome::Limited {
                retry_after, limit, ..
            } => {
                assert_eq!(limit, 200);
                assert!(retry_after >= 1);
            }
            other => panic!("expected a limit, got {other:?}"),
        }
    }
}
