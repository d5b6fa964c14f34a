//! The Kubernetes manifests in `deploy/` against each other and against the webhook server.
//!
//! Every kustomization under `deploy/` is built here the way `kubectl apply -k` builds it, for
//! the subset of kustomize the manifests use (`resources`, `configMapGenerator`, JSON 6902
//! `patches`, and strategic-merge `patches` that merge maps or delete an object); anything else
//! in a kustomization fails the test rather than being ignored. Every resulting object is parsed
//! into its typed k8s-openapi struct, or for the CRD kinds k8s-openapi lacks (cert-manager,
//! prometheus-operator) into a small struct of the fields used here, and a field the struct drops
//! (a typo, a field of another kind) fails too. The objects are then checked against
//! `tenantry_webhook::contract`: the names, ports, paths and kinds the server relies on.
//!
//! No cluster: this runs in plain `cargo test`. Where `kubectl` is on `PATH` (found when the
//! tests are built, `tests/build.rs`), one more test renders every kustomization with the real
//! `kubectl kustomize` and requires the same objects; elsewhere that test is reported ignored.

// Test code: a broken expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tenantry_tests::repo_root;
use tenantry_webhook::contract;

/// The server's flags (`tenantry-webhook --help`), and whether each takes a value.
/// `--flag` → whether it takes a value, for every flag `tenantry-webhook` has (from its clap
/// definition, so the manifests are checked against the real server).
fn server_flag_table() -> Vec<(String, bool)> {
    use clap::CommandFactory;
    tenantry_webhook::server::Config::command()
        .get_arguments()
        .filter_map(|a| {
            a.get_long()
                .map(|l| (l.to_string(), a.get_action().takes_values()))
        })
        .collect()
}

/// The Secret `--tls-bootstrap` creates and every replica reads.
const TLS_SECRET: &str = "tenantry-webhook-tls";

/// The API server sets this label on every namespace to its name; nobody else can change it.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

// ---------------------------------------------------------------------------------------------
// A small kustomize: exactly the features the manifests use.

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    config_map_generator: Vec<Generator>,
    #[serde(default)]
    patches: Vec<PatchRef>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Generator {
    name: String,
    namespace: Option<String>,
    behavior: Option<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    options: GeneratorOptions,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GeneratorOptions {
    #[serde(default)]
    disable_name_suffix_hash: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A JSON 6902 patch (a list of operations) needs a `target`; a strategic-merge patch (one
/// object) names its target itself.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRef {
    path: String,
    target: Option<Target>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Target {
    group: Option<String>,
    version: Option<String>,
    kind: String,
    name: Option<String>,
    namespace: Option<String>,
}

/// The output of one kustomization, and every file it read.
struct Build {
    root: PathBuf,
    objects: Vec<Value>,
    files: BTreeSet<PathBuf>,
    /// ConfigMaps made by a `configMapGenerator`. kustomize appends a hash of their content to
    /// the name unless told not to (and rewrites every reference); this build keeps the plain
    /// name, which is what the references here use.
    generated: Vec<Generated>,
}

struct Generated {
    namespace: Option<String>,
    name: String,
    hashed: bool,
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read(path))
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// A path a kustomization names must stay inside its root: kustomize's default load
/// restrictor refuses anything else, so `kubectl apply -k` would fail.
fn inside(root: &Path, relative: &str) -> PathBuf {
    let path = canonical(&root.join(relative));
    let within = path.starts_with(canonical(root));
    assert!(
        within,
        "{}: `{relative}` is outside the kustomization root; kustomize refuses it",
        root.display()
    );
    path
}

fn build(root: &Path) -> Build {
    let file = root.join("kustomization.yaml");
    let k: Kustomization =
        serde_saphyr::from_str(&read(&file)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(
        k.api_version,
        "kustomize.config.k8s.io/v1beta1",
        "{}",
        file.display()
    );
    assert_eq!(k.kind, "Kustomization", "{}", file.display());
    let mut out = Build {
        root: root.to_path_buf(),
        objects: Vec::new(),
        files: BTreeSet::from([canonical(&file)]),
        generated: Vec::new(),
    };

    for resource in &k.resources {
        let path = canonical(&root.join(resource));
        if path.is_dir() {
            let base = build(&path);
            out.objects.extend(base.objects);
            out.files.extend(base.files);
            out.generated.extend(base.generated);
        } else {
            let path = inside(root, resource);
            out.objects.extend(yaml_documents(&path));
            out.files.insert(path);
        }
    }

    for generator in &k.config_map_generator {
        let mut data = serde_json::Map::new();
        for entry in &generator.files {
            // `key=path` or just `path` (the key is then the file name).
            let (key, relative) = match entry.split_once('=') {
                Some((key, path)) => (key.to_string(), path),
                None => (
                    Path::new(entry)
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                    entry.as_str(),
                ),
            };
            let path = inside(root, relative);
            data.insert(key, Value::String(read(&path)));
            out.files.insert(path);
        }
        let existing = out.objects.iter().position(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"] == generator.name.as_str()
                && o["metadata"]["namespace"].as_str() == generator.namespace.as_deref()
        });
        let labels = &generator.options.labels;
        match (generator.behavior.as_deref().unwrap_or("create"), existing) {
            ("create", None) => {
                let mut metadata = json!({"name": generator.name});
                if let Some(namespace) = &generator.namespace {
                    metadata["namespace"] = json!(namespace);
                }
                if !labels.is_empty() {
                    metadata["labels"] = json!(labels);
                }
                out.objects.push(json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": metadata,
                    "data": data,
                }));
                out.generated.push(Generated {
                    namespace: generator.namespace.clone(),
                    name: generator.name.clone(),
                    hashed: !generator.options.disable_name_suffix_hash,
                });
            }
            ("replace", Some(_)) | ("merge", Some(_))
                if generator.options.disable_name_suffix_hash || !labels.is_empty() =>
            {
                panic!(
                    "{}: options on a `{}` generator are not modelled here",
                    file.display(),
                    generator.behavior.as_deref().unwrap_or_default()
                )
            }
            ("replace", Some(i)) => out.objects[i]["data"] = Value::Object(data),
            ("merge", Some(i)) => {
                let current = out.objects[i]["data"].as_object_mut().unwrap();
                current.extend(data);
            }
            (behavior, existing) => panic!(
                "{}: configMapGenerator `{}` with behavior `{behavior}` but the ConfigMap {}",
                file.display(),
                generator.name,
                if existing.is_some() {
                    "already exists"
                } else {
                    "does not exist"
                }
            ),
        }
    }

    for patch_ref in &k.patches {
        let path = inside(root, &patch_ref.path);
        let docs = yaml_documents(&path);
        assert!(
            docs.len() == 1,
            "{}: one patch per file is modelled here",
            path.display()
        );
        if docs[0].is_object() {
            assert!(
                patch_ref.target.is_none(),
                "{}: a strategic-merge patch with a `target` is not modelled here",
                path.display()
            );
            strategic_merge(&mut out.objects, &docs[0], &path);
            out.files.insert(path);
            continue;
        }
        assert!(
            docs[0].is_array(),
            "{}: a patch is a JSON 6902 list of operations or one object (strategic merge)",
            path.display()
        );
        let patch: json_patch::Patch = serde_json::from_value(docs[0].clone())
            .unwrap_or_else(|e| panic!("{}: not a JSON patch: {e}", path.display()));
        let t = patch_ref
            .target
            .as_ref()
            .unwrap_or_else(|| panic!("{}: a JSON 6902 patch needs a `target`", path.display()));
        let mut matched = 0;
        for object in &mut out.objects {
            let (group, version) = group_version(object["apiVersion"].as_str().unwrap_or(""));
            let hit = object["kind"] == t.kind.as_str()
                && t.group.as_deref().is_none_or(|g| g == group)
                && t.version.as_deref().is_none_or(|v| v == version)
                && t.name
                    .as_deref()
                    .is_none_or(|n| object["metadata"]["name"] == n)
                && t.namespace
                    .as_deref()
                    .is_none_or(|n| object["metadata"]["namespace"] == n);
            if hit {
                json_patch::patch(object, &patch)
                    .unwrap_or_else(|e| panic!("{}: does not apply: {e}", path.display()));
                matched += 1;
            }
        }
        assert!(
            matched > 0,
            "{}: the target matches nothing",
            path.display()
        );
        out.files.insert(path);
    }
    out
}

/// A strategic-merge patch, for the part of it the manifests use: an object naming its target
/// by apiVersion, kind, name and namespace, that either deletes it (`$patch: delete`) or merges
/// maps into it. Lists (where strategic merge needs each field's merge key) and every other
/// directive fail the test; write those as JSON 6902 patches.
fn strategic_merge(objects: &mut Vec<Value>, patch: &Value, path: &Path) {
    let who = path.display();
    let target = |o: &Value| {
        o["apiVersion"] == patch["apiVersion"]
            && o["kind"] == patch["kind"]
            && o["metadata"]["name"] == patch["metadata"]["name"]
            && o["metadata"]["namespace"] == patch["metadata"]["namespace"]
    };
    let matched: Vec<usize> = (0..objects.len())
        .filter(|&i| target(&objects[i]))
        .collect();
    assert_eq!(
        matched.len(),
        1,
        "{who}: a strategic-merge patch must match exactly one object by apiVersion, kind, name \
         and namespace"
    );
    let i = matched[0];
    let mut body = patch.as_object().unwrap().clone();
    match body.remove("$patch") {
        Some(Value::String(d)) if d == "delete" => {
            let mut rest: Vec<&String> = body.keys().collect();
            rest.retain(|k| *k != "apiVersion" && *k != "kind" && *k != "metadata");
            let meta: BTreeSet<&String> = body["metadata"].as_object().unwrap().keys().collect();
            assert!(
                rest.is_empty() && meta.iter().all(|k| *k == "name" || *k == "namespace"),
                "{who}: `$patch: delete` names its target and says nothing else"
            );
            objects.remove(i);
        }
        Some(other) => panic!("{who}: `$patch: {other}` is not modelled here"),
        None => merge_maps(&mut objects[i], &Value::Object(body), &who.to_string()),
    }
}

fn merge_maps(into: &mut Value, patch: &Value, who: &str) {
    for (key, value) in patch.as_object().unwrap() {
        assert!(
            !key.starts_with('$'),
            "{who}: strategic-merge directive `{key}` is not modelled here"
        );
        match value {
            Value::Array(_) => panic!(
                "{who}: `{key}`: lists in strategic-merge patches are not modelled here (their \
                 merge keys differ per field); use a JSON 6902 patch"
            ),
            Value::Null => {
                into.as_object_mut().unwrap().remove(key);
            }
            Value::Object(_) if into.get(key).is_some_and(Value::is_object) => {
                merge_maps(&mut into[key], value, who);
            }
            _ => {
                into[key] = value.clone();
            }
        }
    }
}

fn group_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// Every directory under `deploy/` with a kustomization.yaml.
fn kustomization_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = all_files(&deploy_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    roots.sort();
    roots
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Kustomizations under `deploy/` that are not an installation of Tenantry (no webhook
/// Deployment in them); every other one is checked as an installation.
const NOT_INSTALLATIONS: &[&str] = &["observability"];

fn root_name(root: &Path) -> String {
    root.strip_prefix(deploy_dir())
        .unwrap()
        .display()
        .to_string()
}

/// Every kustomization under `deploy/`, built.
fn all_builds() -> Vec<Build> {
    let roots = kustomization_roots();
    let names: Vec<String> = roots.iter().map(|r| root_name(r)).collect();
    for expected in ["base", "overlays/dev", "overlays/prod", "observability"] {
        assert!(
            names.iter().any(|n| n == expected),
            "expected deploy/{expected}, found {names:?}"
        );
    }
    roots.iter().map(|r| build(r.as_path())).collect()
}

/// The installations: the base and every overlay.
fn builds() -> Vec<Build> {
    all_builds()
        .into_iter()
        .filter(|b| !NOT_INSTALLATIONS.contains(&root_name(&b.root).as_str()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Typed views.

/// Parses `value` into `T` and fails if `T` drops any field the manifest wrote.
fn typed_strict<T: DeserializeOwned + serde::Serialize>(value: &Value, origin: &str) -> T {
    let object: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", type_name::<T>()));
    let back = serde_json::to_value(&object).unwrap();
    if let Some(path) = lost_field(value, &back, String::new()) {
        panic!(
            "{origin}: `{path}` is not a field of {} (typo, or wrong place?)",
            type_name::<T>()
        );
    }
    object
}

fn type_name<T>() -> &'static str {
    std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("?")
}

/// The first path present in `written` but absent from `parsed`.
fn lost_field(written: &Value, parsed: &Value, at: String) -> Option<String> {
    match (written, parsed) {
        (Value::Object(w), Value::Object(p)) => w.iter().find_map(|(k, v)| match p.get(k) {
            None if !v.is_null() => Some(format!("{at}.{k}")),
            None => None,
            Some(pv) => lost_field(v, pv, format!("{at}.{k}")),
        }),
        (Value::Array(w), Value::Array(p)) => w
            .iter()
            .zip(p)
            .enumerate()
            .find_map(|(i, (wv, pv))| lost_field(wv, pv, format!("{at}[{i}]"))),
        _ => None,
    }
}

fn parses<T: DeserializeOwned + serde::Serialize>(value: &Value, origin: &str) {
    typed_strict::<T>(value, origin);
}

/// Parses every object of the build into its typed struct; unknown kinds fail.
fn check_all_typed(b: &Build) {
    for o in &b.objects {
        let origin = format!(
            "{}: {} {}",
            b.root.display(),
            o["kind"].as_str().unwrap_or("?"),
            o["metadata"]["name"].as_str().unwrap_or("?")
        );
        let key = (
            o["apiVersion"].as_str().unwrap_or(""),
            o["kind"].as_str().unwrap_or(""),
        );
        match key {
            ("v1", "Namespace") => parses::<Namespace>(o, &origin),
            ("v1", "ServiceAccount") => parses::<ServiceAccount>(o, &origin),
            ("v1", "Service") => parses::<Service>(o, &origin),
            ("v1", "ConfigMap") => parses::<ConfigMap>(o, &origin),
            ("v1", "Secret") => parses::<Secret>(o, &origin),
            ("v1", "ResourceQuota") => parses::<ResourceQuota>(o, &origin),
            ("apps/v1", "Deployment") => parses::<Deployment>(o, &origin),
            ("batch/v1", "Job") => parses::<Job>(o, &origin),
            ("policy/v1", "PodDisruptionBudget") => parses::<PodDisruptionBudget>(o, &origin),
            ("networking.k8s.io/v1", "NetworkPolicy") => parses::<NetworkPolicy>(o, &origin),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => parses::<ClusterRole>(o, &origin),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                parses::<ClusterRoleBinding>(o, &origin)
            }
            ("rbac.authorization.k8s.io/v1", "Role") => parses::<Role>(o, &origin),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => parses::<RoleBinding>(o, &origin),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                parses::<MutatingWebhookConfiguration>(o, &origin)
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                parses::<CustomResourceDefinition>(o, &origin)
            }
            ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
                parses::<ValidatingWebhookConfiguration>(o, &origin)
            }
            (crd::CERT_MANAGER, "Issuer") => crd::issuer(o, &origin),
            (crd::CERT_MANAGER, "Certificate") => {
                crd::certificate(o, &origin);
            }
            (crd::MONITORING, "PrometheusRule") => {
                parses::<crd::PrometheusRule>(o, &origin);
            }
            (crd::MONITORING, "ServiceMonitor") => {
                parses::<crd::ServiceMonitor>(o, &origin);
            }
            (crd::MONITORING, "PodMonitor") => {
                parses::<crd::PodMonitor>(o, &origin);
            }
            (api_version, kind) => panic!(
                "{origin}: {api_version} {kind} is not a kind this test knows; add it to check_all_typed"
            ),
        }
    }
}

/// The custom resources of cert-manager and prometheus-operator the manifests use, which
/// k8s-openapi does not have: each kind as a struct of exactly the fields used here, so a typo or
/// a misplaced field fails like it does for the built-in kinds. A field the manifests start using
/// is added here, from the CRD's reference documentation.
mod crd {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    pub const CERT_MANAGER: &str = "cert-manager.io/v1";
    pub const MONITORING: &str = "monitoring.coreos.com/v1";

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Issuer {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: IssuerSpec,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct IssuerSpec {
        pub self_signed: Option<SelfSigned>,
        pub ca: Option<CaIssuer>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct SelfSigned {}

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CaIssuer {
        pub secret_name: String,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Certificate {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: CertificateSpec,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CertificateSpec {
        pub secret_name: String,
        #[serde(rename = "isCA")]
        pub is_ca: Option<bool>,
        pub common_name: Option<String>,
        #[serde(default)]
        pub dns_names: Vec<String>,
        pub duration: Option<String>,
        pub renew_before: Option<String>,
        pub private_key: Option<PrivateKey>,
        #[serde(default)]
        pub usages: Vec<String>,
        pub issuer_ref: IssuerRef,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrivateKey {
        pub algorithm: String,
        pub size: Option<u32>,
        pub rotation_policy: Option<String>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct IssuerRef {
        pub name: String,
        pub kind: Option<String>,
        pub group: Option<String>,
    }

    /// Go's `time.ParseDuration` in the forms cert-manager's examples use: `87600h`, `90m`,
    /// `2160h30m`.
    fn go_duration_hours(text: &str) -> Option<f64> {
        let mut hours = 0.0;
        let mut number = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let n: f64 = number.parse().ok()?;
            number.clear();
            hours += match c {
                'h' => n,
                'm' => n / 60.0,
                's' => n / 3600.0,
                _ => return None,
            };
        }
        number.is_empty().then_some(hours)
    }

    pub fn issuer(o: &Value, origin: &str) {
        let issuer: Issuer = super::typed_strict(o, origin);
        assert!(
            issuer.spec.self_signed.is_some() != issuer.spec.ca.is_some(),
            "{origin}: an Issuer is exactly one of selfSigned and ca (the kinds modelled here)"
        );
    }

    pub fn certificate(o: &Value, origin: &str) -> Certificate {
        let cert: Certificate = super::typed_strict(o, origin);
        let spec = &cert.spec;
        if let Some(key) = &spec.private_key {
            assert!(
                ["RSA", "ECDSA", "Ed25519"].contains(&key.algorithm.as_str()),
                "{origin}: privateKey.algorithm `{}`",
                key.algorithm
            );
            assert!(
                key.rotation_policy
                    .as_deref()
                    .is_none_or(|p| p == "Always" || p == "Never"),
                "{origin}: privateKey.rotationPolicy"
            );
        }
        let known_usages = [
            "signing",
            "digital signature",
            "content commitment",
            "key encipherment",
            "key agreement",
            "data encipherment",
            "cert sign",
            "crl sign",
            "encipher only",
            "decipher only",
            "any",
            "server auth",
            "client auth",
            "code signing",
            "email protection",
            "s/mime",
            "ipsec end system",
            "ipsec tunnel",
            "ipsec user",
            "timestamping",
            "ocsp signing",
            "microsoft sgc",
            "netscape sgc",
        ];
        for usage in &spec.usages {
            assert!(
                known_usages.contains(&usage.as_str()),
                "{origin}: usage `{usage}`"
            );
        }
        let hours = |field: &Option<String>, name: &str| {
            field.as_deref().map(|d| {
                go_duration_hours(d)
                    .unwrap_or_else(|| panic!("{origin}: {name} `{d}` is not a Go duration"))
            })
        };
        let duration = hours(&spec.duration, "duration").unwrap_or(90.0 * 24.0);
        if let Some(renew) = hours(&spec.renew_before, "renewBefore") {
            assert!(
                renew < duration,
                "{origin}: renewBefore must be shorter than duration, or cert-manager renews \
                 in a loop"
            );
        }
        assert!(
            spec.is_ca == Some(true) || !spec.dns_names.is_empty(),
            "{origin}: a serving certificate names its DNS names"
        );
        cert
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrometheusRule {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: PrometheusRuleSpec,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct PrometheusRuleSpec {
        pub groups: Vec<RuleGroup>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct RuleGroup {
        pub name: String,
        pub interval: Option<String>,
        pub rules: Vec<Rule>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct Rule {
        pub alert: Option<String>,
        pub record: Option<String>,
        pub expr: String,
        #[serde(rename = "for")]
        pub for_: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        #[serde(default)]
        pub annotations: BTreeMap<String, String>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: ServiceMonitorSpec,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ServiceMonitorSpec {
        pub namespace_selector: NamespaceSelector,
        pub selector: LabelSelector,
        pub endpoints: Vec<Endpoint>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PodMonitor {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: PodMonitorSpec,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PodMonitorSpec {
        pub namespace_selector: NamespaceSelector,
        pub selector: LabelSelector,
        pub pod_metrics_endpoints: Vec<Endpoint>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct NamespaceSelector {
        #[serde(default)]
        pub any: bool,
        #[serde(default)]
        pub match_names: Vec<String>,
    }

    /// A ServiceMonitor's `endpoints` entry or a PodMonitor's `podMetricsEndpoints` entry.
    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Endpoint {
        pub port: String,
        pub path: Option<String>,
        pub interval: Option<String>,
        pub honor_labels: Option<bool>,
        #[serde(default)]
        pub relabelings: Vec<Relabeling>,
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Relabeling {
        #[serde(default)]
        pub source_labels: Vec<String>,
        pub target_label: Option<String>,
        pub regex: Option<String>,
        pub replacement: Option<String>,
        pub action: Option<String>,
    }
}

impl Build {
    /// The objects of a custom resource kind, parsed into their struct in [`crd`].
    fn custom<T: DeserializeOwned>(&self, api_version: &str, kind: &str) -> Vec<T> {
        self.objects
            .iter()
            .filter(|o| o["apiVersion"] == api_version && o["kind"] == kind)
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .collect()
    }
}

impl Build {
    fn all<T: k8s_openapi::Resource + DeserializeOwned>(&self) -> Vec<T> {
        self.objects
            .iter()
            .filter(|o| o["apiVersion"] == T::API_VERSION && o["kind"] == T::KIND)
            .map(|o| serde_json::from_value(o.clone()).unwrap())
            .collect()
    }

    fn one<T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + DeserializeOwned>(
        &self,
        name: &str,
    ) -> T {
        let mut found: Vec<T> = self
            .all::<T>()
            .into_iter()
            .filter(|o| o.metadata().name.as_deref() == Some(name))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: expected exactly one {} `{name}`",
            self.root.display(),
            T::KIND
        );
        found.remove(0)
    }

    fn find<
        T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + DeserializeOwned,
    >(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<T> {
        self.all::<T>().into_iter().find(|o| {
            o.metadata().name.as_deref() == Some(name)
                && o.metadata().namespace.as_deref() == Some(namespace)
        })
    }

    /// Every pod template with where it came from.
    fn pod_templates(&self) -> Vec<(String, PodTemplateSpec)> {
        let mut out: Vec<(String, PodTemplateSpec)> = self
            .all::<Deployment>()
            .into_iter()
            .map(|d| {
                (
                    format!("Deployment {}", d.metadata.name.unwrap_or_default()),
                    d.spec.template,
                )
            })
            .collect();
        out.extend(self.all::<Job>().into_iter().map(|j| {
            (
                format!("Job {}", j.metadata.name.unwrap_or_default()),
                j.spec.unwrap().template,
            )
        }));
        out
    }

    fn webhook_deployment(&self) -> Deployment {
        self.one::<Deployment>(contract::SERVICE_NAME)
    }
}

fn pod_spec(d: &Deployment) -> PodSpec {
    d.spec.template.spec.clone().unwrap()
}

fn template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .template
        .metadata
        .clone()
        .and_then(|m| m.labels)
        .unwrap_or_default()
}

fn webhook_container(d: &Deployment) -> Container {
    let spec = pod_spec(d);
    let mut found: Vec<Container> = spec
        .containers
        .into_iter()
        .filter(|c| {
            c.image
                .as_deref()
                .is_some_and(|i| i.starts_with("ghcr.io/tenantry/tenantry-webhook:"))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one container runs the tenantry-webhook image"
    );
    found.remove(0)
}

/// Whether `selector` selects pods labelled `labels` (matchLabels and matchExpressions).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("unknown selector operator `{other}`"),
        }
    });
    let empty = selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty());
    !empty && by_labels && by_expressions
}

fn port_of(addr: &str) -> i32 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The container port an `IntOrString` names (a number, or a port name of the container).
fn resolve_port(container: &Container, port: &IntOrString) -> Option<i32> {
    let ports = container.ports.clone().unwrap_or_default();
    match port {
        IntOrString::Int(n) => ports.iter().find(|p| p.container_port == *n).map(|_| *n),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// `--flag=value` and `--flag value` arguments as a map; unknown flags fail.
fn server_flags(
    args: &[String],
    env: &[(String, String)],
    origin: &str,
) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(flag) = arg.strip_prefix("--") else {
            panic!("{origin}: `{arg}` is not a flag; the server takes no positional arguments");
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let table = server_flag_table();
        let Some(&(_, takes_value)) = table.iter().find(|(f, _)| f == name) else {
            panic!("{origin}: tenantry-webhook has no flag `--{name}`");
        };
        let value = match (takes_value, inline) {
            (true, Some(v)) => v,
            (true, None) => {
                i += 1;
                args.get(i)
                    .unwrap_or_else(|| panic!("{origin}: `--{name}` needs a value"))
                    .clone()
            }
            (false, None) => "true".to_string(),
            (false, Some(v)) => panic!("{origin}: `--{name}` takes no value, got `{v}`"),
        };
        assert!(
            flags.insert(name.to_string(), value).is_none(),
            "{origin}: `--{name}` given twice"
        );
        i += 1;
    }
    for (var, value) in env {
        let Some(name) = var.strip_prefix("TENANTRY_") else {
            continue;
        };
        let name = name.to_lowercase().replace('_', "-");
        assert!(
            server_flag_table().iter().any(|(f, _)| *f == name),
            "{origin}: env `{var}` matches no tenantry-webhook flag"
        );
        // clap: a flag on the command line wins over its environment variable, so giving both
        // is a configuration that silently ignores one of them.
        assert!(
            !flags.contains_key(&name),
            "{origin}: `--{name}` is given both as an argument and as env `{var}`"
        );
        flags.insert(name, value.clone());
    }
    flags
}

/// A container's env as (name, value), with `valueFrom` Secret keys resolved in the build.
fn resolved_env(b: &Build, namespace: &str, c: &Container) -> Vec<(String, String)> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => v.clone(),
                (None, Some(from)) => {
                    if let Some(r) = &from.secret_key_ref {
                        secret_value(b, namespace, &r.name, &r.key)
                    } else if let Some(r) = &from.config_map_key_ref {
                        config_map(b, namespace, &r.name)
                            .get(&r.key)
                            .cloned()
                            .unwrap_or_else(|| {
                                panic!(
                                    "env {}: ConfigMap `{}` has no key `{}`",
                                    e.name, r.name, r.key
                                )
                            })
                    } else {
                        panic!(
                            "env {}: only Secret and ConfigMap keys are resolved here",
                            e.name
                        )
                    }
                }
                (None, None) => String::new(),
                (Some(_), Some(_)) => panic!("env {} has both value and valueFrom", e.name),
            };
            (e.name.clone(), value)
        })
        .collect()
}

/// Secrets no manifest holds because a component creates them on its first start: the
/// controller's Redis admin password (`--ratelimit-redis-secret`).
const BOOTSTRAPPED_SECRETS: &[&str] = &["tenantry-redis"];

/// Secrets the operator creates before installing (README, Install), so no manifest carries a
/// password: the Postgres URL of the tenant directory, `tenantry-postgres`, key `url`. The dev
/// overlay ships a throwaway one instead.
const OPERATOR_SECRETS: &[(&str, &str)] = &[("tenantry-postgres", "url")];

/// What [`resolved_env`] gives for a key of an [`OPERATOR_SECRETS`] Secret.
fn operator_secret(name: &str, key: &str) -> String {
    format!("<operator's Secret {name}/{key}>")
}

fn secret_value(b: &Build, namespace: &str, name: &str, key: &str) -> String {
    if namespace == contract::NAMESPACE
        && BOOTSTRAPPED_SECRETS.contains(&name)
        && b.find::<Secret>(namespace, name).is_none()
    {
        return format!("<bootstrapped {name}/{key}>");
    }
    if namespace == contract::NAMESPACE
        && OPERATOR_SECRETS.contains(&(name, key))
        && b.find::<Secret>(namespace, name).is_none()
    {
        return operator_secret(name, key);
    }
    let secret: Secret = b
        .find(namespace, name)
        .unwrap_or_else(|| panic!("{}: no Secret `{namespace}/{name}`", b.root.display()));
    if let Some(v) = secret.string_data.and_then(|d| d.get(key).cloned()) {
        return v;
    }
    secret
        .data
        .and_then(|d| d.get(key).cloned())
        .map(|v| String::from_utf8(v.0).unwrap())
        .unwrap_or_else(|| panic!("{}: Secret `{name}` has no key `{key}`", b.root.display()))
}

fn config_map(b: &Build, namespace: &str, name: &str) -> BTreeMap<String, String> {
    let cm: ConfigMap = b
        .find(namespace, name)
        .unwrap_or_else(|| panic!("{}: no ConfigMap `{namespace}/{name}`", b.root.display()));
    cm.data.unwrap_or_default()
}

/// For a `scheme://[user@]host.namespace.svc[:port]/…` URL: the Service it names exists and
/// exposes that port.
fn check_service_url(b: &Build, url: &str, default_port: i32, origin: &str) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<i32>().unwrap()),
        None => (host_port, default_port),
    };
    let Some(in_cluster) = host
        .strip_suffix(".svc")
        .or_else(|| host.strip_suffix(".svc.cluster.local"))
    else {
        panic!("{origin}: `{url}` does not name an in-cluster Service (NAME.NAMESPACE.svc)");
    };
    let (name, namespace) = in_cluster.split_once('.').unwrap();
    let service: Service = b.find(namespace, name).unwrap_or_else(|| {
        panic!("{origin}: `{url}` names Service {namespace}/{name}, which is not in the build")
    });
    let ports = service.spec.unwrap().ports.unwrap_or_default();
    assert!(
        ports.iter().any(|p| p.port == port),
        "{origin}: Service {name} has no port {port} for `{url}`"
    );
}

// ---------------------------------------------------------------------------------------------
// The checks.

#[test]
fn every_file_under_deploy_is_used_by_a_kustomization() {
    let used: BTreeSet<PathBuf> = all_builds().into_iter().flat_map(|b| b.files).collect();
    let unused: Vec<PathBuf> = all_files(&deploy_dir())
        .into_iter()
        .map(|p| canonical(&p))
        .filter(|p| !used.contains(p))
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .collect();
    assert!(
        unused.is_empty(),
        "files under deploy/ that no kustomization reads (list them, or delete them): {unused:#?}"
    );
}

#[test]
fn every_object_parses_into_its_typed_struct() {
    for b in all_builds() {
        check_all_typed(&b);
    }
}

#[test]
fn names_and_namespaces() {
    for b in builds() {
        let mut seen = BTreeSet::new();
        for o in &b.objects {
            let kind = o["kind"].as_str().unwrap();
            let name = o["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = o["metadata"]["namespace"].as_str();
            let cluster_scoped = matches!(
                kind,
                "Namespace"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "MutatingWebhookConfiguration"
                    | "ValidatingWebhookConfiguration"
            );
            if cluster_scoped {
                assert_eq!(namespace, None, "{kind} {name} is cluster-scoped");
            } else {
                assert_eq!(
                    namespace,
                    Some(contract::NAMESPACE),
                    "{}: {kind} {name} must say `namespace: {}` itself",
                    b.root.display(),
                    contract::NAMESPACE
                );
            }
            assert!(
                seen.insert((
                    kind.to_string(),
                    namespace.map(str::to_string),
                    name.to_string()
                )),
                "{}: {kind} {name} defined twice",
                b.root.display()
            );
        }

        let ns = b.one::<Namespace>(contract::NAMESPACE);
        let labels = ns.metadata.labels.unwrap_or_default();
        assert_eq!(
            labels
                .get("pod-security.kubernetes.io/enforce")
                .map(String::as_str),
            Some("restricted")
        );
        b.one::<ServiceAccount>(contract::SERVICE_ACCOUNT);
        b.one::<Service>(contract::SERVICE_NAME);
        let d = b.webhook_deployment();
        assert_eq!(
            pod_spec(&d).service_account_name.as_deref(),
            Some(contract::SERVICE_ACCOUNT)
        );
    }
}

#[test]
fn deployment_is_highly_available() {
    for b in builds() {
        let d = b.webhook_deployment();
        let spec = d.spec.clone();
        let labels = template_labels(&d);
        assert_eq!(spec.replicas, Some(3));
        assert!(
            selects(&spec.selector, &labels),
            "the Deployment's selector must match its own template labels"
        );

        let pdbs: Vec<PodDisruptionBudget> = b
            .all::<PodDisruptionBudget>()
            .into_iter()
            .filter(|p| selects(p.spec.as_ref().unwrap().selector.as_ref().unwrap(), &labels))
            .collect();
        assert_eq!(
            pdbs.len(),
            1,
            "one PodDisruptionBudget covers the webhook pods"
        );
        let pdb = pdbs[0].spec.clone().unwrap();
        let ok = pdb.min_available == Some(IntOrString::Int(2))
            || pdb.max_unavailable == Some(IntOrString::Int(1));
        assert!(ok, "PDB: minAvailable 2 or maxUnavailable 1, got {pdb:?}");

        let anti = pod_spec(&d)
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
            .unwrap_or_default();
        assert!(
            anti.iter().any(
                |t| t.pod_affinity_term.topology_key == "kubernetes.io/hostname"
                    && t.pod_affinity_term
                        .label_selector
                        .as_ref()
                        .is_some_and(|s| selects(s, &labels))
            ),
            "preferred podAntiAffinity on kubernetes.io/hostname selecting the webhook pods"
        );

        let c = webhook_container(&d);
        let requests = c
            .resources
            .clone()
            .and_then(|r| r.requests)
            .unwrap_or_default();
        assert!(
            requests.contains_key("cpu") && requests.contains_key("memory"),
            "the webhook requests cpu and memory"
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
    }
}

#[test]
fn every_pod_meets_the_restricted_pod_security_standard() {
    // tenantry-system enforces `restricted`; a pod that misses one of these is rejected at
    // creation, long after `kubectl apply` reported success.
    for b in builds() {
        for (origin, template) in b.pod_templates() {
            let spec = template.spec.unwrap();
            let origin = format!("{}: {origin}", b.root.display());
            let psc = spec.security_context.clone().unwrap_or_default();
            assert_eq!(
                psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                Some("RuntimeDefault"),
                "{origin}: seccompProfile RuntimeDefault"
            );
            assert!(spec.host_network != Some(true) && spec.host_pid != Some(true));
            assert!(spec.host_ipc != Some(true), "{origin}: no host namespaces");
            for v in spec.volumes.iter().flatten() {
                assert!(v.host_path.is_none(), "{origin}: no hostPath volumes");
            }
            let containers = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten());
            for c in containers {
                let sc = c.security_context.clone().unwrap_or_default();
                let who = format!("{origin} container {}", c.name);
                assert!(
                    sc.run_as_non_root.or(psc.run_as_non_root) == Some(true),
                    "{who}: runAsNonRoot"
                );
                assert_ne!(
                    sc.run_as_user.or(psc.run_as_user),
                    Some(0),
                    "{who}: not uid 0"
                );
                assert_eq!(sc.allow_privilege_escalation, Some(false), "{who}");
                assert_ne!(sc.privileged, Some(true), "{who}");
                let caps = sc.capabilities.unwrap_or_default();
                assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{who}: drop ALL");
                assert!(
                    caps.add
                        .unwrap_or_default()
                        .iter()
                        .all(|c| c == "NET_BIND_SERVICE"),
                    "{who}: adds only NET_BIND_SERVICE"
                );
                let requests = c
                    .resources
                    .clone()
                    .and_then(|r| r.requests)
                    .unwrap_or_default();
                assert!(
                    requests.contains_key("cpu") && requests.contains_key("memory"),
                    "{who}: resource requests"
                );
            }
        }
    }
}

#[test]
fn every_service_selects_pods_and_targets_their_ports() {
    for b in builds() {
        let deployments = b.all::<Deployment>();
        for s in b.all::<Service>() {
            let name = s.metadata.name.clone().unwrap();
            let spec = s.spec.unwrap();
            let selector = spec.selector.unwrap_or_default();
            assert!(!selector.is_empty(), "Service {name} has a selector");
            let backends: Vec<&Deployment> = deployments
                .iter()
                .filter(|d| {
                    let labels = template_labels(d);
                    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
                })
                .collect();
            assert_eq!(
                backends.len(),
                1,
                "{}: Service {name} selects exactly one Deployment's pods",
                b.root.display()
            );
            let containers = pod_spec(backends[0]).containers;
            for port in spec.ports.unwrap_or_default() {
                let target = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                assert!(
                    containers
                        .iter()
                        .any(|c| resolve_port(c, &target).is_some()),
                    "Service {name} port {} targets {target:?}, which no container declares",
                    port.port
                );
            }
        }
    }
}

#[test]
fn webhook_service_reaches_the_https_listener() {
    for b in builds() {
        let d = b.webhook_deployment();
        let c = webhook_container(&d);
        let https = c
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.container_port == port_of(contract::DEFAULT_LISTEN))
            .expect("the webhook container declares its --listen port");
        let port_name = https.name.expect("the HTTPS port is named");

        let service = b.one::<Service>(contract::SERVICE_NAME);
        let spec = service.spec.unwrap();
        let labels = template_labels(&d);
        let selector = spec.selector.unwrap();
        assert!(
            selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "Service selector {selector:?} ⊆ Deployment template labels {labels:?}"
        );
        let port443 = spec
            .ports
            .unwrap()
            .into_iter()
            .find(|p| p.port == 443)
            .expect("the Service listens on 443, where clientConfig.service points");
        assert_eq!(port443.target_port, Some(IntOrString::String(port_name)));
    }
}

#[test]
fn injected_enforcers_follow_the_traffic_view_through_the_service_and_hold_no_credential() {
    use clap::Parser;
    for b in builds() {
        let origin = b.root.display().to_string();
        let d = b.webhook_deployment();
        let c = webhook_container(&d);
        let mut argv = vec!["tenantry-webhook".to_string()];
        argv.extend(c.args.clone().unwrap_or_default());
        argv.push("--tenants=unused".into());
        let config = tenantry_webhook::server::Config::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{origin}: {e}"));
        let injected = config
            .injected_tenants()
            .unwrap_or_else(|| panic!("{origin}: injected enforcers get no tenant source"));
        assert!(
            !injected.contains("postgres") && !injected.contains('@'),
            "{origin}: a credential in every tenant pod's spec: {injected}"
        );
        // http://SERVICE.NAMESPACE.svc:PORT/v1/traffic-view, served by this Deployment.
        let rest = injected
            .strip_prefix(&format!(
                "http://{}.{}.svc:",
                contract::SERVICE_NAME,
                contract::NAMESPACE
            ))
            .unwrap_or_else(|| panic!("{origin}: {injected}"));
        let (port, path) = rest.split_once('/').unwrap();
        assert_eq!(format!("/{path}"), tenantry_webhook::view::PATH);
        let port: i32 = port.parse().unwrap();
        let listen = config.traffic_view_listen.unwrap();
        let service = b.one::<Service>(contract::SERVICE_NAME);
        let by_port = service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .find(|p| p.port == port)
            .unwrap_or_else(|| panic!("{origin}: the Service has no port {port}"));
        let target = by_port.target_port.unwrap();
        assert_eq!(
            resolve_port(&c, &target),
            Some(i32::from(listen.port())),
            "{origin}: the Service's port {port} reaches --traffic-view-listen"
        );
        // Every pod may reach that port, and only that one of the webhook's.
        let policy = b.one::<NetworkPolicy>("tenantry-webhook");
        let open_to_all_pods = policy
            .spec
            .unwrap()
            .ingress
            .unwrap_or_default()
            .into_iter()
            .filter(|rule| {
                rule.from.iter().flatten().any(|peer| {
                    peer.namespace_selector
                        .as_ref()
                        .is_some_and(|s| s.match_labels.is_none() && s.match_expressions.is_none())
                })
            })
            .flat_map(|rule| rule.ports.unwrap_or_default())
            .map(|p| resolve_port(&c, &p.port.unwrap()))
            .collect::<Vec<_>>();
        assert_eq!(
            open_to_all_pods,
            [Some(i32::from(listen.port()))],
            "{origin}: pods reach the traffic view and nothing else of the webhook"
        );
    }
}

#[test]
fn probes_hit_the_contract_paths_on_the_metrics_port() {
    for b in builds() {
        let c = webhook_container(&b.webhook_deployment());
        for (probe, path) in [
            (c.readiness_probe.clone(), contract::READYZ_PATH),
            (c.liveness_probe.clone(), contract::HEALTHZ_PATH),
        ] {
            let get = probe
                .and_then(|p| p.http_get)
                .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.scheme.as_deref().unwrap_or("HTTP"), "HTTP");
            assert_eq!(
                resolve_port(&c, &get.port),
                Some(port_of(contract::DEFAULT_METRICS_LISTEN)),
                "probe {path} must hit the --metrics-listen port"
            );
        }
    }
}

#[test]
fn server_arguments_are_flags_the_server_has_and_agree_with_the_pod() {
    for b in builds() {
        let d = b.webhook_deployment();
        let spec = pod_spec(&d);
        let c = webhook_container(&d);
        let origin = format!("{}: webhook container", b.root.display());
        let env = resolved_env(&b, contract::NAMESPACE, &c);
        let flags = server_flags(&c.args.clone().unwrap_or_default(), &env, &origin);

        assert_eq!(
            flags.get("listen").map(String::as_str),
            Some(contract::DEFAULT_LISTEN)
        );
        assert_eq!(
            flags.get("metrics-listen").map(String::as_str),
            Some(contract::DEFAULT_METRICS_LISTEN)
        );
        assert!(
            !flags.contains_key("state"),
            "--state is for clusterless use only"
        );
        assert!(
            !flags.contains_key("kubeconfig"),
            "in-cluster config, not a kubeconfig"
        );

        let volumes = spec.volumes.clone().unwrap_or_default();
        let mounts = c.volume_mounts.clone().unwrap_or_default();
        let mount_of = |path: &str| {
            mounts
                .iter()
                .filter(|m| Path::new(path).starts_with(&m.mount_path))
                .max_by_key(|m| m.mount_path.len())
                .unwrap_or_else(|| panic!("{origin}: nothing is mounted at `{path}`"))
                .clone()
        };
        let volume_of = |name: &str| {
            volumes
                .iter()
                .find(|v| v.name == name)
                .unwrap_or_else(|| panic!("{origin}: no volume `{name}`"))
                .clone()
        };

        match tls_source(&b, &flags) {
            // --tls-bootstrap writes the certificate: a writable emptyDir, not the read-only root.
            TlsSource::Bootstrap => {
                for flag in ["tls-cert", "tls-key"] {
                    let path = &flags[flag];
                    let m = mount_of(path);
                    assert_ne!(
                        m.read_only,
                        Some(true),
                        "{origin}: --{flag} must be writable"
                    );
                    assert!(
                        volume_of(&m.name).empty_dir.is_some(),
                        "{origin}: --{flag} lives on an emptyDir"
                    );
                }
            }
            // cert-manager writes the Secret; the pod only reads it, as `tls.crt` and `tls.key`.
            TlsSource::CertManager(cert) => {
                for (flag, key) in [("tls-cert", "tls.crt"), ("tls-key", "tls.key")] {
                    let path = &flags[flag];
                    let m = mount_of(path);
                    assert_eq!(m.read_only, Some(true), "{origin}: --{flag} is read-only");
                    assert_eq!(
                        Path::new(path).strip_prefix(&m.mount_path).ok(),
                        Some(Path::new(key)),
                        "{origin}: --{flag} is the Secret's `{key}`"
                    );
                    let secret = volume_of(&m.name)
                        .secret
                        .unwrap_or_else(|| panic!("{origin}: --{flag} is on a Secret volume"));
                    assert_eq!(
                        secret.secret_name.as_deref(),
                        Some(cert.spec.secret_name.as_str()),
                        "{origin}: --{flag} is in the Secret of Certificate {:?}",
                        cert.metadata.name
                    );
                    assert!(
                        secret.items.is_none(),
                        "{origin}: the whole Secret is mounted, so the kubelet updates it on renewal"
                    );
                    let mode = secret.default_mode.unwrap_or(0o644);
                    assert_eq!(
                        mode & 0o007,
                        0,
                        "{origin}: the private key is not readable by other users (mode {mode:o})"
                    );
                }
            }
        }

        // --policies is the mount of the policies ConfigMap.
        let m = mount_of(&flags["policies"]);
        assert_eq!(
            m.mount_path, flags["policies"],
            "{origin}: --policies is the mount itself"
        );
        let cm = volume_of(&m.name)
            .config_map
            .expect("--policies is a ConfigMap volume");
        check_policies_config_map(&config_map(&b, contract::NAMESPACE, &cm.name));

        // --tenants: a file in a mounted ConfigMap, or a Postgres URL of a Service in the build.
        let tenants = flags.get("tenants").expect("--tenants or TENANTRY_TENANTS");
        if *tenants == operator_secret("tenantry-postgres", "url") {
            // The operator's Postgres, anywhere the pods can reach: nothing to check here.
        } else if tenants.starts_with("postgres://") || tenants.starts_with("postgresql://") {
            check_service_url(&b, tenants, 5432, &origin);
        } else {
            let m = mount_of(tenants);
            let cm = volume_of(&m.name)
                .config_map
                .expect("tenants ConfigMap volume");
            let key = Path::new(tenants).strip_prefix(&m.mount_path).unwrap();
            let text = config_map(&b, contract::NAMESPACE, &cm.name)
                .get(key.to_str().unwrap())
                .cloned()
                .unwrap_or_else(|| {
                    panic!("{origin}: ConfigMap {} has no `{}`", cm.name, key.display())
                });
            tenantry_tenancy::source::parse_yaml(&text, Path::new(tenants))
                .unwrap_or_else(|e| panic!("{origin}: {tenants}: {e}"));
        }
        if let Some(redis) = flags.get("redis") {
            assert!(redis.starts_with("redis://") || redis.starts_with("rediss://"));
            check_service_url(&b, redis, 6379, &origin);
        }

        if let Some(mode) = flags.get("sidecar-mode") {
            assert!(
                mode.parse::<tenantry_webhook::pod::SidecarMode>().is_ok(),
                "{origin}: --sidecar-mode `{mode}`"
            );
        }
        // The enforcer image follows the webhook's version.
        let version = |image: &str| image.rsplit_once(':').map(|(_, t)| t.to_string());
        if let Some(image) = flags.get("sidecar-image") {
            assert!(image.starts_with("ghcr.io/tenantry/tenantry-enforcer:"));
            assert_eq!(version(image), version(c.image.as_deref().unwrap()));
        }
    }
}

/// Where the webhook's serving certificate comes from in an installation.
enum TlsSource {
    /// `--tls-bootstrap`: the webhook makes it, keeps it in the Secret `tenantry-webhook-tls`
    /// and patches `caBundle` itself.
    Bootstrap,
    /// A cert-manager Certificate whose Secret the pod mounts; cainjector sets `caBundle`.
    CertManager(Box<crd::Certificate>),
}

/// The one source of the serving certificate of `b`, given the webhook's flags.
fn tls_source(b: &Build, flags: &BTreeMap<String, String>) -> TlsSource {
    let origin = b.root.display();
    let dns = format!("{}.{}.svc", contract::SERVICE_NAME, contract::NAMESPACE);
    let mut certs: Vec<crd::Certificate> = b
        .custom::<crd::Certificate>(crd::CERT_MANAGER, "Certificate")
        .into_iter()
        .filter(|c| c.spec.dns_names.contains(&dns))
        .collect();
    if flags.get("tls-bootstrap").map(String::as_str) == Some("true") {
        assert!(
            certs.is_empty(),
            "{origin}: --tls-bootstrap and a cert-manager Certificate for {dns}: one source only"
        );
        return TlsSource::Bootstrap;
    }
    assert_eq!(
        certs.len(),
        1,
        "{origin}: without --tls-bootstrap, a cert-manager Certificate for {dns} issues the \
         serving certificate"
    );
    TlsSource::CertManager(Box::new(certs.remove(0)))
}

/// The webhook container's flags in `b`.
fn webhook_flags(b: &Build) -> BTreeMap<String, String> {
    let c = webhook_container(&b.webhook_deployment());
    let env = resolved_env(b, contract::NAMESPACE, &c);
    server_flags(
        &c.args.clone().unwrap_or_default(),
        &env,
        &b.root.display().to_string(),
    )
}

/// The ConfigMap carries exactly `policies/*.cedar` and the schema, byte for byte.
fn check_policies_config_map(data: &BTreeMap<String, String>) {
    let dir = repo_root().join("policies");
    let mut expected = BTreeMap::new();
    for path in all_files(&dir) {
        if path.parent() != Some(dir.as_path()) {
            continue; // policies/tests/ holds test cases, not policies
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".cedar") || name == "tenantry.cedarschema" {
            expected.insert(name, read(&path));
        }
    }
    assert!(expected.contains_key("tenantry.cedarschema"));
    let have: BTreeSet<&String> = data.keys().collect();
    let want: BTreeSet<&String> = expected.keys().collect();
    assert_eq!(
        have, want,
        "the policies ConfigMap must list every policies/*.cedar file and the schema \
         (deploy/base/kustomization.yaml configMapGenerator)"
    );
    for (name, text) in &expected {
        assert!(
            data[name] == *text,
            "deploy/base/policies/{name} differs from policies/{name}; refresh the copies:\n  \
             cp policies/*.cedar policies/tenantry.cedarschema deploy/base/policies/"
        );
    }
}

#[test]
fn webhook_configurations_point_at_the_server() {
    for b in builds() {
        let service = b.one::<Service>(contract::SERVICE_NAME);
        let service_ports: Vec<i32> = service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();

        let mutating = b.one::<MutatingWebhookConfiguration>(contract::WEBHOOK_CONFIGURATION);
        let webhooks = mutating.webhooks.unwrap();
        assert_eq!(webhooks.len(), 1);
        let m = &webhooks[0];
        assert_eq!(m.name, contract::MUTATING_WEBHOOK_NAME);
        assert_eq!(m.reinvocation_policy.as_deref(), Some("IfNeeded"));
        check_webhook(Webhook {
            config: &m.client_config,
            path: contract::MUTATE_PATH,
            versions: &m.admission_review_versions,
            failure_policy: m.failure_policy.as_deref(),
            side_effects: &m.side_effects,
            match_policy: m.match_policy.as_deref(),
            timeout: m.timeout_seconds,
            namespace_selector: m.namespace_selector.as_ref(),
            object_selector: m.object_selector.as_ref(),
            service_ports: &service_ports,
        });
        let rules = m.rules.clone().unwrap_or_default();
        assert!(
            rules
                .iter()
                .any(|r| all_resources(r) && has_operations(r, &["CREATE", "UPDATE"])),
            "mutating: CREATE and UPDATE of every resource"
        );

        let validating = b.one::<ValidatingWebhookConfiguration>(contract::WEBHOOK_CONFIGURATION);
        let webhooks = validating.webhooks.unwrap();
        assert_eq!(webhooks.len(), 1);
        let v = &webhooks[0];
        assert_eq!(v.name, contract::VALIDATING_WEBHOOK_NAME);
        check_webhook(Webhook {
            config: &v.client_config,
            path: contract::VALIDATE_PATH,
            versions: &v.admission_review_versions,
            failure_policy: v.failure_policy.as_deref(),
            side_effects: &v.side_effects,
            match_policy: v.match_policy.as_deref(),
            timeout: v.timeout_seconds,
            namespace_selector: v.namespace_selector.as_ref(),
            object_selector: v.object_selector.as_ref(),
            service_ports: &service_ports,
        });
        let rules = v.rules.clone().unwrap_or_default();
        let every_op = ["CREATE", "UPDATE", "DELETE", "CONNECT"];
        assert!(
            rules
                .iter()
                .any(|r| all_resources(r) && has_operations(r, &every_op)),
            "validating: CREATE, UPDATE, DELETE and CONNECT of every resource"
        );
        let mut subresources = BTreeSet::new();
        for r in &rules {
            for resource in r.resources.iter().flatten().filter(|r| r.contains('/')) {
                assert!(
                    has_operations(r, &every_op),
                    "validating: {resource} for every operation"
                );
                assert!(
                    r.api_groups
                        .iter()
                        .flatten()
                        .any(|g| g.is_empty() || g == "*"),
                    "validating: {resource} is in the core group"
                );
                subresources.insert(resource.as_str().to_string());
            }
        }
        let expected: BTreeSet<String> = contract::INTERCEPTED_SUBRESOURCES
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            subresources, expected,
            "validating rules must list exactly contract::INTERCEPTED_SUBRESOURCES"
        );
    }
}

struct Webhook<'a> {
    config: &'a k8s_openapi::api::admissionregistration::v1::WebhookClientConfig,
    path: &'a str,
    versions: &'a [String],
    failure_policy: Option<&'a str>,
    side_effects: &'a str,
    match_policy: Option<&'a str>,
    timeout: Option<i32>,
    namespace_selector: Option<&'a LabelSelector>,
    object_selector: Option<&'a LabelSelector>,
    service_ports: &'a [i32],
}

fn check_webhook(w: Webhook<'_>) {
    let who = w.path;
    assert_eq!(
        w.config.url, None,
        "{who}: in-cluster webhooks use clientConfig.service"
    );
    assert_eq!(
        w.config.ca_bundle, None,
        "{who}: caBundle stays absent in the manifests; --tls-bootstrap or cert-manager's \
         cainjector fills it in, and `kubectl apply` must not erase it"
    );
    let service = w.config.service.clone().expect("clientConfig.service");
    assert_eq!(service.name, contract::SERVICE_NAME);
    assert_eq!(service.namespace, contract::NAMESPACE);
    assert_eq!(service.path.as_deref(), Some(w.path));
    let port = service.port.unwrap_or(443);
    assert!(
        w.service_ports.contains(&port),
        "{who}: the Service has port {port}"
    );
    assert_eq!(w.versions, ["v1"], "{who}: admissionReviewVersions");
    assert_eq!(w.failure_policy, Some("Fail"), "{who}: failurePolicy");
    assert_eq!(w.side_effects, "NoneOnDryRun", "{who}: sideEffects");
    assert_eq!(w.match_policy, Some("Equivalent"), "{who}: matchPolicy");
    let timeout = w.timeout.expect("an explicit timeoutSeconds");
    assert!(
        (1..=10).contains(&timeout),
        "{who}: timeoutSeconds {timeout} is not short"
    );

    assert_eq!(
        w.object_selector, None,
        "{who}: no objectSelector (object labels are the tenant's)"
    );
    let selector = w.namespace_selector.expect("a namespaceSelector");
    assert!(
        selector.match_labels.as_ref().is_none_or(|m| m.is_empty()),
        "{who}: namespaceSelector uses no matchLabels"
    );
    let expressions = selector.match_expressions.clone().unwrap_or_default();
    assert_eq!(
        expressions.len(),
        1,
        "{who}: exactly one namespace exclusion"
    );
    let e = &expressions[0];
    assert_eq!(
        e.key, NAMESPACE_NAME_LABEL,
        "{who}: exclusions only by the API-server-set label"
    );
    assert_eq!(e.operator, "NotIn");
    let values: BTreeSet<&str> = e.values.iter().flatten().map(String::as_str).collect();
    let excluded: BTreeSet<&str> = contract::EXCLUDED_NAMESPACES.iter().copied().collect();
    assert_eq!(
        values, excluded,
        "{who}: exactly contract::EXCLUDED_NAMESPACES"
    );
    for ns in ["acme-dev", "default", "kube-public"] {
        let labels = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]);
        assert!(selects(selector, &labels), "{who}: `{ns}` is intercepted");
    }
}

fn all_resources(r: &RuleWithOperations) -> bool {
    let star = |v: &Option<Vec<String>>| v.as_deref() == Some(&["*".to_string()][..]);
    star(&r.api_groups)
        && star(&r.api_versions)
        && star(&r.resources)
        && r.scope.as_deref().is_none_or(|s| s == "*")
}

fn has_operations(r: &RuleWithOperations, ops: &[&str]) -> bool {
    let have = r.operations.clone().unwrap_or_default();
    have.iter().any(|o| o == "*") || ops.iter().all(|o| have.iter().any(|h| h == o))
}

/// One permission: (apiGroup, resource, verb, resourceName or "").
type Grant = (String, String, String, String);

fn grants(rules: &[PolicyRule], origin: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "{origin}: no nonResourceURLs"
        );
        let names = rule.resource_names.clone().unwrap_or_default();
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        for part in [group, resource, verb] {
                            assert_ne!(part, "*", "{origin}: no wildcards in RBAC");
                        }
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

fn grant(group: &str, resource: &str, verb: &str, name: &str) -> Grant {
    (group.into(), resource.into(), verb.into(), name.into())
}

#[test]
fn rbac_is_exactly_what_the_server_needs() {
    for b in builds() {
        let origin = b.root.display().to_string();
        let sa_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == contract::SERVICE_ACCOUNT
                    && s.namespace.as_deref() == Some(contract::NAMESPACE)
            })
        };

        // Cluster-wide: watch the usage kinds, patch the two webhook configurations.
        let bindings = b.all::<ClusterRoleBinding>();
        let bound: Vec<&String> = bindings
            .iter()
            .filter(|rb| rb.role_ref.kind == "ClusterRole" && sa_subject(&rb.subjects))
            .map(|rb| &rb.role_ref.name)
            .collect();
        assert_eq!(bound.len(), 1, "{origin}: one ClusterRole for the webhook");
        let role = b.one::<ClusterRole>(bound[0]);
        let role = &role;
        let have = grants(role.rules.as_deref().unwrap_or_default(), &origin);
        let mut want = BTreeSet::new();
        for (group, _version, resource) in contract::WATCHED_RESOURCES {
            for verb in ["list", "watch"] {
                want.insert(grant(group, resource, verb, ""));
            }
        }
        // Only --tls-bootstrap writes caBundle and keeps the certificate in a Secret; with
        // cert-manager the webhook needs neither grant.
        let bootstrap = matches!(tls_source(&b, &webhook_flags(&b)), TlsSource::Bootstrap);
        if bootstrap {
            for resource in [
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
            ] {
                for verb in ["get", "patch"] {
                    want.insert(grant(
                        "admissionregistration.k8s.io",
                        resource,
                        verb,
                        contract::WEBHOOK_CONFIGURATION,
                    ));
                }
            }
        }
        assert_eq!(
            have, want,
            "{origin}: ClusterRole grants (left) must be exactly list+watch on WATCHED_RESOURCES \
             and, with --tls-bootstrap only, get+patch on the `tenantry` webhook configurations \
             (right)"
        );

        // In tenantry-system: with --tls-bootstrap, read and create the TLS Secret, nothing
        // else; with cert-manager, nothing at all.
        let role_bindings = b.all::<RoleBinding>();
        let bound: Vec<&String> = role_bindings
            .iter()
            .filter(|rb| rb.role_ref.kind == "Role" && sa_subject(&rb.subjects))
            .map(|rb| &rb.role_ref.name)
            .collect();
        if !bootstrap {
            assert!(
                bound.is_empty(),
                "{origin}: without --tls-bootstrap the webhook needs no Role, got {bound:?}"
            );
            continue;
        }
        assert_eq!(bound.len(), 1, "{origin}: one Role for the webhook");
        let roles = b.all::<Role>();
        let role = roles
            .iter()
            .find(|r| r.metadata.name.as_ref() == Some(bound[0]))
            .unwrap();
        assert_eq!(
            role.metadata.namespace.as_deref(),
            Some(contract::NAMESPACE)
        );
        assert!(
            b.all::<RoleBinding>()
                .iter()
                .any(|rb| rb.role_ref.kind == "Role"
                    && Some(&rb.role_ref.name) == role.metadata.name.as_ref()
                    && sa_subject(&rb.subjects)),
            "{origin}: the Role is bound to the webhook's ServiceAccount"
        );
        let have = grants(role.rules.as_deref().unwrap_or_default(), &origin);
        let get_named = grant("", "secrets", "get", TLS_SECRET);
        let get_any = grant("", "secrets", "get", "");
        let create = grant("", "secrets", "create", "");
        assert!(
            have.contains(&create) && (have.contains(&get_named) || have.contains(&get_any)),
            "{origin}: get+create on Secrets in {}",
            contract::NAMESPACE
        );
        assert!(
            have.len() == 2,
            "{origin}: the Role grants only get+create on Secrets, got {have:?}"
        );
    }
}

#[test]
fn generated_config_maps_and_secrets_are_referenced_and_exist() {
    for b in builds() {
        for (origin, template) in b.pod_templates() {
            let origin = format!("{}: {origin}", b.root.display());
            let spec = template.spec.unwrap();
            for v in spec.volumes.iter().flatten() {
                if let Some(cm) = &v.config_map {
                    config_map(&b, contract::NAMESPACE, &cm.name);
                }
                if let Some(secret) = &v.secret {
                    let name = secret.secret_name.clone().unwrap();
                    let issued = b
                        .custom::<crd::Certificate>(crd::CERT_MANAGER, "Certificate")
                        .iter()
                        .any(|c| {
                            c.spec.secret_name == name
                                && c.metadata.namespace.as_deref() == Some(contract::NAMESPACE)
                        });
                    assert!(
                        name == TLS_SECRET
                            || issued
                            || b.find::<Secret>(contract::NAMESPACE, &name).is_some(),
                        "{origin}: Secret volume `{name}`"
                    );
                }
            }
            let containers = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten());
            for c in containers {
                resolved_env(&b, contract::NAMESPACE, c);
                let mounts = c.volume_mounts.clone().unwrap_or_default();
                for m in &mounts {
                    assert!(
                        spec.volumes.iter().flatten().any(|v| v.name == m.name),
                        "{origin}: mount of unknown volume `{}`",
                        m.name
                    );
                }
            }
        }
    }
}

#[test]
fn dev_overlay_uses_postgres_and_redis_and_imports_the_example_tenants() {
    let b = build(&deploy_dir().join("overlays/dev"));
    let d = b.webhook_deployment();
    let c = webhook_container(&d);
    let env = resolved_env(&b, contract::NAMESPACE, &c);
    let flags = server_flags(&c.args.clone().unwrap_or_default(), &env, "dev webhook");
    assert!(
        flags["tenants"].starts_with("postgres://"),
        "dev: tenants from Postgres"
    );
    assert!(flags.contains_key("redis"), "dev: --redis");

    // The password reaches Postgres and the webhook from one Secret.
    let postgres = b.one::<Deployment>("postgres");
    let pg = &pod_spec(&postgres).containers[0];
    let pg_env: BTreeMap<String, String> = resolved_env(&b, contract::NAMESPACE, pg)
        .into_iter()
        .collect();
    let expected_url = format!(
        "postgres://{}:{}@postgres.{}.svc:5432/{}",
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        contract::NAMESPACE,
        pg_env["POSTGRES_DB"]
    );
    assert_eq!(flags["tenants"], expected_url);

    // The Job migrates, then imports the file its ConfigMap mounts: the example tenants.
    let job = b.one::<Job>("tenantry-import-tenants");
    let spec = job.spec.unwrap().template.spec.unwrap();
    let steps: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let args: Vec<Vec<String>> = steps.iter().map(|c| c.args.clone().unwrap()).collect();
    assert_eq!(args[0], ["migrate"]);
    assert_eq!(args[1][..2], ["tenants".to_string(), "import".to_string()]);
    for step in &steps {
        assert!(
            step.image
                .as_deref()
                .unwrap()
                .starts_with("ghcr.io/tenantry/tenantry:")
        );
        let env = resolved_env(&b, contract::NAMESPACE, step);
        assert!(
            env.iter()
                .any(|(k, v)| k == "TENANTRY_TENANTS" && *v == expected_url),
            "job step {}: TENANTRY_TENANTS from the Postgres Secret",
            step.name
        );
    }
    let file = Path::new(&args[1][2]);
    let mount = steps[1]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| file.starts_with(&m.mount_path))
        .expect("the imported file is mounted");
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let cm = config_map(
        &b,
        contract::NAMESPACE,
        &volume.config_map.as_ref().unwrap().name,
    );
    let key = file
        .strip_prefix(&mount.mount_path)
        .unwrap()
        .to_str()
        .unwrap();
    let example = read(&repo_root().join("examples/tenants.yaml"));
    assert!(
        cm.get(key) == Some(&example),
        "deploy/overlays/dev/tenants.yaml differs from examples/tenants.yaml; refresh it:\n  \
         cp examples/tenants.yaml deploy/overlays/dev/tenants.yaml"
    );
}

#[test]
fn base_tenants_file_is_a_valid_directory() {
    let path = deploy_dir().join("base/tenants.yaml");
    tenantry_tenancy::source::parse_yaml(&read(&path), &path).unwrap();
}

#[test]
fn replicas_share_quota_reservations() {
    for b in builds() {
        let origin = b.root.display().to_string();
        let d = b.webhook_deployment();
        let replicas = d.spec.replicas.unwrap_or(1);
        let c = webhook_container(&d);
        let env = resolved_env(&b, contract::NAMESPACE, &c);
        let flags = server_flags(&c.args.clone().unwrap_or_default(), &env, &origin);
        if replicas > 1 {
            let url = flags.get("redis").unwrap_or_else(|| {
                panic!(
                    "{origin}: {replicas} replicas without --redis each keep their own reservations"
                )
            });
            check_service_url(&b, url, 6379, &origin);
        }
    }
}

/// The CIDR blocks a NetworkPolicy rule admits from, with their exceptions.
fn admitted_blocks(
    rule: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule,
) -> Vec<(String, Vec<String>)> {
    rule.from
        .iter()
        .flatten()
        .filter_map(|peer| peer.ip_block.as_ref())
        .map(|b| (b.cidr.clone(), b.except.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn only_the_api_server_reaches_the_webhook_and_redis_wants_a_password() {
    for b in builds() {
        let origin = b.root.display().to_string();
        let d = b.webhook_deployment();
        let labels = template_labels(&d);
        let c = webhook_container(&d);
        let env = resolved_env(&b, contract::NAMESPACE, &c);
        let flags = server_flags(&c.args.clone().unwrap_or_default(), &env, &origin);
        let pod_network = flags
            .get("cluster-cidrs")
            .and_then(|v| v.split(',').next())
            .unwrap_or_else(|| panic!("{origin}: the webhook is told the cluster's networks"))
            .to_string();
        let policies: Vec<NetworkPolicy> = b.all();
        let guarding: Vec<&NetworkPolicy> = policies
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(contract::NAMESPACE)
                    && p.spec.as_ref().is_some_and(|s| {
                        s.pod_selector
                            .as_ref()
                            .is_some_and(|sel| selects(sel, &labels))
                    })
            })
            .collect();
        assert!(
            !guarding.is_empty(),
            "{origin}: a NetworkPolicy guards the webhook pods"
        );
        for p in guarding {
            let spec = p.spec.as_ref().unwrap();
            assert!(
                spec.policy_types.iter().flatten().any(|t| t == "Ingress"),
                "{origin}: {:?} restricts ingress",
                p.metadata.name
            );
            for rule in spec.ingress.iter().flatten() {
                let reaches_https = rule.ports.as_ref().is_none_or(|ports| {
                    ports.iter().any(|port| {
                        port.port
                            .as_ref()
                            .is_none_or(|p| resolve_port(&c, p) == Some(8443))
                    })
                });
                if !reaches_https {
                    continue;
                }
                let peers = rule.from.as_deref().unwrap_or_default();
                assert!(
                    !peers.is_empty(),
                    "{origin}: the HTTPS port is open to everyone, tenant pods included"
                );
                for peer in peers {
                    assert!(
                        peer.pod_selector.is_none() && peer.namespace_selector.is_none(),
                        "{origin}: the HTTPS port admits pods by selector: {peer:?}"
                    );
                }
                for (cidr, except) in admitted_blocks(rule) {
                    assert!(
                        cidr != "0.0.0.0/0" || except.contains(&pod_network),
                        "{origin}: {cidr} reaches the HTTPS port from the pod network {pod_network}"
                    );
                }
            }
        }
        // Redis decides quotas and rate limits: every pod may connect, none without a password
        // from the bootstrapped Secret; the webhook and injected enforcers say who they are.
        let redis: Deployment = b.one("redis");
        let redis_container = &pod_spec(&redis).containers[0];
        let redis_args = redis_container.args.clone().unwrap_or_default();
        let requirepass = redis_args
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| redis_args.get(i + 1))
            .unwrap_or_else(|| panic!("{origin}: Redis asks for a password"));
        assert_eq!(requirepass, "$(REDIS_PASSWORD)");
        let redis_env = resolved_env(&b, contract::NAMESPACE, redis_container);
        let webhook_password = env.iter().find(|(k, _)| k == "REDIS_PASSWORD");
        let redis_password = redis_env.iter().find(|(k, _)| k == "REDIS_PASSWORD");
        assert!(
            redis_password.is_some() && redis_password == webhook_password,
            "{origin}: Redis and the webhook share one password"
        );
        assert!(
            flags["redis"].contains(":$(REDIS_PASSWORD)@"),
            "{origin}: the webhook authenticates to Redis: {}",
            flags["redis"]
        );
        assert_eq!(
            flags.get("sidecar-redis-secret").map(String::as_str),
            Some("tenantry-ratelimit"),
            "{origin}: injected enforcers take their tenant's Redis user from its Secret"
        );
        let controller = b.one::<Deployment>("tenantry-controller");
        assert!(
            pod_spec(&controller).containers[0]
                .args
                .iter()
                .flatten()
                .any(|a| a.starts_with("--ratelimit-redis=")),
            "{origin}: the controller writes those Secrets"
        );
    }
}

#[test]
fn the_controller_gets_exactly_what_it_provisions() {
    use tenantry_controller_grants::*;
    for b in builds() {
        let origin = b.root.display().to_string();
        let d = b.one::<Deployment>("tenantry-controller");
        let spec = pod_spec(&d);
        let account = spec.service_account_name.clone().unwrap();
        let bound_to_controller = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == account
                    && s.namespace.as_deref() == Some(contract::NAMESPACE)
            })
        };
        let mut have = BTreeSet::new();
        for rb in b.all::<ClusterRoleBinding>() {
            if rb.role_ref.kind == "ClusterRole" && bound_to_controller(&rb.subjects) {
                let role = b.one::<ClusterRole>(&rb.role_ref.name);
                have.extend(grants(role.rules.as_deref().unwrap_or_default(), &origin));
            }
        }
        let mut want = BTreeSet::new();
        for (group, resource) in PROVISIONED {
            for verb in VERBS {
                want.insert(grant(group, resource, verb, ""));
            }
        }
        for role in ["admin", "edit", "view"] {
            want.insert(grant(
                "rbac.authorization.k8s.io",
                "clusterroles",
                "bind",
                role,
            ));
        }
        for (group, resource, verbs) in LIFECYCLE {
            for verb in *verbs {
                want.insert(grant(group, resource, verb, ""));
            }
        }
        // Usage for the Tenant mirrors: the webhook's watches.
        for (group, _, resource) in contract::WATCHED_RESOURCES {
            for verb in ["list", "watch"] {
                want.insert(grant(group, resource, verb, ""));
            }
        }
        assert_eq!(have, want, "{origin}: the controller's cluster-wide grants");
        let mut lease = BTreeSet::new();
        for rb in b.all::<RoleBinding>() {
            if rb.role_ref.kind == "Role" && bound_to_controller(&rb.subjects) {
                let roles = b.all::<Role>();
                let role = roles
                    .iter()
                    .find(|r| r.metadata.name.as_ref() == Some(&rb.role_ref.name))
                    .unwrap();
                assert_eq!(
                    role.metadata.namespace.as_deref(),
                    Some(contract::NAMESPACE)
                );
                lease.extend(grants(role.rules.as_deref().unwrap_or_default(), &origin));
            }
        }
        assert!(
            lease
                .iter()
                .all(|g| (g.1 == "leases" && g.0 == "coordination.k8s.io")
                    || (g.1 == "secrets"
                        && (g.2 == "create" || (g.2 == "get" && g.3 == "tenantry-redis")))),
            "{origin}: in tenantry-system the controller touches only its Lease and the Redis password: {lease:?}"
        );
        // Its tenant source is the webhook's.
        let c = &spec.containers[0];
        let env = resolved_env(&b, contract::NAMESPACE, c);
        let webhook_env = resolved_env(
            &b,
            contract::NAMESPACE,
            &webhook_container(&b.webhook_deployment()),
        );
        let tenants = |env: &[(String, String)]| {
            env.iter()
                .find(|(k, _)| k == "TENANTRY_TENANTS")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            tenants(&env),
            tenants(&webhook_env),
            "{origin}: one tenant source"
        );
        assert!(
            d.spec.replicas.unwrap_or(1) >= 2,
            "{origin}: a standby replica"
        );
    }
}

/// What the controller provisions, and the verbs server-side apply and pruning need.
mod tenantry_controller_grants {
    pub const PROVISIONED: &[(&str, &str)] = &[
        ("", "namespaces"),
        ("", "serviceaccounts"),
        ("", "limitranges"),
        ("", "secrets"),
        ("networking.k8s.io", "networkpolicies"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("scheduling.k8s.io", "priorityclasses"),
    ];
    pub const VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
    /// Tenant workloads it scales down and back (never creates or deletes), and the Events it
    /// records about what it changed.
    pub const LIFECYCLE: &[(&str, &str, &[&str])] = &[
        ("apps", "deployments", &["list", "patch"]),
        ("apps", "statefulsets", &["list", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        // The Tenant mirrors, its alone.
        (
            "tenantry.dev",
            "tenants",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("tenantry.dev", "tenants/status", &["patch"]),
    ];
}

// ---------------------------------------------------------------------------------------------
// The production overlay.

fn prod() -> Build {
    build(&deploy_dir().join("overlays/prod"))
}

#[test]
fn prod_overlay_takes_its_serving_certificate_from_cert_manager() {
    let b = prod();
    let flags = webhook_flags(&b);
    let TlsSource::CertManager(serving) = tls_source(&b, &flags) else {
        panic!("prod: the serving certificate comes from cert-manager, not --tls-bootstrap");
    };
    let dns = format!("{}.{}.svc", contract::SERVICE_NAME, contract::NAMESPACE);
    assert!(serving.spec.dns_names.contains(&dns));
    assert_ne!(serving.spec.is_ca, Some(true), "the leaf is no CA");
    assert_ne!(
        serving.spec.secret_name, TLS_SECRET,
        "cert-manager and --tls-bootstrap never share one Secret"
    );
    assert!(
        serving.spec.usages.is_empty() || serving.spec.usages.iter().any(|u| u == "server auth"),
        "the leaf may serve TLS"
    );

    // The chain: serving Certificate ← CA Issuer ← CA Certificate ← self-signed Issuer, all in
    // tenantry-system (Issuers are namespaced; a ClusterIssuer would be trusted cluster-wide).
    let issuers: Vec<crd::Issuer> = b.custom(crd::CERT_MANAGER, "Issuer");
    let certs: Vec<crd::Certificate> = b.custom(crd::CERT_MANAGER, "Certificate");
    fn issuer_of<'a>(issuers: &'a [crd::Issuer], cert: &crd::Certificate) -> &'a crd::Issuer {
        let r = &cert.spec.issuer_ref;
        assert_eq!(r.kind.as_deref().unwrap_or("Issuer"), "Issuer");
        assert_eq!(
            r.group.as_deref().unwrap_or("cert-manager.io"),
            "cert-manager.io"
        );
        assert_eq!(
            cert.metadata.namespace.as_deref(),
            Some(contract::NAMESPACE)
        );
        issuers
            .iter()
            .find(|i| {
                i.metadata.name.as_deref() == Some(r.name.as_str())
                    && i.metadata.namespace == cert.metadata.namespace
            })
            .unwrap_or_else(|| panic!("prod: no Issuer `{}` for {:?}", r.name, cert.metadata.name))
    }
    let ca_issuer = issuer_of(&issuers, &serving);
    let ca_secret = &ca_issuer
        .spec
        .ca
        .as_ref()
        .expect("prod: the serving certificate is signed by a CA Issuer")
        .secret_name;
    let ca_cert = certs
        .iter()
        .find(|c| &c.spec.secret_name == ca_secret)
        .unwrap_or_else(|| panic!("prod: no Certificate issues the CA Secret `{ca_secret}`"));
    assert_eq!(
        ca_cert.spec.is_ca,
        Some(true),
        "prod: the CA Certificate is a CA"
    );
    let root = issuer_of(&issuers, ca_cert);
    assert!(
        root.spec.self_signed.is_some(),
        "prod: the CA is self-signed (its only relying party is the API server, via caBundle)"
    );

    // cainjector copies the CA of exactly this Certificate into both configurations.
    let inject = format!(
        "{}/{}",
        contract::NAMESPACE,
        serving.metadata.name.as_deref().unwrap()
    );
    let mutating = b.one::<MutatingWebhookConfiguration>(contract::WEBHOOK_CONFIGURATION);
    let validating = b.one::<ValidatingWebhookConfiguration>(contract::WEBHOOK_CONFIGURATION);
    for (kind, annotations) in [
        ("mutating", mutating.metadata.annotations),
        ("validating", validating.metadata.annotations),
    ] {
        assert_eq!(
            annotations
                .unwrap_or_default()
                .get("cert-manager.io/inject-ca-from"),
            Some(&inject),
            "prod: the {kind} configuration gets its caBundle from the serving Certificate"
        );
    }
}

#[test]
fn prod_overlay_reads_tenants_from_the_operators_postgres_secret_and_migrates() {
    let b = prod();
    let expected = operator_secret("tenantry-postgres", "url");
    assert!(
        b.find::<Secret>(contract::NAMESPACE, "tenantry-postgres")
            .is_none(),
        "prod: the overlay ships no database password; the operator creates the Secret"
    );
    let tenants = |c: &Container| {
        resolved_env(&b, contract::NAMESPACE, c)
            .into_iter()
            .find(|(k, _)| k == "TENANTRY_TENANTS")
            .map(|(_, v)| v)
    };
    let webhook = b.webhook_deployment();
    let controller = b.one::<Deployment>("tenantry-controller");
    assert_eq!(
        tenants(&webhook_container(&webhook)).as_ref(),
        Some(&expected)
    );
    assert_eq!(
        tenants(&pod_spec(&controller).containers[0]).as_ref(),
        Some(&expected)
    );

    // The Job makes the tables the webhook and controller wait for, with the same image
    // version, and imports nothing (tenants are the operator's, changed with the CLI).
    let job = b.one::<Job>("tenantry-migrate");
    let spec = job.spec.unwrap().template.spec.unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers.len(), 1);
    let step = &spec.containers[0];
    assert_eq!(step.args.as_deref(), Some(&["migrate".to_string()][..]));
    assert_eq!(tenants(step).as_ref(), Some(&expected));
    let tag = |image: &str| image.rsplit_once(':').map(|(_, t)| t.to_string());
    let image = step.image.as_deref().unwrap();
    assert!(image.starts_with("ghcr.io/tenantry/tenantry:"));
    assert_eq!(
        tag(image),
        tag(webhook_container(&webhook).image.as_deref().unwrap()),
        "prod: the migration is the webhook's version"
    );
}

#[test]
fn pod_disruption_budgets_leave_room_to_drain_and_cover_prod() {
    for b in builds() {
        let origin = b.root.display().to_string();
        for pdb in b.all::<PodDisruptionBudget>() {
            let name = pdb.metadata.name.clone().unwrap();
            let spec = pdb.spec.unwrap();
            let selector = spec.selector.unwrap();
            let covered: Vec<Deployment> = b
                .all::<Deployment>()
                .into_iter()
                .filter(|d| selects(&selector, &template_labels(d)))
                .collect();
            assert_eq!(
                covered.len(),
                1,
                "{origin}: PodDisruptionBudget {name} covers one Deployment"
            );
            let replicas = covered[0].spec.replicas.unwrap_or(1);
            let Some(IntOrString::Int(min)) = spec.min_available else {
                panic!("{origin}: PodDisruptionBudget {name}: an integer minAvailable");
            };
            // minAvailable ≥ replicas would block every node drain for good.
            assert!(
                (1..replicas).contains(&min),
                "{origin}: PodDisruptionBudget {name}: minAvailable {min} of {replicas} replicas"
            );
        }
    }
    let b = prod();
    let controller = b.one::<Deployment>("tenantry-controller");
    let labels = template_labels(&controller);
    let pdb = b
        .all::<PodDisruptionBudget>()
        .into_iter()
        .find(|p| selects(p.spec.as_ref().unwrap().selector.as_ref().unwrap(), &labels))
        .expect("prod: a PodDisruptionBudget covers the controller");
    assert_eq!(pdb.spec.unwrap().min_available, Some(IntOrString::Int(1)));
    assert!(
        b.webhook_deployment().spec.replicas.unwrap_or(1) >= 2,
        "prod: at least two webhook replicas"
    );
}

#[test]
fn redis_keeps_nothing_on_disk() {
    // Reservations and rate-limit budgets live seconds; a snapshot would only bring back stale
    // ones after a restart (and needs a writable, persistent volume).
    for b in builds() {
        let redis: Deployment = b.one("redis");
        let args = pod_spec(&redis).containers[0]
            .args
            .clone()
            .unwrap_or_default();
        let value = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .map(String::as_str)
        };
        assert_eq!(
            value("--save"),
            Some(""),
            "{}: no RDB snapshots",
            b.root.display()
        );
        assert_eq!(
            value("--appendonly"),
            Some("no"),
            "{}: no AOF",
            b.root.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Observability: what deploy/observability scrapes is what the installation serves.

#[test]
fn monitors_scrape_the_ports_the_installation_serves() {
    let obs = build(&deploy_dir().join("observability"));
    let base = build(&deploy_dir().join("base"));
    let monitoring = obs.objects[0]["metadata"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    for o in &obs.objects {
        assert_eq!(
            o["metadata"]["namespace"].as_str(),
            Some(monitoring.as_str()),
            "observability: everything in one namespace, Prometheus's"
        );
    }

    // The webhook: its Service, by labels, on the port serving /metrics.
    let service_monitors: Vec<crd::ServiceMonitor> = obs.custom(crd::MONITORING, "ServiceMonitor");
    let [webhook_monitor] = &service_monitors[..] else {
        panic!("observability: one ServiceMonitor, the webhook's");
    };
    // prometheus-operator names the job after the Service; the alerts and dashboard use it.
    let service = base.one::<Service>(contract::SERVICE_NAME);
    let service_labels = service.metadata.labels.clone().unwrap_or_default();
    assert!(selects(&webhook_monitor.spec.selector, &service_labels));
    assert_eq!(
        webhook_monitor.spec.namespace_selector.match_names,
        [contract::NAMESPACE]
    );
    let metrics_port = service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some(webhook_monitor.spec.endpoints[0].port.as_str()))
        .expect("the ServiceMonitor names a port of the webhook Service");
    let c = webhook_container(&base.webhook_deployment());
    assert_eq!(
        resolve_port(&c, metrics_port.target_port.as_ref().unwrap()),
        Some(port_of(contract::DEFAULT_METRICS_LISTEN)),
        "the ServiceMonitor scrapes --metrics-listen"
    );
    assert_eq!(
        webhook_monitor.spec.endpoints[0].path.as_deref(),
        Some(contract::METRICS_PATH)
    );

    let pod_monitors: Vec<crd::PodMonitor> = obs.custom(crd::MONITORING, "PodMonitor");
    let monitor = |name: &str| {
        pod_monitors
            .iter()
            .find(|m| m.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("observability: PodMonitor {name}"))
    };

    // The controller: its pods, on the container port named like the monitor's.
    let controller = monitor("tenantry-controller");
    let d = base.one::<Deployment>("tenantry-controller");
    assert!(selects(&controller.spec.selector, &template_labels(&d)));
    assert_eq!(
        controller.spec.namespace_selector.match_names,
        [contract::NAMESPACE]
    );
    let port = IntOrString::String(controller.spec.pod_metrics_endpoints[0].port.clone());
    let flag = pod_spec(&d).containers[0]
        .args
        .iter()
        .flatten()
        .find_map(|a| a.strip_prefix("--metrics-listen="))
        .map(port_of);
    assert_eq!(
        resolve_port(&pod_spec(&d).containers[0], &port),
        flag,
        "the controller's PodMonitor scrapes --metrics-listen"
    );

    // Injected enforcers: every pod the webhook labels with its tenant, on the admin port of
    // the sidecar the webhook really injects.
    let enforcer = monitor("tenantry-enforcer");
    assert!(enforcer.spec.namespace_selector.any);
    let tenant_pod = BTreeMap::from([(
        tenantry_webhook::references::TENANT_LABEL.to_string(),
        "acme".to_string(),
    )]);
    assert!(selects(&enforcer.spec.selector, &tenant_pod));
    assert!(!selects(&enforcer.spec.selector, &BTreeMap::new()));
    let sidecar = tenantry_webhook::pod::sidecar(
        &tenantry_webhook::pod::InjectionConfig::default(),
        "acme",
        "free",
        8080,
    );
    let sidecar: Container = serde_json::from_value(sidecar).unwrap();
    let endpoint = &enforcer.spec.pod_metrics_endpoints[0];
    let admin = resolve_port(&sidecar, &IntOrString::String(endpoint.port.clone()))
        .expect("the enforcer PodMonitor names a port of the injected sidecar");
    assert_eq!(
        admin,
        i32::from(tenantry_webhook::pod::InjectionConfig::default().admin_port),
        "the PodMonitor scrapes the enforcer's admin port"
    );
    assert_ne!(
        endpoint.honor_labels,
        Some(true),
        "tenant pods must not set their own namespace, pod or tenant labels"
    );
    let pod_label = format!(
        "__meta_kubernetes_pod_label_{}",
        tenantry_webhook::references::TENANT_LABEL.replace(['.', '/', '-'], "_")
    );
    assert!(
        endpoint
            .relabelings
            .iter()
            .any(|r| r.source_labels == [pod_label.clone()]
                && r.target_label.as_deref() == Some("tenant")),
        "the enforcer samples carry the pod's tenant as `tenant` (the dashboard groups by it)"
    );

    // The webhook's NetworkPolicy admits Prometheus's namespace to the metrics port.
    let policy = base.one::<NetworkPolicy>("tenantry-webhook");
    let admitted = policy
        .spec
        .unwrap()
        .ingress
        .unwrap_or_default()
        .into_iter()
        .any(|rule| {
            let from_monitoring = rule.from.iter().flatten().any(|peer| {
                peer.namespace_selector.as_ref().is_some_and(|s| {
                    s.match_labels
                        .as_ref()
                        .and_then(|l| l.get(NAMESPACE_NAME_LABEL))
                        == Some(&monitoring)
                })
            });
            let to_metrics = rule.ports.iter().flatten().any(|p| {
                p.port
                    .as_ref()
                    .and_then(|p| resolve_port(&c, p))
                    .is_some_and(|p| p == port_of(contract::DEFAULT_METRICS_LISTEN))
            });
            from_monitoring && to_metrics
        });
    assert!(
        admitted,
        "the webhook's NetworkPolicy admits `{monitoring}` to the metrics port"
    );

    // The dashboard ConfigMap is found by Grafana's sidecar, under one fixed name.
    let dashboards: Vec<ConfigMap> = obs.all();
    let [dashboard] = &dashboards[..] else {
        panic!("observability: one ConfigMap, the dashboard");
    };
    assert_eq!(
        dashboard
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("grafana_dashboard"))
            .map(String::as_str),
        Some("1")
    );
    assert!(
        obs.generated.iter().all(|g| !g.hashed),
        "the dashboard ConfigMap keeps one name, or every edit leaves a duplicate behind"
    );
    assert!(
        dashboard
            .data
            .as_ref()
            .unwrap()
            .keys()
            .all(|k| k.ends_with(".json")),
        "Grafana's sidecar loads *.json keys"
    );
}

// ---------------------------------------------------------------------------------------------
// The real kustomize.

/// `objects` keyed by (kind, namespace, name), with null fields dropped (kustomize omits them).
fn by_identity(objects: &[Value], origin: &str) -> BTreeMap<(String, String, String), Value> {
    fn drop_nulls(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(drop_nulls);
            }
            Value::Array(items) => items.iter_mut().for_each(drop_nulls),
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    for o in objects {
        let mut o = o.clone();
        drop_nulls(&mut o);
        let key = (
            o["kind"].as_str().unwrap_or_default().to_string(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        assert!(
            out.insert(key.clone(), o).is_none(),
            "{origin}: {key:?} twice"
        );
    }
    out
}

/// Replaces every string equal to `from` in `v` with `to`.
fn rename_everywhere(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) if s == from => *s = to.to_string(),
        Value::Object(map) => map
            .values_mut()
            .for_each(|v| rename_everywhere(v, from, to)),
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| rename_everywhere(v, from, to)),
        _ => {}
    }
}

#[test]
#[cfg_attr(
    not(has_kubectl),
    ignore = "kubectl was not on PATH when the tests were built (tests/build.rs)"
)]
fn kubectl_kustomize_renders_the_same_objects() {
    for b in all_builds() {
        let origin = format!("kubectl kustomize {}", b.root.display());
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&b.root)
            .output()
            .unwrap_or_else(|e| panic!("{origin}: cannot run kubectl: {e}"));
        assert!(
            out.status.success(),
            "{origin} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut real: Vec<Value> =
            serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap())
                .unwrap_or_else(|e| panic!("{origin}: output is not YAML: {e}"));
        real.retain(|o| !o.is_null());

        // Generated ConfigMaps: kustomize's name is `NAME-<hash of the content>` (rewritten in
        // every reference), unless hashing is off. Map it back to the plain name used here.
        for g in &b.generated {
            let names: Vec<String> = real
                .iter()
                .filter(|o| {
                    o["kind"] == "ConfigMap"
                        && o["metadata"]["namespace"].as_str() == g.namespace.as_deref()
                })
                .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
                .filter(|n| match n.strip_prefix(&format!("{}-", g.name)) {
                    Some(hash) => {
                        g.hashed
                            && hash.len() == 10
                            && hash.chars().all(|c| c.is_ascii_alphanumeric())
                    }
                    None => !g.hashed && *n == g.name,
                })
                .collect();
            assert_eq!(
                names.len(),
                1,
                "{origin}: the generated ConfigMap `{}` (hashed: {})",
                g.name,
                g.hashed
            );
            for o in &mut real {
                rename_everywhere(o, &names[0], &g.name);
            }
        }

        let real = by_identity(&real, &origin);
        let ours = by_identity(&b.objects, &origin);
        let real_keys: BTreeSet<_> = real.keys().collect();
        let our_keys: BTreeSet<_> = ours.keys().collect();
        assert_eq!(
            real_keys, our_keys,
            "{origin}: the objects kubectl renders (left) and this test's kustomize (right)"
        );
        for (key, object) in &ours {
            assert!(
                real[key] == *object,
                "{origin}: {key:?} differs:\nkubectl: {}\nthis test: {}",
                serde_json::to_string_pretty(&real[key]).unwrap(),
                serde_json::to_string_pretty(object).unwrap()
            );
        }
    }
}
