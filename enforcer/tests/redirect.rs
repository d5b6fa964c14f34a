//! `init-redirect` for real: a network namespace joined to the host by a veth pair, with an
//! application and the enforcer inside. After the rules are applied, a client outside that
//! connects to the application's port is answered by the enforcer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

#[test]
#[cfg_attr(
    not(can_redirect),
    ignore = "needs root, `ip` (iproute2) and `iptables` (scripts/test installs them)"
)]
fn init_redirect_sends_app_port_traffic_through_the_enforcer() {
    // Found at build time (enforcer/build.rs); if they have gone since, fail rather than pass.
    assert!(
        have("iptables") && have("ip"),
        "`ip` and `iptables` were on PATH at build time but cannot be run now"
    );
    let id = std::process::id() % 100_000;
    let subnet = 10 + id % 200;
    let ns = Netns {
        name: format!("tntr{id}"),
        children: vec![],
    };
    let (host_if, ns_if) = (format!("tva{id}"), format!("tvb{id}"));
    let host_ip = format!("10.213.{subnet}.1");
    let pod_ip = format!("10.213.{subnet}.2");
    let mut ns = ns;
    for step in [
        vec!["ip", "netns", "add", &ns.name],
        vec![
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ],
        vec!["ip", "link", "set", &ns_if, "netns", &ns.name],
        vec![
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/24"),
            "dev",
            &host_if,
        ],
        vec!["ip", "link", "set", &host_if, "up"],
        vec![
            "ip",
            "netns",
            "exec",
            &ns.name,
            "ip",
            "addr",
            "add",
            &format!("{pod_ip}/24"),
            "dev",
            &ns_if,
        ],
        vec![
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", &ns_if, "up",
        ],
        vec![
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
        ],
    ] {
        let step: Vec<&str> = step.iter().map(|s| s.as_ref()).collect();
        run(&step).unwrap();
    }

    // The application: the echo server, bound inside the namespace by a thread that joined it.
    let netns_path = format!("/var/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns_path).unwrap();
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        listener.set_nonblocking(true).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tenantry_enforcer::demo::echo_upstream(listener).await;
        });
    });

    // The enforcer inside, as the pod would run it (uid 1337, the excluded one).
    let enforcer = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            BIN,
        ])
        .args([
            "run",
            "--tenant",
            "acme",
            "--tenants",
            "example",
            "--listen",
            "0.0.0.0:15001",
            "--upstream",
            "127.0.0.1:8080",
        ])
        .args(["--admin-listen", "0.0.0.0:15021"])
        .env("TENANTRY_LOG", "warn")
        .spawn()
        .unwrap();
    ns.children.push(enforcer);
    let admin: SocketAddr = format!("{pod_ip}:15021").parse().unwrap();
    tenantry_tests::wait_for_port(admin, Duration::from_secs(20)).unwrap();

    let app: SocketAddr = format!("{pod_ip}:8080").parse().unwrap();
    // Before the rules, the application answers directly, header or not.
    tenantry_tests::wait_for_port(app, Duration::from_secs(10)).unwrap();
    assert_eq!(
        get(app, "/", &[]).0,
        200,
        "the application should answer directly"
    );

    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            BIN,
            "init-redirect",
            "--app-ports",
            "8080",
        ])
        .args(["--proxy-port", "15001", "--exclude-uid", "1337"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Running it again (a restarted init container) must not fail or duplicate the jumps.
    let again = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            BIN,
            "init-redirect",
            "--app-ports",
            "8080",
        ])
        .args(["--proxy-port", "15001", "--exclude-uid", "1337"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let rules = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "iptables",
            "-t",
            "nat",
            "-S",
            "PREROUTING",
        ])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert_eq!(rules.matches("TENANTRY_INBOUND").count(), 1, "{rules}");

    // Now the app port is the enforcer's: no header, 401 from the enforcer.
    let (status, _, body) = get(app, "/", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_tenant_header"), "{body}");
    // With a valid header it reaches the application, which sees the validated values (so the
    // enforcer's own connection to 127.0.0.1:8080 was not redirected back to itself).
    let (status, _, body) = get(app, "/x", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        seen(&body)["headers"]["x-tenant-tier"],
        serde_json::json!(["enterprise"])
    );
}
