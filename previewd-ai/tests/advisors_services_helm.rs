//! Affected services from a Helm chart's values file: a shop chart deploying `api`, `web`
//! and `worker` plus a Redis it does not build (`tests/fixtures/builddefs/helm/values.yaml`),
//! and real `git diff` output of changes to it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use previewd_ai::builddefs::{BuildDefinitions, ServiceBuild};
use previewd_ai::services::{AffectedServices, ChangeInput, CompiledCatalogue, Evidence};
use previewd_core::ServiceCatalogue;
use serde_json::json;

const VALUES: &str = "charts/shop/values.yaml";

fn diff(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/builddefs/helm")
        .join(format!("{name}.diff"));
    std::fs::read_to_string(path).unwrap()
}

/// The chart is a shared path: without its diff, a change to it deploys every service.
fn catalogue(image: &str) -> ServiceCatalogue {
    serde_json::from_value(json!({
        "services": [
            {"name": "api", "image": image, "paths": ["src/api/"]},
            {"name": "web", "image": image, "paths": ["src/web/"]},
            {"name": "worker", "image": image, "paths": ["src/worker/"]}
        ],
        "sharedPaths": ["charts/shop/"]
    }))
    .unwrap()
}

fn compiled() -> CompiledCatalogue {
    CompiledCatalogue::new(&catalogue("ghcr.io/acme/{{service}}:pr-{{number}}")).unwrap()
}

fn change(name: &str) -> ChangeInput {
    ChangeInput {
        files: vec![VALUES.to_owned()],
        diff: Some(diff(name)),
        ..ChangeInput::default()
    }
}

fn names(r: &AffectedServices) -> Vec<&str> {
    r.services.iter().map(String::as_str).collect()
}

#[test]
fn a_changed_tag_affects_the_service_whose_repository_sits_beside_it() {
    let r = compiled().affected(&change("helm-api-tag"));
    assert_eq!(names(&r), ["api"]);
    assert!(
        r.evidence["api"].iter().any(|e| matches!(e,
            Evidence::BuildDefinition { path, detail }
                if path == VALUES && detail == "api.image.tag")),
        "{:?}",
        r.evidence
    );
    assert!(r.unmapped_files.is_empty());
}

#[test]
fn an_image_no_catalogue_service_uses_affects_nothing() {
    let r = compiled().affected(&change("helm-redis"));
    assert!(r.services.is_empty(), "{:?}", r.evidence);
    assert!(
        r.notes.iter().any(|n| n.contains("its diff was read")),
        "{:?}",
        r.notes
    );
    // when a service's image is a placeholder nothing can say the image is foreign: the
    // shared path stands
    let c = CompiledCatalogue::new(&catalogue("{{registry}}/shop:pr-{{number}}")).unwrap();
    let r = c.affected(&change("helm-redis"));
    assert_eq!(names(&r), ["api", "web", "worker"]);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("Helm values file") && n.contains("matched by path only")),
        "{:?}",
        r.notes
    );
}

#[test]
fn a_tag_affects_its_service_and_runtime_settings_affect_none() {
    // `-U1`: worker's repository is the only line of its image shown; web's ingress path
    // and worker's concurrency change how they run, not their images
    let r = compiled().affected(&change("helm-worker-web"));
    assert_eq!(names(&r), ["worker"]);
    assert!(
        r.evidence["worker"].iter().any(|e| matches!(e,
            // the patch does not show `image:`: the detail says what it shows
            Evidence::BuildDefinition { detail, .. } if detail == "worker.tag")),
        "{:?}",
        r.evidence
    );
}

#[test]
fn a_chart_wide_setting_keeps_the_path_matching_answer() {
    let r = compiled().affected(&change("helm-registry"));
    assert_eq!(names(&r), ["api", "web", "worker"]);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("global.imageRegistry") && n.contains("matched by path only")),
        "{:?}",
        r.notes
    );
    // without the diff: the same answer, and the note says why
    let r = compiled().affected(&ChangeInput::from_files([VALUES]));
    assert_eq!(names(&r), ["api", "web", "worker"]);
    assert!(
        r.notes.iter().any(|n| n.contains("no diff available")),
        "{:?}",
        r.notes
    );
}

#[test]
fn declared_images_name_services_whose_catalogue_image_differs() {
    // the preview builds `ghcr.io/acme/preview-api`; the chart deploys `acme/backend`
    let cat: ServiceCatalogue = serde_json::from_value(json!({
        "services": [
            {"name": "api", "image": "ghcr.io/acme/preview-api:pr-{{number}}", "paths": ["src/api/"]},
            {"name": "web", "image": "ghcr.io/acme/web:pr-{{number}}", "paths": ["src/web/"]}
        ],
        "sharedPaths": ["charts/"]
    }))
    .unwrap();
    let patch = "diff --git a/charts/values-preview.yaml b/charts/values-preview.yaml\n--- a/charts/values-preview.yaml\n+++ b/charts/values-preview.yaml\n@@ -1,4 +1,4 @@\n backend:\n   image:\n-    repository: acme/backend\n+    repository: acme/backend-v2\n     tag: latest\n";
    let change = ChangeInput {
        files: vec!["charts/values-preview.yaml".to_owned()],
        diff: Some(patch.to_owned()),
        ..ChangeInput::default()
    };
    // every catalogue image is known and none is `acme/backend`: read as an image the
    // previews do not build
    let plain = CompiledCatalogue::new(&cat).unwrap();
    assert!(plain.affected(&change).services.is_empty());
    let builds = BuildDefinitions {
        services: vec![ServiceBuild {
            name: "api".to_owned(),
            context: "src/api".to_owned(),
            dockerfile: "src/api/Dockerfile".to_owned(),
            images: vec!["acme/backend".to_owned(), "acme/backend-v2".to_owned()],
            ..ServiceBuild::default()
        }],
    };
    let with = CompiledCatalogue::new(&cat)
        .unwrap()
        .with_build_definitions(builds);
    assert_eq!(names(&with.affected(&change)), ["api"]);
}

#[test]
fn skaffold_helm_releases_affect_the_service_whose_image_they_set() {
    let patch = "\
diff --git a/skaffold.yaml b/skaffold.yaml
--- a/skaffold.yaml
+++ b/skaffold.yaml
@@ -18,12 +18,12 @@ build:
 deploy:
   helm:
     releases:
       - name: shop-web
         chartPath: charts/shop
         setValues:
-          web.image.tag: v1
+          web.image.tag: v2
       - name: shop-api
         chartPath: charts/shop
         setValues:
-          image.repository: ghcr.io/acme/api
-          image.tag: v1
+          image.repository: ghcr.io/acme/api
+          image.tag: v2
";
    let change = ChangeInput {
        files: vec!["skaffold.yaml".to_owned()],
        diff: Some(patch.to_owned()),
        ..ChangeInput::default()
    };
    let cat = catalogue("ghcr.io/acme/{{service}}:pr-{{number}}");
    let mut cat = cat;
    cat.shared_paths = vec!["skaffold.yaml".to_owned()];
    let r = CompiledCatalogue::new(&cat).unwrap().affected(&change);
    // web by the dotted key, api by the repository beside the tag; worker untouched
    assert_eq!(names(&r), ["api", "web"], "{:?}", r.evidence);
    assert!(
        r.evidence["api"].iter().any(|e| matches!(e,
            Evidence::BuildDefinition { detail, .. } if detail.ends_with("setValues.image.tag")
                || detail.ends_with("setValues.image.repository"))),
        "{:?}",
        r.evidence
    );
}

#[test]
fn notes_quote_few_and_short_details_of_a_hostile_patch() {
    let mut patch = String::from(
        "diff --git a/charts/shop/values.yaml b/charts/shop/values.yaml\n--- a/charts/shop/values.yaml\n+++ b/charts/shop/values.yaml\n@@ -1,1 +1,61 @@\n global:\n",
    );
    for i in 0..60 {
        patch.push_str(&format!("+  image{i}{}: x\n", "Z".repeat(500)));
    }
    let r = compiled().affected(&ChangeInput {
        files: vec![VALUES.to_owned()],
        diff: Some(patch),
        ..ChangeInput::default()
    });
    assert_eq!(
        names(&r),
        ["api", "web", "worker"],
        "the shared path stands"
    );
    let note = r
        .notes
        .iter()
        .find(|n| n.contains("no service is named"))
        .expect("a note");
    assert!(note.contains("55 more"), "{note}");
    assert!(note.chars().count() < 1500, "{}", note.chars().count());
}
