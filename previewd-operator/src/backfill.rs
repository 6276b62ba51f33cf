//! Backfill of missed GitHub deliveries. GitHub does not redeliver a failed webhook on its
//! own, and nothing is delivered while previewd is down. So the leader, on start and then
//! every `--backfill-interval`, lists the open pull requests of every repository that has
//! a `PreviewRepository`, and feeds each one through the webhook's own handling as a
//! signed `synchronize` delivery: the same gating (drafts, labels, forks), the same
//! out-of-order protection (`updated_at`) and the same idempotent apply. An environment
//! whose PR is no longer open is checked with GitHub one by one, and only a PR GitHub
//! reports as closed is fed through as `closed`. A GitHub error skips the repository or
//! the PR: nothing is ever deleted because GitHub could not be asked.
//!
//! With GitHub App credentials, each round first walks every installation of the App
//! (`GET /app/installations`) and, until every configured repository is placed, each
//! installation's repositories (`GET /installation/repositories`), so that every
//! repository is read with the token of the installation that serves it. A repository no
//! installation lists is still tried (GitHub is asked for its installation, then the
//! default installation is used) and fails on its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::Request;
use kube::Client;
use kube::api::{Api, ListParams};
use previewd_core::source_control::RepoRef;
use previewd_core::tenancy::ClaimPolicy;
use previewd_github::metrics::WebhookMetrics;
use previewd_github::store::KubeStore;
use previewd_github::webhook::{WebhookConfig, WebhookState, router};
use previewd_github::{GitHubClient, signature};
use previewd_kube::PreviewEnvironment;
use previewd_kube::crd::PreviewRepository;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{info, warn};

/// At most this many open PRs are read per repository and round.
pub const MAX_OPEN_PULL_REQUESTS: usize = 1000;

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackfillReport {
    /// Installations of the GitHub App walked (0 with a token).
    pub installations: usize,
    /// Repositories whose open PRs were listed.
    pub repositories: usize,
    /// Open PRs fed through the webhook handling.
    pub open: usize,
    /// Closed PRs whose environment was fed through as `closed`.
    pub closed: usize,
    /// Answers other than 2xx from the webhook handling, and GitHub errors.
    pub errors: usize,
}

/// The backfill: a GitHub client, and the webhook handling it feeds.
#[derive(Clone)]
pub struct Backfill {
    client: Client,
    github: GitHubClient,
    webhook: axum::Router,
    secret: String,
    settings_namespace: Option<String>,
    claim_policy: ClaimPolicy,
    interval: Duration,
}

impl Backfill {
    /// Reads the settings of `settings_namespace` (all namespaces when `None`) and writes
    /// environments through a webhook handler keyed with `secret`.
    pub fn new(
        client: Client,
        github: GitHubClient,
        secret: &str,
        settings_namespace: Option<String>,
        interval: Duration,
    ) -> Self {
        let store = Arc::new(KubeStore::new(client.clone(), settings_namespace.clone()));
        let state = WebhookState::new(WebhookConfig::new(secret), store, WebhookMetrics::default());
        Backfill {
            client,
            github,
            webhook: router(state),
            secret: secret.to_string(),
            settings_namespace,
            claim_policy: ClaimPolicy::open(),
            interval,
        }
    }

    /// Feeds deliveries through `state` (which must verify signatures with the secret this
    /// backfill was made with) and walks only the repositories `claim_policy` lets their
    /// settings' namespace claim: the operator's own webhook handling, so that a missed
    /// delivery is decided exactly as the delivered one would have been.
    pub fn with_webhook(mut self, state: WebhookState, claim_policy: ClaimPolicy) -> Self {
        self.webhook = router(state);
        self.claim_policy = claim_policy;
        self
    }

    /// Runs a round at once, then every interval, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.run_once().await {
                Ok(report) => info!(?report, "backfill of pull requests done"),
                Err(e) => warn!(error = %e, "backfill of pull requests failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One round over every configured repository.
    pub async fn run_once(&self) -> anyhow::Result<BackfillReport> {
        let repositories: Api<PreviewRepository> = match &self.settings_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut report = BackfillReport::default();
        let settings = repositories.list(&ListParams::default()).await?;
        let names: BTreeSet<String> = settings
            .iter()
            .filter(|r| {
                let namespace = r.metadata.namespace.as_deref().unwrap_or_default();
                let allowed = self.claim_policy.allows(namespace, &r.spec.repository);
                if !allowed {
                    warn!(
                        namespace,
                        repository = %r.spec.repository,
                        "the claim policy does not let this namespace claim the repository; not backfilled"
                    );
                }
                allowed
            })
            .map(|r| r.spec.repository.to_ascii_lowercase())
            .collect();
        if self.github.is_app() && !names.is_empty() {
            match self.github.discover_installations(&names).await {
                Ok(walked) => {
                    report.installations = walked.installations;
                    report.errors += walked.failed.len();
                    for name in names.iter().filter(|n| !walked.found.contains_key(*n)) {
                        warn!(repository = %name, "no installation of the GitHub App lists this repository");
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot list the installations of the GitHub App");
                    report.errors += 1;
                }
            }
        }
        for full_name in names {
            let Some((owner, name)) = full_name.split_once('/') else {
                continue;
            };
            let repo = RepoRef {
                owner: owner.to_string(),
                name: name.to_string(),
            };
            let open = match self
                .github
                .list_open_pull_requests(&repo, MAX_OPEN_PULL_REQUESTS)
                .await
            {
                Ok((open, _more)) => open,
                Err(e) => {
                    // Never act on a repository GitHub could not list.
                    warn!(repository = %full_name, error = %e, "cannot list open pull requests; skipped");
                    report.errors += 1;
                    continue;
                }
            };
            report.repositories += 1;
            let mut open_numbers = BTreeSet::new();
            for pr in &open {
                if let Some(n) = pr["number"].as_u64() {
                    open_numbers.insert(n);
                }
                if self.deliver("synchronize", pr).await {
                    report.open += 1;
                } else {
                    report.errors += 1;
                }
            }
            for number in self.environment_prs(&full_name).await? {
                if open_numbers.contains(&number) {
                    continue;
                }
                match self.github.pull_request_json(&repo, number).await {
                    Ok(pr) if pr["state"] == "closed" => {
                        if self.deliver("closed", &pr).await {
                            report.closed += 1;
                        } else {
                            report.errors += 1;
                        }
                    }
                    // Open after all (listed between our two calls): the next round sees it.
                    Ok(_) => {}
                    Err(e) => {
                        warn!(repository = %full_name, pr = number, error = %e, "cannot read pull request; left as is");
                        report.errors += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// PR numbers of the environments of `repository`.
    async fn environment_prs(&self, repository: &str) -> anyhow::Result<BTreeSet<u64>> {
        let envs: Api<PreviewEnvironment> = match &self.settings_namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        Ok(envs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|e| e.spec.repository.eq_ignore_ascii_case(repository))
            .filter(|e| e.metadata.deletion_timestamp.is_none())
            .filter_map(|e| u64::try_from(e.spec.pr_number).ok())
            .collect())
    }

    /// Feeds one PR through the webhook handling as a signed delivery; true on 2xx.
    async fn deliver(&self, action: &str, pr: &Value) -> bool {
        let number = pr["number"].as_u64().unwrap_or_default();
        let body = json!({
            "action": action,
            "number": number,
            "pull_request": pr,
            "repository": pr["base"]["repo"],
            "sender": pr["user"],
        });
        let bytes = match serde_json::to_vec(&body) {
            Ok(bytes) => bytes,
            Err(_) => return false,
        };
        // A delivery id per PR state, so the webhook's duplicate check lets a changed PR
        // through and an unchanged one cost nothing.
        let delivery = format!(
            "backfill-{}-{number}-{}-{}",
            pr["base"]["repo"]["id"].as_u64().unwrap_or_default(),
            pr["updated_at"].as_str().unwrap_or_default(),
            action
        );
        let request = Request::post("/webhook")
            .header("content-type", "application/json")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", delivery)
            .header(
                "x-hub-signature-256",
                signature::sign(self.secret.as_bytes(), &bytes),
            )
            .header("content-length", bytes.len())
            .body(Body::from(bytes));
        let Ok(request) = request else { return false };
        match self.webhook.clone().oneshot(request).await {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                warn!(pr = number, status = %response.status(), "backfill delivery refused");
                false
            }
            Err(e) => {
                warn!(pr = number, error = %e, "backfill delivery failed");
                false
            }
        }
    }
}

impl std::fmt::Debug for Backfill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backfill")
            .field("settings_namespace", &self.settings_namespace)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The backfill `previewd run` runs on its leader: with GitHub credentials, unless
/// `--backfill-interval` is 0. Its deliveries go to a handler inside this process, never
/// over the network, so they are signed with the webhook secret when this process has one
/// and with a key of its own otherwise: the controller of the split layout, which does
/// not serve the webhook, backfills too.
pub fn from_run_args(
    args: &crate::cli::RunArgs,
    client: Client,
) -> anyhow::Result<Option<Backfill>> {
    let interval = args.replica.backfill_interval;
    if interval.is_zero() || args.replica.webhook_only {
        return Ok(None);
    }
    let metrics = previewd_github::metrics::ClientMetrics::default();
    let Some(github) = crate::run::github_rest_client(args, metrics)? else {
        return Ok(None);
    };
    let secret = args
        .webhook_secret
        .as_ref()
        .map(|s| secrecy::ExposeSecret::expose_secret(s).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let store = Arc::new(KubeStore::new(client.clone(), args.namespace.clone()));
    let state = crate::run::webhook_state(
        args,
        &secret,
        store,
        WebhookMetrics::default(),
        Some(github.clone()),
    )?;
    Ok(Some(
        Backfill::new(client, github, &secret, args.namespace.clone(), interval)
            .with_webhook(state, crate::run::claim_policy(args)?),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    fn run_args(flags: &[&str]) -> crate::cli::RunArgs {
        let mut argv = vec!["previewd", "run"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(run) => *run,
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn client() -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn the_controller_backfills_without_the_webhook_secret() {
        // The split layout's controller: GitHub credentials, no webhook secret.
        let controller = run_args(&["--github-token", "t0ken"]);
        assert!(
            super::from_run_args(&controller, client().await)
                .unwrap()
                .is_some()
        );
        // Off without credentials, at interval 0, and in a webhook-only process.
        assert!(
            super::from_run_args(&run_args(&[]), client().await)
                .unwrap()
                .is_none()
        );
        let off = run_args(&["--github-token", "t0ken", "--backfill-interval", "0s"]);
        assert!(
            super::from_run_args(&off, client().await)
                .unwrap()
                .is_none()
        );
        let webhook = run_args(&["--github-token", "t0ken", "--webhook-only"]);
        assert!(
            super::from_run_args(&webhook, client().await)
                .unwrap()
                .is_none()
        );
    }
}
