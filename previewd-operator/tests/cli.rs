//! The CLI subcommands against the local control plane, with the real controller running:
//! `list` and `describe` (tables and JSON), `extend` moves the expiry, `sleep` and `wake`
//! scale the workloads down and back, `delete` tears the environment down. Through the real
//! `kubectl`: the binary as the plugin `kubectl previewd`, `--context` and `--kubeconfig`
//! as kubectl spells them, `-o wide|yaml`, and the columns of `kubectl get pe`. Without a
//! cluster: `previewd` alone prints a short help, and bash loads the completion script.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use previewd_core::Phase;
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{
    Operator, client, delete_namespace, eventually, install_crds, temp_namespace, test_config,
};
use serde_json::{Value, json};

fn previewd(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_previewd"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_describe_extend_delete() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "cli").await;
    let operator = Operator::start(admin.clone(), test_config(&ns)).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);
    let env: PreviewEnvironment = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-7"},
        "spec": {
            "repository": "acme/shop", "prNumber": 7, "branch": format!("cli-{ns}"),
            "headSHA": "0123456789abcdef0123456789abcdef01234567", "ttl": "4h",
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"}],
        }
    }))
    .unwrap();
    envs.create(&PostParams::default(), &env).await.unwrap();
    let ready = eventually(Duration::from_secs(90), "shop-pr-7 Ready", || {
        let envs = envs.clone();
        async move {
            let env = envs.get_opt("shop-pr-7").await.ok().flatten()?;
            (env.status.as_ref()?.phase? == Phase::Ready).then_some(env)
        }
    })
    .await;
    let expires_before = ready.status.unwrap().expires_at.unwrap().0;

    let (ok, out, err) = previewd(&["list", "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "shop-pr-7");
    assert_eq!(rows[0]["pr"], 7);
    assert_eq!(rows[0]["phase"], "Ready");
    assert_eq!(rows[0]["url"], "https://pr-7.preview.test/");
    assert!(
        rows[0]["expiresIn"].as_str().unwrap().starts_with("3h") || rows[0]["expiresIn"] == "4h 0m"
    );

    let (ok, out, err) = previewd(&["list", "-n", &ns]);
    assert!(ok, "{err}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().starts_with("NAME"), "{out}");
    assert!(lines.next().unwrap().starts_with("shop-pr-7"), "{out}");

    // By PR number, with conditions and events.
    let (ok, out, err) = previewd(&["describe", "7", "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["name"], "shop-pr-7");
    let conditions = doc["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        "{doc}"
    );
    assert_eq!(doc["services"][0]["name"], "web");
    let (ok, out, _) = previewd(&["describe", "shop-pr-7", "-n", &ns]);
    assert!(ok);
    assert!(
        out.contains("Conditions:") && out.contains("Ready"),
        "{out}"
    );

    // Extend by 2 hours: spec.ttl moves, and the controller moves the expiry.
    let (ok, out, err) = previewd(&["extend", "shop-pr-7", "--by", "2h", "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["ttl"], "360m", "{answer}");
    eventually(Duration::from_secs(30), "expiry moved by 2h", || {
        let envs = envs.clone();
        async move {
            let expires = envs.get("shop-pr-7").await.ok()?.status?.expires_at?.0;
            (expires.duration_since(expires_before).as_secs() == 7200).then_some(())
        }
    })
    .await;

    // Sleep: workloads at zero, namespace kept; wake: replicas back, Ready again.
    let app_ns = envs
        .get("shop-pr-7")
        .await
        .unwrap()
        .status
        .unwrap()
        .namespace
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &app_ns);
    let (ok, out, err) = previewd(&["sleep", "7", "-n", &ns, "-o", "json"]);
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["sleep"], true);
    eventually(Duration::from_secs(60), "asleep with web at zero", || {
        let (envs, deployments) = (envs.clone(), deployments.clone());
        async move {
            let env = envs.get("shop-pr-7").await.ok()?;
            let sleeping = env
                .status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Sleeping" && c.status == "True");
            let replicas = deployments.get("web").await.ok()?.spec?.replicas;
            (sleeping && replicas == Some(0)).then_some(())
        }
    })
    .await;
    let (ok, _, err) = previewd(&["wake", "shop-pr-7", "-n", &ns]);
    assert!(ok, "{err}");
    eventually(Duration::from_secs(90), "awake, Ready, web at one", || {
        let (envs, deployments) = (envs.clone(), deployments.clone());
        async move {
            let env = envs.get("shop-pr-7").await.ok()?;
            assert!(!env.annotations().contains_key("previewd.io/sleep"));
            let status = env.status?;
            let awake = !status
                .conditions
                .iter()
                .any(|c| c.type_ == "Sleeping" && c.status == "True");
            let replicas = deployments.get("web").await.ok()?.spec?.replicas;
            (awake && status.phase == Some(Phase::Ready) && replicas == Some(1)).then_some(())
        }
    })
    .await;
    // A budget sleep is the budget's to end.
    envs.patch(
        "shop-pr-7",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"previewd.io/sleep": "budget"}}})),
    )
    .await
    .unwrap();
    let (ok, _, err) = previewd(&["wake", "shop-pr-7", "-n", &ns]);
    assert!(!ok);
    assert!(err.contains("cost budget"), "{err}");
    envs.patch(
        "shop-pr-7",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"previewd.io/sleep": null}}})),
    )
    .await
    .unwrap();

    let (ok, _, err) = previewd(&["describe", "nope", "-n", &ns]);
    assert!(!ok);
    assert!(err.contains("no environment \"nope\""), "{err}");

    let (ok, _, err) = previewd(&["delete", "shop-pr-7", "-n", &ns]);
    assert!(ok, "{err}");
    eventually(Duration::from_secs(90), "shop-pr-7 gone", || {
        let envs = envs.clone();
        async move { matches!(envs.get_opt("shop-pr-7").await, Ok(None)).then_some(()) }
    })
    .await;
    operator.stop().await;
    delete_namespace(&admin, &ns).await;
}

/// Runs `kubectl args...` with `kubectl-previewd` (a symbolic link to the binary) first on
/// the `PATH`.
fn kubectl(
    plugin_dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String, String) {
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("kubectl");
    command.args(args).env("PATH", path);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output().expect("kubectl is installed");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A copy of the test kubeconfig with a second context, `previews`, whose namespace is
/// `namespace` (its current context keeps the default namespace).
fn kubeconfig_with_context(dir: &std::path::Path, namespace: &str) -> std::path::PathBuf {
    let source = std::env::var("KUBECONFIG").expect("KUBECONFIG names the test cluster");
    let mut config: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&source).unwrap()).unwrap();
    let current = config["current-context"].as_str().unwrap().to_string();
    let base = config["contexts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == current.as_str())
        .unwrap()
        .clone();
    let mut previews = base.clone();
    previews["name"] = json!("previews");
    previews["context"]["namespace"] = json!(namespace);
    config["contexts"].as_array_mut().unwrap().push(previews);
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_previewd_with_contexts_output_formats_and_printer_columns() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "cli-plugin").await;
    let operator = Operator::start(admin.clone(), test_config(&ns)).await;
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);
    let env: PreviewEnvironment = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "shop-pr-8"},
        "spec": {
            "repository": "acme/shop", "prNumber": 8, "branch": format!("plugin-{ns}"),
            "headSHA": "89abcdef0123456789abcdef0123456789abcdef", "ttl": "4h",
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"}],
        }
    }))
    .unwrap();
    envs.create(&PostParams::default(), &env).await.unwrap();
    eventually(Duration::from_secs(90), "shop-pr-8 Ready", || {
        let envs = envs.clone();
        async move {
            let env = envs.get_opt("shop-pr-8").await.ok().flatten()?;
            (env.status.as_ref()?.phase? == Phase::Ready).then_some(())
        }
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_previewd"),
        dir.path().join("kubectl-previewd"),
    )
    .unwrap();
    let kubeconfig = kubeconfig_with_context(dir.path(), &ns);
    let kubeconfig = kubeconfig.to_str().unwrap();

    // kubectl finds the plugin; --context picks the context, and with it the namespace.
    let (ok, out, err) = kubectl(
        dir.path(),
        &[],
        &[
            "previewd",
            "list",
            "--kubeconfig",
            kubeconfig,
            "--context",
            "previews",
            "-o",
            "yaml",
        ],
    );
    assert!(ok, "{err}");
    let rows: Vec<Value> = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["name"], "shop-pr-8");
    assert_eq!(rows[0]["ready"], "True");
    assert_eq!(rows[0]["branch"], format!("plugin-{ns}"));
    // The same from $KUBECONFIG, and in the current context (default namespace) nothing.
    let (ok, out, err) = kubectl(
        dir.path(),
        &[("KUBECONFIG", kubeconfig)],
        &["previewd", "list", "--context", "previews", "-o", "json"],
    );
    assert!(ok, "{err}");
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 1);
    let (ok, out, err) = kubectl(
        dir.path(),
        &[("KUBECONFIG", kubeconfig)],
        &["previewd", "list", "-o", "json"],
    );
    assert!(ok, "{err}");
    assert!(
        serde_json::from_str::<Vec<Value>>(&out)
            .unwrap()
            .iter()
            .all(|r| r["name"] != "shop-pr-8"),
        "{out}"
    );
    // An unknown context is an error that names it.
    let (ok, _, err) = kubectl(
        dir.path(),
        &[("KUBECONFIG", kubeconfig)],
        &["previewd", "list", "--context", "nowhere"],
    );
    assert!(!ok);
    assert!(err.contains("nowhere"), "{err}");

    // -o wide adds columns; describe reads the same formats.
    let (ok, out, err) = kubectl(
        dir.path(),
        &[],
        &[
            "previewd",
            "list",
            "--kubeconfig",
            kubeconfig,
            "-n",
            &ns,
            "-o",
            "wide",
        ],
    );
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap();
    for column in ["NAME", "PHASE", "EXPIRES IN", "BRANCH", "HEAD", "REASON"] {
        assert!(header.contains(column), "{column} missing: {out}");
    }
    assert!(out.contains("89abcde"), "{out}");
    let (ok, out, err) = previewd(&["describe", "8", "-n", &ns, "-o", "yaml"]);
    assert!(ok, "{err}");
    let doc: Value = serde_saphyr::from_str(&out).unwrap();
    assert_eq!(doc["name"], "shop-pr-8");
    assert_eq!(doc["ready"], "True");
    let (ok, out, err) = kubectl(dir.path(), &[], &["previewd", "describe", "--help"]);
    assert!(ok, "{err}");
    assert!(out.contains("Usage: kubectl previewd describe"), "{out}");

    // kubectl get: Ready and Reason columns, and the expiry as a UTC time.
    let (ok, out, err) = kubectl(
        dir.path(),
        &[],
        &["get", "pe", "--kubeconfig", kubeconfig, "-n", &ns],
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "PHASE", "READY", "REASON", "PR", "URL", "EXPIRES", "AGE"
        ],
        "{out}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], ["shop-pr-8", "Ready", "True"], "{out}");
    assert!(row[6].parse::<jiff::Timestamp>().is_ok(), "{out}");

    operator.stop().await;
    delete_namespace(&admin, &ns).await;
}

#[test]
fn previewd_alone_prints_a_short_help_and_completion_scripts_load() {
    let (ok, out, err) = previewd(&[]);
    assert!(!ok, "no subcommand is a usage error");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("Usage: previewd <COMMAND>"), "{err}");
    assert!(err.contains("previewd run"), "{err}");
    assert!(err.lines().count() < 40, "{err}");
    // The old way to start the operator fails and says what to type instead.
    let (ok, _, err) = previewd(&["--base-domain", "preview.test"]);
    assert!(!ok);
    assert!(
        err.contains("previewd run --base-domain preview.test"),
        "{err}"
    );
    // bash loads the completion script and completes the subcommands.
    let (ok, script, err) = previewd(&["completion", "bash"]);
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("previewd.bash");
    std::fs::write(&path, script).unwrap();
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(previewd li); COMP_CWORD=1; COMP_LINE='previewd li'; COMP_POINT=11; _previewd previewd li previewd; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .unwrap();
    let completed = String::from_utf8_lossy(&output.stdout);
    assert!(
        completed.contains("list"),
        "{completed} {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
