//! `tenantry demo`: the embedded example tenants and policies at work. It starts the real webhook
//! on loopback over HTTPS and sends each write of the scenario through `/mutate` and
//! `/validate`, exactly as the API server would; then it starts an enforcer in front of a small
//! application and sends it allowed, unauthenticated, wrong-tenant and rate-limited requests.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};
use tenantry_certs::client::Client;
use tenantry_webhook::review::Outcome;
use tenantry_webhook::server::{self, AppState};
use tenantry_webhook::{AdmissionReview, embedded};

use crate::cases;

const SCENARIO: &str = include_str!("../../examples/demo.yaml");

#[derive(Args)]
pub struct DemoArgs {}

pub fn run(_args: &DemoArgs) -> Result<ExitCode> {
    crate::inputs::runtime()?.block_on(play())
}

async fn play() -> Result<ExitCode> {
    let suite = cases::load_str(SCENARIO, Path::new("<embedded>/demo.yaml"))?;
    let state = AppState::local(embedded::directory()?, embedded::policies()?);
    for object in crate::inputs::parse_documents(embedded::STATE_YAML)? {
        state.ledger.observe(&object).map_err(anyhow::Error::msg)?;
    }
    let policies = state.policies.current().len();
    let tenants = state.directory.current().tenant_count();
    let hook = server::start_local(Arc::new(state)).await?;
    let client = Client::https(&hook.ca_pem, "127.0.0.1")?;
    out!(
        "Tenantry demo: the webhook is serving on https://{} with the embedded directory ({} tenants)\n\
         and {policies} Cedar policies. Each write goes to /mutate, then /validate, as the API server sends it.\n",
        hook.addr,
        tenants,
    );

    let mut surprises = 0;
    for (i, case) in suite.cases.iter().enumerate() {
        let request = cases::request_for(case, i)?;
        let started = Instant::now();
        let outcome = admit(&client, hook.addr, request).await?;
        let elapsed = started.elapsed();
        let failures = cases::check(case, &outcome);
        out!("{:>2}. {}", i + 1, case.name);
        let kind = outcome
            .object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("object");
        if outcome.allowed {
            out!(
                "    ALLOWED {kind}  ({} µs round trip)",
                elapsed.as_micros()
            );
        } else {
            out!("    DENIED  {}", outcome.message);
        }
        let mut changed: Vec<String> = outcome
            .patch
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|op| op.get("path").and_then(Value::as_str))
            .map(|p| p.replace("~1", "/"))
            .collect();
        changed.dedup();
        if outcome.allowed && !changed.is_empty() {
            out!("    mutated: {}", changed.join(", "));
        }
        for w in &outcome.warnings {
            out!("    warning: {w}");
        }
        if !failures.is_empty() {
            surprises += 1;
            out!("    UNEXPECTED: {}", failures.join("; "));
        }
        out!();
    }
    hook.stop().await;

    out!("Traffic: an enforcer sidecar in front of a small application, as injected above.\n");
    let mut transcript = Vec::new();
    tenantry_enforcer::demo::run(&mut transcript).await?;
    out_raw!("{}", String::from_utf8_lossy(&transcript));
    out!();

    if surprises == 0 {
        out!(
            "All {} writes were decided as the scenario expects.",
            suite.cases.len()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        out!("{surprises} writes were not decided as the scenario expects.");
        Ok(ExitCode::from(1))
    }
}

/// `/mutate`, the patch applied, `/validate`: one write as the API server handles it.
async fn admit(
    client: &Client,
    addr: std::net::SocketAddr,
    request: tenantry_webhook::AdmissionRequest,
) -> Result<Outcome> {
    let mut review =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    let mutated = post(client, addr, "/mutate", &review).await?;
    let mut warnings: Vec<String> = mutated.warnings.clone();
    let mut patch = Value::Array(Vec::new());
    if let Some(encoded) = &mutated.patch {
        let raw = base64::engine::general_purpose::STANDARD.decode(encoded)?;
        let ops: json_patch::Patch = serde_json::from_slice(&raw)?;
        json_patch::patch(&mut review["request"]["object"], &ops)
            .context("the webhook's patch does not apply")?;
        patch = serde_json::to_value(&ops)?;
    }
    let object = review["request"]["object"].clone();
    if !mutated.allowed {
        return Ok(outcome(
            false,
            mutated.message().to_string(),
            warnings,
            patch,
            object,
        ));
    }
    let validated = post(client, addr, "/validate", &review).await?;
    warnings.extend(validated.warnings.iter().cloned());
    Ok(outcome(
        validated.allowed,
        validated.message().to_string(),
        warnings,
        patch,
        object,
    ))
}

fn outcome(
    allowed: bool,
    message: String,
    warnings: Vec<String>,
    patch: Value,
    object: Value,
) -> Outcome {
    // The policy ids travel in the message as `[policy <id>]`.
    let reasons = message
        .split("[policy ")
        .skip(1)
        .filter_map(|s| s.split(']').next())
        .map(str::to_string)
        .collect();
    Outcome {
        allowed,
        message,
        reasons,
        audited: Vec::new(),
        warnings,
        patch,
        object,
    }
}

async fn post(
    client: &Client,
    addr: std::net::SocketAddr,
    path: &str,
    review: &Value,
) -> Result<tenantry_webhook::AdmissionResponse> {
    let reply = client.post(addr, path, serde_json::to_vec(review)?).await?;
    anyhow::ensure!(
        reply.status == 200,
        "{path} answered {}: {}",
        reply.status,
        reply.text()
    );
    let parsed: AdmissionReview = serde_json::from_slice(&reply.body)?;
    parsed
        .response
        .context("the webhook answered without a response")
}
