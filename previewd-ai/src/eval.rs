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
//! * the service directory `src/<name>/` (the dataset defines a service as that directory)
//!   is added to `paths` when [`EvalOptions::service_dir`] is set (the default): the
//!   catalogue is a snapshot of the repository's last commit, while the changes span its
//!   whole history, during which build contexts moved around inside the service
//!   directory. Exclusions still apply. [`EvalReport::catalogue_only`] reports the
//!   score without this widening.
//!
//! Services present at a change's head but missing from the catalogue fall back to
//! `paths = ["src/<name>/"]`. Each change is evaluated against the catalogue restricted to
//! its `services_at_head`.
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

use crate::services::{ChangeInput, CompiledCatalogue, ServicesAdvisor, ServicesError};

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
}

/// One row of `changes.jsonl`, restricted to the fields the evaluation may read.
#[derive(Debug, Deserialize)]
struct Row {
    head: String,
    changed_files: Vec<String>,
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
    dockerignore_patterns: Vec<String>,
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
fn load_catalogue(
    path: &Path,
    service_dir: bool,
) -> Result<BTreeMap<String, CatalogueService>, EvalError> {
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
        let mut paths = e.paths.clone();
        if service_dir {
            paths.push(format!("src/{}/", e.name));
        }
        out.insert(
            e.name.clone(),
            CatalogueService {
                name: e.name,
                image: String::new(),
                paths,
                ignore_paths: ignore,
                ..CatalogueService::default()
            },
        );
    }
    Ok(out)
}

fn catalogue_for(names: &[String], known: &BTreeMap<String, CatalogueService>) -> ServiceCatalogue {
    let mut seen = BTreeSet::new();
    let services = names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| {
            known.get(n).cloned().unwrap_or_else(|| CatalogueService {
                name: n.clone(),
                paths: vec![format!("src/{n}/")],
                ..CatalogueService::default()
            })
        })
        .collect();
    ServiceCatalogue {
        services,
        shared_paths: Vec::new(),
    }
}

/// The async body of [`evaluate_services_with`].
pub async fn evaluate_services_async(
    dataset_dir: &Path,
    provider: Option<Arc<dyn AiProvider>>,
    options: &EvalOptions,
) -> Result<EvalReport, EvalError> {
    let known = load_catalogue(&dataset_dir.join("services.json"), options.service_dir)?;
    let known_narrow = load_catalogue(&dataset_dir.join("services.json"), false)?;
    let changes_path = dataset_dir.join("changes.jsonl");
    let file = std::fs::File::open(&changes_path).map_err(|source| EvalError::Io {
        path: changes_path.clone(),
        source,
    })?;
    let diffs_dir = dataset_dir.join("diffs");

    let mut compiled: BTreeMap<Vec<String>, (Arc<CompiledCatalogue>, Arc<CompiledCatalogue>)> =
        BTreeMap::new();
    let mut det = Counter::default();
    let mut narrow = Counter::default();
    let mut model = Counter::default();
    let mut model_calls: BTreeMap<String, usize> = BTreeMap::new();
    let mut diffs_available = 0;

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
        let (cat, cat_narrow) = match compiled.get(&key) {
            Some(c) => c.clone(),
            None => {
                let c = (
                    Arc::new(CompiledCatalogue::new(&catalogue_for(&key, &known))?),
                    Arc::new(CompiledCatalogue::new(&catalogue_for(&key, &known_narrow))?),
                );
                compiled.insert(key, c.clone());
                c
            }
        };
        let truth: BTreeSet<String> = row.affected_services.iter().cloned().collect();
        let change = ChangeInput {
            files: row.changed_files,
            diff,
            ..ChangeInput::default()
        };
        let predicted = cat.affected(&change);
        det.add(&predicted.services, &truth);
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
