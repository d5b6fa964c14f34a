//! Usage from kube-rs watches.
//!
//! Watches keep per-namespace counters in the [`Ledger`], never whole objects: most kinds are
//! watched metadata-only (Secrets included, so nothing reads secret data); Pods,
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
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

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

/// Watches every kind in [`crate::WATCHED_RESOURCES`] into `ledger`; calls `on_synced` once
/// each has listed completely (the webhook then admits quota-bound writes, the controller reports
/// usage).
pub fn watch_usage(
    client: Client,
    ledger: Arc<Ledger>,
    on_synced: impl Fn() + Send + Sync + 'static,
) {
    let on_synced: Arc<dyn Fn() + Send + Sync> = Arc::new(on_synced);
    let synced = Arc::new(AtomicUsize::new(0));
    let total = crate::WATCHED_RESOURCES.len();
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
    for (group, version, kind) in crate::GATEWAY_KINDS {
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
