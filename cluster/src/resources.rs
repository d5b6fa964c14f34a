//! What a pod asks of the quota: its effective requests and limits, as ResourceQuota counts
//! them, from a pod spec as JSON.

use serde_json::{Value, json};
use tenantry_tenancy::quantity::{self, QuantityError, Unit};
use thiserror::Error;

/// What a pod asks of the quota, in the units quotas are kept in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodResources {
    pub requests_cpu: i64,
    pub requests_memory: i64,
    pub limits_cpu: i64,
    pub limits_memory: i64,
}

impl PodResources {
    fn add(self, o: PodResources) -> PodResources {
        PodResources {
            requests_cpu: self.requests_cpu.saturating_add(o.requests_cpu),
            requests_memory: self.requests_memory.saturating_add(o.requests_memory),
            limits_cpu: self.limits_cpu.saturating_add(o.limits_cpu),
            limits_memory: self.limits_memory.saturating_add(o.limits_memory),
        }
    }
    fn max(self, o: PodResources) -> PodResources {
        PodResources {
            requests_cpu: self.requests_cpu.max(o.requests_cpu),
            requests_memory: self.requests_memory.max(o.requests_memory),
            limits_cpu: self.limits_cpu.max(o.limits_cpu),
            limits_memory: self.limits_memory.max(o.limits_memory),
        }
    }
}

#[derive(Debug, Error)]
#[error("{field}: {source}")]
pub struct ResourceError {
    pub field: String,
    #[source]
    pub source: QuantityError,
}

/// A quantity as it appears in an object: a string, or a bare number.
pub fn quantity_value(raw: &Value, unit: Unit) -> Result<i64, QuantityError> {
    match raw {
        Value::String(s) => quantity::parse(s, unit),
        Value::Number(n) => quantity::parse(&n.to_string(), unit),
        other => Err(QuantityError::Malformed(other.to_string())),
    }
}

fn quantity_at(
    container: &Value,
    section: &str,
    resource: &str,
) -> Result<Option<i64>, ResourceError> {
    let Some(raw) = container
        .get("resources")
        .and_then(|r| r.get(section))
        .and_then(|s| s.get(resource))
    else {
        return Ok(None);
    };
    let name = container.get("name").and_then(Value::as_str).unwrap_or("?");
    quantity_value(raw, Unit::of_resource(resource))
        .map(Some)
        .map_err(|source| ResourceError {
            field: format!("container `{name}` resources.{section}.{resource}"),
            source,
        })
}

fn container_resources(c: &Value) -> Result<PodResources, ResourceError> {
    let limits_cpu = quantity_at(c, "limits", "cpu")?;
    let limits_memory = quantity_at(c, "limits", "memory")?;
    // The API server defaults a missing request to the limit.
    Ok(PodResources {
        requests_cpu: quantity_at(c, "requests", "cpu")?
            .or(limits_cpu)
            .unwrap_or(0),
        requests_memory: quantity_at(c, "requests", "memory")?
            .or(limits_memory)
            .unwrap_or(0),
        limits_cpu: limits_cpu.unwrap_or(0),
        limits_memory: limits_memory.unwrap_or(0),
    })
}

/// A pod's effective requests and limits as ResourceQuota counts them: the app containers plus
/// native sidecars, or the largest init step if that is bigger, plus the pod overhead.
pub fn pod_resources(spec: &Value) -> Result<PodResources, ResourceError> {
    let mut total = PodResources::default();
    for c in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        total = total.add(container_resources(c)?);
    }
    let mut sidecars = PodResources::default();
    let mut init_peak = PodResources::default();
    for c in spec
        .get("initContainers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let r = container_resources(c)?;
        if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
            sidecars = sidecars.add(r);
        } else {
            init_peak = init_peak.max(sidecars.add(r));
        }
    }
    let mut effective = total.add(sidecars).max(init_peak);
    // Pod-level resources (`spec.resources`, Kubernetes 1.32+) take precedence over the
    // containers' sum for each resource they set, in quota as in scheduling.
    if let Some(pod_level) = spec.get("resources") {
        let pseudo = json!({"name": "pod", "resources": pod_level});
        let set = |section: &str, resource: &str| {
            pod_level
                .get(section)
                .and_then(|s| s.get(resource))
                .is_some()
        };
        let p = container_resources(&pseudo)?;
        if set("requests", "cpu") || set("limits", "cpu") {
            effective.requests_cpu = p.requests_cpu;
        }
        if set("requests", "memory") || set("limits", "memory") {
            effective.requests_memory = p.requests_memory;
        }
        if set("limits", "cpu") {
            effective.limits_cpu = p.limits_cpu;
        }
        if set("limits", "memory") {
            effective.limits_memory = p.limits_memory;
        }
    }
    if let Some(overhead) = spec.get("overhead") {
        let pseudo =
            json!({"name": "overhead", "resources": {"requests": overhead, "limits": overhead}});
        effective = effective.add(container_resources(&pseudo)?);
    }
    Ok(effective)
}
