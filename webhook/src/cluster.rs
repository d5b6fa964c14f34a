//! The webhook's view of a real cluster: usage from kube-rs watches, and the self-signed TLS
//! bootstrap that publishes its CA into the webhook configurations.
//!
//! Watches keep per-namespace counters in the [`Ledger`], never whole objects: most kinds are
//! watched metadata-only (Secrets included, so the webhook never reads secret data); Pods,
//! PersistentVolumeClaims, PersistentVolumes, Ingresses and Gateway API objects are read in full
//! because their requests, addresses, storage, claims and hosts count. Gateway API kinds are
//! optional: where their CRDs are not installed there is nothing to count.

use std::collections::HashSet;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::contract;
use crate::ledger::Ledger;

/// A kube client from `--kubeconfig`, or the in-cluster configuration.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig `{}`", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::incluster()
            .context("not running in a cluster and no --kubeconfig given")?,
    };
    Ok(Client::try_from(config)?)
}

/// Watches every kind in [`contract::WATCHED_RESOURCES`] into `ledger`; calls `on_synced` once
/// each has listed completely (the webhook then admits quota-bound writes, the controller reports
/// usage).
pub fn watch_usage(
    client: Client,
    ledger: Arc<Ledger>,
    on_synced: impl Fn() + Send + Sync + 'static,
) {
    let on_synced: Arc<dyn Fn() + Send + Sync> = Arc::new(on_synced);
    let synced = Arc::new(AtomicUsize::new(0));
    let total = contract::WATCHED_RESOURCES.len();
    macro_rules! full {
        ($k:ty) => {
            tokio::spawn(follow(
                Api::<$k>::all(client.clone()),
                ledger.clone(),
                on_synced.clone(),
                synced.clone(),
                total,
                |o: &$k| serde_json::to_value(o).unwrap_or(Value::Null),
            ));
        };
    }
    macro_rules! meta {
        ($k:ty) => {
            tokio::spawn(follow(
                Api::<PartialObjectMeta<$k>>::all(client.clone()),
                ledger.clone(),
                on_synced.clone(),
                synced.clone(),
                total,
                |o: &PartialObjectMeta<$k>| {
                    json!({
                        "apiVersion": <$k as Resource>::api_version(&()),
                        "kind": <$k as Resource>::kind(&()),
                        "metadata": o.metadata,
                    })
                },
            ));
        };
    }
    full!(Pod);
    full!(PersistentVolumeClaim);
    full!(PersistentVolume);
    full!(Ingress);
    for (group, version, kind) in contract::GATEWAY_KINDS {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let (api_version, kind) = (resource.api_version.clone(), resource.kind.clone());
        tokio::spawn(follow(
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            ledger.clone(),
            on_synced.clone(),
            synced.clone(),
            total,
            move |o: &DynamicObject| {
                let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
                // Dynamic objects list without apiVersion/kind on each item.
                v["apiVersion"] = json!(api_version);
                v["kind"] = json!(kind);
                v
            },
        ));
    }
    meta!(Namespace);
    meta!(Service);
    meta!(ConfigMap);
    meta!(Secret);
    meta!(Deployment);
    meta!(StatefulSet);
    meta!(DaemonSet);
    meta!(ReplicaSet);
    meta!(Job);
    meta!(CronJob);
}

fn key_of(object: &Value) -> Option<String> {
    let r = crate::usage::ObjectRef::of(object);
    (!r.kind.is_empty() && !r.name.is_empty()).then(|| r.key())
}

async fn follow<K>(
    api: Api<K>,
    ledger: Arc<Ledger>,
    on_synced: Arc<dyn Fn() + Send + Sync>,
    synced: Arc<AtomicUsize>,
    total: usize,
    to_json: impl Fn(&K) -> Value,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Serialize + 'static,
{
    let mut stream = watcher(api).boxed();
    let mut listing: Option<HashSet<u64>> = None;
    let mut resource: Option<String> = None;
    let mut counted_sync = false;
    let count_sync = |counted_sync: &mut bool| {
        if !*counted_sync {
            *counted_sync = true;
            if synced.fetch_add(1, Ordering::AcqRel) + 1 == total {
                info!(objects = ledger.objects(), "usage watches synced");
                on_synced();
            }
        }
    };
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(watcher::Error::InitialListFailed(kube::Error::Api(e))) if e.code == 404 => {
                // An optional kind (a Gateway API CRD) is not installed: nothing of it exists to
                // count. The watcher keeps retrying, so it is counted once it is installed.
                count_sync(&mut counted_sync);
                continue;
            }
            Err(e) => {
                warn!(error = %e, "usage watch failed; retrying with backoff");
                continue;
            }
        };
        match event {
            Event::Init => listing = Some(HashSet::new()),
            Event::InitApply(o) | Event::Apply(o) => {
                let json = to_json(&o);
                let Some(key) = key_of(&json) else { continue };
                if resource.is_none() {
                    resource = key.split('/').next().map(str::to_string);
                }
                if let Some(seen) = listing.as_mut() {
                    seen.insert(crate::ledger::key_hash(&key));
                }
                if let Err(e) = ledger.observe(&json) {
                    warn!(error = %e, "object not counted");
                }
            }
            Event::Delete(o) => {
                if let Some(key) = key_of(&to_json(&o)) {
                    ledger.forget(&key);
                }
            }
            Event::InitDone => {
                // Objects that vanished while the watch was down are not in the new listing.
                if let (Some(seen), Some(resource)) = (listing.take(), resource.as_ref()) {
                    for hash in ledger.hashes_of_resource(resource) {
                        if !seen.contains(&hash) {
                            ledger.forget_hash(hash);
                        }
                    }
                }
                count_sync(&mut counted_sync);
            }
        }
    }
}

fn watcher<K>(api: Api<K>) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default()).default_backoff()
}

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
