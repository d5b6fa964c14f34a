//! Quota reservations shared by webhook replicas through Redis.
//!
//! One Lua script purges expired reservations, returns everyone else's, and adds this one — all
//! atomically — so two replicas deciding at the same moment always see each other. Keys carry a
//! `{tenant}` hash tag (one Redis Cluster slot per tenant) and always get an expiry.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tenantry_tenancy::redis_store::{RedisTarget, SharedConnection};
use thiserror::Error;

use crate::ledger::Charges;

#[derive(Debug, Error)]
pub enum ReservationError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
}

const RESERVE: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, m in ipairs(expired) do redis.call('HDEL', KEYS[2], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local others = redis.call('HGETALL', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return others
";

const RELEASE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
";

/// A handle to the shared reservation store.
#[derive(Clone)]
pub struct SharedReservations {
    conn: SharedConnection,
    timeout: Duration,
    reserve: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for SharedReservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedReservations")
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn keys(tenant: &str) -> (String, String) {
    (
        format!("tenantry:reservations:{{{tenant}}}:expiry"),
        format!("tenantry:reservations:{{{tenant}}}:charges"),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn encode(charges: &Charges) -> String {
    charges
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl SharedReservations {
    /// Connects (and keeps reconnecting in the background) to `url`.
    pub async fn connect(
        url: &str,
        timeout: Duration,
    ) -> Result<SharedReservations, ReservationError> {
        let target = RedisTarget::parse(url)?;
        let conn = tokio::time::timeout(timeout * 10, target.managed())
            .await
            .map_err(|_| ReservationError::Timeout(timeout * 10))??;
        Ok(SharedReservations {
            conn,
            timeout,
            reserve: redis::Script::new(RESERVE),
            release: redis::Script::new(RELEASE),
        })
    }

    /// Adds `key`'s reservation and returns everyone else's, as `(key, charges)`.
    pub async fn reserve(
        &self,
        tenant: &str,
        key: &str,
        charges: &Charges,
        ttl: Duration,
    ) -> Result<Vec<(String, Charges)>, ReservationError> {
        let (expiry, data) = keys(tenant);
        let now = now_ms();
        let mut conn = self.conn.clone();
        let mut invocation = self.reserve.key(expiry);
        invocation
            .key(data)
            .arg(now)
            .arg(now + ttl.as_millis() as u64)
            .arg(key)
            .arg(encode(charges))
            .arg(ttl.as_millis() as u64 * 2);
        let flat: Vec<String> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| ReservationError::Timeout(self.timeout))??;
        let mut out = Vec::new();
        for pair in flat.chunks(2) {
            let [member, encoded] = pair else { continue };
            if member == key {
                continue;
            }
            let charges = encoded
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
                .collect();
            out.push((member.clone(), charges));
        }
        Ok(out)
    }

    /// Drops `key`'s reservation (denied, or observed by a watch). Idempotent.
    pub async fn release(&self, tenant: &str, key: &str) -> Result<(), ReservationError> {
        let (expiry, data) = keys(tenant);
        let mut conn = self.conn.clone();
        let mut invocation = self.release.key(expiry);
        invocation.key(data).arg(key);
        let _: i64 = tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| ReservationError::Timeout(self.timeout))??;
        Ok(())
    }
}

/// Sums others' charges, skipping reservations this replica has already seen settle.
pub fn totals(
    others: &[(String, Charges)],
    settled: impl Fn(&str) -> bool,
) -> HashMap<String, i64> {
    let mut totals = HashMap::new();
    for (key, charges) in others {
        if settled(key) {
            continue;
        }
        for (k, v) in charges {
            *totals.entry(k.clone()).or_default() += v;
        }
    }
    totals
}
