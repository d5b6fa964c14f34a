//! Prometheus metrics, all under `tenantry_enforcer_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `forwarded` or the error code of the response.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `silent` (nothing said within the header timeout), `header_timeout` (a request head not
    /// finished within it), `idle`, `over_limit`, `shutdown`.
    pub reason: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_closed: Family<ReasonLabel, Counter>,
    pub open_files_limit: Gauge,
    pub registry: Registry,
    pub requests: Family<OutcomeLabel, Counter>,
    /// `requests{outcome="forwarded"}`, looked up once: the family's lookup hashes the label
    /// set and takes a lock, on every request.
    pub forwarded: Counter,
    pub duration: Histogram,
    pub redis_round_trips: Counter,
    pub redis_errors: Counter,
    /// Requests sent again on a new connection: the pooled one to the application closed
    /// before they were written.
    pub upstream_resent: Counter,
    pub fallback_decisions: Family<ModeLabel, Counter>,
    pub circuit_open: Gauge,
    pub directory_version: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tenantry_enforcer");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register("requests", "Requests by outcome", requests.clone());
        let forwarded = requests
            .get_or_create(&OutcomeLabel {
                outcome: "forwarded",
            })
            .clone();
        let duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0,
        ]);
        registry.register(
            "request_duration_seconds",
            "Time from request headers to response headers, upstream included",
            duration.clone(),
        );
        let redis_round_trips = Counter::default();
        registry.register(
            "ratelimit_redis_round_trips",
            "Lease requests sent to Redis",
            redis_round_trips.clone(),
        );
        let redis_errors = Counter::default();
        registry.register(
            "ratelimit_store_errors",
            "Lease requests that failed (timeout, error, circuit open)",
            redis_errors.clone(),
        );
        let upstream_resent = Counter::default();
        registry.register(
            "upstream_resent",
            "Requests sent again on a new connection because the pooled connection to the application closed before they were written",
            upstream_resent.clone(),
        );
        let fallback_decisions = Family::<ModeLabel, Counter>::default();
        registry.register(
            "ratelimit_fallback_decisions",
            "Decisions taken without the shared store, by --redis-failure mode",
            fallback_decisions.clone(),
        );
        let circuit_open = Gauge::default();
        registry.register(
            "ratelimit_circuit_open",
            "1 while the Redis circuit breaker is open",
            circuit_open.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections being served",
            connections_open.clone(),
        );
        let connections_closed = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_closed_by_enforcer",
            "Client connections the enforcer closed or refused, by reason",
            connections_closed.clone(),
        );
        let open_files_limit = Gauge::default();
        registry.register(
            "open_files_limit",
            "The process's open-file limit after raising it to the hard limit",
            open_files_limit.clone(),
        );
        let directory_version = Gauge::default();
        registry.register(
            "directory_version",
            "Version of the tenant directory snapshot in use",
            directory_version.clone(),
        );
        Metrics {
            connections_open,
            connections_closed,
            open_files_limit,
            registry,
            requests,
            forwarded,
            duration,
            redis_round_trips,
            redis_errors,
            upstream_resent,
            fallback_decisions,
            circuit_open,
            directory_version,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
