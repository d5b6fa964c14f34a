//! The `tenantry` binary, run as users run it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use tenantry_tests::{Postgres, repo_root};

fn tenantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("TENANTRY_TENANTS")
        .env_remove("TENANTRY_POLICIES")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory unique to this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tenantry-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: web, image: nginx, resources: {requests: {cpu: 500m}}}]}\n";

#[test]
fn demo_runs_on_the_embedded_default() {
    let out = tenantry(&["demo"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("All 15 writes were decided as the scenario expects."),
        "{text}"
    );
    assert!(text.contains("DENIED") && text.contains("ALLOWED"));
    for line in [
        "-> 200 OK",
        "-> 401 Unauthorized",
        "-> 403 Forbidden",
        "-> 429 Too Many Requests",
    ] {
        assert!(
            text.contains(line),
            "the enforcer part shows {line}: {text}"
        );
    }
}

#[test]
fn review_exit_codes_say_allowed_denied_or_bad_input() {
    let dir = scratch("exit");
    let pod = write(&dir, "pod.yaml", POD);
    let allowed = tenantry(&["review", "-f", &pod, "--user", "alice", "-n", "acme-dev"]);
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}{}",
        stdout(&allowed),
        stderr(&allowed)
    );
    assert!(stdout(&allowed).starts_with("ALLOWED  Pod web"));

    let denied = tenantry(&["review", "-f", &pod, "--user", "bob", "-n", "acme-dev"]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        stdout(&denied).contains("[policy cross-tenant-write]"),
        "{}",
        stdout(&denied)
    );

    let broken = write(&dir, "broken.yaml", "kind: Pod\nmetadata: {name: x}\n");
    let bad = tenantry(&["review", "-f", &broken, "--user", "alice"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("the manifest has no `apiVersion`"),
        "{}",
        stderr(&bad)
    );

    let not_yaml = write(&dir, "not.yaml", "key: [unclosed\n");
    assert_eq!(
        tenantry(&["review", "-f", &not_yaml, "--user", "alice"])
            .status
            .code(),
        Some(2)
    );

    let mismatch = write(
        &dir,
        "ns.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: acme-dev}\n",
    );
    let out = tenantry(&[
        "review",
        "-f",
        &mismatch,
        "--user",
        "alice",
        "-n",
        "acme-prod",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("does not match the namespace `acme-prod`"),
        "{}",
        stderr(&out)
    );

    let update = tenantry(&[
        "review",
        "-f",
        &pod,
        "--user",
        "alice",
        "-n",
        "acme-dev",
        "--operation",
        "UPDATE",
    ]);
    assert_eq!(update.status.code(), Some(2));
    assert!(stderr(&update).contains("--old"), "{}", stderr(&update));
}

#[test]
fn review_json_has_the_contract_fields() {
    let dir = scratch("json");
    let pod = write(&dir, "pod.yaml", POD);
    let out = tenantry(&[
        "review", "-f", &pod, "--user", "alice", "-n", "acme-dev", "-o", "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "allowed", "message", "reasons", "warnings", "patch", "object",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["allowed"], true);
    assert_eq!(
        v["object"]["metadata"]["labels"]["tenantry.dev/tenant"],
        "acme"
    );
    assert_eq!(
        v["object"]["spec"]["initContainers"][0]["name"],
        "tenantry-enforcer"
    );
    let ops = v["patch"].as_array().unwrap();
    assert!(
        ops.iter().any(|op| op["path"] == "/spec/initContainers"),
        "{ops:?}"
    );
}

#[test]
fn review_state_supplies_usage_for_quotas() {
    let dir = scratch("state");
    let pod = write(&dir, "pod.yaml", &POD.replace("500m", "1"));
    let fits = tenantry(&["review", "-f", &pod, "--user", "bob", "-n", "globex-prod"]);
    assert_eq!(fits.status.code(), Some(0), "{}", stdout(&fits));
    let state = repo_root().join("examples/state.yaml");
    let over = tenantry(&[
        "review",
        "-f",
        &pod,
        "--user",
        "bob",
        "-n",
        "globex-prod",
        "--state",
        state.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(over.status.code(), Some(1), "{}", stdout(&over));
    assert!(
        stdout(&over).contains("requests.cpu: 1500m used + 1050m requested > 2 allowed"),
        "{}",
        stdout(&over)
    );
}

#[test]
fn policy_check_reports_file_line_and_keeps_nothing() {
    let out = tenantry(&["policy", "check", "policies"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: "));

    let dir = scratch("check");
    for entry in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    write(
        &dir,
        "zz-bad.cedar",
        "@id(\"typo\")\n@message(\"m\")\nforbid (principal, action == Action::\"create\", resource)\nwhen { resource.onwer.status == \"x\" };\n",
    );
    let out = tenantry(&["policy", "check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("zz-bad.cedar:4:8:"), "{err}");
    assert!(err.contains("onwer"), "{err}");
    assert!(err.contains("nothing in"), "{err}");
}

#[test]
fn policy_fmt_check_and_fix() {
    let out = tenantry(&["policy", "fmt", "--check", "policies"]);
    assert!(
        out.status.success(),
        "shipped policies are formatted: {}",
        stdout(&out)
    );
    let dir = scratch("fmt");
    std::fs::copy(
        repo_root().join("policies/tenantry.cedarschema"),
        dir.join("tenantry.cedarschema"),
    )
    .unwrap();
    let messy = write(
        &dir,
        "messy.cedar",
        "@id(\"a\")\npermit(principal,action,resource);\n",
    );
    let check = tenantry(&["policy", "fmt", "--check", dir.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    assert!(stdout(&check).contains("would reformat"));
    assert!(
        tenantry(&["policy", "fmt", dir.to_str().unwrap()])
            .status
            .success()
    );
    assert_eq!(
        std::fs::read_to_string(&messy).unwrap(),
        "@id(\"a\")\npermit (principal, action, resource);\n"
    );
    assert!(
        tenantry(&["policy", "fmt", "--check", dir.to_str().unwrap()])
            .status
            .success()
    );
}

#[test]
fn shipped_policy_tests_pass_and_cover_every_admission_policy() {
    let out = tenantry(&["policy", "test", "policies"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains(" passed, 0 failed"), "{text}");
    // Traffic policies are exercised by the enforcer, not by admission reviews.
    if let Some(line) = text
        .lines()
        .find(|l| l.starts_with("forbid policies no case shows denying"))
    {
        let untested: Vec<&str> = line.split(": ").nth(1).unwrap().split(", ").collect();
        assert!(untested.iter().all(|p| p.starts_with("traffic-")), "{line}");
    }
}

#[test]
fn a_failing_policy_test_fails_the_command() {
    let dir = scratch("failing");
    for name in ["tenantry.cedarschema", "baseline.cedar", "isolation.cedar"] {
        std::fs::copy(repo_root().join("policies").join(name), dir.join(name)).unwrap();
    }
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    write(
        &dir.join("tests"),
        "wrong.yaml",
        "cases:\n  - name: expects the impossible\n    user: bob\n    namespace: acme-prod\n    object: {apiVersion: v1, kind: ConfigMap, metadata: {name: c}}\n    expect: {allowed: true}\n",
    );
    let out = tenantry(&["policy", "test", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("FAIL"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("expected allowed, got denied"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn tenants_lifecycle_against_postgres() {
    let pg = Postgres::start().unwrap();
    let url = pg.url();
    let example = repo_root().join("examples/tenants.yaml");
    assert!(tenantry(&["migrate", "--tenants", &url]).status.success());
    let import = tenantry(&[
        "tenants",
        "import",
        example.to_str().unwrap(),
        "--tenants",
        &url,
    ]);
    assert!(import.status.success(), "{}", stderr(&import));
    assert!(
        tenantry(&[
            "tenants",
            "import",
            example.to_str().unwrap(),
            "--tenants",
            &url
        ])
        .status
        .success(),
        "idempotent"
    );

    let list = stdout(&tenantry(&["tenants", "list", "--tenants", &url]));
    assert!(
        list.lines().any(|l| l.starts_with("acme")
            && l.contains("enterprise")
            && l.contains("acme-dev,acme-prod")),
        "{list}"
    );

    assert!(
        tenantry(&[
            "tenants",
            "set-tier",
            "globex",
            "business",
            "--tenants",
            &url
        ])
        .status
        .success()
    );
    assert!(
        tenantry(&["tenants", "suspend", "acme", "--tenants", &url])
            .status
            .success()
    );
    let show = stdout(&tenantry(&["tenants", "show", "acme", "--tenants", &url]));
    assert!(show.contains("status: suspended"), "{show}");

    let dir = scratch("pg");
    let pod = write(&dir, "pod.yaml", POD);
    let out = tenantry(&[
        "review",
        "-f",
        &pod,
        "--user",
        "alice",
        "-n",
        "acme-dev",
        "--tenants",
        &url,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "suspension in Postgres changes decisions: {}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("suspended-tenant"));
    assert!(
        tenantry(&["tenants", "resume", "acme", "--tenants", &url])
            .status
            .success()
    );
    let out = tenantry(&[
        "review",
        "-f",
        &pod,
        "--user",
        "alice",
        "-n",
        "acme-dev",
        "--tenants",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(0));

    // Deletion: refused at once, purge time recorded, restorable until then.
    let deleted = tenantry(&[
        "tenants",
        "delete",
        "acme",
        "--grace-period",
        "7d",
        "--tenants",
        &url,
    ]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(
        stdout(&deleted).contains("deleted after"),
        "{}",
        stdout(&deleted)
    );
    let show = stdout(&tenantry(&["tenants", "show", "acme", "--tenants", &url]));
    assert!(
        show.contains("status: deleted") && show.contains("purge_after:"),
        "{show}"
    );
    let review_alice = || {
        tenantry(&[
            "review",
            "-f",
            &pod,
            "--user",
            "alice",
            "-n",
            "acme-dev",
            "--tenants",
            &url,
        ])
    };
    let out = review_alice();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("deleted-tenant"), "{}", stdout(&out));
    let both = tenantry(&[
        "tenants",
        "delete",
        "acme",
        "--now",
        "--grace-period",
        "1d",
        "--tenants",
        &url,
    ]);
    assert_eq!(
        both.status.code(),
        Some(2),
        "--now and a grace period conflict"
    );
    assert!(
        tenantry(&["tenants", "resume", "acme", "--tenants", &url])
            .status
            .success()
    );
    let show = stdout(&tenantry(&["tenants", "show", "acme", "--tenants", &url]));
    assert!(
        show.contains("status: active") && !show.contains("purge_after"),
        "restoring cancels the purge: {show}"
    );
    assert_eq!(review_alice().status.code(), Some(0));

    let unknown = tenantry(&["tenants", "set-tier", "acme", "gold", "--tenants", &url]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("unknown tier `gold`"),
        "{}",
        stderr(&unknown)
    );
    let nobody = tenantry(&["tenants", "suspend", "hooli", "--tenants", &url]);
    assert!(stderr(&nobody).contains("unknown tenant `hooli`"));
}

#[test]
fn tenant_sources_fail_with_actionable_messages() {
    let yaml_write = tenantry(&[
        "tenants",
        "suspend",
        "acme",
        "--tenants",
        "examples/tenants.yaml",
    ]);
    assert_eq!(yaml_write.status.code(), Some(2));
    assert!(
        stderr(&yaml_write).contains("is a YAML file; edit it directly"),
        "{}",
        stderr(&yaml_write)
    );

    let dir = scratch("sources");
    let bad = write(
        &dir,
        "tenants.yaml",
        "tiers: {free: {limits: {pods: lots}}}\ntenants: {}\n",
    );
    let out = tenantry(&["tenants", "list", "--tenants", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tiers.free.limits.pods: `lots` is not a Kubernetes quantity"),
        "{}",
        stderr(&out)
    );

    let port = tenantry_tests::free_port().unwrap();
    let url = format!("postgres://tenantry:hunter2@127.0.0.1:{port}/tenantry");
    let out = tenantry(&["tenants", "list", "--tenants", &url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot connect to PostgreSQL at `postgres://tenantry:***@"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("hunter2"));
}

/// What a new user tripped on, each checked the way they met it.
#[test]
fn first_contact_rough_edges_are_gone() {
    let dir = scratch("rough");

    // An error names its cause once, not once per layer that wrapped it.
    let bad = write(
        &dir,
        "tenants.yaml",
        "tiers: {free: {}}\ntenants: {acme: {tier: gold}}\n",
    );
    let out = tenantry(&["tenants", "list", "--tenants", &bad]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).matches("unknown tier `gold`").count(),
        1,
        "{}",
        stderr(&out)
    );

    // `policy fmt` on a file that does not parse says where, like `policy check`.
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::copy(
        repo_root().join("policies/tenantry.cedarschema"),
        policies.join("tenantry.cedarschema"),
    )
    .unwrap();
    let broken = write(
        &policies,
        "broken.cedar",
        "@id(\"a\")\npermit (principal, action resource);\n",
    );
    let out = tenantry(&["policy", "fmt", policies.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{broken}:2:")),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("offset"), "{}", stderr(&out));

    // `review … -o json | head`: a reader that goes away is not a crash.
    let many: String = (0..400)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}}}\n"))
        .collect();
    let manifests = write(&dir, "many.yaml", &many);
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "review", "-f", &manifests, "--user", "alice", "-n", "acme-dev",
        ])
        .args(["-o", "json"])
        .current_dir(repo_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "a closed pipe ended the review with {status}"
    );

    // `review` says which policy set it used; with ./policies present, that one.
    let out = tenantry(&[
        "review", "-f", &manifests, "--user", "alice", "-n", "acme-dev",
    ]);
    assert!(
        stderr(&out).contains("policies: policies ("),
        "{}",
        stderr(&out)
    );

    // Keys are not written into the repository's `certs/` crate.
    let out = tenantry(&["certs", "generate", "--out", "certs/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("Rust crate directory"),
        "{}",
        stderr(&out)
    );
    assert!(!repo_root().join("certs/tls.key").exists());

    // `tenants export` prints a file `import` reads back to the same directory.
    let out = tenantry(&["tenants", "export", "--tenants", "examples/tenants.yaml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let exported: serde_json::Value = serde_saphyr::from_str(&stdout(&out)).unwrap();
    let original: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("examples/tenants.yaml")).unwrap(),
    )
    .unwrap();
    let reread = write(&dir, "exported.yaml", &stdout(&out));
    let again = tenantry(&["tenants", "export", "--tenants", &reread]);
    assert_eq!(stdout(&again), stdout(&out), "export is a fixed point");
    assert_eq!(
        exported["tenants"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        original["tenants"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
}

/// A ConfigMap as the webhook would have stored it: through `tenantry review`'s mutation.
fn admitted_config_map() -> Value {
    let dir = std::env::temp_dir().join(format!("tenantry-audit-cm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n",
    )
    .unwrap();
    let out = tenantry(&[
        "review",
        "-f",
        manifest.to_str().unwrap(),
        "--user",
        "alice",
        "-n",
        "acme-dev",
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value = serde_json::from_slice(&out.stdout).unwrap();
    outcome["object"].clone()
}

/// `tenantry audit` against an API server (the tests' in-process one, speaking the real list
/// protocol kube-rs uses): objects that predate the policies are reported, compliant ones and
/// non-tenant namespaces are not.
#[test]
fn audit_reports_objects_the_policies_refuse_today_and_not_compliant_ones() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let api = tenantry_tests::api_server::ApiServer::new();
    api.missing("/apis/gateway.networking.k8s.io");
    let namespace =
        |name: &str| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    for ns in ["acme-dev", "kube-system"] {
        api.event("/api/v1/namespaces", "ADDED", namespace(ns));
    }
    let privileged = |ns: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "miner", "namespace": ns, "uid": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"nodeName": "worker-1",
                        "containers": [{"name": "m", "image": "miner", "securityContext": {"privileged": true}}]},
               "status": {"phase": "Running"}})
    };
    // Created before Tenantry: privileged, no enforcer, no labels.
    api.event("/api/v1/pods", "ADDED", privileged("acme-dev"));
    // kube-system is nobody's: not judged.
    api.event("/api/v1/pods", "ADDED", privileged("kube-system"));
    // Admitted through the webhook: compliant.
    api.event("/api/v1/configmaps", "ADDED", admitted_config_map());
    let addr = runtime.block_on(api.serve()).unwrap();
    let dir = std::env::temp_dir().join(format!("tenantry-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    tenantry_tests::api_server::write_kubeconfig(addr, &kubeconfig).unwrap();

    let out = tenantry(&[
        "audit",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "-o",
        "json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "violations exit 1: {stderr}");
    assert!(
        stderr.contains("HTTPRoute not listed: the cluster does not serve it"),
        "{stderr}"
    );
    let found: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.len(), 1, "only the pod in acme-dev: {found:#?}");
    let pod = &found[0];
    assert_eq!(
        (
            pod["namespace"].as_str(),
            pod["kind"].as_str(),
            pod["name"].as_str()
        ),
        (Some("acme-dev"), Some("Pod"), Some("miner"))
    );
    assert_eq!(pod["tenant"], "acme");
    assert_eq!(pod["audit_only"], false);
    let policies: Vec<&str> = pod["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(policies.contains(&"pod-privileged"), "{policies:?}");
    assert!(
        !policies.contains(&"pod-binding"),
        "the scheduler's nodeName is not the tenant's: {policies:?}"
    );

    let text = tenantry(&["audit", "--kubeconfig", kubeconfig.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.starts_with("refused  acme-dev/Pod miner (tenant acme"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&text.stderr)
            .contains("2 tenant objects judged, 1 would be refused today"),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
}
