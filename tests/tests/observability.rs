//! The Grafana dashboard and the Prometheus alerts in `deploy/observability/` against the
//! metrics the real binaries expose.
//!
//! A query naming a metric that does not exist is not an error to Prometheus or Grafana: the
//! panel stays empty and the alert never fires. So every `tenantry_*` name in every PromQL
//! expression is checked against what `tenantry-webhook`, `tenantry-enforcer` and
//! `tenantry-controller` serve on `/metrics`, started here as real processes on loopback. The
//! exposed names come from the `# TYPE` lines: a counter `x` is sampled as `x_total`, a
//! histogram as `x_bucket`, `x_sum` and `x_count`, a gauge as `x`. prometheus-client prints a
//! labelled family (requests by decision, reloads by result, …) only once it has a sample, not
//! even its `# TYPE` line before, so each binary is first used the way a cluster uses it:
//! reviews, reloads, proxied requests, a reconcile.
//!
//! The binaries are the workspace's own (`cargo test --workspace` and `cargo nextest run
//! --workspace` build them); a missing or stale one fails the test with the command to build it,
//! never checks an old build.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tenantry_tests::api_server::ApiServer;
use tenantry_tests::{KillOnDrop, free_port, repo_root};
use tenantry_webhook::contract;

fn observability_dir() -> PathBuf {
    repo_root().join("deploy/observability")
}

fn dashboard() -> Value {
    let path = observability_dir().join("grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels (collapsed rows keep theirs inside) included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (where, PromQL) for every query of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("dashboard panel `{title}`: a target without expr"));
                (format!("dashboard panel `{title}`"), expr.to_string())
            })
        })
        .collect()
}

/// The rules of the PrometheusRule in alerts.yaml.
fn alert_rules() -> Vec<Value> {
    let path = observability_dir().join("alerts.yaml");
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rules: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .collect();
    assert_eq!(rules.len(), 1, "{}: one PrometheusRule", path.display());
    rules[0]["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter().cloned())
        .collect()
}

fn alert_queries() -> Vec<(String, String)> {
    alert_rules()
        .into_iter()
        .map(|r| {
            (
                format!("alert {}", r["alert"].as_str().unwrap_or("?")),
                r["expr"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all_queries() -> Vec<(String, String)> {
    let mut queries = dashboard_queries(&dashboard());
    queries.extend(alert_queries());
    queries
}

/// `expr` without its string literals (label values, regexes), which may mention anything.
fn without_strings(expr: &str, origin: &str) -> String {
    let mut out = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let quote = c;
            loop {
                match chars.next() {
                    Some('\\') if quote != '`' => {
                        chars.next();
                    }
                    Some(q) if q == quote => break,
                    Some(_) => {}
                    None => panic!("{origin}: unterminated string in `{expr}`"),
                }
            }
            out.push_str("\"\"");
        } else {
            out.push(c);
        }
    }
    out
}

/// Every `tenantry_*` metric name in a PromQL expression.
fn metric_names(expr: &str, origin: &str) -> BTreeSet<String> {
    let code = without_strings(expr, origin);
    let mut names = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && ident(bytes[i]) {
                i += 1;
            }
            let word = &code[start..i];
            if word.starts_with("tenantry_") {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The brackets of `expr` (outside strings) pair up: a cheap guard against a PromQL typo
/// nobody would see until the panel stays empty.
fn brackets_balance(expr: &str, origin: &str) {
    let mut open = Vec::new();
    for c in without_strings(expr, origin).chars() {
        match c {
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let want = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                assert_eq!(
                    open.pop(),
                    Some(want),
                    "{origin}: unbalanced `{c}` in `{expr}`"
                );
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "{origin}: unclosed {open:?} in `{expr}`");
}

#[test]
fn dashboard_is_valid_json_with_unique_panel_ids_and_a_query_in_every_panel() {
    let d = dashboard();
    assert!(d["uid"].is_string() && d["title"].is_string());
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel `{title}` has a numeric id"));
        assert!(ids.insert(id), "panel id {id} (`{title}`) is used twice");
        let grid = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(grid[k].is_u64(), "panel `{title}`: gridPos.{k}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "panel `{title}` is wider than the dashboard's 24 columns"
        );
        if p["type"] != "row" {
            let targets = p["targets"].as_array().map_or(0, Vec::len);
            assert!(targets > 0, "panel `{title}` queries nothing");
            assert!(
                p["description"].as_str().is_some_and(|s| !s.is_empty()),
                "panel `{title}` says what it shows"
            );
        }
    }
    // Queries go to the data source the viewer picks, declared as a template variable.
    let variables = d["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    for p in panels(&d).into_iter().filter(|p| p["type"] != "row") {
        for ds in std::iter::once(&p["datasource"]).chain(
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| &t["datasource"]),
        ) {
            assert_eq!(
                ds["uid"], "${datasource}",
                "panel {}: data source",
                p["title"]
            );
        }
    }
}

#[test]
fn every_alert_has_a_for_a_summary_and_a_description() {
    let rules = alert_rules();
    assert!(!rules.is_empty());
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["alert"]
            .as_str()
            .unwrap_or_else(|| panic!("only alerting rules here: {r}"));
        assert!(names.insert(name), "alert {name} twice");
        let for_ = r["for"]
            .as_str()
            .unwrap_or_else(|| panic!("alert {name}: a `for:` (how long before it fires)"));
        let valid = for_
            .strip_suffix(['s', 'm', 'h'])
            .is_some_and(|n| n.parse::<u32>().is_ok());
        assert!(valid, "alert {name}: `for: {for_}`");
        for key in ["summary", "description"] {
            assert!(
                r["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.trim().is_empty()),
                "alert {name}: a `{key}` annotation"
            );
        }
        let severity = r["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "alert {name}: severity critical, warning or info"
        );
    }
}

#[test]
fn queries_are_well_formed_and_name_the_installed_job_and_namespace() {
    for (origin, expr) in all_queries() {
        brackets_balance(&expr, &origin);
        // prometheus-operator names the webhook's job after its Service (monitors.yaml).
        for (label, want) in [
            ("job", contract::SERVICE_NAME),
            ("namespace", contract::NAMESPACE),
        ] {
            let needle = format!("{label}=\"");
            let mut rest = expr.as_str();
            while let Some(at) = rest.find(&needle) {
                let value = &rest[at + needle.len()..];
                let value = &value[..value.find('"').unwrap()];
                assert_eq!(value, want, "{origin}: {label}=\"{value}\"");
                rest = &rest[at + needle.len()..];
            }
        }
        // The webhook names as the API server labels its own metrics with them.
        if expr.contains("apiserver_admission_webhook") {
            for name in [
                contract::MUTATING_WEBHOOK_NAME,
                contract::VALIDATING_WEBHOOK_NAME,
            ] {
                let (prefix, _) = name.split_once('.').unwrap();
                assert!(expr.contains(prefix), "{origin}: selects {name}");
            }
        }
    }
}

/// Prometheus's own parser over every expression: the alert rules as they are (templates in
/// the annotations included), and each dashboard query as a recording rule, with Grafana's
/// `$__rate_interval` given a value.
#[test]
#[cfg_attr(
    not(has_promtool),
    ignore = "promtool was not on PATH when the tests were built (tests/build.rs)"
)]
fn promtool_parses_the_alerts_and_every_dashboard_query() {
    let scratch = std::env::temp_dir().join(format!("tenantry-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let queries: Vec<Value> = dashboard_queries(&dashboard())
        .into_iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            serde_json::json!({
                "record": format!("tenantry_dashboard:query{i}"),
                "expr": expr.replace("$__rate_interval", "5m"),
            })
        })
        .collect();
    let groups = serde_json::json!({"groups": [
        {"name": "alerts", "rules": alert_rules()},
        {"name": "dashboard", "rules": queries},
    ]});
    // JSON is YAML, which promtool reads.
    let file = scratch.join("rules.yaml");
    std::fs::write(&file, groups.to_string()).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The real binaries.

/// A workspace binary next to this test's own build (`target/<profile>/`), checked to be newer
/// than every source file of its crate: each binary registers its metrics in its own crate
/// (`webhook/src/metrics.rs`, `enforcer/src/metrics.rs`, `controller/src/run.rs`), so an older
/// binary may expose other names than the code says.
fn binary(name: &str, crate_dir: &str) -> PathBuf {
    let build = "build them with `cargo build --workspace --bins` (`cargo test --workspace` and \
                 `cargo nextest run --workspace` do)";
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join(name);
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}; {build}", bin.display()));
    let crate_dir = repo_root().join(crate_dir);
    let mut sources = vec![crate_dir.join("Cargo.toml")];
    let mut dirs = vec![crate_dir.join("src")];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                sources.push(path);
            }
        }
    }
    for source in sources {
        let changed = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        assert!(
            changed <= built,
            "{} is older than {}; {build}",
            bin.display(),
            source.display()
        );
    }
    bin
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A scratch directory removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tenantry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(bin: PathBuf, args: &[String]) -> KillOnDrop {
    KillOnDrop(
        Command::new(bin)
            .args(args)
            // Not in a cluster, whatever the environment says.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("TENANTRY_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let (status, _, body) =
        tenantry_tests::raw_http::try_raw(addr, &format!("GET {path} HTTP/1.1"), &[]).ok()?;
    Some((status, body))
}

/// Waits until `GET path` on `addr` answers 200.
fn wait_for(addr: SocketAddr, path: &str, who: &str, process: &mut KillOnDrop) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(addr, path).is_none_or(|(status, _)| status != 200) {
        if let Ok(Some(status)) = process.0.try_wait() {
            panic!("{who} exited with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{who}: {path} on {addr} never answered 200"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sample names a Prometheus text exposition carries, from its `# TYPE` lines (and its
/// samples, for completeness).
fn exposed(text: &str, who: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap();
            let suffixes: &[&str] = match kind.trim() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "gauge" | "unknown" => &[""],
                "info" => &["_info"],
                "summary" => &["", "_sum", "_count"],
                other => panic!("{who}: metric type `{other}` of {family}"),
            };
            names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The sample names `/metrics` on `addr` offers, once it offers every name in `want` or after
/// a few seconds (the caller reports what is still missing).
fn scrape_until(addr: SocketAddr, who: &str, want: &BTreeSet<String>) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(addr, "/metrics").unwrap_or_default();
        assert_eq!(status, 200, "{who}: /metrics");
        let names = exposed(&body, who);
        if want.is_subset(&names) || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rewrites `path` unchanged: a new modification time, which the file watchers reload on.
fn touch(path: &Path) {
    let text = std::fs::read(path).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The webhook, used the way a cluster uses it, so that every metric family has a sample:
/// prometheus-client prints nothing, not even `# TYPE`, for a labelled family before its first
/// sample. Reviews on both endpoints (one denied, all matched by a forbid in audit mode), a
/// traffic-view poll, and a reload of the policies, the tenants file and the certificate.
fn webhook_metrics(runtime: &tokio::runtime::Runtime, want: &BTreeSet<String>) -> BTreeSet<String> {
    let scratch = Scratch::new("observability-webhook");
    let dir = &scratch.0;
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    // A forbid in audit mode that matches every write, so audited matches are counted too.
    std::fs::write(
        policies.join("observability-audit.cedar"),
        "@id(\"observability-audit\")\n\
         @message(\"every write is audited by the observability test\")\n\
         @mode(\"audit\")\n\
         forbid (principal, action in Action::\"admission\", resource);\n",
    )
    .unwrap();
    let tenants = dir.join("tenants.yaml");
    std::fs::copy(repo_root().join("examples/tenants.yaml"), &tenants).unwrap();
    let generated = tenantry_certs::generate(&["localhost".to_string()], 30).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &generated.cert).unwrap();
    std::fs::write(&key, &generated.key).unwrap();

    let https = loopback(free_port().unwrap());
    let metrics = loopback(free_port().unwrap());
    let view = loopback(free_port().unwrap());
    let mut webhook = spawn(
        binary("tenantry-webhook", "webhook"),
        &[
            format!("--listen={https}"),
            format!("--metrics-listen={metrics}"),
            format!("--traffic-view-listen={view}"),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--tenants={}", tenants.display()),
            format!("--policies={}", policies.display()),
            "--reload-interval=100ms".to_string(),
        ],
    );
    wait_for(
        metrics,
        contract::READYZ_PATH,
        "tenantry-webhook",
        &mut webhook,
    );

    let client = tenantry_tests::https::Client::https(&generated.ca_cert, "localhost").unwrap();
    let review = |path: &str, user: &str, object: &Value| -> Value {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "observability",
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "name": "settings",
                "namespace": "acme-dev",
                "operation": "CREATE",
                "userInfo": {"username": user, "groups": ["system:authenticated"]},
                "object": object,
                "dryRun": true,
            },
        });
        let reply = runtime
            .block_on(client.post(https, path, review.to_string().into_bytes()))
            .unwrap();
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        serde_json::from_slice::<Value>(&reply.body).unwrap()["response"].clone()
    };
    // As the API server does: mutation, its patch applied, then validation. alice writes in her
    // tenant's namespace; bob, of globex, tries the same write there and is denied.
    let mut object = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "acme-dev"}});
    let mutated = review(contract::MUTATE_PATH, "alice", &object);
    assert_eq!(mutated["allowed"], true, "{mutated}");
    if let Some(patch) = mutated["patch"].as_str() {
        use base64::Engine;
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        json_patch::patch(&mut object, &patch).unwrap();
    }
    for (user, allowed) in [("alice", true), ("bob", false)] {
        let validated = review(contract::VALIDATE_PATH, user, &object);
        assert_eq!(validated["allowed"], allowed, "{user}: {validated}");
    }
    let (status, _) = get(view, tenantry_webhook::view::PATH).expect("the traffic view answers");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_millis(50));
    touch(&policies.join("baseline.cedar"));
    touch(&tenants);
    touch(&cert);
    touch(&key);
    scrape_until(metrics, "tenantry-webhook", want)
}

/// The enforcer, with a Redis that does not answer (its fallback decides), a request whose
/// application is down (502), and a connection that never speaks (closed by the enforcer).
fn enforcer_metrics(want: &BTreeSet<String>) -> BTreeSet<String> {
    let proxy = loopback(free_port().unwrap());
    let admin = loopback(free_port().unwrap());
    let mut enforcer = spawn(
        binary("tenantry-enforcer", "enforcer"),
        &[
            "run".to_string(),
            "--tenant=acme".to_string(),
            "--tenants=example".to_string(),
            format!("--listen={proxy}"),
            // Nothing listens on either.
            format!("--upstream={}", loopback(free_port().unwrap())),
            format!("--redis=redis://{}", loopback(free_port().unwrap())),
            "--redis-failure=open".to_string(),
            "--redis-timeout-ms=100".to_string(),
            "--header-timeout-ms=200".to_string(),
            format!("--admin-listen={admin}"),
        ],
    );
    wait_for(admin, "/healthz", "tenantry-enforcer", &mut enforcer);
    tenantry_tests::wait_for_port(proxy, Duration::from_secs(10)).unwrap();
    let silent = std::net::TcpStream::connect(proxy).unwrap();
    let (status, _, _) =
        tenantry_tests::raw_http::raw(proxy, "GET / HTTP/1.1", &["X-Tenant-ID: acme"]);
    assert_eq!(status, 502, "the application is down");
    std::thread::sleep(Duration::from_millis(400));
    let names = scrape_until(admin, "tenantry-enforcer", want);
    drop(silent);
    names
}

/// The controller against the in-process API server its own tests use, until it has
/// reconciled.
fn controller_metrics(
    runtime: &tokio::runtime::Runtime,
    want: &BTreeSet<String>,
) -> BTreeSet<String> {
    let scratch = Scratch::new("observability-controller");
    let api = ApiServer::new();
    let addr = runtime.block_on(api.serve()).unwrap();
    let kubeconfig = scratch.0.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{addr}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: fake, user: u}}}}]\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    let metrics = loopback(free_port().unwrap());
    let mut controller = spawn(
        binary("tenantry-controller", "controller"),
        &[
            format!(
                "--tenants={}",
                repo_root().join("examples/tenants.yaml").display()
            ),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--metrics-listen={metrics}"),
            "--identity=observability-test".to_string(),
        ],
    );
    // Ready once it holds the Lease and has reconciled.
    wait_for(metrics, "/readyz", "tenantry-controller", &mut controller);
    scrape_until(metrics, "tenantry-controller", want)
}

#[test]
fn every_tenantry_metric_queried_is_one_the_binaries_expose() {
    let queried: Vec<(String, String)> = all_queries()
        .into_iter()
        .flat_map(|(origin, expr)| {
            metric_names(&expr, &origin)
                .into_iter()
                .map(move |name| (origin.clone(), name))
        })
        .collect();
    assert!(
        queried.len() > 20,
        "the queries name {} tenantry_* metrics",
        queried.len()
    );
    // Which binary to wait for, by prefix; the check below takes the union anyway.
    let wanted = |prefix: &str, others: &[&str]| -> BTreeSet<String> {
        queried
            .iter()
            .map(|(_, n)| n.clone())
            .filter(|n| n.starts_with(prefix) && others.iter().all(|o| !n.starts_with(o)))
            .collect()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut by_binary = BTreeMap::new();
    by_binary.insert(
        "tenantry-webhook",
        webhook_metrics(
            &runtime,
            &wanted("tenantry_", &["tenantry_enforcer_", "tenantry_controller_"]),
        ),
    );
    by_binary.insert(
        "tenantry-enforcer",
        enforcer_metrics(&wanted("tenantry_enforcer_", &[])),
    );
    by_binary.insert(
        "tenantry-controller",
        controller_metrics(&runtime, &wanted("tenantry_controller_", &[])),
    );
    let exposed: BTreeSet<&String> = by_binary.values().flatten().collect();

    let missing: Vec<String> = queried
        .iter()
        .filter(|(_, name)| !exposed.contains(name))
        .map(|(origin, name)| format!("{origin}: {name}"))
        .collect();
    assert!(
        missing.is_empty(),
        "queried, but exposed by none of the binaries:\n  {}\nexposed: {by_binary:#?}",
        missing.join("\n  ")
    );
}

#[test]
fn metric_names_are_found_outside_strings_only() {
    let names = metric_names(
        r#"sum by (le) (rate(tenantry_a_bucket{job="tenantry_not_a_metric", x=~"a\"tenantry_b"}[5m])) / tenantry_c"#,
        "example",
    );
    assert_eq!(
        names,
        BTreeSet::from(["tenantry_a_bucket".to_string(), "tenantry_c".to_string()])
    );
    let exposed = exposed(
        "# TYPE tenantry_x counter\n# TYPE tenantry_h histogram\n# TYPE tenantry_g gauge\n",
        "example",
    );
    for name in [
        "tenantry_x_total",
        "tenantry_h_bucket",
        "tenantry_h_count",
        "tenantry_g",
    ] {
        assert!(exposed.contains(name), "{name}");
    }
    assert!(!exposed.contains("tenantry_x"));
}
