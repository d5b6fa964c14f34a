//! The request path: identity, policy, rate limit, then a pooled, streaming forward to the
//! application. [`Rejection`] is the one place typed causes become HTTP responses (linkerd's
//! "rescue" layer), so a new failure cannot accidentally leak internals or turn into a 200.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::MapFrame;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tenantry_tenancy::cidr::Cidr;
use tenantry_tenancy::{DirectoryStore, PolicyEngine};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::canonical::{self, PathError};
use crate::config::ConnectionLimits;
use crate::identity::{self, IdentityError, JwtVerifier};
use crate::metrics::{Metrics, OutcomeLabel, ReasonLabel};
use crate::policy::{self, Decision, ServiceSpec};
use crate::ratelimit::{Limit, Limiter, Outcome};
use crate::upstream::{Pooled, Upstream};

pub type Body = Either<Pooled<UpstreamBody>, Full<Bytes>>;
/// What goes upstream: the client's body, size-limited, trailers without identity headers.
pub type UpstreamBody = MapFrame<Limited<Incoming>, fn(Frame<Bytes>) -> Frame<Bytes>>;

/// Why a request was not forwarded (or the forward failed).
#[derive(Debug)]
pub enum Rejection {
    Identity(IdentityError),
    Forbidden(String),
    RateLimited {
        limit: u64,
        retry_after: u64,
        reset: u64,
    },
    LimiterUnavailable {
        retry_after: u64,
    },
    TooLarge(u64),
    BadPath(PathError),
    BadGateway,
    GatewayTimeout,
}

impl Rejection {
    fn code(&self) -> &'static str {
        match self {
            Rejection::Identity(IdentityError::Unknown(_)) => "unknown_tenant",
            Rejection::Identity(IdentityError::NoToken | IdentityError::BadToken(_)) => {
                "invalid_token"
            }
            Rejection::Identity(_) => "invalid_tenant_header",
            Rejection::Forbidden(_) => "forbidden",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::LimiterUnavailable { .. } => "rate_limiter_unavailable",
            Rejection::TooLarge(_) => "payload_too_large",
            Rejection::BadPath(_) => "invalid_path",
            Rejection::BadGateway => "upstream_unavailable",
            Rejection::GatewayTimeout => "upstream_timeout",
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, message) = match &self {
            Rejection::Identity(e) => (StatusCode::UNAUTHORIZED, e.to_string()),
            Rejection::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            Rejection::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "the tenant's rate limit is exhausted".to_string(),
            ),
            Rejection::LimiterUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the rate limiter is unavailable".to_string(),
            ),
            Rejection::TooLarge(max) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {max} bytes"),
            ),
            Rejection::BadPath(e) => (StatusCode::BAD_REQUEST, e.to_string()),
            // No internals: the application's address and the error stay in the logs.
            Rejection::BadGateway => (
                StatusCode::BAD_GATEWAY,
                "the application is not reachable".to_string(),
            ),
            Rejection::GatewayTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "the application did not answer in time".to_string(),
            ),
        };
        let body = serde_json::json!({"error": self.code(), "message": message}).to_string();
        let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            Rejection::RateLimited {
                limit,
                retry_after,
                reset,
            } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                insert_ratelimit(h, limit, 0, reset);
            }
            Rejection::LimiterUnavailable { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            Rejection::Identity(_) => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn insert_ratelimit(h: &mut HeaderMap, limit: u64, remaining: u64, reset: u64) {
    h.insert(RATELIMIT_LIMIT, HeaderValue::from(limit));
    h.insert(RATELIMIT_REMAINING, HeaderValue::from(remaining));
    h.insert(RATELIMIT_RESET, HeaderValue::from(reset));
}

/// Makes the rate limiter a worker uses (a new one per worker, or one shared).
pub type LimiterFactory = Arc<dyn Fn() -> Option<Arc<Limiter>> + Send + Sync>;

/// Everything a request needs, shared by all connections.
pub struct State {
    pub directory: Arc<DirectoryStore>,
    pub policies: Arc<PolicyEngine>,
    decisions: Arc<policy::DecisionCache>,
    pub service: ServiceSpec,
    pub jwt: Option<Arc<JwtVerifier>>,
    pub limiter: Option<Arc<Limiter>>,
    limiters: LimiterFactory,
    pub metrics: Arc<Metrics>,
    pub upstream: http::uri::Authority,
    pub upstream_timeout: Duration,
    pub max_body_bytes: u64,
    /// Peers whose forwarding headers are kept (a trusted ingress in front of the pod).
    pub trusted_proxies: Vec<Cidr>,
    /// This worker's HTTP/1.1 connections to the application.
    upstream_h1: Arc<Upstream<UpstreamBody>>,
    /// HTTP/2 to the application (gRPC), multiplexed.
    client_h2: Client<HttpConnector, UpstreamBody>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("service", &self.service)
            .finish()
    }
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        directory: Arc<DirectoryStore>,
        policies: Arc<PolicyEngine>,
        service: ServiceSpec,
        jwt: Option<JwtVerifier>,
        limiters: LimiterFactory,
        metrics: Arc<Metrics>,
        upstream: SocketAddr,
        upstream_timeout: Duration,
        upstream_idle_timeout: Duration,
        max_body_bytes: u64,
    ) -> Result<State, http::uri::InvalidUri> {
        let decisions = Arc::new(policy::DecisionCache::new(!policy::reads_context(
            &policies,
        )));
        Ok(State {
            directory,
            policies,
            decisions,
            service,
            jwt: jwt.map(Arc::new),
            limiter: limiters(),
            limiters,
            upstream: upstream.to_string().parse()?,
            upstream_timeout,
            max_body_bytes,
            trusted_proxies: Vec::new(),
            upstream_h1: Upstream::new(
                upstream,
                upstream_idle_timeout,
                metrics.upstream_resent.clone(),
            ),
            metrics,
            client_h2: client_h2(),
        })
    }
}

impl State {
    /// The same shared state with this worker's own upstream connection pools: a pooled
    /// connection is driven by the runtime that opened it, so sharing one pool between
    /// thread-per-core workers would turn every request into a cross-thread wake-up.
    pub fn for_worker(&self) -> State {
        State {
            directory: self.directory.clone(),
            policies: self.policies.clone(),
            decisions: self.decisions.clone(),
            service: self.service.clone(),
            jwt: self.jwt.clone(),
            limiter: (self.limiters)(),
            limiters: self.limiters.clone(),
            metrics: self.metrics.clone(),
            upstream: self.upstream.clone(),
            upstream_timeout: self.upstream_timeout,
            max_body_bytes: self.max_body_bytes,
            trusted_proxies: self.trusted_proxies.clone(),
            upstream_h1: Upstream::new(
                self.upstream_h1.addr(),
                self.upstream_h1.idle_timeout(),
                self.metrics.upstream_resent.clone(),
            ),
            client_h2: client_h2(),
        }
    }
}

/// The HTTP/2 client to the application; HTTP/1.1 goes through [`Upstream`].
fn client_h2() -> Client<HttpConnector, UpstreamBody> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Headers that describe one hop and must not be forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed = h.get_all(header::CONNECTION);
    // gRPC needs `te: trailers`; anything else in `te` is per hop.
    let te_per_hop = h.get(header::TE).is_some_and(|v| v != "trailers");
    let doomed = canonical::names_where(h, |name| {
        HOP_BY_HOP.contains(name)
            || (te_per_hop && name == header::TE)
            || listed.iter().any(|v| connection_lists(v, name))
    });
    canonical::remove_all(h, doomed);
}

/// Whether a `Connection` header value names `name` as a header of this hop only.
fn connection_lists(value: &HeaderValue, name: &HeaderName) -> bool {
    value.to_str().is_ok_and(|v| {
        v.split(',')
            .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str()))
    })
}

/// The client end of a connection, as forwarding headers describe it: worked out once per
/// connection (formatting an address costs more per request than the policy check).
#[derive(Debug, Clone)]
pub struct Peer {
    /// A trusted proxy in front of the pod, whose forwarding headers are kept.
    pub trusted: bool,
    /// The peer's IP address as a header value.
    pub address: HeaderValue,
}

impl Peer {
    pub fn new(state: &State, addr: SocketAddr) -> Peer {
        let ip = addr.ip();
        Peer {
            trusted: state.trusted_proxies.iter().any(|c| c.contains(ip)),
            address: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }
}

/// Handles one request from `peer`; never fails (every failure is a response).
pub async fn handle(
    state: Arc<State>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let response = match check_and_forward(&state, peer, req).await {
        Ok(r) => {
            state.metrics.forwarded.inc();
            r
        }
        Err(rejection) => {
            let code = rejection.code();
            match &rejection {
                Rejection::BadGateway | Rejection::GatewayTimeout => {
                    warn!(code, "forward failed")
                }
                other => debug!(code, reason = ?other, "request refused"),
            }
            state
                .metrics
                .requests
                .get_or_create(&OutcomeLabel { outcome: code })
                .inc();
            rejection.into_response()
        }
    };
    state
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    Ok(response)
}

async fn check_and_forward(
    state: &State,
    peer: &Peer,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Rejection> {
    let directory = state.directory.current();
    let id = identity::tenant_header(req.headers()).map_err(Rejection::Identity)?;
    let caller = directory
        .tenant(id)
        .ok_or_else(|| Rejection::Identity(IdentityError::Unknown(id.to_string())))?
        .clone();
    if let Some(jwt) = &state.jwt {
        jwt.verify(req.headers(), &caller.id)
            .map_err(Rejection::Identity)?;
    }
    // Policy decides on the canonical path, and that path is what is forwarded.
    let path = canonical::normalize_path(req.uri().path()).map_err(Rejection::BadPath)?;
    match state.decisions.decide(
        &state.policies,
        &directory,
        &caller,
        &state.service,
        req.method().as_str(),
        &path,
    ) {
        Decision::Allow => {}
        Decision::Deny(reason) => return Err(Rejection::Forbidden(reason)),
    }
    // A request refused for its size spends none of the tenant's rate limit.
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > state.max_body_bytes
    {
        return Err(Rejection::TooLarge(state.max_body_bytes));
    }
    let mut ratelimit = None;
    if let (Some(limiter), Some(rl)) = (&state.limiter, caller.tier.rate_limit) {
        match limiter
            .check(&caller.id, Limit::new(rl.requests_per_second, rl.burst))
            .await
        {
            Outcome::Allowed {
                limit,
                remaining,
                reset,
            } => ratelimit = Some((limit, remaining, reset)),
            Outcome::Limited {
                limit,
                retry_after,
                reset,
            } => {
                return Err(Rejection::RateLimited {
                    limit,
                    retry_after,
                    reset,
                });
            }
            Outcome::Unavailable { retry_after } => {
                return Err(Rejection::LimiterUnavailable { retry_after });
            }
        }
    }

    let h2 = req.version() == Version::HTTP_2;
    let path = match req.uri().path_and_query() {
        // Already canonical, the common case: forwarded as received, not parsed again.
        Some(received) if received.path() == path => received.clone(),
        _ => {
            let path = match req.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            http::uri::PathAndQuery::try_from(path)
                .map_err(|_| Rejection::BadPath(PathError::BadEncoding))?
        }
    };
    // The host the client asked for, before the URI is pointed at the application.
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req
            .headers()
            .get(header::HOST)
            .filter(|v| v.to_str().is_ok())
            .cloned(),
    };
    let mut parts = http::uri::Parts::default();
    if h2 {
        // HTTP/2 names the authority in the request itself (`:authority`).
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(state.upstream.clone());
    } else if !req.headers().contains_key(header::HOST)
        && let Ok(upstream) = HeaderValue::from_str(state.upstream.as_str())
    {
        // HTTP/1.1 needs a `Host` (an HTTP/1.0 client may have sent none): the application's.
        req.headers_mut().insert(header::HOST, upstream);
    }
    // Origin-form (`/path?query`) on HTTP/1.1.
    parts.path_and_query = Some(path);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| Rejection::BadGateway)?;
    *req.version_mut() = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let tenant_value = HeaderValue::from_str(&caller.id).map_err(|_| Rejection::BadGateway)?;
    let tier_value = HeaderValue::from_str(&caller.tier.name).map_err(|_| Rejection::BadGateway)?;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    canonical::set_identity(headers, tenant_value, tier_value);
    canonical::set_forwarding(headers, &peer.address, peer.trusted, host);

    let strip: fn(Frame<Bytes>) -> Frame<Bytes> = canonical::strip_trailer_identity;
    let req = req.map(|b| {
        Limited::new(
            b,
            usize::try_from(state.max_body_bytes).unwrap_or(usize::MAX),
        )
        .map_frame(strip)
    });
    let forwarded = async {
        if h2 {
            let response = state.client_h2.request(req).await;
            response
                .map(|r| r.map(Pooled::unpooled))
                .map_err(|e| e.to_string())
        } else {
            state.upstream_h1.send(req).await.map_err(|e| e.to_string())
        }
    };
    let mut response = match tokio::time::timeout(state.upstream_timeout, forwarded).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!(error = %e, "upstream request failed");
            return Err(Rejection::BadGateway);
        }
        Err(_) => return Err(Rejection::GatewayTimeout),
    };
    strip_hop_by_hop(response.headers_mut());
    if let Some((limit, remaining, reset)) = ratelimit {
        insert_ratelimit(response.headers_mut(), limit, remaining, reset);
    }
    Ok(response.map(Either::Left))
}

/// What is shared by every connection of one enforcer (all workers): the cap on connections.
#[derive(Debug, Clone)]
pub struct Connections {
    pub limits: ConnectionLimits,
    slots: Arc<Semaphore>,
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Connections {
        Connections {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
        }
    }
}

/// The first bytes of an HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a new connection turned out to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Http1,
    Http2,
}

/// Waits until the client has said enough to tell HTTP/1.1 from HTTP/2: any byte that is not the
/// start of the h2 preface, or the whole preface. `None` on timeout or EOF: a connection that
/// says nothing, or stalls inside the preface, is closed instead of held.
async fn speaks_within(stream: &TcpStream, timeout: Duration) -> Option<Speaks> {
    let mut buf = [0u8; 24];
    let detect = async {
        loop {
            match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) if !H2_PREFACE.starts_with(&buf[..n]) => return Some(Speaks::Http1),
                Ok(n) if n >= H2_PREFACE.len() => return Some(Speaks::Http2),
                // Part of the preface: the socket stays readable while those bytes wait, so
                // wait a little before looking again.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(timeout, detect).await.ok().flatten()
}

/// When a connection last started or finished a request, how many it has in flight, and since
/// when the head of the next HTTP/1.1 request has been arriving.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` (plus one; 0 = none) at which bytes of a request head arrived
    /// with no request in flight, until that request reaches the service.
    head_since: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes arrived from the client: with nothing in flight they start a request head.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since
                .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        }
    }

    /// How long the head of a request has been arriving without being complete.
    fn head_pending_for(&self) -> Option<Duration> {
        let since = self.head_since.load(Ordering::Relaxed);
        if since == 0 || self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        Some(Duration::from_millis(
            self.now_ms().saturating_sub(since - 1),
        ))
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.opened.elapsed().saturating_sub(last))
    }
}

/// Counts a request in flight on its connection until dropped.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Bytes that arrived while this request was in flight (its body, a pipelined head) are
        // not a head that started now; the idle timeout covers a pipelined head left unfinished.
        self.0.head_since.store(0, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The client's side of an HTTP/1.1 connection, telling [`Activity`] when bytes arrive: the
/// header deadline is enforced from that (see `serve_connection`), not by a timer per request.
struct HeadClock {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for HeadClock {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for HeadClock {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted in flight until it is sent or dropped.
struct BusyBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for BusyBody {
    type Data = Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answer past `--max-connections`, then the connection is closed.
static TOO_MANY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body =
        r#"{"error":"too_many_connections","message":"the enforcer serves no more connections"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Serves `listener` until `shutdown` resolves, then drains in-flight requests for up to `drain`.
///
/// Every connection is bounded: it must speak within the header timeout (HTTP/1.1 request or
/// HTTP/2 preface) and send each request's headers within it, is closed after the idle timeout
/// with nothing in flight (HTTP/2 included, with keep-alive pings to find dead peers), and
/// counts against `--max-connections`; past that, new connections get a 503 and are closed.
pub async fn serve(
    state: Arc<State>,
    listener: TcpListener,
    connections: Connections,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = connections.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .timer(TokioTimer::new())
        // hyper's own header timeout arms a timer for every request, and on a current-thread
        // runtime each one wakes the driver through its eventfd: two extra syscalls per request
        // (a `write` and an `epoll_wait`). `serve_connection` enforces the deadline instead.
        .header_read_timeout(None);
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.idle_timeout.min(Duration::from_secs(30))))
        .keep_alive_timeout(limits.header_timeout)
        .timer(TokioTimer::new());
    let (closing, closed) = tokio::sync::watch::channel(false);
    // Each connection task holds a clone; draining waits for the count to fall back to one.
    let live = Arc::new(());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(permit) = connections.slots.clone().try_acquire_owned() else {
                    state.metrics.connections_closed.get_or_create(&ReasonLabel { reason: "over_limit" }).inc();
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&TOO_MANY)).await;
                        let _ = stream.shutdown().await;
                    });
                    continue;
                };
                let state = state.clone();
                let builder = builder.clone();
                let mut closed = closed.clone();
                let live = live.clone();
                tokio::spawn(async move {
                    let _live = live;
                    let _permit = permit;
                    let metrics = state.metrics.clone();
                    metrics.connections_open.inc();
                    let reason = serve_connection(state, builder, stream, peer, limits, &mut closed).await;
                    metrics.connections_open.dec();
                    if let Some(reason) = reason {
                        metrics.connections_closed.get_or_create(&ReasonLabel { reason }).inc();
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    info!("draining in-flight requests");
    let _ = closing.send(true);
    let drained = tokio::time::timeout(drain, async {
        while Arc::strong_count(&live) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if drained.is_err() {
        warn!("drain timeout; closing the remaining connections");
    }
}

/// Serves one connection to the end; returns why Tenantry closed it, if it did.
async fn serve_connection(
    state: Arc<State>,
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    limits: ConnectionLimits,
    closing: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<&'static str> {
    let Some(speaks) = speaks_within(&stream, limits.header_timeout).await else {
        return Some("silent");
    };
    let activity = Arc::new(Activity::new());
    let tracked = activity.clone();
    let peer = Arc::new(Peer::new(&state, peer));
    let service = hyper::service::service_fn(move |req| {
        let (state, activity, peer) = (state.clone(), tracked.clone(), peer.clone());
        async move {
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            activity.head_since.store(0, Ordering::Relaxed);
            activity.touch();
            // Busy until the response body is sent (or dropped): a long download or a gRPC
            // stream is not an idle connection.
            let busy = Busy(activity);
            let response = handle(state, &peer, req).await;
            response.map(|r| r.map(|inner| BusyBody { inner, _busy: busy }))
        }
    });
    // An HTTP/1.1 head must arrive within the header timeout of its first byte; HTTP/2 bounds
    // its peers with keep-alive pings instead (frames arrive between requests).
    let io = HeadClock {
        stream,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let every = match speaks {
        Speaks::Http1 => (limits.idle_timeout / 4).min(limits.header_timeout / 4),
        Speaks::Http2 => limits.idle_timeout / 4,
    };
    let mut check = tokio::time::interval(every.max(Duration::from_millis(50)));
    let mut reason = None;
    // An idle connection asked to close has nothing in flight; one that does not finish closing
    // in time (an h2 peer that never acknowledges the GOAWAY's PING) is dropped.
    let give_up = tokio::time::sleep(Duration::MAX);
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "connection ended with an error");
                }
                return reason;
            }
            () = &mut give_up => return reason,
            _ = closing.wait_for(|c| *c), if reason.is_none() => {
                conn.as_mut().graceful_shutdown();
                reason = Some("shutdown");
            }
            _ = check.tick(), if reason.is_none() => {
                if speaks == Speaks::Http1
                    && activity.head_pending_for().is_some_and(|t| t >= limits.header_timeout)
                {
                    // Half a head is no request to finish: close at once.
                    return Some("header_timeout");
                }
                if activity.idle_for().is_some_and(|idle| idle >= limits.idle_timeout) {
                    // Lets a response still streaming finish; no new request is read.
                    conn.as_mut().graceful_shutdown();
                    reason = Some("idle");
                    give_up
                        .as_mut()
                        .reset(tokio::time::Instant::now() + limits.header_timeout);
                }
            }
        }
    }
}
