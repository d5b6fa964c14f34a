//! A small in-process Kubernetes API server for kube-rs client code: a second real
//! implementation of the list, watch, server-side apply and delete endpoints over HTTP, holding
//! objects in memory. It is not a mock: it answers every request as the API server would for the
//! subset it implements (no admission, no defaulting, no field ownership), and tests assert on the
//! objects it ends up holding.
//!
//! - `GET` a collection (cluster-wide `/api/v1/pods` or namespaced `/api/v1/namespaces/NS/pods`)
//!   lists it, filtered by `labelSelector` (`key=value`, `key`); with `watch=true` it streams
//!   `{"type", "object"}` lines for later changes.
//! - `PATCH` with `application/apply-patch+yaml` (server-side apply) upserts the body; with
//!   `application/merge-patch+json` (RFC 7386) or a strategic merge patch it merges the body into
//!   the existing object (404 when there is none).
//! - `PATCH` on `…/NAME/status` changes only the object's `status`; an apply to the object keeps
//!   the status it had.
//! - `POST` to a collection creates the object (409 when it exists), as Events are recorded.
//! - `DELETE` removes the object.
//! - Collections under a [`ApiServer::missing`] prefix answer 404, like an absent CRD.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Store {
    /// Collection path (cluster-wide form) → (namespace, name) → object.
    items: HashMap<String, BTreeMap<(String, String), Value>>,
    watchers: HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>,
    version: u64,
    missing: Vec<String>,
    /// Write paths refused with 403, as an admission webhook refusing them would.
    refused: Vec<String>,
    /// Every write received, as `METHOD path?query`.
    writes: Vec<String>,
}

/// The in-memory API server; clones share it.
#[derive(Clone, Default)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
}

/// A request path split into its collection (cluster-wide form), namespace and name.
fn route(path: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // api/v1/... or apis/group/version/...
    let prefix_len = if parts.first() == Some(&"api") { 2 } else { 3 };
    if parts.len() < prefix_len {
        return (path.to_string(), String::new(), String::new());
    }
    let prefix = parts[..prefix_len].join("/");
    let rest = &parts[prefix_len..];
    let (namespace, rest) = match rest {
        ["namespaces", ns, resource, tail @ ..] => (ns.to_string(), {
            let mut v = vec![*resource];
            v.extend_from_slice(tail);
            v
        }),
        other => (String::new(), other.to_vec()),
    };
    match rest.as_slice() {
        [resource] => (format!("/{prefix}/{resource}"), namespace, String::new()),
        // `/api/v1/namespaces/NAME` lands here too: the Namespace object itself.
        [resource, name, ..] => (format!("/{prefix}/{resource}"), namespace, name.to_string()),
        _ => (format!("/{prefix}"), namespace, String::new()),
    }
}

/// Whether `object` matches a `labelSelector` of `key=value` and `key` terms.
fn selected(object: &Value, selector: &str) -> bool {
    let labels = object.pointer("/metadata/labels");
    selector
        .split(',')
        .filter(|t| !t.is_empty())
        .all(|term| match term.split_once('=') {
            Some((k, v)) => labels.and_then(|l| l.get(k)).and_then(Value::as_str) == Some(v),
            None => labels.and_then(|l| l.get(term)).is_some(),
        })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A kubeconfig at `path` that points kube clients (and `kubectl`) at the server on `addr`.
pub fn write_kubeconfig(addr: SocketAddr, path: &std::path::Path) -> std::io::Result<()> {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{addr}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn not_found(what: &str) -> Response<Body> {
    json_response(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

impl ApiServer {
    pub fn new() -> ApiServer {
        ApiServer::default()
    }

    /// Collections under `prefix` answer 404 (a CRD that is not installed).
    pub fn missing(&self, prefix: &str) {
        self.lock().missing.push(prefix.to_string());
    }

    /// Writes to paths under `prefix` are refused with 403 (an admission denial).
    pub fn refuse(&self, prefix: &str) {
        self.lock().refused.push(prefix.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster-wide collection of an object (`/apis/apps/v1/deployments`).
    pub fn collection_of(object: &Value, plural: &str) -> String {
        let api_version = object["apiVersion"].as_str().unwrap_or("v1");
        if api_version.contains('/') {
            format!("/apis/{api_version}/{plural}")
        } else {
            format!("/api/{api_version}/{plural}")
        }
    }

    /// Stores `object` in `collection` and streams `kind` (ADDED, MODIFIED, DELETED) to watchers.
    pub fn event(&self, collection: &str, kind: &str, mut object: Value) {
        let mut s = self.lock();
        s.version += 1;
        object["metadata"]["resourceVersion"] = json!(s.version.to_string());
        let key = (
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
        let items = s.items.entry(collection.to_string()).or_default();
        if kind == "DELETED" {
            items.remove(&key);
        } else {
            items.insert(key, object.clone());
        }
        let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
        if let Some(watchers) = s.watchers.get_mut(collection) {
            watchers.retain(|w| w.send(line.clone()).is_ok());
        }
    }

    /// The objects of a collection.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .items
            .get(collection)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One object, by namespace (empty for cluster-scoped) and name.
    pub fn object(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .items
            .get(collection)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every write received so far, as `METHOD path?query` (PATCH) or `METHOD path`.
    pub fn writes(&self) -> Vec<String> {
        self.lock().writes.clone()
    }

    async fn respond(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let (collection, namespace, name) = route(&path);
        // JSON merge and strategic merge patches both merge into the existing object here
        // (strategic merge's list semantics are not implemented).
        let merge = req.headers().get("content-type").is_some_and(|v| {
            v.as_bytes().starts_with(b"application/merge-patch+json")
                || v.as_bytes()
                    .starts_with(b"application/strategic-merge-patch+json")
        });
        if self
            .lock()
            .missing
            .iter()
            .any(|m| collection.starts_with(m))
        {
            return not_found(&path);
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        match method {
            Method::GET if name.is_empty() => {
                let selector = query_param(&query, "labelSelector").unwrap_or_default();
                if query_param(&query, "watch").as_deref() == Some("true")
                    || query_param(&query, "watch").as_deref() == Some("1")
                {
                    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
                    self.lock().watchers.entry(collection).or_default().push(tx);
                    let selector = selector.clone();
                    let stream = futures::stream::unfold(rx, move |mut rx| {
                        let selector = selector.clone();
                        async move {
                            loop {
                                let line = rx.recv().await?;
                                let event: Value = serde_json::from_slice(&line).ok()?;
                                if selected(&event["object"], &selector) {
                                    return Some((Ok::<_, Infallible>(Frame::data(line)), rx));
                                }
                            }
                        }
                    });
                    return Response::builder()
                        .header("content-type", "application/json")
                        .body(BodyExt::boxed(StreamBody::new(stream)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()));
                }
                let s = self.lock();
                let items: Vec<Value> = s
                    .items
                    .get(&collection)
                    .into_iter()
                    .flat_map(|m| m.iter())
                    .filter(|((ns, _), _)| namespace.is_empty() || *ns == namespace)
                    .map(|(_, o)| o.clone())
                    .filter(|o| selected(o, &selector))
                    .collect();
                json_response(
                    200,
                    &json!({"kind": "List", "apiVersion": "v1",
                        "metadata": {"resourceVersion": s.version.to_string()}, "items": items}),
                )
            }
            Method::GET => match self.object(&collection, &namespace, &name) {
                Some(o) => json_response(200, &o),
                None => not_found(&path),
            },
            Method::PATCH | Method::DELETE | Method::POST
                if self.lock().refused.iter().any(|r| path.starts_with(r)) =>
            {
                json_response(
                    403,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "admission webhook denied the request", "reason": "Forbidden", "code": 403}),
                )
            }
            Method::PATCH => {
                let kind = if merge { "merge" } else { "apply" };
                self.lock()
                    .writes
                    .push(format!("PATCH({kind}) {path}?{query}"));
                let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                    return json_response(400, &json!({"kind": "Status", "code": 400}));
                };
                if !namespace.is_empty() {
                    object["metadata"]["namespace"] = json!(namespace);
                }
                object["metadata"]["name"] = json!(name);
                let existing = self.object(&collection, &namespace, &name);
                // The status subresource changes only the status of an existing object.
                if path.ends_with("/status") {
                    let Some(mut current) = existing.clone() else {
                        return not_found(&path);
                    };
                    current["status"] = object["status"].take();
                    object = current;
                } else if merge {
                    let Some(mut merged) = existing.clone() else {
                        return not_found(&path);
                    };
                    json_patch::merge(&mut merged, &object);
                    object = merged;
                } else if let Some(status) = existing.as_ref().and_then(|e| e.get("status")) {
                    // Writes to the object itself leave its status as it was (the status
                    // subresource owns it).
                    object["status"] = status.clone();
                }
                let kind = if existing.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                self.event(&collection, kind, object);
                match self.object(&collection, &namespace, &name) {
                    Some(o) => json_response(200, &o),
                    None => not_found(&path),
                }
            }
            Method::POST if name.is_empty() => {
                self.lock().writes.push(format!("POST {path}"));
                let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                    return json_response(400, &json!({"kind": "Status", "code": 400}));
                };
                if !namespace.is_empty() {
                    object["metadata"]["namespace"] = json!(namespace);
                }
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if self.object(&collection, &namespace, &name).is_some() {
                    return json_response(
                        409,
                        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "AlreadyExists", "code": 409}),
                    );
                }
                self.event(&collection, "ADDED", object);
                match self.object(&collection, &namespace, &name) {
                    Some(o) => json_response(201, &o),
                    None => not_found(&path),
                }
            }
            Method::DELETE => {
                self.lock().writes.push(format!("DELETE {path}"));
                match self.object(&collection, &namespace, &name) {
                    Some(o) => {
                        self.event(&collection, "DELETED", o.clone());
                        json_response(200, &o)
                    }
                    None => not_found(&path),
                }
            }
            _ => json_response(405, &json!({"kind": "Status", "code": 405})),
        }
    }

    /// Serves on a free loopback port; returns its address.
    pub async fn serve(&self) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let api = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let api = api.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = api.clone();
                        async move { Ok::<_, Infallible>(api.respond(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_collections() {
        assert_eq!(
            route("/api/v1/namespaces/acme/pods/web"),
            ("/api/v1/pods".into(), "acme".into(), "web".into())
        );
        assert_eq!(
            route("/api/v1/pods"),
            ("/api/v1/pods".into(), "".into(), "".into())
        );
        assert_eq!(
            route("/api/v1/namespaces/acme"),
            ("/api/v1/namespaces".into(), "".into(), "acme".into())
        );
        assert_eq!(
            route("/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings/x"),
            (
                "/apis/rbac.authorization.k8s.io/v1/rolebindings".into(),
                "a".into(),
                "x".into()
            )
        );
        assert_eq!(
            route("/apis/scheduling.k8s.io/v1/priorityclasses/p"),
            (
                "/apis/scheduling.k8s.io/v1/priorityclasses".into(),
                "".into(),
                "p".into()
            )
        );
        assert_eq!(percent_decode("a%3Db%2Cc"), "a=b,c");
    }

    #[test]
    fn selectors_match_labels() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        assert!(selected(&o, "a=1"));
        assert!(selected(&o, "a=1,b"));
        assert!(!selected(&o, "a=2"));
        assert!(!selected(&o, "c"));
        assert!(selected(&o, ""));
    }
}
