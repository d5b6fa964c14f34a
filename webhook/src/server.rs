//! The HTTPS admission server: `POST /mutate` and `POST /validate` around the pure decision,
//! with the live tenant snapshot, policy set and usage ledger it reads, and `/healthz`,
//! `/readyz`, `/metrics` for operators.
//!
//! [`router`] builds the axum router from an [`AppState`], so tests can drive it without a socket;
//! [`run`] loads everything from a [`Config`] and serves it over rustls until SIGTERM, letting
//! in-flight reviews finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tenantry_certs::ReloadingCert;
use tenantry_cluster::json::At;
use tenantry_tenancy::{DirectoryStore, PolicyStore, PostgresSource, TenantSource};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use crate::contract;
use crate::decide::{self, Decision};
use crate::ledger::{Ledger, charges, growth_key, object_key};
use crate::metrics::{DenialLabels, EndpointLabels, Metrics, RequestLabels, ResultLabels};
use crate::pod::{InjectionConfig, SidecarMode};
use crate::translate::{Inputs, object_namespace};

/// `tenantry-webhook` flags. Every flag also reads `TENANTRY_<FLAG>`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "tenantry-webhook",
    version,
    about = "Tenantry's admission webhook: mutate and validate every write with Cedar policies"
)]
pub struct Config {
    /// HTTPS address for the API server.
    #[arg(long, env = "TENANTRY_LISTEN", default_value = contract::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Plain HTTP address for /healthz, /readyz and /metrics (they are also served over HTTPS).
    #[arg(long, env = "TENANTRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain; reloaded when the file changes.
    #[arg(long, env = "TENANTRY_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key; reloaded when the file changes.
    #[arg(long, env = "TENANTRY_TLS_KEY")]
    pub tls_key: PathBuf,
    /// In a cluster: take the CA and serving certificate from the Secret `tenantry-webhook-tls`
    /// (creating it if no replica has), write them to --tls-cert/--tls-key, and put the CA into
    /// the webhook configurations' caBundle.
    #[arg(long, env = "TENANTRY_TLS_BOOTSTRAP")]
    pub tls_bootstrap: bool,
    /// Tenant source: a postgres:// URL or a YAML file (reloaded when it changes).
    #[arg(long, env = "TENANTRY_TENANTS")]
    pub tenants: String,
    /// Directory with tenantry.cedarschema and *.cedar; reloaded when a file changes.
    #[arg(long, env = "TENANTRY_POLICIES")]
    pub policies: PathBuf,
    /// Existing objects (multi-document YAML) giving usage when no cluster is watched.
    #[arg(long, env = "TENANTRY_STATE")]
    pub state: Option<PathBuf>,
    /// Redis URL for quota reservations shared by replicas.
    #[arg(long, env = "TENANTRY_REDIS")]
    pub redis: Option<String>,
    /// Kubeconfig for watching usage. In a pod, the in-cluster configuration is used without it.
    #[arg(long, env = "TENANTRY_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// How long to keep deciding from the last tenant snapshot while its source is unreachable;
    /// after that, writes to tenant namespaces are refused.
    #[arg(long, env = "TENANTRY_MAX_STALE", default_value = "300s", value_parser = parse_duration)]
    pub max_stale: Duration,
    /// How often the Postgres source re-checks the directory version (a missed NOTIFY).
    #[arg(long, env = "TENANTRY_RESYNC", default_value = "30s", value_parser = parse_duration)]
    pub resync: Duration,
    /// How often policy, tenants and certificate files are checked for changes.
    #[arg(long, env = "TENANTRY_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// How long an admitted create holds its quota before the object is observed. A watch
    /// reports a created object within milliseconds; the bound only matters for creates the API
    /// server then refused (another admission plugin, a conflict), which must not block the
    /// tenant's next create for long.
    #[arg(long, env = "TENANTRY_RESERVATION_TTL", default_value = "15s", value_parser = parse_duration)]
    pub reservation_ttl: Duration,
    /// Largest request body; larger ones get 413, at once when `Content-Length` announces it.
    #[arg(long, env = "TENANTRY_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive; slower ones get 408. The API server sends a
    /// review in one go; a body trickling in holds a connection every tenant write depends on.
    #[arg(long, env = "TENANTRY_BODY_READ_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Most connections served at once; more wait in the listen backlog.
    #[arg(long, env = "TENANTRY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// How long in-flight reviews may take to finish after SIGTERM.
    #[arg(long, env = "TENANTRY_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Image of the injected enforcer sidecar.
    #[arg(
        long,
        env = "TENANTRY_SIDECAR_IMAGE",
        default_value = "ghcr.io/tenantry/tenantry-enforcer:0.1.0"
    )]
    pub sidecar_image: String,
    /// `native` (init container with restartPolicy Always) or `container`.
    #[arg(long, env = "TENANTRY_SIDECAR_MODE", default_value = "native")]
    pub sidecar_mode: SidecarMode,
    /// TENANTRY_TENANTS given to injected enforcers. Default: this webhook's traffic view
    /// (`http://tenantry-webhook.tenantry-system.svc:PORT/v1/traffic-view`) when
    /// --traffic-view-listen is set. Never a database URL: pod specs are readable by tenants.
    #[arg(long, env = "TENANTRY_SIDECAR_TENANTS")]
    pub sidecar_tenants: Option<String>,
    /// Plain HTTP address serving the traffic view to injected enforcers (tier, status and
    /// rate limit per tenant; nothing else), e.g. `0.0.0.0:8081`.
    #[arg(long, env = "TENANTRY_TRAFFIC_VIEW_LISTEN")]
    pub traffic_view_listen: Option<SocketAddr>,
    /// Most enforcer connections to the traffic view at once (each long-polls one).
    #[arg(
        long,
        env = "TENANTRY_TRAFFIC_VIEW_MAX_CONNECTIONS",
        default_value_t = 16384
    )]
    pub traffic_view_max_connections: usize,
    /// JWKS file (public keys only) injected enforcers verify `Authorization: Bearer` tokens
    /// with; the header alone then no longer identifies a tenant.
    #[arg(long, env = "TENANTRY_SIDECAR_JWT_JWKS_FILE")]
    pub sidecar_jwt_jwks_file: Option<PathBuf>,
    /// The tokens' algorithm: RS256 or ES256.
    #[arg(long, env = "TENANTRY_SIDECAR_JWT_ALGORITHM", default_value = "RS256")]
    pub sidecar_jwt_algorithm: String,
    /// Required `iss` of the tokens.
    #[arg(long, env = "TENANTRY_SIDECAR_JWT_ISSUER")]
    pub sidecar_jwt_issuer: Option<String>,
    /// Required `aud` of the tokens.
    #[arg(long, env = "TENANTRY_SIDECAR_JWT_AUDIENCE")]
    pub sidecar_jwt_audience: Option<String>,
    /// The claim naming the tenant; it must equal `X-Tenant-ID`.
    #[arg(
        long,
        env = "TENANTRY_SIDECAR_JWT_TENANT_CLAIM",
        default_value = "tenant"
    )]
    pub sidecar_jwt_tenant_claim: String,
    /// TENANTRY_REDIS given to injected enforcers (no credentials: pod specs are readable).
    #[arg(
        long,
        env = "TENANTRY_SIDECAR_REDIS",
        conflicts_with = "sidecar_redis_secret"
    )]
    pub sidecar_redis: Option<String>,
    /// Secret in each pod's namespace whose `url` key injected enforcers take TENANTRY_REDIS
    /// from: `tenantry-ratelimit`, written by the controller with `--ratelimit-redis`.
    #[arg(long, env = "TENANTRY_SIDECAR_REDIS_SECRET")]
    pub sidecar_redis_secret: Option<String>,
    /// Transparent mode: also inject `tenantry-enforcer init-redirect` (NET_ADMIN), which
    /// redirects inbound traffic for the app's port to the enforcer; the enforcer runs as uid 1337.
    #[arg(long, env = "TENANTRY_SIDECAR_REDIRECT")]
    pub sidecar_redirect: bool,
    /// Namespaces whose service accounts are the cluster's own components (never tenants;
    /// trusted to delete, finalize, bind, evict and issue tokens for tenant objects). Comma-separated.
    #[arg(
        long,
        env = "TENANTRY_TRUSTED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,tenantry-system"
    )]
    pub trusted_namespaces: Vec<String>,
    /// Namespace names that can never become a tenant's, by prefix or in the directory:
    /// `kube-*`, `*-system` or exact names. Comma-separated.
    #[arg(
        long,
        env = "TENANTRY_RESERVED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-*,*-system,default,tenantry-system"
    )]
    pub reserved_namespaces: Vec<String>,
    /// Namespace label and annotation prefixes tenants may not set or change (they drive
    /// cluster security). Comma-separated.
    #[arg(
        long,
        env = "TENANTRY_PROTECTED_NAMESPACE_PREFIXES",
        value_delimiter = ',',
        default_value = "pod-security.kubernetes.io/"
    )]
    pub protected_namespace_prefixes: Vec<String>,
    /// The cluster's pod and service CIDRs: NetworkPolicy ipBlocks and endpoint addresses inside
    /// them reach other tenants' pods. Comma-separated, e.g. `10.244.0.0/16,10.96.0.0/12`.
    #[arg(long, env = "TENANTRY_CLUSTER_CIDRS", value_delimiter = ',')]
    pub cluster_cidrs: Vec<crate::boundary::Cidr>,
}

impl Config {
    /// `TENANTRY_REDIS` of injected enforcers. Refused with credentials in it: pod specs are
    /// readable by tenants, and a password there would let any tenant drain or reset every
    /// tenant's rate limit.
    pub fn sidecar_redis(&self) -> Result<Option<String>> {
        let Some(url) = &self.sidecar_redis else {
            return Ok(None);
        };
        let authority = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let userinfo = authority
            .split(['/', '?'])
            .next()
            .unwrap_or("")
            .contains('@');
        anyhow::ensure!(
            !userinfo,
            "--sidecar-redis carries credentials, which would be written into every tenant pod spec; give injected enforcers a Redis they may reach without a password, or leave it unset (rate limits are then per pod)"
        );
        Ok(Some(url.clone()))
    }

    /// The JWT settings of injected enforcers, from `--sidecar-jwt-*`.
    pub fn sidecar_jwt(&self) -> Result<Option<crate::pod::SidecarJwt>> {
        let Some(path) = &self.sidecar_jwt_jwks_file else {
            return Ok(None);
        };
        let jwks = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --sidecar-jwt-jwks-file `{}`", path.display()))?;
        crate::pod::SidecarJwt::new(
            jwks,
            self.sidecar_jwt_algorithm.clone(),
            self.sidecar_jwt_issuer.clone(),
            self.sidecar_jwt_audience.clone(),
            self.sidecar_jwt_tenant_claim.clone(),
        )
        .map(Some)
        .map_err(|e| anyhow::anyhow!("--sidecar-jwt-jwks-file `{}`: {e}", path.display()))
    }

    /// `TENANTRY_TENANTS` of injected enforcers: `--sidecar-tenants`, or else this webhook's
    /// traffic view through its Service when `--traffic-view-listen` is set.
    pub fn injected_tenants(&self) -> Option<String> {
        self.sidecar_tenants.clone().or_else(|| {
            self.traffic_view_listen.map(|addr| {
                format!(
                    "http://{}.{}.svc:{}{}",
                    contract::SERVICE_NAME,
                    contract::NAMESPACE,
                    addr.port(),
                    crate::view::PATH
                )
            })
        })
    }

    /// The boundary settings these flags describe.
    pub fn boundary(&self) -> crate::boundary::Boundary {
        crate::boundary::Boundary {
            trusted_namespaces: self.trusted_namespaces.clone(),
            reserved_namespaces: self.reserved_namespaces.clone(),
            protected_namespace_prefixes: self.protected_namespace_prefixes.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
        }
    }
}

pub use tenantry_tenancy::config::parse_duration;

/// What every request reads. Cheap to share; each request loads the current snapshots once.
#[derive(Debug)]
pub struct AppState {
    pub directory: Arc<DirectoryStore>,
    pub policies: Arc<PolicyStore>,
    pub ledger: Arc<Ledger>,
    pub injection: InjectionConfig,
    pub boundary: crate::boundary::Boundary,
    pub metrics: Arc<Metrics>,
    /// Longest the directory may go unconfirmed before writes are refused.
    pub max_stale: Duration,
    pub reservation_ttl: Duration,
    /// A cluster watch will observe admitted objects; without one, admitted creates settle into
    /// usage at once.
    pub observes_cluster: bool,
    /// The usage view has loaded (the --state file, or the first list of every watch).
    pub usage_ready: AtomicBool,
    /// Reservations shared by replicas (`--redis`); per replica without it.
    pub shared: Option<crate::reservations::SharedReservations>,
    /// How review bodies are read.
    pub body: BodyLimits,
}

/// How review bodies are read: at most `max_bytes` (refused from `Content-Length` before any of
/// it is read), within `read_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            max_bytes: 4 << 20,
            read_timeout: Duration::from_secs(5),
        }
    }
}

/// A create's claim on its tenant's quota.
struct Claim {
    key: String,
    tenant: Arc<str>,
    charges: crate::ledger::Charges,
    /// An object of that name is already observed: the API server will refuse the create.
    exists: bool,
    /// The claim is an update's growth, reserved under [`growth_key`].
    update: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::Mutate => "mutate",
            Endpoint::Validate => "validate",
        }
    }
}

impl AppState {
    /// Why decisions cannot be trusted right now, if they cannot.
    fn staleness(&self) -> Option<String> {
        let f = self.directory.freshness();
        match f.confirmed_at {
            None => Some("tenant data has not loaded yet".to_string()),
            Some(t) if t.elapsed() > self.max_stale => Some(format!(
                "tenant data was last confirmed {}s ago ({}); refusing writes until the tenant source is reachable",
                t.elapsed().as_secs(),
                f.last_error.as_deref().unwrap_or("no error recorded")
            )),
            Some(_) => None,
        }
    }

    async fn decide(&self, endpoint: Endpoint, req: &AdmissionRequest) -> Decision {
        if let Some(why) = self.staleness() {
            // "Could not load" must never mean "no restriction".
            let response = AdmissionResponse::deny(&req.uid, 503, format!("tenantry: {why}"));
            return Decision {
                response,
                denied_by: Vec::new(),
                audited: Vec::new(),
                tenant: None,
                mutated: None,
            };
        }
        let directory = self.directory.current();
        let policies = self.policies.current();
        let inputs = |usage: &dyn crate::usage::UsageView| -> Decision {
            let inputs = Inputs {
                directory: &directory,
                usage,
                policies: &policies,
                injection: &self.injection,
                boundary: &self.boundary,
            };
            match endpoint {
                Endpoint::Mutate => decide::mutate(&inputs, req),
                Endpoint::Validate => decide::validate(&inputs, req),
            }
        };
        let claim = match endpoint {
            Endpoint::Validate => {
                let view = self.ledger.view(None);
                let plain = Inputs {
                    directory: &directory,
                    usage: &view,
                    policies: &policies,
                    injection: &self.injection,
                    boundary: &self.boundary,
                };
                self.claim(&plain, req)
            }
            Endpoint::Mutate => None,
        };
        let Some(claim) = claim else {
            let decision = inputs(&self.ledger.view(None));
            self.admitted(endpoint, req, &decision);
            return decision;
        };
        if !self.usage_ready.load(Ordering::Acquire) {
            // Counted against partial usage, a limited create could overshoot its quota; an
            // unready replica is normally not sent reviews, but a URL-registered one can be.
            let message =
                "tenantry: usage is still loading, so quotas cannot be checked yet; retry shortly";
            let response = AdmissionResponse::deny(&req.uid, 503, message.to_string());
            return Decision {
                response,
                denied_by: Vec::new(),
                audited: Vec::new(),
                tenant: Some(claim.tenant),
                mutated: None,
            };
        }
        match &self.shared {
            None => {
                self.ledger.reserve(
                    &claim.key,
                    &claim.tenant,
                    claim.charges.clone(),
                    self.reservation_ttl,
                );
                let decision = inputs(&self.ledger.view(Some(&claim.key)));
                if !decision.response.allowed || claim.exists {
                    // Denied, or the API server will answer AlreadyExists: nothing will appear
                    // to settle the reservation, and it must not hold the tenant's next create.
                    self.ledger.release(&claim.key);
                } else if !self.observes_cluster {
                    self.settle_without_cluster(&claim, req);
                }
                self.admitted(endpoint, req, &decision);
                decision
            }
            Some(shared) => {
                let others = match shared
                    .reserve(
                        &claim.tenant,
                        &claim.key,
                        &claim.charges,
                        self.reservation_ttl,
                    )
                    .await
                {
                    Ok(others) => others,
                    Err(e) => {
                        // The tier limits this create and no replica-wide count can be had:
                        // refuse rather than risk overshooting.
                        let message =
                            format!("tenantry: cannot reserve quota for this create: {e}");
                        let response = AdmissionResponse::deny(&req.uid, 503, message);
                        return Decision {
                            response,
                            denied_by: Vec::new(),
                            audited: Vec::new(),
                            tenant: Some(claim.tenant),
                            mutated: None,
                        };
                    }
                };
                let totals = crate::reservations::totals(&others, |k| self.ledger.is_observed(k));
                let decision = inputs(&self.ledger.view_shared(claim.tenant.clone(), totals));
                if !decision.response.allowed || claim.exists {
                    if let Err(e) = shared.release(&claim.tenant, &claim.key).await {
                        warn!(error = %e, "could not release a quota reservation; it expires on its own");
                    }
                } else if !self.observes_cluster {
                    self.settle_without_cluster(&claim, req);
                }
                self.admitted(endpoint, req, &decision);
                decision
            }
        }
    }

    /// With no cluster to observe, an admitted write is its own observation: a create settles
    /// its reservation into usage, an update replaces what the object was charged.
    fn settle_without_cluster(&self, claim: &Claim, req: &AdmissionRequest) {
        if claim.update {
            self.ledger.release(&claim.key);
            if let Err(e) = self.ledger.observe(&req.object) {
                warn!(error = %e, "an admitted update was not counted");
            }
        } else if self.shared.is_some() {
            self.ledger.record(&claim.key, claim.charges.clone());
        } else {
            self.ledger.settle(&claim.key);
        }
    }

    /// Records what an admitted write tells about ownership before any watch can: a self-service
    /// namespace just created is its tenant's, so the tenant's next writes into it are its own.
    fn admitted(&self, endpoint: Endpoint, req: &AdmissionRequest, decision: &Decision) {
        let creates_namespace = endpoint == Endpoint::Validate
            && req.operation == Operation::Create
            && req.resource.group.is_empty()
            && req.resource.resource == "namespaces"
            && req.subresource().is_empty()
            && !req.is_dry_run();
        if let (true, true, Some(tenant)) = (
            creates_namespace,
            decision.response.allowed,
            &decision.tenant,
        ) {
            let name = object_namespace(req);
            if !name.is_empty() {
                self.ledger.admit_namespace(&name, tenant);
            }
        }
    }

    /// What a create (or an update that grows usage: a resize, a claim expanded) will use, when
    /// its tier limits any of it. Dry-run requests never reserve.
    fn claim(&self, inputs: &Inputs<'_>, req: &AdmissionRequest) -> Option<Claim> {
        let update = match (req.operation, req.subresource()) {
            (Operation::Create, "") => false,
            (Operation::Update, "" | "resize") => true,
            _ => return None,
        };
        if req.is_dry_run() {
            return None;
        }
        let namespace = object_namespace(req);
        let owner = inputs.request_owner(req)?;
        let group = &req.resource.group;
        let resource = &req.resource.resource;
        // Unreadable objects are denied by the decision itself.
        let amounts = crate::translate::requested_amounts(req).ok()?;
        if update && amounts.is_zero() {
            return None;
        }
        let charges = charges(group, resource, &amounts);
        let limits = &owner.tenant.tier.limits;
        if !charges.iter().any(|(k, _)| limits.get(k).is_some()) {
            return None;
        }
        let name = req
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .or_else(|| req.object.at("/metadata/name").and_then(|v| v.as_str()))
            .map_or_else(|| format!("~{}", req.uid), str::to_string);
        let key = object_key(resource, &namespace, &name);
        Some(Claim {
            exists: !update && self.ledger.is_observed(&key),
            key: if update { growth_key(&key) } else { key },
            update,
            tenant: owner.tenant.id.clone(),
            charges,
        })
    }

    async fn review(&self, endpoint: Endpoint, body: &[u8]) -> Response {
        let started = Instant::now();
        let req = match AdmissionReview::parse_request(body) {
            Ok(req) => req,
            Err(e) => {
                self.metrics.bad_requests.inc();
                warn!(endpoint = endpoint.name(), error = %e, "rejected a body that is not an AdmissionReview");
                let body = json!({"error": "bad_request", "message": e.to_string()});
                return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
            }
        };
        let decision = self.decide(endpoint, &req).await;
        let allowed = decision.response.allowed;
        let elapsed = started.elapsed();
        self.metrics
            .latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.name(),
            })
            .observe(elapsed.as_secs_f64());
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.name(),
                operation: req.operation.as_str(),
                kind: req.kind.kind.clone(),
                decision: if allowed { "allowed" } else { "denied" },
            })
            .inc();
        let tenant = decision.tenant.as_deref().unwrap_or("");
        for (family, policies) in [
            (&self.metrics.denials, &decision.denied_by),
            (&self.metrics.audit_violations, &decision.audited),
        ] {
            for policy in policies {
                family
                    .get_or_create(&DenialLabels {
                        policy: policy.clone(),
                        tenant: tenant.to_string(),
                    })
                    .inc();
            }
        }
        if allowed {
            tracing::debug!(uid = %req.uid, endpoint = endpoint.name(), tenant, kind = %req.kind.kind, operation = req.operation.as_str(), allowed, micros = elapsed.as_micros() as u64, "reviewed");
        } else {
            info!(
                uid = %req.uid,
                endpoint = endpoint.name(),
                tenant,
                kind = %req.kind.kind,
                namespace = req.namespace.as_deref().unwrap_or(""),
                user = %req.user_info.username,
                operation = req.operation.as_str(),
                allowed,
                policies = ?decision.denied_by,
                message = decision.response.message(),
                "denied"
            );
        }
        axum::Json(AdmissionReview::respond(decision.response)).into_response()
    }

    /// Readiness with the reason, for `/readyz` and the logs.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let f = self.directory.freshness();
        let age = f.confirmed_at.map(|t| t.elapsed().as_secs());
        let directory_ok = self.staleness().is_none();
        let policies = self.policies.outcome();
        let usage_ok = self.usage_ready.load(Ordering::Acquire);
        let ready = directory_ok && usage_ok;
        let detail = json!({
            "ready": ready,
            "directory": {
                "ok": directory_ok,
                "version": self.directory.current().version(),
                "confirmed_seconds_ago": age,
                "last_error": f.last_error,
            },
            "policies": {
                "loaded": self.policies.current().len(),
                "last_reload_error": policies.last_error,
            },
            "usage": { "ok": usage_ok },
        });
        (ready, detail)
    }

    fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.directory_version
            .set(self.directory.current().version() as i64);
        let age = self
            .directory
            .freshness()
            .confirmed_at
            .map_or(-1, |t| t.elapsed().as_secs() as i64);
        m.directory_age_seconds.set(age);
        m.directory_stale.set(i64::from(self.staleness().is_some()));
        m.policies_loaded.set(self.policies.current().len() as i64);
        m.reservations.set(self.ledger.reservations() as i64);
        m.tracked_objects.set(self.ledger.objects() as i64);
    }
}

/// The HTTPS router: the admission endpoints plus the operator endpoints.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(contract::MUTATE_PATH, post(mutate))
        .route(contract::VALIDATE_PATH, post(validate))
        .merge(operator_router())
        // Bodies are read by `read_body` under its own limits.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn operator_router() -> Router<Arc<AppState>> {
    Router::new()
        .route(contract::HEALTHZ_PATH, get(|| async { "ok" }))
        .route(contract::READYZ_PATH, get(readyz))
        .route(contract::METRICS_PATH, get(metrics))
}

async fn mutate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match read_body(&state, request).await {
        Ok(body) => state.review(Endpoint::Mutate, &body).await,
        Err(refusal) => refusal,
    }
}

async fn validate(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match read_body(&state, request).await {
        Ok(body) => state.review(Endpoint::Validate, &body).await,
        Err(refusal) => refusal,
    }
}

/// The request body, or the refusal: 413 for a body announced or found larger than the limit
/// (without reading it), 408 for one that does not arrive in time.
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, Response> {
    let limits = state.body;
    let refuse = |status: StatusCode, error: &str, message: String| {
        state.metrics.bad_requests.inc();
        warn!(error, %message, "refused a review body");
        (
            status,
            axum::Json(json!({"error": error, "message": message})),
        )
            .into_response()
    };
    let too_large = |size: String| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body ({size}) exceeds --max-body-bytes ({} bytes)",
                limits.max_bytes
            ),
        )
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced
        && n > limits.max_bytes as u64
    {
        return Err(too_large(format!("{n} bytes announced")));
    }
    let body = request.into_body();
    match tokio::time::timeout(
        limits.read_timeout,
        axum::body::to_bytes(body, limits.max_bytes),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(too_large("more than allowed".to_string())),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within --body-read-timeout ({:?})",
                limits.read_timeout
            ),
        )),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (ready, detail) = state.readiness();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(detail)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

impl AppState {
    /// State for a webhook with a fixed directory and policy set and no cluster (the demo).
    pub fn local(
        directory: tenantry_tenancy::Directory,
        policies: tenantry_tenancy::PolicyEngine,
    ) -> AppState {
        AppState {
            directory: Arc::new(DirectoryStore::loaded(directory)),
            policies: Arc::new(PolicyStore::fixed(
                policies,
                std::path::Path::new("<embedded>"),
            )),
            ledger: Arc::new(Ledger::new()),
            injection: InjectionConfig::default(),
            boundary: crate::boundary::Boundary::default(),
            metrics: Arc::new(Metrics::new()),
            max_stale: Duration::MAX,
            reservation_ttl: Duration::from_secs(60),
            observes_cluster: false,
            usage_ready: AtomicBool::new(true),
            shared: None,
            body: BodyLimits::default(),
        }
    }
}

/// A webhook serving on loopback with a fresh self-signed certificate.
pub struct LocalWebhook {
    pub addr: SocketAddr,
    /// PEM of the CA that signed the serving certificate (for `127.0.0.1`).
    pub ca_pem: String,
    shutdown: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
    dir: PathBuf,
}

impl LocalWebhook {
    /// Stops accepting, finishes in-flight reviews, removes the certificate files.
    pub async fn stop(self) {
        self.shutdown.notify_waiters();
        let _ = self.task.await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves `state` over HTTPS on 127.0.0.1 at a free port.
pub async fn start_local(state: Arc<AppState>) -> Result<LocalWebhook> {
    let dir = std::env::temp_dir().join(format!("tenantry-local-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let generated = tenantry_certs::generate(&["127.0.0.1".to_string()], 1)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    tenantry_certs::write_atomic(&cert, &generated.cert)?;
    tenantry_certs::write_atomic(&key, &generated.key)?;
    let tls = ReloadingCert::load(&cert, &key)?.server_config()?;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let app = router(state);
    let task = tokio::spawn(serve(
        listener,
        Some(tls),
        app,
        shutdown.clone(),
        Duration::from_secs(5),
        1024,
    ));
    Ok(LocalWebhook {
        addr,
        ca_pem: generated.ca_cert,
        shutdown,
        task,
        dir,
    })
}

/// Loads everything the configuration names and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let policies =
        Arc::new(PolicyStore::load(&config.policies).with_context(|| {
            format!("cannot load policies from `{}`", config.policies.display())
        })?);
    info!(policies = policies.current().len(), dir = %config.policies.display(), "policies loaded");

    let source = TenantSource::parse(&config.tenants);
    let directory = Arc::new(DirectoryStore::unloaded());
    match &source {
        TenantSource::File(path) => {
            let loaded = tenantry_tenancy::source::load_file(path)?;
            info!(tenants = loaded.tenant_count(), file = %path.display(), "tenant directory loaded");
            directory.publish(loaded);
            tokio::spawn(watch_tenants_file(
                path.clone(),
                directory.clone(),
                metrics.clone(),
                config.reload_interval,
            ));
        }
        TenantSource::Postgres(url) => {
            // The watcher connects, retries with backoff and records failures by itself; a
            // malformed URL fails here, at start.
            let source = PostgresSource::lazy(url)?;
            tokio::spawn(source.watch(directory.clone(), config.resync));
        }
    }

    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let kube = if config.kubeconfig.is_some() || in_cluster {
        Some(crate::cluster::client(config.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let shared = match &config.redis {
        Some(url) => Some(
            crate::reservations::SharedReservations::connect(url, Duration::from_millis(500))
                .await
                .with_context(|| {
                    format!(
                        "cannot connect to Redis at `{}`",
                        tenantry_tenancy::source::redact_url(url)
                    )
                })?,
        ),
        None => None,
    };
    if let Some(client) = &kube
        && config.redis.is_none()
    {
        crate::cluster::require_shared_reservations(
            crate::cluster::own_replicas(client.clone()).await,
            false,
        )?;
    }
    let ledger = Arc::new(Ledger::new());
    let state = Arc::new(AppState {
        directory: directory.clone(),
        policies: policies.clone(),
        ledger: ledger.clone(),
        injection: InjectionConfig {
            image: config.sidecar_image.clone(),
            mode: config.sidecar_mode,
            tenants: config.injected_tenants().or_else(|| {
                warn!(
                    "neither --traffic-view-listen nor --sidecar-tenants is set: injected enforcers have no tenant source and will refuse to start"
                );
                None
            }),
            jwt: config.sidecar_jwt()?,
            redis: config.sidecar_redis()?,
            redis_secret: config.sidecar_redis_secret.clone(),
            redirect: config.sidecar_redirect,
            ..InjectionConfig::default()
        },
        boundary: config.boundary(),
        metrics: metrics.clone(),
        max_stale: config.max_stale,
        reservation_ttl: config.reservation_ttl,
        observes_cluster: kube.is_some(),
        usage_ready: AtomicBool::new(false),
        shared,
        body: BodyLimits {
            max_bytes: config.max_body_bytes,
            read_timeout: config.body_read_timeout,
        },
    });
    match &kube {
        Some(client) => {
            info!("counting usage from cluster watches");
            let synced = state.clone();
            crate::cluster::watch_usage(client.clone(), state.ledger.clone(), move || {
                synced.usage_ready.store(true, Ordering::Release);
            });
        }
        None => {
            tokio::spawn(load_state(state.clone(), config.state.clone()));
        }
    }
    tokio::spawn(watch_policies(
        policies.clone(),
        metrics.clone(),
        config.reload_interval,
    ));

    if config.tls_bootstrap {
        let client = kube
            .clone()
            .context("--tls-bootstrap needs a cluster (in-cluster config or --kubeconfig)")?;
        crate::cluster::bootstrap_tls(client, &config.tls_cert, &config.tls_key).await?;
    }
    let cert = ReloadingCert::load(&config.tls_cert, &config.tls_key)?;
    let tls = cert.server_config()?;
    metrics
        .certificate_expiry
        .set(cert.not_after().unwrap_or_default());
    {
        let metrics = metrics.clone();
        let watched = cert.clone();
        tokio::spawn(cert.clone().watch(config.reload_interval, move |r| {
            let result = if r.is_ok() { "ok" } else { "error" };
            metrics
                .certificate_reloads
                .get_or_create(&ResultLabels { result })
                .inc();
            metrics
                .certificate_expiry
                .set(watched.not_after().unwrap_or_default());
        }));
    }

    let shutdown = Arc::new(tokio::sync::Notify::new());
    let app = router(state.clone());
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(addr = %listener.local_addr()?, "serving admission reviews over HTTPS");
    let mut servers = vec![tokio::spawn(serve(
        listener,
        Some(tls),
        app,
        shutdown.clone(),
        config.shutdown_grace,
        config.max_connections,
    ))];
    if let Some(addr) = config.metrics_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics over HTTP");
        let ops = operator_router().with_state(state.clone());
        servers.push(tokio::spawn(serve(
            listener,
            None,
            ops,
            shutdown.clone(),
            config.shutdown_grace,
            64,
        )));
    }
    if let Some(addr) = config.traffic_view_listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        info!(addr = %listener.local_addr()?, "serving the traffic view to enforcers over HTTP");
        let view = Arc::new(crate::view::TrafficView::new(
            directory.clone(),
            metrics.clone(),
        ));
        servers.push(tokio::spawn(serve(
            listener,
            None,
            crate::view::router(view),
            shutdown.clone(),
            config.shutdown_grace,
            config.traffic_view_max_connections,
        )));
    }
    wait_for_signal().await;
    info!("shutting down: finishing in-flight reviews");
    shutdown.notify_waiters();
    for s in servers {
        let _ = s.await;
    }
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Accepts connections (TLS when `tls` is given) until `shutdown`, then waits up to `grace` for
/// open connections to finish their in-flight requests. At most `max_connections` are served at
/// once; the rest wait in the listen backlog, so a flood of idle connections cannot exhaust the
/// process's file descriptors and lock the API server out.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    shutdown: Arc<tokio::sync::Notify>,
    grace: Duration,
    max_connections: usize,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // The protocol comes from ALPN (or is HTTP/1.1 in plain text), never from sniffing the first
    // bytes: a connection that sends nothing must meet a timeout, and sniffing has none.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A connection idle between requests, or slow to send a request head, is closed.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    // An idle h2 connection is pinged and closed when the peer stops answering.
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let http1 = Arc::new(builder.clone().http1_only());
    let http2 = Arc::new(builder.http2_only());
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    let stop = shutdown.notified();
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let (http1, http2) = (http1.clone(), http2.clone());
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await;
                    let tls = match handshake {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let builder = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => http2,
                        _ => http1,
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                None => {
                    let conn = http1.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            ?grace,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn dir_stamp(dir: &std::path::Path) -> Vec<(PathBuf, Option<(SystemTime, u64)>)> {
    let mut stamps: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .map(|p| {
            let s = file_stamp(&p);
            (p, s)
        })
        .collect();
    stamps.sort();
    stamps
}

async fn watch_tenants_file(
    path: PathBuf,
    directory: Arc<DirectoryStore>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    tenantry_tenancy::source::follow_file(path, directory, every, move |ok| {
        let result = if ok { "ok" } else { "error" };
        metrics
            .tenants_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    })
    .await;
}

async fn watch_policies(policies: Arc<PolicyStore>, metrics: Arc<Metrics>, every: Duration) {
    let dir = policies.dir().to_path_buf();
    let mut last = dir_stamp(&dir);
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = dir_stamp(&dir);
        if now == last {
            continue;
        }
        last = now;
        match policies.reload() {
            Ok(()) => {
                info!(policies = policies.current().len(), "policies reloaded");
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
            }
            Err(e) => {
                error!(error = %e, "policies not reloaded; the last good set stays");
                metrics
                    .policy_reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
            }
        }
    }
}

/// Counts the --state objects once the directory has loaded, then marks usage ready.
async fn load_state(state: Arc<AppState>, path: Option<PathBuf>) {
    while state.directory.freshness().loads == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(path) = path {
        let counted = std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|text| {
            crate::usage::for_each_object(&text, |object| {
                if let Err(e) = state.ledger.observe(&object) {
                    error!(error = %e, file = %path.display(), "object in the state file not counted");
                }
                Ok(())
            })
        });
        match counted {
            Ok(n) => info!(objects = n, file = %path.display(), "usage loaded from the state file"),
            Err(e) => {
                // Without usage, quotas could not be enforced: stay unready rather than allow.
                error!(error = %e, file = %path.display(), "cannot read the state file; staying unready");
                return;
            }
        }
    }
    state.usage_ready.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::{self, Identity, Write};

    fn config(extra: &[&str]) -> Config {
        use clap::Parser;
        let mut args = vec![
            "tenantry-webhook",
            "--tls-cert=c",
            "--tls-key=k",
            "--tenants=t",
            "--policies=p",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap()
    }

    #[test]
    fn nothing_secret_is_written_into_tenant_pod_specs() {
        for refused in [
            "redis://:hunter2@redis.tenantry-system.svc:6379",
            "redis://enforcer:hunter2@redis:6379/0",
            "rediss://user@redis:6380",
        ] {
            let err = config(&["--sidecar-redis", refused])
                .sidecar_redis()
                .unwrap_err();
            assert!(err.to_string().contains("credentials"), "{refused}: {err}");
        }
        assert_eq!(
            config(&[
                "--sidecar-redis",
                "redis://ratelimit.tenantry-system.svc:6379"
            ])
            .sidecar_redis()
            .unwrap()
            .as_deref(),
            Some("redis://ratelimit.tenantry-system.svc:6379")
        );
        assert_eq!(config(&[]).sidecar_redis().unwrap(), None);
        // The default tenant source of sidecars is the traffic view, never a database URL.
        assert_eq!(
            config(&["--traffic-view-listen", "0.0.0.0:8081"])
                .injected_tenants()
                .as_deref(),
            Some("http://tenantry-webhook.tenantry-system.svc:8081/v1/traffic-view")
        );
        assert_eq!(config(&[]).injected_tenants(), None);
    }

    fn pod_create(user: &str, namespace: &str, dry_run: bool) -> AdmissionRequest {
        let write = Write {
            object: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                           "spec": {"containers": [{"name": "c", "image": "nginx"}]}}),
            old: None,
            identity: Identity {
                user: user.into(),
                groups: vec![],
            },
            namespace: Some(namespace.into()),
            operation: Operation::Create,
            dry_run,
            subresource: None,
            name: None,
        };
        review::admission_request(&write, "uid-1").unwrap()
    }

    #[tokio::test]
    async fn limited_creates_wait_for_usage_to_load() {
        let state = AppState::local(
            crate::embedded::directory().unwrap(),
            crate::embedded::policies().unwrap(),
        );
        state.usage_ready.store(false, Ordering::Release);
        // globex's free tier limits pods: refused until usage is known.
        let d = state
            .decide(Endpoint::Validate, &pod_create("bob", "globex-prod", false))
            .await;
        assert!(!d.response.allowed);
        assert_eq!(d.response.status.as_ref().unwrap().code, 503);
        // Unlimited tiers and dry runs reserve nothing and are decided as usual.
        let d = state
            .decide(Endpoint::Validate, &pod_create("bob", "globex-prod", true))
            .await;
        assert_ne!(d.response.status.as_ref().map(|s| s.code), Some(503));
        let d = state
            .decide(Endpoint::Validate, &pod_create("alice", "acme-dev", false))
            .await;
        assert_ne!(d.response.status.as_ref().map(|s| s.code), Some(503));
        state.usage_ready.store(true, Ordering::Release);
        let d = state
            .decide(Endpoint::Validate, &pod_create("bob", "globex-prod", false))
            .await;
        assert_ne!(d.response.status.as_ref().map(|s| s.code), Some(503));
    }
}
