//! The common setup of every scenario: a namespace with repository settings, the GitHub
//! server, the counting proxy, the tracker and the operator's settings.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::Client;

use crate::cluster::{self, Tracker};
use crate::github::{GitHubServer, PullState, TOKEN};
use crate::operator::{Operator, OperatorSettings};
use crate::proxy::ApiProxy;
use crate::webhook::{self, Answer, Delivery};

/// Webhook secret of every scenario.
pub const SECRET: &str = "scenario-webhook-secret";

/// What a scenario needs to set up.
#[derive(Clone, Debug)]
pub struct RigOptions {
    /// Namespace prefix.
    pub prefix: String,
    /// Services per environment.
    pub services: usize,
    /// Default TTL of the repository.
    pub ttl: String,
    /// Label a PR needs to get an environment.
    pub required_label: Option<String>,
    /// Image of every service.
    pub image: String,
    /// Report to the GitHub server.
    pub github: bool,
    /// Operator's `--resync-interval`.
    pub resync_interval: String,
    /// Operator's `--cleanup-interval`.
    pub cleanup_interval: String,
    /// Operator's `--readiness-timeout`.
    pub readiness_timeout: String,
    /// Operator's `--concurrency`.
    pub concurrency: u16,
    /// Operator's `RUST_LOG`.
    pub log_filter: String,
    /// The `previewd` binary; default: [`crate::operator::find_binary`].
    pub binary: Option<PathBuf>,
    /// More flags for `previewd run`.
    pub extra_args: Vec<String>,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            prefix: "scenario".into(),
            services: 3,
            ttl: "4h".into(),
            required_label: None,
            image: "registry.k8s.io/pause:3.10".into(),
            github: true,
            resync_interval: "5m".into(),
            cleanup_interval: "1h".into(),
            readiness_timeout: "10m".into(),
            concurrency: previewd_kube::controller::DEFAULT_CONCURRENCY,
            log_filter: "warn".into(),
            binary: None,
            extra_args: Vec::new(),
        }
    }
}

/// A scenario's setup.
pub struct Rig {
    /// Direct client (not counted).
    pub client: Client,
    /// Namespace holding settings and environments.
    pub namespace: String,
    /// GitHub server.
    pub github: GitHubServer,
    /// Counting proxy the operator talks through.
    pub proxy: ApiProxy,
    /// Watches the operator's work.
    pub tracker: Tracker,
    /// How to start the operator.
    pub settings: OperatorSettings,
    /// Working directory (operator log, kubeconfig).
    pub dir: PathBuf,
    /// HTTP client for webhooks.
    pub http: reqwest::Client,
}

impl Rig {
    /// Sets everything up (not the operator).
    pub async fn new(options: &RigOptions) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client::try_default()
            .await
            .context("no cluster: set KUBECONFIG (export $(testenv/up | tail -n1))")?;
        cluster::install_crds(&client).await?;
        let mut suffix = uuid::Uuid::new_v4().simple().to_string();
        suffix.truncate(8);
        let namespace = format!("{}-{suffix}", options.prefix);
        cluster::create_namespace(&client, &namespace).await?;
        let repo = cluster::repository(
            &namespace,
            options.services,
            &options.ttl,
            options.required_label.as_deref(),
            &options.image,
        )?;
        cluster::apply_repository(&client, &repo).await?;
        let github = GitHubServer::start().await?;
        let proxy = ApiProxy::start(client.clone()).await?;
        let tracker = Tracker::start(&client, &namespace).await?;
        let dir = std::env::temp_dir().join(format!("previewd-{namespace}"));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, proxy.kubeconfig())?;
        let settings = OperatorSettings {
            binary: match &options.binary {
                Some(path) => path.clone(),
                None => crate::operator::find_binary()?,
            },
            kubeconfig,
            namespace: namespace.clone(),
            webhook_secret: SECRET.into(),
            github_api_url: options.github.then(|| github.base_url()),
            github_token: TOKEN.into(),
            resync_interval: options.resync_interval.clone(),
            cleanup_interval: options.cleanup_interval.clone(),
            readiness_timeout: options.readiness_timeout.clone(),
            concurrency: options.concurrency,
            log_file: dir.join("operator.log"),
            log_filter: options.log_filter.clone(),
            ports: None,
            extra_args: options.extra_args.clone(),
        };
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Rig {
            client,
            namespace,
            github,
            proxy,
            tracker,
            settings,
            dir,
            http,
        })
    }

    /// Starts the operator.
    pub async fn start_operator(&self) -> anyhow::Result<Operator> {
        Operator::start(&self.settings).await
    }

    /// Environment name of PR `number`.
    pub fn env_name(number: u64) -> String {
        previewd_kube::render::environment_name("acme/shop", number)
    }

    /// Records the PR's true state on the GitHub server and makes the delivery.
    pub fn event(
        &self,
        action: &str,
        number: u64,
        pull: &PullState,
        label: Option<&str>,
    ) -> Delivery {
        self.github.set_pull(number, pull.clone());
        let payload = webhook::payload(action, number, pull, label);
        webhook::delivery(SECRET, action, number, &payload)
    }

    /// Sends `d` to `url` until it is answered 2xx (GitHub redelivers failed deliveries),
    /// for at most `patience`. Returns the last answer and the attempts made.
    pub async fn deliver(&self, url: &str, d: &Delivery, patience: Duration) -> (Answer, u32) {
        self.deliver_backing_off(url, d, patience, Duration::from_millis(250))
            .await
    }

    /// Like [`Rig::deliver`], waiting 250 ms after the first refusal and twice as long
    /// after each next one, up to `max_wait`, with jitter: many refused senders spread
    /// out instead of redelivering in lockstep.
    pub async fn deliver_backing_off(
        &self,
        url: &str,
        d: &Delivery,
        patience: Duration,
        max_wait: Duration,
    ) -> (Answer, u32) {
        use rand::Rng;
        let deadline = Instant::now() + patience;
        let mut attempts = 0;
        let mut wait = Duration::from_millis(250).min(max_wait);
        loop {
            attempts += 1;
            let answer = webhook::send(&self.http, url, d).await;
            if (200..300).contains(&answer.status) || Instant::now() > deadline {
                return (answer, attempts);
            }
            let jitter = rand::rng().random_range(0.5..=1.0);
            tokio::time::sleep(wait.mul_f64(jitter)).await;
            wait = (wait * 2).min(max_wait);
        }
    }

    /// Removes what the scenario made, operator running or not: the preview namespaces
    /// of this scenario's environments, the environments' finalizers, the namespace, and
    /// the working directory (kept when `keep_dir`, for the operator log).
    pub async fn cleanup(self, keep_dir: bool) {
        cluster::remove_scenario(&self.client, &self.namespace).await;
        if !keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
