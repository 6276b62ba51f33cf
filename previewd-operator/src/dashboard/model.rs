//! What the web view shows, computed from the operator's watch caches: one summary per
//! environment (the list), one detail view (the environment's page), the same structures
//! as JSON (the API). No function here makes a request; each reads the caches as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use previewd_core::Money;
use previewd_kube::controller::caches::Packed;
use previewd_kube::crd::{
    ANNOTATION_PR_TITLE, ANNOTATION_PR_URL, DeployPolicy, LABEL_SERVICE, PreviewEnvironment,
    condition,
};
use previewd_kube::plan::expiry;
use serde::{Deserialize, Serialize};

/// Where the web view reads from: the controller's caches (the environments, their
/// Deployments and Pods) and the web view's own cache of Events about environments. A
/// replica that does not run the controller (a standby) fills [`Source::standby`] with
/// watches of its own, so that every replica behind the web view's Service answers.
#[derive(Clone)]
pub struct Source {
    /// The controller's cache of environments; set once this replica runs the
    /// controller.
    pub environments: Arc<OnceLock<Store<PreviewEnvironment>>>,
    /// The controller's cache of previewd's Deployments.
    pub deployments: Store<Packed<Deployment>>,
    /// The controller's cache of previewd's Pods.
    pub pods: Store<Packed<Pod>>,
    /// Events about environments.
    pub events: Store<Event>,
    /// The caches of a replica that does not run the controller.
    pub standby: Arc<OnceLock<StandbyCaches>>,
    /// The operator's idle time before an environment sleeps (`None`: never).
    pub idle_sleep_after: Option<Duration>,
}

/// The web view's own caches on a replica that does not run the controller.
#[derive(Clone)]
pub struct StandbyCaches {
    /// Environments.
    pub environments: Store<PreviewEnvironment>,
    /// previewd's Deployments.
    pub deployments: Store<Packed<Deployment>>,
    /// previewd's Pods.
    pub pods: Store<Packed<Pod>>,
}

/// Which namespaces a user may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visible {
    /// Every namespace.
    All,
    /// These namespaces only.
    Namespaces(BTreeSet<String>),
}

impl Visible {
    /// Whether environments of `namespace` may be shown.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Visible::All => true,
            Visible::Namespaces(set) => set.contains(namespace),
        }
    }
}

/// Filters and order of the list (the query string of `/` and of the JSON API).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this repository (`owner/name`, any case).
    #[serde(default)]
    pub repo: Option<String>,
    /// Only this phase (`Ready`, `Failed`, ...), or `Asleep`.
    #[serde(default)]
    pub phase: Option<String>,
    /// Only pull requests by this author (any case).
    #[serde(default)]
    pub author: Option<String>,
    /// `expiry` (soonest first, the default), `cost` (most spent first), `age` (newest
    /// first) or `repository`.
    #[serde(default)]
    pub sort: Option<String>,
}

/// The orders the list offers.
pub const SORTS: [(&str, &str); 4] = [
    ("expiry", "Expires soonest"),
    ("cost", "Cost to date"),
    ("age", "Newest"),
    ("repository", "Repository"),
];

/// The phases the list can be filtered by ([`ListQuery::phase`]).
pub const PHASE_FILTERS: [&str; 8] = [
    "Pending",
    "Provisioning",
    "Ready",
    "Testing",
    "Complete",
    "Failed",
    "Terminating",
    "Asleep",
];

impl ListQuery {
    /// The sort actually applied (an unknown value sorts by expiry).
    pub fn sort_key(&self) -> &'static str {
        let asked = self.sort.as_deref().unwrap_or_default();
        SORTS
            .iter()
            .map(|(key, _)| *key)
            .find(|key| key.eq_ignore_ascii_case(asked))
            .unwrap_or("expiry")
    }

    fn wanted(value: &Option<String>) -> Option<&str> {
        value.as_deref().map(str::trim).filter(|v| !v.is_empty())
    }

    /// Whether `summary` passes the filters.
    pub fn matches(&self, summary: &EnvironmentSummary) -> bool {
        if let Some(repo) = Self::wanted(&self.repo)
            && !summary.repository.eq_ignore_ascii_case(repo)
        {
            return false;
        }
        if let Some(author) = Self::wanted(&self.author)
            && !summary
                .author
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(author))
        {
            return false;
        }
        if let Some(phase) = Self::wanted(&self.phase) {
            let ok = if phase.eq_ignore_ascii_case("asleep") {
                summary.asleep
            } else {
                summary.phase.eq_ignore_ascii_case(phase)
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

/// Test results in a line.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TestCounts {
    /// `Running`, `Passed` or `Failed`.
    pub state: Option<String>,
    /// Tests run.
    pub total: i64,
    /// Passed.
    pub passed: i64,
    /// Failed.
    pub failed: i64,
    /// Skipped.
    pub skipped: i64,
}

/// One environment in the list.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSummary {
    /// Namespace of the `PreviewEnvironment`.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `owner/name`.
    pub repository: String,
    /// Pull request number.
    pub pr_number: i64,
    /// The pull request's web page.
    pub pr_url: String,
    /// Its title, as the last event applied carried it (untrusted text).
    pub title: Option<String>,
    /// Its author's login.
    pub author: Option<String>,
    /// Its head branch.
    pub branch: String,
    /// Lifecycle phase (`Pending` until the controller has seen it).
    pub phase: String,
    /// Why it is not Ready (the `Ready` condition's reason), or why it sleeps.
    pub reason: Option<String>,
    /// The controller's summary of its state.
    pub message: Option<String>,
    /// Where it is served.
    pub url: Option<String>,
    /// When it was created.
    pub created_at: Option<Timestamp>,
    /// Seconds since then.
    pub age_seconds: i64,
    /// When it expires.
    pub expires_at: Option<Timestamp>,
    /// Seconds until then (negative: past).
    pub expires_in_seconds: Option<i64>,
    /// Spend to date.
    pub cost_to_date: Option<Money>,
    /// Its total budget.
    pub budget_total: Option<Money>,
    /// Its daily budget.
    pub budget_daily: Option<Money>,
    /// Test results of the head commit.
    pub tests: Option<TestCounts>,
    /// Workloads scaled to zero.
    pub asleep: bool,
    /// Why (`Idle`, `Command`, `Budget`).
    pub sleep_reason: Option<String>,
    /// Being deleted.
    pub deleting: bool,
}

/// A condition as shown.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// Type.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// When the status last changed.
    pub last_transition_time: Timestamp,
}

/// An Event about the environment.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// What happened.
    pub note: String,
    /// When it last happened.
    pub time: Option<Timestamp>,
    /// How often.
    pub count: i32,
}

/// One service of the environment.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// Deployed for this head commit (with `serviceSelection: Affected`, only those
    /// selected are).
    pub selected: bool,
    /// Its URL.
    pub url: Option<String>,
    /// Replicas asked for (0 while asleep).
    pub desired: Option<i32>,
    /// Replicas ready.
    pub ready: i32,
    /// Whether every desired replica is available.
    pub available: bool,
    /// Container restarts of its pods.
    pub restarts: i32,
    /// Why a container is not running (`CrashLoopBackOff`, `ImagePullBackOff`, ...).
    pub problem: Option<String>,
}

/// A failed test.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailedTest {
    /// Test name.
    pub name: String,
    /// Why it failed.
    pub message: String,
}

/// Test results in full.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TestsView {
    /// Counts and state.
    #[serde(flatten)]
    pub counts: TestCounts,
    /// Failed tests with their messages.
    pub failures: Vec<FailedTest>,
    /// Failed tests the runner left out of its summary.
    pub omitted_failures: Option<i64>,
    /// Why the run failed without results.
    pub error: Option<String>,
    /// Wall time in milliseconds.
    pub duration_ms: Option<i64>,
    /// The head commit tested.
    pub sha: Option<String>,
}

/// What the environment costs.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CostView {
    /// Per hour, of what runs now.
    pub hourly: Option<Money>,
    /// Per day.
    pub daily: Option<Money>,
    /// Per month.
    pub monthly: Option<Money>,
    /// Spend to date.
    pub to_date: Option<Money>,
    /// The hourly rate by category: compute, storage, network.
    pub breakdown: Option<BTreeMap<String, Money>>,
    /// Budget: what happens when exceeded (`warn`, `sleep`, `delete`).
    pub budget_policy: Option<String>,
    /// Daily limit.
    pub budget_daily: Option<Money>,
    /// Total limit.
    pub budget_total: Option<Money>,
}

/// Which services and tests were chosen, and why.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelectionView {
    /// `All` or `Affected`.
    pub service_policy: String,
    /// Why these services.
    pub service_reason: String,
    /// What the AI engine (or the deterministic rules) decided.
    pub advice: Option<previewd_kube::crd::AiStatus>,
    /// The tests selected for the head commit, and why.
    pub tests: Option<previewd_core::testselect::TestSelectionStatus>,
}

/// When the environment goes, and what would keep it longer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryView {
    /// When it expires.
    pub expires_at: Option<Timestamp>,
    /// Its time to live.
    pub ttl: String,
    /// Whether activity renews the TTL.
    pub auto_extend: bool,
    /// The hard cap no extension passes.
    pub hard_cap_at: Option<Timestamp>,
    /// `/preview extend` asked for it to live until then.
    pub extended_until: Option<Timestamp>,
    /// The opt-out label keeps it until the hard cap.
    pub do_not_expire: bool,
    /// When it falls asleep if nobody acts on it.
    pub idle_sleep_at: Option<Timestamp>,
    /// What would extend it, for people.
    pub extended_by: Vec<String>,
}

/// One environment in full: its page and `GET /api/v1/environments/{namespace}/{name}`.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: EnvironmentSummary,
    /// Base branch.
    pub base_branch: Option<String>,
    /// Head commit asked for.
    pub head_sha: String,
    /// Head commit deployed.
    pub deployed_sha: Option<String>,
    /// Namespace of its workloads.
    pub preview_namespace: Option<String>,
    /// Its conditions.
    pub conditions: Vec<ConditionView>,
    /// Recent Events, newest first.
    pub events: Vec<EventView>,
    /// Its services.
    pub services: Vec<ServiceView>,
    /// Test results.
    pub tests_detail: Option<TestsView>,
    /// Cost.
    pub cost: CostView,
    /// Services and tests chosen.
    pub selection: SelectionView,
    /// Expiry.
    pub expiry: ExpiryView,
}

/// The list page and `GET /api/v1/environments`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListView {
    /// When it was computed.
    pub generated_at: Timestamp,
    /// Environments the user may see, before the filters.
    pub visible: usize,
    /// Of those: Ready (or Testing, Complete), Failed, asleep.
    pub serving: usize,
    /// Failed.
    pub failed: usize,
    /// Asleep.
    pub asleep: usize,
    /// Repositories among them (for the filter).
    pub repositories: Vec<String>,
    /// Authors among them (for the filter).
    pub authors: Vec<String>,
    /// The environments that pass the filters, in order.
    pub items: Vec<EnvironmentSummary>,
}

/// Most Events shown for one environment.
pub const MAX_EVENTS: usize = 25;

fn http_url(url: &str) -> Option<String> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then(|| url.to_string())
}

fn condition_of<'a>(
    env: &'a PreviewEnvironment,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    env.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The list entry of `env` at `now`.
pub fn summary(env: &PreviewEnvironment, now: Timestamp) -> EnvironmentSummary {
    let status = env.status.clone().unwrap_or_default();
    let annotations = env.annotations();
    let sleeping = condition_of(env, condition::SLEEPING).filter(|c| c.status == "True");
    let ready = condition_of(env, condition::READY);
    let created = expiry::created_at(env, now);
    let phase = status
        .phase
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "Pending".into());
    let reason = match (sleeping, ready) {
        (Some(s), _) => Some(s.reason.clone()),
        (None, Some(r)) if r.status != "True" => Some(r.reason.clone()),
        _ => None,
    };
    let budget = env.spec.cost_budget.as_ref();
    EnvironmentSummary {
        namespace: env.namespace().unwrap_or_default(),
        name: env.name_any(),
        repository: env.spec.repository.clone(),
        pr_number: env.spec.pr_number,
        pr_url: annotations
            .get(ANNOTATION_PR_URL)
            .and_then(|u| http_url(u))
            .unwrap_or_else(|| {
                format!(
                    "https://github.com/{}/pull/{}",
                    env.spec.repository, env.spec.pr_number
                )
            }),
        title: annotations
            .get(ANNOTATION_PR_TITLE)
            .filter(|t| !t.trim().is_empty())
            .cloned(),
        author: env.spec.author.clone(),
        branch: env.spec.branch.clone(),
        phase,
        reason,
        message: status.message.clone(),
        url: status.url.as_deref().and_then(http_url),
        created_at: Some(created),
        age_seconds: now.duration_since(created).as_secs().max(0),
        expires_at: status.expires_at.as_ref().map(|t| t.0),
        expires_in_seconds: status
            .expires_at
            .as_ref()
            .map(|t| t.0.duration_since(now).as_secs()),
        cost_to_date: status.costs.as_ref().and_then(|c| c.actual_to_date),
        budget_total: budget.and_then(|b| b.total),
        budget_daily: budget.and_then(|b| b.daily),
        tests: status.tests.as_ref().map(|t| TestCounts {
            state: t.state.clone(),
            total: t.total,
            passed: t.passed,
            failed: t.failed,
            skipped: t.skipped,
        }),
        asleep: sleeping.is_some(),
        sleep_reason: sleeping.map(|c| c.reason.clone()),
        deleting: env.metadata.deletion_timestamp.is_some(),
    }
}

fn sort(items: &mut [EnvironmentSummary], key: &str) {
    match key {
        "cost" => items.sort_by(|a, b| {
            b.cost_to_date
                .unwrap_or_default()
                .cmp(&a.cost_to_date.unwrap_or_default())
                .then_with(|| a.name.cmp(&b.name))
        }),
        "age" => items.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.name.cmp(&b.name))
        }),
        "repository" => items.sort_by(|a, b| {
            a.repository
                .to_ascii_lowercase()
                .cmp(&b.repository.to_ascii_lowercase())
                .then_with(|| a.pr_number.cmp(&b.pr_number))
        }),
        // Soonest expiry first; those without one last.
        _ => items.sort_by(|a, b| {
            (a.expires_at.is_none(), a.expires_at, &a.namespace, &a.name).cmp(&(
                b.expires_at.is_none(),
                b.expires_at,
                &b.namespace,
                &b.name,
            ))
        }),
    }
}

impl Source {
    /// The environments cache: the controller's, else a standby's own.
    pub fn store(&self) -> Option<&Store<PreviewEnvironment>> {
        self.environments
            .get()
            .or_else(|| self.standby.get().map(|s| &s.environments))
    }

    /// previewd's Deployments: the controller's cache, else a standby's own.
    pub fn deployments(&self) -> &Store<Packed<Deployment>> {
        match (self.environments.get(), self.standby.get()) {
            (None, Some(standby)) => &standby.deployments,
            _ => &self.deployments,
        }
    }

    /// previewd's Pods: the controller's cache, else a standby's own.
    pub fn pods(&self) -> &Store<Packed<Pod>> {
        match (self.environments.get(), self.standby.get()) {
            (None, Some(standby)) => &standby.pods,
            _ => &self.pods,
        }
    }

    /// Namespaces holding environments (what authorisation is asked about).
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.store()
            .map(|s| {
                s.state()
                    .iter()
                    .filter_map(|e| e.namespace())
                    .collect::<BTreeSet<_>>()
            })
            .unwrap_or_default()
    }

    /// The list as `visible` may see it, filtered and ordered by `query`.
    pub fn list(&self, visible: &Visible, query: &ListQuery, now: Timestamp) -> ListView {
        let envs = self.store().map(|s| s.state()).unwrap_or_default();
        let all: Vec<EnvironmentSummary> = envs
            .iter()
            .filter(|e| visible.contains(&e.namespace().unwrap_or_default()))
            .map(|e| summary(e, now))
            .collect();
        let serving = all
            .iter()
            .filter(|s| !s.asleep && matches!(s.phase.as_str(), "Ready" | "Testing" | "Complete"))
            .count();
        let failed = all.iter().filter(|s| s.phase == "Failed").count();
        let asleep = all.iter().filter(|s| s.asleep).count();
        let repositories: BTreeSet<String> = all.iter().map(|s| s.repository.clone()).collect();
        let authors: BTreeSet<String> = all.iter().filter_map(|s| s.author.clone()).collect();
        let visible_count = all.len();
        let mut items: Vec<EnvironmentSummary> =
            all.into_iter().filter(|s| query.matches(s)).collect();
        sort(&mut items, query.sort_key());
        ListView {
            generated_at: now,
            visible: visible_count,
            serving,
            failed,
            asleep,
            repositories: repositories.into_iter().collect(),
            authors: authors.into_iter().collect(),
            items,
        }
    }

    /// The environment `namespace/name`, if `visible` may see it.
    pub fn environment(
        &self,
        visible: &Visible,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<PreviewEnvironment>> {
        if !visible.contains(namespace) {
            return None;
        }
        self.store()?.get(
            &kube::runtime::reflector::ObjectRef::<PreviewEnvironment>::new(name).within(namespace),
        )
    }

    /// The page of `namespace/name`, if `visible` may see it.
    pub fn detail(
        &self,
        visible: &Visible,
        namespace: &str,
        name: &str,
        now: Timestamp,
    ) -> Option<EnvironmentDetail> {
        let env = self.environment(visible, namespace, name)?;
        Some(self.detail_of(&env, now))
    }

    /// The detail of one environment.
    pub fn detail_of(&self, env: &PreviewEnvironment, now: Timestamp) -> EnvironmentDetail {
        let status = env.status.clone().unwrap_or_default();
        EnvironmentDetail {
            summary: summary(env, now),
            base_branch: env.spec.base_branch.clone(),
            head_sha: env.spec.head_sha.clone(),
            deployed_sha: status.deployed_sha.clone(),
            preview_namespace: status.namespace.clone(),
            conditions: status
                .conditions
                .iter()
                .map(|c| ConditionView {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: c.message.clone(),
                    last_transition_time: c.last_transition_time.0,
                })
                .collect(),
            events: self.events_of(env),
            services: self.services_of(env),
            tests_detail: status.tests.as_ref().map(|t| TestsView {
                counts: TestCounts {
                    state: t.state.clone(),
                    total: t.total,
                    passed: t.passed,
                    failed: t.failed,
                    skipped: t.skipped,
                },
                failures: if t.failures.is_empty() {
                    t.failed_tests
                        .iter()
                        .map(|name| FailedTest {
                            name: name.clone(),
                            message: String::new(),
                        })
                        .collect()
                } else {
                    t.failures
                        .iter()
                        .map(|f| FailedTest {
                            name: f.name.clone(),
                            message: f.reason.clone(),
                        })
                        .collect()
                },
                omitted_failures: t.omitted_failures,
                error: t.error.clone(),
                duration_ms: t.duration_ms,
                sha: t.sha.clone(),
            }),
            cost: cost_of(env),
            selection: selection_of(env),
            expiry: self.expiry_of(env, now),
        }
    }

    /// The newest Events about `env` (at most [`MAX_EVENTS`]).
    pub fn events_of(&self, env: &PreviewEnvironment) -> Vec<EventView> {
        let uid = env.uid();
        let name = env.name_any();
        let namespace = env.namespace();
        let mut events: Vec<EventView> = self
            .events
            .state()
            .iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("PreviewEnvironment")
                        && r.name.as_deref() == Some(name.as_str())
                        && r.namespace == namespace
                        && (uid.is_none() || r.uid.is_none() || r.uid == uid)
                })
            })
            .map(|e| EventView {
                type_: e.type_.clone().unwrap_or_else(|| "Normal".into()),
                reason: e.reason.clone().unwrap_or_default(),
                note: e.note.clone().unwrap_or_default(),
                time: e
                    .series
                    .as_ref()
                    .map(|s| s.last_observed_time.0)
                    .or(e.event_time.as_ref().map(|t| t.0))
                    .or(e.deprecated_last_timestamp.as_ref().map(|t| t.0))
                    .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                count: e
                    .series
                    .as_ref()
                    .map(|s| s.count)
                    .or(e.deprecated_count)
                    .unwrap_or(1)
                    .max(1),
            })
            .collect();
        events.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.reason.cmp(&b.reason)));
        events.truncate(MAX_EVENTS);
        events
    }

    /// Each service: the spec's, and any other Deployment the strategy made.
    pub fn services_of(&self, env: &PreviewEnvironment) -> Vec<ServiceView> {
        let status = env.status.clone().unwrap_or_default();
        let Some(preview_ns) = status.namespace.clone() else {
            return Vec::new();
        };
        let env_name = env.name_any();
        let env_ns = env.namespace();
        // Only this environment's objects are unpacked.
        fn ours<K>(o: &Packed<K>, ns: &str, env: &str, env_ns: Option<&String>) -> bool {
            o.namespace.as_deref() == Some(ns)
                && o.env.as_deref() == Some(env)
                && o.env_namespace.as_ref() == env_ns
        }
        let deployments: Vec<Arc<Deployment>> = self
            .deployments()
            .state()
            .into_iter()
            .filter(|d| ours(d, &preview_ns, &env_name, env_ns.as_ref()))
            .filter_map(|d| d.unpack().map(Arc::new))
            .collect();
        let pods: Vec<Arc<Pod>> = self
            .pods()
            .state()
            .into_iter()
            .filter(|p| ours(p, &preview_ns, &env_name, env_ns.as_ref()))
            .filter_map(|p| p.unpack().map(Arc::new))
            .collect();
        let selected: Option<BTreeSet<&str>> = status
            .selected_services
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|s| s.iter().map(String::as_str).collect());
        let mut names: Vec<String> = env.spec.services.iter().map(|s| s.name.clone()).collect();
        for d in &deployments {
            let name = d.name_any();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
            .into_iter()
            .map(|name| {
                let deployment = deployments.iter().find(|d| d.name_any() == name);
                let service_pods: Vec<&Arc<Pod>> = pods
                    .iter()
                    .filter(|p| p.labels().get(LABEL_SERVICE) == Some(&name))
                    .collect();
                let statuses = service_pods.iter().flat_map(|p| {
                    p.status
                        .iter()
                        .flat_map(|s| s.container_statuses.iter().flatten())
                });
                let restarts = statuses.clone().map(|c| c.restart_count).sum();
                let problem = statuses
                    .filter_map(|c| {
                        let state = c.state.as_ref()?;
                        state
                            .waiting
                            .as_ref()
                            .and_then(|w| w.reason.clone())
                            .filter(|r| r != "ContainerCreating" && r != "PodInitializing")
                            .or_else(|| {
                                state
                                    .terminated
                                    .as_ref()
                                    .and_then(|t| t.reason.clone())
                                    .filter(|r| r != "Completed")
                            })
                    })
                    .next();
                let desired = deployment.and_then(|d| d.spec.as_ref()?.replicas);
                let d_status = deployment
                    .and_then(|d| d.status.clone())
                    .unwrap_or_default();
                let ready = d_status.ready_replicas.unwrap_or(0);
                ServiceView {
                    selected: selected.as_ref().is_none_or(|s| s.contains(name.as_str())),
                    url: status.urls.get(&name).and_then(|u| http_url(u)),
                    desired,
                    ready,
                    available: deployment.is_some()
                        && d_status.available_replicas.unwrap_or(0) >= desired.unwrap_or(1),
                    restarts,
                    problem,
                    name,
                }
            })
            .collect()
    }

    fn expiry_of(&self, env: &PreviewEnvironment, now: Timestamp) -> ExpiryView {
        let policy = expiry::expiry_policy(env);
        let created = expiry::created_at(env, now);
        let cap = policy.hard_cap(created);
        let status = env.status.clone().unwrap_or_default();
        let mut extended_by = Vec::new();
        if policy.do_not_expire {
            extended_by.push(format!(
                "the label {} keeps it until its hard cap",
                previewd_core::ttl::DO_NOT_EXPIRE_LABEL
            ));
        } else if policy.auto_extend {
            extended_by.push(format!(
                "a push or an accepted /preview command renews its {} from then (autoExtend)",
                policy.ttl
            ));
        } else {
            extended_by.push(format!(
                "its {} counts from creation: pushes do not extend it (autoExtend is off)",
                policy.ttl
            ));
        }
        extended_by.push(format!(
            "/preview extend [duration] on the pull request, or previewd extend, up to the hard cap ({} after creation)",
            policy.max_lifespan
        ));
        ExpiryView {
            expires_at: status.expires_at.as_ref().map(|t| t.0),
            ttl: policy.ttl.to_string(),
            auto_extend: policy.auto_extend,
            hard_cap_at: Some(cap),
            extended_until: expiry::extended_until(env),
            do_not_expire: policy.do_not_expire,
            idle_sleep_at: condition_of(env, condition::SLEEPING)
                .is_none_or(|c| c.status != "True")
                .then(|| previewd_kube::plan::sleep::idle_sleep_at(env, now, self.idle_sleep_after))
                .flatten(),
            extended_by,
        }
    }
}

fn cost_of(env: &PreviewEnvironment) -> CostView {
    let costs = env
        .status
        .as_ref()
        .and_then(|s| s.costs.clone())
        .unwrap_or_default();
    let budget = env.spec.cost_budget.clone();
    CostView {
        hourly: costs.hourly,
        daily: costs.estimated_daily,
        monthly: costs.monthly,
        to_date: costs.actual_to_date,
        breakdown: costs.breakdown.map(|b| {
            BTreeMap::from([
                ("compute".to_string(), b.compute),
                ("storage".to_string(), b.storage),
                ("network".to_string(), b.network),
            ])
        }),
        budget_policy: budget.as_ref().map(|b| {
            serde_json::to_value(b.policy)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }),
        budget_daily: budget.as_ref().and_then(|b| b.daily),
        budget_total: budget.as_ref().and_then(|b| b.total),
    }
}

fn selection_of(env: &PreviewEnvironment) -> SelectionView {
    let status = env.status.clone().unwrap_or_default();
    let affected = env.spec.service_selection == Some(DeployPolicy::Affected);
    let service_reason = match (&status.selected_services, affected) {
        (_, false) => "every service of the environment (serviceSelection: All)".to_string(),
        (Some(selected), true) if !selected.is_empty() => format!(
            "the services the change affects, their dependents and those always deployed: {}",
            selected.join(", ")
        ),
        (_, true) => "every service: the change could not be read or touches them all".to_string(),
    };
    SelectionView {
        service_policy: if affected { "Affected" } else { "All" }.into(),
        service_reason,
        advice: status.ai.clone(),
        tests: status.test_selection.clone(),
    }
}

/// Environments and sources for the web view's tests.
#[cfg(test)]
pub(crate) mod tests_support {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use kube::runtime::watcher;
    use serde_json::json;

    pub(crate) fn env(name: &str, namespace: &str, extra: serde_json::Value) -> PreviewEnvironment {
        let mut value = json!({
            "apiVersion": "previewd.io/v1alpha1", "kind": "PreviewEnvironment",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "annotations": {"previewd.io/pr-title": format!("Title of {name}")}},
            "spec": {"repository": "acme/shop", "prNumber": 7, "branch": "feature/x",
                     "headSHA": "0123456789abcdef0123456789abcdef01234567", "author": "octocat",
                     "services": [{"name": "web", "image": "web:1"}]},
            "status": {"phase": "Ready", "url": "https://pr-7.preview.example.com/",
                       "expiresAt": "2026-01-01T04:00:00Z", "namespace": "preview-7-shop"}
        });
        json_merge(&mut value, extra);
        serde_json::from_value(value).unwrap()
    }

    fn json_merge(base: &mut serde_json::Value, extra: serde_json::Value) {
        match (base, extra) {
            (serde_json::Value::Object(b), serde_json::Value::Object(e)) => {
                for (k, v) in e {
                    json_merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, e) => *b = e,
        }
    }

    pub(crate) fn source(envs: Vec<PreviewEnvironment>) -> Source {
        let (reader, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for e in envs {
            writer.apply_watcher_event(&watcher::Event::InitApply(e));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let environments = Arc::new(OnceLock::new());
        let _ = environments.set(reader);
        Source {
            environments,
            deployments: kube::runtime::reflector::store().0,
            pods: kube::runtime::reflector::store().0,
            events: kube::runtime::reflector::store().0,
            standby: Arc::new(OnceLock::new()),
            idle_sleep_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::tests_support::{env, source};
    use super::*;
    use serde_json::json;

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().unwrap()
    }

    #[test]
    fn the_list_holds_only_visible_namespaces_filtered_and_sorted() {
        let src = source(vec![
            env(
                "a",
                "team-a",
                json!({"status": {"expiresAt": "2026-01-01T03:00:00Z",
                "costs": {"actualToDate": "$1.00"}}}),
            ),
            env(
                "b",
                "team-a",
                json!({"spec": {"repository": "acme/web", "author": "hubot"},
                "status": {"phase": "Failed", "expiresAt": "2026-01-01T02:00:00Z",
                           "costs": {"actualToDate": "$3.00"}}}),
            ),
            env(
                "c",
                "team-b",
                json!({"status": {"expiresAt": "2026-01-01T01:30:00Z"}}),
            ),
        ]);
        let only_a = Visible::Namespaces(BTreeSet::from(["team-a".to_string()]));
        let list = src.list(&only_a, &ListQuery::default(), now());
        assert_eq!(list.visible, 2);
        assert_eq!(
            list.items
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"],
            "soonest expiry first"
        );
        assert_eq!(list.repositories, ["acme/shop", "acme/web"]);
        let by_cost = ListQuery {
            sort: Some("cost".into()),
            ..ListQuery::default()
        };
        let all = src.list(&Visible::All, &by_cost, now());
        assert_eq!(
            all.items
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        for (query, expected) in [
            (json!({"repo": "ACME/web"}), vec!["b"]),
            (json!({"phase": "ready"}), vec!["c", "a"]),
            (json!({"author": "octocat"}), vec!["c", "a"]),
            (json!({"author": "nobody"}), vec![]),
        ] {
            let q: ListQuery = serde_json::from_value(query.clone()).unwrap();
            let names: Vec<String> = src
                .list(&Visible::All, &q, now())
                .items
                .into_iter()
                .map(|s| s.name)
                .collect();
            assert_eq!(names, expected, "{query}");
        }
        assert!(
            src.detail(&only_a, "team-b", "c", now()).is_none(),
            "an invisible environment is not found"
        );
        assert!(src.detail(&Visible::All, "team-b", "c", now()).is_some());
    }

    #[test]
    fn a_summary_says_why_it_is_not_ready_and_links_only_web_addresses() {
        let asleep = summary(
            &env(
                "a",
                "t",
                json!({
                "metadata": {"annotations": {"previewd.io/pr-url": "javascript:alert(1)"}},
                "status": {"conditions": [
                    {"type": "Sleeping", "status": "True", "reason": "Idle", "message": "",
                     "lastTransitionTime": "2026-01-01T00:30:00Z"},
                    {"type": "Ready", "status": "False", "reason": "Sleeping", "message": "",
                     "lastTransitionTime": "2026-01-01T00:30:00Z"}]}}),
            ),
            now(),
        );
        assert!(asleep.asleep);
        assert_eq!(asleep.reason.as_deref(), Some("Idle"));
        assert_eq!(asleep.pr_url, "https://github.com/acme/shop/pull/7");
        assert_eq!(asleep.age_seconds, 3600);
        assert_eq!(asleep.expires_in_seconds, Some(3 * 3600));
        let q: ListQuery = serde_json::from_value(json!({"phase": "Asleep"})).unwrap();
        assert!(q.matches(&asleep));
    }

    #[test]
    fn failed_tests_and_the_selection_are_in_the_detail() {
        let e = env(
            "a",
            "t",
            json!({
            "spec": {"serviceSelection": "Affected", "costBudget": {"total": "$5", "policy": "sleep"}},
            "status": {
                "selectedServices": ["web"],
                "tests": {"total": 3, "passed": 2, "failed": 1, "skipped": 0, "state": "Failed",
                          "failures": [{"name": "checkout.test_pays", "reason": "expected 200, got 500"}]},
                "costs": {"hourly": "$0.10", "actualToDate": "$0.50",
                          "breakdown": {"compute": "$0.09", "storage": "$0.01", "network": "$0"}}}}),
        );
        let d = source(vec![e.clone()]).detail_of(&e, now());
        let tests = d.tests_detail.unwrap();
        assert_eq!(tests.failures[0].name, "checkout.test_pays");
        assert_eq!(tests.failures[0].message, "expected 200, got 500");
        assert_eq!(d.selection.service_policy, "Affected");
        assert!(d.selection.service_reason.contains("web"));
        assert_eq!(d.cost.budget_policy.as_deref(), Some("sleep"));
        assert_eq!(
            d.cost.breakdown.unwrap()["compute"],
            "$0.09".parse().unwrap()
        );
        assert!(
            d.expiry
                .extended_by
                .iter()
                .any(|l| l.contains("/preview extend"))
        );
        let json = serde_json::to_value(&d.summary).unwrap();
        assert_eq!(json["prNumber"], 7);
        assert_eq!(json["costToDate"], "$0.50");
    }
}
