//! The soak scenario: randomized PR events (open, push, label, unlabel, close, reopen,
//! duplicate and out-of-order deliveries) from a seeded generator, while the operator is
//! killed with SIGKILL, watches are forced to expire and, on a private control plane, the
//! API server and etcd are restarted. Afterwards it checks the invariants:
//!
//! * every open PR that carries the `preview` label (the repository's gate) has exactly
//!   one environment, Ready at the PR's latest head commit; every other PR has none;
//! * no orphan namespaces (a preview namespace without its environment);
//! * no leaked finalizers (an environment stuck in deletion);
//! * no duplicate GitHub comments (one sticky comment per PR) or deployments (one per
//!   PR and commit).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use previewd_core::Phase;
use previewd_kube::children::LABEL_ENV_NAMESPACE;
use previewd_kube::crd::{LABEL_ENV, PreviewEnvironment};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::github::PullState;
use crate::operator::free_port;
use crate::rig::{Rig, RigOptions};
use crate::webhook::{Delivery, sha, time};

/// The label the soak repository requires.
pub const GATE: &str = "preview";

/// Flags of `previewd-scenario soak`.
#[derive(Clone, Debug, Args)]
pub struct SoakArgs {
    /// PR events to deliver (duplicates and out-of-order redeliveries included).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub events: u64,
    /// Pull requests the events are spread over (default: events / 20, at least 2).
    #[arg(long)]
    pub prs: Option<u64>,
    /// Services per environment.
    #[arg(long, default_value_t = 2)]
    pub services: usize,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Operator SIGKILLs (default: events / 100, at least 1).
    #[arg(long)]
    pub kills: Option<u64>,
    /// Forced watch expiries (default: events / 100, at least 1).
    #[arg(long)]
    pub watch_expiries: Option<u64>,
    /// API server restarts and etcd restarts, each (default 0). Needs a private control
    /// plane (PREVIEWD_TESTENV_STATE); the shared one is never restarted.
    #[arg(long, default_value_t = 0)]
    pub control_plane_restarts: u64,
    /// Deliveries per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Longest wait for convergence after the last event, seconds.
    #[arg(long, default_value_t = 300)]
    pub settle_timeout: u64,
    /// Run without GitHub reporting.
    #[arg(long)]
    pub no_github: bool,
    /// Keep the working directory (operator log) afterwards.
    #[arg(long)]
    pub keep: bool,
    /// The `previewd` binary (default: next to this program).
    #[arg(long, env = "PREVIEWD_BIN")]
    pub previewd_bin: Option<std::path::PathBuf>,
}

impl SoakArgs {
    /// A small soak: `events` events over `prs` PRs, one kill, one watch expiry.
    pub fn small(events: u64, prs: u64) -> Self {
        SoakArgs {
            events,
            prs: Some(prs),
            services: 1,
            seed: 7,
            kills: Some(1),
            watch_expiries: Some(1),
            control_plane_restarts: 0,
            rate: 20.0,
            settle_timeout: 180,
            no_github: false,
            keep: false,
            previewd_bin: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillOperator,
    ExpireWatches,
    RestartApiServer,
    RestartEtcd,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillOperator => "operator_sigkill",
            Fault::ExpireWatches => "watch_expiry",
            Fault::RestartApiServer => "apiserver_restart",
            Fault::RestartEtcd => "etcd_restart",
        }
    }
}

enum Step {
    Deliver {
        kind: &'static str,
        delivery: Delivery,
    },
    Fault(Fault),
}

#[derive(Clone, Debug, Default)]
struct Pr {
    opened: bool,
    open: bool,
    head: u64,
    labelled: bool,
    sent: Vec<Delivery>,
}

impl Pr {
    fn should_have_env(&self) -> bool {
        self.open && self.labelled
    }
}

/// The generated events and the PRs' final true state.
struct Plan {
    steps: Vec<Step>,
    prs: BTreeMap<u64, Pr>,
}

/// Generates the events. The GitHub server is given each PR's final state up front (the
/// operator only asks GitHub about a PR to confirm what the webhooks said).
fn plan(rig: &Rig, args: &SoakArgs, faults: &[(Fault, u64)]) -> Plan {
    let make = |action: &str, number: u64, pull: &PullState, label: Option<&str>| {
        let payload = crate::webhook::payload(action, number, pull, label);
        crate::webhook::delivery(crate::rig::SECRET, action, number, &payload)
    };
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let pr_count = args.prs.unwrap_or(args.events / 20).max(2);
    let mut prs: BTreeMap<u64, Pr> = (1..=pr_count).map(|n| (n, Pr::default())).collect();
    let mut clock = 0u64;
    let mut head_counter = 0u64;
    let mut fault_at: Vec<(u64, Fault)> = Vec::new();
    for (fault, count) in faults {
        for _ in 0..*count {
            fault_at.push((rng.random_range(1..args.events.max(2)), *fault));
        }
    }
    fault_at.sort();
    let mut steps = Vec::new();
    for i in 0..args.events {
        while fault_at.first().is_some_and(|(at, _)| *at <= i) {
            let (_, f) = fault_at.remove(0);
            steps.push(Step::Fault(f));
        }
        let number = rng.random_range(1..=pr_count);
        let pr = prs.get_mut(&number).map(std::mem::take).unwrap_or_default();
        let mut pr = pr;
        let roll: u32 = rng.random_range(0..100);
        let (kind, delivery): (&'static str, Delivery);
        let state = |pr: &Pr, clock: u64| PullState {
            open: pr.open,
            head_sha: sha(pr.head),
            branch: format!("feature/{number}"),
            labels: if pr.labelled {
                vec![GATE.into()]
            } else {
                vec![]
            },
            updated_at: time(clock),
        };
        if !pr.opened {
            clock += 1;
            head_counter += 1;
            pr.opened = true;
            pr.open = true;
            pr.head = head_counter;
            pr.labelled = roll < 80;
            kind = "opened";
            delivery = make("opened", number, &state(&pr, clock), None);
        } else if roll < 15 && !pr.sent.is_empty() {
            // The same delivery again (same id): GitHub's redelivery.
            kind = "duplicate";
            delivery = pr.sent[rng.random_range(0..pr.sent.len())].clone();
        } else if roll < 30 && pr.sent.len() >= 2 {
            // An older event arriving late, under a new delivery id.
            kind = "out_of_order";
            let old = &pr.sent[rng.random_range(0..pr.sent.len() - 1)];
            let mut late = old.clone();
            late.id = uuid::Uuid::new_v4().to_string();
            delivery = late;
        } else if pr.open {
            clock += 1;
            match roll {
                30..=59 => {
                    head_counter += 1;
                    pr.head = head_counter;
                    kind = "synchronize";
                    delivery = make("synchronize", number, &state(&pr, clock), None);
                }
                60..=79 => {
                    pr.labelled = !pr.labelled;
                    kind = if pr.labelled { "labeled" } else { "unlabeled" };
                    delivery = make(kind, number, &state(&pr, clock), Some(GATE));
                }
                _ => {
                    pr.open = false;
                    kind = "closed";
                    delivery = make("closed", number, &state(&pr, clock), None);
                }
            }
        } else {
            clock += 1;
            pr.open = true;
            kind = "reopened";
            delivery = make("reopened", number, &state(&pr, clock), None);
        }
        if kind != "duplicate" && kind != "out_of_order" {
            pr.sent.push(delivery.clone());
        }
        prs.insert(number, pr);
        steps.push(Step::Deliver { kind, delivery });
    }
    for (_, f) in fault_at {
        steps.push(Step::Fault(f));
    }
    for (number, pr) in &prs {
        rig.github.set_pull(
            *number,
            PullState {
                open: pr.open,
                head_sha: sha(pr.head),
                branch: format!("feature/{number}"),
                labels: if pr.labelled {
                    vec![GATE.into()]
                } else {
                    vec![]
                },
                updated_at: time(clock),
            },
        );
    }
    Plan { steps, prs }
}

/// Checks the invariants against the cluster and the GitHub server.
async fn violations(rig: &Rig, prs: &BTreeMap<u64, Pr>) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let envs: Api<PreviewEnvironment> = Api::namespaced(rig.client.clone(), &rig.namespace);
    let list = envs.list(&ListParams::default()).await?;
    let by_name: BTreeMap<String, &PreviewEnvironment> =
        list.items.iter().map(|e| (e.name_any(), e)).collect();
    for (number, pr) in prs {
        let name = Rig::env_name(*number);
        let env = by_name.get(&name);
        if pr.should_have_env() {
            let want = sha(pr.head);
            match env {
                None => out.push(format!(
                    "PR {number} is open and labelled but has no environment"
                )),
                Some(env) => {
                    let status = env.status.clone().unwrap_or_default();
                    if env.metadata.deletion_timestamp.is_some()
                        || status.phase != Some(Phase::Ready)
                        || status.deployed_sha.as_deref() != Some(want.as_str())
                    {
                        out.push(format!(
                            "PR {number}: environment is {:?} at {:?}, want Ready at {want}{}",
                            status.phase,
                            status.deployed_sha,
                            if env.metadata.deletion_timestamp.is_some() {
                                " (deleting)"
                            } else {
                                ""
                            }
                        ));
                    }
                }
            }
        } else if let Some(env) = env {
            if env.metadata.deletion_timestamp.is_some() {
                out.push(format!(
                    "PR {number}: environment stuck in deletion (leaked finalizer)"
                ));
            } else {
                out.push(format!(
                    "PR {number} is {} but has an environment",
                    if pr.open { "unlabelled" } else { "closed" }
                ));
            }
        }
    }
    let namespaces: Api<Namespace> = Api::all(rig.client.clone());
    let selector = format!("{LABEL_ENV_NAMESPACE}={}", rig.namespace);
    for ns in namespaces
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let owner = ns.labels().get(LABEL_ENV).cloned().unwrap_or_default();
        let alive = by_name
            .get(&owner)
            .is_some_and(|e| e.metadata.deletion_timestamp.is_none());
        if !alive {
            out.push(format!(
                "orphan namespace {}{}",
                ns.name_any(),
                if ns.metadata.deletion_timestamp.is_some() {
                    " (terminating)"
                } else {
                    ""
                }
            ));
        }
    }
    rig.github.with(|s| {
        for number in prs.keys() {
            let comments = s.bot_comments(*number);
            if comments > 1 {
                out.push(format!("PR {number}: {comments} previewd comments"));
            }
        }
        for (git_ref, env) in s.duplicate_deployments() {
            out.push(format!("duplicate deployment {env} at {git_ref}"));
        }
    });
    Ok(out)
}

/// Runs the soak; the result is the JSON object printed last.
pub async fn run(args: SoakArgs) -> anyhow::Result<Value> {
    let started = Instant::now();
    let state_dir: Option<PathBuf> = std::env::var_os("KUBECONFIG")
        .and_then(|k| crate::cluster::testenv_state(std::path::Path::new(&k)));
    if args.control_plane_restarts > 0 {
        let shared = std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/previewd-testenv/run"))
            .unwrap_or_default();
        match &state_dir {
            Some(dir) if *dir != shared => {}
            _ => bail!(
                "--control-plane-restarts needs a private local control plane: \
                 PREVIEWD_TESTENV_STATE=/some/dir testenv/up, and KUBECONFIG pointing at it"
            ),
        }
    }
    let options = RigOptions {
        prefix: "soak".into(),
        services: args.services,
        required_label: Some(GATE.into()),
        github: !args.no_github,
        resync_interval: "30s".into(),
        cleanup_interval: "30s".into(),
        readiness_timeout: "5m".into(),
        binary: args.previewd_bin.clone(),
        ..RigOptions::default()
    };
    let mut rig = Rig::new(&options).await?;
    rig.settings.ports = Some((free_port()?, free_port()?));
    let rig = Arc::new(rig);
    let result = soak(&rig, &args, state_dir).await;
    let rig = Arc::try_unwrap(rig).map_err(|_| anyhow::anyhow!("rig still shared"))?;
    let keep = args.keep
        || result
            .as_ref()
            .map_or(true, |v| v["violations"] != json!(0));
    eprintln!("operator log: {}", rig.settings.log_file.display());
    rig.cleanup(keep).await;
    let mut value = result?;
    value["wall_seconds"] = json!(started.elapsed().as_secs());
    Ok(value)
}

async fn soak(
    rig: &Arc<Rig>,
    args: &SoakArgs,
    state_dir: Option<PathBuf>,
) -> anyhow::Result<Value> {
    let per_100 = (args.events / 100).max(1);
    let faults = [
        (Fault::KillOperator, args.kills.unwrap_or(per_100)),
        (Fault::ExpireWatches, args.watch_expiries.unwrap_or(per_100)),
        (Fault::RestartApiServer, args.control_plane_restarts),
        (Fault::RestartEtcd, args.control_plane_restarts),
    ];
    let plan = plan(rig, args, &faults);
    let operator = Arc::new(Mutex::new(Some(rig.start_operator().await?)));
    let url = operator
        .lock()
        .await
        .as_ref()
        .map(|o| o.webhook_url.clone())
        .context("operator")?;
    let interval = Duration::from_secs_f64(1.0 / args.rate.clamp(0.1, 1000.0));
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut injected: BTreeMap<&str, u64> = BTreeMap::new();
    let mut redeliveries = 0u64;
    let mut restarts = Vec::new();
    for step in &plan.steps {
        match step {
            Step::Deliver { kind, delivery } => {
                *by_kind.entry(kind).or_default() += 1;
                let (answer, attempts) =
                    rig.deliver(&url, delivery, Duration::from_secs(120)).await;
                redeliveries += u64::from(attempts - 1);
                *outcomes.entry(answer.outcome.clone()).or_default() += 1;
                if !(200..300).contains(&answer.status) {
                    bail!(
                        "delivery {} ({kind}) still failing after 120 s: {}",
                        delivery.id,
                        answer.status
                    );
                }
                tokio::time::sleep(interval).await;
            }
            Step::Fault(fault) => {
                // One fault at a time: an operator restart still pending finishes first.
                for r in restarts.drain(..) {
                    let r: tokio::task::JoinHandle<anyhow::Result<()>> = r;
                    r.await??;
                }
                *injected.entry(fault.name()).or_default() += 1;
                eprintln!("fault: {}", fault.name());
                match fault {
                    Fault::KillOperator => {
                        if let Some(op) = operator.lock().await.take() {
                            op.kill().await?;
                        }
                        // Back after a moment; deliveries meanwhile fail and are redelivered.
                        let (operator, rig) = (operator.clone(), rig.clone());
                        restarts.push(tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            let started = rig.start_operator().await;
                            let mut slot = operator.lock().await;
                            match started {
                                Ok(op) => {
                                    *slot = Some(op);
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            }
                        }));
                    }
                    Fault::ExpireWatches => rig.proxy.expire_watches(8),
                    Fault::RestartApiServer | Fault::RestartEtcd => {
                        let dir = state_dir.as_deref().context("no private control plane")?;
                        let name = if *fault == Fault::RestartEtcd {
                            "etcd"
                        } else {
                            "kube-apiserver"
                        };
                        crate::cluster::restart_component(dir, name).await?;
                        crate::cluster::wait_api_ready(&rig.client, Duration::from_secs(120))
                            .await?;
                    }
                }
            }
        }
    }
    for r in restarts {
        r.await??;
    }
    eprintln!("all events delivered; waiting for convergence");
    let settle_started = Instant::now();
    let deadline = settle_started + Duration::from_secs(args.settle_timeout);
    let mut found = violations(rig, &plan.prs).await?;
    while !found.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        found = violations(rig, &plan.prs).await?;
    }
    let settle = settle_started.elapsed();
    let (ended, expired) = rig.proxy.watch_faults();
    if let Some(op) = operator.lock().await.take() {
        op.stop().await?;
    }
    let open_labelled = plan.prs.values().filter(|p| p.should_have_env()).count();
    let github = rig.github.with(|s| {
        json!({"requests": s.total_requests(), "mutations": s.mutations(),
               "comments": s.comments.len(), "deployments": s.deployments.len()})
    });
    Ok(json!({
        "scenario": "soak",
        "seed": args.seed,
        "events": by_kind.values().sum::<u64>(),
        "events_by_kind": by_kind,
        "delivery_outcomes": outcomes,
        "redeliveries_after_failure": redeliveries,
        "prs": plan.prs.len(),
        "prs_expected_with_environment": open_labelled,
        "faults": injected,
        "watch_streams_ended": ended,
        "watches_answered_410": expired,
        "settle_seconds": settle.as_secs_f64(),
        "violations": found.len(),
        "violation_details": found,
        "github": github,
    }))
}
