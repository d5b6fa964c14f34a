//! Opt-in: Tenantry against a real Kubernetes cluster, driven with kubectl as tenant users.
//!
//! Runs only when `TENANTRY_E2E_KUBECONFIG` names a kubeconfig for a cluster admin (at build
//! time: `tests/build.rs` turns it into `cfg(e2e)`); otherwise the test is reported as ignored,
//! so plain `cargo test` needs no cluster and never counts a skipped suite as passed. The webhook runs
//! out-of-cluster, from this machine: the API server calls it at `TENANTRY_E2E_WEBHOOK_URL`
//! (`clientConfig.url`), so no image is built or pushed. deploy/README.md explains the
//! variables and how to run this against kind, k3d or a cloud cluster.
//!
//! | variable | meaning |
//! |---|---|
//! | `TENANTRY_E2E_KUBECONFIG` | kubeconfig of a cluster admin (required to run) |
//! | `TENANTRY_E2E_WEBHOOK_URL` | `https://HOST:PORT` at which the API server reaches this machine (required) |
//! | `TENANTRY_E2E_WEBHOOK_BIN` | the server binary (default `target/debug/tenantry-webhook`; `tenantry-controller` is taken from the same directory) |
//! | `TENANTRY_E2E_SIDECAR_MODE` | `native` (default, Kubernetes ≥ 1.29) or `container` |
//!
//! The suite registers the *shipped* webhook rules from `deploy/base/webhooks.yaml`, narrowed
//! to its own two namespaces so that a crash mid-run cannot lock the rest of a shared cluster,
//! under the name `tenantry-e2e`. Everything it creates is removed when the test ends.

// Test code: a broken expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tenantry_tests::{KillOnDrop, free_port, repo_root};

const ACME_NS: &str = "tenantry-e2e-acme";
const GLOBEX_NS: &str = "tenantry-e2e-globex";
const CONFIGURATION: &str = "tenantry-e2e";

/// The tenant directory of the run. `acme` is unlimited; `globex` may have one Service. Both
/// users may edit both namespaces as far as Kubernetes RBAC goes: keeping tenants apart is
/// Tenantry's job here, not RBAC's.
/// `globex_lifecycle` is spliced into globex's entry (a status and purge time).
fn tenants_yaml(acme_status: &str, globex_lifecycle: &str) -> String {
    format!(
        r#"tiers:
  small:
    limits: {{ services: 1 }}
  large:
    limits: {{}}
    scale_down_on_suspend: true
tenants:
  e2e-acme:
    tier: large
    status: {acme_status}
    namespaces: [{ACME_NS}]
    members: {{ users: [e2e-alice], groups: [e2e-acme-devs] }}
  e2e-globex:
    tier: small
    namespaces: [{GLOBEX_NS}]
    members: {{ users: [e2e-bob] }}
{globex_lifecycle}"#
    )
}

struct Config {
    kubeconfig: PathBuf,
    url: String,
    host: String,
    port: u16,
    binary: PathBuf,
    sidecar_mode: String,
}

fn config() -> Option<Config> {
    let kubeconfig = std::env::var("TENANTRY_E2E_KUBECONFIG").ok()?;
    let url = std::env::var("TENANTRY_E2E_WEBHOOK_URL").expect(
        "TENANTRY_E2E_WEBHOOK_URL: https://HOST:PORT at which the API server reaches this machine",
    );
    let authority = url
        .strip_prefix("https://")
        .expect("TENANTRY_E2E_WEBHOOK_URL starts with https://")
        .trim_end_matches('/');
    let (host, port) = authority
        .rsplit_once(':')
        .expect("TENANTRY_E2E_WEBHOOK_URL has an explicit port");
    let binary = std::env::var("TENANTRY_E2E_WEBHOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target/debug/tenantry-webhook"));
    assert!(
        binary.is_file(),
        "{} not found: `cargo build -p tenantry-webhook` or set TENANTRY_E2E_WEBHOOK_BIN",
        binary.display()
    );
    Some(Config {
        kubeconfig: PathBuf::from(kubeconfig),
        url: url.trim_end_matches('/').to_string(),
        host: host.trim_matches(['[', ']']).to_string(),
        port: port.parse().expect("a port number"),
        binary,
        sidecar_mode: std::env::var("TENANTRY_E2E_SIDECAR_MODE")
            .unwrap_or_else(|_| "native".to_string()),
    })
}

/// The running webhook and everything registered in the cluster; Drop undoes it all, webhook
/// configurations first so that nothing else is blocked while the rest is deleted.
struct Cluster {
    config: Config,
    dir: PathBuf,
    webhook: Child,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.kubectl(&[
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            CONFIGURATION,
            "--ignore-not-found",
        ]);
        let _ = self.kubectl(&[
            "delete",
            "namespace",
            ACME_NS,
            GLOBEX_NS,
            "--ignore-not-found",
            "--wait=false",
        ]);
        // The suite's Tenant mirrors (the CRD stays: it may serve an installed Tenantry).
        let _ = self
            .command()
            .args([
                "delete",
                "tenants.tenantry.dev",
                "e2e-acme",
                "e2e-globex",
                "--ignore-not-found",
            ])
            .output();
        let _ = self.webhook.kill();
        let _ = self.webhook.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn start(config: Config) -> Cluster {
        let dir = std::env::temp_dir().join(format!("tenantry-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self_signed_certificate(&dir, &config.host);
        std::fs::write(dir.join("tenants.yaml"), tenants_yaml("active", "")).unwrap();

        let metrics = free_port().unwrap();
        let webhook = Command::new(&config.binary)
            .arg(format!("--listen=0.0.0.0:{}", config.port))
            .arg(format!("--metrics-listen=127.0.0.1:{metrics}"))
            .arg(format!("--tls-cert={}", cert.display()))
            .arg(format!("--tls-key={}", key.display()))
            .arg(format!("--tenants={}", dir.join("tenants.yaml").display()))
            .arg(format!(
                "--policies={}",
                repo_root().join("policies").display()
            ))
            .arg(format!("--kubeconfig={}", config.kubeconfig.display()))
            .arg(format!("--sidecar-mode={}", config.sidecar_mode))
            // Injected enforcers are told to follow this traffic view (in a real install the
            // webhook's Service serves it); the suite checks what is injected, not that it runs.
            .arg(format!(
                "--traffic-view-listen=127.0.0.1:{}",
                free_port().unwrap()
            ))
            .arg("--sidecar-redis-secret=tenantry-ratelimit")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the webhook binary");
        let cluster = Cluster {
            config,
            dir,
            webhook,
        };
        cluster.wait_ready(metrics);

        let installed = cluster.kubectl(&[
            "get",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "-o",
            "name",
        ]);
        for name in installed.lines() {
            assert!(
                !name.ends_with("/tenantry"),
                "Tenantry is installed in this cluster ({name}); run the suite on a cluster without it"
            );
        }

        // Namespaces and RBAC come first, while no webhook is registered: they are the
        // cluster admin's setup, not what is under test (and a RoleBinding naming both tenants'
        // users is exactly what Tenantry refuses).
        cluster.apply(&namespaces_and_rbac());
        cluster.register_webhooks(&cert);
        cluster
    }

    fn wait_ready(&self, metrics: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], metrics));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_status(addr, tenantry_webhook::contract::READYZ_PATH) == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("the webhook was not ready after 60s (its output is above)");
    }

    /// The shipped configurations from deploy/base, pointed at this machine.
    fn register_webhooks(&self, cert: &Path) {
        let ca_bundle =
            base64::engine::general_purpose::STANDARD.encode(std::fs::read(cert).unwrap());
        let shipped =
            std::fs::read_to_string(repo_root().join("deploy/base/webhooks.yaml")).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&shipped).unwrap();
        for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
            doc["metadata"] = json!({"name": CONFIGURATION});
            for webhook in doc["webhooks"].as_array_mut().unwrap() {
                let path = webhook["clientConfig"]["service"]["path"].clone();
                webhook["clientConfig"] = json!({
                    "url": format!("{}{}", self.config.url, path.as_str().unwrap()),
                    "caBundle": ca_bundle,
                });
                webhook["namespaceSelector"]["matchExpressions"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({
                        "key": "kubernetes.io/metadata.name",
                        "operator": "In",
                        "values": [ACME_NS, GLOBEX_NS],
                    }));
                // Cluster-scoped objects have no namespace to narrow by: leave them alone.
                for rule in webhook["rules"].as_array_mut().unwrap() {
                    rule["scope"] = json!("Namespaced");
                }
            }
            self.apply(&doc);
        }
        // Registration takes effect asynchronously: wait until a cross-tenant dry run is refused.
        eventually("the webhook is called by the API server", || {
            !self
                .as_user("e2e-bob", &[])
                .args([
                    "-n",
                    ACME_NS,
                    "create",
                    "configmap",
                    "probe",
                    "--dry-run=server",
                ])
                .output()
                .unwrap()
                .status
                .success()
        });
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg(format!("--kubeconfig={}", self.config.kubeconfig.display()));
        cmd
    }

    /// kubectl as the admin; panics on failure.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("cannot run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn apply(&self, object: &Value) {
        let mut child = self
            .command()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(object.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// kubectl impersonating a tenant user (`--as`, `--as-group`).
    fn as_user(&self, user: &str, groups: &[&str]) -> Command {
        let mut cmd = self.command();
        cmd.arg(format!("--as={user}"));
        for group in groups {
            cmd.arg(format!("--as-group={group}"));
        }
        cmd
    }

    /// Runs kubectl as `user` with `manifest` on stdin.
    fn as_user_with(&self, user: &str, args: &[&str], manifest: &Value) -> Output {
        let mut child = self
            .as_user(user, &[])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    fn set_tenants(&self, acme_status: &str) {
        self.set_tenants_with(acme_status, "");
    }

    fn set_tenants_with(&self, acme_status: &str, globex_lifecycle: &str) {
        // Write then rename, so the server never reads half a file.
        let tmp = self.dir.join("tenants.yaml.tmp");
        std::fs::write(&tmp, tenants_yaml(acme_status, globex_lifecycle)).unwrap();
        std::fs::rename(&tmp, self.dir.join("tenants.yaml")).unwrap();
    }
}

fn namespaces_and_rbac() -> Value {
    let mut items = Vec::new();
    for ns in [ACME_NS, GLOBEX_NS] {
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
        }));
        items.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "e2e-edit", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "e2e-alice"},
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "e2e-bob"},
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "e2e-acme-devs"},
            ],
        }));
        // `edit` does not write Events; RBAC must let the forged one through for Tenantry to
        // be the one that refuses it.
        items.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "e2e-events", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}],
        }));
        items.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "e2e-events", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "e2e-events"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "e2e-bob"}],
        }));
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// A self-signed certificate for `host` (an IP address or a DNS name), which is also the
/// `caBundle` the API server trusts.
fn self_signed_certificate(dir: &Path, host: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let san = if host.parse::<std::net::IpAddr>().is_ok() {
        format!("subjectAltName=IP:{host}")
    } else {
        format!("subjectAltName=DNS:{host}")
    };
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=tenantry-e2e", "-addext", &san])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot run openssl (needed to make the webhook's certificate)");
    assert!(status.success(), "openssl could not make a certificate");
    (cert, key)
}

/// Status code of a plain HTTP GET (the metrics listener).
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("timed out after 60s waiting until {what}");
}

/// The `@message` of the policy with `@id(id)` in policies/, which the webhook quotes on deny.
fn policy_message(id: &str) -> String {
    let marker = format!("@id(\"{id}\")");
    for entry in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
        if let Some(at) = text.find(&marker) {
            let rest = &text[at..];
            let start = rest.find("@message(\"").unwrap() + "@message(\"".len();
            let end = rest[start..].find("\")").unwrap();
            return rest[start..start + end].replace("\\\"", "\"");
        }
    }
    panic!("no policy with @id(\"{id}\") in policies/");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn denied_with(out: &Output, policy: &str) {
    let message = policy_message(policy);
    assert!(
        !out.status.success(),
        "expected a denial by `{policy}`, but it was allowed"
    );
    assert!(
        stderr(out).contains(&message),
        "expected `{message}`, got: {}",
        stderr(out)
    );
}

fn allowed(out: &Output) {
    assert!(out.status.success(), "expected it allowed: {}", stderr(out));
}

fn configmap(name: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"hello": "world"},
    })
}

fn service(name: &str, namespace: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    })
}

/// Every scenario in one test: they share one webhook registration (cluster-wide objects) and
/// run in a fixed order, the suspension last.
#[test]
#[cfg_attr(
    not(e2e),
    ignore = "set TENANTRY_E2E_KUBECONFIG (and TENANTRY_E2E_WEBHOOK_URL) to run against a real cluster"
)]
fn tenants_on_a_real_cluster() {
    let config = config().expect("TENANTRY_E2E_KUBECONFIG names a cluster admin's kubeconfig");
    let cluster = Cluster::start(config);
    let create = ["create", "-f", "-"];

    eprintln!("scenario: a tenant writes in its own namespace; Tenantry labels the object");
    allowed(&cluster.as_user_with("e2e-alice", &create, &configmap("own", ACME_NS)));
    let tenant = cluster.kubectl(&[
        "-n",
        ACME_NS,
        "get",
        "configmap",
        "own",
        "-o",
        "jsonpath={.metadata.labels.tenantry\\.dev/tenant}",
    ]);
    assert_eq!(tenant, "e2e-acme");

    eprintln!("scenario: a tenant writes in another tenant's namespace and is refused");
    denied_with(
        &cluster.as_user_with("e2e-bob", &create, &configmap("intruder", ACME_NS)),
        "cross-tenant-write",
    );
    // Group membership counts the same way as the user name.
    let out = cluster
        .as_user("someone", &["e2e-acme-devs"])
        .args(["-n", GLOBEX_NS, "create", "configmap", "intruder"])
        .output()
        .unwrap();
    denied_with(&out, "cross-tenant-write");

    eprintln!(
        "scenario: the matchConditions skip only the cluster's own Events: a tenant's Event is still decided"
    );
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "forged.1", "namespace": ACME_NS},
        "involvedObject": {"kind": "Pod", "name": "app", "namespace": ACME_NS},
        "reason": "Forged", "message": "written by another tenant", "type": "Normal",
    });
    denied_with(
        &cluster.as_user_with("e2e-bob", &create, &event),
        "cross-tenant-write",
    );

    eprintln!("scenario: the tier's quota (one Service for globex) is enforced");
    allowed(&cluster.as_user_with("e2e-bob", &create, &service("first", GLOBEX_NS)));
    denied_with(
        &cluster.as_user_with("e2e-bob", &create, &service("second", GLOBEX_NS)),
        "quota-services",
    );

    eprintln!("scenario: the enforcer sidecar is injected into tenant pods");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "app", "namespace": ACME_NS},
        "spec": {"containers": [{
            "name": "app",
            "image": "registry.k8s.io/pause:3.10",
            "ports": [{"containerPort": 8080}],
        }]},
    });
    let out = cluster.as_user_with("e2e-alice", &["create", "-f", "-", "-o", "json"], &pod);
    allowed(&out);
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = if cluster.config.sidecar_mode == "native" {
        "initContainers"
    } else {
        "containers"
    };
    let injected = created["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == tenantry_webhook::pod::ENFORCER);
    assert!(
        injected,
        "no {} in spec.{list}: {created:#}",
        tenantry_webhook::pod::ENFORCER
    );
    assert_eq!(
        created["metadata"]["labels"]["tenantry.dev/tenant"],
        "e2e-acme"
    );
    // Nothing secret in the pod spec a tenant can read: the tenant source is the traffic view,
    // the Redis credential a reference to the tenant's own Secret.
    let sidecar = created["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == tenantry_webhook::pod::ENFORCER)
        .unwrap();
    let env = sidecar["env"].as_array().cloned().unwrap_or_default();
    let value = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert!(
        value("TENANTRY_TENANTS").unwrap()["value"]
            .as_str()
            .unwrap()
            .ends_with("/v1/traffic-view")
    );
    assert_eq!(
        value("TENANTRY_REDIS").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "tenantry-ratelimit"
    );
    assert!(
        !sidecar.to_string().contains("postgres://"),
        "a database URL in a tenant pod: {sidecar}"
    );

    eprintln!("scenario: tenants mint tokens for their own service accounts (TokenRequest)");
    // The kubelet sends the same TokenRequest for every pod with a projected token; its body
    // carries no labels and was refused as label tampering.
    let out = cluster
        .as_user("e2e-alice", &[])
        .args(["-n", ACME_NS, "create", "token", "default"])
        .output()
        .unwrap();
    allowed(&out);

    eprintln!("scenario: a tenant cannot evict or scale another tenant's workloads");
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": "app", "namespace": ACME_NS}});
    let path = format!("/api/v1/namespaces/{ACME_NS}/pods/app/eviction");
    denied_with(
        &cluster.as_user_with("e2e-bob", &["create", "--raw", &path, "-f", "-"], &eviction),
        "cross-tenant-write",
    );
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api", "namespace": ACME_NS},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    });
    allowed(&cluster.as_user_with("e2e-alice", &create, &deployment));
    let scale = |user: &str| {
        cluster
            .as_user(user, &[])
            .args(["-n", ACME_NS, "scale", "deployment/api", "--replicas=0"])
            .output()
            .unwrap()
    };
    denied_with(&scale("e2e-bob"), "cross-tenant-write");
    allowed(&scale("e2e-alice"));

    eprintln!("scenario: tenant pods and pod templates cannot reach the node");
    let mut privileged = pod.clone();
    privileged["metadata"]["name"] = json!("root");
    privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
    denied_with(
        &cluster.as_user_with("e2e-alice", &create, &privileged),
        "pod-privileged",
    );
    let mut host_path = deployment.clone();
    host_path["metadata"]["name"] = json!("agent");
    host_path["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": "root", "hostPath": {"path": "/"}}]);
    denied_with(
        &cluster.as_user_with("e2e-alice", &create, &host_path),
        "pod-host-path",
    );

    eprintln!("scenario: a Service cannot capture traffic with externalIPs");
    let mut capture = service("capture", ACME_NS);
    capture["spec"]["externalIPs"] = json!(["203.0.113.10"]);
    denied_with(
        &cluster.as_user_with("e2e-alice", &create, &capture),
        "service-external-ips",
    );

    eprintln!("scenario: the provisioning controller isolates and binds the tenants' namespaces");
    let controller_bin = cluster.config.binary.with_file_name("tenantry-controller");
    assert!(
        controller_bin.is_file(),
        "{} not found: `cargo build -p tenantry-controller`",
        controller_bin.display()
    );
    // `kubectl get tenants` needs the CRD; it is left installed afterwards.
    cluster.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        repo_root()
            .join("deploy/base/crd-tenants.yaml")
            .to_str()
            .unwrap(),
    ]);
    let controller = Command::new(&controller_bin)
        .arg(format!(
            "--tenants={}",
            cluster.dir.join("tenants.yaml").display()
        ))
        .arg(format!(
            "--kubeconfig={}",
            cluster.config.kubeconfig.display()
        ))
        .arg(format!(
            "--metrics-listen=127.0.0.1:{}",
            free_port().unwrap()
        ))
        // The Lease lives in the suite's own namespace, removed with it.
        .arg(format!("--lease-namespace={ACME_NS}"))
        .arg("--lease-name=tenantry-e2e-controller")
        .arg("--resync=5s")
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start the controller binary");
    let _controller = KillOnDrop(controller);
    let exists = |args: &[&str]| {
        cluster
            .command()
            .args(args)
            .output()
            .unwrap()
            .status
            .success()
    };
    eventually("the controller isolates acme's namespace", || {
        exists(&["-n", ACME_NS, "get", "networkpolicy", "tenantry-isolation"])
    });
    eventually("the controller binds globex's developer", || {
        cluster
            .command()
            .args([
                "-n",
                GLOBEX_NS,
                "get",
                "rolebinding",
                "tenantry-developer",
                "-o",
                "jsonpath={.subjects[*].name}",
            ])
            .output()
            .unwrap()
            .stdout
            .windows(b"e2e-bob".len())
            .any(|w| w == b"e2e-bob")
    });
    eventually(
        "kubectl get tenants shows the directory's tenants with their usage",
        || {
            let out = cluster
                .command()
                .args([
                    "get",
                    "tenant",
                    "e2e-globex",
                    "-o",
                    "jsonpath={.spec.tier} {.status.usage.services.limit}",
                ])
                .output()
                .unwrap();
            out.stdout == b"small 1"
        },
    );
    let out = cluster
        .as_user("e2e-bob", &[])
        .args(["label", "tenant", "e2e-globex", "tier=gold"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "tenants cannot write their mirror");
    let out = cluster
        .as_user("e2e-alice", &[])
        .args([
            "-n",
            ACME_NS,
            "delete",
            "networkpolicy",
            "tenantry-isolation",
        ])
        .output()
        .unwrap();
    denied_with(&out, "tenantry-managed-objects");
    cluster.kubectl(&[
        "-n",
        ACME_NS,
        "delete",
        "networkpolicy",
        "tenantry-isolation",
    ]);
    eventually("the controller repairs the drift", || {
        exists(&["-n", ACME_NS, "get", "networkpolicy", "tenantry-isolation"])
    });

    eprintln!("scenario: suspension scales a tenant's workloads to zero; resuming restores them");
    let web = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "e2e-web", "namespace": ACME_NS},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "e2e-web"}},
            "template": {"metadata": {"labels": {"app": "e2e-web"}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}});
    allowed(&cluster.as_user_with("e2e-alice", &create, &web));
    let replicas = || {
        cluster.kubectl(&[
            "-n",
            ACME_NS,
            "get",
            "deployment",
            "e2e-web",
            "-o",
            "jsonpath={.spec.replicas}/{.metadata.annotations.tenantry\\.dev/replicas-before-scale-down}",
        ])
    };

    eprintln!("scenario: a suspended tenant can no longer create objects");
    cluster.set_tenants("suspended");
    let mut attempt = 0;
    eventually("the webhook reloads the tenants file", || {
        attempt += 1;
        let name = format!("after-suspension-{attempt}");
        let out = cluster.as_user_with("e2e-alice", &create, &configmap(&name, ACME_NS));
        if out.status.success() {
            return false;
        }
        denied_with(&out, "suspended-tenant");
        true
    });
    eventually(
        "the controller scales the suspended tenant's Deployment to zero",
        || replicas() == "0/2",
    );
    eventually(
        "the suspended tenant's members lose their RoleBindings",
        || !exists(&["-n", ACME_NS, "get", "rolebinding", "tenantry-developer"]),
    );
    cluster.set_tenants("active");
    eventually("the tenant is resumed", || {
        attempt += 1;
        let name = format!("after-resume-{attempt}");
        cluster
            .as_user_with("e2e-alice", &create, &configmap(&name, ACME_NS))
            .status
            .success()
    });
    eventually(
        "the controller gives the Deployment its replicas back",
        || replicas() == "2/",
    );

    eprintln!("scenario: a deleted tenant is refused everything, then purged");
    cluster.set_tenants_with(
        "active",
        "    status: deleted\n    purge_after: 2099-01-01T00:00:00Z\n",
    );
    eventually("the deleted tenant's writes are refused", || {
        attempt += 1;
        let name = format!("after-deletion-{attempt}");
        let out = cluster.as_user_with("e2e-bob", &create, &configmap(&name, GLOBEX_NS));
        !out.status.success() && stderr(&out).contains("deleted")
    });
    assert!(
        exists(&["get", "namespace", GLOBEX_NS]),
        "kept during the grace period"
    );
    cluster.set_tenants_with(
        "active",
        "    status: deleted\n    purge_after: 2020-01-01T00:00:00Z\n",
    );
    eventually(
        "the controller deletes the purged tenant's namespace",
        || {
            let phase = cluster
                .command()
                .args([
                    "get",
                    "namespace",
                    GLOBEX_NS,
                    "-o",
                    "jsonpath={.status.phase}",
                ])
                .output()
                .unwrap();
            !phase.status.success() || phase.stdout == b"Terminating"
        },
    );
}
