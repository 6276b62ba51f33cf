//! `previewd run`: the stock operator ([`crate::OperatorBuilder`] with no plug-ins
//! replaced), and the wiring helpers the builder uses: flags to controller settings, the
//! Kubernetes and GitHub clients, the AI configuration, the webhook server. One
//! cancellation token drives the controller, the webhook server and the admin server, so
//! SIGTERM drains all three.

use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use previewd_core::{Money, Pricing};
use previewd_kube::children::namespace::GuardSettings;
use previewd_kube::controller::ControllerConfig;
use previewd_kube::plan::PlannerConfig;
use previewd_kube::strategy::StageJobSettings;
use previewd_kube::strategy::jobs::default_operator_image;
use prometheus_client::registry::Registry;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cli::{LogFormat, RunArgs};

/// Initialises logging (`RUST_LOG` filter, default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}

/// Builds a Kubernetes client from `--kubeconfig`, or the default chain.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    client_as(kube_config(kubeconfig).await?, "previewd")
}

/// The Kubernetes configuration from `--kubeconfig`, or the default chain.
pub async fn kube_config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    kube_config_for(kubeconfig, None).await
}

/// The Kubernetes configuration as kubectl chooses it: the kubeconfig file `kubeconfig`
/// (else `$KUBECONFIG`, else `~/.kube/config`) and its context `context` (else its
/// current context); with neither given, the in-cluster configuration when there is no
/// kubeconfig.
pub async fn kube_config_for(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Config> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    Ok(match (kubeconfig, context) {
        (Some(path), _) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        (None, Some(name)) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("loading context {name:?} of the kubeconfig"))?,
        (None, None) => kube::Config::infer()
            .await
            .context("no Kubernetes configuration found (set --kubeconfig or KUBECONFIG, or run in a cluster)")?,
    })
}

/// A client of `config` with its own connection pool and the `User-Agent`
/// `<component>/<version>`, so that the API server's audit log, metrics and priority
/// and fairness can tell the operator's parts apart.
pub fn client_as(mut config: kube::Config, component: &str) -> anyhow::Result<Client> {
    let agent = format!("{component}/{}", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent).context("component name is not a header value")?,
    ));
    Client::try_from(config).context("creating the Kubernetes client")
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty())
        .collect()
}

/// Who is a maintainer, from `--maintainer-role` and `--maintainer-custom-roles`.
pub fn permission_policy(
    args: &RunArgs,
) -> anyhow::Result<previewd_github::permission::PermissionPolicy> {
    let minimum = args
        .maintainer_role
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid --maintainer-role: {e}"))?;
    Ok(previewd_github::permission::PermissionPolicy {
        minimum,
        custom_roles: args
            .maintainer_custom_roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Controller settings from flags.
pub fn controller_config(args: &RunArgs) -> anyhow::Result<ControllerConfig> {
    let cpu: Money = args
        .cpu_price_per_hour
        .parse()
        .with_context(|| format!("invalid --cpu-price-per-hour {:?}", args.cpu_price_per_hour))?;
    let memory: Money = args.memory_price_per_gb_hour.parse().with_context(|| {
        format!(
            "invalid --memory-price-per-gb-hour {:?}",
            args.memory_price_per_gb_hour
        )
    })?;
    let storage: Money = args.storage_price_per_gb_month.parse().with_context(|| {
        format!(
            "invalid --storage-price-per-gb-month {:?}",
            args.storage_price_per_gb_month
        )
    })?;
    let network: Money = args.network_price_per_hour.parse().with_context(|| {
        format!(
            "invalid --network-price-per-hour {:?}",
            args.network_price_per_hour
        )
    })?;
    let pricing = Pricing {
        cpu_per_core_hour: cpu,
        memory_per_gib_hour: memory,
        storage_per_gib_month: storage,
        network_per_hour: network,
    };
    let mut workload = args
        .spot_preset
        .parse::<previewd_kube::children::workload::SpotPreset>()
        .map_err(anyhow::Error::msg)?
        .settings();
    if !args.spot_node_selector.trim().is_empty() {
        workload.spot_node_selector =
            previewd_kube::children::workload::parse_node_selector(&args.spot_node_selector)
                .map_err(|e| anyhow::anyhow!("invalid --spot-node-selector: {e}"))?;
    }
    if !args.spot_tolerations.trim().is_empty() {
        workload.spot_tolerations =
            previewd_kube::children::workload::parse_tolerations(&args.spot_tolerations)
                .map_err(|e| anyhow::anyhow!("invalid --spot-tolerations: {e}"))?;
    }
    let claim_policy = claim_policy(args)?;
    let object_counts =
        previewd_kube::children::namespace::parse_object_counts(&args.quota_object_counts)
            .map_err(|e| anyhow::anyhow!("invalid --quota-object-counts: {e}"))?;
    Ok(ControllerConfig {
        watch_namespace: args.namespace.clone(),
        environment_selector: args.environment_selector.clone(),
        concurrency: args.concurrency.max(1),
        cleanup_interval: args.cleanup_interval,
        planner: planner_config(args, pricing, workload, claim_policy, object_counts)?,
        ..ControllerConfig::default()
    })
}

/// The planner's settings from flags.
fn planner_config(
    args: &RunArgs,
    pricing: Pricing,
    workload: previewd_kube::children::workload::WorkloadSettings,
    claim_policy: previewd_core::tenancy::ClaimPolicy,
    object_counts: std::collections::BTreeMap<String, i64>,
) -> anyhow::Result<PlannerConfig> {
    Ok(PlannerConfig {
        claim_policy,
        template_rules: previewd_kube::strategy::rules::TemplateRules {
            allowed_storage_classes: args
                .allowed_storage_classes
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
        },
        base_domain: args.base_domain.clone(),
        cert_issuer: args.cert_issuer.clone(),
        allowed_base_domains: split_list(&args.allowed_base_domains),
        allowed_cluster_issuers: split_list(&args.allowed_cluster_issuers),
        readiness_timeout: args.readiness_timeout,
        resync_interval: args.resync_interval,
        pricing,
        guard: GuardSettings {
            ingress_namespace: ingress_namespace(args)?,
            object_counts,
            ..GuardSettings::default()
        },
        secret_namespace: args
            .secret_namespace
            .clone()
            .filter(|s| !s.trim().is_empty()),
        workload,
        stage_jobs: StageJobSettings {
            operator_image: args
                .operator_image
                .clone()
                .filter(|i| !i.trim().is_empty())
                .unwrap_or_else(default_operator_image),
            node_selector: parse_pairs(&args.job_node_selector, "--job-node-selector")?,
            data_proposals: None,
        },
        idle_sleep_after: Some(args.idle_sleep_after).filter(|d| !d.is_zero()),
        expiry_warning: args.expiry_warning,
        routing: routing(args)?,
        waker: args.waker.endpoint()?,
        ..PlannerConfig::default()
    })
}

/// The namespace whose pods may reach every preview: `--ingress-namespace`, else (with
/// HTTPRoutes) the Gateway's namespace. A replica that only serves the webhook never
/// writes a network policy and needs neither.
pub fn ingress_namespace(args: &RunArgs) -> anyhow::Result<String> {
    let named = args.ingress_namespace.trim();
    if !named.is_empty() {
        return Ok(named.to_string());
    }
    if args.route_kind.trim() == "httproute" && !args.gateway_namespace.trim().is_empty() {
        return Ok(args.gateway_namespace.trim().to_string());
    }
    if args.replica.webhook_only {
        return Ok(String::new());
    }
    anyhow::bail!(
        "--ingress-namespace (PREVIEWD_INGRESS_NAMESPACE) is required with --route-kind ingress: \
         name the namespace your ingress controller runs in, whose pods each preview's network \
         policy lets in (no controller is assumed; with --route-kind httproute it defaults to \
         --gateway-namespace)"
    )
}

/// How environments are reached, from `--route-kind` and the `--gateway-*` flags.
pub fn routing(args: &RunArgs) -> anyhow::Result<previewd_kube::children::httproute::Routing> {
    use previewd_kube::children::httproute::{GatewayRef, Routing};
    match args.route_kind.trim() {
        "ingress" => Ok(Routing::Ingress),
        "httproute" => {
            let name = args.gateway_name.trim();
            let namespace = args.gateway_namespace.trim();
            anyhow::ensure!(
                !name.is_empty() && !namespace.is_empty(),
                "--route-kind httproute needs --gateway-name and --gateway-namespace (the Gateway the routes attach to)"
            );
            let section = args.gateway_section.trim();
            Ok(Routing::HttpRoute(GatewayRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
                section_name: (!section.is_empty()).then(|| section.to_string()),
            }))
        }
        other => anyhow::bail!("invalid --route-kind {other:?}: ingress or httproute"),
    }
}

/// The Argo CD strategy's platform settings from flags; `kinds` is the templates'
/// allow-list (the default list when templated manifests are off).
pub fn argocd_platform(
    args: &RunArgs,
    kinds: Option<previewd_kube::strategy::manifests::ManifestKinds>,
) -> previewd_kube::strategy::ArgoCdPlatform {
    previewd_kube::strategy::ArgoCdPlatform {
        namespace: args.argocd_namespace.trim().to_string(),
        destination_server: args.argocd_destination_server.trim().to_string(),
        source_repos: args
            .argocd_source_repos
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        allow_forks: args.argocd_allow_forks,
        kinds: kinds.unwrap_or_default(),
    }
}

/// Where the data-proposal endpoint listens and what seed Jobs are told about it (the
/// `forks` policy is filled in once the AI provider is known); `None` when it is off.
pub fn data_proposal_settings(
    args: &RunArgs,
) -> anyhow::Result<
    Option<(
        std::net::SocketAddr,
        previewd_kube::strategy::seed::DataProposalEndpoint,
    )>,
> {
    let Some(addr) = args.data_proposals_addr else {
        return Ok(None);
    };
    let url = args
        .data_proposals_url
        .clone()
        .filter(|u| !u.trim().is_empty())
        .context("--data-proposals-addr needs --data-proposals-url (where seed Jobs reach it)")?;
    let parsed =
        url::Url::parse(&url).with_context(|| format!("invalid --data-proposals-url {url:?}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some(),
        "--data-proposals-url must be an http(s) URL with a host"
    );
    let operator_namespace = args
        .operator_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .filter(|n| !n.trim().is_empty())
        .context("--data-proposals-addr needs --operator-namespace (or $POD_NAMESPACE)")?;
    let operator_labels = parse_pairs(&args.operator_pod_labels, "--operator-pod-labels")?;
    anyhow::ensure!(
        !operator_labels.is_empty(),
        "--operator-pod-labels must select the operator's pods"
    );
    let key = data_proposal_key(args);
    Ok(Some((
        addr,
        previewd_kube::strategy::seed::DataProposalEndpoint {
            url,
            operator_namespace,
            operator_labels,
            port: addr.port(),
            key: std::sync::Arc::new(key),
            forks: false,
        },
    )))
}

/// The token key: `--data-proposals-key`, else an HMAC of the webhook secret (so every
/// replica agrees without another Secret), else random for this process.
fn data_proposal_key(args: &RunArgs) -> Vec<u8> {
    use sha2::Digest as _;
    if let Some(k) = args
        .data_proposals_key
        .as_ref()
        .filter(|k| !k.expose_secret().is_empty())
    {
        return k.expose_secret().as_bytes().to_vec();
    }
    if let Some(secret) = args
        .webhook_secret
        .as_ref()
        .filter(|k| !k.expose_secret().is_empty())
    {
        let mut h = sha2::Sha256::new();
        h.update(b"previewd data-proposal key v1\0");
        h.update(secret.expose_secret().as_bytes());
        return h.finalize().to_vec();
    }
    let random: [u8; 32] = rand::random();
    random.to_vec()
}

/// `key=value,key=value` (empty: none) of the flag `flag`.
fn parse_pairs(
    value: &str,
    flag: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("invalid {flag} entry {pair:?}: expected key=value"))?;
            anyhow::ensure!(
                !k.trim().is_empty(),
                "invalid {flag} entry {pair:?}: empty key"
            );
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Runs the stock operator until SIGTERM or SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    crate::OperatorBuilder::new(args).run().await
}

/// AI settings: the ConfigMap named by `--ai-config-map` (if any), overridden by the
/// environment (ENABLE_AI, AI_PROVIDER, AI_BASE_URL, AI_MODEL, OPENAI_API_KEY).
pub async fn ai_config(
    args: &RunArgs,
    client: &Client,
) -> anyhow::Result<previewd_ai::config::AiConfig> {
    let mut data = std::collections::BTreeMap::new();
    if let Some(reference) = &args.ai_config_map {
        let (namespace, name) = reference
            .split_once('/')
            .with_context(|| format!("--ai-config-map {reference:?} must be namespace/name"))?;
        let maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
            kube::Api::namespaced(client.clone(), namespace);
        let map = maps
            .get(name)
            .await
            .with_context(|| format!("reading the AI ConfigMap {reference}"))?;
        data = map.data.unwrap_or_default();
    }
    previewd_ai::config::AiConfig::load(&data, |key| std::env::var(key).ok())
        .context("invalid AI configuration")
}

/// The GitHub client, when a token or GitHub App credentials are configured.
pub fn github_client(
    args: &RunArgs,
    registry: &mut Registry,
) -> anyhow::Result<Option<previewd_github::GitHubClient>> {
    let metrics = previewd_github::metrics::ClientMetrics::register(registry);
    github_rest_client(args, metrics)
}

/// The concrete GitHub REST client, when a token or GitHub App credentials are
/// configured, counting into `metrics`.
pub fn github_rest_client(
    args: &RunArgs,
    metrics: previewd_github::metrics::ClientMetrics,
) -> anyhow::Result<Option<previewd_github::GitHubClient>> {
    use previewd_github::{AppCredentials, ClientConfig, GitHubAuth, GitHubClient};

    let auth = match (&args.github_token, args.github_app_id) {
        (Some(token), _) if !token.expose_secret().is_empty() => GitHubAuth::Token(token.clone()),
        (_, Some(app_id)) => {
            let key_file = args
                .github_app_private_key_file
                .as_deref()
                .context("--github-app-id needs --github-app-private-key-file")?;
            let pem = std::fs::read_to_string(key_file)
                .with_context(|| format!("reading the GitHub App key {}", key_file.display()))?;
            GitHubAuth::App(AppCredentials {
                app_id,
                installation_id: args.github_app_installation_id,
                private_key_pem: pem.into(),
                app_slug: None,
            })
        }
        _ => return Ok(None),
    };
    let base = url::Url::parse(&args.github_api_url)
        .with_context(|| format!("invalid --github-api-url {:?}", args.github_api_url))?;
    let client = GitHubClient::new(ClientConfig::new(base), auth, metrics)
        .context("creating the GitHub client")?;
    Ok(Some(client))
}

/// Where the webhook's Kubernetes client comes from.
pub(crate) enum WebhookClient {
    /// A client of its own (its own connections, and the user agent `previewd-webhook`),
    /// built from this configuration on the webhook's runtime.
    Own(Box<kube::Config>),
    /// An embedding caller's client, shared with the controller.
    Shared(Client),
}

/// Binds and starts the GitHub webhook server; it only records desired state
/// (server-side applies `PreviewEnvironment`s rendered from `PreviewRepository` settings).
///
/// The server runs on a runtime of its own, on a thread of its own, with its client and
/// its watch caches: a delivery's answer waits for one API write, and should not also
/// wait behind the controller's reconciles for a turn on the controller's runtime (with
/// 1000 environments provisioning, that turn cost the webhook's p95 about 60 ms). The
/// returned task ends when the server does.
pub(crate) async fn start_webhook(
    args: &RunArgs,
    secret: &SecretString,
    client: WebhookClient,
    github: Option<previewd_github::GitHubClient>,
    registry: &mut Registry,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use previewd_github::metrics::WebhookMetrics;
    use previewd_github::store::KubeStore;
    use previewd_github::webhook::{router, serve};

    let metrics = WebhookMetrics::register(registry);
    let listener = std::net::TcpListener::bind(args.webhook_addr)
        .with_context(|| format!("binding the webhook server to {}", args.webhook_addr))?;
    listener
        .set_nonblocking(true)
        .context("configuring the webhook's listener")?;
    let addr = listener.local_addr()?;
    let (args, secret) = (args.clone(), secret.clone());
    let (started, setup) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (ended, end) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("previewd-webhook".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = started.send(Err(
                        anyhow::Error::new(e).context("starting the webhook's runtime")
                    ));
                    return;
                }
            };
            runtime.block_on(async move {
                let ready = async {
                    let client = match client {
                        WebhookClient::Own(config) => client_as(*config, "previewd-webhook")?,
                        WebhookClient::Shared(client) => client,
                    };
                    // Repository settings come from a watch, not a list per delivery.
                    let store = Arc::new(
                        KubeStore::new(client, args.namespace.clone())
                            .with_watch_cache(shutdown.clone()),
                    );
                    let state =
                        webhook_state(&args, secret.expose_secret(), store, metrics, github)?;
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .context("registering the webhook's listener")?;
                    anyhow::Ok((listener, state))
                };
                match ready.await {
                    Ok((listener, state)) => {
                        let _ = started.send(Ok(()));
                        let _ = ended.send(serve(listener, router(state), shutdown).await);
                    }
                    Err(e) => {
                        let _ = started.send(Err(e));
                    }
                }
            });
        })
        .context("starting the webhook's thread")?;
    setup
        .await
        .context("the webhook's thread ended before the server started")??;
    info!(%addr, "GitHub webhook server listening");
    Ok(tokio::spawn(async move {
        end.await
            .unwrap_or_else(|_| Err(std::io::Error::other("the webhook's thread ended")))
    }))
}

/// The webhook handling as `previewd run`'s flags configure it: the claim policy, who may
/// command, the permission cache, and with GitHub credentials the installations and the
/// permission checks. The webhook server and the backfill (which feeds missed deliveries
/// through the same handling) both use it, so a delivery is decided the same way
/// whichever road it came by.
pub fn webhook_state(
    args: &RunArgs,
    secret: &str,
    store: Arc<dyn previewd_github::store::EnvironmentStore>,
    metrics: previewd_github::metrics::WebhookMetrics,
    github: Option<previewd_github::GitHubClient>,
) -> anyhow::Result<previewd_github::webhook::WebhookState> {
    use previewd_github::webhook::{WebhookConfig, WebhookState};
    let mut config = WebhookConfig::new(secret);
    config.claim_policy = claim_policy(args)?;
    config.command_policy = previewd_github::command::CommandPolicy {
        allowed_associations: split_list(&args.command_associations),
    };
    if !config.command_policy.allowed_associations.is_empty() {
        tracing::warn!(
            "--command-associations is deprecated: it only filters commenters before the permission check (--maintainer-role)"
        );
    }
    config.permission_policy = permission_policy(args)?;
    config.permission_cache_ttl = args.permission_cache_ttl;
    let mut state = WebhookState::new(config, store, metrics);
    match github {
        Some(github) => {
            state = state
                .with_installations(github.installations())
                .with_responder(Arc::new(github.clone()))
                .with_repository_access(Arc::new(github));
        }
        None => tracing::warn!(
            "no GitHub credentials: PR commands and fork approvals are refused, since nobody's permission can be checked"
        ),
    }
    Ok(state)
}

/// `--repository-claims`, parsed (open when unset).
pub fn claim_policy(args: &RunArgs) -> anyhow::Result<previewd_core::tenancy::ClaimPolicy> {
    match &args.repository_claims {
        Some(claims) => previewd_core::tenancy::ClaimPolicy::parse(claims)
            .map_err(|e| anyhow::anyhow!("invalid --repository-claims: {e}")),
        None => Ok(previewd_core::tenancy::ClaimPolicy::open()),
    }
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Name of the default history ConfigMap.
pub const HISTORY_CONFIG_MAP: &str = "previewd-history";
/// How often the ConfigMap history store writes its pending changes: a crash loses at
/// most this much history.
pub const HISTORY_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The environment history store: PostgreSQL when `--history-postgres-url` is set, else
/// the ConfigMap of `--history-config-map` (`off`: none).
pub async fn history_store(
    args: &RunArgs,
    client: &Client,
) -> anyhow::Result<Option<Arc<dyn previewd_ai::history::HistoryStore>>> {
    use previewd_ai::history::{ConfigMapHistory, PostgresHistory};
    if let Some(url) = args
        .history_postgres_url
        .as_ref()
        .filter(|u| !u.expose_secret().is_empty())
    {
        let store = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            PostgresHistory::connect(url.expose_secret()),
        )
        .await
        .context("connecting to the history database timed out")?
        .context("connecting to the history database (--history-postgres-url)")?;
        info!(table = store.table(), "environment history in PostgreSQL");
        return Ok(Some(Arc::new(store)));
    }
    let reference = match args.history_config_map.as_deref().map(str::trim) {
        Some("off") => return Ok(None),
        Some(r) if !r.is_empty() => r.to_string(),
        _ => {
            let namespace = std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .or_else(|| args.namespace.clone())
                .unwrap_or_else(|| "default".into());
            format!("{namespace}/{HISTORY_CONFIG_MAP}")
        }
    };
    let (namespace, name) = reference
        .split_once('/')
        .with_context(|| format!("--history-config-map {reference:?} must be namespace/name"))?;
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), namespace);
    info!(configmap = %reference, "environment history in a ConfigMap");
    // batched: one write per interval at most, whatever the number of environments
    Ok(Some(Arc::new(
        ConfigMapHistory::new(api, name).with_flush_interval(HISTORY_FLUSH_INTERVAL),
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    fn run_args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["previewd", "run"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(args) => *args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn maintainers_have_write_by_default_and_the_flags_change_it() {
        use previewd_github::permission::{PermissionPolicy, Role};
        assert_eq!(
            permission_policy(&run_args(&[])).unwrap(),
            PermissionPolicy::default()
        );
        let policy = permission_policy(&run_args(&[
            "--maintainer-role",
            "Maintain",
            "--maintainer-custom-roles",
            "deployer, release-manager,",
        ]))
        .unwrap();
        assert_eq!(policy.minimum, Role::Maintain);
        assert_eq!(policy.custom_roles, vec!["deployer", "release-manager"]);
        let err = permission_policy(&run_args(&["--maintainer-role", "owner"])).unwrap_err();
        assert!(err.to_string().contains("--maintainer-role"), "{err}");
        // The deprecated association filter is off unless set.
        assert_eq!(run_args(&[]).command_associations, "");
    }

    #[test]
    fn routes_are_ingresses_by_default_and_httproutes_need_a_gateway() {
        use previewd_kube::children::httproute::{GatewayRef, Routing};
        assert_eq!(routing(&run_args(&[])).unwrap(), Routing::Ingress);
        let err = routing(&run_args(&["--route-kind", "httproute"])).unwrap_err();
        assert!(err.to_string().contains("--gateway-name"), "{err}");
        assert_eq!(
            routing(&run_args(&[
                "--route-kind",
                "httproute",
                "--gateway-name",
                "previews",
                "--gateway-namespace",
                "gateway",
                "--gateway-section",
                "https",
            ]))
            .unwrap(),
            Routing::HttpRoute(GatewayRef {
                namespace: "gateway".into(),
                name: "previews".into(),
                section_name: Some("https".into()),
            })
        );
        assert!(
            crate::cli::Cli::try_parse_from(["previewd", "run", "--route-kind", "gateway"])
                .is_err()
        );
    }

    #[test]
    fn the_ingress_namespace_is_named_or_the_gateways_never_guessed() {
        let err = ingress_namespace(&run_args(&[])).unwrap_err();
        assert!(err.to_string().contains("--ingress-namespace"), "{err}");
        assert!(controller_config(&run_args(&[])).is_err());
        assert_eq!(
            ingress_namespace(&run_args(&["--ingress-namespace", " traefik "])).unwrap(),
            "traefik"
        );
        let gateway = [
            "--route-kind",
            "httproute",
            "--gateway-name",
            "previews",
            "--gateway-namespace",
            "gateway-system",
        ];
        assert_eq!(
            ingress_namespace(&run_args(&gateway)).unwrap(),
            "gateway-system"
        );
        let mut named = gateway.to_vec();
        named.extend(["--ingress-namespace", "envoy"]);
        assert_eq!(ingress_namespace(&run_args(&named)).unwrap(), "envoy");
        // A webhook-only replica writes no network policy.
        assert_eq!(
            ingress_namespace(&run_args(&["--webhook-only"])).unwrap(),
            ""
        );
    }
}
