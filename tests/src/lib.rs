//! Test harness shared by Tenantry's test suites: real PostgreSQL and Redis servers started on
//! free loopback ports for the length of a test, and torn down when dropped.
//!
//! Nothing is mocked. A test that needs Postgres gets its own cluster (`initdb` + `pg_ctl`), so
//! tests never share state and can run in parallel.

/// The loopback HTTP(S) client the demo and load harness use too.
pub use tenantry_certs::client as https;

pub mod api_server;
pub mod raw_http;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free TCP port on 127.0.0.1 for a server a test starts later.
///
/// Chosen at random below Linux's ephemeral range (32768–60999) and checked bindable: ports the
/// kernel hands out for `bind(0)` and outgoing connections come from that range, so a port given
/// here is not handed to another test process between this check and the server's bind (as
/// `bind(0)`-then-release would be, under the suite's parallel load).
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    let mut x = seed | 1;
    for _ in 0..200 {
        // xorshift64: cheap, and different in every process and call.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10_000 + (x % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on {addr} after {timeout:?}")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The directory with `initdb` and `pg_ctl`: `$TENANTRY_PG_BIN`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/*/bin` (Debian keeps them off `PATH`).
pub fn postgres_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("TENANTRY_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(dir) = candidates.pop() {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    bail!(
        "PostgreSQL server binaries not found: install `postgresql` (apt-get install -y postgresql) or set TENANTRY_PG_BIN"
    )
}

/// A throwaway PostgreSQL cluster on a free loopback port.
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let bin = postgres_bin_dir()?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("tenantry-pg-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // initdb refuses to run as root; CI containers often are root.
        let as_postgres_user = is_root();
        if as_postgres_user {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()?;
            anyhow::ensure!(
                status.success(),
                "cannot chown {} to the postgres user",
                dir.display()
            );
        }
        let pg = Postgres {
            dir,
            bin,
            port,
            as_postgres_user,
        };
        let data = pg.dir.join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
            bail!(
                "{tool} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (disconnecting every client at once, as an outage looks to them) and
    /// keeps its data for [`Postgres::restart`].
    pub fn stop(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.dir.join("data")),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) -> Result<()> {
        self.start_server()
    }

    fn start_server(&self) -> Result<()> {
        // Durability is not under test: fsync off keeps the suite fast on shared disks.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=off -c full_page_writes=off",
            self.port,
            path(&self.dir)
        );
        let (data, log) = (self.dir.join("data"), self.dir.join("log"));
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-o",
                &options,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                path(&self.dir.join("data")),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A throwaway `redis-server` on a free loopback port, without persistence.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Result<Redis> {
        Redis::start_with(&[])
    }

    /// With extra `redis-server` arguments (`--requirepass`, …).
    pub fn start_with(extra: &[&str]) -> Result<Redis> {
        let port = free_port()?;
        let mut redis = Redis {
            child: None,
            port,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server: install it (apt-get install -y redis-server)")?;
        self.child = Some(child);
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(10),
        )
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real 3-node Redis Cluster (three masters, no replicas) on free loopback ports.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> Result<RedisCluster> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tenantry-redis-cluster-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        while cluster.nodes.len() < 3 {
            cluster.start_node()?;
        }
        let ports = cluster.ports.clone();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .context("cannot run redis-cli --cluster create")?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for port in &ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()?;
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the Redis Cluster never reached cluster_state:ok"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(cluster)
    }

    /// Starts one more node. A node also listens on its cluster bus port (its port + 10000,
    /// fixed by Redis), which another test's server or an outgoing connection may hold: a node
    /// that exits instead of listening is started again on other ports.
    fn start_node(&mut self) -> Result<()> {
        for _ in 0..5 {
            let port = free_port()?;
            let bus_free = port
                .checked_add(10_000)
                .is_some_and(|bus| TcpListener::bind(("127.0.0.1", bus)).is_ok());
            if !bus_free || self.ports.contains(&port) {
                continue;
            }
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--dir", &self.dir.to_string_lossy()])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context(
                    "cannot start redis-server: install it (apt-get install -y redis-server)",
                )?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    self.nodes.push(child);
                    self.ports.push(port);
                    return Ok(());
                }
                if child.try_wait()?.is_some() {
                    break; // a port taken meanwhile: try others
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        bail!("no Redis Cluster node would start on a free port pair (port, port + 10000)")
    }

    /// `redis+cluster://` with every node, as `--redis` takes it.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process (a server under test) killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The repository root (for fixtures, examples and shipped policies).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
