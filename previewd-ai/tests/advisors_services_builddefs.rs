//! Affected services from the build definitions themselves: a small compose monorepo
//! (`tests/fixtures/builddefs/shop`) and real `git diff -M` output of changes to it
//! (`tests/fixtures/builddefs/diffs`), one per rule, plus the fallbacks.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use previewd_ai::builddefs::generate::{self, DirFiles, MapFiles};
use previewd_ai::builddefs::{BuildDefinitions, ChangeDiff};
use previewd_ai::services::{AffectedServices, ChangeInput, CompiledCatalogue, Evidence};
use previewd_core::ServiceCatalogue;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/builddefs")
}

fn diff(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("diffs").join(format!("{name}.diff"))).unwrap()
}

/// The shop's catalogue and build definitions, generated from its compose file.
fn shop() -> (ServiceCatalogue, BuildDefinitions) {
    let g = generate::from_compose(&DirFiles::new(fixtures().join("shop")), "compose.yaml")
        .expect("generates");
    (g.catalogue, g.builds)
}

fn compiled() -> CompiledCatalogue {
    let (cat, builds) = shop();
    CompiledCatalogue::new(&cat)
        .unwrap()
        .with_build_definitions(builds)
}

/// The files a diff names (both sides of renames), as the file list would.
fn files_of(text: &str) -> Vec<String> {
    let d = ChangeDiff::from_unified(text);
    let mut out = Vec::new();
    for f in d.files {
        if let Some(p) = f.previous_path {
            out.push(p);
        }
        out.push(f.path);
    }
    out
}

fn with_diff(name: &str) -> ChangeInput {
    let text = diff(name);
    ChangeInput {
        files: files_of(&text),
        diff: Some(text),
        ..ChangeInput::default()
    }
}

fn names(r: &AffectedServices) -> Vec<&str> {
    r.services.iter().map(String::as_str).collect()
}

#[test]
fn the_generated_catalogue_lists_each_services_inputs() {
    let (cat, builds) = shop();
    // services in name order, so the output is stable
    assert_eq!(
        cat.names().collect::<Vec<_>>(),
        ["api", "db", "scheduler", "web", "worker"]
    );
    let api = cat.get("api").unwrap();
    assert_eq!(
        api.paths,
        [
            "services/api/go.mod",
            "services/api/go.sum",
            "services/api/",
            "services/api/Dockerfile"
        ]
    );
    assert_eq!(
        api.ignore_paths,
        [
            "services/api/*.md",
            "services/api/testdata",
            "!services/api/Dockerfile"
        ]
    );
    // ports from compose, the catalogue's defaults otherwise
    assert_eq!((api.port, api.replicas), (8080, 1));
    assert_eq!(cat.get("web").unwrap().port, 3000);
    assert_eq!(cat.get("worker").unwrap().port, 8080);
    // compose substitution from the .env beside the compose file
    assert_eq!(api.image, "ghcr.io/acme/api:dev");
    assert_eq!(cat.get("web").unwrap().image, "web:pr-{{number}}");
    let web = cat.get("web").unwrap();
    assert_eq!(
        web.paths,
        [
            "services/web/package.json",
            "services/web/package-lock.json",
            "services/web/src",
            "services/web/Dockerfile"
        ]
    );
    // the shared Dockerfile: root context, every stage's sources
    let worker = cat.get("worker").unwrap();
    assert_eq!(
        worker.paths,
        [
            "libs/common",
            "services/worker",
            "services/scheduler",
            "docker/python.Dockerfile"
        ]
    );
    // a service without a build has no inputs
    assert!(cat.get("db").unwrap().paths.is_empty());
    assert_eq!(cat.get("db").unwrap().image, "postgres:16");

    let web_build = builds.services.iter().find(|s| s.name == "web").unwrap();
    assert_eq!(web_build.context, "services/web");
    assert_eq!(web_build.args.get("NODE_VERSION"), Some(&None));
    assert_eq!(web_build.env_files, [".env"]);
    let api_build = builds.services.iter().find(|s| s.name == "api").unwrap();
    assert!(api_build.variables.contains("GO_VERSION"));
    assert_eq!(
        api_build.dockerignore.as_deref(),
        Some("services/api/.dockerignore")
    );
    // the generated catalogue compiles
    CompiledCatalogue::new(&cat).unwrap();
}

#[test]
fn a_changed_build_argument_in_compose_affects_only_its_service() {
    let c = compiled();
    let change = with_diff("compose-build-arg");
    assert_eq!(change.files, ["compose.yaml"]);
    let r = c.affected(&change);
    assert_eq!(names(&r), ["api"]);
    assert!(
        matches!(&r.evidence["api"][0], Evidence::BuildDefinition { path, detail }
            if path == "compose.yaml" && detail.contains("GO_VERSION")),
        "{:?}",
        r.evidence
    );
    assert!(r.unmapped_files.is_empty());
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

#[test]
fn runtime_settings_in_compose_affect_no_build() {
    let c = compiled();
    let r = c.affected(&with_diff("compose-runtime"));
    assert!(r.services.is_empty(), "{r:?}");
    assert!(r.unmapped_files.is_empty(), "the compose change was read");
}

#[test]
fn a_target_change_affects_that_service_and_a_restart_policy_nothing() {
    let c = compiled();
    let r = c.affected(&with_diff("compose-target"));
    assert_eq!(names(&r), ["worker"]);
}

#[test]
fn a_shared_compose_file_is_narrowed_by_its_diff_and_widened_without_it() {
    let (mut cat, builds) = shop();
    cat.shared_paths = vec!["compose.yaml".to_owned(), ".env".to_owned()];
    let c = CompiledCatalogue::new(&cat)
        .unwrap()
        .with_build_definitions(builds);
    let r = c.affected(&with_diff("compose-build-arg"));
    assert_eq!(names(&r), ["api"]);
    assert!(r.notes.iter().any(|n| n.contains("shared path")));

    // the fallback: no diff, today's answer (a shared path selects everything), said so
    let r = c.affected(&ChangeInput::from_files(["compose.yaml"]));
    assert_eq!(r.services.len(), 5);
    assert!(matches!(r.evidence["api"][0], Evidence::SharedPath { .. }));
    assert_eq!(
        r.notes,
        ["compose file compose.yaml: no diff available; matched by path only"]
    );
}

#[test]
fn env_variables_affect_the_services_whose_builds_read_them() {
    let c = compiled();
    // NODE_VERSION is passed to web's build; PYTHON_VERSION is not passed by compose
    let r = c.affected(&with_diff("env-node-python"));
    assert_eq!(names(&r), ["web"]);
    assert_eq!(
        r.evidence["web"],
        [Evidence::BuildArgument {
            path: ".env".to_owned(),
            variables: vec!["NODE_VERSION".to_owned()]
        }]
    );
    // TAG only names the image; a comment changes nothing
    let r = c.affected(&with_diff("env-tag-only"));
    assert!(r.services.is_empty(), "{r:?}");
}

#[test]
fn a_changed_arg_default_in_a_shared_dockerfile_affects_every_service_built_from_it() {
    let c = compiled();
    let r = c.affected(&with_diff("dockerfile-python-arg"));
    assert_eq!(names(&r), ["scheduler", "worker"]);
    let detail: Vec<String> = r.evidence["worker"]
        .iter()
        .filter_map(|e| match e {
            Evidence::BuildDefinition { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(detail, ["Dockerfile changed (ARG PYTHON_VERSION)"]);
}

#[test]
fn a_dockerignore_change_counts_only_when_it_can_change_the_inputs() {
    let c = compiled();
    // `*.md`: web copies package*.json and src/ only
    let r = c.affected(&with_diff("dockerignore-no-input"));
    assert!(r.services.is_empty(), "{r:?}");
    // `src/**/*.test.js` drops files web copies
    let r = c.affected(&with_diff("dockerignore-input"));
    assert_eq!(names(&r), ["web"]);
    assert_eq!(
        r.evidence["web"],
        [Evidence::IgnoreFile {
            path: "services/web/.dockerignore".to_owned(),
            pattern: "src/**/*.test.js".to_owned()
        }]
    );
}

#[test]
fn a_moved_build_context_follows_the_rename() {
    let c = compiled();
    let change = with_diff("rename-web");
    let r = c.affected(&change);
    assert_eq!(names(&r), ["web"]);
    let ev = &r.evidence["web"];
    assert!(
        ev.iter()
            .any(|e| matches!(e, Evidence::Path { path } if path == "services/web/package.json"))
    );
    assert!(ev.iter().any(|e| matches!(e, Evidence::Renamed { from, to }
        if from == "services/web/src/index.js" && to == "apps/web/src/index.js")));
    assert!(
        ev.iter()
            .any(|e| matches!(e, Evidence::BuildDefinition { path, .. } if path == "compose.yaml"))
    );
    // the new paths belong to web: nothing left for the model to place
    assert!(
        !r.unmapped_files
            .iter()
            .any(|f| f.starts_with("apps/web/src")),
        "{:?}",
        r.unmapped_files
    );
}

#[test]
fn a_truncated_diff_falls_back_to_path_matching_and_says_so() {
    let (mut cat, builds) = shop();
    cat.shared_paths = vec!["compose.yaml".to_owned()];
    let c = CompiledCatalogue::new(&cat)
        .unwrap()
        .with_build_definitions(builds);
    let full = diff("compose-build-arg");
    // cut inside the hunk, as a size-capped diff is
    let cut: String = full.lines().take(9).map(|l| format!("{l}\n")).collect();
    let r = c.affected(&ChangeInput {
        files: vec!["compose.yaml".to_owned()],
        diff: Some(cut),
        ..ChangeInput::default()
    });
    assert_eq!(r.services.len(), 5, "today's answer: the shared path");
    assert!(r.notes[0].contains("no readable patch"), "{:?}", r.notes);
    // a diff cut before the file
    let r = c.affected(&ChangeInput {
        files: vec!["compose.yaml".to_owned()],
        diff: Some("diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n# [diff truncated: 99999 bytes]\n".to_owned()),
        ..ChangeInput::default()
    });
    assert_eq!(r.services.len(), 5);
    assert!(r.notes[0].contains("truncated"), "{:?}", r.notes);
}

#[test]
fn without_build_definitions_compose_entries_resolve_by_name() {
    let (cat, _) = shop();
    let c = CompiledCatalogue::new(&cat).unwrap();
    // the service is out of sight in this hunk and nothing says which services the file
    // defines: fall back, and say so
    let r = c.affected(&with_diff("compose-build-arg"));
    assert!(r.services.is_empty());
    assert!(
        r.notes[0].starts_with("compose file compose.yaml: could not place"),
        "{:?}",
        r.notes
    );
    assert_eq!(r.unmapped_files, ["compose.yaml"]);
    // a hunk that shows the service resolves by its name
    let r = c.affected(&with_diff("rename-web"));
    assert!(
        r.evidence["web"]
            .iter()
            .any(|e| matches!(e, Evidence::BuildDefinition { path, detail }
        if path == "compose.yaml" && detail.contains("build.context"))),
        "{:?}",
        r.evidence
    );
    // env files need the build definitions
    let r = c.affected(&with_diff("env-node-python"));
    assert!(r.services.is_empty());
    assert!(r.notes[0].contains("no build definitions"), "{:?}", r.notes);
}

#[test]
fn per_file_patches_from_the_file_list_work_like_the_unified_diff() {
    use previewd_core::source_control::{ChangedFile, ChangedFiles, FileChangeKind};
    let c = compiled();
    let files = ChangedFiles {
        files: vec![ChangedFile {
            path: ".env".to_owned(),
            previous_path: None,
            kind: FileChangeKind::Modified,
            additions: 1,
            deletions: 1,
            patch: Some(
                "@@ -1,4 +1,4 @@\n # toolchain versions used by the image builds\n-GO_VERSION=1.22\n+GO_VERSION=1.23\n NODE_VERSION=20\n TAG=dev"
                    .to_owned(),
            ),
        }],
        incomplete: false,
    };
    let change = ChangeInput::from_files([".env"]);
    assert!(c.needs_diff(&change));
    let r = c.affected_with_diff(&change, Some(&ChangeDiff::from_changed_files(&files)));
    assert_eq!(names(&r), ["api"]);
    // the same list rendered as text (PullRequestDiff::Files), as the model gets it
    let text = previewd_core::source_control::PullRequestDiff::Files(files.clone()).to_text();
    let r = c.affected(&ChangeInput {
        diff: Some(text),
        ..change.clone()
    });
    assert_eq!(names(&r), ["api"]);
    // a file listed without a patch (too large for the API) falls back
    let mut no_patch = files.clone();
    no_patch.files[0].patch = None;
    let r = c.affected_with_diff(&change, Some(&ChangeDiff::from_changed_files(&no_patch)));
    assert!(r.services.is_empty());
    assert!(r.notes[0].contains("no readable patch"));
    let text = previewd_core::source_control::PullRequestDiff::Files(no_patch).to_text();
    let r = c.affected(&ChangeInput {
        diff: Some(text),
        ..change.clone()
    });
    assert!(r.notes[0].contains("no readable patch"), "{:?}", r.notes);
}

#[test]
fn dockerfiles_in_a_directory_become_services() {
    let files = MapFiles::new([
        ("services/api/Dockerfile", "FROM golang\nCOPY . .\n"),
        ("services/api/main.go", "package main\n"),
        // copies from the repository root: the root is its context
        (
            "services/jobs/Dockerfile",
            "FROM python\nCOPY libs/common /app/common\nCOPY services/jobs /app/jobs\n",
        ),
        ("services/jobs/run.py", "print()\n"),
        ("libs/common/util.py", "x = 1\n"),
        ("services/jobs/.dockerignore", "*.pyc\n"),
    ]);
    let g = generate::from_dockerfiles(&files, "services").unwrap();
    let cat = &g.catalogue;
    assert_eq!(cat.names().collect::<Vec<_>>(), ["api", "jobs"]);
    assert_eq!(
        (
            cat.get("api").unwrap().port,
            cat.get("api").unwrap().replicas
        ),
        (8080, 1)
    );
    assert_eq!(
        cat.get("api").unwrap().paths,
        ["services/api/", "services/api/Dockerfile"]
    );
    assert_eq!(
        cat.get("jobs").unwrap().paths,
        ["libs/common", "services/jobs", "services/jobs/Dockerfile"]
    );
    assert!(g.warnings.iter().any(|w| w.contains("guessed the root")));
    // the jobs .dockerignore is not in its (root) context
    assert!(cat.get("jobs").unwrap().ignore_paths.is_empty());
    assert!(generate::from_dockerfiles(&files, "nope").is_err());
}

#[test]
fn an_oversized_build_definition_patch_is_matched_by_path() {
    let (mut cat, builds) = shop();
    cat.shared_paths = vec!["compose.yaml".to_owned()];
    let c = CompiledCatalogue::new(&cat)
        .unwrap()
        .with_build_definitions(builds);
    let n = 6_000;
    let mut text = format!(
        "diff --git a/compose.yaml b/compose.yaml\n--- a/compose.yaml\n+++ b/compose.yaml\n@@ -1,0 +1,{n} @@ services:\n"
    );
    for i in 0..n {
        text.push_str(&format!("+  svc{i}:\n"));
    }
    let r = c.affected(&ChangeInput {
        files: vec!["compose.yaml".to_owned()],
        diff: Some(text),
        ..ChangeInput::default()
    });
    assert_eq!(r.services.len(), 5, "the shared path stands");
    assert!(r.notes[0].contains("more than the 5000"), "{:?}", r.notes);
}

/// A skaffold catalogue in the shape of GoogleCloudPlatform/microservices-demo.
fn skaffold_catalogue() -> CompiledCatalogue {
    let svc = |name: &str| previewd_core::CatalogueService {
        name: name.to_owned(),
        image: name.to_owned(),
        paths: vec![format!("src/{name}/")],
        ..previewd_core::CatalogueService::default()
    };
    CompiledCatalogue::new(&ServiceCatalogue {
        services: vec![svc("emailservice"), svc("cartservice"), svc("frontend")],
        shared_paths: vec!["skaffold.yaml".to_owned()],
    })
    .unwrap()
}

#[test]
fn skaffold_artifacts_affect_their_service_and_nothing_else_does() {
    let c = skaffold_catalogue();
    // the context of one artifact moves
    let context = "\
diff --git a/skaffold.yaml b/skaffold.yaml
--- a/skaffold.yaml
+++ b/skaffold.yaml
@@ -20,5 +20,5 @@ build:
     context: src/emailservice
   - image: cartservice
-    context: src/cartservice
+    context: src/cartservice/src
   - image: frontend
     context: src/frontend
";
    let r = c.affected(&ChangeInput {
        files: vec!["skaffold.yaml".to_owned()],
        diff: Some(context.to_owned()),
        ..ChangeInput::default()
    });
    assert_eq!(names(&r), ["cartservice"]);
    assert!(
        matches!(&r.evidence["cartservice"][0], Evidence::BuildDefinition { detail, .. } if detail.contains("context"))
    );

    // images renamed, a profile and the tag policy changed: no build changed
    let cosmetic = "\
diff --git a/skaffold.yaml b/skaffold.yaml
--- a/skaffold.yaml
+++ b/skaffold.yaml
@@ -16,8 +16,8 @@ apiVersion: skaffold/v1alpha5
 kind: Config
 build:
   artifacts:
-  - image: gcr.io/microservices-demo-app/emailservice
+  - image: emailservice
     context: src/emailservice
-  - image: gcr.io/microservices-demo-app/cartservice
+  - image: cartservice
     context: src/cartservice
   tagPolicy:
@@ -45,6 +45,7 @@ deploy:
 profiles:
   - name: gcb
     build:
       googleCloudBuild:
+        diskSizeGb: 300
         machineType: \"N1_HIGHCPU_32\"
         timeout: 4000s
";
    let r = c.affected(&ChangeInput {
        files: vec!["skaffold.yaml".to_owned()],
        diff: Some(cosmetic.to_owned()),
        ..ChangeInput::default()
    });
    assert!(r.services.is_empty(), "{r:?}");
    assert!(r.notes.iter().any(|n| n.contains("shared path")));
}
