//! `tenantry demo`'s enforcer part: an echo application and an enforcer in this process on
//! loopback (embedded tenants and policies, in-memory rate limits), and a few requests that show
//! each outcome. [`echo_upstream`] is also the small real application the tests put behind the
//! enforcer.

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tenantry_tenancy::DirectoryStore;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::ratelimit::{MemoryStore, MonotonicClock, Store};

/// Answers every request with a JSON object of the headers it received (values as lists, so a
/// duplicate would show) and the number of body bytes it read.
pub async fn echo_upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                Ok::<_, Infallible>(echo(req).await)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<serde_json::Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_string(), serde_json::Value::Array(values));
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let version = format!("{:?}", req.version());
    let mut body = req.into_body();
    let mut bytes: u64 = 0;
    let mut trailers = serde_json::Map::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_trailers() {
                Ok(t) => {
                    for (name, value) in &t {
                        trailers.insert(
                            name.as_str().to_string(),
                            serde_json::Value::String(
                                String::from_utf8_lossy(value.as_bytes()).into_owned(),
                            ),
                        );
                    }
                }
                Err(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            },
            Err(_) => break,
        }
    }
    let out = serde_json::json!({
        "method": method, "path": path, "query": query, "version": version, "headers": headers,
        "trailers": trailers, "body_bytes": bytes,
    });
    Response::new(Full::new(Bytes::from(out.to_string())))
}

/// Starts an echo application and an enforcer for tenant `globex` (free tier: 10 requests per
/// second, burst 20) and prints an allowed, a missing-header, a wrong-tenant and a rate-limited
/// request.
pub async fn run(out: &mut impl Write) -> anyhow::Result<()> {
    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    let app_task = tokio::spawn(echo_upstream(app));
    let directory = Arc::new(DirectoryStore::loaded(
        tenantry_tenancy::embedded::directory()?,
    ));
    let store = Store::Memory(MemoryStore::new(Arc::new(MonotonicClock::default())));
    let enforcer =
        crate::start_with(Config::local("globex", app_addr), directory, Some(store)).await?;
    let base = format!("http://{}", enforcer.addr);
    writeln!(
        out,
        "enforcer for tenant `globex` on {base}, application on {app_addr}"
    )?;

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = |tenant: Option<&'static str>| {
        let client = client.clone();
        let uri = format!("{base}/hello");
        async move {
            let mut req = Request::get(uri);
            if let Some(t) = tenant {
                req = req.header("X-Tenant-ID", t);
            }
            let resp = client.request(req.body(Full::new(Bytes::new()))?).await?;
            let status = resp.status();
            let limit = resp
                .headers()
                .get("ratelimit-remaining")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, limit, String::from_utf8_lossy(&body).into_owned()))
        }
    };
    let (status, remaining, body) = send(Some("globex")).await?;
    let tenant_seen = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["headers"]["x-tenant-id"][0].as_str().map(str::to_string))
        .unwrap_or_default();
    writeln!(
        out,
        "  X-Tenant-ID: globex  -> {status} (the app saw X-Tenant-ID `{tenant_seen}`, RateLimit-Remaining {})",
        remaining.unwrap_or_default()
    )?;
    let (status, _, body) = send(None).await?;
    writeln!(out, "  no X-Tenant-ID      -> {status} {body}")?;
    let (status, _, body) = send(Some("acme")).await?;
    writeln!(out, "  X-Tenant-ID: acme    -> {status} {body}")?;
    for allowed in 1..=40 {
        let (status, _, body) = send(Some("globex")).await?;
        if status == http::StatusCode::TOO_MANY_REQUESTS {
            writeln!(
                out,
                "  after {allowed} quick requests as globex -> {status} {body}"
            )?;
            break;
        }
    }
    enforcer.shutdown().await;
    app_task.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn demo_shows_every_outcome() {
        let mut out = Vec::new();
        super::run(&mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("200 OK"), "{text}");
        assert!(text.contains("401 Unauthorized"), "{text}");
        assert!(text.contains("403 Forbidden"), "{text}");
        assert!(text.contains("429 Too Many Requests"), "{text}");
    }
}
