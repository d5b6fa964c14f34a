//! The application's side of the proxy over HTTP/1.1: each worker keeps its own idle
//! connections to the application and sends a request on one of them directly.
//!
//! hyper-util's pooled client did the same through a general pool: keyed by scheme and authority
//! (a SipHash per checkout), a spawned task per request to hand the connection back, a select
//! per connection. For one upstream address on one worker that is a fifth of a forwarded
//! request's instructions; this pool is a `Vec` and hands a connection back when its response
//! body is done with it. HTTP/2 to the application (gRPC) still goes through hyper-util's client,
//! which multiplexes on one connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tracing::debug;

/// How long establishing a connection to the application may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections a worker keeps at most (one per concurrent request it has served).
const MAX_IDLE: usize = 1024;

/// Why a request did not get a response head from the application.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to the application: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting to the application: no connection within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout,
    #[error("the HTTP/1.1 handshake with the application: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("the application's response: {0}")]
    Response(#[source] hyper::Error),
}

/// One worker's HTTP/1.1 connections to the application.
pub struct Upstream<B> {
    addr: SocketAddr,
    idle_timeout: Duration,
    /// Idle connections and since when, oldest first: reused from the back (the most recent, the
    /// likeliest still open), closed from the front once idle for `idle_timeout`.
    idle: Mutex<VecDeque<(SendRequest<B>, Instant)>>,
    /// Requests sent again because their pooled connection closed before they were written.
    resent: Counter,
}

impl<B> std::fmt::Debug for Upstream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl<B> Upstream<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(addr: SocketAddr, idle_timeout: Duration, resent: Counter) -> Arc<Upstream<B>> {
        Arc::new(Upstream {
            addr,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
            resent,
        })
    }

    /// Sends `request` (origin-form URI, `Host` set) on an idle connection or a new one. The
    /// response's body hands the connection back when it has been read to its end.
    ///
    /// A pooled connection the application closed before the request was written (its own idle
    /// timeout) is not an error: the request goes out again on a new connection. Once written,
    /// a request is never sent twice.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<B>,
    ) -> Result<Response<Pooled<B>>, UpstreamError> {
        loop {
            let (mut sender, reused) = match self.checkout().await {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let back = Some((sender, self.clone()));
                    return Ok(response.map(|inner| Pooled {
                        inner,
                        back,
                        ended: false,
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        debug!(error = %e.error(), "pooled connection closed; reconnecting");
                        self.resent.inc();
                        request = unsent;
                    }
                    _ => return Err(UpstreamError::Response(e.into_error())),
                },
            }
        }
    }

    /// An idle connection ready for a request, if one is left; closed and stale ones are dropped.
    async fn checkout(&self) -> Option<SendRequest<B>> {
        loop {
            let (mut sender, since) = self.lock().pop_back()?;
            if since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Ready at once unless the connection task has yet to see the last response end.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, UpstreamError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection to the application ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The application's response body. From a pooled connection, it hands the connection back
/// when it is dropped after its last frame; dropped before, the connection goes with it (hyper
/// closes a connection whose response was not read to its end).
pub struct Pooled<B> {
    inner: Incoming,
    back: Option<(SendRequest<B>, Arc<Upstream<B>>)>,
    /// The body said it had no more frames (a chunked body's `is_end_stream` never does).
    ended: bool,
}

impl<B> Pooled<B> {
    /// A body that has no connection to hand back (HTTP/2, multiplexed).
    pub fn unpooled(inner: Incoming) -> Pooled<B> {
        Pooled {
            inner,
            back: None,
            ended: false,
        }
    }
}

impl<B> http_body::Body for Pooled<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Pooled<B> {
    fn drop(&mut self) {
        if let Some((sender, upstream)) = self.back.take()
            && (self.ended || http_body::Body::is_end_stream(&self.inner))
        {
            upstream.checkin(sender);
        }
    }
}

impl<B> Upstream<B> {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How long a connection may wait idle before it is closed instead of reused.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How many connections are idle in the pool.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.lock().len()
    }

    /// Puts `sender` back, and closes (drops) the oldest idle connections that have waited out
    /// the idle timeout or were closed by the application meanwhile.
    fn checkin(&self, sender: SendRequest<B>) {
        let now = Instant::now();
        let mut idle = self.lock();
        while idle.front().is_some_and(|(s, since)| {
            s.is_closed() || now.duration_since(*since) >= self.idle_timeout
        }) {
            idle.pop_front();
        }
        if !sender.is_closed() && idle.len() < MAX_IDLE {
            idle.push_back((sender, now));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(SendRequest<B>, Instant)>> {
        // The list is valid whatever a panicking holder did to it: every entry is a connection.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{BufRead, BufReader, Write};

    use http_body_util::{BodyExt, Empty};

    use super::*;

    /// A keep-alive application answering every request with `ok`.
    fn application() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if line == "\r\n"
                            && out
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .is_err()
                        {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
        addr
    }

    async fn get(upstream: &Arc<Upstream<Empty<Bytes>>>) {
        let request = Request::get("/")
            .header(http::header::HOST, "app")
            .body(Empty::new())
            .unwrap();
        let response = upstream.send(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }

    /// An application whose first connection answers one request and is then closed when the
    /// test says so (`close`, acknowledged on the returned receiver); later connections answer
    /// every request. `served` counts the requests each connection read, in accept order.
    fn closing_application(
        close: std::sync::mpsc::Receiver<()>,
        served: Arc<Mutex<Vec<usize>>>,
    ) -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, closed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut close = Some(close);
            for stream in listener.incoming().flatten() {
                let index = {
                    let mut served = served.lock().unwrap();
                    served.push(0);
                    served.len() - 1
                };
                let (served, close, closed_tx) = (served.clone(), close.take(), closed_tx.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if line == "\r\n" {
                            served.lock().unwrap()[index] += 1;
                            out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .unwrap();
                            if let Some(close) = &close {
                                close.recv().unwrap();
                                out.shutdown(std::net::Shutdown::Both).unwrap();
                                closed_tx.send(()).unwrap();
                                return;
                            }
                        }
                        line.clear();
                    }
                });
            }
        });
        (addr, closed)
    }

    /// A pooled connection the application closed after the pool last looked at it (ready, not
    /// known to be closed) gives its request back unwritten; the request goes out once, on a
    /// new connection.
    ///
    /// That is the case where the close and the next request reach the worker in the same turn
    /// of its event loop, the request first: the request's task checks the connection out
    /// before the connection's task has read the close. The test arranges exactly that on this
    /// current-thread runtime: with the runtime's only thread blocked, a byte wakes the
    /// "request" (a socket the test waits on) and then the application closes, so one poll of
    /// the event loop sees both, in that order.
    #[tokio::test]
    async fn a_request_given_back_unwritten_by_a_closed_connection_goes_out_once_on_a_new_one() {
        let (close, close_rx) = std::sync::mpsc::channel();
        let served = Arc::new(Mutex::new(Vec::new()));
        let (addr, closed) = closing_application(close_rx, served.clone());
        let resent = Counter::default();
        let upstream = Upstream::new(addr, Duration::from_secs(60), resent.clone());
        get(&upstream).await;
        // Let the connection's task take in the end of the response and wait for the next.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        assert_eq!(upstream.idle(), 1);

        let (mut wake, request_arrives) = std::os::unix::net::UnixStream::pair().unwrap();
        request_arrives.set_nonblocking(true).unwrap();
        let request_arrives = tokio::net::UnixStream::from_std(request_arrives).unwrap();
        wake.write_all(b"x").unwrap();
        close.send(()).unwrap();
        closed.recv().unwrap(); // blocks the runtime: the event loop sees both events at once
        request_arrives.readable().await.unwrap();
        assert!(
            upstream
                .lock()
                .iter()
                .all(|(sender, _)| !sender.is_closed()),
            "the connection's task ran first: the pool knows the connection is closed"
        );
        get(&upstream).await;
        assert_eq!(resent.get(), 1, "the request was given back and sent again");
        assert_eq!(
            *served.lock().unwrap(),
            [1, 1],
            "requests read per connection"
        );
    }

    /// Connections a burst opened and steady traffic no longer needs are closed once idle for
    /// the timeout, while the one in use stays.
    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed() {
        let upstream = Upstream::new(
            application(),
            Duration::from_millis(400),
            Counter::default(),
        );
        tokio::join!(get(&upstream), get(&upstream), get(&upstream));
        assert_eq!(upstream.idle(), 3);
        for pause in [100, 100, 100, 150] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            get(&upstream).await;
        }
        assert_eq!(upstream.idle(), 1);
    }
}
