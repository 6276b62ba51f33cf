//! Wake on visit: the page a sleeping preview's visitors get instead of an error.
//!
//! While an environment sleeps, and after a wake until it is Ready again, its route
//! points at this server (`--waker-addr`; how the route reaches it is
//! [`previewd_kube::children::waker`]). A request is matched to the environment by its
//! `Host`, and:
//!
//! - asleep (idle, or put to sleep on request): the visit wakes it the way `/preview
//!   wake` does (the sleep request withdrawn, the visit counted as activity) and the
//!   page says it is waking;
//! - asleep for its cost budget: nothing is woken, and the page says why;
//! - waking or rolling out: the page says so;
//! - the page reloads itself until the preview answers; once the environment is Ready
//!   its route points at its services again and the reload lands on the preview.
//!
//! Visits may wake an environment at most `--waker-limit` times within `--waker-window`
//! (recorded on the environment, `previewd.io/visit-wakes`, so every replica and restart
//! counts the same), so that a crawler cannot keep a preview awake forever; past that a
//! push or `/preview wake` still wakes it. Only `GET` wakes; the page shows nothing
//! about the environment beyond what the visitor's address already says.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use maud::{DOCTYPE, Markup, html};
use previewd_kube::children::waker::WakerEndpoint;
use previewd_kube::crd::{
    ANNOTATION_LAST_COMMAND, ANNOTATION_SLEEP, ANNOTATION_SLEEP_REQUESTED_AT,
    ANNOTATION_VISIT_WAKES, PreviewEnvironment, condition,
};
use previewd_kube::plan::sleep::{self, SleepReason};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::cli::parse_duration;

/// Flags of the waker.
#[derive(Debug, Clone, Args)]
pub struct WakerArgs {
    /// Address of the waker, which answers for sleeping previews (their routes point at
    /// it) and wakes them when someone opens them; off unless set. Its port is the one
    /// written into each sleeping preview's EndpointSlice.
    #[arg(long, env = "PREVIEWD_WAKER_ADDR")]
    pub waker_addr: Option<SocketAddr>,
    /// The operator pod's IP, written into each sleeping preview's EndpointSlice (the
    /// Helm chart sets it from the downward API); default: the IP of --waker-addr when it
    /// names one.
    #[arg(long, env = "PREVIEWD_WAKER_POD_IP")]
    pub waker_pod_ip: Option<IpAddr>,
    /// How many times visits may wake one environment within --waker-window (a push or
    /// `/preview wake` always can); 0: visits never wake, the page only says the preview
    /// sleeps.
    #[arg(long, env = "PREVIEWD_WAKER_LIMIT", default_value_t = 3)]
    pub waker_limit: u32,
    /// The window of --waker-limit.
    #[arg(long, env = "PREVIEWD_WAKER_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub waker_window: Duration,
}

impl WakerArgs {
    /// Where sleeping routes point: the pod's IP and the waker's port; `None` without a
    /// waker.
    pub fn endpoint(&self) -> anyhow::Result<Option<WakerEndpoint>> {
        let Some(addr) = self.waker_addr else {
            return Ok(None);
        };
        anyhow::ensure!(
            addr.port() != 0,
            "--waker-addr needs a fixed port: it is written into the routes of sleeping previews"
        );
        let address = match self.waker_pod_ip {
            Some(ip) => ip,
            None if !addr.ip().is_unspecified() => addr.ip(),
            None => anyhow::bail!(
                "--waker-addr {addr} listens on every address: set --waker-pod-ip (PREVIEWD_WAKER_POD_IP, the pod's IP) so that routes can reach it"
            ),
        };
        anyhow::ensure!(
            !address.is_loopback() && !address.is_unspecified(),
            "--waker-pod-ip {address}: an ingress controller cannot reach a loopback or unspecified address"
        );
        Ok(Some(WakerEndpoint {
            address,
            port: i32::from(addr.port()),
        }))
    }
}

/// What a visit finds, and does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visit {
    /// No environment at this host.
    NotFound,
    /// Asleep for its cost budget: a visit does not wake it.
    Budget,
    /// Asleep: the visit wakes it.
    Wake,
    /// Waking (a wake is recorded and the controller acts on it), or rolling out.
    Waking,
    /// Visits woke it `count` times within the window, the most allowed; a visit may
    /// wake it again at `until`.
    Limited {
        /// Wakes by visit within the window.
        count: usize,
        /// When the oldest of them leaves the window.
        until: Timestamp,
    },
    /// Woken, but it failed to start.
    Failed,
    /// Ready: the route returns to the preview at once.
    Ready,
}

/// The wakes by visit recorded on `env`, oldest first.
pub fn visit_wakes(env: &PreviewEnvironment) -> Vec<Timestamp> {
    let mut wakes: Vec<Timestamp> = env
        .annotations()
        .get(ANNOTATION_VISIT_WAKES)
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_default();
    wakes.sort();
    wakes
}

/// Settings of the decision.
#[derive(Clone, Copy, Debug)]
pub struct WakePolicy {
    /// Wakes by visit allowed per window.
    pub limit: u32,
    /// The window.
    pub window: Duration,
    /// The operator's idle time (as the controller judges sleep).
    pub idle_sleep_after: Option<Duration>,
}

/// What a visit to `env` at `now` finds.
pub fn decide(env: &PreviewEnvironment, now: Timestamp, policy: &WakePolicy) -> Visit {
    let status = env.status.clone().unwrap_or_default();
    let sleeping = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::SLEEPING && c.status == "True");
    if !sleeping {
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True");
        return match status.phase {
            Some(previewd_core::Phase::Failed) => Visit::Failed,
            _ if ready => Visit::Ready,
            _ => Visit::Waking,
        };
    }
    // Asleep as the controller last wrote it; what it decides next, from what is
    // recorded now (a wake already asked for shows here first).
    match sleep::sleep_reason(env, now, policy.idle_sleep_after, false) {
        None => Visit::Waking,
        Some(SleepReason::Budget) => Visit::Budget,
        Some(_) => {
            let window = jiff::SignedDuration::try_from(policy.window).unwrap_or_default();
            let since = now.checked_sub(window).unwrap_or(Timestamp::MIN);
            let recent: Vec<Timestamp> = visit_wakes(env)
                .into_iter()
                .filter(|t| *t > since)
                .collect();
            if recent.len() >= policy.limit as usize {
                let until = recent
                    .first()
                    .and_then(|t| t.checked_add(window).ok())
                    .unwrap_or(now);
                Visit::Limited {
                    count: recent.len(),
                    until,
                }
            } else {
                Visit::Wake
            }
        }
    }
}

/// The annotations a wake by visit writes: the sleep request withdrawn, the visit
/// counted as activity (like `/preview wake`), and recorded for the limit (those within
/// the window kept).
pub fn wake_patch(env: &PreviewEnvironment, now: Timestamp, window: Duration) -> serde_json::Value {
    let window = jiff::SignedDuration::try_from(window).unwrap_or_default();
    let since = now.checked_sub(window).unwrap_or(Timestamp::MIN);
    let mut wakes: Vec<String> = visit_wakes(env)
        .into_iter()
        .filter(|t| *t > since)
        .map(|t| t.to_string())
        .collect();
    wakes.push(now.to_string());
    serde_json::json!({"metadata": {"annotations": {
        ANNOTATION_SLEEP: null,
        ANNOTATION_SLEEP_REQUESTED_AT: null,
        ANNOTATION_LAST_COMMAND: now.to_string(),
        ANNOTATION_VISIT_WAKES: wakes.join(","),
    }}})
}

/// The host a request names, lower-case, without its port.
pub fn request_host(req: &Request) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string))?;
    let host = strip_port(&raw);
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// `host` without a `:port` (`[v6]:port` keeps its brackets).
fn strip_port(raw: &str) -> &str {
    if let Some(rest) = raw.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &raw[..i + 2],
            None => raw,
        };
    }
    match raw.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => raw,
    }
}

/// Outcomes counted by `previewd_waker_visits_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VisitLabels {
    /// `woken`, `waking`, `budget`, `limited`, `failed`, `ready`, `not_woken` (not a
    /// `GET`), `not_found`, `error`.
    pub outcome: String,
}

/// The waker's state.
#[derive(Clone)]
pub struct WakerState {
    /// The controller's cache of environments.
    pub environments: Arc<OnceLock<Store<PreviewEnvironment>>>,
    /// Writes the wake.
    pub client: Client,
    /// Limits.
    pub policy: WakePolicy,
    /// Wakes written by this process recently (the cache shows them within moments;
    /// until then the same environment is not written again).
    recent: Arc<Mutex<HashMap<String, Instant>>>,
    /// Visits by outcome.
    pub visits: Family<VisitLabels, Counter>,
}

/// How long this process waits for its own wake to show in the cache before it would
/// write another.
const RECENT_WAKE: Duration = Duration::from_secs(30);

impl WakerState {
    /// A waker over the controller's cache.
    pub fn new(
        environments: Arc<OnceLock<Store<PreviewEnvironment>>>,
        client: Client,
        policy: WakePolicy,
    ) -> WakerState {
        WakerState {
            environments,
            client,
            policy,
            recent: Arc::default(),
            visits: Family::default(),
        }
    }

    /// Registers `previewd_waker_visits_total`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "previewd_waker_visits",
            "Requests to sleeping previews, by what they found or did",
            self.visits.clone(),
        );
    }

    fn count(&self, outcome: &str) {
        self.visits
            .get_or_create(&VisitLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    fn find(&self, host: &str) -> Option<Arc<PreviewEnvironment>> {
        self.environments.get()?.state().into_iter().find(|e| {
            e.metadata.deletion_timestamp.is_none()
                && e.status
                    .as_ref()
                    .and_then(|s| s.host.as_deref())
                    .is_some_and(|h| h.eq_ignore_ascii_case(host))
        })
    }

    /// Whether this process may write a wake of `key` now (and remembers it did).
    fn claim(&self, key: &str) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|_, at| at.elapsed() < RECENT_WAKE);
        if recent.contains_key(key) {
            return false;
        }
        recent.insert(key.to_string(), Instant::now());
        true
    }

    async fn wake(&self, env: &PreviewEnvironment, now: Timestamp) -> Result<(), kube::Error> {
        let api: Api<PreviewEnvironment> =
            Api::namespaced(self.client.clone(), &env.namespace().unwrap_or_default());
        let patch = wake_patch(env, now, self.policy.window);
        api.patch(
            &env.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
    }
}

/// Seconds the page waits before it reloads itself.
const RELOAD_SECONDS: u64 = 5;

fn page(status: StatusCode, title: &str, lines: &[String], reload: Option<u64>) -> Response {
    let markup: Markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex";
                @if let Some(s) = reload { meta http-equiv="refresh" content=(s); }
                title { (title) }
                style { (maud::PreEscaped(WAKER_CSS)) }
            }
            body {
                main {
                    div.mark aria-hidden="true" { @if reload.is_some() { "☾" } @else { "◆" } }
                    h1 { (title) }
                    @for line in lines { p { (line) } }
                    @if reload.is_some() {
                        p.small role="status" { "This page reloads by itself every " (reload.unwrap_or(RELOAD_SECONDS)) " seconds until the preview answers. " a href="" { "Reload now" } }
                    }
                    p.small { "Served by previewd for a preview environment." }
                }
            }
        }
    };
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Some(s) = reload {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    response
}

const WAKER_CSS: &str = "\
:root{color-scheme:light dark;font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;background:#f6f7f9;color:#1b1f24}\
@media (prefers-color-scheme:dark){:root{background:#0d1117;color:#e6edf3}.small{color:#9ea7b3!important}a{color:#6cb6ff!important}}\
main{max-width:34rem;margin:18vh auto 0;padding:0 1.5rem;text-align:center;line-height:1.5}\
.mark{font-size:2.5rem}h1{font-size:1.6rem;margin:.5rem 0 1rem}.small{font-size:.9rem;color:#57606a}a{color:#0550ae}";

async fn visit(State(state): State<WakerState>, req: Request) -> Response {
    let Some(host) = request_host(&req) else {
        state.count("not_found");
        return page(
            StatusCode::NOT_FOUND,
            "No preview here",
            &["This address names no preview.".into()],
            None,
        );
    };
    if state.environments.get().is_none() {
        state.count("waking");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Starting up",
            &["previewd is starting; this preview will be looked at in a moment.".into()],
            Some(RELOAD_SECONDS),
        );
    }
    let Some(env) = state.find(&host) else {
        state.count("not_found");
        return page(
            StatusCode::NOT_FOUND,
            "No preview here",
            &[format!(
                "No preview answers at {host}: it may have been deleted."
            )],
            None,
        );
    };
    let now = Timestamp::now();
    let decision = decide(&env, now, &state.policy);
    // Only a visit (GET) wakes.
    if decision == Visit::Wake && req.method() != Method::GET {
        state.count("not_woken");
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "This preview is asleep",
            &[format!(
                "The preview at {host} is asleep; opening it in a browser wakes it."
            )],
            None,
        );
    }
    match decision {
        Visit::NotFound => page(StatusCode::NOT_FOUND, "No preview here", &[], None),
        Visit::Budget => {
            state.count("budget");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This preview is asleep",
                &[
                    format!("The preview at {host} was put to sleep because its cost budget is spent."),
                    "Visiting it does not wake it: its owners can raise the budget of the pull request's preview, and it wakes by itself once the budget allows it.".into(),
                ],
                None,
            )
        }
        Visit::Limited { count, until } => {
            state.count("limited");
            let window = previewd_core::Ttl::try_from(state.policy.window)
                .map(|t| t.to_string())
                .unwrap_or_else(|_| "the window".into());
            let lines = if state.policy.limit == 0 {
                vec![
                    format!("The preview at {host} is asleep."),
                    "A push to its pull request, or the comment /preview wake, wakes it.".into(),
                ]
            } else {
                vec![
                    format!(
                        "The preview at {host} is asleep. Visits woke it {count} times in the last {window}, as often as they may."
                    ),
                    format!(
                        "A push to its pull request, or the comment /preview wake, wakes it; a visit can again after {}.",
                        until.strftime("%Y-%m-%d %H:%M UTC")
                    ),
                ]
            };
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This preview is asleep",
                &lines,
                None,
            )
        }
        Visit::Wake => {
            let key = format!("{}/{}", env.namespace().unwrap_or_default(), env.name_any());
            if state.claim(&key) {
                if let Err(e) = state.wake(&env, now).await {
                    tracing::warn!(environment = %key, error = %e, "could not wake the environment");
                    state.count("error");
                    return page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Could not wake this preview",
                        &["Waking it failed for now; this page tries again.".into()],
                        Some(RELOAD_SECONDS * 3),
                    );
                }
                tracing::info!(environment = %key, "woken by a visit");
                state.count("woken");
            } else {
                state.count("waking");
            }
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Waking up this preview",
                &[format!(
                    "The preview at {host} was asleep and is starting now; this usually takes under a minute."
                )],
                Some(RELOAD_SECONDS),
            )
        }
        Visit::Waking => {
            state.count("waking");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Waking up this preview",
                &[format!("The preview at {host} is starting.")],
                Some(RELOAD_SECONDS),
            )
        }
        Visit::Failed => {
            state.count("failed");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "This preview did not start",
                &[format!(
                    "The preview at {host} failed to start. Its pull request, or previewd's web view, says why; a push or /preview retry tries again."
                )],
                None,
            )
        }
        Visit::Ready => {
            state.count("ready");
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Ready",
                &[format!("The preview at {host} is up; taking you there.")],
                Some(1),
            )
        }
    }
}

/// The waker's router: every path of every host.
pub fn router(state: WakerState) -> Router {
    Router::new().fallback(visit).with_state(state)
}

/// Binds the waker and serves it until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    state: WakerState,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the waker to {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "waker listening");
    Ok(tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn env(annotations: serde_json::Value, conditions: serde_json::Value) -> PreviewEnvironment {
        serde_json::from_value(json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": "shop-pr-7", "namespace": "team",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": annotations},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "b",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567"},
            "status": {"phase": "Ready", "host": "pr-7.preview.example.com",
                       "conditions": conditions}
        }))
        .unwrap()
    }

    fn asleep(reason: &str) -> serde_json::Value {
        json!([{"type": "Sleeping", "status": "True", "reason": reason, "message": "",
                "lastTransitionTime": "2026-01-01T02:00:00Z"},
               {"type": "Ready", "status": "False", "reason": "Sleeping", "message": "",
                "lastTransitionTime": "2026-01-01T02:00:00Z"}])
    }

    const POLICY: WakePolicy = WakePolicy {
        limit: 2,
        window: Duration::from_secs(24 * 3600),
        idle_sleep_after: Some(Duration::from_secs(2 * 3600)),
    };

    #[test]
    fn an_idle_or_requested_sleep_is_woken_and_a_budget_sleep_is_not() {
        let now = t("2026-01-01T03:00:00Z");
        assert_eq!(
            decide(&env(json!({}), asleep("Idle")), now, &POLICY),
            Visit::Wake
        );
        let asked = env(
            json!({"previewd.io/sleep": "command", "previewd.io/sleep-requested-at": "2026-01-01T01:00:00Z",
                   "previewd.io/last-command-at": "2026-01-01T01:00:00Z"}),
            asleep("Command"),
        );
        assert_eq!(decide(&asked, now, &POLICY), Visit::Wake);
        let budget = env(json!({"previewd.io/sleep": "budget"}), asleep("Budget"));
        assert_eq!(decide(&budget, now, &POLICY), Visit::Budget);
    }

    #[test]
    fn a_wake_counts_as_activity_and_the_next_visit_finds_it_waking() {
        let now = t("2026-01-01T03:00:00Z");
        let asked = env(
            json!({"previewd.io/sleep": "command", "previewd.io/sleep-requested-at": "2026-01-01T01:00:00Z"}),
            asleep("Command"),
        );
        let patch = wake_patch(&asked, now, POLICY.window);
        let annotations = &patch["metadata"]["annotations"];
        assert!(
            annotations[ANNOTATION_SLEEP].is_null(),
            "the request is withdrawn"
        );
        assert!(annotations[ANNOTATION_SLEEP_REQUESTED_AT].is_null());
        assert_eq!(annotations[ANNOTATION_LAST_COMMAND], now.to_string());
        assert_eq!(annotations[ANNOTATION_VISIT_WAKES], now.to_string());
        // The environment as patched: the controller wakes it; a visit meanwhile waits.
        let woken = env(
            json!({"previewd.io/last-command-at": now.to_string(),
                   "previewd.io/visit-wakes": now.to_string()}),
            asleep("Command"),
        );
        assert_eq!(
            decide(&woken, t("2026-01-01T03:00:05Z"), &POLICY),
            Visit::Waking
        );
    }

    #[test]
    fn visits_wake_at_most_the_limit_within_the_window() {
        let now = t("2026-01-02T03:00:00Z");
        let crawled = env(
            json!({"previewd.io/visit-wakes": "2026-01-01T06:00:00Z,2026-01-01T12:00:00Z"}),
            asleep("Idle"),
        );
        assert_eq!(
            decide(&crawled, now, &POLICY),
            Visit::Limited {
                count: 2,
                until: t("2026-01-02T06:00:00Z")
            }
        );
        // Once the oldest leaves the window, a visit may wake it again, and the record
        // keeps only what is within the window.
        let later = t("2026-01-02T06:00:01Z");
        assert_eq!(decide(&crawled, later, &POLICY), Visit::Wake);
        let patch = wake_patch(&crawled, later, POLICY.window);
        assert_eq!(
            patch["metadata"]["annotations"][ANNOTATION_VISIT_WAKES],
            format!("2026-01-01T12:00:00Z,{later}")
        );
        let never = WakePolicy { limit: 0, ..POLICY };
        assert!(matches!(
            decide(&env(json!({}), asleep("Idle")), now, &never),
            Visit::Limited { count: 0, .. }
        ));
    }

    #[test]
    fn an_awake_environment_is_rolling_out_ready_or_failed() {
        let now = t("2026-01-01T03:00:00Z");
        let rolling = env(
            json!({}),
            json!([
            {"type": "Sleeping", "status": "False", "reason": "Awake", "message": "",
             "lastTransitionTime": "2026-01-01T02:59:00Z"},
            {"type": "Ready", "status": "False", "reason": "Provisioning", "message": "",
             "lastTransitionTime": "2026-01-01T02:59:00Z"}]),
        );
        assert_eq!(decide(&rolling, now, &POLICY), Visit::Waking);
        let ready = env(
            json!({}),
            json!([
            {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
             "lastTransitionTime": "2026-01-01T02:59:30Z"}]),
        );
        assert_eq!(decide(&ready, now, &POLICY), Visit::Ready);
        let mut failed = rolling.clone();
        failed.status.as_mut().unwrap().phase = Some(previewd_core::Phase::Failed);
        assert_eq!(decide(&failed, now, &POLICY), Visit::Failed);
    }

    #[test]
    fn the_host_is_read_without_its_port_in_any_case() {
        let req = |host: &str| {
            Request::builder()
                .uri("/x")
                .header(header::HOST, host)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(
            request_host(&req("PR-7.Preview.Example.com:8443")).as_deref(),
            Some("pr-7.preview.example.com")
        );
        assert_eq!(
            request_host(&req("pr-7.preview.example.com.")).as_deref(),
            Some("pr-7.preview.example.com")
        );
        assert_eq!(
            request_host(&req("[fd00::1]:80")).as_deref(),
            Some("[fd00::1]")
        );
    }

    #[test]
    fn the_endpoint_needs_a_reachable_address_and_a_fixed_port() {
        let args = |addr: &str, ip: Option<&str>| WakerArgs {
            waker_addr: Some(addr.parse().unwrap()),
            waker_pod_ip: ip.map(|i| i.parse().unwrap()),
            waker_limit: 3,
            waker_window: Duration::from_secs(3600),
        };
        assert_eq!(
            args("0.0.0.0:8090", Some("10.0.0.4")).endpoint().unwrap(),
            Some(WakerEndpoint {
                address: "10.0.0.4".parse().unwrap(),
                port: 8090
            })
        );
        assert!(args("0.0.0.0:8090", None).endpoint().is_err());
        assert!(args("0.0.0.0:0", Some("10.0.0.4")).endpoint().is_err());
        assert!(args("127.0.0.1:8090", None).endpoint().is_err());
        assert_eq!(
            args("192.0.2.2:8090", None)
                .endpoint()
                .unwrap()
                .unwrap()
                .address,
            "192.0.2.2".parse::<IpAddr>().unwrap()
        );
    }
}
