//! `spec.buildDefinitions` of a `PreviewRepository` reaches the affected-services rules of
//! the running operator: the `previewd` binary on the local control plane
//! (`export $(testenv/up | tail -n1)`), reading pull requests from a local server that
//! speaks GitHub's API and lists each pull request's files with their patches.
//!
//! The repository's `.env` and Helm values file are shared paths: read by path, a change
//! to either deploys every service. Its build definitions say which build substitutes
//! which variable and which image each service is, so the patches narrow the change to
//! the one service it reaches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../previewd-github/tests/fake_github/mod.rs"]
mod fake_github;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fake_github::{FakeGitHub, TOKEN};
use kube::api::{Api, DeleteParams, PostParams};
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::testing::{
    client, delete_namespace, eventually, install_crds, temp_namespace, unique_suffix,
};
use serde_json::{Value, json};

const IMAGE_TEMPLATE: &str = "ghcr.io/acme/{{service}}:pr-{{number}}";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `previewd run` scoped to `namespace`, reading GitHub from `github`.
struct Previewd(Child);

impl Previewd {
    fn start(namespace: &str, github: &FakeGitHub) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_previewd"))
            .args([
                "run",
                "--ingress-namespace",
                "ingress-system",
                "--namespace",
                namespace,
            ])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--webhook-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--github-token", TOKEN])
            .args(["--github-api-url", github.base_url().as_str()])
            .args(["--base-domain", "preview.test", "--log-format", "text"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Previewd(child)
    }
}

impl Drop for Previewd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repository(build_definitions: Option<Value>) -> PreviewRepository {
    let mut spec = json!({
        "repository": "acme/shop",
        "baseDomain": "preview.test",
        "deploy": "Affected",
        "catalogue": {
            "services": [
                {"name": "api", "image": IMAGE_TEMPLATE, "paths": ["src/api/"]},
                {"name": "web", "image": IMAGE_TEMPLATE, "paths": ["src/web/"]},
                {"name": "worker", "image": IMAGE_TEMPLATE, "paths": ["src/worker/"]}
            ],
            "sharedPaths": [".env", "charts/"]
        }
    });
    if let Some(b) = build_definitions {
        spec["buildDefinitions"] = b;
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": "shop"},
        "spec": spec
    }))
    .unwrap()
}

/// What `previewd catalogue --from-compose compose.yaml --build-definitions` prints for
/// the shop (the document after `---`), with `./` paths as people write them.
fn build_definitions() -> Value {
    json!({
        "services": [
            {"name": "api", "definedIn": "compose.yaml", "context": "./src/api",
             "dockerfile": "src/api/Dockerfile", "args": {"GO_VERSION": "${GO_VERSION}"},
             "variables": ["GO_VERSION"], "envFiles": ["./.env"]},
            {"name": "web", "definedIn": "compose.yaml", "context": "./src/web",
             "dockerfile": "src/web/Dockerfile", "args": {"NODE_VERSION": null},
             "envFiles": [".env"]},
            {"name": "worker", "definedIn": "compose.yaml", "context": "src/worker",
             "dockerfile": "src/worker/Dockerfile", "images": ["acme/queue-worker"]}
        ]
    })
}

fn file(path: &str, patch: &str) -> Value {
    json!({
        "sha": "0000000000000000000000000000000000000000",
        "filename": path,
        "status": "modified",
        "additions": 1, "deletions": 1, "changes": 2,
        "patch": patch
    })
}

fn environment(pr: u64) -> PreviewEnvironment {
    let services: Vec<Value> = ["api", "web", "worker"]
        .iter()
        .map(|s| json!({"name": s, "image": "registry.k8s.io/pause:3.10", "port": 8080}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": format!("shop-pr-{pr}")},
        "spec": {
            "repository": "acme/shop",
            "prNumber": pr,
            "branch": format!("bd-{}", unique_suffix()),
            "headSHA": "abcdef1234567890abcdef1234567890abcdef12",
            "repositoryRef": "shop",
            "serviceSelection": "Affected",
            "services": services
        }
    }))
    .unwrap()
}

/// `status.ai` once the advisor has answered.
async fn ai_status(envs: &Api<PreviewEnvironment>, name: &str) -> Value {
    eventually(
        Duration::from_secs(90),
        &format!("{name} status.ai"),
        || {
            let envs = envs.clone();
            let name = name.to_owned();
            async move {
                let env = envs.get_opt(&name).await.ok().flatten()?;
                let status = serde_json::to_value(env.status?).ok()?;
                let ai = status.get("ai")?.clone();
                ai.get("servicesDetected").is_some().then_some(ai)
            }
        },
    )
    .await
}

fn detected(ai: &Value) -> Vec<&str> {
    ai["servicesDetected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_definitions_of_the_repository_narrow_shared_build_files() {
    let client = client().await;
    install_crds(&client).await;
    let ns = temp_namespace(&client, "builddefs").await;
    let github = FakeGitHub::start().await;
    github.with(|s| {
        // PR 7: the Node version of the builds; only web's build reads it
        s.pr_file_list.insert(
            7,
            vec![file(
                ".env",
                "@@ -1,3 +1,3 @@\n # toolchain versions used by the image builds\n GO_VERSION=1.22\n-NODE_VERSION=18\n+NODE_VERSION=20\n",
            )],
        );
        // PR 8: the chart's worker image tag (its repository is a declared image)
        s.pr_file_list.insert(
            8,
            vec![file(
                "charts/shop/values.yaml",
                "@@ -30,4 +30,4 @@ redis:\n queueWorker:\n   image:\n     repository: acme/queue-worker\n-    tag: \"0.9.3\"\n+    tag: \"0.9.4\"\n",
            )],
        );
        // PR 9: the same `.env` change, read without build definitions (below)
        s.pr_file_list.insert(9, s.pr_file_list[&7].clone());
    });
    let repos: Api<PreviewRepository> = Api::namespaced(client.clone(), &ns);
    let created = repos
        .create(
            &PostParams::default(),
            &repository(Some(build_definitions())),
        )
        .await
        .expect("create PreviewRepository");
    // the API server kept the field (an unknown field would have been pruned)
    let stored = created
        .spec
        .build_definitions
        .expect("buildDefinitions stored");
    assert_eq!(stored.services.len(), 3);
    assert_eq!(stored.services[1].args.get("NODE_VERSION"), Some(&None));

    let previewd = Previewd::start(&ns, &github);
    let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
    for pr in [7, 8] {
        envs.create(&PostParams::default(), &environment(pr))
            .await
            .expect("create PreviewEnvironment");
    }
    let ai = ai_status(&envs, "shop-pr-7").await;
    assert_eq!(detected(&ai), ["web"], "{ai}");
    let ai = ai_status(&envs, "shop-pr-8").await;
    assert_eq!(detected(&ai), ["worker"], "{ai}");

    // Without build definitions the same `.env` patch names no reader: path matching,
    // and the shared path deploys every service, with the reason.
    let mut repo = repos.get("shop").await.unwrap();
    repo.spec.build_definitions = None;
    repos
        .replace("shop", &PostParams::default(), &repo)
        .await
        .expect("drop buildDefinitions");
    envs.create(&PostParams::default(), &environment(9))
        .await
        .expect("create PreviewEnvironment");
    let ai = ai_status(&envs, "shop-pr-9").await;
    assert_eq!(detected(&ai), ["api", "web", "worker"], "{ai}");
    assert!(
        ai["reason"]
            .as_str()
            .is_some_and(|r| r.contains("env file .env") && r.contains("matched by path only")),
        "{ai}"
    );
    assert!(
        github.hits(&reqwest::Method::GET, "/repos/acme/shop/pulls/7/files") >= 1,
        "the files came from the GitHub API"
    );

    for pr in [7, 8, 9] {
        let _ = envs
            .delete(&format!("shop-pr-{pr}"), &DeleteParams::default())
            .await;
    }
    for pr in [7, 8, 9] {
        let name = format!("shop-pr-{pr}");
        eventually(Duration::from_secs(90), &format!("{name} deleted"), || {
            let envs = envs.clone();
            let name = name.clone();
            async move { matches!(envs.get_opt(&name).await, Ok(None)).then_some(()) }
        })
        .await;
    }
    drop(previewd);
    delete_namespace(&client, &ns).await;
}
