//! Tenantry's provisioning controller: turns the tenant directory into the cluster objects
//! tenants need — namespaces with their labels and Pod Security level, NetworkPolicies isolating
//! tenants, RoleBindings by member role, tier PriorityClasses and LimitRange defaults.
//!
//! [`desired::desired`] is the heart of it: a pure function from a directory snapshot (and the
//! self-service namespaces observed in the cluster) to every object Tenantry owns, table-tested
//! like the webhook's translation. Applying it to a cluster comes next.

pub mod desired;
