//! The baseline for the webhook load harness: a bare axum + rustls server that answers every POST
//! with one fixed AdmissionReview response. Same TLS stack, same HTTP stack, no decision.
//!
//! cargo run --release -p tenantry-webhook --example echo_server -- ADDR CERT KEY

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark tool

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::post;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, cert, key) = (&args[1], &args[2], &args[3]);
    let response = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;
    let app = Router::new().route(
        "/validate",
        post(move |_body: axum::body::Bytes| async move { response }),
    );
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
