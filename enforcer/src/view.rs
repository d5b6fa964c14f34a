//! Following the webhook's traffic view (`--tenants http://…/v1/traffic-view`): the enforcer's
//! tenant data without a database credential in the pod, and without one database connection
//! per pod.
//!
//! One long poll at a time: `GET …?wait=30` with `If-None-Match` naming the view it holds. The
//! webhook answers at once when its view differs, or 304 after the wait; a new view becomes a new
//! snapshot. Failures are recorded in the store (which keeps serving the last snapshot) and
//! retried with jittered exponential backoff, so a webhook rollout does not meet every enforcer
//! of the cluster reconnecting in the same millisecond.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tenantry_tenancy::{Directory, DirectoryStore, TenantsFile};
use tracing::{info, warn};

/// How long each poll asks the webhook to wait for a change.
const WAIT: Duration = Duration::from_secs(30);
/// Give up on a poll this long after the wait (a webhook that went away mid-poll).
const SLACK: Duration = Duration::from_secs(15);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The largest view accepted.
const MAX_VIEW_BYTES: usize = 64 << 20;

#[derive(Debug, Deserialize)]
struct View {
    version: u64,
    tenants: TenantsFile,
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot reach the traffic view: {0}")]
    Request(String),
    #[error("the traffic view did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the traffic view answered {0}")]
    Status(StatusCode),
    #[error("the traffic view is invalid: {0}")]
    Invalid(String),
}

/// The URL of one poll.
fn poll_uri(base: &Uri) -> Result<Uri, http::Error> {
    let path = base.path();
    let query = match base.query() {
        Some(q) => format!("{q}&wait={}", WAIT.as_secs()),
        None => format!("wait={}", WAIT.as_secs()),
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(format!("{path}?{query}").parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// A pseudo-random fraction in [0.5, 1.5) for jitter, without a random-number crate: the
/// clock's nanoseconds differ between pods.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    0.5 + f64::from(nanos % 1000) / 1000.0
}

/// Keeps `store` current from the traffic view at `url` until the task is dropped.
pub async fn follow(url: Uri, store: Arc<DirectoryStore>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build_http();
    let Ok(poll) = poll_uri(&url) else {
        store.record_failure(format!("`{url}` cannot take a query"));
        return;
    };
    let mut etag: Option<String> = None;
    let mut backoff = BACKOFF_MIN;
    loop {
        match poll_once(&client, &poll, etag.as_deref()).await {
            Ok(Some((tag, view))) => match Directory::build(view.tenants, view.version) {
                Ok(directory) => {
                    info!(
                        version = view.version,
                        tenants = directory.tenant_count(),
                        "traffic view loaded"
                    );
                    store.publish(directory);
                    etag = Some(tag);
                    backoff = BACKOFF_MIN;
                }
                Err(e) => {
                    let message = format!("the traffic view is invalid: {e}");
                    warn!(%message, "keeping the last snapshot");
                    store.record_failure(message);
                    tokio::time::sleep(BACKOFF_MAX.mul_f64(jitter())).await;
                }
            },
            Ok(None) => {
                store.record_fresh();
                backoff = BACKOFF_MIN;
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "traffic view poll failed; keeping the last snapshot");
                store.record_failure(e.to_string());
                tokio::time::sleep(backoff.mul_f64(jitter())).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// One long poll: the new view and its tag, or `None` when the held one is still current.
async fn poll_once(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: &Uri,
    etag: Option<&str>,
) -> Result<Option<(String, View)>, PollError> {
    let mut request = Request::get(uri.clone());
    if let Some(tag) = etag {
        request = request.header(header::IF_NONE_MATCH, tag);
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| PollError::Request(e.to_string()))?;
    let limit = WAIT + SLACK;
    let response = tokio::time::timeout(limit, async {
        let response = client
            .request(request)
            .await
            .map_err(|e| PollError::Request(e.to_string()))?;
        let status = response.status();
        let tag = response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = http_body_util::Limited::new(response.into_body(), MAX_VIEW_BYTES)
            .collect()
            .await
            .map_err(|e| PollError::Request(e.to_string()))?
            .to_bytes();
        Ok::<_, PollError>((status, tag, body))
    })
    .await
    .map_err(|_| PollError::Timeout(limit))??;
    match response {
        (StatusCode::NOT_MODIFIED, _, _) => Ok(None),
        (StatusCode::OK, tag, body) => {
            let view: View =
                serde_json::from_slice(&body).map_err(|e| PollError::Invalid(e.to_string()))?;
            Ok(Some((tag, view)))
        }
        (status, _, _) => Err(PollError::Status(status)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn polls_ask_the_webhook_to_wait() {
        let base: Uri = "http://tenantry-webhook.tenantry-system.svc:8081/v1/traffic-view"
            .parse()
            .unwrap();
        assert_eq!(
            poll_uri(&base).unwrap().to_string(),
            "http://tenantry-webhook.tenantry-system.svc:8081/v1/traffic-view?wait=30"
        );
        let with_query: Uri = "http://h:1/v?x=1".parse().unwrap();
        assert_eq!(
            poll_uri(&with_query).unwrap().to_string(),
            "http://h:1/v?x=1&wait=30"
        );
    }
}
