//! Compile-time switches for tests that need something outside Rust, so that without it they
//! are reported as *ignored* (skipped), never as a pass that checked nothing:
//! - `cfg(e2e)` when `TENANTRY_E2E_KUBECONFIG` is set: the real-cluster suite runs.
//! - `cfg(has_kubectl)` when `kubectl` is on `PATH`: every kustomization is also rendered by the
//!   real `kubectl kustomize` and compared with the tests' own build (deploy_manifests.rs).
//! - `cfg(has_promtool)` when Prometheus's `promtool` is on `PATH`: the alert rules and every
//!   dashboard query are parsed by it (observability.rs). Debian: `apt-get install prometheus`.
//! - `cfg(has_buildah)` when running as root with `buildah` on `PATH` (scripts/test installs it):
//!   the images are built and run for real (images.rs); `cfg(is_root)` alone gates the network
//!   namespace test of the enforcer image's redirect rules.
//!
//! Tools are found at build time; after installing one, `touch tests/build.rs` (or change `PATH`).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(e2e)");
    println!("cargo::rustc-check-cfg=cfg(has_kubectl)");
    println!("cargo::rustc-check-cfg=cfg(has_promtool)");
    println!("cargo::rustc-check-cfg=cfg(has_buildah)");
    println!("cargo::rustc-check-cfg=cfg(is_root)");
    println!("cargo::rerun-if-env-changed=TENANTRY_E2E_KUBECONFIG");
    println!("cargo::rerun-if-env-changed=PATH");
    if std::env::var_os("TENANTRY_E2E_KUBECONFIG").is_some() {
        println!("cargo::rustc-cfg=e2e");
    }
    // Root is whoever owns our own process's /proc entry; no libc call needed.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        println!("cargo::rustc-cfg=is_root");
    }
    let tools = [
        ("kubectl", "has_kubectl", true),
        ("promtool", "has_promtool", true),
        ("buildah", "has_buildah", root),
    ];
    for (tool, cfg, usable) in tools {
        let on_path = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        if on_path && usable {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
