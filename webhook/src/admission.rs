//! AdmissionReview `admission.k8s.io/v1`, exactly the fields the API server sends and reads.
//!
//! Objects stay `serde_json::Value`: the webhook sees every kind, including CRDs, and parsing a
//! review once into these types is the only parse a decision needs. Their own
//! `metadata.managedFields` is skipped as it is read ([`bookkept`]).

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
    /// Without `metadata.managedFields` (see [`bookkept`]).
    #[serde(
        default,
        skip_serializing_if = "is_null",
        deserialize_with = "bookkept::without"
    )]
    pub object: Value,
    /// Without `metadata.managedFields` (see [`bookkept`]).
    #[serde(
        default,
        skip_serializing_if = "is_null",
        deserialize_with = "bookkept::without"
    )]
    pub old_object: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
    #[serde(default, skip_serializing_if = "is_null")]
    pub options: Value,
}

fn is_null(v: &Value) -> bool {
    v.is_null()
}

/// Objects are read without `metadata.managedFields`: the API server's record of which client
/// last set each field. No decision reads it (who may write what is the request's user, not the
/// object's history), mutation never writes it, and it is a sixth of a typical Pod review's bytes
/// but, as hundreds of tiny nested maps, a larger share of parsing and dropping it. It is skipped
/// as it is read, never built. Everything else is exactly what `serde_json::Value` reads.
pub mod bookkept {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};

    pub const FIELD: &str = "managedFields";

    pub fn without<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Level::Object)
    }

    /// Where in the object a value is: only `metadata` of the object itself is pruned.
    #[derive(Clone, Copy)]
    enum Level {
        Object,
        Metadata,
    }

    impl<'de> de::DeserializeSeed<'de> for Level {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Level {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = match (self, key.as_str()) {
                    (Level::Object, "metadata") => map.next_value_seed(Level::Metadata)?,
                    (Level::Metadata, FIELD) => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    _ => map.next_value::<Value>()?,
                };
                out.insert(key, value);
            }
            Ok(Value::Object(out))
        }

        // Anything but a map is read as `Value` reads it.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
            while let Some(item) = seq.next_element::<Value>()? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }
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
    pub fn with_patch(mut self, patch: &[impl serde::Serialize]) -> AdmissionResponse {
        if !patch.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `review` parsed as `Value`, with the object's and old object's own `managedFields` removed.
    fn expected(review: &Value) -> (Value, Value) {
        let pruned = |v: &Value| {
            let mut v = v.clone();
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.shift_remove(bookkept::FIELD);
            }
            v
        };
        let request = &review["request"];
        (pruned(&request["object"]), pruned(&request["oldObject"]))
    }

    fn parse(review: &Value) -> AdmissionRequest {
        AdmissionReview::parse_request(review.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn objects_are_read_whole_but_for_their_own_managed_fields() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut pruned = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let review: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let req = parse(&review);
            assert_eq!((req.object, req.old_object), expected(&review), "{path:?}");
            pruned +=
                usize::from(review["request"]["object"]["metadata"][bookkept::FIELD].is_array());
        }
        assert!(pruned >= 5, "the fixtures carry managedFields ({pruned})");
    }

    #[test]
    fn only_the_objects_own_metadata_is_pruned() {
        let fields = json!([{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]);
        let object = json!({
            "metadata": {"name": "p", "managedFields": fields, "labels": {"managedFields": "x"}},
            "spec": {"template": {"metadata": {"managedFields": fields}}},
            "managedFields": fields,
        });
        for (object, old) in [
            (object.clone(), json!({"metadata": "not a map"})),
            (
                json!("a string"),
                json!([{"metadata": {"managedFields": 1}}]),
            ),
            (json!(12.5), json!(null)),
            (json!(true), json!(-3)),
        ] {
            let review = json!({
                "apiVersion": API_VERSION, "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "operation": "UPDATE", "object": object, "oldObject": old},
            });
            let req = parse(&review);
            assert_eq!((req.object, req.old_object), expected(&review), "{review}");
        }
    }

    #[test]
    fn malformed_managed_fields_are_still_refused() {
        let body = format!(
            r#"{{"apiVersion":"{API_VERSION}","kind":"AdmissionReview","request":{{"uid":"u",
            "kind":{{"group":"","version":"v1","kind":"Pod"}},
            "resource":{{"group":"","version":"v1","resource":"pods"}},"operation":"CREATE",
            "object":{{"metadata":{{"managedFields":[{{"a":}}]}}}}}}}}"#
        );
        assert!(matches!(
            AdmissionReview::parse_request(body.as_bytes()),
            Err(ReviewError::Json(_))
        ));
    }
}
