//! Compile-time switches for tests that need something outside Rust, so that without it they
//! are reported as *ignored* (skipped), never as a pass that checked nothing:
//! - `cfg(e2e)` when `TENANTRY_E2E_KUBECONFIG` is set: the real-cluster suite runs.
//! - `cfg(has_kubectl)` when `kubectl` is on `PATH`: every kustomization is also rendered by the
//!   real `kubectl kustomize` and compared with the tests' own build (deploy_manifests.rs).
//! - `cfg(has_promtool)` when Prometheus's `promtool` is on `PATH`: the alert rules and every
//!   dashboard query are parsed by it (observability.rs). Debian: `apt-get install prometheus`.
//!
//! Tools are found at build time; after installing one, `touch tests/build.rs` (or change `PATH`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(e2e)");
    println!("cargo::rustc-check-cfg=cfg(has_kubectl)");
    println!("cargo::rustc-check-cfg=cfg(has_promtool)");
    println!("cargo::rerun-if-env-changed=TENANTRY_E2E_KUBECONFIG");
    println!("cargo::rerun-if-env-changed=PATH");
    if std::env::var_os("TENANTRY_E2E_KUBECONFIG").is_some() {
        println!("cargo::rustc-cfg=e2e");
    }
    for (tool, cfg) in [("kubectl", "has_kubectl"), ("promtool", "has_promtool")] {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        if on_path {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
