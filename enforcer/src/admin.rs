//! The admin port: `/healthz` (the process serves), `/readyz` (tenant directory and policies
//! loaded), `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tenantry_tenancy::DirectoryStore;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct Admin {
    pub directory: Arc<DirectoryStore>,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    pub fn ready(&self) -> bool {
        self.directory.freshness().loads > 0
    }

    pub fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match path {
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            "/readyz" if self.ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "the tenant directory is not loaded yet\n".to_string(),
            ),
            "/metrics" => {
                let version = self.directory.current().version();
                self.metrics
                    .directory_version
                    .set(i64::try_from(version).unwrap_or(i64::MAX));
                (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    self.metrics.encode(),
                )
            }
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_string(),
            ),
        };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        r
    }
}

pub async fn serve(admin: Admin, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let admin = admin.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = admin.respond(req.uri().path());
                    async move { Ok::<_, Infallible>(r) }
                });
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            () = &mut shutdown => break,
        }
    }
}
