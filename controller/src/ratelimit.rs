//! Per-tenant credentials for the enforcers' shared rate limits.
//!
//! Enforcers keep their buckets in the keyspace of the tenant whose pods they guard
//! (`tenantry:ratelimit:{TENANT}:CALLER`). The controller gives each tenant a Redis ACL user
//! limited to exactly that keyspace and to the commands the lease script needs, and puts its URL
//! in the Secret `tenantry-ratelimit` of each of the tenant's namespaces, which the webhook
//! injects into the enforcer (`--sidecar-redis-secret`). A tenant that reads the Secret can spend
//! or reset only the budgets of traffic into its own services — never another tenant's.
//!
//! Passwords are derived (HMAC-SHA256) from the Redis admin password, so every reconcile sets the
//! same ones without storing them anywhere else; rotating the admin password rotates them all.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use tenantry_tenancy::redis_store::RedisTarget;
use thiserror::Error;

/// The Secret in each tenant namespace, and its key.
pub const SECRET: &str = "tenantry-ratelimit";
pub const SECRET_KEY: &str = "url";
/// Prefix of the ACL users the controller owns.
const USER_PREFIX: &str = "tenantry-tenant-";

/// Where enforcers reach Redis, and the key their passwords derive from.
#[derive(Clone, PartialEq, Eq)]
pub struct RateLimitAccess {
    /// `host:port` of the Redis enforcers use.
    pub address: String,
    /// The Redis admin password: the controller's own credential and the derivation key.
    pub admin_password: String,
}

impl fmt::Debug for RateLimitAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitAccess")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl RateLimitAccess {
    pub fn username(tenant: &str) -> String {
        format!("{USER_PREFIX}{tenant}")
    }

    /// The tenant's password: HMAC-SHA256(admin password, tenant id), hex.
    pub fn password(&self, tenant: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.admin_password.as_bytes());
        let tag = ring::hmac::sign(&key, format!("tenantry-ratelimit:{tenant}").as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What the tenant's enforcers get as `TENANTRY_REDIS`.
    pub fn tenant_url(&self, tenant: &str) -> String {
        format!(
            "redis://{}:{}@{}",
            Self::username(tenant),
            self.password(tenant),
            self.address
        )
    }

    fn admin_url(&self) -> String {
        format!("redis://:{}@{}", self.admin_password, self.address)
    }
}

#[derive(Debug, Error)]
pub enum RateLimitError {
    #[error("cannot configure the rate-limit Redis at {address}: {source}")]
    Redis {
        address: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot generate a random Redis password")]
    Random,
    #[error("cannot read or create the Secret `{name}` holding the Redis password: {source}")]
    Secret {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// What the enforcer's lease script calls (`enforcer/src/ratelimit.rs`): a script runs with its
/// caller's permissions, so these are granted too, on the tenant's keys only.
const SCRIPT_COMMANDS: [&str; 7] = [
    "hmget",
    "hset",
    "pexpire",
    "time",
    "zadd",
    "zcard",
    "zremrangebyscore",
];

/// The ACL rule of `tenant`'s user: its own keyspace, the lease script, nothing else.
fn acl_rules(access: &RateLimitAccess, tenant: &str) -> Vec<String> {
    let mut rules = vec![
        "reset".into(),
        "on".into(),
        format!(">{}", access.password(tenant)),
        format!("~tenantry:ratelimit:{{{tenant}}}*"),
        "resetchannels".into(),
        "-@all".into(),
        "+evalsha".into(),
        "+script|load".into(),
        "+ping".into(),
    ];
    rules.extend(SCRIPT_COMMANDS.iter().map(|c| format!("+{c}")));
    rules
}

/// Makes the ACL users exactly one per tenant in `tenants`; returns how many were removed.
pub async fn provision(
    access: &RateLimitAccess,
    tenants: &BTreeSet<String>,
) -> Result<usize, RateLimitError> {
    let fail = |source| RateLimitError::Redis {
        address: access.address.clone(),
        source,
    };
    let target = RedisTarget::parse(&access.admin_url()).map_err(fail)?;
    let mut conn = target.multiplexed().await.map_err(fail)?;
    for tenant in tenants {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(RateLimitAccess::username(tenant));
        for rule in acl_rules(access, tenant) {
            cmd.arg(rule);
        }
        cmd.query_async::<()>(&mut conn).await.map_err(fail)?;
    }
    let users: Vec<String> = redis::cmd("ACL")
        .arg("USERS")
        .query_async(&mut conn)
        .await
        .map_err(fail)?;
    let mut removed = 0;
    for user in users {
        let Some(tenant) = user.strip_prefix(USER_PREFIX) else {
            continue;
        };
        if !tenants.contains(tenant) {
            redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&user)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(fail)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The Redis admin password from the Secret `name` in `namespace`, created with a random one
/// when absent (the first replica to create it wins; the others read the winner's).
pub async fn admin_password(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<String, RateLimitError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let fail = |source| RateLimitError::Secret {
        name: format!("{namespace}/{name}"),
        source,
    };
    let read = |secret: &Secret| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get("password"))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .filter(|p| !p.is_empty())
    };
    if let Some(password) = api
        .get_opt(name)
        .await
        .map_err(fail)?
        .as_ref()
        .and_then(read)
    {
        return Ok(password);
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        data: Some(
            [(
                "password".to_string(),
                ByteString(random_password()?.into_bytes()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => Ok(read(&created).unwrap_or_default()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let winner = api.get(name).await.map_err(fail)?;
            Ok(read(&winner).unwrap_or_default())
        }
        Err(source) => Err(fail(source)),
    }
}

/// 32 random bytes from the system's generator, hex.
fn random_password() -> Result<String, RateLimitError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| RateLimitError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenant_gets_its_own_stable_password_and_keyspace() {
        let access = RateLimitAccess {
            address: "redis.tenantry-system.svc:6379".into(),
            admin_password: "admin".into(),
        };
        assert_eq!(access.password("acme"), access.password("acme"));
        assert_ne!(access.password("acme"), access.password("globex"));
        assert_eq!(access.password("acme").len(), 64);
        let url = access.tenant_url("acme");
        assert!(url.starts_with("redis://tenantry-tenant-acme:"), "{url}");
        assert!(url.ends_with("@redis.tenantry-system.svc:6379"), "{url}");
        let rules = acl_rules(&access, "acme");
        assert!(rules.contains(&"~tenantry:ratelimit:{acme}*".to_string()));
        assert!(rules.contains(&"-@all".to_string()));
        assert!(
            !format!("{access:?}").contains("admin\""),
            "the password stays out of logs"
        );
    }
}
