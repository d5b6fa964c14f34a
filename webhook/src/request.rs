//! What a request does, before any policy looks at it: a write of an object, a write through a
//! subresource of a parent object, or a review that persists nothing.
//!
//! The API server sends a subresource's own body (a TokenRequest for `serviceaccounts/token`, an
//! Eviction for `pods/eviction`, a Scale for `deployments/scale`, options for `pods/exec`) under
//! the parent's resource, name and namespace. Comparing that body's labels with the parent's
//! tenancy refused every TokenRequest the kubelet makes; so each subresource is decided on the
//! parent's namespace and on what the subresource changes.

use crate::admission::AdmissionRequest;

/// `(group, resource)` of the review APIs. They answer a question (may I? who is this token?)
/// and persist nothing; RBAC already decides who may ask.
pub const REVIEW_RESOURCES: &[(&str, &str)] = &[
    ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "selfsubjectrulesreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"),
    ("authorization.k8s.io", "localsubjectaccessreviews"),
    ("authentication.k8s.io", "tokenreviews"),
    ("authentication.k8s.io", "selfsubjectreviews"),
];

/// Subresources whose body is the parent object itself, changed in one part.
pub const PARENT_BODY_SUBRESOURCES: &[&str] =
    &["status", "ephemeralcontainers", "resize", "finalize"];

/// Whether the request is a review that persists nothing.
pub fn is_review(req: &AdmissionRequest) -> bool {
    REVIEW_RESOURCES
        .iter()
        .any(|(g, r)| req.resource.group == *g && req.resource.resource == *r)
}

/// Whether the request's body is the parent object (an UPDATE through status, resize, …).
pub fn body_is_parent(req: &AdmissionRequest) -> bool {
    PARENT_BODY_SUBRESOURCES.contains(&req.subresource())
}

/// Every subresource Tenantry intercepts, and how it is decided. All are decided on the parent's
/// namespace (so `cross-tenant-write` and `suspended-tenant` apply to each); the second column
/// says what else is looked at.
pub const SUBRESOURCES: &[(&str, &str)] = &[
    (
        "pods/ephemeralcontainers",
        "the added containers, by the pod security rules; never targeting the enforcer",
    ),
    ("pods/exec", "the parent's tenant (CONNECT)"),
    ("pods/attach", "the parent's tenant (CONNECT)"),
    ("pods/portforward", "the parent's tenant (CONNECT)"),
    ("pods/proxy", "the parent's tenant (CONNECT)"),
    ("pods/eviction", "the parent's tenant"),
    ("pods/binding", "only cluster components bind (pod-binding)"),
    ("pods/resize", "what the resize adds to the tenant's quota"),
    ("services/proxy", "the parent's tenant (CONNECT)"),
    (
        "services/status",
        "only cluster components publish load-balancer addresses",
    ),
    (
        "nodes/proxy",
        "cluster-scoped: no tenant member may reach a node's kubelet",
    ),
    (
        "namespaces/status",
        "the namespace's labels must not change",
    ),
    (
        "namespaces/finalize",
        "the namespace's labels must not change",
    ),
    (
        "serviceaccounts/token",
        "the parent's tenant; the kubelet issues tokens for every pod",
    ),
    ("*/scale", "the parent's tenant"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decided_subresource_is_intercepted_and_nothing_else() {
        let decided: Vec<&str> = SUBRESOURCES.iter().map(|(s, _)| *s).collect();
        assert_eq!(decided, crate::contract::INTERCEPTED_SUBRESOURCES);
        for sub in PARENT_BODY_SUBRESOURCES {
            assert!(
                decided.iter().any(|d| d.ends_with(&format!("/{sub}"))),
                "`{sub}` is decided but never intercepted"
            );
        }
    }
}
