//! `cfg(can_redirect)` when the tests can build a network namespace and NAT rules (running as
//! root with `ip` and `iptables` on `PATH`; scripts/test installs them), so that without them the
//! `init-redirect` test is reported as *ignored* (skipped), never as a pass that checked nothing.
//! Found at build time; after installing the tools, `touch enforcer/build.rs`.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(can_redirect)");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-changed=build.rs");
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
    };
    // Root is whoever owns our own process's /proc entry; no libc call needed.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root && on_path("ip") && on_path("iptables") {
        println!("cargo::rustc-cfg=can_redirect");
    }
}
