//! Offline review: build the AdmissionRequest the API server would send for a manifest, then run
//! mutation and validation exactly as the cluster does. `tenantry review`, `tenantry policy test`
//! and `tenantry demo` all go through here, so what they say is what the webhook will do.

use serde::Serialize;
use serde_json::{Value, json};
use tenantry_cluster::json::At;
use thiserror::Error;

use crate::admission::{
    AdmissionRequest, GroupVersionKind, GroupVersionResource, Operation, UserInfo,
};
use crate::decide;
use crate::translate::Inputs;
use crate::usage::resource_of;

#[derive(Debug, Error)]
pub enum ReviewInputError {
    #[error("the manifest has no `{0}`")]
    Missing(&'static str),
    #[error("the manifest is not a Kubernetes object (expected a mapping)")]
    NotAnObject,
    #[error(
        "the namespace from the manifest `{manifest}` does not match the namespace `{flag}` given on the command line"
    )]
    NamespaceMismatch { manifest: String, flag: String },
    #[error("operation UPDATE needs the old object (--old FILE)")]
    NoOldObject,
    #[error("the mutating patch could not be applied: {0}")]
    Patch(String),
}

/// Who writes, as the API server's authenticator would describe them.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The userInfo the API server sends: the given groups plus the implicit ones.
    pub fn user_info(&self) -> UserInfo {
        let mut groups = self.groups.clone();
        if let Some(rest) = self.user.strip_prefix("system:serviceaccount:") {
            groups.push("system:serviceaccounts".into());
            if let Some((ns, _)) = rest.split_once(':') {
                groups.push(format!("system:serviceaccounts:{ns}"));
            }
        }
        groups.push("system:authenticated".into());
        groups.dedup();
        UserInfo {
            username: self.user.clone(),
            uid: None,
            groups,
            extra: None,
        }
    }
}

/// A write to review.
#[derive(Debug, Clone)]
pub struct Write {
    pub object: Value,
    pub old: Option<Value>,
    pub identity: Identity,
    pub namespace: Option<String>,
    pub operation: Operation,
    pub dry_run: bool,
    /// `pods/eviction`, `serviceaccounts/token`, …: the object is then the subresource's body
    /// (or, for status, resize and the like, the parent itself).
    pub subresource: Option<String>,
    /// The parent's name, when the body does not carry it (a TokenRequest).
    pub name: Option<String>,
}

/// The outcome, in the shape `tenantry review -o json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub allowed: bool,
    pub message: String,
    /// Ids of the policies that denied.
    pub reasons: Vec<String>,
    /// Ids of the audit-mode policies that would have denied (the request is not refused).
    pub audited: Vec<String>,
    pub warnings: Vec<String>,
    /// The JSON Patch the mutating webhook returned (an empty list when it changed nothing).
    pub patch: Value,
    /// The object after the patch was applied.
    pub object: Value,
}

/// Kinds that live outside namespaces (those a review is likely to meet).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "PersistentVolume",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "GatewayClass",
    "CertificateSigningRequest",
    "SelfSubjectAccessReview",
    "SelfSubjectRulesReview",
    "SubjectAccessReview",
    "TokenReview",
    "SelfSubjectReview",
];

/// API groups of parents whose subresource bodies come from another group.
const PARENT_GROUPS: &[(&str, &str)] = &[
    ("pods", ""),
    ("services", ""),
    ("serviceaccounts", ""),
    ("namespaces", ""),
    ("nodes", ""),
    ("deployments", "apps"),
    ("statefulsets", "apps"),
    ("replicasets", "apps"),
    ("replicationcontrollers", ""),
];

/// The AdmissionRequest the API server would send for `write`.
pub fn admission_request(write: &Write, uid: &str) -> Result<AdmissionRequest, ReviewInputError> {
    let subject = if write.operation == Operation::Delete {
        write.old.as_ref().unwrap_or(&write.object)
    } else {
        &write.object
    };
    if !subject.is_object() {
        return Err(ReviewInputError::NotAnObject);
    }
    let api_version = subject
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or(ReviewInputError::Missing("apiVersion"))?;
    let kind = subject
        .get("kind")
        .and_then(Value::as_str)
        .ok_or(ReviewInputError::Missing("kind"))?;
    let (kind_group, kind_resource) = resource_of(api_version, kind);
    let version = api_version
        .rsplit('/')
        .next()
        .unwrap_or(api_version)
        .to_string();
    // A subresource is addressed through its parent: `deployments/scale` carries an
    // autoscaling/v1 Scale under the apps group's `deployments`.
    let (group, resource, sub_resource, namespaced) = match write.subresource.as_deref() {
        Some(path) => {
            let (parent, sub) = path.split_once('/').ok_or(ReviewInputError::Missing(
                "subresource as `resource/subresource`",
            ))?;
            let group = PARENT_GROUPS
                .iter()
                .find(|(r, _)| *r == parent)
                .map_or(kind_group.clone(), |(_, g)| g.to_string());
            let namespaced = !matches!(parent, "nodes" | "namespaces");
            (group, parent.to_string(), Some(sub.to_string()), namespaced)
        }
        None => (
            kind_group.clone(),
            kind_resource,
            None,
            !CLUSTER_SCOPED.contains(&kind),
        ),
    };
    let manifest_ns = subject.at("/metadata/namespace").and_then(Value::as_str);
    let namespace = match (namespaced, manifest_ns, &write.namespace) {
        (false, _, _) => None,
        (true, Some(m), Some(f)) if m != f => {
            return Err(ReviewInputError::NamespaceMismatch {
                manifest: m.to_string(),
                flag: f.clone(),
            });
        }
        (true, Some(m), _) => Some(m.to_string()),
        (true, None, Some(f)) => Some(f.clone()),
        (true, None, None) => Some("default".to_string()),
    };
    // The API server fills in the namespace before admission.
    let fill = |object: &Value| {
        let mut object = object.clone();
        if let (Some(ns), Some(meta)) = (
            &namespace,
            object.get_mut("metadata").and_then(Value::as_object_mut),
        ) {
            meta.insert("namespace".into(), json!(ns));
        }
        object
    };
    let name = write
        .name
        .as_deref()
        .or_else(|| subject.at("/metadata/name").and_then(Value::as_str))
        .unwrap_or("")
        .to_string();
    let (object, old_object) = match write.operation {
        Operation::Create | Operation::Connect => (fill(&write.object), Value::Null),
        Operation::Update => {
            let old = write.old.as_ref().ok_or(ReviewInputError::NoOldObject)?;
            (fill(&write.object), fill(old))
        }
        Operation::Delete => (Value::Null, fill(subject)),
    };
    Ok(AdmissionRequest {
        uid: uid.to_string(),
        kind: GroupVersionKind {
            group: kind_group,
            version: version.clone(),
            kind: kind.to_string(),
        },
        resource: GroupVersionResource {
            group,
            version,
            resource,
        },
        sub_resource,
        request_kind: None,
        request_resource: None,
        request_sub_resource: None,
        name: Some(name),
        namespace,
        operation: write.operation,
        user_info: write.identity.user_info(),
        object,
        old_object,
        dry_run: Some(write.dry_run),
        options: Value::Null,
    })
}

/// Runs mutation, applies its patch, and validates the result, as the API server does.
pub fn run(inputs: &Inputs<'_>, request: &AdmissionRequest) -> Result<Outcome, ReviewInputError> {
    let mutation = decide::mutate(inputs, request);
    let patch = mutation
        .response
        .decoded_patch()
        .unwrap_or(json_patch::Patch(Vec::new()));
    let patch_json = serde_json::to_value(&patch).unwrap_or(Value::Array(Vec::new()));
    let mut warnings = mutation.response.warnings.clone();
    if !mutation.response.allowed {
        return Ok(Outcome {
            allowed: false,
            message: mutation.response.message().to_string(),
            reasons: Vec::new(),
            audited: Vec::new(),
            warnings,
            patch: patch_json,
            object: request.object.clone(),
        });
    }
    let mut object = request.object.clone();
    json_patch::patch(&mut object, &patch).map_err(|e| ReviewInputError::Patch(e.to_string()))?;
    let mut patched = request.clone();
    patched.object = object.clone();
    let validation = decide::validate(inputs, &patched);
    warnings.extend(validation.response.warnings.iter().cloned());
    Ok(Outcome {
        allowed: validation.response.allowed,
        message: validation.response.message().to_string(),
        reasons: validation.denied_by,
        audited: validation.audited,
        warnings,
        patch: patch_json,
        object,
    })
}
