//! `tenantry policy verify` and `diff`, run as users run them, with the real cvc5 solver.
//!
//! Nothing here is skipped when the solver is missing: the proofs are part of what the test
//! suite checks, so a machine without cvc5 fails and says how to get it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tenantry_tests::repo_root;

fn tenantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("TENANTRY_POLICIES")
        .env_remove("TENANTRY_PROPERTIES")
        .env_remove("TENANTRY_ALL_ATTRIBUTES")
        .output()
        .unwrap()
}

/// The solver the binary will find (`--cvc5`, `$CVC5`, `cvc5` on PATH), or a failing test.
fn require_solver() {
    if let Some(path) = std::env::var_os("TENANTRY_CVC5").or_else(|| std::env::var_os("CVC5")) {
        assert!(
            Path::new(&path).is_file(),
            "TENANTRY_CVC5/CVC5 names `{}`, which does not exist: scripts/test installs cvc5 (apt-get install cvc5)",
            Path::new(&path).display()
        );
        return;
    }
    let on_path = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join("cvc5").is_file());
    assert!(
        on_path,
        "the cvc5 SMT solver is not installed (no `cvc5` on PATH, CVC5 unset): scripts/test installs it (apt-get install cvc5)"
    );
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A scratch directory unique to this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tenantry-verify-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the shipped policies (schema and `*.cedar`) with `edit` applied to `file`.
fn policies_with(name: &str, file: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let dir = scratch(name);
    let shipped = repo_root().join("policies");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let mut text = std::fs::read_to_string(&path).unwrap();
            if path.file_name().unwrap() == file {
                let edited = edit(&text);
                assert_ne!(edited, text, "the edit of {file} changed nothing");
                text = edited;
            }
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    dir
}

/// The shipped policies without the `cross-tenant-write` forbid.
fn without_cross_tenant_write(name: &str) -> PathBuf {
    policies_with(name, "isolation.cedar", |text| {
        let start = text.find("@id(\"cross-tenant-write\")").unwrap();
        let end = start + text[start..].find("};").unwrap() + 2;
        format!("{}{}", &text[..start], &text[end..])
    })
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn the_shipped_properties_hold_for_the_shipped_policies() {
    require_solver();
    let out = tenantry(&["policy", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = stdout(&out);
    // The three the threat model promises, by name, and nothing that did not hold.
    for id in [
        "no-cross-tenant-writes",
        "cluster-deletes-and-connects",
        "cluster-writes",
        "suspended-tenant-frozen",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("holds") && l.contains(id)),
            "{id} holds: {stdout}"
        );
    }
    for bad in ["FAILS", "UNKNOWN", "UNPROVED", "VACUOUS"] {
        assert!(!stdout.contains(bad), "{stdout}");
    }
    assert!(stdout.contains(" 0 failed, 0 not proved"), "{stdout}");
    // Each property is timed.
    assert!(
        stdout.lines().filter(|l| l.ends_with(" s)")).count() >= 7,
        "{stdout}"
    );
}

#[test]
fn removing_the_cross_tenant_forbid_fails_isolation_with_a_counterexample() {
    require_solver();
    let broken = without_cross_tenant_write("broken");
    let properties = repo_root().join("policies/properties");
    let out = tenantry(&[
        "policy",
        "verify",
        path(&broken),
        "--properties",
        path(&properties),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = stdout(&out);
    let failure = stdout
        .split("FAILS    no-cross-tenant-writes")
        .nth(1)
        .unwrap_or_else(|| panic!("no-cross-tenant-writes fails: {stdout}"));
    let example: String = failure
        .lines()
        .take_while(|l| !l.starts_with("holds") && !l.starts_with("FAILS"))
        .collect::<Vec<_>>()
        .join("\n");
    // A request a member of some tenant makes, on an object outside their tenant, allowed.
    assert!(
        example.contains("counterexample") && example.contains("the policies allow this request"),
        "{example}"
    );
    for part in [
        "principal",
        "tenant_member: true",
        "cluster_component: false",
        "action",
        "resource",
        "owner:",
        "evaluated: allowed",
    ] {
        assert!(example.contains(part), "{part} in {example}");
    }
    // The rest of the boundary does not hang on that one forbid.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("holds") && l.contains("suspended-tenant-frozen")),
        "{stdout}"
    );
}

#[test]
fn diff_lists_the_writes_a_removed_forbid_newly_allows() {
    require_solver();
    let broken = without_cross_tenant_write("diff-broken");
    let out = tenantry(&["policy", "diff", "policies", path(&broken)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = stdout(&out);
    for kind in [
        "User create Object",
        "User update Object",
        "User delete Object",
        "User connect Object",
        "ServiceAccount create Object",
    ] {
        assert!(
            stdout.contains(&format!("{kind}: newly allowed")),
            "{kind}: {stdout}"
        );
    }
    assert!(!stdout.contains("newly denied,"), "{stdout}");
    assert!(
        stdout.contains("old: denied by cross-tenant-write"),
        "{stdout}"
    );
    assert!(
        stdout.contains("unchanged: Tenant request Service"),
        "{stdout}"
    );
}

#[test]
fn diff_of_a_directory_with_itself_reports_no_change() {
    require_solver();
    let out = tenantry(&["policy", "diff", "policies", "policies"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("no change"), "{}", text(&out));
}

#[test]
fn an_audit_mode_forbid_is_not_counted_as_enforced() {
    require_solver();
    let audited = policies_with("audited", "isolation.cedar", |text| {
        text.replace(
            "@id(\"cross-tenant-write\")",
            "@id(\"cross-tenant-write\")\n@mode(\"audit\")",
        )
    });
    let out = tenantry(&["policy", "diff", "policies", path(&audited)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = stdout(&out);
    assert!(
        stdout.contains("left out of new (audit mode, never deny): cross-tenant-write"),
        "{stdout}"
    );
    assert!(
        stdout.contains("User create Object: newly allowed"),
        "{stdout}"
    );
}

/// The unrestricted statement of (b) is false by design; the README explains why with the
/// counterexample this prints.
#[test]
fn the_unrestricted_cluster_property_is_refuted() {
    require_solver();
    let out = tenantry(&[
        "policy",
        "verify",
        "--properties",
        "cli/tests/verify/unrestricted",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = stdout(&out);
    assert!(stdout.contains("FAILS    cluster-never-denied"), "{stdout}");
    assert!(
        stdout.contains("the policies deny this request")
            && stdout.contains("cluster_component: true")
            && stdout.contains("evaluated: denied by "),
        "{stdout}"
    );
}

#[test]
fn malformed_properties_are_bad_input() {
    // Refused before the solver starts: no cvc5 needed.
    let dir = scratch("malformed");
    let cases = [
        (
            "@id(\"p\")\n@property(\"x\")\n@check(\"sometimes\")\npermit (principal, action, resource);\n",
            "@check(\"sometimes\")",
        ),
        (
            "@id(\"p\")\n@check(\"never\")\npermit (principal, action, resource);\n",
            "@property",
        ),
        (
            "@id(\"p\")\n@property(\"x\")\n@check(\"never\")\n@ignore_annotation(\"quota\")\npermit (principal, action, resource);\n",
            "unknown annotation `@ignore_annotation`",
        ),
        (
            "@id(\"p\")\n@property(\"x\")\n@check(\"never\")\n@message(\"m\")\nforbid (principal, action, resource);\n",
            "must be a `permit`",
        ),
        (
            "@id(\"p\")\n@property(\"x\")\n@check(\"never\")\npermit (principal, action, resource) when { resource.no_such };\n",
            "no_such",
        ),
    ];
    for (source, expected) in cases {
        std::fs::write(dir.join("p.cedar"), source).unwrap();
        let out = tenantry(&["policy", "verify", "--properties", path(&dir)]);
        assert_eq!(out.status.code(), Some(2), "{source}\n{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected} in {}", text(&out));
    }
}

#[test]
fn a_property_about_no_request_is_vacuous_not_proved() {
    require_solver();
    let dir = scratch("vacuous");
    std::fs::write(
        dir.join("p.cedar"),
        "@id(\"nobody\")\n@property(\"no request at all\")\n@check(\"never\")\npermit (principal, action in Action::\"admission\", resource)\nwhen { principal.cluster_component && !principal.cluster_component };\n",
    )
    .unwrap();
    let out = tenantry(&["policy", "verify", "--properties", path(&dir)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stdout(&out).contains("VACUOUS  nobody"), "{}", text(&out));
}
