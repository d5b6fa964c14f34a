//! Cross-tenant references: the tenants an object points at without writing into them.
//!
//! A NetworkPolicy admitting another tenant's namespaces (or, by `ipBlock`, the cluster's pod
//! network), a RoleBinding granting a foreign service account, an ExternalName Service aliasing
//! another tenant's Service, an Ingress, Gateway or route claiming a host another tenant serves
//! (or every host), a Gateway route attaching across namespaces, an EndpointSlice whose addresses
//! are another tenant's pods, a pod (anti-)affinity reaching into other namespaces, or a claim
//! naming another tenant's volume: each leaks isolation from the inside.

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;
use tenantry_cluster::json::At;

use crate::boundary::Cidr;
use crate::translate::Inputs;
use crate::usage::{ingress_hosts, served_hosts};

/// Label the API server sets on every namespace; tenants cannot forge it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
pub const TENANT_LABEL: &str = "tenantry.dev/tenant";

/// Groups that contain identities of every tenant.
const EVERYONE_GROUPS: &[&str] = &[
    "system:authenticated",
    "system:unauthenticated",
    "system:serviceaccounts",
];

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Tenants referenced, sorted, without duplicates (the owner may be among them).
    pub tenants: Vec<Arc<str>>,
    /// Something that matches every tenant (an open selector, a binding to everyone).
    pub any_tenant: bool,
}

struct Collector<'a> {
    inputs: &'a Inputs<'a>,
    refs: References,
}

impl Collector<'_> {
    fn tenant(&mut self, id: &str) {
        if let Some(t) = self.inputs.directory.tenant(id) {
            self.refs.tenants.push(t.id.clone());
        }
    }

    fn namespace(&mut self, namespace: &str) {
        if let Some(owner) = self.inputs.owner(namespace) {
            self.refs.tenants.push(owner.tenant.id.clone());
        }
    }

    /// An address another pod may hold: attributed to that pod's tenant; an address of the
    /// cluster's pod or service networks that no tracked pod holds could be anyone's.
    fn address(&mut self, ip: &str) {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return;
        };
        match self.inputs.usage.pod_ip_namespace(ip) {
            Some(ns) => self.namespace(&ns),
            None if self.inputs.boundary.in_cluster(ip) => self.refs.any_tenant = true,
            None => {}
        }
    }

    /// A NetworkPolicy `ipBlock`: one covering the cluster's own networks reaches every tenant's
    /// pods, whatever its `except` list leaves out.
    fn ip_block(&mut self, block: &Value) {
        let Some(cidr) = block.get("cidr").and_then(Value::as_str) else {
            return;
        };
        match cidr.parse::<Cidr>() {
            Ok(c) if self.inputs.boundary.overlaps_cluster(&c) => self.refs.any_tenant = true,
            Ok(_) => {}
            // The API server validates CIDRs; one we cannot read is not proof of harmlessness.
            Err(_) => self.refs.any_tenant = true,
        }
    }

    /// Pod (anti-)affinity terms select pods in other namespaces by `namespaces` or
    /// `namespaceSelector` (an empty selector is every namespace).
    fn affinity(&mut self, spec: &Value, own_namespace: &str) {
        for kind in ["podAffinity", "podAntiAffinity"] {
            let Some(a) = spec.at(&format!("/affinity/{kind}")) else {
                continue;
            };
            let required = items(a.get("requiredDuringSchedulingIgnoredDuringExecution"));
            let preferred = items(a.get("preferredDuringSchedulingIgnoredDuringExecution"))
                .filter_map(|w| w.get("podAffinityTerm"));
            for term in required.chain(preferred) {
                for ns in items(term.get("namespaces")).filter_map(Value::as_str) {
                    if ns != own_namespace {
                        self.namespace(ns);
                    }
                }
                if let Some(selector) = term.get("namespaceSelector") {
                    self.namespace_selector(selector);
                }
            }
        }
    }

    fn host(&mut self, host: &str) {
        for ns in self.inputs.usage.host_namespaces(host) {
            self.namespace(&ns);
        }
    }

    fn namespace_field(&mut self, item: &Value, own_namespace: &str) {
        if let Some(ns) = item.get("namespace").and_then(Value::as_str)
            && ns != own_namespace
        {
            self.namespace(ns);
        }
    }

    fn nested_namespaces(&mut self, value: &Value, own_namespace: &str) {
        match value {
            Value::Object(map) => {
                self.namespace_field(value, own_namespace);
                for v in map.values() {
                    self.nested_namespaces(v, own_namespace);
                }
            }
            Value::Array(list) => {
                for v in list {
                    self.nested_namespaces(v, own_namespace);
                }
            }
            _ => {}
        }
    }

    /// A label selector over namespaces: it must pin namespaces or tenants by a label only the
    /// API server or Tenantry sets, or else it can match anyone's namespace.
    fn namespace_selector(&mut self, selector: &Value) {
        let mut pinned = false;
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (key, value) in labels {
                let Some(value) = value.as_str() else {
                    continue;
                };
                match key.as_str() {
                    NAMESPACE_NAME_LABEL => {
                        pinned = true;
                        self.namespace(value);
                    }
                    TENANT_LABEL => {
                        pinned = true;
                        self.tenant(value);
                    }
                    _ => {}
                }
            }
        }
        for expr in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
            let op = expr.get("operator").and_then(Value::as_str).unwrap_or("");
            if op != "In" || !(key == NAMESPACE_NAME_LABEL || key == TENANT_LABEL) {
                continue;
            }
            pinned = true;
            for v in expr
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(v) = v.as_str() else { continue };
                if key == NAMESPACE_NAME_LABEL {
                    self.namespace(v)
                } else {
                    self.tenant(v)
                }
            }
        }
        if !pinned {
            self.refs.any_tenant = true;
        }
    }

    fn subject(&mut self, subject: &Value, own_namespace: &str) {
        let name = subject.get("name").and_then(Value::as_str).unwrap_or("");
        match subject.get("kind").and_then(Value::as_str).unwrap_or("") {
            "ServiceAccount" => {
                let ns = subject
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(own_namespace);
                self.namespace(ns);
            }
            "User" => {
                if let Some(("serviceaccount", rest)) =
                    name.strip_prefix("system:").and_then(|r| r.split_once(':'))
                    && let Some((ns, _)) = rest.split_once(':')
                {
                    self.namespace(ns);
                }
                let tenants: Vec<Arc<str>> = self
                    .inputs
                    .directory
                    .user_memberships(name)
                    .iter()
                    .map(|m| m.tenant.clone())
                    .collect();
                self.refs.tenants.extend(tenants);
            }
            "Group" => {
                if EVERYONE_GROUPS.contains(&name) {
                    self.refs.any_tenant = true;
                } else if let Some(ns) = name.strip_prefix("system:serviceaccounts:") {
                    self.namespace(ns);
                }
                let tenants: Vec<Arc<str>> = self
                    .inputs
                    .directory
                    .group_memberships(name)
                    .iter()
                    .map(|m| m.tenant.clone())
                    .collect();
                self.refs.tenants.extend(tenants);
            }
            _ => {}
        }
    }
}

/// The references of `object` (of API `group` and `kind`) living in `namespace`.
pub fn references(
    inputs: &Inputs<'_>,
    group: &str,
    kind: &str,
    namespace: &str,
    object: &Value,
) -> References {
    let mut c = Collector {
        inputs,
        refs: References::default(),
    };
    let spec = object.get("spec").unwrap_or(&Value::Null);
    if let Some(pod_spec) = crate::pod::pod_spec(kind, object) {
        c.affinity(pod_spec, namespace);
    }
    match (group, kind) {
        ("networking.k8s.io", "NetworkPolicy") => {
            // An ingress rule with no `from` admits every source, every tenant's pods included.
            if items(spec.get("ingress")).any(|r| items(r.get("from")).next().is_none()) {
                c.refs.any_tenant = true;
            }
            let ingress = items(spec.get("ingress")).flat_map(|r| items(r.get("from")));
            let egress = items(spec.get("egress")).flat_map(|r| items(r.get("to")));
            for peer in ingress.chain(egress) {
                if let Some(selector) = peer.get("namespaceSelector") {
                    c.namespace_selector(selector);
                }
                if let Some(block) = peer.get("ipBlock") {
                    c.ip_block(block);
                }
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            for subject in items(object.get("subjects")) {
                c.subject(subject, namespace);
            }
        }
        ("", "Service") => {
            if spec.get("type").and_then(Value::as_str) == Some("ExternalName")
                && let Some(ns) = spec
                    .get("externalName")
                    .and_then(Value::as_str)
                    .and_then(service_dns_namespace)
            {
                c.namespace(ns);
            }
        }
        ("networking.k8s.io", "Ingress") => {
            for host in ingress_hosts(object) {
                c.host(host);
            }
            // A rule without a host, or a default backend, takes every host no other rule
            // names: on a shared ingress controller, other tenants' traffic included.
            let hostless_rule = items(spec.get("rules")).any(|r| {
                r.get("host")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
            });
            if hostless_rule || spec.get("defaultBackend").is_some() {
                c.refs.any_tenant = true;
            }
        }

        ("gateway.networking.k8s.io", "ReferenceGrant") => {
            for from in items(spec.get("from")) {
                c.namespace_field(from, namespace);
            }
        }
        ("gateway.networking.k8s.io", _) => {
            // Gateway API spells every cross-namespace reference as an object with a
            // `namespace` field (parentRefs, backendRefs, filters' backendRef, listeners'
            // certificateRefs, …), however deeply nested: collect them all.
            c.nested_namespaces(spec, namespace);
            let hosts = served_hosts(group, kind, object);
            for host in &hosts {
                c.host(host);
            }
            // A route with no hostnames takes every host of the Gateway it attaches to; on a
            // Gateway outside the tenant's namespace, that is other tenants' hosts too.
            let foreign_parent = items(spec.get("parentRefs")).any(|p| {
                p.get("namespace")
                    .and_then(Value::as_str)
                    .is_some_and(|ns| ns != namespace)
            });
            if kind.ends_with("Route") && hosts.is_empty() && foreign_parent {
                c.refs.any_tenant = true;
            }
        }
        // The writer controls `targetRef`; the addresses are what traffic goes to (CVE-2021-25740).
        ("discovery.k8s.io", "EndpointSlice") => {
            for ep in items(object.get("endpoints")) {
                if let Some(target) = ep.get("targetRef") {
                    c.namespace_field(target, namespace);
                }
                for addr in items(ep.get("addresses")).filter_map(Value::as_str) {
                    c.address(addr);
                }
            }
        }
        ("", "Endpoints") => {
            for subset in items(object.get("subsets")) {
                let all =
                    items(subset.get("addresses")).chain(items(subset.get("notReadyAddresses")));
                for addr in all {
                    if let Some(target) = addr.get("targetRef") {
                        c.namespace_field(target, namespace);
                    }
                    if let Some(ip) = addr.get("ip").and_then(Value::as_str) {
                        c.address(ip);
                    }
                }
            }
        }
        _ => {}
    }
    let mut refs = c.refs;
    refs.tenants.sort();
    refs.tenants.dedup();
    refs
}

fn items(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

/// The namespace of an in-cluster DNS name: `svc.ns`, `svc.ns.svc[.<domain>]`,
/// `pod.svc.ns.svc[.<domain>]` (StatefulSet pods) and `a-b-c-d.ns.pod[.<domain>]` (pod records).
/// Other names are outside the cluster and reference nobody.
fn service_dns_namespace(name: &str) -> Option<&str> {
    let name = name.trim_end_matches('.');
    let labels: Vec<&str> = name.split('.').collect();
    if let [_, ns] = labels.as_slice() {
        return Some(ns);
    }
    let marker = labels.iter().position(|l| *l == "svc" || *l == "pod")?;
    (marker >= 2).then(|| labels[marker - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_service_names_resolve_to_namespaces() {
        assert_eq!(
            service_dns_namespace("db.globex-prod.svc.cluster.local"),
            Some("globex-prod")
        );
        assert_eq!(
            service_dns_namespace("db.globex-prod.svc"),
            Some("globex-prod")
        );
        assert_eq!(service_dns_namespace("db.globex-prod"), Some("globex-prod"));
        assert_eq!(service_dns_namespace("api.example.com"), None);
        assert_eq!(
            service_dns_namespace("web-0.web.globex-prod.svc.cluster.local"),
            Some("globex-prod")
        );
        assert_eq!(
            service_dns_namespace("10-42-1-7.globex-prod.pod.cluster.local"),
            Some("globex-prod")
        );
        assert_eq!(service_dns_namespace("svc.example.com"), None);
    }
}
