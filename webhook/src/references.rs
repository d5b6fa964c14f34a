//! Cross-tenant references: the tenants an object points at without writing into them.
//!
//! A NetworkPolicy admitting another tenant's namespaces, a RoleBinding granting a foreign
//! service account, an ExternalName Service aliasing another tenant's Service, an Ingress or
//! HTTPRoute claiming a host another tenant serves, a Gateway route attaching across namespaces, or
//! an EndpointSlice pointing at another tenant's pods: each leaks isolation from the inside.

use std::sync::Arc;

use serde_json::Value;
use tenantry_tenancy::Directory;

use crate::usage::{UsageView, ingress_hosts};

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
    directory: &'a Directory,
    refs: References,
}

impl Collector<'_> {
    fn tenant(&mut self, id: &str) {
        if let Some(t) = self.directory.tenant(id) {
            self.refs.tenants.push(t.id.clone());
        }
    }

    fn namespace(&mut self, namespace: &str) {
        if let Some(owner) = self.directory.namespace_owner(namespace) {
            self.refs.tenants.push(owner.tenant.id.clone());
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

    fn host(&mut self, usage: &dyn UsageView, host: &str) {
        if let Some(holder) = usage.host_holder(host) {
            self.refs.tenants.push(holder);
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
    directory: &Directory,
    usage: &dyn UsageView,
    group: &str,
    kind: &str,
    namespace: &str,
    object: &Value,
) -> References {
    let mut c = Collector {
        directory,
        refs: References::default(),
    };
    let spec = object.get("spec").unwrap_or(&Value::Null);
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
                c.host(usage, host);
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
            let listener_hosts = items(spec.get("listeners")).filter_map(|l| l.get("hostname"));
            for host in items(spec.get("hostnames"))
                .chain(listener_hosts)
                .filter_map(Value::as_str)
            {
                c.host(usage, host);
            }
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for ep in items(object.get("endpoints")) {
                if let Some(target) = ep.get("targetRef") {
                    c.namespace_field(target, namespace);
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
