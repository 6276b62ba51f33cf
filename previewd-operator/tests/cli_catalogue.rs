//! `previewd catalogue` and the output contract of `previewd eval-services`, run as the
//! binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use previewd_core::ServiceCatalogue;

fn shop() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../previewd-ai/tests/fixtures/builddefs/shop")
}

#[test]
fn prints_a_catalogue_generated_from_a_compose_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args([
            "catalogue",
            "--from-compose",
            "compose.yaml",
            "--build-definitions",
        ])
        .current_dir(shop())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (catalogue, builds) = text.split_once("\n---\n").expect("two documents");
    let catalogue: ServiceCatalogue = serde_saphyr::from_str(catalogue).unwrap();
    assert_eq!(
        catalogue.names().collect::<Vec<_>>(),
        ["api", "db", "scheduler", "web", "worker"]
    );
    assert!(
        catalogue
            .get("web")
            .unwrap()
            .paths
            .contains(&"services/web/src".to_owned())
    );
    // ready for the CRD: valid ports and one replica each
    for s in &catalogue.services {
        assert!(s.port >= 1 && s.replicas == 1, "{s:?}");
    }
    assert!(
        builds.contains("dockerfile: docker/python.Dockerfile"),
        "{builds}"
    );

    // a directory of Dockerfiles, relative to another root
    let out = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args(["catalogue", "--from-dockerfiles"])
        .arg(shop().join("services"))
        .arg("--repo-root")
        .arg(shop())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let catalogue: ServiceCatalogue =
        serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(catalogue.names().collect::<Vec<_>>(), ["api", "web"]);

    // a file outside the root is refused
    let out = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args([
            "catalogue",
            "--from-compose",
            "/etc/hostname",
            "--repo-root",
        ])
        .arg(shop())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn eval_services_ends_with_the_headline_after_the_breakdown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("services.json"),
        r#"[{"name": "api", "paths": ["src/api/"], "dockerfile": "src/api/Dockerfile", "context": "src/api", "dockerignore_patterns": []}]"#,
    )
    .unwrap();
    let rows = [
        r#"{"head": "aa", "changed_files": ["src/api/main.go"], "file_status": ["M"], "services_at_head": ["api"], "affected_services": ["api"]}"#,
        r#"{"head": "bb", "changed_files": ["src/api/README.md"], "file_status": ["M"], "services_at_head": ["api"], "affected_services": []}"#,
    ];
    std::fs::write(dir.path().join("changes.jsonl"), rows.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args(["eval-services", "--dataset"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        *lines.last().unwrap(),
        r#"{"changes": 2, "precision": 0.5, "recall": 1.0, "exact_set": 0.5}"#
    );
    let before = lines[lines.len() - 5..lines.len() - 1].join("\n");
    assert!(
        before.contains("false alarms by cause (1 change/service pairs):"),
        "{before}"
    );
    assert!(before.contains("source path not in catalogue"), "{before}");
    assert!(
        before.contains("misses by cause (0 change/service pairs):"),
        "{before}"
    );
}
