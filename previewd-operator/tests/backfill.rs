//! Backfill of missed deliveries against the local control plane and a local server that
//! speaks GitHub's pulls API: with the operator "stopped", PRs are opened, pushed and
//! closed; one backfill round converges; a GitHub error never deletes anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use previewd_github::metrics::ClientMetrics;
use previewd_github::metrics::WebhookMetrics;
use previewd_github::store::KubeStore;
use previewd_github::{ClientConfig, GitHubAuth, GitHubClient};
use previewd_kube::crd::PreviewEnvironment;
use previewd_kube::testing::{client, delete_namespace, install_crds, temp_namespace};
use previewd_operator::backfill::Backfill;
use previewd_operator::cli::RunArgs;
use previewd_operator::run::{claim_policy, webhook_state};
use serde_json::{Value, json};

const SECRET: &str = "backfill-secret";

#[derive(Default)]
struct Pulls {
    prs: BTreeMap<u64, Value>,
    fail_list: bool,
    fail_get: bool,
}

type Shared = Arc<Mutex<Pulls>>;

async fn list(State(s): State<Shared>) -> impl IntoResponse {
    let s = s.lock().unwrap();
    if s.fail_list {
        return (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"message": "Server Error"})),
        );
    }
    let open: Vec<Value> = s
        .prs
        .values()
        .filter(|p| p["state"] == "open")
        .cloned()
        .collect();
    (StatusCode::OK, axum::Json(json!(open)))
}

async fn one(
    State(s): State<Shared>,
    Path((_o, _r, n)): Path<(String, String, u64)>,
) -> impl IntoResponse {
    let s = s.lock().unwrap();
    if s.fail_get {
        return (
            StatusCode::BAD_GATEWAY,
            axum::Json(json!({"message": "Server Error"})),
        );
    }
    match s.prs.get(&n) {
        Some(pr) => (StatusCode::OK, axum::Json(pr.clone())),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "Not Found"})),
        ),
    }
}

fn pull(number: u64, sha: &str, updated_at: &str, state: &str) -> Value {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/demo/pull_request.opened.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut pr = template["pull_request"].clone();
    pr["number"] = json!(number);
    pr["head"]["sha"] = json!(sha);
    pr["head"]["ref"] = json!(format!("feature-{number}"));
    pr["updated_at"] = json!(updated_at);
    pr["state"] = json!(state);
    pr
}

const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

async fn heads(envs: &Api<PreviewEnvironment>) -> BTreeMap<i64, String> {
    envs.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.metadata.deletion_timestamp.is_none())
        .map(|e| (e.spec.pr_number, e.spec.head_sha))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_deliveries_converge_and_github_errors_never_delete() {
    let admin = client().await;
    install_crds(&admin).await;
    let ns = temp_namespace(&admin, "backfill").await;

    // The repository's trusted settings, as in the demo.
    let settings: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/demo/repository.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let ar = kube::discovery::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("previewd.io", "v1alpha1", "PreviewRepository"),
        "previewrepositories",
    );
    let repos: Api<DynamicObject> = Api::namespaced_with(admin.clone(), &ns, &ar);
    let obj: DynamicObject = serde_json::from_value(settings).unwrap();
    repos
        .patch(
            "acme-shop",
            &PatchParams::apply("previewd-tests"),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap();

    // GitHub with two open PRs.
    let state: Shared = Arc::default();
    {
        let mut s = state.lock().unwrap();
        s.prs
            .insert(11, pull(11, SHA_A, "2026-11-25T10:00:00Z", "open"));
        s.prs
            .insert(12, pull(12, SHA_A, "2026-11-25T10:00:00Z", "open"));
    }
    let app = Router::new()
        .route("/repos/{o}/{r}/pulls", get(list))
        .route("/repos/{o}/{r}/pulls/{n}", get(one))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut config = ClientConfig::new(url::Url::parse(&format!("http://{addr}/")).unwrap());
    config.max_retries = 0;
    let github = GitHubClient::new(
        config,
        GitHubAuth::Token("t0ken".to_string().into()),
        ClientMetrics::default(),
    )
    .unwrap();
    let backfill = Backfill::new(
        admin.clone(),
        github.clone(),
        SECRET,
        Some(ns.clone()),
        Duration::from_secs(3600),
    );
    let envs: Api<PreviewEnvironment> = Api::namespaced(admin.clone(), &ns);

    let report = backfill.run_once().await.unwrap();
    assert_eq!(
        (
            report.repositories,
            report.open,
            report.closed,
            report.errors
        ),
        (1, 2, 0, 0),
        "{report:?}"
    );
    assert_eq!(
        heads(&envs).await,
        BTreeMap::from([(11, SHA_A.into()), (12, SHA_A.into())])
    );

    // While nobody listens: #13 opened, #11 pushed, #12 closed.
    {
        let mut s = state.lock().unwrap();
        s.prs
            .insert(13, pull(13, SHA_A, "2026-11-25T11:00:00Z", "open"));
        s.prs
            .insert(11, pull(11, SHA_B, "2026-11-25T11:00:00Z", "open"));
        s.prs
            .insert(12, pull(12, SHA_A, "2026-11-25T11:00:00Z", "closed"));
    }
    let report = backfill.run_once().await.unwrap();
    assert_eq!(
        (report.open, report.closed, report.errors),
        (2, 1, 0),
        "{report:?}"
    );
    assert_eq!(
        heads(&envs).await,
        BTreeMap::from([(11, SHA_B.into()), (13, SHA_A.into())])
    );

    // Nothing changed: nothing is written.
    let before = envs
        .get("shop-pr-13")
        .await
        .unwrap()
        .metadata
        .resource_version;
    backfill.run_once().await.unwrap();
    assert_eq!(
        envs.get("shop-pr-13")
            .await
            .unwrap()
            .metadata
            .resource_version,
        before
    );

    // GitHub errors: a failing list skips the repository; a failing read of a PR that
    // left the list leaves its environment alone.
    state.lock().unwrap().fail_list = true;
    let report = backfill.run_once().await.unwrap();
    assert_eq!((report.repositories, report.errors), (0, 1), "{report:?}");
    {
        let mut s = state.lock().unwrap();
        s.fail_list = false;
        s.fail_get = true;
        s.prs
            .insert(13, pull(13, SHA_A, "2026-11-25T12:00:00Z", "closed"));
    }
    let report = backfill.run_once().await.unwrap();
    assert_eq!((report.closed, report.errors), (0, 1), "{report:?}");
    assert_eq!(
        heads(&envs).await,
        BTreeMap::from([(11, SHA_B.into()), (13, SHA_A.into())])
    );

    // Once GitHub answers, the closed PR's environment goes.
    state.lock().unwrap().fail_get = false;
    let report = backfill.run_once().await.unwrap();
    assert_eq!(report.closed, 1, "{report:?}");
    assert_eq!(heads(&envs).await, BTreeMap::from([(11, SHA_B.into())]));
    // The operator's own claim policy: when --repository-claims does not let this
    // namespace claim the repository, the backfill neither walks it nor writes anything;
    // once it does, the missed PR arrives.
    state
        .lock()
        .unwrap()
        .prs
        .insert(14, pull(14, SHA_A, "2026-11-25T13:00:00Z", "open"));
    let with_claims = |claims: String| {
        let args = RunArgs {
            repository_claims: Some(claims),
            ..RunArgs::default()
        };
        let store = Arc::new(KubeStore::new(admin.clone(), Some(ns.clone())));
        Backfill::new(
            admin.clone(),
            github.clone(),
            SECRET,
            Some(ns.clone()),
            Duration::from_secs(3600),
        )
        .with_webhook(
            webhook_state(&args, SECRET, store, WebhookMetrics::default(), None).unwrap(),
            claim_policy(&args).unwrap(),
        )
    };
    let report = with_claims("team-elsewhere=acme/*".into())
        .run_once()
        .await
        .unwrap();
    assert_eq!((report.repositories, report.open), (0, 0), "{report:?}");
    assert_eq!(heads(&envs).await, BTreeMap::from([(11, SHA_B.into())]));
    let report = with_claims(format!("{ns}=acme/*"))
        .run_once()
        .await
        .unwrap();
    assert_eq!((report.repositories, report.open), (1, 2), "{report:?}");
    assert_eq!(
        heads(&envs).await,
        BTreeMap::from([(11, SHA_B.into()), (14, SHA_A.into())])
    );
    delete_namespace(&admin, &ns).await;
}
