//! High availability: which replica runs the controller.
//!
//! With `--leader-elect`, every replica serves the GitHub webhook, but only the holder of
//! a Kubernetes `Lease` (kept by `kube-lease-manager`) runs the controller, the cleanup
//! sweep, the GitHub reporter and the backfill of missed deliveries. A replica that loses the lease stops its controller and
//! exits, so that it restarts as a clean standby; on SIGTERM the leader stops its
//! controller first and then releases the lease, so a standby takes over at once instead
//! of waiting for the lease to expire. A leader that dies without releasing (SIGKILL, a
//! lost node) is replaced once its lease expires, within `--leader-elect-lease-duration`.
//!
//! Several operator deployments may share a cluster, each with its own lease name: the
//! lease only decides which replica of one deployment is active.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use previewd_kube::controller::{self, Context, Readiness};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backfill::Backfill;
use crate::cli::parse_duration;

/// Flags that decide which parts of the operator this process runs.
#[derive(Debug, Clone, Args)]
pub struct ReplicaArgs {
    /// Run the controller only while holding the leader Lease (for more than one replica).
    #[arg(long, env = "PREVIEWD_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the leader Lease; operator deployments that must not exclude each other
    /// use different names.
    #[arg(
        long,
        env = "PREVIEWD_LEADER_ELECT_LEASE_NAME",
        default_value = "previewd"
    )]
    pub leader_elect_lease_name: String,
    /// Namespace of the leader Lease; default: $POD_NAMESPACE, else `default`.
    #[arg(long, env = "PREVIEWD_LEADER_ELECT_NAMESPACE")]
    pub leader_elect_namespace: Option<String>,
    /// How long a lease holder that stopped renewing keeps the lease; a standby takes
    /// over after at most this long.
    #[arg(long, env = "PREVIEWD_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// The holder renews this long before its lease expires (less than the duration).
    #[arg(long, env = "PREVIEWD_LEADER_ELECT_GRACE_PERIOD", default_value = "5s", value_parser = parse_duration)]
    pub leader_elect_grace_period: Duration,
    /// This replica's identity in the Lease; default: $POD_NAME, else the host name plus
    /// the process id.
    #[arg(long, env = "PREVIEWD_LEADER_ELECT_IDENTITY")]
    pub leader_elect_identity: Option<String>,
    /// Serve only the GitHub webhook (and the admin endpoints), never the controller: the
    /// split webhook Deployment, whose ServiceAccount may only write PreviewEnvironments.
    #[arg(long, env = "PREVIEWD_WEBHOOK_ONLY")]
    pub webhook_only: bool,
    /// How often the leader lists the open pull requests of every configured repository
    /// and converges (also once at start); `0s` switches the backfill off. Needs GitHub
    /// credentials and the webhook secret.
    #[arg(long, env = "PREVIEWD_BACKFILL_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub backfill_interval: Duration,
    /// Refuse to start without a webhook secret, instead of running without the webhook
    /// server (the Helm chart sets it whenever the webhook is enabled).
    #[arg(long, env = "PREVIEWD_WEBHOOK_REQUIRED")]
    pub webhook_required: bool,
}

impl ReplicaArgs {
    /// Checks the flags against each other and against the webhook secret, before anything
    /// starts: a missing required secret is a startup error, never a silently disabled
    /// webhook.
    pub fn validate(&self, webhook_secret_set: bool) -> anyhow::Result<()> {
        if (self.webhook_required || self.webhook_only) && !webhook_secret_set {
            anyhow::bail!(
                "the GitHub webhook is required (--webhook-required or --webhook-only) but no \
                 webhook secret is set: set --webhook-secret or PREVIEWD_WEBHOOK_SECRET (in the \
                 Helm chart: github.webhookSecret.existingSecret, and check that the Secret \
                 and its key exist)"
            );
        }
        if self.leader_elect {
            let duration = self.leader_elect_lease_duration.as_secs();
            let grace = self.leader_elect_grace_period.as_secs();
            if grace == 0 || duration <= grace {
                anyhow::bail!(
                    "--leader-elect-grace-period ({grace}s) must be at least 1s and shorter than \
                     --leader-elect-lease-duration ({duration}s)"
                );
            }
        }
        Ok(())
    }

    fn lease_namespace(&self) -> String {
        self.leader_elect_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".into())
    }

    fn identity(&self) -> String {
        self.leader_elect_identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "previewd".into());
                format!("{host}-{}", std::process::id())
            })
    }
}

/// Runs the controller part of the operator as `args` say: not at all (webhook only),
/// always (a single replica), or while this replica holds the leader Lease. Returns when
/// `shutdown` is cancelled; returns an error when leadership is lost, so the process exits
/// and restarts as a standby.
pub async fn run_controller(
    args: &ReplicaArgs,
    client: Client,
    ctx: Arc<Context>,
    readiness: Readiness,
    shutdown: CancellationToken,
    backfill: Option<Backfill>,
) -> anyhow::Result<()> {
    if args.webhook_only {
        info!("webhook-only replica: the controller does not run here");
        shutdown.cancelled().await;
        return Ok(());
    }
    if !args.leader_elect {
        let backfill = spawn_backfill(backfill, &shutdown);
        controller::run(ctx, readiness, shutdown).await;
        if let Some(task) = backfill {
            let _ = task.await;
        }
        return Ok(());
    }

    let namespace = args.lease_namespace();
    let identity = args.identity();
    let lease = args.leader_elect_lease_name.clone();
    let manager = LeaseManagerBuilder::new(client, &lease)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(args.leader_elect_lease_duration.as_secs())
        .with_grace(args.leader_elect_grace_period.as_secs())
        .build()
        .await
        .with_context(|| format!("preparing the leader Lease {namespace}/{lease}"))?;
    let (mut leader, lease_task) = manager.watch().await;
    info!(%namespace, %lease, %identity, "standing by for the leader lease");

    let outcome = lead_while_holding(&mut leader, ctx, readiness, &shutdown, backfill).await;

    // Closing the channel makes the lease task release the lease (if held) and stop.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(10), lease_task).await {
        Ok(Ok(Ok(_))) => info!(%lease, "leader lease released"),
        Ok(Ok(Err(e))) => warn!(error = %e, %lease, "could not release the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "leader lease task failed"),
        Err(_) => warn!(%lease, "timed out releasing the leader lease"),
    }
    outcome
}

fn spawn_backfill(
    backfill: Option<Backfill>,
    token: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    backfill.map(|b| tokio::spawn(b.run(token.clone())))
}

async fn lead_while_holding(
    leader: &mut tokio::sync::watch::Receiver<bool>,
    ctx: Arc<Context>,
    readiness: Readiness,
    shutdown: &CancellationToken,
    backfill: Option<Backfill>,
) -> anyhow::Result<()> {
    // Wait to become the leader.
    while !*leader.borrow_and_update() {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            changed = leader.changed() => {
                changed.context("the leader election task stopped")?;
            }
        }
    }
    info!("acquired the leader lease; starting the controller");
    let term = shutdown.child_token();
    let controller = tokio::spawn(controller::run(ctx, readiness, term.clone()));
    let backfill = spawn_backfill(backfill, &term);
    let lost = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break false,
            changed = leader.changed() => {
                if changed.is_err() || !*leader.borrow_and_update() {
                    break true;
                }
            }
        }
    };
    // Stop writing before anyone else may start: the controller drains first.
    term.cancel();
    if let Some(task) = backfill {
        let _ = task.await;
    }
    if tokio::time::timeout(Duration::from_secs(20), controller)
        .await
        .is_err()
    {
        warn!("the controller did not stop within 20s");
    }
    if lost {
        anyhow::bail!("lost the leader lease; exiting so that this replica restarts as a standby");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::Parser;

    use crate::cli::Cli;

    fn replica(args: &[&str]) -> super::ReplicaArgs {
        let mut argv = vec!["previewd", "run"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(run) => run.replica,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_required_webhook_without_a_secret_is_a_startup_error() {
        let args = replica(&["--webhook-required"]);
        let err = args.validate(false).unwrap_err().to_string();
        assert!(err.contains("no webhook secret"), "{err}");
        assert!(args.validate(true).is_ok());
        assert!(replica(&["--webhook-only"]).validate(false).is_err());
        assert!(replica(&[]).validate(false).is_ok());
    }

    #[test]
    fn lease_timings_are_checked() {
        let ok = replica(&["--leader-elect"]);
        assert!(ok.validate(true).is_ok());
        assert_eq!(ok.leader_elect_lease_duration.as_secs(), 15);
        let bad = replica(&[
            "--leader-elect",
            "--leader-elect-lease-duration",
            "5s",
            "--leader-elect-grace-period",
            "5s",
        ]);
        assert!(bad.validate(true).is_err());
    }
}
