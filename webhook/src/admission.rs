//! AdmissionReview `admission.k8s.io/v1`, exactly the fields the API server sends and reads.
//!
//! Objects stay `serde_json::Value`: the webhook sees every kind, including CRDs, and parsing a
//! review once into these types is the only parse a decision needs.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not a usable AdmissionReview (the server answers 400, the CLI exits 2).
#[derive(Debug, Error)]
pub enum ReviewError {
    #[error("body is not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "expected apiVersion `{API_VERSION}` and kind `AdmissionReview`, got `{api_version}` `{kind}`"
    )]
    WrongType { api_version: String, kind: String },
    #[error("AdmissionReview has no `request`")]
    NoRequest,
    #[error("AdmissionReview request has an empty `uid`")]
    NoUid,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

impl AdmissionReview {
    /// Parses and checks a review body; the request is returned on its own.
    pub fn parse_request(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
        let review: AdmissionReview = serde_json::from_slice(body)?;
        if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
            return Err(ReviewError::WrongType {
                api_version: review.api_version,
                kind: review.kind,
            });
        }
        let request = review.request.ok_or(ReviewError::NoRequest)?;
        if request.uid.is_empty() {
            return Err(ReviewError::NoUid);
        }
        Ok(request)
    }

    /// Wraps a response for the API server.
    pub fn respond(response: AdmissionResponse) -> AdmissionReview {
        AdmissionReview {
            api_version: API_VERSION.to_string(),
            kind: "AdmissionReview".to_string(),
            request: None,
            response: Some(response),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionResource {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resource: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }

    /// The Cedar action of this operation.
    pub fn action(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
            Operation::Connect => "connect",
        }
    }
}

impl std::str::FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "CREATE" => Ok(Operation::Create),
            "UPDATE" => Ok(Operation::Update),
            "DELETE" => Ok(Operation::Delete),
            "CONNECT" => Ok(Operation::Connect),
            _ => Err(format!(
                "`{s}` is not an operation (CREATE, UPDATE, DELETE, CONNECT)"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<BTreeMap<String, Vec<String>>>,
}

impl UserInfo {
    /// `system:serviceaccount:<namespace>:<name>` → `(namespace, name)`.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then_some((namespace, name))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub resource: GroupVersionResource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_kind: Option<GroupVersionKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_resource: Option<GroupVersionResource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sub_resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub operation: Operation,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default, skip_serializing_if = "is_null")]
    pub object: Value,
    #[serde(default, skip_serializing_if = "is_null")]
    pub old_object: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    #[serde(default, skip_serializing_if = "is_null")]
    pub options: Value,
}

fn is_null(v: &Value) -> bool {
    v.is_null()
}

impl AdmissionRequest {
    pub fn subresource(&self) -> &str {
        self.sub_resource.as_deref().unwrap_or("")
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run.unwrap_or(false)
    }

    /// The object as it will be stored (CREATE, UPDATE) or as it is (DELETE).
    pub fn subject(&self) -> &Value {
        if self.object.is_null() {
            &self.old_object
        } else {
            &self.object
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `metav1.Status` as admission responses carry it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl AdmissionResponse {
    pub fn allow(uid: &str) -> AdmissionResponse {
        AdmissionResponse {
            uid: uid.to_string(),
            allowed: true,
            ..Default::default()
        }
    }

    /// A denial; `code` 403 for policy decisions, 400 for objects Tenantry cannot read.
    pub fn deny(uid: &str, code: u16, message: String) -> AdmissionResponse {
        let reason = if code == 403 {
            "Forbidden"
        } else {
            "BadRequest"
        };
        AdmissionResponse {
            uid: uid.to_string(),
            allowed: false,
            status: Some(Status {
                code,
                message,
                reason: reason.to_string(),
            }),
            ..Default::default()
        }
    }

    /// Attaches a JSON Patch (base64 in the response, as the API server wants it).
    pub fn with_patch(mut self, patch: &json_patch::Patch) -> AdmissionResponse {
        if !patch.0.is_empty() {
            let json = serde_json::to_vec(patch).unwrap_or_default();
            self.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
            self.patch_type = Some("JSONPatch".to_string());
        }
        self
    }

    /// The JSON Patch this response carries, decoded.
    pub fn decoded_patch(&self) -> Option<json_patch::Patch> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.patch.as_ref()?)
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }

    pub fn message(&self) -> &str {
        self.status.as_ref().map_or("", |s| s.message.as_str())
    }
}
