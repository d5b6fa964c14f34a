//! Tenantry's admission webhook: AdmissionReview in, AdmissionReview out.
//!
//! [`decide::mutate`] and [`decide::validate`] are the pure decision over an in-memory tenant
//! snapshot, usage view and policy set. [`translate`] turns a request into Cedar entities and
//! context; [`mutate`] and [`pod`] compute labels, scheduling and the injected enforcer;
//! [`references`] finds what an object points at in other tenants; [`usage`] counts quota;
//! [`review`] replays a manifest through all of it offline, exactly as the API server would.

pub mod admission;
pub mod boundary;
pub mod cluster;
pub mod contract;
pub mod decide;
pub mod embedded;
pub mod facts;
pub mod metrics;
pub mod mutate;
pub mod pod;
pub mod podsecurity;
pub mod references;
pub mod request;
pub mod reservations;
pub mod review;
pub mod server;
pub mod translate;
pub mod view;

pub use admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
pub use boundary::Boundary;
pub use decide::Decision;
pub use pod::InjectionConfig;
pub use tenantry_cluster::UsageView;
pub use tenantry_cluster::{Ledger, ledger, usage};
pub use translate::Inputs;
