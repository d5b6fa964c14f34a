//! Where the tenancy boundary runs: which identities are the cluster's own, which namespaces can
//! never belong to a tenant, which namespace labels drive cluster security, and which addresses
//! are the cluster's pod and service networks.
//!
//! These are operator settings (`tenantry-webhook --help`), read by the translation; the policies
//! then decide with the facts they produce (`principal.cluster_component`, …).

use std::net::IpAddr;

use crate::admission::UserInfo;
use crate::contract;

/// Users the control plane authenticates as when it does not use per-controller service accounts.
const CONTROL_PLANE_USERS: &[&str] = &[
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:apiserver",
];

/// The operator's settings for the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary {
    /// Namespaces whose service accounts are the cluster's own (kube-system's controllers,
    /// Tenantry's controller, a load-balancer controller an operator trusts). They are never tenants.
    pub trusted_namespaces: Vec<String>,
    /// Names (`kube-*`, `*-system`, `default`) that can never become a tenant's namespace.
    pub reserved_namespaces: Vec<String>,
    /// Namespace label and annotation prefixes only the platform may set: they drive cluster
    /// security (`pod-security.kubernetes.io/` makes Pod Security Admission enforce a level).
    pub protected_namespace_prefixes: Vec<String>,
    /// The cluster's pod and service networks: an `ipBlock` or endpoint address inside them
    /// reaches other tenants' pods.
    pub cluster_cidrs: Vec<Cidr>,
}

impl Default for Boundary {
    fn default() -> Self {
        Boundary {
            trusted_namespaces: vec!["kube-system".into(), contract::NAMESPACE.into()],
            reserved_namespaces: vec![
                "kube-*".into(),
                "*-system".into(),
                "default".into(),
                contract::NAMESPACE.into(),
            ],
            protected_namespace_prefixes: vec!["pod-security.kubernetes.io/".into()],
            cluster_cidrs: Vec::new(),
        }
    }
}

impl Boundary {
    /// Whether the identity is one of the cluster's own components: cluster admins
    /// (`system:masters`), nodes, the control plane, and service accounts of trusted namespaces.
    /// These operate tenant objects — delete, finalize, bind, evict, issue tokens — even for
    /// suspended tenants; they are never tenants.
    pub fn is_cluster_component(&self, user: &UserInfo) -> bool {
        let in_group = |g: &str| user.groups.iter().any(|x| x == g);
        if in_group("system:masters") {
            return true;
        }
        // The Node authorizer and NodeRestriction confine each kubelet to its own node's pods.
        if in_group("system:nodes") && user.username.starts_with("system:node:") {
            return true;
        }
        if CONTROL_PLANE_USERS.contains(&user.username.as_str()) {
            return true;
        }
        user.service_account()
            .is_some_and(|(ns, _)| self.trusted_namespaces.iter().any(|t| t == ns))
    }

    /// Whether `namespace` can never be a tenant's, listed in the directory or not.
    pub fn is_reserved(&self, namespace: &str) -> bool {
        self.reserved_namespaces
            .iter()
            .any(|pattern| glob_matches(pattern, namespace))
    }

    /// Whether a namespace label or annotation key is the platform's alone.
    pub fn is_protected_namespace_key(&self, key: &str) -> bool {
        self.protected_namespace_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    /// Whether any address of `block` (minus nothing: excepts carve holes, not guarantees) lies
    /// in the cluster's own networks.
    pub fn overlaps_cluster(&self, block: &Cidr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.overlaps(block))
    }

    /// Whether `ip` is in the cluster's own networks.
    pub fn in_cluster(&self, ip: IpAddr) -> bool {
        self.cluster_cidrs.iter().any(|c| c.contains(ip))
    }
}

/// `kube-*`, `*-system`, or a plain name.
fn glob_matches(pattern: &str, name: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        (Some(suffix), _) => name.ends_with(suffix) && name.len() > suffix.len(),
        (None, Some(prefix)) => name.starts_with(prefix) && name.len() > prefix.len(),
        (None, None) => pattern == name,
    }
}

pub use tenantry_tenancy::cidr::Cidr;

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            username: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::default()
        }
    }

    #[test]
    fn the_clusters_own_identities_are_recognised_and_look_alikes_are_not() {
        let b = Boundary::default();
        for (u, groups) in [
            ("admin", &["system:masters"][..]),
            (
                "system:node:worker-1",
                &["system:nodes", "system:authenticated"],
            ),
            ("system:kube-scheduler", &[]),
            ("system:kube-controller-manager", &[]),
            (
                "system:serviceaccount:kube-system:generic-garbage-collector",
                &["system:serviceaccounts"],
            ),
            (
                "system:serviceaccount:tenantry-system:tenantry-controller",
                &[],
            ),
        ] {
            assert!(b.is_cluster_component(&user(u, groups)), "{u}");
        }
        for (u, groups) in [
            // A user named like a node but not authenticated as one.
            ("system:node:worker-1", &["system:authenticated"][..]),
            ("node-admin", &["system:nodes"]),
            ("system:serviceaccount:kube-systemx:gc", &[]),
            ("system:serviceaccount:acme-dev:kube-system", &[]),
            ("alice", &["kube-system"]),
        ] {
            assert!(!b.is_cluster_component(&user(u, groups)), "{u}");
        }
    }

    #[test]
    fn reserved_names_match_whole_patterns() {
        let b = Boundary::default();
        for ns in ["kube-public", "flux-system", "default", "tenantry-system"] {
            assert!(b.is_reserved(ns), "{ns}");
        }
        for ns in ["acme-dev", "kubeflow", "system", "acme-systems", "defaults"] {
            assert!(!b.is_reserved(ns), "{ns}");
        }
    }

    #[test]
    fn cidrs_contain_and_overlap() {
        let pods: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(pods.contains("10.244.3.7".parse().unwrap()));
        assert!(!pods.contains("10.245.0.1".parse().unwrap()));
        assert!(!pods.contains("::1".parse().unwrap()));
        for other in ["0.0.0.0/0", "10.0.0.0/8", "10.244.9.0/24", "10.244.1.1/32"] {
            assert!(pods.overlaps(&other.parse().unwrap()), "{other}");
        }
        for other in ["192.168.0.0/16", "10.245.0.0/16", "::/0"] {
            assert!(!pods.overlaps(&other.parse().unwrap()), "{other}");
        }
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
    }
}
