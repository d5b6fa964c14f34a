//! Command line and environment: every flag also reads `TENANTRY_<FLAG>`, and everything is parsed
//! into a typed [`Config`] before anything starts, so a bad value fails fast with a clear message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tenantry_tenancy::TenantSource;
use tenantry_tenancy::cidr::Cidr;
use thiserror::Error;

#[derive(Debug, Parser)]
#[command(
    name = "tenantry-enforcer",
    version,
    about = "Tenantry's per-pod sidecar: checks the tenant header (and optionally a JWT), \
             evaluates Cedar traffic policies and enforces per-tenant rate limits shared through \
             Redis, then forwards to the application on localhost"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the same as giving no subcommand; the webhook injects `args: ["run"]`).
    Run,
    /// Install iptables rules that redirect inbound TCP for the app's ports to the enforcer
    /// (run as an init container with `NET_ADMIN`).
    InitRedirect(RedirectArgs),
}

/// What happens to requests while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisFailure {
    /// Admit from a local bucket holding this pod's share of the tenant's limit.
    Open,
    /// Refuse with 503 until Redis is back.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Address the proxy listens on (HTTP/1.1 and HTTP/2 cleartext).
    #[arg(
        long,
        global = true,
        env = "TENANTRY_LISTEN",
        default_value = "0.0.0.0:15001"
    )]
    pub listen: SocketAddr,
    /// The application, usually `127.0.0.1:<app port>`.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_UPSTREAM",
        default_value = "127.0.0.1:8080"
    )]
    pub upstream: SocketAddr,
    /// The tenant that owns this pod.
    #[arg(long, global = true, env = "TENANTRY_TENANT")]
    pub tenant: Option<String>,
    /// The owner's tier as the webhook saw it; informational (the directory is authoritative).
    #[arg(long, global = true, env = "TENANTRY_TIER")]
    pub tier: Option<String>,
    /// Tenant data: a `postgres://` URL or a YAML file; `example` for the embedded example
    /// directory (demos and tests). Required: an enforcer that does not know the real tenants
    /// would refuse their traffic as unknown.
    #[arg(long, global = true, env = "TENANTRY_TENANTS")]
    pub tenants: Option<String>,
    /// Cedar policy directory (`tenantry.cedarschema` + `*.cedar`). Default: the shipped policies.
    #[arg(long, global = true, env = "TENANTRY_POLICIES")]
    pub policies: Option<PathBuf>,
    /// The Cedar `Service` this pod serves (resource name in traffic policies).
    #[arg(long, global = true, env = "TENANTRY_SERVICE", default_value = "app")]
    pub service: String,
    /// The namespace of the pod (resource namespace in traffic policies).
    #[arg(long, global = true, env = "TENANTRY_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// Mark the service as shared: every tenant may call it (policy `resource.shared`).
    #[arg(long, global = true, env = "TENANTRY_SHARED", default_value_t = false)]
    pub shared: bool,
    /// Redis URL for shared rate limits. Without it, limits are per pod (in memory).
    #[arg(long, global = true, env = "TENANTRY_REDIS")]
    pub redis: Option<String>,
    /// What to do while Redis is unreachable.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_REDIS_FAILURE",
        value_enum,
        default_value = "open"
    )]
    pub redis_failure: RedisFailure,
    /// Time allowed for one Redis round trip, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_REDIS_TIMEOUT_MS",
        default_value_t = 50
    )]
    pub redis_timeout_ms: u64,
    /// Turn rate limiting off (benchmarks, debugging).
    #[arg(
        long,
        global = true,
        env = "TENANTRY_NO_RATE_LIMIT",
        default_value_t = false
    )]
    pub no_rate_limit: bool,
    /// Admin address for `/healthz`, `/readyz` and `/metrics`.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_ADMIN_LISTEN",
        default_value = "127.0.0.1:15021"
    )]
    pub admin_listen: SocketAddr,
    /// HS256 secret file; enables JWT verification.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_JWT_SECRET_FILE",
        conflicts_with = "jwt_jwks_file"
    )]
    pub jwt_secret_file: Option<PathBuf>,
    /// JWKS file with RS256/ES256 public keys; enables JWT verification.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_JWT_JWKS_FILE",
        conflicts_with = "jwt_jwks"
    )]
    pub jwt_jwks_file: Option<PathBuf>,
    /// The JWKS document itself (public keys only), as the webhook injects it; enables JWT
    /// verification.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_JWT_JWKS",
        conflicts_with = "jwt_secret_file"
    )]
    pub jwt_jwks: Option<String>,
    /// The one algorithm tokens must use (default: HS256 with a secret, RS256 with a JWKS).
    #[arg(long, global = true, env = "TENANTRY_JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<JwtAlgorithm>,
    /// The claim that names the tenant; it must equal `X-Tenant-ID`.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_JWT_TENANT_CLAIM",
        default_value = "tenant"
    )]
    pub jwt_tenant_claim: String,
    /// Required `iss`, if set.
    #[arg(long, global = true, env = "TENANTRY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud`, if set.
    #[arg(long, global = true, env = "TENANTRY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Largest request header block, in bytes.
    #[arg(long, global = true, env = "TENANTRY_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Largest request body, in bytes (streamed, never buffered).
    #[arg(long, global = true, env = "TENANTRY_MAX_BODY_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// Time a new connection has to send its first request (or HTTP/2 preface), and every
    /// HTTP/1.1 request its headers from their first byte, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_HEADER_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub header_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_IDLE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub idle_timeout_ms: u64,
    /// Client connections served at once; past it, new ones get a 503 and are closed.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_MAX_CONNECTIONS",
        default_value_t = 4096
    )]
    pub max_connections: usize,
    /// Peers (CIDR blocks, comma separated) whose `X-Forwarded-*` and `Forwarded` headers are
    /// kept, such as an ingress in front of the pod; from anyone else they are replaced.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,
    /// Time allowed for the application to send response headers, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_UPSTREAM_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub upstream_timeout_ms: u64,
    /// How long a connection to the application may wait idle before it is closed instead of
    /// reused, in milliseconds. Keep it below the application's own keep-alive timeout
    /// (gunicorn 2 s, Node.js and uvicorn 5 s by default): a connection the application closes
    /// just as a request is written to it fails that request with a 502.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_UPSTREAM_IDLE_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub upstream_idle_timeout_ms: u64,
    /// How long SIGTERM waits for in-flight requests, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "TENANTRY_DRAIN_TIMEOUT_MS",
        default_value_t = 20_000
    )]
    pub drain_timeout_ms: u64,
    /// Proxy worker threads, each with its own runtime and listener (default: one per CPU).
    #[arg(long, global = true, env = "TENANTRY_WORKERS")]
    pub workers: Option<usize>,
    /// Log format (default: pretty on a terminal, JSON otherwise).
    #[arg(long, global = true, env = "TENANTRY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Args)]
pub struct RedirectArgs {
    /// Application ports whose inbound TCP goes to the enforcer (comma separated).
    #[arg(
        long,
        env = "TENANTRY_APP_PORTS",
        value_delimiter = ',',
        required = true
    )]
    pub app_ports: Vec<u16>,
    /// The enforcer's listening port.
    #[arg(long, env = "TENANTRY_PROXY_PORT", default_value_t = 15001)]
    pub proxy_port: u16,
    /// The enforcer's user id: its own connections are never redirected.
    #[arg(long, env = "TENANTRY_EXCLUDE_UID", default_value_t = 1337)]
    pub exclude_uid: u32,
    /// The iptables binary.
    #[arg(long, env = "TENANTRY_IPTABLES", default_value = "iptables")]
    pub iptables: String,
    /// Print the commands instead of running them.
    #[arg(long, env = "TENANTRY_DRY_RUN", default_value_t = false)]
    pub dry_run: bool,
}

/// The JWT settings once the key material is named.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key: JwtKeySource,
    pub algorithm: JwtAlgorithm,
    pub tenant_claim: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

#[derive(Debug, Clone)]
pub enum JwtKeySource {
    SecretFile(PathBuf),
    JwksFile(PathBuf),
    /// An inline JWKS document (`--jwt-jwks`).
    Jwks(String),
}

/// How long and how many client connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_header_bytes: usize,
    /// For the first request (or h2 preface) and each request's headers.
    pub header_timeout: Duration,
    /// Closed after this long without a request in flight.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// Where tenant data comes from.
#[derive(Debug, Clone)]
pub enum Tenants {
    /// The embedded example directory (`--tenants example`).
    Example,
    /// The webhook's traffic view (`--tenants http://…/v1/traffic-view`): what injected
    /// enforcers use, with no credential in the pod.
    View(http::Uri),
    Source(TenantSource),
}

/// Everything the proxy needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub tenant: String,
    pub tier: Option<String>,
    pub tenants: Tenants,
    pub policies: Option<PathBuf>,
    pub service: String,
    pub namespace: String,
    pub shared: bool,
    pub redis: Option<String>,
    pub redis_failure: RedisFailure,
    pub redis_timeout: Duration,
    pub rate_limit: bool,
    pub admin_listen: SocketAddr,
    pub jwt: Option<JwtConfig>,
    pub max_body_bytes: u64,
    pub connections: ConnectionLimits,
    pub trusted_proxies: Vec<Cidr>,
    pub upstream_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub drain_timeout: Duration,
    pub log_format: Option<LogFormat>,
    /// Worker threads; 0 serves on the caller's runtime (in-process use).
    pub workers: usize,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("`--tenant` (TENANTRY_TENANT) is required: the tenant that owns this pod")]
    NoTenant,
    #[error(
        "`--tenants` (TENANTRY_TENANTS) is required: a postgres:// URL or a tenants file (`example` for the embedded example directory); without the real tenants every caller would be refused as unknown"
    )]
    NoTenants,
    #[error("`--tenants {0}` is not a valid URL")]
    ViewUrl(String),
    #[error(
        "`--tenants https://…`: the traffic view is served over plain HTTP inside the cluster; use its http:// URL"
    )]
    ViewTls,
    #[error("`--jwt-algorithm {0}` needs `--jwt-secret-file`")]
    HmacWithoutSecret(&'static str),
    #[error("`--jwt-algorithm {0}` needs `--jwt-jwks-file`")]
    AsymmetricWithoutJwks(&'static str),
    #[error("`--jwt-algorithm` is set but neither `--jwt-secret-file` nor `--jwt-jwks-file` is")]
    AlgorithmWithoutKey,
    #[error("`--{0}` must be greater than zero")]
    Zero(&'static str),
}

impl RunArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let tenant = self
            .tenant
            .filter(|t| !t.is_empty())
            .ok_or(ConfigError::NoTenant)?;
        let key = match (self.jwt_secret_file, self.jwt_jwks_file, self.jwt_jwks) {
            (Some(f), _, _) => Some(JwtKeySource::SecretFile(f)),
            (None, Some(f), _) => Some(JwtKeySource::JwksFile(f)),
            (None, None, Some(doc)) if !doc.is_empty() => Some(JwtKeySource::Jwks(doc)),
            (None, None, _) => None,
        };
        let jwt = match (key, self.jwt_algorithm) {
            (None, Some(_)) => return Err(ConfigError::AlgorithmWithoutKey),
            (None, None) => None,
            (Some(key), alg) => {
                let algorithm = match (&key, alg) {
                    (JwtKeySource::SecretFile(_), None) => JwtAlgorithm::Hs256,
                    (JwtKeySource::JwksFile(_) | JwtKeySource::Jwks(_), None) => {
                        JwtAlgorithm::Rs256
                    }
                    (JwtKeySource::SecretFile(_), Some(JwtAlgorithm::Hs256)) => JwtAlgorithm::Hs256,
                    (JwtKeySource::SecretFile(_), Some(a)) => {
                        return Err(ConfigError::AsymmetricWithoutJwks(a.name()));
                    }
                    (
                        JwtKeySource::JwksFile(_) | JwtKeySource::Jwks(_),
                        Some(JwtAlgorithm::Hs256),
                    ) => {
                        return Err(ConfigError::HmacWithoutSecret("HS256"));
                    }
                    (JwtKeySource::JwksFile(_) | JwtKeySource::Jwks(_), Some(a)) => a,
                };
                Some(JwtConfig {
                    key,
                    algorithm,
                    tenant_claim: self.jwt_tenant_claim,
                    issuer: self.jwt_issuer,
                    audience: self.jwt_audience,
                })
            }
        };
        for (flag, value) in [
            ("redis-timeout-ms", self.redis_timeout_ms),
            ("upstream-timeout-ms", self.upstream_timeout_ms),
            ("upstream-idle-timeout-ms", self.upstream_idle_timeout_ms),
            ("header-timeout-ms", self.header_timeout_ms),
            ("idle-timeout-ms", self.idle_timeout_ms),
            ("max-connections", self.max_connections as u64),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(flag));
            }
        }
        let tenants = match self.tenants.as_deref().filter(|t| !t.is_empty()) {
            None => return Err(ConfigError::NoTenants),
            Some("example") => Tenants::Example,
            Some(url) if url.starts_with("https://") => return Err(ConfigError::ViewTls),
            Some(url) if url.starts_with("http://") => Tenants::View(
                url.parse()
                    .map_err(|_| ConfigError::ViewUrl(url.to_string()))?,
            ),
            Some(source) => Tenants::Source(TenantSource::parse(source)),
        };
        Ok(Config {
            listen: self.listen,
            upstream: self.upstream,
            tenant,
            tier: self.tier,
            tenants,
            policies: self.policies,
            service: self.service,
            namespace: self.namespace,
            shared: self.shared,
            redis: self.redis.filter(|r| !r.is_empty()),
            redis_failure: self.redis_failure,
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
            rate_limit: !self.no_rate_limit,
            admin_listen: self.admin_listen,
            jwt,
            max_body_bytes: self.max_body_bytes,
            connections: ConnectionLimits {
                max_header_bytes: self.max_header_bytes,
                header_timeout: Duration::from_millis(self.header_timeout_ms),
                idle_timeout: Duration::from_millis(self.idle_timeout_ms),
                max_connections: self.max_connections,
            },
            trusted_proxies: self.trusted_proxies,
            upstream_timeout: Duration::from_millis(self.upstream_timeout_ms),
            upstream_idle_timeout: Duration::from_millis(self.upstream_idle_timeout_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            log_format: self.log_format,
            workers: self
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1),
        })
    }
}

impl JwtAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }
}

impl Config {
    /// A configuration for in-process use (the demo, tests): loopback ports, embedded data.
    pub fn local(tenant: &str, upstream: SocketAddr) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream,
            tenant: tenant.to_string(),
            tier: None,
            tenants: Tenants::Example,
            policies: None,
            service: "app".to_string(),
            namespace: String::new(),
            shared: false,
            redis: None,
            redis_failure: RedisFailure::Open,
            redis_timeout: Duration::from_millis(50),
            rate_limit: true,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            jwt: None,
            max_body_bytes: 256 * 1024 * 1024,
            connections: ConnectionLimits::default(),
            trusted_proxies: Vec::new(),
            upstream_timeout: Duration::from_secs(30),
            upstream_idle_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(20),
            log_format: None,
            workers: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["tenantry-enforcer"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        cli.run.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn run_subcommand_is_the_same_as_none() {
        let cli = Cli::try_parse_from([
            "tenantry-enforcer",
            "run",
            "--tenant",
            "acme",
            "--tenants",
            "example",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Run)));
        assert_eq!(cli.run.into_config().unwrap().tenant, "acme");
    }

    /// Timeouts and limits of zero are refused by name; the upstream idle timeout defaults
    /// below common applications' keep-alive timeouts (gunicorn's is 2 s).
    #[test]
    fn zero_timeouts_are_refused_and_the_upstream_idle_timeout_defaults_below_2s() {
        let base = ["--tenant", "a", "--tenants", "example"];
        for flag in [
            "--upstream-idle-timeout-ms",
            "--upstream-timeout-ms",
            "--redis-timeout-ms",
            "--header-timeout-ms",
        ] {
            let err = parse(&[&base[..], &[flag, "0"]].concat()).unwrap_err();
            assert_eq!(err, format!("`{flag}` must be greater than zero"));
        }
        let config = parse(&[&base[..], &["--upstream-idle-timeout-ms", "250"]].concat()).unwrap();
        assert_eq!(config.upstream_idle_timeout, Duration::from_millis(250));
        assert!(parse(&base).unwrap().upstream_idle_timeout < Duration::from_secs(2));
    }

    #[test]
    fn tenant_is_required() {
        assert!(parse(&[]).unwrap_err().contains("--tenant"));
    }

    #[test]
    fn a_tenant_source_is_required_and_the_example_is_asked_for_by_name() {
        let err = parse(&["--tenant", "acme"]).unwrap_err();
        assert!(
            err.contains("`--tenants` (TENANTRY_TENANTS) is required"),
            "{err}"
        );
        assert!(matches!(
            parse(&["--tenant", "acme", "--tenants", "example"])
                .unwrap()
                .tenants,
            Tenants::Example
        ));
        assert!(matches!(
            parse(&["--tenant", "acme", "--tenants", "postgres://db/t"])
                .unwrap()
                .tenants,
            Tenants::Source(TenantSource::Postgres(_))
        ));
    }

    #[test]
    fn jwt_algorithm_must_match_the_key_kind() {
        let err = parse(&[
            "--tenant",
            "a",
            "--tenants",
            "example",
            "--jwt-secret-file",
            "s",
            "--jwt-algorithm",
            "RS256",
        ])
        .unwrap_err();
        assert!(err.contains("RS256"), "{err}");
        let ok = parse(&[
            "--tenant",
            "a",
            "--tenants",
            "example",
            "--jwt-jwks-file",
            "k",
            "--jwt-algorithm",
            "ES256",
        ])
        .unwrap();
        assert_eq!(ok.jwt.unwrap().algorithm, JwtAlgorithm::Es256);
    }
}
