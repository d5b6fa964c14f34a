//! The webhook's own business with a real cluster: how many replicas it runs as, and the
//! self-signed TLS bootstrap that publishes its CA into the webhook configurations. The usage
//! watches and the kube client live in `tenantry-cluster`, shared with the controller.

use std::path::Path;

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::info;

use crate::contract;

pub use tenantry_cluster::watch::{client, watch_usage};

/// How many replicas the Deployment running this pod asks for, when that can be known: this pod
/// (named by `HOSTNAME`) → its ReplicaSet → `spec.replicas`. `None` outside a Deployment, or when
/// a lookup fails (the webhook's RBAC lists pods and ReplicaSets, which is all this needs).
pub async fn own_replicas(client: Client) -> Option<i32> {
    use kube::api::ListParams;
    let name = std::env::var("HOSTNAME").ok()?;
    let namespace =
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .map(|n| n.trim().to_string())
            .unwrap_or_else(|_| contract::NAMESPACE.to_string());
    let by_name = |n: &str| ListParams::default().fields(&format!("metadata.name={n}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = pods
        .list(&by_name(&name))
        .await
        .ok()?
        .items
        .into_iter()
        .next()?;
    let owner = pod
        .metadata
        .owner_references?
        .into_iter()
        .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))?;
    let sets: Api<ReplicaSet> = Api::namespaced(client, &namespace);
    let set = sets
        .list(&by_name(&owner.name))
        .await
        .ok()?
        .items
        .into_iter()
        .next()?;
    set.spec.replicas
}

/// Refuses a start that would let replicas overshoot quotas: several replicas, each with its own
/// reservations.
pub fn require_shared_reservations(replicas: Option<i32>, shared: bool) -> Result<()> {
    match replicas {
        Some(n) if n > 1 && !shared => anyhow::bail!(
            "this webhook is one of {n} replicas but has no --redis: each replica would keep its \
             own quota reservations, and a burst of creates spread over them could overshoot a \
             tier up to {n} times; give every replica the same --redis, or run one replica"
        ),
        _ => Ok(()),
    }
}

/// The Secret replicas share the bootstrap CA and serving certificate through.
pub const TLS_SECRET: &str = "tenantry-webhook-tls";

/// Self-signed bootstrap: reuse the shared Secret or create it (the first replica wins; the others
/// read its result), write the PEM files, and put the CA into both webhook configurations.
pub async fn bootstrap_tls(client: Client, cert: &Path, key: &Path) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), contract::NAMESPACE);
    let existing = secrets
        .get_opt(TLS_SECRET)
        .await
        .context("cannot read the TLS Secret")?;
    let secret = match existing {
        Some(s) => s,
        None => {
            let names = tenantry_certs::service_names(contract::SERVICE_NAME, contract::NAMESPACE);
            let generated = tenantry_certs::generate(&names, 365)?;
            let data = [
                ("ca.crt", generated.ca_cert),
                ("ca.key", generated.ca_key),
                ("tls.crt", generated.cert),
                ("tls.key", generated.key),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect();
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(TLS_SECRET.to_string()),
                    namespace: Some(contract::NAMESPACE.to_string()),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".to_string()),
                data: Some(data),
                ..Default::default()
            };
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(s) => {
                    info!("created the webhook TLS Secret");
                    s
                }
                Err(kube::Error::Api(e)) if e.code == 409 => secrets
                    .get(TLS_SECRET)
                    .await
                    .context("cannot read the TLS Secret another replica created")?,
                Err(e) => return Err(e).context("cannot create the TLS Secret"),
            }
        }
    };
    let data = secret.data.unwrap_or_default();
    let field = |k: &str| -> Result<String> {
        let bytes = data
            .get(k)
            .with_context(|| format!("Secret `{TLS_SECRET}` has no `{k}`"))?;
        Ok(String::from_utf8_lossy(&bytes.0).into_owned())
    };
    let ca = field("ca.crt")?;
    tenantry_certs::write_atomic(key, &field("tls.key")?)?;
    tenantry_certs::write_atomic(cert, &field("tls.crt")?)?;

    let patch = |name: &str| json!({"webhooks": [{"name": name, "clientConfig": {"caBundle": base64_encode(ca.as_bytes())}}]});
    let params = PatchParams::default();
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    mutating
        .patch(
            contract::WEBHOOK_CONFIGURATION,
            &params,
            &Patch::Strategic(patch(contract::MUTATING_WEBHOOK_NAME)),
        )
        .await
        .context("cannot set caBundle on the MutatingWebhookConfiguration")?;
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client);
    validating
        .patch(
            contract::WEBHOOK_CONFIGURATION,
            &params,
            &Patch::Strategic(patch(contract::VALIDATING_WEBHOOK_NAME)),
        )
        .await
        .context("cannot set caBundle on the ValidatingWebhookConfiguration")?;
    info!("webhook configurations trust the bootstrap CA");
    Ok(())
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_replicas_need_shared_reservations() {
        let err = require_shared_reservations(Some(3), false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("one of 3 replicas") && err.contains("--redis"),
            "{err}"
        );
        assert!(require_shared_reservations(Some(3), true).is_ok());
        assert!(require_shared_reservations(Some(1), false).is_ok());
        // Not in a Deployment, or not allowed to look: nothing to refuse on.
        assert!(require_shared_reservations(None, false).is_ok());
    }
}
