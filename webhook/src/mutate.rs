//! Mutation: stamp the directory's labels, apply the tier's scheduling, inject the enforcer.
//!
//! Mutation is idempotent (its own output yields an empty patch), so the API server can re-invoke
//! it after other webhooks (`reinvocationPolicy: IfNeeded`) without churn.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::{Map, Value};
use tenantry_cluster::json::At;

use crate::admission::{AdmissionRequest, Operation};
use crate::pod::{self, SidecarMode};
use crate::translate::{self, Inputs, STAMPED_LABELS, TranslateError};

/// What mutation changed (if anything) and warnings for the user.
#[derive(Debug, Default)]
pub struct Mutation {
    /// The parts of the object mutation may write (`WRITTEN`), as they are to be stored; the
    /// rest of the object stays as sent. [`patch`] turns the sent object into this.
    pub object: Option<Value>,
    pub warnings: Vec<String>,
}

/// Computes the object Tenantry wants stored. `None` when the request is left as it is.
pub fn mutate(inputs: &Inputs<'_>, req: &AdmissionRequest) -> Result<Mutation, TranslateError> {
    let writes = matches!(req.operation, Operation::Create | Operation::Update);
    if !writes || !req.subresource().is_empty() {
        return Ok(Mutation::default());
    }
    let Some(owner) = inputs.request_owner(req) else {
        return Ok(Mutation::default());
    };
    if !req.object.is_object() {
        return Err(TranslateError::BadObject(
            "the request carries no object to mutate".into(),
        ));
    }
    // Mutation works on a copy of only what it may change (`WRITTEN`): the rest of the object
    // (managedFields, annotations, status) is neither copied nor diffed, and cannot be written.
    let mut object = written_parts(&req.object);
    let mut changed = false;
    let mut warnings = Vec::new();

    let wanted = translate::directory_labels(&owner);
    let old_labels = req
        .old_object
        .at("/metadata/labels")
        .cloned()
        .unwrap_or(Value::Null);
    let labels = metadata_map(&mut object, "labels");
    for key in STAMPED_LABELS {
        let truth = wanted.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v);
        let current = labels.get(key).and_then(Value::as_str);
        if current == truth {
            continue;
        }
        // On UPDATE, a value the writer changed to something the directory does not say is
        // tampering: leave it for validation to refuse loudly. Stale or missing values (a tier
        // change since the last write, a `kubectl replace` without our labels) are refreshed.
        let previous = old_labels.get(key).and_then(Value::as_str);
        if req.operation == Operation::Update && current.is_some() && current != previous {
            continue;
        }
        match truth {
            Some(value) => labels.insert(key.to_string(), Value::String(value.to_string())),
            None => labels.remove(key),
        };
        changed = true;
    }

    let is_pod = req.resource.group.is_empty() && req.resource.resource == "pods";
    if is_pod && req.operation == Operation::Create {
        let tier = &owner.tenant.tier;
        if pod::scheduling_state_on_create(object.get("spec").unwrap_or(&Value::Null), tier)
            != pod::SchedulingState::Tier
            && let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut)
        {
            warnings.extend(pod::apply_scheduling(spec, tier));
            changed = true;
        }
        // Annotations and container ports are read from the object as sent: mutation changes
        // neither before this point.
        if !pod::opted_out(&req.object) {
            let port =
                pod::app_port(&req.object, inputs.injection).map_err(TranslateError::BadObject)?;
            let sidecar = inputs
                .injection
                .injection(&owner.tenant.id, &tier.name, port);
            let mode: SidecarMode = inputs.injection.mode;
            changed |= pod::inject(&mut object, &sidecar, mode);
        }
    }

    Ok(Mutation {
        object: changed.then_some(object),
        warnings,
    })
}

fn metadata_map<'a>(object: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    let root = ensure_object(object);
    let metadata = ensure_object(
        root.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new())),
    );
    ensure_object(
        metadata
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new())),
    )
}

fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// Where [`mutate`] writes, and so where its patch is looked for: the labels it stamps and the
/// pod spec (scheduling, the enforcer). Diffing the whole object would walk what mutation never
/// touches — `managedFields`, the last-applied annotation, `status` — which was half of a Pod
/// CREATE's mutation cost. A test holds this list to what the code above writes.
const WRITTEN: [&[&str]; 2] = [&["metadata", "labels"], &["spec"]];

/// A copy of the parts of `object` under `WRITTEN`, in the objects that hold them. Where a
/// part of a path is not an object, that value is copied as it is (mutation replaces it).
fn written_parts(object: &Value) -> Value {
    let mut parts = Value::Object(Map::new());
    for path in WRITTEN {
        copy_path(object, &mut parts, path);
    }
    parts
}

fn copy_path(from: &Value, to: &mut Value, path: &[&str]) {
    let (Some((key, rest)), Some(from), Some(to)) =
        (path.split_first(), from.as_object(), to.as_object_mut())
    else {
        return;
    };
    let Some(child) = from.get(*key) else {
        return;
    };
    if rest.is_empty() || !child.is_object() {
        to.insert((*key).to_string(), child.clone());
        return;
    }
    let slot = to.entry(*key).or_insert_with(|| Value::Object(Map::new()));
    copy_path(child, slot, rest);
}

/// The JSON Patch that turns the object as sent (`old`) into the object with mutation's parts
/// (`new`, as [`mutate`] returned them, or a whole object) in place. Only the paths under
/// `WRITTEN` are compared.
pub fn patch(old: &Value, new: &Value) -> Patch {
    let mut patch = Patch(Vec::new());
    let mut at = PointerBuf::root();
    if old.is_object() && new.is_object() {
        for path in WRITTEN {
            diff_under(old, new, path, &mut at, &mut patch);
        }
    } else {
        diff_into(old, new, &mut at, &mut patch);
    }
    patch
}

/// Follows `path` down both objects and diffs what is there; where either side stops being an
/// object on the way, the two values at that point are diffed whole.
fn diff_under(old: &Value, new: &Value, path: &[&str], at: &mut PointerBuf, patch: &mut Patch) {
    let (Some((key, rest)), Some(o), Some(n)) =
        (path.split_first(), old.as_object(), new.as_object())
    else {
        return diff_into(old, new, at, patch);
    };
    at.push_back(*key);
    match (o.get(*key), n.get(*key)) {
        (None, None) => {}
        (Some(_), None) => patch.0.push(remove(at)),
        (None, Some(v)) => patch.0.push(add(at, v)),
        (Some(a), Some(b)) => diff_under(a, b, rest, at, patch),
    }
    at.pop_back();
}

/// A structural diff, as `json_patch::diff` makes, except that elements put in front of an
/// array (the enforcer goes first) are added there instead of every element being rewritten
/// one place along.
fn diff_into(old: &Value, new: &Value, at: &mut PointerBuf, patch: &mut Patch) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (key, b) in n {
                at.push_back(key);
                match o.get(key) {
                    Some(a) => diff_into(a, b, at, patch),
                    None => patch.0.push(add(at, b)),
                }
                at.pop_back();
            }
            for key in o.keys().filter(|k| !n.contains_key(*k)) {
                at.push_back(key);
                patch.0.push(remove(at));
                at.pop_back();
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            let front = n.len().saturating_sub(o.len());
            if front > 0 && n[front..] == o[..] {
                for (i, v) in n[..front].iter().enumerate() {
                    at.push_back(i);
                    patch.0.push(add(at, v));
                    at.pop_back();
                }
                return;
            }
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                at.push_back(i);
                diff_into(a, b, at, patch);
                at.pop_back();
            }
            for (i, v) in n.iter().enumerate().skip(o.len()) {
                at.push_back(i);
                patch.0.push(add(at, v));
                at.pop_back();
            }
            // Each removal shifts the rest down: the surplus goes one at a time from `n.len()`.
            for _ in n.len()..o.len() {
                at.push_back(n.len());
                patch.0.push(remove(at));
                at.pop_back();
            }
        }
        _ if old == new => {}
        _ => patch.0.push(PatchOperation::Replace(ReplaceOperation {
            path: at.clone(),
            value: new.clone(),
        })),
    }
}

fn add(at: &PointerBuf, value: &Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: at.clone(),
        value: value.clone(),
    })
}

fn remove(at: &PointerBuf) -> PatchOperation {
    PatchOperation::Remove(RemoveOperation { path: at.clone() })
}
