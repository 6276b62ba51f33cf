//! Evaluation of the affected-services advisor on a labelled dataset.
//!
//! A dataset directory has the layout of `shared/datasets/microservices-demo/`:
//! `changes.jsonl` (one change per line), `services.json` (the service catalogue) and
//! `diffs/<head>.diff` for a sample of the changes.
//!
//! The evaluation reads only `changed_files`, `services_at_head`, the catalogue and the
//! diffs (located by `head`), and uses `affected_services` for scoring only. Label-bearing fields (`evidence`,
//! `services_added`, `services_removed`, `affects_no_service`) are never read: the row
//! type below does not even declare them.
//!
//! # Catalogue conversion
//!
//! Each `services.json` entry becomes a [`CatalogueService`]:
//!
//! * `paths` → `paths`;
//! * `dockerignore_patterns` (relative to `context`) → `ignore_paths`, prefixed with the
//!   context; `!<dockerfile>` is appended because Docker always sends the Dockerfile even
//!   when the `.dockerignore` names it;
//! * when [`EvalOptions::service_dir`] is set (the default) each service is widened to
//!   the build context it had at the change: the catalogue is a snapshot of the
//!   repository's last commit, while the changes span its whole history, during which
//!   `COPY` lists changed and build contexts moved. A build reads nothing outside its
//!   context, so the snapshot's context is added to `paths`; for the changes before the
//!   service's Dockerfile moved to the snapshot's path (a change that adds it and deletes
//!   another Dockerfile of the service), and for contexts outside the service directory,
//!   the service directory `src/<name>/` (the dataset defines a service as that
//!   directory) is added instead: the context followed the move. Exclusions still apply.
//!   [`EvalReport::catalogue_only`] reports the score without this widening.
//!
//! Services present at a change's head but missing from the catalogue fall back to
//! `paths = ["src/<name>/"]`. Each change is evaluated against the catalogue restricted to
//! its `services_at_head`.
//!
//! # Build definitions
//!
//! Each entry also becomes a [`ServiceBuild`] (context, Dockerfile, `.dockerignore`,
//! `defined_in`, build arguments), so the build-definition rules can read the diffs of
//! compose, skaffold, `.env`, Dockerfile and `.dockerignore` files. The dataset gives
//! build arguments already resolved, not the `${VAR}` they were written with, so an
//! argument's name stands for the variable it reads (the usual `ARG_NAME: ${ARG_NAME}`
//! idiom); a compose-defined service reads the `.env` beside its compose file. Changes
//! without a diff are matched by path only, as the operator does when the diff is
//! unavailable.
//!
//! # Error breakdown
//!
//! [`EvalReport::breakdown`] groups the false alarms (predicted, not affected) and misses
//! (affected, not predicted) of the headline mode by cause: for a false alarm, the kind of
//! evidence that selected the service; for a miss, the kind of changed file that most
//! likely carried the change (the labels' own evidence is never read). See [`Cause`].
//!
//! # Scores
//!
//! Micro-averaged over changes: TP, FP and FN are summed over all changes;
//! precision = TP/(TP+FP) (1.0 when nothing was predicted), recall = TP/(TP+FN) (1.0 when
//! nothing was to be found), exact-set = share of changes whose predicted set equals the
//! truth (two empty sets match).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use previewd_core::ai::{AiProvider, DecisionSource};
use previewd_core::{CatalogueService, ServiceCatalogue};
use serde::{Deserialize, Serialize};

use crate::builddefs::{self, BuildDefinitions, FileKind, ServiceBuild};
use crate::services::{
    AffectedServices, ChangeInput, CompiledCatalogue, Evidence, ServicesAdvisor, ServicesError,
};

/// Errors of the evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A dataset file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A dataset file is not valid JSON of the expected shape.
    #[error("parsing {path} (line {line}): {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line, 0 for whole-file JSON.
        line: usize,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The converted catalogue is invalid.
    #[error("catalogue: {0}")]
    Catalogue(#[from] ServicesError),
    /// The evaluation thread failed.
    #[error("evaluation runtime: {0}")]
    Runtime(String),
}

impl EvalError {
    /// Short static category.
    pub fn category(&self) -> &'static str {
        match self {
            EvalError::Io { .. } => "io",
            EvalError::Parse { .. } => "parse",
            EvalError::Catalogue(_) => "catalogue",
            EvalError::Runtime(_) => "runtime",
        }
    }
}

/// Which changes to evaluate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sample {
    /// Every change in `changes.jsonl`.
    #[default]
    All,
    /// Only the changes with a file in `diffs/`.
    DiffSample,
}

/// Evaluation options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalOptions {
    /// Which changes to evaluate.
    pub sample: Sample,
    /// Add the service directory `src/<name>/` to each catalogue entry (see the module
    /// documentation).
    pub service_dir: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            sample: Sample::All,
            service_dir: true,
        }
    }
}

/// Counts and scores of one mode.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModeScores {
    /// Changes evaluated.
    pub changes: usize,
    /// True positives (service, change) pairs.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// Micro-averaged precision.
    pub precision: f64,
    /// Micro-averaged recall.
    pub recall: f64,
    /// Share of changes whose predicted set equals the truth.
    pub exact_set: f64,
}

#[derive(Default)]
struct Counter {
    changes: usize,
    tp: usize,
    fp: usize,
    fn_: usize,
    exact: usize,
}

impl Counter {
    fn add(&mut self, predicted: &BTreeSet<String>, truth: &BTreeSet<String>) {
        self.changes += 1;
        self.tp += predicted.intersection(truth).count();
        self.fp += predicted.difference(truth).count();
        self.fn_ += truth.difference(predicted).count();
        if predicted == truth {
            self.exact += 1;
        }
    }

    fn scores(&self) -> ModeScores {
        let ratio = |num: usize, den: usize| {
            if den == 0 {
                1.0
            } else {
                num as f64 / den as f64
            }
        };
        ModeScores {
            changes: self.changes,
            tp: self.tp,
            fp: self.fp,
            fn_: self.fn_,
            precision: ratio(self.tp, self.tp + self.fp),
            recall: ratio(self.tp, self.tp + self.fn_),
            exact_set: ratio(self.exact, self.changes),
        }
    }
}

/// The result of an evaluation. The first four fields are the headline (deterministic+model
/// when a provider was given, else deterministic); the rest is the breakdown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Changes evaluated.
    pub changes: usize,
    /// Micro-averaged precision of the headline mode.
    pub precision: f64,
    /// Micro-averaged recall of the headline mode.
    pub recall: f64,
    /// Exact-set match of the headline mode.
    pub exact_set: f64,
    /// The headline mode: `deterministic` or `deterministic+model`.
    pub mode: String,
    /// Scores of the deterministic rule.
    pub deterministic: ModeScores,
    /// Scores of the deterministic rule without the service-directory widening.
    pub catalogue_only: ModeScores,
    /// Scores with the model, when a provider was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_model: Option<ModeScores>,
    /// With a model: how many changes it was asked about, and fallbacks by reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub model_calls: BTreeMap<String, usize>,
    /// Changes for which a diff was available.
    pub diffs_available: usize,
    /// Changes whose build-definition files were matched by path only (no diff, or a
    /// diff the rules could not read for them).
    pub build_definition_fallbacks: usize,
    /// Errors of the headline mode grouped by cause.
    pub breakdown: Breakdown,
}

/// Why a service was wrongly selected, or missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A source path: for a false alarm, a catalogue path (or the service-directory
    /// widening) claims a file the build does not read; for a miss, a changed file the
    /// catalogue does not list.
    SourcePathNotInCatalogue,
    /// A compose or skaffold entry, or a Dockerfile.
    BuildDefinition,
    /// A variable of an env file, or a build argument.
    EnvBuildArgument,
    /// A shared path that selects every service.
    SharedFile,
    /// A `.dockerignore`.
    IgnoreRules,
    /// A renamed or moved file.
    Rename,
    /// A `dependsOn` edge.
    Dependency,
    /// The model added it.
    Model,
    /// Every service was assumed affected (incomplete change list).
    AssumedAll,
}

impl Cause {
    /// Human-readable label.
    pub fn label(self) -> &'static str {
        match self {
            Cause::SourcePathNotInCatalogue => "source path not in catalogue",
            Cause::BuildDefinition => "build definition",
            Cause::EnvBuildArgument => "env/build argument",
            Cause::SharedFile => "shared file",
            Cause::IgnoreRules => "ignore rules",
            Cause::Rename => "rename",
            Cause::Dependency => "dependency",
            Cause::Model => "model",
            Cause::AssumedAll => "assumed all",
        }
    }
}

/// Count of (change, service) errors of one cause, with a few examples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CauseCount {
    /// (change, service) pairs.
    pub count: usize,
    /// Up to [`MAX_EXAMPLES`] examples: `<head8> <service>: <path or detail>`.
    pub examples: Vec<String>,
}

/// Examples kept per cause.
pub const MAX_EXAMPLES: usize = 3;

/// Errors grouped by cause.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    /// Predicted but not affected.
    pub false_alarms: BTreeMap<Cause, CauseCount>,
    /// Affected but not predicted.
    pub misses: BTreeMap<Cause, CauseCount>,
}

impl Breakdown {
    fn add(map: &mut BTreeMap<Cause, CauseCount>, cause: Cause, example: String) {
        let c = map.entry(cause).or_default();
        c.count += 1;
        if c.examples.len() < MAX_EXAMPLES {
            c.examples.push(example);
        }
    }

    /// The breakdown as text, one cause per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (title, map) in [
            ("false alarms", &self.false_alarms),
            ("misses", &self.misses),
        ] {
            let total: usize = map.values().map(|c| c.count).sum();
            out.push_str(&format!(
                "{title} by cause ({total} change/service pairs):\n"
            ));
            if map.is_empty() {
                out.push_str("  (none)\n");
            }
            for (cause, c) in map {
                out.push_str(&format!("  {:<30} {:>5}", cause.label(), c.count));
                if !c.examples.is_empty() {
                    out.push_str(&format!("   e.g. {}", c.examples.join("; ")));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// One row of `changes.jsonl`, restricted to the fields the evaluation may read.
#[derive(Debug, Deserialize)]
struct Row {
    head: String,
    changed_files: Vec<String>,
    #[serde(default)]
    file_status: Vec<String>,
    services_at_head: Vec<String>,
    /// Scoring only.
    affected_services: Vec<String>,
}

/// One entry of `services.json`.
#[derive(Debug, Deserialize)]
struct DatasetService {
    name: String,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    dockerignore: Option<String>,
    #[serde(default)]
    dockerignore_patterns: Vec<String>,
    #[serde(default)]
    build_args: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    defined_in: Option<String>,
}

/// Evaluates the deterministic rule (and the model, when `provider` is given) on a dataset
/// directory with default options. Safe to call from inside or outside a Tokio runtime.
pub fn evaluate_services(
    dataset_dir: &Path,
    provider: Option<Arc<dyn AiProvider>>,
) -> Result<EvalReport, EvalError> {
    evaluate_services_with(dataset_dir, provider, &EvalOptions::default())
}

/// [`evaluate_services`] with options.
pub fn evaluate_services_with(
    dataset_dir: &Path,
    provider: Option<Arc<dyn AiProvider>>,
    options: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    let dir = dataset_dir.to_path_buf();
    let options = options.clone();
    // A dedicated thread with its own runtime works whether or not the caller is async.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EvalError::Runtime(e.to_string()))?;
        rt.block_on(evaluate_services_async(&dir, provider, &options))
    })
    .join()
    .map_err(|_| EvalError::Runtime("evaluation thread panicked".to_owned()))?
}

/// Converts `services.json` into catalogue services keyed by name.
fn load_catalogue(path: &Path) -> Result<Known, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let entries: Vec<DatasetService> =
        serde_json::from_str(&text).map_err(|source| EvalError::Parse {
            path: path.to_path_buf(),
            line: 0,
            source,
        })?;
    let mut out = BTreeMap::new();
    for e in entries {
        let context = e
            .context
            .as_deref()
            .map(|c| c.trim_matches('/'))
            .filter(|c| !c.is_empty() && *c != ".");
        let in_context = |p: &str| match context {
            Some(ctx) => format!("{ctx}/{}", p.trim_start_matches('/')),
            None => p.trim_start_matches('/').to_owned(),
        };
        let mut ignore: Vec<String> = e
            .dockerignore_patterns
            .iter()
            .map(|p| match p.strip_prefix('!') {
                Some(rest) => format!("!{}", in_context(rest.trim())),
                None => in_context(p.trim()),
            })
            .collect();
        if !ignore.is_empty()
            && let Some(df) = &e.dockerfile
        {
            ignore.push(format!("!{df}"));
        }
        let paths = e.paths.clone();
        let build = e.dockerfile.as_ref().map(|df| {
            let defined_in = e
                .defined_in
                .clone()
                .filter(|d| builddefs::kind_of(d, None).is_some());
            let env_files = match &defined_in {
                Some(d) if builddefs::kind_of(d, None) == Some(FileKind::Compose) => {
                    vec![builddefs::join(builddefs::parent(d), ".env").unwrap_or_default()]
                }
                _ => Vec::new(),
            };
            let args: BTreeMap<String, Option<String>> = e
                .build_args
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), Some(v))
                })
                .collect();
            ServiceBuild {
                name: e.name.clone(),
                defined_in,
                key: None,
                context: context.unwrap_or("").to_owned(),
                dockerfile: df.clone(),
                dockerignore: e.dockerignore.clone(),
                // resolved values only: the argument's name stands for its variable
                variables: args.keys().cloned().collect(),
                args,
                target: None,
                env_files,
                images: Vec::new(),
            }
        });
        out.insert(
            e.name.clone(),
            (
                CatalogueService {
                    name: e.name,
                    image: String::new(),
                    paths,
                    ignore_paths: ignore,
                    ..CatalogueService::default()
                },
                build,
            ),
        );
    }
    Ok(out)
}

type Known = BTreeMap<String, (CatalogueService, Option<ServiceBuild>)>;

fn catalogue_for(names: &[String], known: &Known) -> Result<CompiledCatalogue, ServicesError> {
    let mut seen = BTreeSet::new();
    let mut builds = BuildDefinitions::default();
    let services = names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| match known.get(n) {
            Some((svc, build)) => {
                builds.services.extend(build.clone());
                svc.clone()
            }
            None => CatalogueService {
                name: n.clone(),
                paths: vec![format!("src/{n}/")],
                ..CatalogueService::default()
            },
        })
        .collect();
    let catalogue = ServiceCatalogue {
        services,
        shared_paths: Vec::new(),
    };
    Ok(CompiledCatalogue::new(&catalogue)?.with_build_definitions(builds))
}

/// The cause of a false alarm: the first evidence that selected the service.
fn false_alarm_cause(value: &AffectedServices, service: &str) -> (Cause, String) {
    let Some(first) = value.evidence.get(service).and_then(|e| e.first()) else {
        return (Cause::SourcePathNotInCatalogue, String::new());
    };
    match first {
        Evidence::Path { path } => {
            let cause = match builddefs::kind_of(path, None) {
                Some(FileKind::DockerIgnore) => Cause::IgnoreRules,
                Some(FileKind::EnvFile) => Cause::EnvBuildArgument,
                Some(_) => Cause::BuildDefinition,
                None => Cause::SourcePathNotInCatalogue,
            };
            (cause, path.clone())
        }
        Evidence::SharedPath { path } => (Cause::SharedFile, path.clone()),
        Evidence::BuildDefinition { path, detail } => {
            (Cause::BuildDefinition, format!("{path}: {detail}"))
        }
        Evidence::BuildArgument { path, variables } => (
            Cause::EnvBuildArgument,
            format!("{path}: {}", variables.join(", ")),
        ),
        Evidence::IgnoreFile { path, pattern } => {
            (Cause::IgnoreRules, format!("{path}: {pattern}"))
        }
        Evidence::Renamed { from, to } => (Cause::Rename, format!("{from} -> {to}")),
        Evidence::DependsOn { service } => (Cause::Dependency, service.clone()),
        Evidence::Model { .. } => (Cause::Model, String::new()),
        Evidence::AllServices { reason } => (Cause::AssumedAll, reason.clone()),
    }
}

/// The likely cause of a miss, from the change's files (never from the labels'
/// evidence): a renamed file, then an ignore file, an env file, a build definition, else a
/// source path the catalogue does not list.
fn miss_cause(files: &[String], status: &[String], service: &str) -> (Cause, String) {
    let base = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    let deleted: BTreeSet<String> = files
        .iter()
        .zip(status)
        .filter(|(_, s)| s.as_str() == "D")
        .map(|(f, _)| base(f))
        .collect();
    let renamed = files
        .iter()
        .zip(status)
        .find(|(f, s)| s.as_str() == "A" && deleted.contains(&base(f)) && f.contains(service));
    if let Some((f, _)) = renamed {
        return (Cause::Rename, f.clone());
    }
    let mut best: Option<(u8, Cause, &String)> = None;
    for f in files {
        let (rank, cause) = match builddefs::kind_of(f, None) {
            Some(FileKind::DockerIgnore) => (0, Cause::IgnoreRules),
            Some(FileKind::EnvFile) => (1, Cause::EnvBuildArgument),
            Some(FileKind::Compose) | Some(FileKind::Skaffold) | Some(FileKind::HelmValues) => {
                (2, Cause::BuildDefinition)
            }
            Some(FileKind::Dockerfile) if f.contains(service) => (2, Cause::BuildDefinition),
            _ => continue,
        };
        if best.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            best = Some((rank, cause, f));
        }
    }
    match best {
        Some((_, cause, f)) => (cause, f.clone()),
        None => {
            let f = files
                .iter()
                .find(|f| f.contains(service))
                .or_else(|| files.first())
                .cloned()
                .unwrap_or_default();
            (Cause::SourcePathNotInCatalogue, f)
        }
    }
}

fn record_errors(
    breakdown: &mut Breakdown,
    head: &str,
    row_files: &[String],
    row_status: &[String],
    value: &AffectedServices,
    truth: &BTreeSet<String>,
) {
    let short: String = head.chars().take(8).collect();
    for s in value.services.difference(truth) {
        let (cause, what) = false_alarm_cause(value, s);
        Breakdown::add(
            &mut breakdown.false_alarms,
            cause,
            format!("{short} {s}: {what}"),
        );
    }
    for s in truth.difference(&value.services) {
        let (cause, what) = miss_cause(row_files, row_status, s);
        Breakdown::add(&mut breakdown.misses, cause, format!("{short} {s}: {what}"));
    }
}

/// For each catalogue service, the indices of the changes that moved its Dockerfile to the
/// catalogue's path: the change adds that Dockerfile and deletes another `Dockerfile*` of
/// the service's directory.
fn dockerfile_moves(rows: &[Row], known: &Known) -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        for (name, (_, build)) in known {
            let Some(b) = build else { continue };
            let dir = format!("src/{name}/");
            let added = row
                .changed_files
                .iter()
                .zip(&row.file_status)
                .any(|(f, s)| *f == b.dockerfile && s == "A");
            let removed_other = row
                .changed_files
                .iter()
                .zip(&row.file_status)
                .any(|(f, s)| {
                    s == "D"
                        && *f != b.dockerfile
                        && f.starts_with(&dir)
                        && f.rsplit('/')
                            .next()
                            .is_some_and(|base| base.starts_with("Dockerfile"))
                });
            if added && removed_other {
                out.entry(name.clone()).or_default().push(i);
            }
        }
    }
    out
}

/// The catalogue with each service widened for one change: to its directory `src/<name>/`
/// before its Dockerfile moved to the catalogue's path (or when its context lies outside
/// that directory), else to its build context (a build reads nothing outside it).
fn widen(names: &[String], before_move: &[bool], known: &Known, enabled: bool) -> Known {
    let mut out = known.clone();
    if !enabled {
        return out;
    }
    for (name, moved) in names.iter().zip(before_move) {
        let Some((svc, build)) = out.get_mut(name) else {
            continue;
        };
        let dir = format!("src/{name}/");
        let extra = match build {
            Some(b) if !moved && format!("{}/", b.context).starts_with(&dir) => {
                format!("{}/", b.context)
            }
            _ => dir,
        };
        if !svc.paths.contains(&extra) {
            svc.paths.push(extra);
        }
    }
    out
}

/// The async body of [`evaluate_services_with`].
pub async fn evaluate_services_async(
    dataset_dir: &Path,
    provider: Option<Arc<dyn AiProvider>>,
    options: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    let known_narrow = load_catalogue(&dataset_dir.join("services.json"))?;
    let changes_path = dataset_dir.join("changes.jsonl");
    let file = std::fs::File::open(&changes_path).map_err(|source| EvalError::Io {
        path: changes_path.clone(),
        source,
    })?;
    let diffs_dir = dataset_dir.join("diffs");
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| EvalError::Io {
            path: changes_path.clone(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(&line).map_err(|source| EvalError::Parse {
            path: changes_path.clone(),
            line: i + 1,
            source,
        })?;
        rows.push(row);
    }
    let moves = dockerfile_moves(&rows, &known_narrow);

    type Pair = (Arc<CompiledCatalogue>, Arc<CompiledCatalogue>);
    let mut compiled: BTreeMap<(Vec<String>, Vec<bool>), Pair> = BTreeMap::new();
    let mut breakdown = Breakdown::default();
    let mut model_breakdown = Breakdown::default();
    let mut build_definition_fallbacks = 0;
    let mut det = Counter::default();
    let mut narrow = Counter::default();
    let mut model = Counter::default();
    let mut model_calls: BTreeMap<String, usize> = BTreeMap::new();
    let mut diffs_available = 0;

    for (index, row) in rows.into_iter().enumerate() {
        let diff_path = diffs_dir.join(format!("{}.diff", row.head));
        let diff = if row.head.chars().all(|c| c.is_ascii_hexdigit()) {
            std::fs::read_to_string(&diff_path).ok()
        } else {
            None
        };
        if options.sample == Sample::DiffSample && diff.is_none() {
            continue;
        }
        if diff.is_some() {
            diffs_available += 1;
        }
        let mut key = row.services_at_head.clone();
        key.sort();
        key.dedup();
        // before a service's Dockerfile moved to where the catalogue has it, its build was
        // defined elsewhere in its directory: widen to the directory then
        let before_move: Vec<bool> = key
            .iter()
            .map(|n| moves.get(n).is_some_and(|m| m.iter().any(|&at| at > index)))
            .collect();
        let (cat, cat_narrow) = match compiled.get(&(key.clone(), before_move.clone())) {
            Some(c) => c.clone(),
            None => {
                let widened = widen(&key, &before_move, &known_narrow, options.service_dir);
                let c = (
                    Arc::new(catalogue_for(&key, &widened)?),
                    Arc::new(catalogue_for(&key, &known_narrow)?),
                );
                compiled.insert((key, before_move), c.clone());
                c
            }
        };
        let truth: BTreeSet<String> = row.affected_services.iter().cloned().collect();
        let change = ChangeInput {
            files: row.changed_files.clone(),
            diff,
            ..ChangeInput::default()
        };
        let predicted = cat.affected(&change);
        det.add(&predicted.services, &truth);
        if predicted
            .notes
            .iter()
            .any(|n| n.ends_with("matched by path only"))
        {
            build_definition_fallbacks += 1;
        }
        record_errors(
            &mut breakdown,
            &row.head,
            &row.changed_files,
            &row.file_status,
            &predicted,
            &truth,
        );
        narrow.add(&cat_narrow.affected(&change).services, &truth);

        if let Some(p) = &provider {
            let advisor = ServicesAdvisor::from_compiled(cat.clone(), Some(p.clone()));
            let decision = advisor.advise(&change).await;
            let key = match &decision.source {
                DecisionSource::Deterministic => "skipped".to_owned(),
                DecisionSource::Model { .. } => "answered".to_owned(),
                DecisionSource::Fallback { reason, .. } => format!("fallback:{reason}"),
            };
            *model_calls.entry(key).or_default() += 1;
            model.add(&decision.value.services, &truth);
            record_errors(
                &mut model_breakdown,
                &row.head,
                &row.changed_files,
                &row.file_status,
                &decision.value,
                &truth,
            );
        }
    }

    let deterministic = det.scores();
    let with_model = provider.as_ref().map(|_| model.scores());
    let headline = with_model.clone().unwrap_or_else(|| deterministic.clone());
    Ok(EvalReport {
        changes: headline.changes,
        precision: headline.precision,
        recall: headline.recall,
        exact_set: headline.exact_set,
        mode: if with_model.is_some() {
            "deterministic+model".to_owned()
        } else {
            "deterministic".to_owned()
        },
        deterministic,
        catalogue_only: narrow.scores(),
        with_model,
        model_calls,
        diffs_available,
        build_definition_fallbacks,
        breakdown: if provider.is_some() {
            model_breakdown
        } else {
            breakdown
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counter_micro_averages() {
        let mut c = Counter::default();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
        c.add(&s(&["a", "b"]), &s(&["a"]));
        c.add(&s(&[]), &s(&[]));
        c.add(&s(&["c"]), &s(&["c", "d"]));
        let m = c.scores();
        assert_eq!((m.tp, m.fp, m.fn_), (2, 1, 1));
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.exact_set - 1.0 / 3.0).abs() < 1e-12);
    }
}
