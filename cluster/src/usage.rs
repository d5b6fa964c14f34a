//! What tenants use now, and what one write would add.
//!
//! Usage is kept as per-tenant counters and sums in ResourceQuota names, never as whole objects.
//! The [`crate::ledger::Ledger`] keeps the counters, from a list of existing objects (`--state`,
//! `tenantry review`) or from cluster watches.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use tenantry_tenancy::quantity::Unit;

use crate::json::At;
use crate::resources::{self, ResourceError};

/// The quota dimensions a single object can add to; `count` is its `count/<resource>` key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Amounts {
    pub namespaces: i64,
    pub pods: i64,
    pub services: i64,
    pub persistentvolumeclaims: i64,
    pub requests_cpu: i64,
    pub requests_memory: i64,
    pub requests_storage: i64,
    pub limits_cpu: i64,
    pub limits_memory: i64,
    pub count: i64,
}

impl Amounts {
    /// What `self` has beyond `old`, field by field (never negative): the usage an UPDATE adds.
    pub fn growth_since(&self, old: &Amounts) -> Amounts {
        let g = |new: i64, old: i64| new.saturating_sub(old).max(0);
        Amounts {
            namespaces: g(self.namespaces, old.namespaces),
            pods: g(self.pods, old.pods),
            services: g(self.services, old.services),
            persistentvolumeclaims: g(self.persistentvolumeclaims, old.persistentvolumeclaims),
            requests_cpu: g(self.requests_cpu, old.requests_cpu),
            requests_memory: g(self.requests_memory, old.requests_memory),
            requests_storage: g(self.requests_storage, old.requests_storage),
            limits_cpu: g(self.limits_cpu, old.limits_cpu),
            limits_memory: g(self.limits_memory, old.limits_memory),
            count: g(self.count, old.count),
        }
    }

    pub fn is_zero(&self) -> bool {
        self.fields().iter().all(|(_, v)| *v == 0)
    }

    /// `(ResourceQuota name, value)` pairs, with `count` under the name Cedar sees.
    pub fn fields(&self) -> [(&'static str, i64); 10] {
        [
            ("namespaces", self.namespaces),
            ("pods", self.pods),
            ("services", self.services),
            ("persistentvolumeclaims", self.persistentvolumeclaims),
            ("requests.cpu", self.requests_cpu),
            ("requests.memory", self.requests_memory),
            ("requests.storage", self.requests_storage),
            ("limits.cpu", self.limits_cpu),
            ("limits.memory", self.limits_memory),
            ("count", self.count),
        ]
    }
}

/// The `count/<resource>[.<group>]` quota name of a resource.
pub fn count_key(group: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("count/{resource}")
    } else {
        format!("count/{resource}.{group}")
    }
}

/// What creating `object` (of `group`/`resource`) adds to its tenant's usage.
pub fn amounts_of(group: &str, resource: &str, object: &Value) -> Result<Amounts, ResourceError> {
    let mut a = Amounts {
        count: 1,
        ..Amounts::default()
    };
    match (group, resource) {
        ("", "namespaces") => a.namespaces = 1,
        ("", "services") => a.services = 1,
        ("", "persistentvolumeclaims") => {
            a.persistentvolumeclaims = 1;
            if let Some(raw) = object.at("/spec/resources/requests/storage") {
                a.requests_storage =
                    resources::quantity_value(raw, Unit::Whole).map_err(|source| {
                        ResourceError {
                            field: "spec.resources.requests.storage".into(),
                            source,
                        }
                    })?;
            }
        }
        ("", "pods") => {
            let terminal = matches!(
                object.at("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            if !terminal {
                a.pods = 1;
                let r = resources::pod_resources(object.get("spec").unwrap_or(&Value::Null))?;
                a.requests_cpu = r.requests_cpu;
                a.requests_memory = r.requests_memory;
                a.limits_cpu = r.limits_cpu;
                a.limits_memory = r.limits_memory;
            }
        }
        _ => {}
    }
    Ok(a)
}

/// A PersistentVolume as far as claims are concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeClaim {
    /// `spec.claimRef`: the claim it is bound or reserved to.
    pub claim_namespace: Option<Arc<str>>,
    pub claim_name: Option<String>,
    /// Its `tenantry.dev/tenant` label: reserved for that tenant by the platform.
    pub tenant_label: Option<Arc<str>>,
}

/// What Tenantry knows of the cluster, as decisions need it: usage, the hosts objects serve, pod
/// addresses, volumes' claims and namespaces' tenant labels. All in memory.
pub trait UsageView: Send + Sync {
    /// The tenant's current total for a ResourceQuota name (`pods`, `requests.cpu`,
    /// `count/deployments.apps`, …) over `namespaces` (all of its namespaces), plus what its
    /// admitted creates have reserved.
    fn used(&self, tenant: &str, namespaces: &[&str], resource: &str) -> i64;
    /// Namespaces of the objects that serve `host` (Ingresses, Gateways, Gateway API routes),
    /// exactly or through a wildcard either way.
    fn host_namespaces(&self, host: &str) -> Vec<Arc<str>>;
    /// The `tenantry.dev/tenant` label of a Namespace, as observed.
    fn namespace_label(&self, namespace: &str) -> Option<Arc<str>>;
    /// Namespaces observed with `tenant`'s label.
    fn labelled_namespaces(&self, tenant: &str) -> Vec<Arc<str>>;
    /// The namespace of the pod holding `ip`.
    fn pod_ip_namespace(&self, ip: IpAddr) -> Option<Arc<str>>;
    /// A PersistentVolume's claim and label.
    fn volume(&self, name: &str) -> Option<VolumeClaim>;
}

/// No objects at all: every tenant uses nothing.
#[derive(Debug, Default)]
pub struct NoUsage;

impl UsageView for NoUsage {
    fn used(&self, _: &str, _: &[&str], _: &str) -> i64 {
        0
    }
    fn host_namespaces(&self, _: &str) -> Vec<Arc<str>> {
        Vec::new()
    }
    fn namespace_label(&self, _: &str) -> Option<Arc<str>> {
        None
    }
    fn labelled_namespaces(&self, _: &str) -> Vec<Arc<str>> {
        Vec::new()
    }
    fn pod_ip_namespace(&self, _: IpAddr) -> Option<Arc<str>> {
        None
    }
    fn volume(&self, _: &str) -> Option<VolumeClaim> {
        None
    }
}

/// Who an object is: its API group, plural resource, namespace (a Namespace's own name) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    pub kind: &'a str,
    pub group: String,
    pub resource: String,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> ObjectRef<'a> {
    pub fn of(object: &'a Value) -> ObjectRef<'a> {
        let text = |ptr: &str| object.at(ptr).and_then(Value::as_str).unwrap_or("");
        let kind = text("/kind");
        let name = text("/metadata/name");
        let (group, resource) = resource_of(text("/apiVersion"), kind);
        let namespace = if kind == "Namespace" {
            name
        } else {
            text("/metadata/namespace")
        };
        ObjectRef {
            kind,
            group,
            resource,
            namespace,
            name,
        }
    }

    /// The key it is tracked under: `resource/namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.resource, self.namespace, self.name)
    }
}

/// Whether `host` is covered by a host in `held` (exactly, or through a `*.` wildcard either way).
pub fn host_covered<'a, T>(held: &'a HashMap<String, T>, host: &str) -> Option<&'a T> {
    if let Some(t) = held.get(host) {
        return Some(t);
    }
    // `*.example.com` held by one tenant covers `shop.example.com`, and the reverse.
    let parent = host.split_once('.').map(|(_, p)| format!("*.{p}"));
    if let Some(t) = parent.and_then(|p| held.get(&p)) {
        return Some(t);
    }
    let suffix = host.strip_prefix('*')?;
    held.iter()
        .find(|(h, _)| h.ends_with(suffix) && !h[..h.len() - suffix.len()].contains('.'))
        .map(|(_, t)| t)
}

/// Every object of a multi-document YAML (or JSON) file of existing objects. Such files come
/// from `kubectl get -o yaml` of whole clusters, so the parser's default budget (1,024 documents,
/// 250,000 nodes) is raised to fit them; depth and alias limits stay.
pub fn parse_objects(text: &str) -> Result<Vec<Value>, String> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_events = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    let docs: Vec<Value> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Calls `f` with each object of a multi-document YAML file of existing objects, one document at
/// a time, so a dump of a whole cluster never sits in memory at once. `kind: List` documents
/// (what `kubectl get -o yaml` prints) yield their items.
pub fn for_each_object(
    text: &str,
    mut f: impl FnMut(Value) -> Result<(), String>,
) -> Result<usize, String> {
    let mut count = 0;
    let mut doc = String::new();
    let mut line_no = 0usize;
    let mut doc_start = 1usize;
    let mut flush = |doc: &mut String, start: usize, count: &mut usize| -> Result<(), String> {
        if doc.trim().is_empty() {
            doc.clear();
            return Ok(());
        }
        let parsed =
            parse_objects(doc).map_err(|e| format!("document starting at line {start}: {e}"))?;
        doc.clear();
        for value in parsed {
            match value.get("kind").and_then(Value::as_str) {
                Some("List") => {
                    for item in value
                        .get("items")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        *count += 1;
                        f(item.clone())?;
                    }
                }
                _ => {
                    *count += 1;
                    f(value)?;
                }
            }
        }
        Ok(())
    };
    for line in text.split_inclusive('\n') {
        line_no += 1;
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") {
            flush(&mut doc, doc_start, &mut count)?;
            doc_start = line_no;
            doc.push_str(&trimmed[3..]);
            doc.push('\n');
        } else {
            doc.push_str(line);
        }
    }
    flush(&mut doc, doc_start, &mut count)?;
    Ok(count)
}

/// The hosts an object serves: an Ingress's rules and TLS hosts, a Gateway's listener hostnames,
/// a Gateway API route's `hostnames`. Other objects serve none.
pub fn served_hosts<'a>(group: &str, kind: &str, object: &'a Value) -> Vec<&'a str> {
    let listed = |ptr: &str| {
        object
            .at(ptr)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    };
    let mut hosts: Vec<&str> = match (group, kind) {
        ("networking.k8s.io", "Ingress") => return ingress_hosts(object),
        ("gateway.networking.k8s.io", "Gateway") => listed("/spec/listeners")
            .filter_map(|l| l.get("hostname").and_then(Value::as_str))
            .collect(),
        ("gateway.networking.k8s.io", k) if k.ends_with("Route") => listed("/spec/hostnames")
            .filter_map(Value::as_str)
            .collect(),
        _ => Vec::new(),
    };
    hosts.retain(|h| !h.is_empty());
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// A running pod's addresses (`status.podIPs`, or `status.podIP` from older kubelets). Pods on
/// the host network have the node's address, which is not theirs to claim.
pub fn pod_ips(pod: &Value) -> Vec<IpAddr> {
    if pod.at("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = pod
        .at("/status/podIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("ip").and_then(Value::as_str))
        .chain(pod.at("/status/podIP").and_then(Value::as_str))
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    ips
}

/// The hosts an Ingress serves (rules and TLS).
pub fn ingress_hosts(object: &Value) -> Vec<&str> {
    let rules = object
        .at("/spec/rules")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let tls = object
        .at("/spec/tls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|t| {
            t.get("hosts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        });
    let mut hosts: Vec<&str> = rules
        .filter_map(|r| r.get("host"))
        .chain(tls)
        .filter_map(Value::as_str)
        .filter(|h| !h.is_empty())
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// The API group and plural resource of a kind, as the API server would name them in a review.
pub fn resource_of(api_version: &str, kind: &str) -> (String, String) {
    let group = api_version
        .rsplit_once('/')
        .map_or("", |(g, _)| g)
        .to_string();
    let plural = match kind {
        "Endpoints" => "endpoints".to_string(),
        "Ingress" => "ingresses".to_string(),
        "NetworkPolicy" => "networkpolicies".to_string(),
        "PodSecurityPolicy" => "podsecuritypolicies".to_string(),
        "ReferenceGrant" => "referencegrants".to_string(),
        "Gateway" => "gateways".to_string(),
        k if k.ends_with("Class") => format!("{}es", k.to_ascii_lowercase()),
        k if k.ends_with('s') || k.ends_with('x') => format!("{}es", k.to_ascii_lowercase()),
        k if k.ends_with('y') && !k.ends_with("ay") && !k.ends_with("ey") => {
            format!("{}ies", &k[..k.len() - 1].to_ascii_lowercase())
        }
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    (group, plural)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plural_names_match_the_api_server() {
        for (api, kind, group, plural) in [
            ("v1", "Pod", "", "pods"),
            ("apps/v1", "Deployment", "apps", "deployments"),
            (
                "networking.k8s.io/v1",
                "NetworkPolicy",
                "networking.k8s.io",
                "networkpolicies",
            ),
            (
                "networking.k8s.io/v1",
                "Ingress",
                "networking.k8s.io",
                "ingresses",
            ),
            ("v1", "Endpoints", "", "endpoints"),
            (
                "discovery.k8s.io/v1",
                "EndpointSlice",
                "discovery.k8s.io",
                "endpointslices",
            ),
            (
                "scheduling.k8s.io/v1",
                "PriorityClass",
                "scheduling.k8s.io",
                "priorityclasses",
            ),
            ("v1", "PersistentVolumeClaim", "", "persistentvolumeclaims"),
            (
                "rbac.authorization.k8s.io/v1",
                "RoleBinding",
                "rbac.authorization.k8s.io",
                "rolebindings",
            ),
            (
                "gateway.networking.k8s.io/v1",
                "HTTPRoute",
                "gateway.networking.k8s.io",
                "httproutes",
            ),
            ("v1", "Service", "", "services"),
            ("batch/v1", "CronJob", "batch", "cronjobs"),
        ] {
            assert_eq!(
                resource_of(api, kind),
                (group.to_string(), plural.to_string()),
                "{kind}"
            );
        }
    }

    #[test]
    fn objects_stream_one_document_at_a_time_and_lists_unfold() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n--- {apiVersion: v1, kind: Pod, metadata: {name: b}}\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Secret, metadata: {name: c}}\n- {apiVersion: v1, kind: Secret, metadata: {name: d}}\n";
        let mut names = Vec::new();
        let n = for_each_object(text, |o| {
            names.push(o["metadata"]["name"].as_str().unwrap().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 4);
        assert_eq!(names, ["a", "b", "c", "d"]);
        let err = for_each_object("a: 1\n---\nb: [\n", |_| Ok(())).unwrap_err();
        assert!(err.starts_with("document starting at line 2"), "{err}");
    }

    #[test]
    fn terminal_pods_take_no_quota() {
        let done = json!({"spec": {"containers": [{"name": "a", "resources": {"requests": {"cpu": "1"}}}]},
                          "status": {"phase": "Succeeded"}});
        let a = amounts_of("", "pods", &done).unwrap();
        assert_eq!((a.pods, a.requests_cpu, a.count), (0, 0, 1));
    }

    #[test]
    fn claims_count_their_storage() {
        let pvc = json!({"spec": {"resources": {"requests": {"storage": "10Gi"}}}});
        let a = amounts_of("", "persistentvolumeclaims", &pvc).unwrap();
        assert_eq!(
            (a.persistentvolumeclaims, a.requests_storage),
            (1, 10 << 30)
        );
    }
}
