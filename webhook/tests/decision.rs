//! The decision functions on AdmissionReview bodies shaped exactly like the API server's
//! (fixtures/*.json), against the embedded example tenants and shipped policies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use serde_json::{Value, json};
use tenantry_tenancy::policy::SourceFile;
use tenantry_tenancy::{Directory, PolicyEngine};
use tenantry_webhook::admission::ReviewError;
use tenantry_webhook::pod::SidecarMode;
use tenantry_webhook::usage::NoUsage;
use tenantry_webhook::{
    AdmissionRequest, AdmissionReview, Decision, InjectionConfig, Inputs, decide, embedded, mutate,
};

struct World {
    directory: Directory,
    policies: PolicyEngine,
    injection: InjectionConfig,
    boundary: tenantry_webhook::Boundary,
}

impl World {
    fn new() -> World {
        World {
            directory: embedded::directory().unwrap(),
            policies: embedded::policies().unwrap(),
            injection: InjectionConfig::default(),
            boundary: tenantry_webhook::Boundary::default(),
        }
    }
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            directory: &self.directory,
            usage: &NoUsage,
            policies: &self.policies,
            injection: &self.injection,
            boundary: &self.boundary,
        }
    }
    fn mutate(&self, req: &AdmissionRequest) -> Decision {
        decide::mutate(&self.inputs(), req)
    }
    fn validate(&self, req: &AdmissionRequest) -> Decision {
        decide::validate(&self.inputs(), req)
    }
    /// Mutation, the patch applied, then validation: the API server's sequence.
    fn admit(&self, req: &AdmissionRequest) -> (Decision, Decision, AdmissionRequest) {
        let m = self.mutate(req);
        let mut patched = req.clone();
        if let Some(patch) = m.response.decoded_patch() {
            json_patch::patch(&mut patched.object, &patch).unwrap();
        }
        let v = self.validate(&patched);
        (m, v, patched)
    }
}

fn fixture(name: &str) -> AdmissionRequest {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    AdmissionReview::parse_request(&std::fs::read(&path).unwrap()).unwrap()
}

fn patch_ops(d: &Decision) -> Vec<Value> {
    serde_json::to_value(
        d.response
            .decoded_patch()
            .unwrap_or(json_patch::Patch(vec![])),
    )
    .unwrap()
    .as_array()
    .unwrap()
    .clone()
}

#[test]
fn pod_create_is_stamped_scheduled_injected_and_then_admitted() {
    let w = World::new();
    let req = fixture("pod-create.json");
    let (m, v, patched) = w.admit(&req);
    assert_eq!(m.response.uid, req.uid);
    assert!(m.response.allowed);
    assert_eq!(m.response.patch_type.as_deref(), Some("JSONPatch"));
    let ops = patch_ops(&m);
    let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert!(
        paths.contains(&"/metadata/labels/tenantry.dev~1tenant"),
        "label keys are escaped: {paths:?}"
    );
    assert!(
        paths.contains(&"/spec/priority"),
        "the resolved priority is dropped with the class: {paths:?}"
    );

    let obj = &patched.object;
    let labels = &obj["metadata"]["labels"];
    assert_eq!(labels["tenantry.dev/tenant"], "acme");
    assert_eq!(labels["tenantry.dev/tier"], "enterprise");
    assert_eq!(labels["tenantry.dev/team"], "backend");
    assert_eq!(labels["tenantry.dev/client"], "globalcorp");
    assert_eq!(labels["app"], "web", "the user's labels stay");
    assert_eq!(obj["spec"]["priorityClassName"], "tenant-enterprise");
    assert_eq!(
        obj["spec"]["nodeSelector"]["tenantry.dev/pool"],
        "dedicated"
    );
    let tolerations = obj["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(
        tolerations.len(),
        3,
        "the defaults stay and the tier's is added: {tolerations:?}"
    );
    let sidecar = &obj["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "tenantry-enforcer");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    let env: Vec<(String, String)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(env.contains(&("TENANTRY_TENANT".into(), "acme".into())));
    assert!(env.contains(&("TENANTRY_TIER".into(), "enterprise".into())));
    assert!(
        env.contains(&("TENANTRY_UPSTREAM".into(), "127.0.0.1:8080".into())),
        "{env:?}"
    );

    assert!(v.response.allowed, "{:?}", v.response);
    assert_eq!(v.response.uid, req.uid);
    assert_eq!(v.tenant.as_deref(), Some("acme"));
}

#[test]
fn mutation_is_idempotent() {
    let w = World::new();
    for name in ["pod-create.json", "pod-create-generatename.json"] {
        let (_, _, patched) = w.admit(&fixture(name));
        let again = w.mutate(&patched);
        assert!(again.response.allowed);
        assert_eq!(
            again.response.patch,
            None,
            "{name}: second mutation yields no patch: {:?}",
            patch_ops(&again)
        );
    }
}

#[test]
fn a_pod_that_skipped_mutation_is_denied_at_validation() {
    let w = World::new();
    let v = w.validate(&fixture("pod-create.json"));
    assert!(!v.response.allowed);
    for policy in ["enforcer-required", "tenant-labels", "tier-scheduling"] {
        assert!(
            v.denied_by.contains(&policy.to_string()),
            "{policy} in {:?}",
            v.denied_by
        );
    }
    let status = v.response.status.as_ref().unwrap();
    assert_eq!(status.code, 403);
    assert!(
        status
            .message
            .contains("tenantry-enforcer sidecar exactly as Tenantry injects it"),
        "{}",
        status.message
    );
}

#[test]
fn an_altered_sidecar_is_denied() {
    let w = World::new();
    let (_, _, mut patched) = w.admit(&fixture("pod-create.json"));
    patched.object["spec"]["initContainers"][0]["image"] = json!("evil/enforcer:latest");
    let v = w.validate(&patched);
    assert!(
        v.denied_by.contains(&"enforcer-required".to_string()),
        "{:?}",
        v.response
    );
    // The API server's defaulting after mutation is not an alteration.
    let (_, _, mut defaulted) = w.admit(&fixture("pod-create.json"));
    defaulted.object["spec"]["initContainers"][0]["imagePullPolicy"] = json!("IfNotPresent");
    defaulted.object["spec"]["initContainers"][0]["terminationMessagePath"] =
        json!("/dev/termination-log");
    defaulted.object["spec"]["initContainers"][0]["readinessProbe"]["timeoutSeconds"] = json!(1);
    assert!(w.validate(&defaulted).response.allowed);
}

#[test]
fn a_sidecar_the_pod_brought_itself_is_replaced() {
    let w = World::new();
    let mut req = fixture("pod-create.json");
    req.object["spec"]["initContainers"] = json!([{"name": "tenantry-enforcer", "image": "busybox", "restartPolicy": "Always", "command": ["sleep", "inf"]}]);
    let (_, v, patched) = w.admit(&req);
    assert!(v.response.allowed, "{:?}", v.response);
    let init = patched.object["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0]["image"], w.injection.image);
}

#[test]
fn container_mode_injects_a_plain_container() {
    let mut w = World::new();
    w.injection.mode = SidecarMode::Container;
    let (_, v, patched) = w.admit(&fixture("pod-create.json"));
    assert!(v.response.allowed, "{:?}", v.response);
    let containers = patched.object["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers[0]["name"], "tenantry-enforcer");
    assert!(containers[0].get("restartPolicy").is_none());
    assert!(patched.object["spec"].get("initContainers").is_none());
}

#[test]
fn dry_run_is_decided_identically() {
    let w = World::new();
    let wet = fixture("pod-create.json");
    let dry = fixture("pod-create-dry-run.json");
    assert!(dry.is_dry_run());
    let (wm, wv, _) = w.admit(&wet);
    let (dm, dv, _) = w.admit(&dry);
    assert_eq!(wm.response.patch, dm.response.patch);
    assert_eq!(wv.response.allowed, dv.response.allowed);
    // And a denied write stays denied when dry.
    let mut bad = dry.clone();
    bad.user_info.username = "bob".into();
    bad.user_info.groups = vec!["globex-devs".into()];
    assert!(!w.admit(&bad).1.response.allowed);
}

#[test]
fn controller_created_pods_with_generate_name_are_handled() {
    let w = World::new();
    let req = fixture("pod-create-generatename.json");
    assert_eq!(req.name.as_deref(), Some(""));
    let (m, v, patched) = w.admit(&req);
    assert!(m.response.allowed && v.response.allowed, "{:?}", v.response);
    assert_eq!(
        patched.object["metadata"]["labels"]["tenantry.dev/tenant"],
        "globex"
    );
    assert_eq!(patched.object["spec"]["priorityClassName"], "tenant-free");
    assert!(
        patched.object["metadata"]["labels"]
            .get("tenantry.dev/client")
            .is_none()
    );
}

#[test]
fn updates_keep_labels_and_relabelling_is_refused() {
    let w = World::new();
    let (m, v, _) = w.admit(&fixture("pod-update.json"));
    assert_eq!(m.response.patch, None);
    assert!(v.response.allowed, "{:?}", v.response);

    let (m, v, _) = w.admit(&fixture("pod-update-relabel.json"));
    assert_eq!(
        m.response.patch, None,
        "mutation does not quietly undo tampering"
    );
    assert!(!v.response.allowed);
    assert!(
        v.denied_by.contains(&"tenant-label-immutable".to_string()),
        "{:?}",
        v.denied_by
    );
}

#[test]
fn deletes_and_exec_into_another_tenant_are_refused() {
    let w = World::new();
    for name in ["pod-delete.json", "pod-exec.json"] {
        let req = fixture(name);
        let (m, v, _) = w.admit(&req);
        assert!(
            m.response.allowed && m.response.patch.is_none(),
            "{name}: mutation leaves it alone"
        );
        assert!(!v.response.allowed, "{name}");
        assert_eq!(
            v.denied_by,
            vec!["cross-tenant-write".to_string()],
            "{name}"
        );
        assert_eq!(v.response.uid, req.uid);
    }
}

#[test]
fn namespace_subresources_cannot_relabel() {
    let w = World::new();
    let (_, v, _) = w.admit(&fixture("namespace-finalize.json"));
    assert!(
        v.response.allowed,
        "the namespace controller finalizes: {:?}",
        v.response
    );
    let (_, v, _) = w.admit(&fixture("namespace-status-relabel.json"));
    assert!(!v.response.allowed);
    assert!(
        v.denied_by.contains(&"tenant-labels".to_string()),
        "{:?}",
        v.denied_by
    );
}

#[test]
fn ephemeral_containers_follow_the_cross_tenant_rule() {
    let w = World::new();
    let req = fixture("pod-ephemeralcontainers.json");
    assert_eq!(
        w.admit(&req).1.denied_by,
        vec!["cross-tenant-write".to_string()]
    );
    let mut own = req.clone();
    own.user_info.username = "alice".into();
    own.user_info.groups = vec!["acme-devs".into()];
    assert!(w.admit(&own).1.response.allowed);
}

#[test]
fn objects_without_labels_get_a_labels_map() {
    let w = World::new();
    let mut req = fixture("pod-update.json");
    req.operation = tenantry_webhook::Operation::Create;
    req.old_object = Value::Null;
    req.kind.kind = "ConfigMap".into();
    req.resource.resource = "configmaps".into();
    req.object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "acme-dev"}});
    let m = w.mutate(&req);
    let ops = patch_ops(&m);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0]["op"], "add");
    assert_eq!(ops[0]["path"], "/metadata/labels");
}

#[test]
fn objects_outside_tenant_namespaces_are_left_alone() {
    let w = World::new();
    let mut req = fixture("pod-create.json");
    req.namespace = Some("monitoring".into());
    req.object["metadata"]["namespace"] = json!("monitoring");
    req.user_info.username = "ops".into();
    req.user_info.groups = vec![];
    let (m, v, _) = w.admit(&req);
    assert_eq!(m.response.patch, None);
    assert!(v.response.allowed);
    assert_eq!(v.tenant, None);
}

#[test]
fn malformed_reviews_are_rejected_with_a_reason() {
    let cases: [(&[u8], &str); 5] = [
        (b"not json", "body is not an AdmissionReview"),
        (br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#, ""),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#, "expected apiVersion"),
        (br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, "has no `request`"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","kind":{},"resource":{},"operation":"CREATE"}}"#,
            "empty `uid`",
        ),
    ];
    for (body, want) in cases {
        let err: ReviewError = AdmissionReview::parse_request(body).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn unreadable_objects_are_denied_not_allowed() {
    let w = World::new();
    let mut req = fixture("pod-create.json");
    req.object["spec"]["containers"][0]["resources"]["requests"]["cpu"] = json!("a lot");
    let v = w.validate(&req);
    assert!(!v.response.allowed);
    let status = v.response.status.unwrap();
    assert_eq!(status.code, 400);
    assert!(
        status
            .message
            .contains("container `web` resources.requests.cpu"),
        "{}",
        status.message
    );

    let mut req = fixture("pod-create.json");
    req.object["metadata"]["annotations"]["tenantry.dev/app-port"] = json!("http");
    let m = w.mutate(&req);
    assert!(!m.response.allowed);
    assert!(
        m.response
            .message()
            .contains("tenantry.dev/app-port: `http` is not a port number")
    );
}

#[test]
fn a_policy_that_fails_to_evaluate_denies() {
    let (schema, mut policies) = embedded::policy_sources();
    // Strict validation rules out most runtime errors; integer overflow remains.
    policies.push(SourceFile {
        path: "broken.cedar".into(),
        text: "@id(\"overflows\")\n@message(\"x\")\nforbid (principal, action in Action::\"admission\", resource)\nwhen { context.requested.pods + 9223372036854775807 > 0 };\n".into(),
    });
    let w = World {
        directory: embedded::directory().unwrap(),
        policies: PolicyEngine::from_sources(&schema, &policies).unwrap(),
        injection: InjectionConfig::default(),
        boundary: tenantry_webhook::Boundary::default(),
    };
    let (_, v, _) = w.admit(&fixture("pod-create.json"));
    assert!(
        !v.response.allowed,
        "an erroring forbid must not turn into an allow"
    );
    assert!(
        v.response.message().contains("policy evaluation failed"),
        "{}",
        v.response.message()
    );
}

#[test]
fn an_audited_forbid_warns_and_admits_while_its_enforced_twin_denies() {
    let rule = |id: &str, mode: &str| {
        format!(
            "@id(\"{id}\")\n{mode}@message(\"pods need an owner label\")\nforbid (principal, action == Action::\"create\", resource)\nwhen {{ resource.kind == \"Pod\" && !resource.hasTag(\"owner\") }};\n"
        )
    };
    let world = |text: String| {
        let (schema, mut policies) = embedded::policy_sources();
        policies.push(SourceFile {
            path: "new.cedar".into(),
            text,
        });
        World {
            directory: embedded::directory().unwrap(),
            policies: PolicyEngine::from_sources(&schema, &policies).unwrap(),
            injection: InjectionConfig::default(),
            boundary: tenantry_webhook::Boundary::default(),
        }
    };
    let audited = world(rule("owner-label", "@mode(\"audit\")\n"));
    let (_, v, _) = audited.admit(&fixture("pod-create.json"));
    assert!(v.response.allowed, "{:?}", v.response);
    assert_eq!(v.audited, ["owner-label"]);
    assert!(
        v.response.warnings.iter().any(|w| w
            == "tenantry (audit, not enforced): pods need an owner label [policy owner-label]"),
        "{:?}",
        v.response.warnings
    );
    // A request the rule does not match (a delete) carries no warning.
    let (_, gone, _) = audited.admit(&fixture("pod-delete.json"));
    assert!(
        gone.audited.is_empty() && gone.response.warnings.is_empty(),
        "{gone:?}"
    );

    let enforced = world(rule("owner-label", ""));
    let (_, v, _) = enforced.admit(&fixture("pod-create.json"));
    assert!(!v.response.allowed);
    assert_eq!(v.denied_by, ["owner-label"]);
}

#[test]
fn transparent_mode_injects_the_redirect_init_container_first() {
    let mut w = World::new();
    w.injection.redirect = true;
    let (m, v, patched) = w.admit(&fixture("pod-create.json"));
    assert!(v.response.allowed, "{:?}", v.response);
    let init = patched.object["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "tenantry-enforcer-init");
    assert_eq!(init[0]["args"], json!(["init-redirect"]));
    assert_eq!(
        init[0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(init[1]["name"], "tenantry-enforcer");
    assert_eq!(
        init[1]["securityContext"]["runAsUser"], 1337,
        "the uid the redirect excludes"
    );
    let env = init[0]["env"].as_array().unwrap();
    assert!(
        env.contains(&json!({"name": "TENANTRY_APP_PORTS", "value": "8080"})),
        "{env:?}"
    );
    assert!(m.response.patch.is_some());
    assert_eq!(w.mutate(&patched).response.patch, None, "idempotent");

    // A pod that reaches validation without the redirect (or with its own) is denied.
    let mut stripped = patched.clone();
    stripped.object["spec"]["initContainers"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    assert!(
        w.validate(&stripped)
            .denied_by
            .contains(&"enforcer-required".to_string())
    );
    let mut tampered = patched.clone();
    tampered.object["spec"]["initContainers"][0]["env"][0]["value"] = json!("9999");
    assert!(
        w.validate(&tampered)
            .denied_by
            .contains(&"enforcer-required".to_string())
    );
}

#[test]
fn policies_can_read_a_members_role() {
    use tenantry_webhook::review::{self, Identity, Write};
    let (schema, mut policies) = embedded::policy_sources();
    policies.push(SourceFile {
        path: "viewers.cedar".into(),
        text: "@id(\"viewers-read-only\")\n@message(\"acme's viewers only read\")\nforbid (principal in Role::\"acme/viewer\", action in [Action::\"create\", Action::\"update\", Action::\"delete\"], resource);\n".into(),
    });
    let mut file = embedded::directory().unwrap().source().clone();
    let acme = file.tenants.get_mut("acme").unwrap();
    acme.members.viewers.users.push("carol".into());
    let w = World {
        directory: Directory::build(file, 2).unwrap(),
        policies: PolicyEngine::from_sources(&schema, &policies).unwrap(),
        injection: InjectionConfig::default(),
        boundary: tenantry_webhook::Boundary::default(),
    };
    let write = |user: &str| Write {
        object: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
        old: None,
        identity: Identity {
            user: user.into(),
            groups: vec![],
        },
        namespace: Some("acme-prod".into()),
        operation: tenantry_webhook::Operation::Create,
        dry_run: false,
        subresource: None,
        name: None,
    };
    let carol = review::admission_request(&write("carol"), "uid-carol").unwrap();
    let (_, v, _) = w.admit(&carol);
    assert_eq!(v.denied_by, ["viewers-read-only"], "{:?}", v.response);
    let alice = review::admission_request(&write("alice"), "uid-alice").unwrap();
    let (_, v, _) = w.admit(&alice);
    assert!(
        v.response.allowed,
        "a developer of acme writes: {:?}",
        v.response
    );
}

/// Mutation writes only labels and, in a new pod, the spec fields of scheduling and the
/// enforcer's container lists, and its patch says exactly what it wrote. Over
/// every fixture and the shapes mutation rewrites (no labels, no metadata, labels that are not a
/// map, a pod that brought its own `tenantry-enforcer`, init containers already there, each
/// sidecar mode and the redirect): mutation wrote nothing else, and the patch, applied to the
/// object as the API server holds it (with the `managedFields` the webhook does not read), gives
/// mutation's labels and spec and otherwise the object as sent.
#[test]
fn the_mutation_patch_covers_every_change_mutation_makes() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    // Each request as the webhook reads it, beside its object as sent.
    let as_sent = |body: &[u8]| -> Option<(AdmissionRequest, Value)> {
        let review: Value = serde_json::from_slice(body).ok()?;
        let req = AdmissionReview::parse_request(body).ok()?;
        Some((req, review["request"]["object"].clone()))
    };
    let mut corpus: Vec<(AdmissionRequest, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| as_sent(&std::fs::read(e.unwrap().path()).ok()?))
        .collect();
    assert!(corpus.len() >= 20, "fixtures not found in {dir}");
    let (pod, pod_sent) =
        as_sent(&std::fs::read(format!("{dir}/pod-create.json")).unwrap()).unwrap();
    assert!(pod_sent["metadata"]["managedFields"].is_array());
    let variant = |f: &dyn Fn(&mut Value)| {
        let (mut r, mut sent) = (pod.clone(), pod_sent.clone());
        f(&mut r.object);
        f(&mut sent);
        (r, sent)
    };
    corpus.extend([
        variant(&|o| {
            o["metadata"].as_object_mut().unwrap().remove("labels");
        }),
        variant(&|o| {
            o.as_object_mut().unwrap().remove("metadata");
        }),
        variant(&|o| o["metadata"]["labels"] = json!("not a map")),
        variant(&|o| {
            o["spec"]["initContainers"] =
                json!([{"name": "tenantry-enforcer", "image": "evil"}, {"name": "setup", "image": "busybox"}])
        }),
        variant(&|o| o["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox"}])),
        variant(&|o| o["spec"]["containers"] = json!("not a list")),
        variant(&|o| o["spec"]["tolerations"] = json!([{"key": "tenantry.dev/tier", "operator": "Exists"}])),
    ]);
    let mut container_mode = World::new();
    container_mode.injection.mode = SidecarMode::Container;
    let mut redirect = World::new();
    redirect.injection.redirect = true;
    let worlds = [World::new(), container_mode, redirect];
    let (mut mutated, mut labels_only) = (0, 0);
    for w in &worlds {
        for (req, sent) in &corpus {
            let m = w.mutate(req);
            let Some(written) = &m.mutated else { continue };
            mutated += 1;
            let pod_create = req.resource.group.is_empty()
                && req.resource.resource == "pods"
                && req.operation == tenantry_webhook::Operation::Create;
            // Only a new pod has parts of its spec written (and copied); everything else, its
            // labels.
            assert_eq!(
                written.paths,
                if pod_create {
                    mutate::POD_CREATE
                } else {
                    labels_only += 1;
                    mutate::LABELS
                },
                "{}",
                req.uid
            );
            let written_pointers: Vec<String> = written
                .paths
                .iter()
                .map(|path| path.iter().map(|key| format!("/{key}")).collect())
                .collect();
            // Mutation wrote nothing but those (anything else would be lost).
            let mut outside = written.parts.clone();
            for pointer in &written_pointers {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                if let Some(map) = outside.pointer_mut(parent).and_then(Value::as_object_mut) {
                    map.remove(key);
                }
            }
            assert!(
                [
                    json!({}),
                    json!({"metadata": {}}),
                    json!({"spec": {}}),
                    json!({"metadata": {}, "spec": {}})
                ]
                .contains(&outside),
                "mutation of {} wrote {outside}, which its patch does not carry",
                req.uid
            );
            let mut patched = sent.clone();
            json_patch::patch(&mut patched, &m.response.decoded_patch().unwrap()).unwrap();
            for pointer in &written_pointers {
                assert_eq!(
                    patched.pointer(pointer),
                    written.parts.pointer(pointer),
                    "{pointer} of {} as patched is not what mutation made",
                    req.uid
                );
            }
            for op in json_patch::diff(sent, &patched).0 {
                let path = op.path().to_string();
                let written = written_pointers
                    .iter()
                    .any(|p| path == *p || path.starts_with(&format!("{p}/")));
                assert!(
                    written || path == "/metadata",
                    "the patch for {} changed {path}, which mutation does not write",
                    req.uid
                );
            }
            if let (Some(sent), Some(stored)) = (sent.get("metadata"), patched.get("metadata"))
                && sent.is_object()
            {
                let mut rest = stored.clone();
                rest.as_object_mut().unwrap().remove("labels");
                let mut sent = sent.clone();
                sent.as_object_mut().unwrap().remove("labels");
                assert_eq!(
                    rest, sent,
                    "metadata of {} changed beyond its labels",
                    req.uid
                );
            }
        }
    }
    assert!(mutated >= 20, "only {mutated} requests were mutated");
    assert!(labels_only > 0, "no request but a Pod CREATE was mutated");
}

/// The enforcer goes in front of the pod's containers: the patch adds it there, instead of
/// rewriting every container one place along (which is what a plain structural diff says).
#[test]
fn an_injected_sidecar_is_one_add_in_front() {
    let mut w = World::new();
    w.injection.mode = SidecarMode::Container;
    let req = fixture("pod-create.json");
    let ops = patch_ops(&w.mutate(&req));
    let on_containers: Vec<&Value> = ops
        .iter()
        .filter(|op| op["path"].as_str().unwrap().starts_with("/spec/containers"))
        .collect();
    assert_eq!(on_containers.len(), 1, "{on_containers:?}");
    assert_eq!(on_containers[0]["op"], "add");
    assert_eq!(on_containers[0]["path"], "/spec/containers/0");
    assert_eq!(on_containers[0]["value"]["name"], "tenantry-enforcer");
}
