//! Where the webhook's quota reservations and the enforcers' rate limits live: one Redis server
//! (`redis://host:6379`, `rediss://…`) or a Redis Cluster (`redis+cluster://host:7000,host:7001`,
//! any reachable nodes; the rest are discovered). Every script's keys share one hash tag (the
//! tenant, `{acme}`), so each runs on a single cluster slot.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// A parsed `--redis` URL.
#[derive(Clone)]
pub enum RedisTarget {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print credentials.
        f.write_str(match self {
            RedisTarget::Single(_) => "RedisTarget::Single",
            RedisTarget::Cluster(_) => "RedisTarget::Cluster",
        })
    }
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget, RedisError> {
        let cluster = url
            .strip_prefix("redis+cluster://")
            .map(|nodes| ("redis", nodes))
            .or_else(|| url.strip_prefix("rediss+cluster://").map(|n| ("rediss", n)));
        match cluster {
            Some((scheme, nodes)) => {
                let nodes: Vec<String> = nodes
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(|n| format!("{scheme}://{n}"))
                    .collect();
                Ok(RedisTarget::Cluster(Box::new(ClusterClient::new(nodes)?)))
            }
            None => Ok(RedisTarget::Single(redis::Client::open(url)?)),
        }
    }

    /// A connection multiplexing every request; the caller reconnects after failures (a
    /// cluster connection follows the cluster's topology by itself).
    pub async fn multiplexed(&self) -> Result<SharedConnection, RedisError> {
        Ok(match self {
            RedisTarget::Single(c) => {
                SharedConnection::Multiplexed(c.get_multiplexed_async_connection().await?)
            }
            RedisTarget::Cluster(c) => SharedConnection::Cluster(c.get_async_connection().await?),
        })
    }

    /// A connection that reconnects by itself.
    pub async fn managed(&self) -> Result<SharedConnection, RedisError> {
        Ok(match self {
            RedisTarget::Single(c) => {
                SharedConnection::Managed(ConnectionManager::new(c.clone()).await?)
            }
            RedisTarget::Cluster(c) => SharedConnection::Cluster(c.get_async_connection().await?),
        })
    }
}

/// A connection to either kind of deployment; scripts and commands run on it alike.
#[derive(Clone)]
pub enum SharedConnection {
    Multiplexed(MultiplexedConnection),
    Managed(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            SharedConnection::Multiplexed(c) => c.req_packed_command(cmd),
            SharedConnection::Managed(c) => c.req_packed_command(cmd),
            SharedConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            SharedConnection::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            SharedConnection::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            SharedConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            SharedConnection::Multiplexed(c) => c.get_db(),
            SharedConnection::Managed(c) => c.get_db(),
            SharedConnection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cluster_urls_name_their_nodes_and_plain_urls_one_server() {
        assert!(matches!(
            RedisTarget::parse("redis+cluster://10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            RedisTarget::Cluster(_)
        ));
        assert!(matches!(
            RedisTarget::parse("redis://redis.tenantry-system.svc:6379").unwrap(),
            RedisTarget::Single(_)
        ));
        assert!(RedisTarget::parse("http://nope").is_err());
    }
}
