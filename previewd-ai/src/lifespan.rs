//! Lifespan (TTL) prediction and its evaluation on pull-request histories.
//!
//! # The rule
//!
//! The TTL is the time an environment lives after its last activity (the operator extends
//! the expiry on every push; see `previewd_core::ExpiryPolicy`). The predictor:
//!
//! 1. **Base.** The EWMA (α = [`LifespanConfig::ewma_alpha`], oldest to newest) of
//!    time-to-close of the author's past environments when there are at least
//!    [`LifespanConfig::min_samples`] of them, else the repository's, else
//!    [`LifespanConfig::default_ttl`] (4 h). The EWMA of the time between pushes, times
//!    [`LifespanConfig::push_gap_headroom`], is a floor: an environment should survive the
//!    usual pause between two pushes.
//! 2. **Size.** Larger PRs take longer to review: the base is multiplied by
//!    `1 + 0.25·log2(1 + lines/200) + 0.1·log2(1 + files/10)`, capped at 2.
//! 3. **Clamp** to [`LifespanConfig::min_ttl`] ..= [`LifespanConfig::max_ttl`] (1 h ..= 7 d).
//! 4. **Working hours.** The expiry (`at + ttl`, in [`LifespanConfig::time_zone`]) must not
//!    fall outside working hours (Monday to Friday, 09:00–18:00 by default): if it would,
//!    it moves to the next working day at [`LifespanConfig::resume_hour`] (10:00), so a PR
//!    opened on Friday evening keeps its environment until Monday 10:00. The 7 d clamp
//!    still wins.
//!
//! # The evaluation
//!
//! [`evaluate_policy`] replays PR histories (opened, pushes, closed) against a TTL policy,
//! with expiry extended on every push: an environment is created at the opening, expires
//! at `last activity + ttl`, and a push that finds it expired counts as a **premature
//! deletion** (the environment must be recreated, which is what users hate). A PR whose
//! environment expired before it closed counts in `prs_expired_before_close`. **Idle
//! hours** are, for each stretch of an environment's life, the hours from its last push
//! (or creation) to its deletion (by expiry or by the PR closing): what a longer TTL costs.
//! The policy sees only PRs that closed before the moment it predicts for.
//!
//! [`derive_histories_from_changes`] builds histories from a dataset's `changes.jsonl`
//! (see its documentation for what can and cannot be derived).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use previewd_core::Ttl;
use serde::{Deserialize, Serialize};

use crate::history::EnvironmentRecord;

const HOUR: u64 = 3600;

/// Settings of the lifespan predictor.
#[derive(Clone, Debug, PartialEq)]
pub struct LifespanConfig {
    /// TTL without history: 4 h.
    pub default_ttl: Duration,
    /// Lower clamp: 1 h.
    pub min_ttl: Duration,
    /// Upper clamp: 7 d.
    pub max_ttl: Duration,
    /// Time zone of the team's working hours.
    pub time_zone: TimeZone,
    /// Working days.
    pub work_days: Vec<Weekday>,
    /// First working hour (inclusive), local time.
    pub work_start_hour: i8,
    /// End of working hours (exclusive), local time.
    pub work_end_hour: i8,
    /// Hour of the next working day an off-hours expiry moves to.
    pub resume_hour: i8,
    /// EWMA smoothing factor (weight of the newest sample).
    pub ewma_alpha: f64,
    /// Samples needed before author or repository history is used.
    pub min_samples: usize,
    /// Factor applied to the EWMA of the time between pushes.
    pub push_gap_headroom: f64,
}

impl Default for LifespanConfig {
    fn default() -> Self {
        LifespanConfig {
            default_ttl: Duration::from_secs(4 * HOUR),
            min_ttl: Duration::from_secs(HOUR),
            max_ttl: Duration::from_secs(7 * 24 * HOUR),
            time_zone: TimeZone::UTC,
            work_days: vec![
                Weekday::Monday,
                Weekday::Tuesday,
                Weekday::Wednesday,
                Weekday::Thursday,
                Weekday::Friday,
            ],
            work_start_hour: 9,
            work_end_hour: 18,
            resume_hour: 10,
            ewma_alpha: 0.3,
            min_samples: 3,
            push_gap_headroom: 1.5,
        }
    }
}

/// Errors of the lifespan module.
#[derive(Debug, thiserror::Error)]
pub enum LifespanError {
    /// The time zone name is unknown.
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
    /// A dataset file could not be read or parsed.
    #[error("dataset: {0}")]
    Dataset(String),
}

impl LifespanError {
    /// Short static category.
    pub fn category(&self) -> &'static str {
        match self {
            LifespanError::TimeZone(_) => "time_zone",
            LifespanError::Dataset(_) => "dataset",
        }
    }
}

impl LifespanConfig {
    /// Uses an IANA time zone, e.g. `Europe/Berlin`.
    pub fn with_time_zone_name(mut self, name: &str) -> Result<Self, LifespanError> {
        self.time_zone =
            TimeZone::get(name).map_err(|_| LifespanError::TimeZone(name.to_owned()))?;
        Ok(self)
    }
}

/// What is known about the PR when predicting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrSize {
    /// Files changed.
    pub files: usize,
    /// Lines added plus deleted.
    pub lines: usize,
}

/// Exponentially weighted moving average.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ewma {
    value: f64,
    samples: usize,
}

impl Ewma {
    /// Adds a sample (seconds).
    pub fn observe(&mut self, x: f64, alpha: f64) {
        if self.samples == 0 {
            self.value = x;
        } else {
            self.value = alpha * x + (1.0 - alpha) * self.value;
        }
        self.samples += 1;
    }

    /// The average, when at least one sample was seen.
    pub fn value(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.value)
    }

    /// Samples seen.
    pub fn samples(&self) -> usize {
        self.samples
    }
}

/// Time-to-close and push-gap averages of one author or repository.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HistoryStats {
    /// EWMA of time from opening to close, seconds.
    pub time_to_close: Ewma,
    /// EWMA of the time between consecutive activities (open, pushes), seconds.
    pub push_gap: Ewma,
}

impl HistoryStats {
    /// Folds closed PR lifecycles in; they should come oldest first.
    pub fn observe(
        &mut self,
        opened_at: Timestamp,
        pushes: &[Timestamp],
        closed_at: Timestamp,
        alpha: f64,
    ) {
        let life = closed_at.duration_since(opened_at).as_secs_f64();
        if life >= 0.0 {
            self.time_to_close.observe(life, alpha);
        }
        let mut prev = opened_at;
        for &p in pushes {
            if p > prev && p <= closed_at {
                self.push_gap
                    .observe(p.duration_since(prev).as_secs_f64(), alpha);
                prev = p;
            }
        }
    }

    /// Stats from stored records (any order); records still open are skipped.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = &'a EnvironmentRecord>,
        alpha: f64,
    ) -> Self {
        let mut closed: Vec<&EnvironmentRecord> = records
            .into_iter()
            .filter(|r| r.closed_at.is_some())
            .collect();
        closed.sort_by_key(|r| r.closed_at);
        let mut stats = HistoryStats::default();
        for r in closed {
            if let Some(c) = r.closed_at {
                stats.observe(r.opened_at, &r.pushes, c, alpha);
            }
        }
        stats
    }
}

/// Where the base of a prediction came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LifespanBasis {
    /// The author's history.
    Author,
    /// The repository's history.
    Repository,
    /// No usable history: the default TTL.
    Default,
}

/// A predicted TTL.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifespanPrediction {
    /// Time to live after `at`.
    pub ttl: Ttl,
    /// `at + ttl`.
    pub expires_at: Timestamp,
    /// Where the base came from.
    pub basis: LifespanBasis,
    /// The expiry was moved out of off-hours.
    pub moved_to_working_hours: bool,
    /// Human-readable derivation.
    pub explanation: String,
}

fn size_factor(size: &PrSize) -> f64 {
    let lines = 0.25 * (1.0 + size.lines as f64 / 200.0).log2();
    let files = 0.1 * (1.0 + size.files as f64 / 10.0).log2();
    (1.0 + lines + files).min(2.0)
}

/// Predicts the TTL of an environment at time `at` (its creation or latest push).
pub fn predict_ttl(
    config: &LifespanConfig,
    size: &PrSize,
    author: &HistoryStats,
    repo: &HistoryStats,
    at: Timestamp,
) -> LifespanPrediction {
    let pick = |s: &HistoryStats| {
        (s.time_to_close.samples() >= config.min_samples).then(|| {
            let close = s.time_to_close.value().unwrap_or(0.0);
            let gap = s.push_gap.value().unwrap_or(0.0) * config.push_gap_headroom;
            close.max(gap)
        })
    };
    let (base, basis) = match (pick(author), pick(repo)) {
        (Some(b), _) => (b, LifespanBasis::Author),
        (None, Some(b)) => (b, LifespanBasis::Repository),
        (None, None) => (config.default_ttl.as_secs_f64(), LifespanBasis::Default),
    };
    let factor = size_factor(size);
    let raw = base * factor;
    let clamped = raw.clamp(config.min_ttl.as_secs_f64(), config.max_ttl.as_secs_f64());
    let ttl_secs = clamped.round() as i64;
    let mut expires_at = at
        .checked_add(SignedDuration::from_secs(ttl_secs))
        .unwrap_or(Timestamp::MAX);
    let mut moved = false;
    if let Some(next) = next_working_time(config, expires_at) {
        let cap = at
            .checked_add(SignedDuration::from_secs(config.max_ttl.as_secs() as i64))
            .unwrap_or(Timestamp::MAX);
        let target = next.min(cap);
        if target > expires_at {
            expires_at = target;
            moved = true;
        }
    }
    let secs = expires_at.duration_since(at).as_secs().max(1) as u64;
    let ttl = Ttl::from_secs(secs).unwrap_or(Ttl::DEFAULT);
    let explanation = format!(
        "base {:.1}h from {:?} history, size factor {:.2}, clamped to {:.1}h{}",
        base / 3600.0,
        basis,
        factor,
        clamped / 3600.0,
        if moved {
            format!(", moved out of off-hours to {:.1}h", secs as f64 / 3600.0)
        } else {
            String::new()
        }
    );
    LifespanPrediction {
        ttl,
        expires_at,
        basis,
        moved_to_working_hours: moved,
        explanation,
    }
}

/// When `t` is outside working hours, the next working day's resume time; else `None`.
fn next_working_time(config: &LifespanConfig, t: Timestamp) -> Option<Timestamp> {
    let local: Zoned = t.to_zoned(config.time_zone.clone());
    let is_work_day = |d: Weekday| config.work_days.contains(&d);
    let hour = local.hour();
    if is_work_day(local.weekday()) && hour >= config.work_start_hour && hour < config.work_end_hour
    {
        return None;
    }
    if config.work_days.is_empty() {
        return None;
    }
    let mut date = local.date();
    if !(is_work_day(date.weekday()) && hour < config.work_start_hour) {
        date = date.tomorrow().ok()?;
    }
    for _ in 0..8 {
        if is_work_day(date.weekday()) {
            let dt = date.at(config.resume_hour, 0, 0, 0);
            return dt
                .to_zoned(config.time_zone.clone())
                .ok()
                .map(|z| z.timestamp());
        }
        date = date.tomorrow().ok()?;
    }
    None
}

// ------------------------------------------------------------------------------------------
// Evaluation
// ------------------------------------------------------------------------------------------

/// One PR's life, as replayed by the evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrHistory {
    /// Repository.
    pub repo: String,
    /// PR number.
    pub pr: u64,
    /// Author, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// When the PR (and its environment) opened.
    pub opened_at: Timestamp,
    /// Pushes after opening, oldest first.
    #[serde(default)]
    pub pushes: Vec<Timestamp>,
    /// When the PR closed.
    pub closed_at: Timestamp,
    /// Files changed.
    #[serde(default)]
    pub files: usize,
    /// Lines changed (or an estimate).
    #[serde(default)]
    pub lines: usize,
}

/// What a TTL policy may look at: the PR and the PRs that closed before `at`.
pub trait TtlPolicy {
    /// The policy's name in reports.
    fn name(&self) -> String;
    /// TTL for the environment of `pr` at time `at`; `past` holds PRs closed before `at`,
    /// oldest close first.
    fn ttl(&self, pr: &PrHistory, at: Timestamp, past: &[&PrHistory]) -> Duration;
}

/// A fixed TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedTtl(pub Duration);

impl TtlPolicy for FixedTtl {
    fn name(&self) -> String {
        format!("fixed {}h", self.0.as_secs_f64() / 3600.0)
    }

    fn ttl(&self, _pr: &PrHistory, _at: Timestamp, _past: &[&PrHistory]) -> Duration {
        self.0
    }
}

/// The predictor of this module as a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictorPolicy(pub LifespanConfig);

impl TtlPolicy for PredictorPolicy {
    fn name(&self) -> String {
        "predictor".to_owned()
    }

    fn ttl(&self, pr: &PrHistory, at: Timestamp, past: &[&PrHistory]) -> Duration {
        let alpha = self.0.ewma_alpha;
        let mut author = HistoryStats::default();
        let mut repo = HistoryStats::default();
        for p in past {
            if p.repo == pr.repo {
                repo.observe(p.opened_at, &p.pushes, p.closed_at, alpha);
            }
            if pr.author.is_some() && p.author == pr.author {
                author.observe(p.opened_at, &p.pushes, p.closed_at, alpha);
            }
        }
        let size = PrSize {
            files: pr.files,
            lines: pr.lines,
        };
        predict_ttl(&self.0, &size, &author, &repo, at)
            .ttl
            .as_duration()
    }
}

/// Results of replaying histories against one policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifespanEval {
    /// The policy.
    pub policy: String,
    /// PRs replayed.
    pub prs: usize,
    /// Pushes that found the environment expired.
    pub premature_deletions: usize,
    /// PRs with at least one premature deletion.
    pub prs_with_premature_deletion: usize,
    /// PRs whose environment expired at least once before the PR closed.
    pub prs_expired_before_close: usize,
    /// Environment hours from last activity to deletion.
    pub idle_hours: f64,
    /// Environment hours alive in total.
    pub alive_hours: f64,
    /// Median TTL handed out, hours.
    pub median_ttl_hours: f64,
}

/// Replays `histories` against `policy` (see the module documentation).
pub fn evaluate_policy(histories: &[PrHistory], policy: &dyn TtlPolicy) -> LifespanEval {
    let mut by_close: Vec<&PrHistory> = histories.iter().collect();
    by_close.sort_by_key(|h| h.closed_at);
    let mut out = LifespanEval {
        policy: policy.name(),
        ..LifespanEval::default()
    };
    let mut ttls = Vec::new();
    for pr in histories {
        if pr.closed_at < pr.opened_at {
            continue;
        }
        out.prs += 1;
        let past_at = |at: Timestamp| -> Vec<&PrHistory> {
            let n = by_close.partition_point(|h| h.closed_at < at);
            by_close[..n]
                .iter()
                .copied()
                .filter(|h| !std::ptr::eq(*h, pr))
                .collect()
        };
        let mut ttl_at = |at: Timestamp| {
            let t = policy.ttl(pr, at, &past_at(at));
            ttls.push(t.as_secs_f64());
            SignedDuration::try_from(t).unwrap_or(SignedDuration::MAX)
        };
        let add = |t: Timestamp, d: SignedDuration| t.checked_add(d).unwrap_or(Timestamp::MAX);
        let mut last_activity = pr.opened_at;
        let mut expiry = add(pr.opened_at, ttl_at(pr.opened_at));
        let mut premature = 0;
        let mut expired_before_close = false;
        let mut alive_since = pr.opened_at;
        for &push in pr
            .pushes
            .iter()
            .filter(|p| **p >= pr.opened_at && **p <= pr.closed_at)
        {
            if push >= expiry {
                premature += 1;
                expired_before_close = true;
                out.idle_hours += hours(expiry.duration_since(last_activity));
                out.alive_hours += hours(expiry.duration_since(alive_since));
                alive_since = push;
            }
            let renewed = add(push, ttl_at(push));
            expiry = if alive_since == push {
                renewed
            } else {
                expiry.max(renewed)
            };
            last_activity = push;
        }
        let end = if expiry <= pr.closed_at {
            expired_before_close = true;
            expiry
        } else {
            pr.closed_at
        };
        out.idle_hours += hours(end.duration_since(last_activity));
        out.alive_hours += hours(end.duration_since(alive_since));
        out.premature_deletions += premature;
        if premature > 0 {
            out.prs_with_premature_deletion += 1;
        }
        if expired_before_close {
            out.prs_expired_before_close += 1;
        }
    }
    ttls.sort_by(f64::total_cmp);
    out.median_ttl_hours = ttls.get(ttls.len() / 2).copied().unwrap_or(0.0) / 3600.0;
    out
}

fn hours(d: SignedDuration) -> f64 {
    d.as_secs_f64().max(0.0) / 3600.0
}

/// A fixed-TTL baseline and the predictor, replayed on the same histories.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LifespanComparison {
    /// The fixed TTL.
    pub fixed: LifespanEval,
    /// The predictor.
    pub predictor: LifespanEval,
}

/// Replays `histories` with a fixed TTL and with the predictor.
pub fn compare_with_fixed(
    histories: &[PrHistory],
    fixed: Duration,
    config: &LifespanConfig,
) -> LifespanComparison {
    LifespanComparison {
        fixed: evaluate_policy(histories, &FixedTtl(fixed)),
        predictor: evaluate_policy(histories, &PredictorPolicy(config.clone())),
    }
}

#[derive(Deserialize)]
struct ChangeRow {
    repo: String,
    pr: Option<u64>,
    date: Timestamp,
    changed_files: Vec<String>,
    #[serde(default)]
    diff_bytes: usize,
    kind: String,
}

/// Average bytes per changed line in a unified diff, used to estimate line counts from
/// `diff_bytes`.
pub const DIFF_BYTES_PER_LINE: usize = 60;

/// Builds PR histories from a dataset's `changes.jsonl`.
///
/// What the dataset holds: per landed PR its number, its landing time (`date` of the squash
/// or merge commit) and its changed files and diff size. What it lacks: opening times,
/// push times and authors. So:
///
/// * `closed_at` = the landing time;
/// * `opened_at` = the earliest landing time of any PR with a number ≥ this one (GitHub
///   numbers PRs and issues from one increasing counter, so the PR existed before any
///   later-numbered PR landed); this is an upper bound on the real opening time, so the
///   derived time-to-close is a **lower bound** on the real one;
/// * `pushes` = none (unknown), `author` = none (unknown);
/// * `lines` ≈ `diff_bytes / DIFF_BYTES_PER_LINE`.
///
/// Only `squash` and `merge` rows with a PR number are used; when a PR appears several
/// times the first landing counts.
pub fn derive_histories_from_changes(
    changes_jsonl: &Path,
) -> Result<Vec<PrHistory>, LifespanError> {
    let file = std::fs::File::open(changes_jsonl)
        .map_err(|e| LifespanError::Dataset(format!("{}: {e}", changes_jsonl.display())))?;
    let mut landed: BTreeMap<u64, (ChangeRow, usize)> = BTreeMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| LifespanError::Dataset(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: ChangeRow = serde_json::from_str(&line)
            .map_err(|e| LifespanError::Dataset(format!("line {}: {e}", i + 1)))?;
        let Some(pr) = row.pr else { continue };
        if row.kind != "squash" && row.kind != "merge" {
            continue;
        }
        landed.entry(pr).or_insert((row, i));
    }
    // suffix minimum of landing times over PR numbers
    let mut histories = Vec::with_capacity(landed.len());
    let mut min_later = Timestamp::MAX;
    for (&pr, (row, _)) in landed.iter().rev() {
        min_later = min_later.min(row.date);
        histories.push(PrHistory {
            repo: row.repo.clone(),
            pr,
            author: None,
            opened_at: min_later,
            pushes: Vec::new(),
            closed_at: row.date,
            files: row.changed_files.len(),
            lines: row.diff_bytes / DIFF_BYTES_PER_LINE,
        });
    }
    histories.sort_by_key(|h| h.opened_at);
    Ok(histories)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn default_is_four_hours_within_working_hours() {
        let c = LifespanConfig::default();
        // Tuesday 09:30 UTC + 4h = 13:30, a working hour
        let p = predict_ttl(
            &c,
            &PrSize::default(),
            &HistoryStats::default(),
            &HistoryStats::default(),
            ts("2026-03-03T09:30:00Z"),
        );
        assert_eq!(p.ttl.as_secs(), 4 * 3600);
        assert_eq!(p.basis, LifespanBasis::Default);
        assert!(!p.moved_to_working_hours);
    }

    #[test]
    fn friday_evening_survives_until_monday_ten_local() {
        let c = LifespanConfig::default()
            .with_time_zone_name("Europe/Berlin")
            .unwrap();
        // Friday 2026-03-06 19:00 in Berlin (UTC+1) = 18:00Z
        let at = ts("2026-03-06T18:00:00Z");
        let p = predict_ttl(
            &c,
            &PrSize::default(),
            &HistoryStats::default(),
            &HistoryStats::default(),
            at,
        );
        assert_eq!(
            p.expires_at,
            ts("2026-03-09T09:00:00Z"),
            "Monday 10:00 Berlin"
        );
        assert!(p.moved_to_working_hours);
        // Tuesday 20:00 → Wednesday 10:00
        let p = predict_ttl(
            &c,
            &PrSize::default(),
            &HistoryStats::default(),
            &HistoryStats::default(),
            ts("2026-03-03T19:00:00Z"),
        );
        assert_eq!(p.expires_at, ts("2026-03-04T09:00:00Z"));
        // early morning Wednesday 03:00 local + 4h = 07:00 → same day 10:00
        let p = predict_ttl(
            &c,
            &PrSize::default(),
            &HistoryStats::default(),
            &HistoryStats::default(),
            ts("2026-03-04T02:00:00Z"),
        );
        assert_eq!(p.expires_at, ts("2026-03-04T09:00:00Z"));
    }

    #[test]
    fn history_and_size_drive_the_ttl_within_clamps() {
        let c = LifespanConfig::default();
        let mut slow = HistoryStats::default();
        let mut fast = HistoryStats::default();
        let t0 = ts("2026-01-05T10:00:00Z");
        for i in 0..5 {
            let open = t0 + SignedDuration::from_hours(24 * i);
            slow.observe(
                open,
                &[],
                open + SignedDuration::from_hours(30),
                c.ewma_alpha,
            );
            fast.observe(
                open,
                &[],
                open + SignedDuration::from_mins(20),
                c.ewma_alpha,
            );
        }
        let at = ts("2026-03-03T09:00:00Z");
        let p = predict_ttl(&c, &PrSize::default(), &slow, &HistoryStats::default(), at);
        assert_eq!(p.basis, LifespanBasis::Author);
        assert!(p.ttl.as_secs() >= 30 * 3600, "{p:?}");
        let p = predict_ttl(&c, &PrSize::default(), &HistoryStats::default(), &fast, at);
        assert_eq!(p.basis, LifespanBasis::Repository);
        assert_eq!(p.ttl.as_secs(), 3600, "clamped up to 1h: {p:?}");
        let big = PrSize {
            files: 200,
            lines: 20_000,
        };
        let small = predict_ttl(
            &c,
            &PrSize::default(),
            &HistoryStats::default(),
            &HistoryStats::default(),
            at,
        );
        let large = predict_ttl(
            &c,
            &big,
            &HistoryStats::default(),
            &HistoryStats::default(),
            at,
        );
        assert!(large.ttl > small.ttl);
        assert!(large.ttl.as_secs() <= 8 * 3600, "size factor capped at 2");
        let mut huge = HistoryStats::default();
        for i in 0..5 {
            let open = t0 + SignedDuration::from_hours(i);
            huge.observe(
                open,
                &[],
                open + SignedDuration::from_hours(24 * 30),
                c.ewma_alpha,
            );
        }
        let p = predict_ttl(&c, &big, &huge, &huge, at);
        assert_eq!(p.ttl.as_secs(), 7 * 24 * 3600);
    }

    #[test]
    fn replay_counts_premature_deletions_and_idle_hours() {
        let pr = PrHistory {
            repo: "r".into(),
            pr: 1,
            author: None,
            opened_at: ts("2026-03-03T10:00:00Z"),
            pushes: vec![ts("2026-03-03T12:00:00Z"), ts("2026-03-03T20:00:00Z")],
            closed_at: ts("2026-03-03T21:00:00Z"),
            files: 1,
            lines: 1,
        };
        let e = evaluate_policy(
            std::slice::from_ref(&pr),
            &FixedTtl(Duration::from_secs(4 * 3600)),
        );
        // 12:00 push extends to 16:00; 20:00 push finds it gone; recreated, closed at 21:00
        assert_eq!(e.premature_deletions, 1);
        assert_eq!(e.prs_with_premature_deletion, 1);
        assert_eq!(e.prs_expired_before_close, 1);
        assert!((e.idle_hours - (4.0 + 1.0)).abs() < 1e-9, "{e:?}");
        assert!((e.alive_hours - (6.0 + 1.0)).abs() < 1e-9, "{e:?}");
        let e = evaluate_policy(&[pr], &FixedTtl(Duration::from_secs(10 * 3600)));
        assert_eq!(e.premature_deletions, 0);
        assert!((e.idle_hours - 1.0).abs() < 1e-9);
        assert!((e.alive_hours - 11.0).abs() < 1e-9);
    }
}
