//! The `Tenant` CRD shipped in `deploy/base/crd-tenants.yaml` is exactly what the controller's
//! types generate. `TENANTRY_BLESS=1 cargo test -p tenantry-controller --test crd` rewrites it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use kube::CustomResourceExt;
use serde_json::Value;
use tenantry_controller::mirror::Tenant;
use tenantry_tests::repo_root;

const HEADER: &str = "# The `Tenant` custom resource behind `kubectl get tenants`: a read-only mirror of the tenant\n\
# directory written by tenantry-controller. Generated from controller/src/mirror.rs; rewrite with\n\
#   TENANTRY_BLESS=1 cargo test -p tenantry-controller --test crd\n";

#[test]
fn the_shipped_crd_is_what_the_types_generate() {
    let path = repo_root().join("deploy/base/crd-tenants.yaml");
    let generated = serde_json::to_value(Tenant::crd()).unwrap();
    if std::env::var_os("TENANTRY_BLESS").is_some() {
        let yaml = serde_saphyr::to_string(&generated).unwrap();
        std::fs::write(&path, format!("{HEADER}{yaml}")).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let shipped: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(
        shipped,
        generated,
        "{} is stale: rewrite it with TENANTRY_BLESS=1 cargo test -p tenantry-controller --test crd",
        path.display()
    );
    assert_eq!(
        generated["spec"]["scope"], "Cluster",
        "tenants are cluster-scoped"
    );
    assert!(
        generated["spec"]["versions"][0]["subresources"]["status"].is_object(),
        "usage is written through the status subresource"
    );
}
