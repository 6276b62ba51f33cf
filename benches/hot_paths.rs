//! The hot paths of a webhook delivery and of a reconcile, outside any I/O: signature
//! check, payload parse and environment render (every delivery), the cost estimate
//! (every reconcile), and naming (every render and reconcile).
//!
//! ```sh
//! cargo bench --bench hot_paths -- --save-baseline before   # on the old commit
//! cargo bench --bench hot_paths -- --baseline before        # on the new one: the change
//! ```
//! Without flags criterion compares with the previous run in `target/criterion`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use previewd_core::{CostEstimate, Pricing, ResourceRequests, naming};
use previewd_github::event::PullRequestEvent;
use previewd_github::signature;
use previewd_github::webhook::desired_environment;
use previewd_kube::crd::PreviewRepository;
use secrecy::SecretString;
use serde_json::json;

const PAYLOAD: &str = include_str!("../examples/demo/pull_request.opened.json");

fn settings(services: usize) -> PreviewRepository {
    let services: Vec<_> = (0..services)
        .map(|i| json!({"name": format!("svc-{i}"), "image": "ghcr.io/acme/svc:pr-{{number}}", "port": 8080}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewRepository",
        "metadata": {"name": "shop", "namespace": "previews"},
        "spec": {"repository": "acme/shop", "baseDomain": "preview.acme.dev",
                 "catalogue": {"services": services}}
    }))
    .unwrap()
}

fn webhook(c: &mut Criterion) {
    let body = PAYLOAD.as_bytes();
    let secret = "bench-secret";
    let header = signature::sign(secret.as_bytes(), body);
    let secrets = vec![SecretString::from(secret.to_string())];
    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("verify_signature", |b| {
        b.iter(|| {
            signature::verify(
                black_box(&secrets),
                Some(black_box(&header)),
                black_box(body),
            )
            .unwrap()
        })
    });
    group.bench_function("parse_pull_request", |b| {
        b.iter(|| serde_json::from_slice::<PullRequestEvent>(black_box(body)).unwrap())
    });
    let event: PullRequestEvent = serde_json::from_slice(body).unwrap();
    for services in [5, 20] {
        let repo = settings(services);
        group.bench_function(format!("render_{services}_services"), |b| {
            b.iter(|| {
                desired_environment(black_box(&event), black_box(&repo), None, "d-1", None).unwrap()
            })
        });
    }
    group.bench_function("verify_parse_render_5_services", |b| {
        let repo = settings(5);
        b.iter(|| {
            signature::verify(&secrets, Some(&header), black_box(body)).unwrap();
            let event: PullRequestEvent = serde_json::from_slice(black_box(body)).unwrap();
            desired_environment(&event, &repo, None, "d-1", None).unwrap()
        })
    });
    group.finish();
}

fn cost(c: &mut Criterion) {
    let pricing = Pricing::default();
    c.bench_function("cost/estimate_20_services", |b| {
        b.iter(|| {
            let total = (0..20).fold(ResourceRequests::ZERO, |acc, _| {
                let one = ResourceRequests::from_quantities(black_box("250m"), black_box("512Mi"))
                    .unwrap();
                ResourceRequests {
                    cpu_millicores: acc.cpu_millicores + one.cpu_millicores,
                    memory_bytes: acc.memory_bytes + one.memory_bytes,
                }
            });
            CostEstimate::estimate(&total, black_box(&pricing))
        })
    });
}

fn naming_paths(c: &mut Criterion) {
    let mut group = c.benchmark_group("naming");
    group.bench_function("namespace_short_branch", |b| {
        b.iter(|| naming::namespace_name(black_box(1234), black_box("feature/login")))
    });
    group.bench_function("namespace_long_branch", |b| {
        let branch = "feature/".to_string() + &"Very_Long-Branch.Name/".repeat(8);
        b.iter(|| naming::namespace_name(black_box(1234), black_box(&branch)))
    });
    group.bench_function("environment_name", |b| {
        b.iter(|| naming::environment_name(black_box("Acme/Shop.Web"), black_box(1234)))
    });
    group.finish();
}

criterion_group!(benches, webhook, cost, naming_paths);
criterion_main!(benches);
