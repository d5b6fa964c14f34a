//! Mutation: stamp the directory's labels, apply the tier's scheduling, inject the enforcer.
//!
//! Mutation is idempotent (its own output yields an empty patch), so the API server can re-invoke
//! it after other webhooks (`reinvocationPolicy: IfNeeded`) without churn.

use serde_json::{Map, Value};

use crate::admission::{AdmissionRequest, Operation};
use crate::pod::{self, SidecarMode};
use crate::translate::{self, Inputs, STAMPED_LABELS, TranslateError};

/// The mutated object (if anything changed) and warnings for the user.
#[derive(Debug, Default)]
pub struct Mutation {
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
    let mut object = req.object.clone();
    let mut changed = false;
    let mut warnings = Vec::new();

    let wanted = translate::directory_labels(&owner);
    let old_labels = req
        .old_object
        .pointer("/metadata/labels")
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
        if !pod::opted_out(&object) {
            let port =
                pod::app_port(&object, inputs.injection).map_err(TranslateError::BadObject)?;
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
