//! One operator serves two installations of one GitHub App: the `previewd` binary on the
//! local control plane (`export $(testenv/up | tail -n1)`), with App credentials and no
//! default installation, against a local server that speaks GitHub's API and issues
//! installation tokens that reach only their installation's repositories.
//!
//! `acme/shop` is in one installation, `globex/web` and `initech/app` in the other. Pull
//! requests of the first two arrive as signed deliveries naming their installation;
//! `initech/app`'s environment is created by hand, so its installation is asked of GitHub.
//! Every request about a repository must carry its own installation's token: the reports,
//! the PR-file read, the CI gate's poll, the permission check of a PR command and the
//! backfill's walk over the App's installations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../previewd-github/tests/fake_github/mod.rs"]
mod fake_github;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fake_github::{APP_ID, FakeGitHub, INSTALLATION_ID, OTHER_INSTALLATION_ID};
use kube::api::{Api, DeleteParams, PostParams};
use previewd_core::Phase;
use previewd_kube::crd::{PreviewEnvironment, PreviewRepository};
use previewd_kube::testing::{client, delete_namespace, eventually, install_crds, temp_namespace};
use reqwest::Method;
use serde_json::{Value, json};

const SECRET: &str = "installations-secret";
const SHA_SHOP: &str = "1111111111111111111111111111111111111111";
const SHA_WEB: &str = "2222222222222222222222222222222222222222";
const SHA_APP: &str = "3333333333333333333333333333333333333333";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An RSA key pair for the App (private PEM path, public PEM text).
fn app_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let key = dir.join("app.pem");
    let public = dir.join("app.pub.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed to make a test key");
    assert!(made.success());
    let made = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(made.success());
    (key, std::fs::read_to_string(public).unwrap())
}

/// `previewd run` with App credentials and no default installation.
struct Previewd {
    child: Child,
    webhook: u16,
}

impl Previewd {
    fn start(namespace: &str, github: &FakeGitHub, key: &std::path::Path) -> Self {
        let webhook = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_previewd"))
            .args([
                "run",
                "--ingress-namespace",
                "ingress-system",
                "--namespace",
                namespace,
            ])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-secret", SECRET])
            .args(["--github-app-id", &APP_ID.to_string()])
            .arg("--github-app-private-key-file")
            .arg(key)
            .args(["--github-api-url", github.base_url().as_str()])
            .args(["--base-domain", "preview.test", "--log-format", "text"])
            .env_remove("PREVIEWD_GITHUB_APP_INSTALLATION_ID")
            .env_remove("PREVIEWD_GITHUB_TOKEN")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Previewd { child, webhook }
    }

    /// Sends a signed delivery, retrying while the server is not listening yet.
    async fn deliver(&self, event: &str, payload: &Value) -> u16 {
        let body = serde_json::to_vec(payload).unwrap();
        let signature = previewd_github::signature::sign(SECRET.as_bytes(), &body);
        let http = reqwest::Client::new();
        let delivery = uuid::Uuid::new_v4().to_string();
        eventually(Duration::from_secs(60), "the webhook answers", || {
            let request = http
                .post(format!("http://127.0.0.1:{}/webhook", self.webhook))
                .header("content-type", "application/json")
                .header("x-github-event", event)
                .header("x-github-delivery", &delivery)
                .header("x-hub-signature-256", &signature)
                .body(body.clone());
            async move { request.send().await.ok().map(|r| r.status().as_u16()) }
        })
        .await
    }
}

impl Drop for Previewd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repository(name: &str, full_name: &str, extra: Value) -> PreviewRepository {
    let mut spec = json!({
        "repository": full_name,
        "baseDomain": "preview.test",
        "catalogue": {"services": [
            {"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/",
             "paths": ["src/"]}
        ]}
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewRepository",
        "metadata": {"name": name},
        "spec": spec
    }))
    .unwrap()
}

/// A signed `pull_request` `opened` delivery of `full_name` #`number` at `sha`, received
/// by `installation`.
fn opened(full_name: &str, number: u64, sha: &str, installation: u64) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    let repo = json!({
        "id": 700_000 + number, "name": name, "full_name": full_name, "fork": false,
        "owner": {"login": owner, "type": "Organization"}
    });
    json!({
        "action": "opened",
        "number": number,
        "pull_request": {
            "number": number, "state": "open", "draft": false, "merged": false,
            "title": "Change", "updated_at": "2026-11-25T10:00:00Z",
            "html_url": format!("https://github.com/{full_name}/pull/{number}"),
            "author_association": "MEMBER",
            "user": {"login": "dev"},
            "labels": [],
            "head": {"ref": format!("feature-{number}"), "sha": sha, "repo": repo},
            "base": {"ref": "main", "sha": "9049f1265b7d61be4a8904a9a27120d2064dab3b", "repo": repo}
        },
        "repository": repo,
        "sender": {"login": "dev"},
        "installation": {"id": installation}
    })
}

/// A `/preview extend 1h` comment by `login` on `full_name` #`number`.
fn extend_comment(full_name: &str, number: u64, login: &str, installation: u64) -> Value {
    let (owner, name) = full_name.split_once('/').unwrap();
    json!({
        "action": "created",
        "issue": {"number": number, "pull_request": {"url": "x"}},
        "comment": {"id": 5_000_001, "body": "/preview extend 1h", "user": {"login": login},
                    "author_association": "MEMBER"},
        "repository": {"name": name, "full_name": full_name, "fork": false,
                       "owner": {"login": owner}},
        "sender": {"login": login},
        "installation": {"id": installation}
    })
}

/// The installations whose tokens the requests about `repository` carried, leaving out
/// the App-level installation lookup (made with the JWT).
fn installations_used(github: &FakeGitHub, repository: &str) -> Vec<Option<u64>> {
    let lookup = format!("GET /repos/{repository}/installation");
    let mut used: Vec<Option<u64>> = github
        .repository_requests(repository)
        .into_iter()
        .filter(|(request, _)| *request != lookup)
        .map(|(_, installation)| installation)
        .collect();
    used.sort();
    used.dedup();
    used
}

/// Whether a request `method path` was made with `installation`'s token.
fn made_with(github: &FakeGitHub, method: &Method, path: &str, installation: u64) -> bool {
    github.with(|s| {
        s.log
            .iter()
            .any(|l| l.method == *method && l.path == path && l.installation == Some(installation))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_operator_serves_two_installations_of_the_app() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "installations").await;
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = app_key(dir.path());
    let github = FakeGitHub::start().await;
    github.with(|s| s.public_key_pem = Some(public));
    github.two_installations(&["acme/shop"], &["globex/web", "initech/app"]);
    github.grant("maintainer", "write");
    github.with(|s| {
        // globex/web's head passed its required check; only the CI gate's poll reads it.
        s.check_runs.push(json!({
            "name": "build", "head_sha": SHA_WEB, "status": "completed",
            "conclusion": "success", "completed_at": "2026-11-25T10:05:00Z",
            "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"}
        }));
    });

    let repos: Api<PreviewRepository> = Api::namespaced(admin.clone(), &ns);
    for repo in [
        // The change's files decide which services deploy: the PR's files are read.
        repository("shop", "acme/shop", json!({"deploy": "Affected"})),
        repository(
            "web",
            "globex/web",
            json!({"requiredChecks": [{"name": "build"}]}),
        ),
    ] {
        repos.create(&PostParams::default(), &repo).await.unwrap();
    }

    let previewd = Previewd::start(&ns, &github, &key);
    assert_eq!(
        previewd
            .deliver(
                "pull_request",
                &opened("acme/shop", 1, SHA_SHOP, INSTALLATION_ID)
            )
            .await,
        202
    );
    assert_eq!(
        previewd
            .deliver(
                "pull_request",
                &opened("globex/web", 2, SHA_WEB, OTHER_INSTALLATION_ID)
            )
            .await,
        202
    );
    // An environment made by hand: no delivery names its installation.
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);
    let by_hand: PreviewEnvironment = serde_json::from_value(json!({
        "apiVersion": "previewd.io/v1alpha1",
        "kind": "PreviewEnvironment",
        "metadata": {"name": "initech-app-pr-3"},
        "spec": {
            "repository": "initech/app", "prNumber": 3, "branch": "feature-3",
            "headSHA": SHA_APP,
            "services": [{"name": "web", "image": "registry.k8s.io/pause:3.10", "port": 8080, "ingressPath": "/"}]
        }
    }))
    .unwrap();
    envs.create(&PostParams::default(), &by_hand).await.unwrap();

    // Every environment becomes Ready (globex/web's only once the poll read its check)
    // and is reported to its repository.
    for (repository, name, sha) in [
        (
            "acme/shop",
            previewd_kube::render::environment_name("acme/shop", 1),
            SHA_SHOP,
        ),
        (
            "globex/web",
            previewd_kube::render::environment_name("globex/web", 2),
            SHA_WEB,
        ),
        ("initech/app", "initech-app-pr-3".to_string(), SHA_APP),
    ] {
        eventually(Duration::from_secs(120), &format!("{name} Ready"), || {
            let envs = envs.clone();
            let name = name.clone();
            async move {
                let env = envs.get_opt(&name).await.ok().flatten()?;
                (env.status?.phase? == Phase::Ready).then_some(())
            }
        })
        .await;
        let statuses = format!("/repos/{repository}/statuses/{sha}");
        eventually(
            Duration::from_secs(60),
            &format!("{repository} reported"),
            || {
                let done = github.with(|s| {
                    s.log.iter().any(|l| {
                        l.method == Method::POST
                            && l.path == statuses
                            && l.body["state"] == "success"
                    })
                });
                async move { done.then_some(()) }
            },
        )
        .await;
    }

    // A PR command on globex/web: its author's permission is asked of globex/web's
    // installation, and the command is acknowledged there.
    assert_eq!(
        previewd
            .deliver(
                "issue_comment",
                &extend_comment("globex/web", 2, "maintainer", OTHER_INSTALLATION_ID)
            )
            .await,
        202
    );
    eventually(
        Duration::from_secs(30),
        "the command is acknowledged",
        || {
            let done = github.hits(
                &Method::POST,
                "/repos/globex/web/issues/comments/5000001/reactions",
            ) > 0;
            async move { done.then_some(()) }
        },
    )
    .await;

    // Every request about a repository carried its own installation's token, and none
    // was refused for a wrong installation.
    github.with(|s| {
        assert!(
            s.wrong_installation.is_empty(),
            "{:?}",
            s.wrong_installation
        )
    });
    assert_eq!(
        installations_used(&github, "acme/shop"),
        [Some(INSTALLATION_ID)]
    );
    for repository in ["globex/web", "initech/app"] {
        assert_eq!(
            installations_used(&github, repository),
            [Some(OTHER_INSTALLATION_ID)],
            "{repository}"
        );
    }
    // The PR files, the CI gate's poll and the permission check, each with its repository's
    // installation.
    assert!(made_with(
        &github,
        &Method::GET,
        "/repos/acme/shop/pulls/1/files",
        INSTALLATION_ID
    ));
    assert!(made_with(
        &github,
        &Method::GET,
        &format!("/repos/globex/web/commits/{SHA_WEB}/check-runs"),
        OTHER_INSTALLATION_ID
    ));
    assert!(made_with(
        &github,
        &Method::GET,
        "/repos/globex/web/collaborators/maintainer/permission",
        OTHER_INSTALLATION_ID
    ));
    // Deliveries named the installations of acme/shop and globex/web; only initech/app's
    // was asked of GitHub.
    assert_eq!(
        github.hits(&Method::GET, "/repos/acme/shop/installation"),
        0
    );
    assert_eq!(
        github.hits(&Method::GET, "/repos/globex/web/installation"),
        0
    );
    assert!(github.hits(&Method::GET, "/repos/initech/app/installation") >= 1);
    // The backfill (its first round runs at start) walked the App's installations and
    // listed the repositories of each, until both configured repositories were placed.
    eventually(
        Duration::from_secs(60),
        "the backfill walked both installations",
        || {
            let walked = github.hits(&Method::GET, "/app/installations") >= 1
                && [INSTALLATION_ID, OTHER_INSTALLATION_ID]
                    .iter()
                    .all(|i| made_with(&github, &Method::GET, "/installation/repositories", *i));
            async move { walked.then_some(()) }
        },
    )
    .await;

    for env in envs.list(&Default::default()).await.unwrap() {
        let _ = envs
            .delete(&kube::ResourceExt::name_any(&env), &DeleteParams::default())
            .await;
    }
    eventually(Duration::from_secs(90), "environments deleted", || {
        let envs = envs.clone();
        async move {
            envs.list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        }
    })
    .await;
    drop(previewd);
    delete_namespace(&admin, &ns).await;
}
