//! Cost of the webhook's request path for a real ~25 KB `pull_request` payload:
//! signature check, parse, policy decision and rendering of the `PreviewEnvironment`.
//!
//! Needs the payload fixtures: `npm ci --prefix tests/fixtures/npm`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use previewd_github::event::PullRequestEvent;
use previewd_github::policy::{Decision, decide};
use previewd_github::signature::{sign, verify};
use previewd_github::webhook::desired_environment;
use previewd_kube::crd::PreviewRepository;
use secrecy::SecretString;
use serde_json::{Value, json};

fn payload() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "../tests/fixtures/npm/node_modules/@octokit/webhooks-examples/api.github.com/index.json",
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run `npm ci --prefix tests/fixtures/npm`",
            path.display()
        )
    });
    let index: Vec<Value> = serde_json::from_str(&text).unwrap_or_default();
    let example = index
        .iter()
        .find(|e| e["name"] == "pull_request")
        .and_then(|e| e["examples"].as_array())
        .and_then(|examples| examples.iter().find(|x| x["action"] == "synchronize"))
        .cloned()
        .unwrap_or_else(|| panic!("no synchronize example in {}", path.display()));
    serde_json::to_vec(&example).unwrap_or_default()
}

fn settings() -> PreviewRepository {
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "hello-world", "namespace": "previews"},
        "spec": {
            "repository": "Codertocat/Hello-World",
            "baseDomain": "preview.example.com",
            "catalogue": {"services": [
                {"name": "web", "image": "ghcr.io/codertocat/web:pr-{{number}}"},
                {"name": "api", "image": "ghcr.io/codertocat/api:{{sha}}"}
            ]}
        }
    }))
    .unwrap_or_else(|e| panic!("settings: {e}"))
}

fn bench(c: &mut Criterion) {
    let body = payload();
    let secret = "bench-secret";
    let secrets = vec![SecretString::from(secret.to_string())];
    let header = sign(secret.as_bytes(), &body);
    let settings = settings();

    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("verify_signature", |b| {
        b.iter(|| {
            verify(
                black_box(&secrets),
                Some(black_box(&header)),
                black_box(&body),
            )
        })
    });
    group.bench_function("parse_event", |b| {
        b.iter(|| serde_json::from_slice::<PullRequestEvent>(black_box(&body)))
    });
    let event: PullRequestEvent =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("parse: {e}"));
    group.bench_function("decide_and_render", |b| {
        b.iter(|| {
            let decision = decide(black_box(&event), &settings.spec.gating, None);
            assert!(matches!(decision, Decision::Apply { .. }));
            desired_environment(&event, &settings, None, "delivery", None)
        })
    });
    group.bench_function("verify_parse_render", |b| {
        b.iter(|| {
            verify(&secrets, Some(&header), black_box(&body)).ok();
            let event: PullRequestEvent = serde_json::from_slice(black_box(&body)).ok()?;
            let _ = decide(&event, &settings.spec.gating, None);
            desired_environment(&event, &settings, None, "delivery", None).ok()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
