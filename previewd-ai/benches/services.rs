//! The deterministic affected-services rule on a synthetic 3000-file change against a
//! 30-service catalogue (prefixes, globs, ignore rules, shared paths, dependencies), and
//! the build-definition rules reading a diff: a compose file with a changed build argument
//! in every service, an `.env` change and 500 source-file patches.
//!
//! Run: `cargo bench -p previewd-ai --bench services`

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use previewd_ai::builddefs::{BuildDefinitions, ServiceBuild};
use previewd_ai::services::{ChangeInput, CompiledCatalogue};
use previewd_core::{CatalogueService, ServiceCatalogue};

fn catalogue() -> ServiceCatalogue {
    let services = (0..30)
        .map(|i| CatalogueService {
            name: format!("svc{i:02}"),
            image: format!("example/svc{i:02}"),
            paths: vec![
                format!("services/svc{i:02}/"),
                format!("libs/lib{}/", i % 7),
                format!("proto/svc{i:02}*.proto"),
                format!("deploy/**/svc{i:02}.yaml"),
            ],
            ignore_paths: vec![
                format!("services/svc{i:02}/**/*.md"),
                format!("services/svc{i:02}/testdata"),
                format!("!services/svc{i:02}/testdata/keep.json"),
            ],
            depends_on: if i > 0 {
                vec![format!("svc{:02}", i - 1)]
            } else {
                vec![]
            },
            ..CatalogueService::default()
        })
        .collect();
    ServiceCatalogue {
        services,
        shared_paths: vec!["go.work".to_owned(), "build/**/base.Dockerfile".to_owned()],
    }
}

fn change(n: usize) -> ChangeInput {
    let files = (0..n).map(|i| match i % 6 {
        0 => format!(
            "services/svc{:02}/internal/pkg{}/file{i}.go",
            i % 30,
            i % 13
        ),
        1 => format!("services/svc{:02}/docs/page{i}.md", i % 30),
        2 => format!("libs/lib{}/src/mod{i}.rs", i % 9),
        3 => format!("deploy/overlays/env{}/svc{:02}.yaml", i % 4, i % 30),
        4 => format!("docs/guide/chapter{i}.md"),
        _ => format!("web/app/components/c{i}/index.tsx"),
    });
    // stays below the GitHub cap so that every path is matched
    ChangeInput::from_files(files.take(n))
}

fn builds() -> BuildDefinitions {
    BuildDefinitions {
        services: (0..30)
            .map(|i| ServiceBuild {
                name: format!("svc{i:02}"),
                defined_in: Some("compose.yaml".to_owned()),
                context: format!("services/svc{i:02}"),
                dockerfile: format!("services/svc{i:02}/Dockerfile"),
                args: [(format!("V{i}"), Some(format!("${{V{i}}}")))].into(),
                variables: [format!("V{i}")].into(),
                env_files: vec![".env".to_owned()],
                ..ServiceBuild::default()
            })
            .collect(),
    }
}

/// A unified diff: one compose hunk per service (its build argument), an `.env` change
/// and `sources` source-file patches.
fn diff_change(sources: usize) -> ChangeInput {
    let mut text = String::from(
        "diff --git a/compose.yaml b/compose.yaml\n--- a/compose.yaml\n+++ b/compose.yaml\n",
    );
    for i in 0..30 {
        let line = 1 + i * 8;
        text.push_str(&format!(
            "@@ -{line},4 +{line},4 @@ services:\n   svc{i:02}:\n     build:\n       args:\n-        V{i}: ${{V{i}:-1}}\n+        V{i}: ${{V{i}:-2}}\n"
        ));
    }
    text.push_str(
        "diff --git a/.env b/.env\n--- a/.env\n+++ b/.env\n@@ -1,2 +1,2 @@\n V0=1\n-V7=1\n+V7=2\n",
    );
    let mut files = vec!["compose.yaml".to_owned(), ".env".to_owned()];
    for i in 0..sources {
        let path = format!("services/svc{:02}/src/file{i}.go", i % 30);
        text.push_str(&format!(
            "diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -10,3 +10,3 @@ func f() {{\n \ta := 1\n-\tb := 2\n+\tb := 3\n \treturn a + b\n"
        ));
        files.push(path);
    }
    ChangeInput {
        files,
        diff: Some(text),
        ..ChangeInput::default()
    }
}

fn bench(c: &mut Criterion) {
    let compiled = CompiledCatalogue::new(&catalogue()).expect("catalogue compiles");
    let small = change(50);
    let large = change(2999);
    c.bench_function("services/deterministic/2999-files-30-services", |b| {
        b.iter(|| black_box(compiled.affected(black_box(&large))))
    });
    c.bench_function("services/deterministic/50-files-30-services", |b| {
        b.iter(|| black_box(compiled.affected(black_box(&small))))
    });
    let with_builds = CompiledCatalogue::new(&catalogue())
        .expect("catalogue compiles")
        .with_build_definitions(builds());
    let diffed = diff_change(500);
    assert_eq!(with_builds.affected(&diffed).services.len(), 30);
    c.bench_function("services/build-definitions/compose-env-500-patches", |b| {
        b.iter(|| black_box(with_builds.affected(black_box(&diffed))))
    });
    c.bench_function("services/compile-catalogue-30-services", |b| {
        b.iter(|| black_box(CompiledCatalogue::new(black_box(&catalogue()))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
