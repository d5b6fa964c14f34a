//! The lifecycle in the cluster: scaling a suspended or deleted tenant's Deployments and
//! StatefulSets to zero and back, and deleting a deleted tenant's namespaces once its purge time
//! has passed. What to do comes from the desired state; this module only carries it out.
//!
//! A scaled-down workload carries a label (so the controller finds every one with a single
//! label-selected list, whatever the namespace) and its previous replicas in an annotation, read
//! back on resume. Both are written with a JSON merge patch, not server-side apply: `replicas`
//! stays owned by whoever set it (kubectl, Helm, a GitOps tool), and Tenantry never becomes a
//! co-owner that conflicts with their next apply.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::apply::{ApplyError, FIELD_MANAGER};
use crate::desired::{DesiredState, LABEL_TENANT};

/// On a workload Tenantry scaled to zero.
pub const LABEL_SCALED_DOWN: &str = "tenantry.dev/scaled-down";
/// The replicas a scaled-down workload had, restored on resume.
pub const REPLICAS_BEFORE: &str = "tenantry.dev/replicas-before-scale-down";

/// What the lifecycle did in one reconcile.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LifecycleReport {
    pub scaled_down: usize,
    pub restored: usize,
    pub purged: usize,
}

/// The workload kinds with replicas the lifecycle scales.
fn workload_kinds() -> [ApiResource; 2] {
    [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
    ]
}

fn list_error(kind: &ApiResource) -> impl FnOnce(kube::Error) -> ApplyError + '_ {
    move |source| ApplyError::List {
        kind: kind.kind.clone(),
        source,
    }
}

fn replicas(object: &DynamicObject) -> i64 {
    // An absent `replicas` means 1 for both kinds.
    object.data["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// Events are for people reading `kubectl describe`/`kubectl events`; failing to publish one
/// never fails a reconcile.
pub(crate) async fn note(
    recorder: &Recorder,
    reference: k8s_openapi::api::core::v1::ObjectReference,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.to_string(),
        note: Some(note),
        action: reason.to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        warn!(error = %e, reason, "cannot publish an event");
    }
}

async fn merge_patch(
    api: &Api<DynamicObject>,
    kind: &ApiResource,
    object: &DynamicObject,
    patch: Value,
) -> Result<(), ApplyError> {
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    match api
        .patch(&object.name_any(), &params, &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing left to scale.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(ApplyError::Apply {
            kind: kind.kind.clone(),
            name: format!(
                "{}/{}",
                object.namespace().unwrap_or_default(),
                object.name_any()
            ),
            source,
        }),
    }
}

/// Scales every Deployment and StatefulSet in `namespace` to zero, recording what each had.
/// One already scaled down that someone scaled up again goes back to zero, its record kept.
async fn scale_down(
    client: &Client,
    recorder: &Recorder,
    namespace: &str,
) -> Result<usize, ApplyError> {
    let mut scaled = 0;
    for kind in workload_kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &kind);
        let listed = api
            .list(&ListParams::default())
            .await
            .map_err(list_error(&kind))?;
        for object in listed.items {
            let now = replicas(&object);
            let marked = object.labels().contains_key(LABEL_SCALED_DOWN);
            let patch = match (marked, now) {
                (_, 0) => continue,
                (true, _) => json!({ "spec": { "replicas": 0 } }),
                (false, _) => json!({
                    "metadata": {
                        "labels": { LABEL_SCALED_DOWN: "true" },
                        "annotations": { REPLICAS_BEFORE: now.to_string() },
                    },
                    "spec": { "replicas": 0 },
                }),
            };
            merge_patch(&api, &kind, &object, patch).await?;
            scaled += 1;
            info!(namespace, kind = %kind.kind, name = %object.name_any(), replicas = now, "scaled down");
            note(
                recorder,
                object.object_ref(&kind),
                "ScaledDown",
                format!("Tenantry scaled this {} from {now} replicas to 0: its tenant is suspended or deleted; the replicas come back when it is resumed", kind.kind),
            )
            .await;
        }
    }
    Ok(scaled)
}

/// Gives every workload Tenantry scaled down, outside `keep_down`, its replicas back.
async fn restore(
    client: &Client,
    recorder: &Recorder,
    keep_down: &BTreeSet<&str>,
) -> Result<usize, ApplyError> {
    let mut restored = 0;
    for kind in workload_kinds() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind);
        let listed = api
            .list(&ListParams::default().labels(LABEL_SCALED_DOWN))
            .await
            .map_err(list_error(&kind))?;
        for object in listed.items {
            let namespace = object.namespace().unwrap_or_default();
            if keep_down.contains(namespace.as_str()) {
                continue;
            }
            let before = object
                .annotations()
                .get(REPLICAS_BEFORE)
                .and_then(|r| r.parse::<i32>().ok())
                .filter(|r| *r >= 0);
            let mut patch = json!({
                "metadata": {
                    "labels": { LABEL_SCALED_DOWN: null },
                    "annotations": { REPLICAS_BEFORE: null },
                },
            });
            match before {
                Some(replicas) => patch["spec"] = json!({ "replicas": replicas }),
                // Without a readable record, unmark it and leave the replicas to its owner.
                None => {
                    warn!(%namespace, name = %object.name_any(), "scaled-down workload has no readable {REPLICAS_BEFORE}; left at its current replicas")
                }
            }
            let namespaced: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &kind);
            merge_patch(&namespaced, &kind, &object, patch).await?;
            restored += 1;
            info!(%namespace, kind = %kind.kind, name = %object.name_any(), replicas = ?before, "restored");
            note(
                recorder,
                object.object_ref(&kind),
                "Restored",
                match before {
                    Some(r) => format!("Tenantry restored this {} to {r} replicas: its tenant is active again", kind.kind),
                    None => format!("Tenantry no longer holds this {} at 0 replicas: its tenant is active again", kind.kind),
                },
            )
            .await;
        }
    }
    Ok(restored)
}

/// Deletes `namespace` if it is labelled for `tenant` (never one that is not: a directory that
/// lists a namespace is not proof that the tenant's data is what it holds). Returns whether a
/// deletion was started.
async fn purge(
    client: &Client,
    recorder: &Recorder,
    namespace: &str,
    tenant: &str,
) -> Result<bool, ApplyError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let existing = match api.get_opt(namespace).await {
        Ok(Some(ns)) => ns,
        Ok(None) => return Ok(false),
        Err(source) => {
            return Err(ApplyError::List {
                kind: "Namespace".into(),
                source,
            });
        }
    };
    if existing.meta().deletion_timestamp.is_some() {
        return Ok(false);
    }
    if existing.labels().get(LABEL_TENANT).map(String::as_str) != Some(tenant) {
        warn!(
            namespace,
            tenant, "not deleting a namespace that is not labelled for the deleted tenant"
        );
        return Ok(false);
    }
    // The event goes first: it lives in the namespace and is deleted with it, but watchers of
    // events (and audit) see why the namespace went.
    note(
        recorder,
        existing.object_ref(&()),
        "Purging",
        format!("Tenantry is deleting this namespace: tenant `{tenant}` was deleted and its grace period has passed"),
    )
    .await;
    match api.delete(namespace, &DeleteParams::background()).await {
        Ok(_) => {
            info!(namespace, tenant, "purging a deleted tenant's namespace");
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(source) => Err(ApplyError::Delete {
            kind: "Namespace".into(),
            name: namespace.to_string(),
            source,
        }),
    }
}

/// Carries out what `state` asks of tenant workloads and namespaces.
pub async fn carry_out(
    client: &Client,
    recorder: &Recorder,
    state: &DesiredState,
) -> Result<LifecycleReport, ApplyError> {
    let mut report = LifecycleReport::default();
    for (namespace, tenant) in &state.purge {
        report.purged += usize::from(purge(client, recorder, namespace, tenant).await?);
    }
    for namespace in &state.scaled_down {
        report.scaled_down += scale_down(client, recorder, namespace).await?;
    }
    let keep_down: BTreeSet<&str> = state
        .scaled_down
        .iter()
        .chain(state.purge.keys())
        .map(String::as_str)
        .collect();
    report.restored += restore(client, recorder, &keep_down).await?;
    Ok(report)
}
