//! Applying the desired state: server-side apply under one field manager, then pruning what
//! Tenantry manages and no longer wants. Objects without the `managed-by: tenantry` label are
//! never touched: ownership is recorded by Tenantry, not inferred from labels tenants set.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use k8s_openapi::api::core::v1::{LimitRange, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tenantry_tenancy::Directory;
use thiserror::Error;

use crate::desired::{self, DesiredState, LABEL_TENANT, MANAGED_BY, MANAGER, Options};
use crate::lifecycle::{self, LifecycleReport};
use crate::mirror;
use crate::ratelimit::{self, RateLimitError};
use tenantry_cluster::UsageView;

/// The field manager of every object Tenantry applies.
pub const FIELD_MANAGER: &str = "tenantry-controller";

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error("cannot apply {kind} `{name}`: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot list {kind}: {source}")]
    List {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot delete {kind} `{name}`: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error("{failed} namespace(s) could not be provisioned (the others were); the first: {first}")]
    Incomplete {
        failed: usize,
        #[source]
        first: Box<ApplyError>,
    },
}

/// What one reconcile did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub applied: usize,
    pub pruned: usize,
    pub lifecycle: LifecycleReport,
    /// `Tenant` mirrors applied.
    pub mirrored: usize,
}

fn selector() -> ListParams {
    ListParams::default().labels(&format!("{MANAGED_BY}={MANAGER}"))
}

async fn apply<K>(api: &Api<K>, object: &K) -> Result<(), ApplyError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    // `force`: the directory is the truth; a field someone else changed is taken back.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|source| ApplyError::Apply {
            kind: std::any::type_name::<K>()
                .rsplit("::")
                .next()
                .unwrap_or("object")
                .to_string(),
            name,
            source,
        })
}

/// Deletes objects of kind `K` that carry Tenantry's label but are not in `wanted`
/// (`(namespace, name)`; namespace empty for cluster-scoped kinds). `scoped` gives the API to
/// delete through for an object's namespace.
pub(crate) async fn prune<K>(
    api: Api<K>,
    scoped: impl Fn(&str) -> Api<K>,
    wanted: &BTreeSet<(String, String)>,
) -> Result<usize, ApplyError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let listed = api
        .list(&selector())
        .await
        .map_err(|source| ApplyError::List {
            kind: kind.clone(),
            source,
        })?;
    let mut pruned = 0;
    for object in listed.items {
        let key = (object.namespace().unwrap_or_default(), object.name_any());
        if wanted.contains(&key) {
            continue;
        }
        match scoped(&key.0)
            .delete(&key.1, &DeleteParams::default())
            .await
        {
            Ok(_) => pruned += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(ApplyError::Delete {
                    kind: kind.clone(),
                    name: format!("{}/{}", key.0, key.1),
                    source,
                });
            }
        }
    }
    Ok(pruned)
}

/// Namespaces in the cluster labelled for a tenant: name → the tenant label.
async fn labelled_namespaces(client: &Client) -> Result<BTreeMap<String, String>, ApplyError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let listed = api
        .list(&ListParams::default().labels(LABEL_TENANT))
        .await
        .map_err(|source| ApplyError::List {
            kind: "Namespace".to_string(),
            source,
        })?;
    Ok(listed
        .items
        .into_iter()
        .filter_map(|ns| {
            let label = ns.labels().get(LABEL_TENANT)?.clone();
            Some((ns.name_any(), label))
        })
        .collect())
}

/// [`prune`] for a namespaced kind.
async fn prune_namespaced<K>(
    client: &Client,
    wanted: &BTreeSet<(String, String)>,
) -> Result<usize, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    prune(
        Api::<K>::all(client.clone()),
        |ns| Api::namespaced(client.clone(), ns),
        wanted,
    )
    .await
}

/// Self-service namespaces among `labelled`: those labelled for a tenant whose prefix they carry
/// (the webhook stamped them when the tenant created them), not listed for anyone.
pub fn self_service_namespaces(
    labelled: &BTreeMap<String, String>,
    directory: &Directory,
) -> BTreeMap<String, String> {
    labelled
        .iter()
        .filter(|(name, _)| directory.listed_owner(name).is_none())
        .filter(|(name, label)| {
            directory
                .prefix_owner(name)
                .is_some_and(|o| *o.tenant.id == ***label)
        })
        .map(|(name, label)| (name.clone(), label.clone()))
        .collect()
}

/// Applies everything `state` wants, then prunes what Tenantry manages and no longer wants.
/// Namespaces are never pruned: deleting a tenant's data is the lifecycle's explicit step.
pub async fn apply_state(client: &Client, state: &DesiredState) -> Result<Report, ApplyError> {
    let mut report = Report::default();
    let classes: Api<PriorityClass> = Api::all(client.clone());
    for class in &state.priority_classes {
        apply(&classes, class).await?;
        report.applied += 1;
    }
    let mut wanted: BTreeMap<&'static str, BTreeSet<(String, String)>> = BTreeMap::new();
    // One namespace that cannot be provisioned (an admission refusal, a conflict) must not hold
    // up every tenant after it: go on, and report it at the end.
    let mut failures = Vec::new();
    for n in &state.namespaces {
        let ns = n.namespace.name_any();
        match apply_namespace(client, n).await {
            Ok(applied) => report.applied += applied,
            Err(e) => failures.push(e),
        }
        for binding in &n.role_bindings {
            wanted
                .entry("RoleBinding")
                .or_default()
                .insert((ns.clone(), binding.name_any()));
        }
        if let Some(secret) = &n.ratelimit_secret {
            wanted
                .entry("Secret")
                .or_default()
                .insert((ns.clone(), secret.name_any()));
        }
        for (kind, name) in [
            ("NetworkPolicy", desired::ISOLATION),
            ("LimitRange", desired::DEFAULTS),
            ("ServiceAccount", desired::AUTOMATION),
        ] {
            wanted
                .entry(kind)
                .or_default()
                .insert((ns.clone(), name.to_string()));
        }
    }
    let empty = BTreeSet::new();
    let want = |kind: &str| wanted.get(kind).unwrap_or(&empty);
    for pruned in [
        prune_namespaced::<RoleBinding>(client, want("RoleBinding")).await?,
        prune_namespaced::<NetworkPolicy>(client, want("NetworkPolicy")).await?,
        prune_namespaced::<LimitRange>(client, want("LimitRange")).await?,
        prune_namespaced::<ServiceAccount>(client, want("ServiceAccount")).await?,
        prune_namespaced::<Secret>(client, want("Secret")).await?,
    ] {
        report.pruned += pruned;
    }
    let classes_wanted: BTreeSet<(String, String)> = state
        .priority_classes
        .iter()
        .map(|c| (String::new(), c.name_any()))
        .collect();
    report.pruned += prune(classes.clone(), |_| classes.clone(), &classes_wanted).await?;
    match failures.len() {
        0 => Ok(report),
        failed => Err(ApplyError::Incomplete {
            failed,
            first: Box::new(failures.swap_remove(0)),
        }),
    }
}

/// Everything Tenantry owns in one namespace; returns how many objects were applied.
async fn apply_namespace(
    client: &Client,
    n: &crate::desired::NamespaceObjects,
) -> Result<usize, ApplyError> {
    apply(&Api::<Namespace>::all(client.clone()), &n.namespace).await?;
    let ns = n.namespace.name_any();
    apply(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
        &n.network_policy,
    )
    .await?;
    apply(
        &Api::<LimitRange>::namespaced(client.clone(), &ns),
        &n.limit_range,
    )
    .await?;
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), &ns),
        &n.service_account,
    )
    .await?;
    let bindings = Api::<RoleBinding>::namespaced(client.clone(), &ns);
    for binding in &n.role_bindings {
        apply(&bindings, binding).await?;
    }
    if let Some(secret) = &n.ratelimit_secret {
        apply(&Api::<Secret>::namespaced(client.clone(), &ns), secret).await?;
    }
    Ok(4 + n.role_bindings.len() + usize::from(n.ratelimit_secret.is_some()))
}

/// An Event on each namespace this reconcile provisioned for the first time (created, or adopted
/// from someone who made it without Tenantry's labels), so `kubectl events` says who set it up.
async fn announce_new_namespaces(
    client: &Client,
    recorder: &Recorder,
    state: &DesiredState,
    before: &BTreeMap<String, String>,
) {
    let tenant_of = |n: &desired::NamespaceObjects| {
        n.namespace
            .labels()
            .get(LABEL_TENANT)
            .cloned()
            .unwrap_or_default()
    };
    let candidates: Vec<_> = state
        .namespaces
        .iter()
        .filter(|n| before.get(&n.namespace.name_any()) != Some(&tenant_of(n)))
        .collect();
    if candidates.is_empty() {
        return;
    }
    // Only those this reconcile did provision: a namespace whose apply failed is not announced.
    let Ok(after) = labelled_namespaces(client).await else {
        return;
    };
    for n in candidates {
        let tenant = tenant_of(n);
        if after.get(&n.namespace.name_any()) != Some(&tenant) {
            continue;
        }
        let note = format!(
            "Tenantry provisioned this namespace for tenant `{tenant}`: network isolation, default requests, role bindings"
        );
        lifecycle::note(recorder, n.namespace.object_ref(&()), "Provisioned", note).await;
    }
}

/// What a reconcile works with besides the directory.
pub struct Context<'a> {
    pub client: &'a Client,
    pub recorder: &'a Recorder,
    pub options: &'a Options,
    /// Usage as admission counts it, once the usage watches have listed everything; `None`
    /// before (the `Tenant` mirrors then carry no usage rather than a wrong one).
    pub usage: Option<&'a dyn UsageView>,
    pub now: jiff::Timestamp,
}

/// One reconcile: read the world fresh, compute what it should be, make it so, then carry out
/// the lifecycle (even when some namespace could not be provisioned: a suspended tenant must be
/// scaled down whatever else failed) and mirror the tenants.
pub async fn reconcile(cx: &Context<'_>, directory: &Directory) -> Result<Report, ApplyError> {
    let client = cx.client;
    let labelled = labelled_namespaces(client).await?;
    let self_service = self_service_namespaces(&labelled, directory);
    let state = desired::desired(directory, &self_service, cx.options, cx.now);
    let applied = apply_state(client, &state).await;
    announce_new_namespaces(client, cx.recorder, &state, &labelled).await;
    if let Some(access) = &cx.options.ratelimit {
        let tenants = directory.tenants().map(|t| t.id.to_string()).collect();
        ratelimit::provision(access, &tenants).await?;
    }
    let lifecycle = lifecycle::carry_out(client, cx.recorder, &state).await?;
    let mirrored = mirror::apply_mirror(client, directory, &state.tenants, cx.usage).await?;
    let mut report = applied?;
    report.lifecycle = lifecycle;
    report.mirrored = mirrored;
    Ok(report)
}
