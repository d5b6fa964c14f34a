//! `tenantry audit`: the current policies against the objects already in a cluster.
//!
//! Admission sees writes; objects created before Tenantry was installed, while it was off, or
//! before a policy was added were never judged by today's rules. This lists them and runs each
//! through `/validate` as it is stored, written by whoever would write it today: the tenant (a
//! service account of its namespace), or, for objects a controller owns, that controller.
//! Quota policies are left out: re-creating an object that exists would count it twice, and
//! usage against limits is what `kubectl get tenants` shows.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde::Serialize;
use serde_json::{Value, json};
use tenantry_webhook::admission::Operation;
use tenantry_webhook::review::{self, Identity, Write};
use tenantry_webhook::{Inputs, Ledger, decide};

use crate::inputs;
use crate::review_cmd::Output;

/// `(group, version, kind, plural)` of what is audited: the kinds whose content the policies
/// judge. Secrets are not read (their labels are judged on write; an audit tool that reads
/// every secret in a cluster is one more thing to trust), Events and EndpointSlices are the
/// cluster's own records.
const AUDITED: &[(&str, &str, &str, &str)] = &[
    ("", "v1", "Pod", "pods"),
    ("", "v1", "Service", "services"),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ("", "v1", "ConfigMap", "configmaps"),
    ("", "v1", "ServiceAccount", "serviceaccounts"),
    ("apps", "v1", "Deployment", "deployments"),
    ("apps", "v1", "StatefulSet", "statefulsets"),
    ("apps", "v1", "DaemonSet", "daemonsets"),
    ("apps", "v1", "ReplicaSet", "replicasets"),
    ("batch", "v1", "Job", "jobs"),
    ("batch", "v1", "CronJob", "cronjobs"),
    ("networking.k8s.io", "v1", "Ingress", "ingresses"),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
    ),
    ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
];

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Kubeconfig of the cluster to audit (default: $KUBECONFIG, else in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub sources: inputs::Sources,
    /// Output format.
    #[arg(
        short,
        long,
        value_enum,
        default_value = "text",
        env = "TENANTRY_OUTPUT"
    )]
    pub output: Output,
}

/// One object the policies would refuse today.
#[derive(Debug, Serialize)]
pub struct Violation {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    pub tenant: String,
    /// The identity it was judged as (the tenant, or the controller owning the object).
    pub judged_as: String,
    pub policies: Vec<String>,
    /// `true` when only audit-mode policies object (nothing would be refused).
    pub audit_only: bool,
    pub message: String,
}

pub fn run(args: &AuditArgs) -> Result<ExitCode> {
    let (directory, policies) = args.sources.load()?;
    let runtime = inputs::runtime()?;
    let (objects, skipped) = runtime.block_on(list(args.kubeconfig.as_deref()))?;
    for (kind, why) in &skipped {
        eprintln!("audit: {kind} not listed: {why}");
    }
    // Namespaces and everything listed give the ledger the self-service namespaces' labels.
    let ledger = Ledger::new();
    for object in &objects {
        if let Err(e) = ledger.observe(object) {
            // Judged below all the same; only its usage is unknown, and quotas are not audited.
            eprintln!("audit: {}: {e}", describe(object));
        }
    }
    let view = ledger.view(None);
    let injection = tenantry_webhook::InjectionConfig::default();
    let boundary = tenantry_webhook::Boundary::default();
    let inputs = Inputs {
        directory: &directory,
        usage: &view,
        policies: &policies,
        injection: &injection,
        boundary: &boundary,
    };
    let mut violations = Vec::new();
    let mut judged = 0usize;
    for object in &objects {
        if object["kind"] == "Namespace" {
            continue;
        }
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("");
        let Some(owner) = inputs.owner(namespace) else {
            continue;
        };
        judged += 1;
        if let Some(v) = judge(&inputs, object, &owner.tenant.id)? {
            violations.push(v);
        }
    }
    match args.output {
        Output::Json => out!("{}", serde_json::to_string_pretty(&violations)?),
        Output::Text => {
            for v in &violations {
                let label = if v.audit_only { "audit" } else { "refused" };
                out!(
                    "{label:<8} {}/{} {} (tenant {}, as {}): {}",
                    v.namespace,
                    v.kind,
                    v.name,
                    v.tenant,
                    v.judged_as,
                    v.message
                );
            }
            eprintln!(
                "audit: {judged} tenant objects judged, {} would be refused today, {} reported by audit-mode policies",
                violations.iter().filter(|v| !v.audit_only).count(),
                violations.iter().filter(|v| v.audit_only).count()
            );
        }
    }
    Ok(if violations.iter().any(|v| !v.audit_only) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Lists every audited kind cluster-wide, plus Namespaces; kinds the cluster does not serve
/// (a CRD not installed) are reported and skipped, any other failure ends the audit.
async fn list(kubeconfig: Option<&std::path::Path>) -> Result<(Vec<Value>, Vec<(String, String)>)> {
    let client = tenantry_cluster::watch::client(kubeconfig).await?;
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    let kinds = std::iter::once(&("", "v1", "Namespace", "namespaces")).chain(AUDITED);
    for (group, version, kind, plural) in kinds {
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for item in list.items {
                    let mut v = serde_json::to_value(&item)?;
                    // Lists carry apiVersion and kind on the list, not on each item.
                    v["apiVersion"] = json!(resource.api_version);
                    v["kind"] = json!(resource.kind);
                    objects.push(v);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                skipped.push((
                    kind.to_string(),
                    "the cluster does not serve it".to_string(),
                ));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list {plural}"));
            }
        }
    }
    Ok((objects, skipped))
}

fn describe(object: &Value) -> String {
    format!(
        "{}/{} {}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["kind"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// The object as a create would carry it: without what the API server and the scheduler add.
fn as_written(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = o["metadata"].as_object_mut() {
        for field in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(field);
        }
    }
    if o["kind"] == "Pod"
        && let Some(spec) = o["spec"].as_object_mut()
    {
        // Set by the scheduler's binding, which is decided on its own.
        spec.remove("nodeName");
    }
    o
}

/// Who would write this object today: the controller that owns it (`ReplicaSet` →
/// `replicaset-controller`), Tenantry's controller for what it manages, else the tenant.
fn writer(object: &Value, namespace: &str) -> String {
    let owner = object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["controller"] == true)
        .and_then(|r| r["kind"].as_str());
    if let Some(kind) = owner {
        return format!(
            "system:serviceaccount:kube-system:{}-controller",
            kind.to_lowercase()
        );
    }
    if object["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tenantry" {
        return "system:serviceaccount:tenantry-system:tenantry-controller".to_string();
    }
    format!("system:serviceaccount:{namespace}:tenantry-audit")
}

fn judge(inputs: &Inputs<'_>, object: &Value, tenant: &str) -> Result<Option<Violation>> {
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let user = writer(object, &namespace);
    let write = Write {
        object: as_written(object),
        old: None,
        identity: Identity {
            user: user.clone(),
            groups: Vec::new(),
        },
        namespace: Some(namespace.clone()),
        operation: Operation::Create,
        dry_run: true,
        subresource: None,
        name: None,
    };
    let request = review::admission_request(&write, "tenantry-audit")?;
    let decision = decide::validate(inputs, &request);
    let is_quota = |id: &String| {
        inputs
            .policies
            .policy(id)
            .is_some_and(|p| p.annotations.contains_key("quota"))
    };
    let refused: Vec<String> = decision
        .denied_by
        .iter()
        .filter(|id| !is_quota(id))
        .cloned()
        .collect();
    let refused_for_other_reason = !decision.response.allowed && decision.denied_by.is_empty();
    if refused.is_empty() && !refused_for_other_reason && decision.audited.is_empty() {
        return Ok(None);
    }
    let audit_only = refused.is_empty() && !refused_for_other_reason;
    let message = if audit_only {
        decision.response.warnings.join("; ")
    } else {
        decision.response.message().to_string()
    };
    let mut policies = if audit_only {
        decision.audited.clone()
    } else {
        refused
    };
    policies.sort();
    Ok(Some(Violation {
        namespace,
        kind: object["kind"].as_str().unwrap_or("").to_string(),
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        tenant: tenant.to_string(),
        judged_as: user,
        policies,
        audit_only,
        message,
    }))
}
