//! Tenantry's provisioning controller: turns the tenant directory into the cluster objects
//! tenants need — namespaces with their labels and Pod Security level, NetworkPolicies isolating
//! tenants, RoleBindings by member role, tier PriorityClasses and LimitRange defaults.
//!
//! [`desired::desired`] is the heart of it: a pure function from a directory snapshot (and the
//! self-service namespaces observed in the cluster) to every object Tenantry owns, table-tested
//! like the webhook's translation. [`apply`] makes the cluster so with server-side apply under
//! one field manager, pruning only what Tenantry manages; [`run`] is the process: the directory
//! followed from Postgres or a file, one active replica through a Lease, a reconcile on every
//! directory change, on every change to a managed object (drift) and on a resync period.
//! [`lifecycle`] carries out suspension and deletion: workloads scaled to zero and back, a
//! deleted tenant's namespaces deleted once its purge time has passed. [`mirror`] writes the
//! `Tenant` custom resources behind `kubectl get tenants`.

pub mod apply;
pub mod desired;
pub mod lifecycle;
pub mod mirror;
pub mod ratelimit;
pub mod run;
