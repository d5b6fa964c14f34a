//! The decision: (directory, usage, policies, admission request) → admission response.
//!
//! Both functions are total and pure: every failure to understand a request becomes a
//! well-formed denial that echoes the uid and says why; nothing here touches the network. The
//! HTTPS server and `tenantry review` are thin shells around them.

use std::sync::Arc;

use crate::admission::{AdmissionRequest, AdmissionResponse};
use crate::mutate;
use crate::request;
use crate::translate::{self, Inputs, QuotaFacts};
use tenantry_tenancy::quantity::{self, Unit};

/// A response plus what the server logs and counts about it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub response: AdmissionResponse,
    /// Ids of the policies that denied (empty when allowed).
    pub denied_by: Vec<String>,
    /// Ids of the audit-mode policies the request would have been denied by.
    pub audited: Vec<String>,
    /// The tenant owning the object's namespace, if any.
    pub tenant: Option<Arc<str>>,
    /// When mutation changed the object: the parts it writes (labels; in a new pod, scheduling's
    /// spec fields and the container lists) as they are to be stored; the patch in `response`
    /// applies them to the object as sent.
    pub mutated: Option<mutate::Written>,
}

impl Decision {
    fn bare(response: AdmissionResponse, tenant: Option<Arc<str>>) -> Decision {
        Decision {
            response,
            denied_by: Vec::new(),
            audited: Vec::new(),
            tenant,
            mutated: None,
        }
    }
}

fn owner_of(inputs: &Inputs<'_>, req: &AdmissionRequest) -> Option<Arc<str>> {
    inputs.request_owner(req).map(|o| o.tenant.id.clone())
}

/// `POST /mutate`: the patch that stamps labels, applies scheduling and injects the enforcer.
/// Mutation never denies by policy; it refuses only objects it cannot read.
pub fn mutate(inputs: &Inputs<'_>, req: &AdmissionRequest) -> Decision {
    let tenant = owner_of(inputs, req);
    if request::is_review(req) {
        return Decision::bare(AdmissionResponse::allow(&req.uid), tenant);
    }
    match mutate::mutate(inputs, req) {
        Ok(m) => {
            let mut response = AdmissionResponse::allow(&req.uid);
            response.warnings = m
                .warnings
                .iter()
                .map(|w| format!("tenantry: {w}"))
                .collect();
            if let Some(object) = &m.object {
                let patch = mutate::patch(&req.object, object);
                response = response.with_patch(&patch);
            }
            Decision {
                response,
                denied_by: Vec::new(),
                audited: Vec::new(),
                tenant,
                mutated: m.object,
            }
        }
        Err(e) => Decision::bare(
            AdmissionResponse::deny(&req.uid, e.code(), format!("tenantry: {e}")),
            tenant,
        ),
    }
}

/// `POST /validate`: the policies' verdict on the final object.
pub fn validate(inputs: &Inputs<'_>, req: &AdmissionRequest) -> Decision {
    if request::is_review(req) {
        // Reviews persist nothing and cross no boundary; RBAC decides who may ask.
        return Decision::bare(AdmissionResponse::allow(&req.uid), owner_of(inputs, req));
    }
    let translation = match translate::translate(inputs, req) {
        Ok(t) => t,
        Err(e) => {
            let response = AdmissionResponse::deny(&req.uid, e.code(), format!("tenantry: {e}"));
            return Decision::bare(response, owner_of(inputs, req));
        }
    };
    let tenants: Vec<&str> = translation.tenants.iter().map(|t| &**t).collect();
    let verdict = inputs
        .policies
        .authorize(&tenants, &translation.request, &translation.entities);
    let tenant = translation.facts.owner.clone();
    // Audit-mode policies never decide; kubectl shows their warnings whatever the outcome.
    let audit_warnings: Vec<String> = verdict
        .audited
        .iter()
        .map(|(id, message)| format!("tenantry (audit, not enforced): {message} [policy {id}]"))
        .collect();
    let audited: Vec<String> = verdict.audited.iter().map(|(id, _)| id.clone()).collect();
    let with_audit = |mut decision: Decision| {
        decision
            .response
            .warnings
            .extend(audit_warnings.iter().cloned());
        decision.audited = audited.clone();
        decision
    };
    if !verdict.errors.is_empty() {
        // A policy that cannot be evaluated might have been a forbid: refuse rather than guess.
        let message = format!(
            "tenantry: policy evaluation failed, so the request is refused: {}",
            verdict.errors.join("; ")
        );
        return with_audit(Decision::bare(
            AdmissionResponse::deny(&req.uid, 500, message),
            tenant,
        ));
    }
    if verdict.allowed {
        return with_audit(Decision::bare(AdmissionResponse::allow(&req.uid), tenant));
    }
    let mut parts = Vec::new();
    for (id, message) in &verdict.denied_by {
        let detail = inputs
            .policies
            .policy(id)
            .and_then(|p| p.annotations.get("quota"))
            .and_then(|dimension| explain_quota(&translation.quota, dimension));
        match detail {
            Some(d) => parts.push(format!("{message} ({d}) [policy {id}]")),
            None => parts.push(format!("{message} [policy {id}]")),
        }
    }
    if parts.is_empty() {
        parts.push("no policy permits this request".to_string());
    }
    let response =
        AdmissionResponse::deny(&req.uid, 403, format!("tenantry: {}", parts.join("; ")));
    with_audit(Decision {
        response,
        denied_by: verdict.denied_by.into_iter().map(|(id, _)| id).collect(),
        audited: Vec::new(),
        tenant,
        mutated: None,
    })
}

/// "requests.cpu: 1500m used + 1 requested > 2 allowed"
fn explain_quota(q: &QuotaFacts, dimension: &str) -> Option<String> {
    let limit = q.limits.iter().find(|(k, _)| *k == dimension)?.1;
    let used = q
        .usage
        .fields()
        .into_iter()
        .find(|(k, _)| *k == dimension)?
        .1;
    let requested = q
        .requested
        .fields()
        .into_iter()
        .find(|(k, _)| *k == dimension)?
        .1;
    let name = if dimension == "count" {
        q.counted_resource.as_str()
    } else {
        dimension
    };
    let unit = Unit::of_resource(name);
    let f = |v| quantity::format(v, unit);
    Some(format!(
        "{name}: {} used + {} requested > {} allowed",
        f(used),
        f(requested),
        f(limit)
    ))
}
