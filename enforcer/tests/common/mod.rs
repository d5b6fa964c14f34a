//! Shared pieces of the enforcer tests: the real binary on free ports, a real echo application,
//! and a raw HTTP/1.1 client that sends exactly the bytes a test writes (hyper would normalise
//! the header attacks away before they reached the enforcer).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenantry_tests::{free_port, wait_for_port};

pub const BIN: &str = env!("CARGO_BIN_EXE_tenantry-enforcer");

pub struct Enforcer {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Enforcer {
    /// Starts the binary for `tenant` in front of `upstream` with extra `args`, and waits until
    /// `/readyz` answers 200.
    pub fn start(tenant: &str, upstream: SocketAddr, args: &[&str]) -> Enforcer {
        Self::start_with(tenant, upstream, args, Command::new(BIN))
    }

    pub fn start_with(
        tenant: &str,
        upstream: SocketAddr,
        args: &[&str],
        mut cmd: Command,
    ) -> Enforcer {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        // The embedded example directory, unless the test names a source.
        if !args.contains(&"--tenants") {
            cmd.args(["--tenants", "example"]);
        }
        let child = cmd
            .args(["run", "--tenant", tenant])
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--upstream")
            .arg(upstream.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .args(args)
            .env("TENANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let e = Enforcer {
            child: Some(child),
            addr,
            admin,
        };
        wait_for_port(admin, Duration::from_secs(20)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(admin, "/readyz", &[]).0 != 200 {
            assert!(Instant::now() < deadline, "the enforcer never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        wait_for_port(addr, Duration::from_secs(5)).unwrap();
        e
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (_, _, body) = get(self.admin, "/metrics", &[]);
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The counter `name` once it reaches `at_least` (or its value after two seconds): the
    /// enforcer counts a connection it closed after closing it, so a client that has seen the
    /// close may read the counter a moment before it moves.
    pub fn counter_reaching(&self, name: &str, at_least: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let value = self.metric(name);
            if value >= at_least || Instant::now() >= deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid())
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The echo application on a free port, served by a thread with its own runtime.
pub fn echo_upstream() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tenantry_enforcer::demo::echo_upstream(listener).await;
        });
    });
    addr
}

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use tenantry_tests::raw_http::{get, header, parse_response, raw, send};

/// What the echo application saw, as JSON.
pub fn seen(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo body ({e}): {body}"))
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tenantry-enforcer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tenants file with one extra tier `metered` and tenant `metro` on it.
pub fn tenants_file(name: &str, rps: u32, burst: u32) -> PathBuf {
    let dir = temp_dir(name);
    let mut text = tenantry_tenancy::embedded::TENANTS_YAML.to_string();
    text = text.replacen(
        "tiers:\n",
        &format!("tiers:\n  metered:\n    limits: {{}}\n    rate_limit: {{ requests_per_second: {rps}, burst: {burst} }}\n"),
        1,
    );
    text.push_str("  metro:\n    tier: metered\n    namespaces: [metro-prod]\n");
    let path = dir.join("tenants.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A keep-alive HTTP/1.1 client for load: returns (status, body) per request.
pub struct KeepAlive {
    stream: std::io::BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        KeepAlive {
            stream: std::io::BufReader::new(s),
        }
    }

    /// The connection, for writing raw bytes after the requests so far (all answered).
    pub fn into_stream(self) -> TcpStream {
        self.stream.into_inner()
    }

    /// Sends GET `/` with `X-Tenant-ID: tenant`; returns the status.
    pub fn get(&mut self, tenant: &str) -> u16 {
        use std::io::BufRead;
        let req = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Tenant-ID: {tenant}\r\n\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h).unwrap();
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).unwrap();
        status
    }
}
