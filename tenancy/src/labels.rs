//! The labels Tenantry stamps on tenant objects: the webhook sets and checks them, the controller
//! provisions namespaces with them, the usage ledger attributes self-service namespaces by them.

pub const LABEL_TENANT: &str = "tenantry.dev/tenant";
pub const LABEL_TIER: &str = "tenantry.dev/tier";
pub const LABEL_TEAM: &str = "tenantry.dev/team";
pub const LABEL_CLIENT: &str = "tenantry.dev/client";
/// The labels Tenantry stamps; the directory alone decides their values.
pub const STAMPED_LABELS: [&str; 4] = [LABEL_TENANT, LABEL_TIER, LABEL_TEAM, LABEL_CLIENT];
