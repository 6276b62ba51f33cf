//! The deterministic affected-services rule on a synthetic 3000-file change against a
//! 30-service catalogue (prefixes, globs, ignore rules, shared paths, dependencies).
//!
//! Run: `cargo bench -p previewd-ai --bench services`

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
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
    c.bench_function("services/compile-catalogue-30-services", |b| {
        b.iter(|| black_box(CompiledCatalogue::new(black_box(&catalogue()))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
