//! A harness for tests against a real Kubernetes API server (behind the `testing`
//! feature).
//!
//! It gives a client for the cluster named by `KUBECONFIG`, installs previewd's custom
//! resource definitions, makes throwaway namespaces, polls for a condition with
//! [`eventually`], and runs the real controller scoped to one namespace with [`Operator`].
//! previewd's own cluster tests use it against the local control plane that `testenv/up`
//! starts; embedders can use it for their own cluster tests:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use kube::Api;
//! use previewd_kube::PreviewEnvironment;
//! use previewd_kube::testing::{
//!     Operator, client, delete_namespace, eventually, install_crds, temp_namespace,
//!     test_config,
//! };
//!
//! # async fn example() {
//! let client = client().await;
//! install_crds(&client).await;
//! let ns = temp_namespace(&client, "my-test").await;
//! let operator = Operator::start(client.clone(), test_config(&ns)).await;
//! let envs: Api<PreviewEnvironment> = Api::namespaced(client.clone(), &ns);
//! // ... create a PreviewEnvironment, then wait for what the controller does:
//! eventually(Duration::from_secs(60), "shop-pr-1 exists", || {
//!     let envs = envs.clone();
//!     async move { envs.get_opt("shop-pr-1").await.ok().flatten() }
//! })
//! .await;
//! operator.stop().await;
//! delete_namespace(&client, &ns).await;
//! # }
//! ```
//!
//! Like assertions, the functions here panic when the cluster does not behave: a test
//! harness has nowhere better to report to. Each function names its panics.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Context, ControllerConfig, Readiness};

/// The label every namespace made by [`temp_namespace`] carries (value `"true"`), so that
/// leftovers of interrupted runs can be found and removed.
pub const TEST_NAMESPACE_LABEL: &str = "previewd.io/test";

/// The field manager [`install_crds`] applies the definitions with.
pub const FIELD_MANAGER: &str = "previewd-tests";

/// How long [`install_crds`] waits for each definition to become Established, and
/// [`Operator::start_with`] for the controller's caches to sync.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`eventually`] polls.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

const NO_KUBECONFIG: &str = "KUBECONFIG is not set: start the local control plane with \
     `export $(testenv/up | tail -n1)` (scripts/test does both), or point KUBECONFIG at a \
     test cluster";

/// Panics with `what` and the error unless `result` is `Ok`.
fn ok_or_panic<T, E: Debug>(result: Result<T, E>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what}: {error:?}"),
    }
}

/// The client configuration for the cluster named by `KUBECONFIG`, with ring installed as
/// the process's TLS provider. Use it to build a client with extra layers; [`client`]
/// builds a plain one.
///
/// # Panics
///
/// When `KUBECONFIG` is not set (with a message saying how to start the local control
/// plane) or cannot be loaded.
pub async fn config() -> Config {
    // Already installed (by an earlier call or the embedder) is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert!(std::env::var_os("KUBECONFIG").is_some(), "{NO_KUBECONFIG}");
    ok_or_panic(Config::infer().await, "load KUBECONFIG")
}

/// A client for the cluster named by `KUBECONFIG`.
///
/// # Panics
///
/// As [`config`], or when the client cannot be built from the configuration.
pub async fn client() -> Client {
    ok_or_panic(Client::try_from(config().await), "client for KUBECONFIG")
}

/// Installs previewd's custom resource definitions ([`crate::crdgen::crds`]) with a
/// forced server-side apply, and waits until each one is Established.
///
/// # Panics
///
/// When an apply is refused, or a definition is not Established within
/// [`SETUP_TIMEOUT`].
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::crdgen::crds() {
        let name = crd.name_any();
        ok_or_panic(
            crds.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await,
            &format!("apply CRD {name}"),
        );
        let established = tokio::time::timeout(
            SETUP_TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await;
        let watched = ok_or_panic(established, &format!("CRD {name} established in time"));
        ok_or_panic(watched, &format!("watch CRD {name}"));
    }
}

/// Installs custom resource definitions of another product as its own Go module ships
/// them: runs the `testenv/` script `script` (which prints, as its last line, the
/// directory holding the manifests), applies `files` from there with a forced server-side
/// apply, and waits until each is Established.
///
/// # Panics
///
/// When the script fails, a file cannot be read or applied, or a definition is not
/// Established within [`SETUP_TIMEOUT`].
pub async fn install_crd_files(client: &Client, script: &str, files: &[&str]) {
    let path = format!("{}/../testenv/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = ok_or_panic(
        std::process::Command::new(&path).output(),
        &format!("run testenv/{script}"),
    );
    assert!(
        out.status.success(),
        "testenv/{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("testenv/{script} printed no directory"))
        .trim()
        .to_string();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in files {
        let yaml = ok_or_panic(
            std::fs::read(format!("{dir}/{file}")),
            &format!("read {dir}/{file}"),
        );
        let crd: CustomResourceDefinition =
            ok_or_panic(serde_saphyr::from_slice(&yaml), &format!("parse {file}"));
        let name = crd.name_any();
        ok_or_panic(
            crds.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await,
            &format!("apply CRD {name}"),
        );
        let established = tokio::time::timeout(
            SETUP_TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await;
        let watched = ok_or_panic(established, &format!("CRD {name} established in time"));
        ok_or_panic(watched, &format!("watch CRD {name}"));
    }
}

/// Eight random hexadecimal digits, for names that must not collide between tests or
/// runs (namespaces, branches).
pub fn unique_suffix() -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(8);
    id
}

/// Creates a namespace named `{prefix}-{8 random hex digits}`, labelled
/// [`TEST_NAMESPACE_LABEL`], and returns its name. Remove it with [`delete_namespace`].
///
/// # Panics
///
/// When the API server refuses to create it.
pub async fn temp_namespace(client: &Client, prefix: &str) -> String {
    let name = format!("{prefix}-{}", unique_suffix());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    ok_or_panic(
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await,
        &format!("create namespace {name}"),
    );
    name
}

/// Starts deleting a namespace in the background, ignoring errors (it may be gone
/// already); whatever it holds goes with it.
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// Controller settings for tests: watches only `namespace`, polls readiness every 500 ms,
/// backs off from 200 ms up to 5 s, gives a rollout 120 s, sweeps orphans hourly (tests
/// call [`controller::sweep_once`] themselves) and serves previews under `preview.test`.
/// Everything else is [`ControllerConfig::default`].
pub fn test_config(namespace: &str) -> ControllerConfig {
    ControllerConfig {
        watch_namespace: Some(namespace.to_string()),
        concurrency: 4,
        cleanup_interval: Duration::from_secs(3600),
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_secs(5),
        planner: crate::plan::PlannerConfig {
            poll_interval: Duration::from_millis(500),
            readiness_timeout: Duration::from_secs(120),
            resync_interval: Duration::from_secs(60),
            base_domain: "preview.test".into(),
            ..crate::plan::PlannerConfig::default()
        },
        ..ControllerConfig::default()
    }
}

/// Calls `f` every [`POLL_INTERVAL`] until it returns `Some`, and returns that value.
///
/// # Panics
///
/// When `f` has not returned `Some` after `timeout`; the message names `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The real controller ([`controller::run`]) running on a task; it stops on
/// [`Operator::stop`] or, without waiting, when dropped.
pub struct Operator {
    /// The controller's context (client, settings, collaborators), e.g. for
    /// [`controller::sweep_once`] or [`controller::reconcile`] in the test.
    pub ctx: Arc<Context>,
    /// The controller's readiness; ready once its caches have synced.
    pub readiness: Readiness,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    /// Runs the controller with a plain [`Context`] for `client` and `config` (usually
    /// [`test_config`]); see [`Operator::start_with`].
    pub async fn start(client: Client, config: ControllerConfig) -> Operator {
        Self::start_with(Arc::new(Context::new(client, config))).await
    }

    /// Runs the controller with `ctx` (e.g. with a reporter, an advisor or a clock) and
    /// returns once its caches have synced.
    ///
    /// # Panics
    ///
    /// When the controller is not ready within [`SETUP_TIMEOUT`].
    pub async fn start_with(ctx: Arc<Context>) -> Operator {
        let readiness = Readiness::default();
        let token = CancellationToken::new();
        let task = tokio::spawn(controller::run(
            ctx.clone(),
            readiness.clone(),
            token.clone(),
        ));
        let operator = Operator {
            ctx,
            readiness,
            token,
            task: Some(task),
        };
        let readiness = operator.readiness.clone();
        eventually(SETUP_TIMEOUT, "controller caches synced", || {
            let readiness = readiness.clone();
            async move { readiness.is_ready().then_some(()) }
        })
        .await;
        operator
    }

    /// Stops the controller and waits (up to 30 s) for it to finish.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
