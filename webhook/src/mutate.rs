//! Mutation: stamp the directory's labels, apply the tier's scheduling, inject the enforcer.
//!
//! Mutation is idempotent (its own output yields an empty patch), so the API server can re-invoke
//! it after other webhooks (`reinvocationPolicy: IfNeeded`) without churn.

use json_patch::jsonptr::{PointerBuf, Token};
use serde::Serialize;
use serde_json::{Map, Value};
use tenantry_cluster::json::At;

use crate::admission::{AdmissionRequest, Operation};
use crate::pod::{self, SidecarMode};
use crate::translate::{self, Inputs, STAMPED_LABELS, TranslateError};

/// What mutation changed (if anything) and warnings for the user.
#[derive(Debug, Default)]
pub struct Mutation {
    pub object: Option<Written>,
    pub warnings: Vec<String>,
}

/// The parts of an object mutation may write, as they are to be stored; the rest of the object
/// stays as sent. [`patch`] turns the sent object into this.
#[derive(Debug, Clone)]
pub struct Written {
    /// `paths` of the object, in the objects that hold them (`{"metadata": {"labels": …}}`).
    pub parts: Value,
    /// Where mutation may write in this request: [`POD_CREATE`] or [`LABELS`].
    pub paths: Paths,
}

/// Paths into an object, each a list of keys.
pub type Paths = &'static [&'static [&'static str]];

/// Where mutation writes on a Pod CREATE: the labels it stamps, the spec fields the tier's
/// scheduling sets (and `nodeName`, which it reads) and the container lists the enforcer goes
/// into. The rest of the spec (volumes, the security context, …) is neither copied nor diffed.
pub const POD_CREATE: Paths = &[
    &["metadata", "labels"],
    &["spec", "nodeName"],
    &["spec", "priorityClassName"],
    &["spec", "priority"],
    &["spec", "nodeSelector"],
    &["spec", "tolerations"],
    &["spec", "initContainers"],
    &["spec", "containers"],
];
/// Where mutation writes on every other request: the labels it stamps.
pub const LABELS: Paths = &[&["metadata", "labels"]];

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
    // Mutation works on a copy of only what it may change: the rest of the object
    // (managedFields, annotations, status, most of a pod's spec, all of any other object's) is
    // neither copied nor diffed, and cannot be written.
    let pod_create = req.operation == Operation::Create
        && req.resource.group.is_empty()
        && req.resource.resource == "pods";
    let paths = if pod_create { POD_CREATE } else { LABELS };
    let mut object = written_parts(&req.object, paths);
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

    if pod_create {
        let tier = &owner.tenant.tier;
        if pod::scheduling_state_on_create(req.object.get("spec").unwrap_or(&Value::Null), tier)
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
        object: changed.then_some(Written {
            parts: object,
            paths,
        }),
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

/// A copy of the parts of `object` under `paths`, in the objects that hold them. Where a
/// part of a path is not an object, that value is copied as it is (mutation replaces it).
///
/// Copying and diffing the whole object would walk what mutation never touches —
/// `managedFields`, the last-applied annotation, `status` — which was half of a Pod CREATE's
/// mutation cost. A test holds the paths to what [`mutate`] writes.
fn written_parts(object: &Value, paths: Paths) -> Value {
    let mut parts = Value::Object(Map::new());
    for path in paths {
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
/// (`new.parts`) in place. Only the paths mutation may write (`new.paths`) are compared.
pub fn patch<'a>(old: &'a Value, new: &'a Written) -> Patch<'a> {
    let mut patch = Vec::new();
    let mut at = Vec::new();
    if old.is_object() && new.parts.is_object() {
        for path in new.paths {
            diff_under(old, &new.parts, path, &mut at, &mut patch);
        }
    } else {
        diff_into(old, &new.parts, &mut at, &mut patch);
    }
    patch
}

/// Follows `path` down both objects and diffs what is there; where either side stops being an
/// object on the way, the two values at that point are diffed whole.
fn diff_under<'a>(
    old: &'a Value,
    new: &'a Value,
    path: &[&'static str],
    at: &mut Vec<Segment<'a>>,
    patch: &mut Patch<'a>,
) {
    let (Some((key, rest)), Some(o), Some(n)) =
        (path.split_first(), old.as_object(), new.as_object())
    else {
        return diff_into(old, new, at, patch);
    };
    at.push(Segment::Key(key));
    match (o.get(*key), n.get(*key)) {
        (None, None) => {}
        (Some(_), None) => patch.push(remove(at)),
        (None, Some(v)) => patch.push(add(at, v)),
        (Some(a), Some(b)) => diff_under(a, b, rest, at, patch),
    }
    at.pop();
}

/// A structural diff, as `json_patch::diff` makes, except that elements put in front of an
/// array (the enforcer goes first) are added there instead of every element being rewritten
/// one place along.
fn diff_into<'a>(old: &'a Value, new: &'a Value, at: &mut Vec<Segment<'a>>, patch: &mut Patch<'a>) {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            for (key, b) in n {
                at.push(Segment::Key(key));
                match o.get(key) {
                    Some(a) => diff_into(a, b, at, patch),
                    None => patch.push(add(at, b)),
                }
                at.pop();
            }
            for key in o.keys().filter(|k| !n.contains_key(*k)) {
                at.push(Segment::Key(key));
                patch.push(remove(at));
                at.pop();
            }
        }
        (Value::Array(o), Value::Array(n)) => {
            let front = n.len().saturating_sub(o.len());
            if front > 0 && n[front..] == o[..] {
                for (i, v) in n[..front].iter().enumerate() {
                    at.push(Segment::Index(i));
                    patch.push(add(at, v));
                    at.pop();
                }
                return;
            }
            for (i, (a, b)) in o.iter().zip(n).enumerate() {
                at.push(Segment::Index(i));
                diff_into(a, b, at, patch);
                at.pop();
            }
            for (i, v) in n.iter().enumerate().skip(o.len()) {
                at.push(Segment::Index(i));
                patch.push(add(at, v));
                at.pop();
            }
            // Each removal shifts the rest down: the surplus goes one at a time from `n.len()`.
            for _ in n.len()..o.len() {
                at.push(Segment::Index(n.len()));
                patch.push(remove(at));
                at.pop();
            }
        }
        _ if old == new => {}
        _ => patch.push(Op::Replace {
            path: pointer(at),
            value: new,
        }),
    }
}

fn add<'a>(at: &[Segment<'_>], value: &'a Value) -> Op<'a> {
    Op::Add {
        path: pointer(at),
        value,
    }
}

fn remove<'a>(at: &[Segment<'_>]) -> Op<'a> {
    Op::Remove { path: pointer(at) }
}

/// One step of the path the diff is at. The JSON Pointer is written only for an operation:
/// keeping a `PointerBuf` up to date cost ~600 instructions a step, escaping and unescaping
/// every key on the way down and up.
#[derive(Debug, Clone, Copy)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// The JSON Pointer (RFC 6901) of `at`, keys escaped by `jsonptr`.
fn pointer(at: &[Segment<'_>]) -> PointerBuf {
    PointerBuf::from_tokens(at.iter().map(|segment| match *segment {
        Segment::Key(key) => Token::from(key),
        Segment::Index(i) => Token::from(i),
    }))
}

/// A JSON Patch (RFC 6902) as [`patch`] makes it.
pub type Patch<'a> = Vec<Op<'a>>;

/// One JSON Patch operation, serialised as `json_patch` serialises its own. The values it
/// writes are borrowed from the mutated object: the patch is only ever serialised, and cloning
/// every added subtree (the enforcer's container) cost as much as serialising it.
#[derive(Debug, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op<'a> {
    Add { path: PointerBuf, value: &'a Value },
    Remove { path: PointerBuf },
    Replace { path: PointerBuf, value: &'a Value },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    /// The patch is written as `json_patch` writes its own operations, and reads back as them.
    #[test]
    fn operations_serialise_as_json_patch_does() {
        let old = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app"}], "gone": 1, "swap": "a"},
        });
        let new = json!({
            "metadata": {"labels": {"app": "web", "tenantry.dev/t~x": "y"}},
            "spec": {
                "containers": [{"name": "tenantry-enforcer", "env": [{"name": "a~b/c"}]}, {"name": "app"}],
                "swap": ["b"],
            },
        });
        let written = Written {
            parts: new.clone(),
            paths: &[&["metadata", "labels"], &["spec"]],
        };
        let ours = serde_json::to_value(patch(&old, &written)).unwrap();
        let theirs: json_patch::Patch = serde_json::from_value(ours.clone()).unwrap();
        assert_eq!(ours, serde_json::to_value(&theirs).unwrap());
        assert_eq!(
            ours,
            json!([
                {"op": "add", "path": "/metadata/labels/tenantry.dev~1t~0x", "value": "y"},
                {"op": "add", "path": "/spec/containers/0", "value": {"name": "tenantry-enforcer", "env": [{"name": "a~b/c"}]}},
                {"op": "replace", "path": "/spec/swap", "value": ["b"]},
                {"op": "remove", "path": "/spec/gone"},
            ])
        );
        let mut patched = old.clone();
        json_patch::patch(&mut patched, &theirs).unwrap();
        assert_eq!(patched, new);
    }
}
