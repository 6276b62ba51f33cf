//! Bounded fuzzing in the test suite: every fuzz target of
//! [`previewd_github::fuzz_targets`] runs over its seed corpus (the real
//! `@octokit/webhooks-examples` payloads, every event) and the crash regressions in
//! `fuzz/regressions/<target>/`, then over a fixed number of mutated inputs from a fixed
//! seed, so a run is reproducible. The coverage-guided runs are in `fuzz/` (see
//! `fuzz/README.md`). Set `PREVIEWD_FUZZ_ITERATIONS` for a longer run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use previewd_github::fuzz_targets;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

fn iterations() -> usize {
    std::env::var("PREVIEWD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every example payload of every event, as sent (compact JSON).
fn octokit_payloads() -> Vec<Vec<u8>> {
    let path = repo_root().join(
        "tests/fixtures/npm/node_modules/@octokit/webhooks-examples/api.github.com/index.json",
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): run `npm ci --prefix tests/fixtures/npm`",
            path.display()
        )
    });
    let index: Vec<Value> = serde_json::from_str(&text).unwrap();
    index
        .iter()
        .flat_map(|e| e["examples"].as_array().cloned().unwrap_or_default())
        .map(|x| serde_json::to_vec(&x).unwrap())
        .collect()
}

/// Files of `fuzz/<dir>/<target>/` (seed corpus or crash regressions), if any.
fn files(dir: &str, target: &str) -> Vec<Vec<u8>> {
    let dir = repo_root().join("fuzz").join(dir).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect()
}

/// One random mutation, the kinds libFuzzer uses: bit flips, byte changes, inserts,
/// deletions, truncation, duplication and interesting values.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = rng.random_range(1..=4);
    for _ in 0..rounds {
        let len = out.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = rng.random();
            }
            2 => {
                let i = rng.random_range(0..=len);
                let token: &[u8] = [
                    b"\"".as_slice(),
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b"null",
                    b"-1",
                    b"1e999",
                    b"18446744073709551616",
                    b"\\u0000",
                    b"\xff\xfe",
                    b"{{branch}}",
                    b"sha256=",
                    b"payload=",
                    b"%",
                    b"&",
                ][rng.random_range(0..16)];
                out.splice(i..i, token.iter().copied());
            }
            3 if len > 0 => {
                let start = rng.random_range(0..len);
                let end = (start + rng.random_range(1..=16)).min(len);
                out.drain(start..end);
            }
            4 if len > 0 => out.truncate(rng.random_range(0..len)),
            5 if len > 0 && len < 64 * 1024 => {
                let start = rng.random_range(0..len);
                let end = (start + rng.random_range(1..=64)).min(len);
                let chunk = out[start..end].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, chunk);
            }
            6 => {
                let n = rng.random_range(0..32);
                out = (0..n).map(|_| rng.random()).collect();
            }
            _ => {}
        }
    }
    out
}

fn run(target: &str, seeds: Vec<Vec<u8>>, f: fn(&[u8])) {
    let mut seeds = seeds;
    seeds.extend(files("corpus", target));
    let regressions = files("regressions", target);
    for input in &regressions {
        f(input);
    }
    for input in &seeds {
        f(input);
    }
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let n = iterations();
    for i in 0..n {
        let base: &[u8] = if seeds.is_empty() {
            &[]
        } else {
            &seeds[i % seeds.len()]
        };
        let input = mutate(&mut rng, base);
        f(&input);
    }
    eprintln!(
        "{target}: {} regressions, {} seeds, {n} mutated inputs, no failure",
        regressions.len(),
        seeds.len()
    );
}

#[test]
fn fuzz_webhook_delivery() {
    let seeds = octokit_payloads()
        .into_iter()
        .flat_map(|p| {
            let mut json = vec![0u8];
            json.extend_from_slice(&p);
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("payload", &String::from_utf8_lossy(&p))
                .finish();
            let mut form_input = vec![1u8];
            form_input.extend_from_slice(form.as_bytes());
            [json, form_input]
        })
        .collect();
    run("webhook_delivery", seeds, fuzz_targets::webhook_delivery);
}

#[test]
fn fuzz_form_body() {
    let seeds = vec![
        b"payload=%7B%7D".to_vec(),
        b"a=1&payload=x&payload=y".to_vec(),
        b"%zz=%".to_vec(),
    ];
    run("form_body", seeds, fuzz_targets::form_body);
}

#[test]
fn fuzz_parsers() {
    let seeds = [
        "$1.50",
        "0.04",
        "1.005",
        "250m",
        "2",
        "1.5",
        "512Mi",
        "1Gi",
        "1e3",
        "4h",
        "7d",
        "never",
        "small",
        "large",
        "2024-01-01T00:00:00Z",
        "-1",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("parsers", seeds, fuzz_targets::parsers);
}

#[test]
fn fuzz_names() {
    let seeds = [
        "feature/login-page",
        "Ünïcødé/ブランチ",
        "a".repeat(300).as_str(),
        "--..--",
        "deadbeef",
        "x-0123abcd",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("names", seeds, fuzz_targets::names);
}

#[test]
fn fuzz_template() {
    let seeds = [
        "ghcr.io/acme/web:{{shortSha}}\0feat/x\0abcdef1234567",
        "{{branch}}{{branch}}{{sha}}\0../../etc\0",
        "{{{{number}}}}\0\0",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    run("template", seeds, fuzz_targets::template);
}
