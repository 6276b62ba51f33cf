//! Cost of a cache hit in the `Cached` layer for a realistic request: a ~20 KB diff, a
//! service catalogue and a schema with an allow-list. A hit hashes the normalised request
//! and clones the stored answer; it must stay far below one model call.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use previewd_ai::provider::layers::{Cached, DEFAULT_CACHE_TTL, cache_key};
use previewd_core::ai::{AiError, AiProvider, AiRequest, AiResponse, Capabilities, UntrustedInput};
use serde_json::json;

/// A provider that answers instantly and counts calls, so the bench can prove it measured
/// hits only.
struct Counting(AtomicU64);

#[async_trait]
impl AiProvider for Counting {
    fn id(&self) -> &str {
        "bench:counting"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn complete_json(&self, _request: &AiRequest) -> Result<AiResponse, AiError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(AiResponse {
            value: json!({"services": ["orders", "billing"]}),
            model: "bench".into(),
            prompt_tokens: Some(5000),
            completion_tokens: Some(12),
        })
    }
}

fn diff_of_about(bytes: usize) -> String {
    let mut diff = String::new();
    let mut file = 0;
    while diff.len() < bytes {
        file += 1;
        diff.push_str(&format!(
            "diff --git a/services/svc{file}/handler.go b/services/svc{file}/handler.go\n\
             index 3f2a9c1..8b7d4e2 100644\n--- a/services/svc{file}/handler.go\n\
             +++ b/services/svc{file}/handler.go\n@@ -10,7 +10,9 @@ func Handle(w http.ResponseWriter, r *http.Request) {{\n"
        ));
        for line in 0..30 {
            diff.push_str(&format!(
                "+\tlog.Printf(\"request %s line {line} of file {file}\", r.URL.Path)\r\n"
            ));
        }
    }
    diff
}

fn request() -> AiRequest {
    let services: Vec<String> = (1..=40).map(|i| format!("svc{i}")).collect();
    let catalogue: String = services
        .iter()
        .map(|s| format!("{s}: services/{s}/** (depends on proto/**)\n"))
        .collect();
    AiRequest {
        feature: "services".into(),
        prompt_version: 1,
        instructions: "Decide which services this change affects.".into(),
        context: catalogue,
        untrusted: vec![
            UntrustedInput {
                label: "pull request title".into(),
                text: "Log every request".into(),
            },
            UntrustedInput {
                label: "diff".into(),
                text: diff_of_about(20 * 1024),
            },
        ],
        schema_name: "affected_services".into(),
        schema: json!({
            "type": "object", "additionalProperties": false, "required": ["services"],
            "properties": {"services": {"type": "array", "items": {"type": "string", "enum": services}}}
        }),
        temperature: 0.0,
        max_output_tokens: 256,
        deadline: Duration::from_secs(30),
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
    let inner = Arc::new(Counting(AtomicU64::new(0)));
    let cached = Cached::new(inner.clone(), DEFAULT_CACHE_TTL, 10_000);
    let req = request();
    let diff_len = req.untrusted[1].text.len();
    runtime
        .block_on(cached.complete_json(&req))
        .unwrap_or_else(|e| panic!("warm-up: {e}"));

    let mut group = c.benchmark_group("cache");
    group.bench_function(format!("hit_{}kb_diff", diff_len / 1024), |b| {
        b.iter(|| {
            runtime
                .block_on(cached.complete_json(black_box(&req)))
                .unwrap_or_else(|e| panic!("hit: {e}"))
        })
    });
    group.bench_function("key_only", |b| {
        b.iter(|| cache_key("bench:counting", black_box(&req)))
    });
    group.finish();
    assert_eq!(
        inner.0.load(Ordering::Relaxed),
        1,
        "every measured call must be a hit"
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
