//! The decision function on a typical Pod CREATE review (kubectl apply, as the API server sends
//! it) and mutation of a Pod UPDATE, each beside a serde_json parse of the same review; and
//! with 10 versus 1,000 tenants in the directory and in the policies.
//!
//! cargo bench -p tenantry-webhook --bench decision

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::fmt::Write as _;

use criterion::{Criterion, criterion_group, criterion_main};
use tenantry_tenancy::model::{Members, Status, TenantSpec, TenantsFile};
use tenantry_tenancy::policy::SourceFile;
use tenantry_tenancy::{Directory, PolicyEngine};
use tenantry_webhook::usage::NoUsage;
use tenantry_webhook::{
    AdmissionRequest, AdmissionReview, InjectionConfig, Inputs, decide, embedded,
};

const POD_CREATE: &[u8] = include_bytes!("../tests/fixtures/pod-create.json");
/// A Pod UPDATE (a label changed by `kubectl apply`): mutation stamps labels only.
const POD_UPDATE: &[u8] = include_bytes!("../tests/fixtures/pod-update.json");

/// The example directory plus `extra` synthetic tenants, each with its own namespace, member
/// and a tenant-scoped policy.
fn world(extra: usize) -> (Directory, PolicyEngine) {
    let mut file: TenantsFile = serde_saphyr::from_str(embedded::TENANTS_YAML).unwrap();
    let (schema, mut policies) = embedded::policy_sources();
    let mut scoped = String::new();
    for i in 0..extra {
        let id = format!("tenant-{i}");
        file.tenants.insert(
            id.clone(),
            TenantSpec {
                tier: "free".into(),
                status: Status::Active,
                client: None,
                namespaces: vec![format!("{id}-prod")],
                members: Members {
                    users: vec![format!("user-{i}")],
                    ..Members::default()
                },
                teams: Default::default(),
                scale_down_on_suspend: None,
                purge_after: None,
            },
        );
        writeln!(
            scoped,
            "@id(\"{id}-no-blocked-secret\")\n@message(\"no\")\nforbid (principal, action, resource in Tenant::\"{id}\")\nwhen {{ resource.name == \"blocked\" }};"
        )
        .unwrap();
    }
    policies.push(SourceFile {
        path: "scoped.cedar".into(),
        text: scoped,
    });
    let directory = Directory::build(file, 1).unwrap();
    let engine = PolicyEngine::from_sources(&schema, &policies).unwrap();
    (directory, engine)
}

/// The request as it reaches /validate: already mutated.
fn mutated(inputs: &Inputs<'_>) -> AdmissionRequest {
    let mut req = AdmissionReview::parse_request(POD_CREATE).unwrap();
    let m = decide::mutate(inputs, &req);
    json_patch::patch(&mut req.object, &m.response.decoded_patch().unwrap()).unwrap();
    assert!(decide::validate(inputs, &req).response.allowed);
    req
}

fn pod_create(c: &mut Criterion) {
    let (directory, policies) = world(7);
    let injection = InjectionConfig::default();
    let boundary = tenantry_webhook::Boundary::default();
    let inputs = Inputs {
        directory: &directory,
        usage: &NoUsage,
        policies: &policies,
        injection: &injection,
        boundary: &boundary,
    };
    let original = AdmissionReview::parse_request(POD_CREATE).unwrap();
    let final_object = mutated(&inputs);

    let mut g = c.benchmark_group("pod_create");
    g.bench_function("serde_json_parse", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(std::hint::black_box(POD_CREATE)).unwrap()
        })
    });
    g.bench_function("parse_review", |b| {
        b.iter(|| AdmissionReview::parse_request(std::hint::black_box(POD_CREATE)).unwrap())
    });
    g.bench_function("mutate", |b| {
        b.iter(|| decide::mutate(&inputs, std::hint::black_box(&original)))
    });
    g.bench_function("validate", |b| {
        b.iter(|| decide::validate(&inputs, std::hint::black_box(&final_object)))
    });
    g.finish();

    let update = AdmissionReview::parse_request(POD_UPDATE).unwrap();
    let mut g = c.benchmark_group("pod_update");
    g.bench_function("serde_json_parse", |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(std::hint::black_box(POD_UPDATE)).unwrap()
        })
    });
    g.bench_function("mutate", |b| {
        b.iter(|| decide::mutate(&inputs, std::hint::black_box(&update)))
    });
    g.finish();
}

fn tenants(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate_by_tenant_count");
    for n in [10usize, 1000] {
        let (directory, policies) = world(n - 3);
        let injection = InjectionConfig::default();
        let boundary = tenantry_webhook::Boundary::default();
        let inputs = Inputs {
            directory: &directory,
            usage: &NoUsage,
            policies: &policies,
            injection: &injection,
            boundary: &boundary,
        };
        let req = mutated(&inputs);
        g.bench_function(format!("{n}_tenants"), |b| {
            b.iter(|| decide::validate(&inputs, std::hint::black_box(&req)))
        });
    }
    g.finish();
}

criterion_group!(benches, pod_create, tenants);
criterion_main!(benches);
