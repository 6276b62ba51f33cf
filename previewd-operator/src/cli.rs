//! Command-line interface. `previewd run` starts the operator; every flag of it can also
//! be set with an environment variable `PREVIEWD_<FLAG>` (e.g. `--cleanup-interval` ↔
//! `PREVIEWD_CLEANUP_INTERVAL`). Without a subcommand, `previewd` prints a short help.
//!
//! The binary is also a kubectl plugin: installed (or linked) as `kubectl-previewd` on
//! the `PATH`, `kubectl previewd list` runs it, and its help then says `kubectl previewd`
//! ([`parse`] looks at the name it was started as).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

/// previewd: an isolated, short-lived preview environment for every pull request.
#[derive(Debug, Parser)]
#[command(
    name = "previewd",
    version,
    about,
    arg_required_else_help = true,
    after_help = "The operator runs with `previewd run` (its flags: `previewd run --help`). \
                  Installed as `kubectl-previewd`, the binary is the kubectl plugin \
                  `kubectl previewd`."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: controller, GitHub webhook and reporter (`previewd run --help`).
    Run(Box<RunArgs>),
    /// List environments: phase, PR, URL, cost, time left.
    List(crate::ctl::ListArgs),
    /// Describe one environment: conditions, services, tests, events.
    Describe(crate::ctl::NameArgs),
    /// Let an environment live longer (up to its hard cap).
    Extend(crate::ctl::ExtendArgs),
    /// Put an environment to sleep: workloads scaled to zero, namespace and data kept.
    Sleep(crate::ctl::NameArgs),
    /// Wake a sleeping environment (not one asleep for its cost budget).
    Wake(crate::ctl::NameArgs),
    /// Delete an environment and, with it, its namespace.
    Delete(crate::ctl::NameArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Print a shell completion script (bash, zsh or fish).
    Completion(CompletionArgs),
    /// Print a service catalogue generated from a compose file or a directory of Dockerfiles.
    Catalogue(CatalogueArgs),
    /// Evaluate affected-service detection on a dataset of real changes.
    EvalServices(EvalArgs),
    /// Fill the environment's PostgreSQL database with test data (the data-seed Job).
    SeedData(crate::seed::SeedDataArgs),
    /// Turn a test runner's reports (JUnit XML, `go test -json`, pytest or Jest JSON) into
    /// the test-run summary a test Job writes to /dev/termination-log.
    #[command(name = "test-summary", alias = "junit-summary")]
    JunitSummary(crate::junit::JunitSummaryArgs),
}

/// Name the binary answers to as a kubectl plugin (`kubectl previewd ...`).
pub const KUBECTL_PLUGIN_NAME: &str = "kubectl-previewd";

/// Whether the binary was started as the kubectl plugin: its file name (`argv[0]`) is
/// `kubectl-previewd` (a copy, a hard link or a symbolic link).
pub fn invoked_as_kubectl_plugin(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_stem()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name == KUBECTL_PLUGIN_NAME)
}

/// Parses a command line; help and usage say `kubectl previewd` when started as the
/// kubectl plugin. Operator flags given without `run` (as before `run` was required) are
/// refused with a message that shows the same command line with `run`.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut command = Cli::command();
    if args
        .first()
        .is_some_and(|argv0| invoked_as_kubectl_plugin(argv0))
    {
        command = command.bin_name("kubectl previewd");
    }
    let matches = match command.clone().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(err) => return Err(with_run_hint(err, &mut command, &args)),
    };
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

/// An unknown first argument that `previewd run` accepts: say so.
fn with_run_hint(
    err: clap::Error,
    command: &mut clap::Command,
    args: &[std::ffi::OsString],
) -> clap::Error {
    let starts_with_flag = args
        .get(1)
        .and_then(|a| a.to_str())
        .is_some_and(|a| a.starts_with('-') && !matches!(a, "-h" | "--help" | "-V" | "--version"));
    if err.kind() != clap::error::ErrorKind::UnknownArgument || !starts_with_flag {
        return err;
    }
    let mut with_run = vec![std::ffi::OsString::from("previewd"), "run".into()];
    with_run.extend(args.iter().skip(1).cloned());
    if Cli::try_parse_from(&with_run).is_err() {
        return err;
    }
    let shown: Vec<String> = with_run
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    command.error(
        clap::error::ErrorKind::UnknownArgument,
        format!(
            "the operator starts with the `run` subcommand; its flags follow it: {}",
            shown.join(" ")
        ),
    )
}

/// Flags of `previewd completion`.
#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// Shells `previewd completion` writes scripts for.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum CompletionShell {
    /// bash: `source <(previewd completion bash)`.
    Bash,
    /// zsh: `previewd completion zsh > "${fpath[1]}/_previewd"`.
    Zsh,
    /// fish: `previewd completion fish > ~/.config/fish/completions/previewd.fish`.
    Fish,
}

/// `previewd completion SHELL`: the completion script of every subcommand and flag.
pub fn print_completion(args: &CompletionArgs, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    let shell = match args.shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), "previewd", out);
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (in-cluster default).
    #[default]
    Json,
    /// Human-readable text.
    Text,
}

/// Flags of `previewd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Path to a kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, env = "PREVIEWD_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace whose PreviewEnvironments are reconciled; default: all namespaces.
    #[arg(long, env = "PREVIEWD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Label selector of the PreviewEnvironments this deployment reconciles, to shard by
    /// repository (e.g. `previewd.io/repo in (acme.shop,acme.web)`); default: all. Each
    /// shard needs its own --leader-elect-lease-name.
    #[arg(long, env = "PREVIEWD_ENVIRONMENT_SELECTOR")]
    pub environment_selector: Option<String>,
    /// Safety-net sweep interval (expired environments, orphan namespaces).
    #[arg(long, env = "PREVIEWD_CLEANUP_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub cleanup_interval: Duration,
    /// Periodic re-check of every environment.
    #[arg(long, env = "PREVIEWD_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// How long services may take to become available before the environment fails.
    #[arg(long, env = "PREVIEWD_READINESS_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub readiness_timeout: Duration,
    /// Idle time after which an environment's workloads are scaled to zero (namespace and
    /// data kept); idle means no push and no PR command. `0s` turns idle sleep off.
    #[arg(long, env = "PREVIEWD_IDLE_SLEEP_AFTER", default_value = "2h", value_parser = parse_duration)]
    pub idle_sleep_after: Duration,
    /// How long before deletion the PR comment warns that the environment expires
    /// (`0s`: no warning).
    #[arg(long, env = "PREVIEWD_EXPIRY_WARNING", default_value = "1h", value_parser = parse_duration)]
    pub expiry_warning: Duration,
    /// Deprecated: comma-separated GitHub author associations whose `/preview` comments
    /// go on to the permission check (--maintainer-role); others are refused without
    /// asking GitHub. It never lets anyone run a command: the association does not say
    /// what someone may do, and private organisation members arrive as CONTRIBUTOR.
    /// Empty (default): no filter.
    #[arg(long, env = "PREVIEWD_COMMAND_ASSOCIATIONS", default_value = "")]
    pub command_associations: String,
    /// Least permission on a repository (GitHub's collaborator permission: read, triage,
    /// write, maintain, admin) that makes someone a maintainer, who may run `/preview`
    /// commands and approve fork pull requests. Needs GitHub credentials; without them
    /// commands and fork approvals are refused.
    #[arg(long, env = "PREVIEWD_MAINTAINER_ROLE", default_value = "write")]
    pub maintainer_role: String,
    /// Comma-separated custom repository roles that make someone a maintainer too (a
    /// custom role not listed never does, whatever its base role).
    #[arg(long, env = "PREVIEWD_MAINTAINER_CUSTOM_ROLES", default_value = "")]
    pub maintainer_custom_roles: String,
    /// How long a user's permission on a repository is reused before GitHub is asked
    /// again (`member`, `membership`, `organization` and `team` webhooks drop it at once).
    #[arg(long, env = "PREVIEWD_PERMISSION_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub permission_cache_ttl: Duration,
    /// PostgreSQL URL of the environment history (`postgres://user:pass@host/db`); when
    /// set, history goes there instead of the ConfigMap.
    #[arg(long, env = "PREVIEWD_HISTORY_POSTGRES_URL", hide_env_values = true, value_parser = parse_secret)]
    pub history_postgres_url: Option<SecretString>,
    /// ConfigMap (`namespace/name`) holding the environment history when no PostgreSQL URL
    /// is set; default: `previewd-history` in $POD_NAMESPACE, else in --namespace, else in
    /// `default`. `off` records no history.
    #[arg(long, env = "PREVIEWD_HISTORY_CONFIG_MAP")]
    pub history_config_map: Option<String>,
    /// Price of one CPU core for one hour, in dollars.
    #[arg(long, env = "PREVIEWD_CPU_PRICE_PER_HOUR", default_value = "0.04")]
    pub cpu_price_per_hour: String,
    /// Price of one GiB of memory for one hour, in dollars.
    #[arg(
        long,
        env = "PREVIEWD_MEMORY_PRICE_PER_GB_HOUR",
        default_value = "0.005"
    )]
    pub memory_price_per_gb_hour: String,
    /// Price of one GiB of persistent storage for one month (730 hours), in dollars.
    #[arg(
        long,
        env = "PREVIEWD_STORAGE_PRICE_PER_GB_MONTH",
        default_value = "0.073"
    )]
    pub storage_price_per_gb_month: String,
    /// Flat network price of an environment while it runs pods, per hour, in dollars
    /// (0: network not charged).
    #[arg(long, env = "PREVIEWD_NETWORK_PRICE_PER_HOUR", default_value = "0")]
    pub network_price_per_hour: String,
    /// Where spot capacity comes from: `karpenter` (`karpenter.sh/capacity-type: spot`),
    /// `gke` (`cloud.google.com/gke-spot: "true"`) or `eks`
    /// (`eks.amazonaws.com/capacityType: SPOT`); sets the node selector and tolerations of
    /// environments that may use spot.
    #[arg(long, env = "PREVIEWD_SPOT_PRESET", default_value = "karpenter")]
    pub spot_preset: String,
    /// Node selector of spot capacity instead of the preset's, as `key=value[,...]`.
    #[arg(long, env = "PREVIEWD_SPOT_NODE_SELECTOR", default_value = "")]
    pub spot_node_selector: String,
    /// Tolerations of spot nodes' taints instead of the preset's, as
    /// `key[=value]:Effect[,...]`.
    #[arg(long, env = "PREVIEWD_SPOT_TOLERATIONS", default_value = "")]
    pub spot_tolerations: String,
    /// Base domain for environments whose repository settings name none.
    #[arg(
        long,
        env = "PREVIEWD_BASE_DOMAIN",
        default_value = "preview.example.com"
    )]
    pub base_domain: String,
    /// cert-manager ClusterIssuer for environment certificates.
    #[arg(long, env = "PREVIEWD_CERT_ISSUER", default_value = "letsencrypt")]
    pub cert_issuer: String,
    /// Comma-separated base domains environment hosts may lie under (external-dns and
    /// cert-manager publish only these); default: --base-domain alone.
    #[arg(long, env = "PREVIEWD_ALLOWED_BASE_DOMAINS", default_value = "")]
    pub allowed_base_domains: String,
    /// Comma-separated cert-manager ClusterIssuers environments may name; default:
    /// --cert-issuer alone.
    #[arg(long, env = "PREVIEWD_ALLOWED_CLUSTER_ISSUERS", default_value = "")]
    pub allowed_cluster_issuers: String,
    /// Namespace of the ingress controller or Gateway data plane, whose pods each
    /// environment's network policy lets in. Required with `--route-kind ingress` (no
    /// controller is assumed: a wrong guess would cut every preview off); with
    /// `--route-kind httproute` it defaults to --gateway-namespace.
    #[arg(long, env = "PREVIEWD_INGRESS_NAMESPACE", default_value = "")]
    pub ingress_namespace: String,
    /// How environments are reached from outside the cluster: `ingress` (an Ingress
    /// each, TLS from cert-manager) or `httproute` (a Gateway API HTTPRoute each, attached
    /// to --gateway-name; TLS at the Gateway's listener, each host one label below an
    /// allowed base domain).
    #[arg(long, env = "PREVIEWD_ROUTE_KIND", default_value = "ingress", value_parser = ["ingress", "httproute"])]
    pub route_kind: String,
    /// Name of the Gateway environments' HTTPRoutes attach to (with `--route-kind
    /// httproute`).
    #[arg(long, env = "PREVIEWD_GATEWAY_NAME", default_value = "")]
    pub gateway_name: String,
    /// Namespace of that Gateway (its listener must allow routes from preview
    /// namespaces).
    #[arg(long, env = "PREVIEWD_GATEWAY_NAMESPACE", default_value = "")]
    pub gateway_namespace: String,
    /// Listener of that Gateway the routes attach to (`sectionName`); empty: every
    /// listener whose hostname matches.
    #[arg(long, env = "PREVIEWD_GATEWAY_SECTION", default_value = "")]
    pub gateway_section: String,
    /// Environments reconciled concurrently.
    #[arg(long, env = "PREVIEWD_CONCURRENCY", default_value_t = previewd_kube::controller::DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// Address of the admin server (/healthz, /readyz, /metrics).
    #[arg(long, env = "PREVIEWD_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Address of the GitHub webhook server (enabled when a webhook secret is set).
    #[arg(long, env = "PREVIEWD_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// GitHub webhook secret; without it the webhook server does not start.
    #[arg(long, env = "PREVIEWD_WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret: Option<SecretString>,
    /// Which namespaces may hold the PreviewRepository of which repositories:
    /// `namespace=owner/name,owner/*;other-namespace=*`. Unset: any namespace may claim any
    /// repository (a repository claimed twice is still refused).
    #[arg(long, env = "PREVIEWD_REPOSITORY_CLAIMS")]
    pub repository_claims: Option<String>,
    /// GitHub REST API base URL (GitHub Enterprise: `https://HOST/api/v3/`).
    #[arg(
        long,
        env = "PREVIEWD_GITHUB_API_URL",
        default_value = "https://api.github.com/"
    )]
    pub github_api_url: String,
    /// GitHub token for commit statuses, deployments and the PR comment.
    #[arg(long, env = "PREVIEWD_GITHUB_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub github_token: Option<SecretString>,
    /// GitHub App id (with --github-app-private-key-file). One operator serves every
    /// installation of the App: each repository's installation comes from its deliveries
    /// (`installation.id`) or from GitHub (`GET /repos/{owner}/{repo}/installation`).
    #[arg(long, env = "PREVIEWD_GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,
    /// Default installation of the GitHub App (optional): used for a repository GitHub
    /// names no installation of the App for.
    #[arg(long, env = "PREVIEWD_GITHUB_APP_INSTALLATION_ID")]
    pub github_app_installation_id: Option<u64>,
    /// Path to the GitHub App's PEM private key.
    #[arg(long, env = "PREVIEWD_GITHUB_APP_PRIVATE_KEY_FILE")]
    pub github_app_private_key_file: Option<PathBuf>,
    /// Base URL of a log viewer for deployment statuses (`log_url`).
    #[arg(long, env = "PREVIEWD_LOG_URL_BASE")]
    pub log_url_base: Option<String>,
    /// ConfigMap (`namespace/name`) with `ai.*` settings; environment variables
    /// (ENABLE_AI, AI_PROVIDER, AI_BASE_URL, AI_MODEL, OPENAI_API_KEY) override it.
    #[arg(long, env = "PREVIEWD_AI_CONFIG_MAP")]
    pub ai_config_map: Option<String>,
    /// Kinds templated manifests may create, comma-separated: built-in kinds by name
    /// (`ConfigMap,StatefulSet`) and custom ones as `group/version/Kind`; empty switches the
    /// `manifests` strategy off. Namespaces, RBAC, cluster-scoped kinds and the guard rails
    /// are refused. Suggested: ConfigMap,Service,ServiceAccount,PersistentVolumeClaim,Deployment,StatefulSet,Job,CronJob
    #[arg(long, env = "PREVIEWD_MANIFEST_KINDS", default_value = "")]
    pub manifest_kinds: String,
    /// StorageClasses the claims of an application may name, comma-separated; a claim
    /// naming another (or none) is refused. Empty: any class.
    #[arg(long, env = "PREVIEWD_ALLOWED_STORAGE_CLASSES", default_value = "")]
    pub allowed_storage_classes: String,
    /// Object-count limits of each preview namespace's ResourceQuota, as
    /// `name=count[,...]` (`services`, `configmaps`, `secrets`, `count/jobs.batch`, ...),
    /// each replacing its default (services=50, configmaps=100, secrets=100,
    /// count/deployments.apps=50, count/statefulsets.apps=20, count/jobs.batch=50,
    /// count/cronjobs.batch=20, count/ingresses.networking.k8s.io=10,
    /// replicationcontrollers=0). Load balancers and node ports are always 0.
    #[arg(long, env = "PREVIEWD_QUOTA_OBJECT_COUNTS", default_value = "")]
    pub quota_object_counts: String,
    /// Namespace where Argo CD reads Applications and AppProjects (the `argocd`
    /// strategy writes there, and nowhere else outside preview namespaces).
    #[arg(long, env = "PREVIEWD_ARGOCD_NAMESPACE", default_value = "argocd")]
    pub argocd_namespace: String,
    /// API server Argo CD deploys previews to (as Argo CD names the cluster).
    #[arg(
        long,
        env = "PREVIEWD_ARGOCD_DESTINATION_SERVER",
        default_value = "https://kubernetes.default.svc"
    )]
    pub argocd_destination_server: String,
    /// Manifest repositories Argo CD may deploy from besides each claimed repository
    /// itself, comma-separated: exact URLs, or prefixes ending in `/`.
    #[arg(long, env = "PREVIEWD_ARGOCD_SOURCE_REPOS", default_value = "")]
    pub argocd_source_repos: String,
    /// Deploy pull requests from forks through Argo CD (their manifests run with Argo
    /// CD's rights, unreviewed); default: refused.
    #[arg(long, env = "PREVIEWD_ARGOCD_ALLOW_FORKS", default_value_t = false)]
    pub argocd_allow_forks: bool,
    /// Namespace holding the Secrets that PreviewRepositories may copy into previews (only
    /// those labelled previewd.io/preview-secret=true); empty switches Secret copies off
    #[arg(long, env = "PREVIEWD_SECRET_NAMESPACE")]
    pub secret_namespace: Option<String>,
    /// Image of the operator itself, run by each environment's data-seed Job
    /// (`previewd seed-data`); the Helm chart sets its own image. Default:
    /// ghcr.io/previewd/previewd:<version>.
    #[arg(long, env = "PREVIEWD_OPERATOR_IMAGE")]
    pub operator_image: Option<String>,
    /// Node selector of the pods of stage Jobs (test data, tests), as `key=value,...`;
    /// default: none.
    #[arg(long, env = "PREVIEWD_JOB_NODE_SELECTOR", default_value = "")]
    pub job_node_selector: String,
    /// How often the metrics API is sampled for each environment's peak CPU and memory per
    /// service, recorded into the history when it sleeps or closes (with a history store
    /// only); 0 turns sampling off.
    #[arg(long, env = "PREVIEWD_USAGE_SAMPLE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub usage_sample_interval: Duration,
    /// Serve the data-proposal endpoint, through which seed Jobs ask the operator's model
    /// (so no model credential enters a preview namespace), on this address; off when
    /// unset. Needs `--data-proposals-url`.
    #[arg(long, env = "PREVIEWD_DATA_PROPOSALS_ADDR")]
    pub data_proposals_addr: Option<SocketAddr>,
    /// URL at which seed Jobs reach that endpoint (the Service in front of the operator),
    /// e.g. http://previewd-proposals.previewd-system.svc:8082.
    #[arg(long, env = "PREVIEWD_DATA_PROPOSALS_URL")]
    pub data_proposals_url: Option<String>,
    /// Key of the seed Jobs' tokens, the same on every replica; default: derived from the
    /// webhook secret (or random per process when there is none, which suits one replica).
    #[arg(long, env = "PREVIEWD_DATA_PROPOSALS_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub data_proposals_key: Option<SecretString>,
    /// Namespace of the operator's pods, for the seed pods' one egress rule; default:
    /// $POD_NAMESPACE.
    #[arg(long, env = "PREVIEWD_OPERATOR_NAMESPACE")]
    pub operator_namespace: Option<String>,
    /// Labels that select the operator's pods, as `key=value,...`.
    #[arg(
        long,
        env = "PREVIEWD_OPERATOR_POD_LABELS",
        default_value = "app.kubernetes.io/name=previewd"
    )]
    pub operator_pod_labels: String,
    /// Log format.
    #[arg(long, env = "PREVIEWD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// The web view.
    #[command(flatten)]
    pub dashboard: crate::dashboard::DashboardArgs,
    /// Wake on visit.
    #[command(flatten)]
    pub waker: crate::waker::WakerArgs,
    /// Leader election and the webhook-only mode.
    #[command(flatten)]
    pub replica: crate::leader::ReplicaArgs,
}

impl Default for RunArgs {
    fn default() -> Self {
        // Parse `previewd run` so that defaults and environment variables apply.
        match Cli::try_parse_from(["previewd", "run"]) {
            Ok(Cli {
                command: Command::Run(args),
            }) => *args,
            Ok(_) => unreachable!("`previewd run` parses as the run subcommand"),
            Err(e) => e.exit(),
        }
    }
}

/// Parses `30s`, `5m`, `4h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Wraps a secret flag so it never prints (`Debug` shows `[REDACTED]`).
pub fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_string()))
}

/// `previewd crd`.
pub fn print_crds() -> anyhow::Result<()> {
    let yaml = previewd_kube::crdgen::crds_yaml().context("rendering CRD YAML")?;
    print!("{yaml}");
    Ok(())
}

/// Flags of `previewd eval-services`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Dataset directory (`changes.jsonl`, `services.json`, `diffs/`).
    #[arg(long, env = "PREVIEWD_DATASET")]
    pub dataset: PathBuf,
    /// Also ask the configured model (AI_PROVIDER, AI_BASE_URL, AI_MODEL, OPENAI_API_KEY).
    #[arg(long)]
    pub with_model: bool,
}

/// `previewd eval-services`: prints the per-mode breakdown as JSON, then the headline as
/// one JSON object on the last line: `{"changes": N, "precision": P, "recall": R, "exact_set": E}`.
pub async fn eval_services(args: EvalArgs) -> anyhow::Result<()> {
    let provider = if args.with_model {
        let config = previewd_ai::config::AiConfig::load(&Default::default(), |k| {
            std::env::var(k).ok()
        })
        .context(
            "AI configuration (ENABLE_AI, AI_PROVIDER, AI_BASE_URL, AI_MODEL, OPENAI_API_KEY)",
        )?;
        // build_provider returns the provider inside its cache/rate-limit/retry stack.
        let provider = previewd_ai::config::build_provider(&config)
            .context("building the AI provider")?
            .context("--with-model needs AI switched on: set ENABLE_AI=true, AI_PROVIDER and AI_BASE_URL")?;
        Some(provider)
    } else {
        None
    };
    let report = previewd_ai::eval::evaluate_services_async(
        &args.dataset,
        provider,
        &previewd_ai::eval::EvalOptions::default(),
    )
    .await
    .with_context(|| format!("evaluating {}", args.dataset.display()))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    print!("{}", report.breakdown.render());
    println!("{}", headline_line(&report)?);
    Ok(())
}

/// The last line of `previewd eval-services`, exactly
/// `{"changes": N, "precision": P, "recall": R, "exact_set": E}`.
pub fn headline_line(report: &previewd_ai::eval::EvalReport) -> anyhow::Result<String> {
    Ok(format!(
        "{{\"changes\": {}, \"precision\": {}, \"recall\": {}, \"exact_set\": {}}}",
        report.changes,
        serde_json::to_string(&report.precision)?,
        serde_json::to_string(&report.recall)?,
        serde_json::to_string(&report.exact_set)?,
    ))
}

/// Flags of `previewd catalogue`.
#[derive(Debug, Clone, Args)]
pub struct CatalogueArgs {
    /// Compose file whose services' builds define the catalogue.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "from_dockerfiles",
        conflicts_with = "from_dockerfiles"
    )]
    pub from_compose: Option<PathBuf>,
    /// Directory searched for `Dockerfile`s, one service each.
    #[arg(long, value_name = "DIR")]
    pub from_dockerfiles: Option<PathBuf>,
    /// Repository root the catalogue's paths are relative to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub repo_root: PathBuf,
    /// Also print the build definitions (context, Dockerfile, arguments) after the catalogue.
    #[arg(long)]
    pub build_definitions: bool,
}

/// `previewd catalogue`: prints the generated catalogue as YAML (for
/// `PreviewRepository.spec.catalogue`); warnings go to standard error.
pub fn print_catalogue(args: CatalogueArgs) -> anyhow::Result<()> {
    use previewd_ai::builddefs::generate;
    let files = generate::DirFiles::new(&args.repo_root);
    let in_repo = |p: &PathBuf| {
        generate::relative_to(&args.repo_root, p).with_context(|| {
            format!(
                "{} is not inside the repository root {}",
                p.display(),
                args.repo_root.display()
            )
        })
    };
    let generated = match (&args.from_compose, &args.from_dockerfiles) {
        (Some(file), _) => generate::from_compose(&files, &in_repo(file)?)?,
        (None, Some(dir)) => generate::from_dockerfiles(&files, &in_repo(dir)?)?,
        (None, None) => anyhow::bail!("give --from-compose FILE or --from-dockerfiles DIR"),
    };
    for w in &generated.warnings {
        eprintln!("previewd: warning: {w}");
    }
    print!(
        "{}",
        serde_saphyr::to_string(&generated.catalogue).context("rendering YAML")?
    );
    if args.build_definitions {
        println!("---");
        print!(
            "{}",
            serde_saphyr::to_string(&generated.builds).context("rendering YAML")?
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn run_args(cli: &Cli) -> &RunArgs {
        match &cli.command {
            Command::Run(args) => args,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn secrets_never_print() {
        let cli = Cli::try_parse_from([
            "previewd",
            "run",
            "--webhook-secret",
            "hook-s3cr3t-value",
            "--github-token",
            "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
        ])
        .unwrap();
        let printed = format!("{cli:?} {:#?}", run_args(&cli));
        assert!(!printed.contains("hook-s3cr3t-value"), "{printed}");
        assert!(!printed.contains("ghp_abcdefghij"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
        assert_eq!(
            run_args(&cli)
                .webhook_secret
                .as_ref()
                .unwrap()
                .expose_secret(),
            "hook-s3cr3t-value"
        );
    }

    #[test]
    fn operator_flags_without_run_are_refused_with_the_command_that_works() {
        let err = parse([
            "previewd",
            "--namespace",
            "previews",
            "--log-format",
            "text",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let text = err.to_string();
        assert!(
            text.contains("previewd run --namespace previews --log-format text"),
            "{text}"
        );
        // Not every unknown flag is an operator flag.
        let err = parse(["previewd", "--no-such-flag"]).unwrap_err();
        assert!(!err.to_string().contains("previewd run"), "{err}");
        // Without arguments: the short help, listing the subcommands.
        let err = parse(["previewd"]).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        let help = err.to_string();
        for word in ["run", "list", "completion", "kubectl previewd"] {
            assert!(help.contains(word), "{word} missing from {help}");
        }
        assert!(!help.contains("--webhook-secret"), "{help}");
    }

    #[test]
    fn the_kubectl_plugin_names_itself_kubectl_previewd() {
        for argv0 in [
            "/usr/local/bin/kubectl-previewd",
            "kubectl-previewd",
            "kubectl-previewd.exe",
        ] {
            assert!(invoked_as_kubectl_plugin(argv0.as_ref()), "{argv0}");
            let err = parse([argv0, "list", "--help"]).unwrap_err();
            assert!(
                err.to_string().contains("Usage: kubectl previewd list"),
                "{err}"
            );
        }
        for argv0 in ["previewd", "/usr/bin/previewd", "kubectl"] {
            assert!(!invoked_as_kubectl_plugin(argv0.as_ref()), "{argv0}");
        }
        let err = parse(["previewd", "list", "--help"]).unwrap_err();
        assert!(err.to_string().contains("Usage: previewd list"), "{err}");
    }

    #[test]
    fn completion_scripts_cover_subcommands_and_flags() {
        for (shell, marker) in [
            (CompletionShell::Bash, "complete -F"),
            (CompletionShell::Zsh, "#compdef previewd"),
            (CompletionShell::Fish, "complete -c previewd"),
        ] {
            let mut out = Vec::new();
            print_completion(&CompletionArgs { shell }, &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains(marker), "{shell:?}: {marker}");
            // fish writes flags as `-l context`, the others as `--context`.
            for word in ["describe", "context", "kubeconfig", "webhook-secret"] {
                assert!(script.contains(word), "{shell:?}: {word} missing");
            }
        }
    }
}
