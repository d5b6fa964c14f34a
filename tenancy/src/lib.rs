//! Tenantry's domain core, with no servers in it.
//!
//! It owns three things that every enforcement point shares: the tenant model and its checked,
//! indexed snapshot ([`Directory`]); the sources that produce snapshots (a YAML file, or PostgreSQL
//! with LISTEN/NOTIFY) and the [`DirectoryStore`] that serves the current one; and the Cedar
//! [`PolicyEngine`]; and the [`labels`] Tenantry stamps. The webhook, the enforcer and the
//! controller depend on this crate and never on each other.

pub mod cidr;
pub mod config;
pub mod directory;
pub mod embedded;
pub mod labels;
pub mod model;
pub mod policy;
pub mod postgres;
pub mod quantity;
pub mod redis_store;
pub mod source;
pub mod store;

pub use directory::{Directory, DirectoryError, Membership, NamespaceOwner, Tenant, Tier};
pub use model::{NetworkIsolation, PodSecurityLevel, Role, Status, TenantsFile};
pub use policy::{PolicyEngine, PolicyError, SourceFile, Verdict};
pub use postgres::{PostgresError, PostgresSource};
pub use source::{SourceError, TenantSource};
pub use store::{DirectoryStore, PolicyStore};
