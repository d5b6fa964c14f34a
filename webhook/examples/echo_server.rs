//! The baselines for the webhook load harness: a bare axum + rustls server on the webhook's own
//! TLS and HTTP stack that answers every POST with an AdmissionReview response and decides
//! nothing.
//!
//! - `echo`: one fixed response (the transport alone);
//! - `--parse`: parses the review into a `serde_json::Value` and answers with its `uid` (the
//!   transport plus the one parse any webhook must do: the floor for a decision).
//!
//! cargo run --release -p tenantry-webhook --example echo_server -- ADDR CERT KEY [--parse]

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, cert, key) = (&args[1], &args[2], &args[3]);
    let parse = args.get(4).map(String::as_str) == Some("--parse");
    let response = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;
    let app = if parse {
        Router::new().route(
            "/validate",
            post(|body: axum::body::Bytes| async move {
                let Ok(review) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    return (StatusCode::BAD_REQUEST, String::new());
                };
                let uid = review["request"]["uid"].as_str().unwrap_or_default();
                let answer = serde_json::json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {"uid": uid, "allowed": true},
                });
                (StatusCode::OK, answer.to_string())
            }),
        )
    } else {
        Router::new().route(
            "/validate",
            post(move |_body: axum::body::Bytes| async move { response }),
        )
    };
    let tls = tenantry_certs::ReloadingCert::load(cert.as_ref(), key.as_ref())
        .unwrap()
        .server_config()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let never = Arc::new(tokio::sync::Notify::new());
    tenantry_webhook::server::serve(
        listener,
        Some(tls),
        app,
        never,
        Duration::from_secs(1),
        1024,
    )
    .await;
}
