//! The traffic view: what every injected enforcer needs from the tenant directory (each
//! tenant's tier, status and client; each tier's rate limit), served over plain HTTP from the
//! webhook to the fleet, so no tenant pod holds a database credential and one Postgres connection
//! per webhook replica serves any number of enforcers.
//!
//! `GET /v1/traffic-view` answers the view as JSON with an `ETag` (a hash of the view, the same
//! on every replica holding the same data). With `If-None-Match` naming the current tag the
//! request waits — up to `?wait=SECONDS`, at most 60 — for a snapshot whose view differs, and
//! answers 304 if none comes: a long poll, so a suspension reaches every enforcer as soon as the
//! webhook has it, without enforcers polling in a loop. Changes that do not touch the view
//! (members, namespaces, quotas) wake nobody.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tenantry_tenancy::{Directory, DirectoryStore};

use crate::metrics::{Metrics, ResultLabels};

pub const PATH: &str = "/v1/traffic-view";
/// The longest a request may wait for a change.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The serialised view of one snapshot.
#[derive(Debug, Clone)]
struct Rendered {
    of: Arc<Directory>,
    etag: String,
    body: Bytes,
}

/// Serves the view of a [`DirectoryStore`], rendering it once per snapshot.
#[derive(Debug)]
pub struct TrafficView {
    directory: Arc<DirectoryStore>,
    rendered: Mutex<Option<Rendered>>,
    metrics: Arc<Metrics>,
}

impl TrafficView {
    pub fn new(directory: Arc<DirectoryStore>, metrics: Arc<Metrics>) -> TrafficView {
        TrafficView {
            directory,
            rendered: Mutex::new(None),
            metrics,
        }
    }

    fn current(&self) -> Rendered {
        let directory = self.directory.current();
        let mut cached = self.rendered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = cached.as_ref()
            && Arc::ptr_eq(&r.of, &directory)
        {
            return r.clone();
        }
        let view = directory.source().traffic_view();
        let tenants = serde_json::to_value(&view).unwrap_or_default();
        // The tag covers the view only, not the version: replicas agree, and a change that
        // leaves the view as it was does not wake the fleet.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        tenants.to_string().hash(&mut hasher);
        let etag = format!("\"{:016x}\"", hasher.finish());
        let body = serde_json::json!({"version": directory.version(), "tenants": tenants});
        let rendered = Rendered {
            of: directory,
            etag,
            body: Bytes::from(body.to_string()),
        };
        *cached = Some(rendered.clone());
        rendered
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .traffic_view_requests
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// `?wait=SECONDS`: how long to wait for a change when `If-None-Match` names the current view.
fn wait_param(uri: &Uri) -> Duration {
    let seconds = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_secs(seconds).min(MAX_WAIT)
}

async fn serve_view(
    State(view): State<Arc<TrafficView>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if view.directory.freshness().loads == 0 {
        view.count("unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the tenant directory has not loaded yet",
        )
            .into_response();
    }
    let known = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let wait = wait_param(&uri);
    let mut published = view.directory.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let current = view.current();
        if known.as_deref() != Some(current.etag.as_str()) {
            view.count("changed");
            return (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json".to_string()),
                    (header::ETAG, current.etag),
                ],
                current.body,
            )
                .into_response();
        }
        match tokio::time::timeout_at(deadline, published.changed()).await {
            Ok(Ok(())) => continue,
            // Timed out (or the store went away): nothing new.
            _ => {
                view.count("not_modified");
                return (StatusCode::NOT_MODIFIED, [(header::ETAG, current.etag)]).into_response();
            }
        }
    }
}

/// `GET /v1/traffic-view`.
pub fn router(view: Arc<TrafficView>) -> Router {
    Router::new().route(PATH, get(serve_view)).with_state(view)
}
