//! `previewd seed-data`: fills the preview environment's PostgreSQL database with test data.
//! It runs as the data-seed Job in the environment's namespace, after the application's
//! migrations, with the database credentials from a Secret of that namespace.
//!
//! Environment:
//! - `PREVIEWD_SEED_DATABASE_URL`, else `DATABASE_URL`: `postgres://user:password@host:port/db`;
//! - `PREVIEWD_SEED_SPEC`: the environment's `testData` spec as JSON (CRD shape);
//! - `PREVIEWD_SEED_SNAPSHOT`: for `production-snapshot`, a dump file path or https URL,
//!   with `PREVIEWD_SEED_SNAPSHOT_SHA256` (expected checksum),
//!   `PREVIEWD_SEED_SNAPSHOT_AUTHORIZATION` (header value for the download) and
//!   `PREVIEWD_SEED_SNAPSHOT_CA` (extra trusted CA certificates, a PEM file);
//! - `PREVIEWD_SEED_SCHEMAS`: comma-separated PostgreSQL schemas (default: all user schemas);
//! - `PREVIEWD_SEED_TERMINATION_LOG`: where the summary goes (default `/dev/termination-log`);
//! - with `aiModel: true` in the spec, `PREVIEWD_SEED_PROPOSALS_URL` and
//!   `PREVIEWD_SEED_PROPOSALS_TOKEN`: the operator's data-proposal endpoint, the only way
//!   this Job reaches a model (it never holds a model credential); without them the
//!   heuristics decide.
//!
//! It prints a report and writes `{"tables":N,"rows":N,"durationMs":N,"error":null|"...",
//! "proposals":{...}}` (at most 4 KiB, the error message and the rejections shortened to
//! fit) to the termination log when that path is writable, so the controller reads the
//! outcome from the pod's status. The exit code is non-zero on failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use previewd_core::testrun::{MAX_PROPOSAL_REJECTIONS, ProposalSummary};
use previewd_data::{ProposalOutcome, SeedOptions, SeedReport, SnapshotSource, TestDataSpec};
use secrecy::{ExposeSecret, SecretString};

/// Largest termination message Kubernetes keeps.
pub const TERMINATION_MESSAGE_MAX: usize = 4096;

/// Flags of `previewd seed-data` (each also read from its environment variable).
#[derive(Debug, Clone, Args)]
pub struct SeedDataArgs {
    /// Database URL; default: $DATABASE_URL.
    #[arg(long, env = "PREVIEWD_SEED_DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub database_url: Option<SecretString>,
    /// The `testData` spec as JSON.
    #[arg(long, env = "PREVIEWD_SEED_SPEC")]
    pub spec: Option<String>,
    /// Dump file or https URL for the `production-snapshot` strategy.
    #[arg(long, env = "PREVIEWD_SEED_SNAPSHOT")]
    pub snapshot: Option<String>,
    /// Expected SHA-256 of the dump (hex).
    #[arg(long, env = "PREVIEWD_SEED_SNAPSHOT_SHA256")]
    pub snapshot_sha256: Option<String>,
    /// `Authorization` header value sent with the dump's download.
    #[arg(long, env = "PREVIEWD_SEED_SNAPSHOT_AUTHORIZATION", hide_env_values = true, value_parser = parse_secret)]
    pub snapshot_authorization: Option<SecretString>,
    /// PEM file of extra CA certificates trusted for the dump's host.
    #[arg(long, env = "PREVIEWD_SEED_SNAPSHOT_CA")]
    pub snapshot_ca: Option<PathBuf>,
    /// The operator's data-proposal endpoint (with `aiModel: true`).
    #[arg(long, env = "PREVIEWD_SEED_PROPOSALS_URL")]
    pub proposals_url: Option<String>,
    /// This Job's token for that endpoint.
    #[arg(long, env = "PREVIEWD_SEED_PROPOSALS_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub proposals_token: Option<SecretString>,
    /// PostgreSQL schemas to seed, comma-separated; default: every user schema.
    #[arg(long, env = "PREVIEWD_SEED_SCHEMAS", value_delimiter = ',')]
    pub schemas: Vec<String>,
    /// Tables loaded at the same time; default: the CPU count, 2 to 8.
    #[arg(long, env = "PREVIEWD_SEED_PARALLELISM")]
    pub parallelism: Option<usize>,
    /// Where the JSON summary is written when writable.
    #[arg(
        long,
        env = "PREVIEWD_SEED_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,
}

fn parse_secret(s: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(s.to_string()))
}

/// The proposal outcome as the termination message carries it.
pub fn proposal_summary(outcome: &ProposalOutcome) -> ProposalSummary {
    ProposalSummary {
        source: outcome.source.clone(),
        made: outcome.made,
        passed: outcome.passed,
        rejected_total: outcome.rejected.len() as u32 + outcome.rejected_omitted,
        rejected: outcome
            .rejected
            .iter()
            .take(MAX_PROPOSAL_REJECTIONS)
            .map(|r| {
                let line = format!("{}: {}", r.what, r.reason);
                if line.chars().count() > 160 {
                    let mut short: String = line.chars().take(159).collect();
                    short.push('…');
                    short
                } else {
                    line
                }
            })
            .collect(),
        model_text_percent: (outcome.model_text_share * 100.0).round().clamp(0.0, 100.0) as u32,
        digest: outcome.digest.chars().take(16).collect(),
    }
}

/// The summary written to the termination log: valid JSON of at most 4 KiB.
pub fn termination_summary(
    tables: u64,
    rows: u64,
    duration_ms: u64,
    error: Option<&str>,
) -> String {
    termination_summary_with(tables, rows, duration_ms, error, None)
}

/// [`termination_summary`] with the proposal outcome.
pub fn termination_summary_with(
    tables: u64,
    rows: u64,
    duration_ms: u64,
    error: Option<&str>,
    proposals: Option<&ProposalSummary>,
) -> String {
    let render = |error: Option<&str>| {
        let mut v = serde_json::json!({
            "tables": tables,
            "rows": rows,
            "durationMs": duration_ms,
            "error": error,
        });
        if let Some(p) = proposals {
            v["proposals"] = serde_json::to_value(p).unwrap_or_default();
        }
        v.to_string()
    };
    let full = render(error);
    if full.len() <= TERMINATION_MESSAGE_MAX {
        return full;
    }
    let message = error.unwrap_or_default();
    // Escaping can only grow the text: shrink the message until the JSON fits.
    let mut keep = message.len().min(TERMINATION_MESSAGE_MAX);
    loop {
        while !message.is_char_boundary(keep) {
            keep -= 1;
        }
        let candidate = render(Some(&format!("{}…", &message[..keep])));
        if candidate.len() <= TERMINATION_MESSAGE_MAX || keep == 0 {
            return candidate;
        }
        keep = keep.saturating_sub((candidate.len() - TERMINATION_MESSAGE_MAX).max(16));
    }
}

fn write_termination_log(path: &Path, summary: &str) {
    // Outside a pod the file usually does not exist or is not writable: that is fine.
    match std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
    {
        Ok(mut f) => {
            use std::io::Write as _;
            if let Err(e) = f.write_all(summary.as_bytes()) {
                eprintln!("previewd: cannot write {}: {e}", path.display());
            }
        }
        Err(e) => tracing::debug!(path = %path.display(), error = %e, "no termination log"),
    }
}

fn render_report(report: &SeedReport) -> String {
    let mut out = String::new();
    let strategy = report
        .strategy
        .map(|s| {
            serde_json::to_value(s).map_or(String::new(), |v| {
                v.as_str().unwrap_or_default().to_string()
            })
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "seeded {} rows into {} tables in {} ms (strategy {strategy}, generators {})",
        report.rows, report.tables, report.duration_ms, report.generators
    );
    for t in &report.loaded {
        let _ = writeln!(out, "  {:<40} {:>10}", t.table, t.rows);
    }
    for t in &report.kept {
        let _ = writeln!(out, "  {t:<40} {:>10}", "kept");
    }
    if report.deferred_updates > 0 {
        let _ = writeln!(
            out,
            "  {} rows updated to close nullable foreign-key cycles",
            report.deferred_updates
        );
    }
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if let Some(p) = &report.proposals {
        let _ = writeln!(
            out,
            "model proposals from {}: {} tables asked, {} made, {} passed, {} lookup rows, \
             {:.1}% of text values from the model (digest {})",
            p.source,
            p.requests,
            p.made,
            p.passed,
            p.lookup_rows,
            p.model_text_share * 100.0,
            p.digest.chars().take(16).collect::<String>()
        );
        for r in &p.rejected {
            let _ = writeln!(out, "  rejected {}: {}", r.what, r.reason);
        }
        if p.rejected_omitted > 0 {
            let _ = writeln!(out, "  ... and {} more rejections", p.rejected_omitted);
        }
    }
    out
}

/// Runs `previewd seed-data`.
pub async fn seed_data(args: SeedDataArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let result = run(&args).await;
    let elapsed = started.elapsed().as_millis() as u64;
    match result {
        Ok(report) => {
            print!("{}", render_report(&report));
            let proposals = report.proposals.as_ref().map(proposal_summary);
            let summary = termination_summary_with(
                report.tables,
                report.rows,
                report.duration_ms,
                None,
                proposals.as_ref(),
            );
            println!("{summary}");
            write_termination_log(&args.termination_log, &summary);
            Ok(())
        }
        Err(e) => {
            let message = format!("{e:#}");
            let summary = termination_summary(0, 0, elapsed, Some(&message));
            println!("{summary}");
            write_termination_log(&args.termination_log, &summary);
            Err(e)
        }
    }
}

async fn run(args: &SeedDataArgs) -> anyhow::Result<SeedReport> {
    let url = match &args.database_url {
        Some(u) => u.expose_secret().to_string(),
        None => std::env::var("DATABASE_URL")
            .context("no database: set PREVIEWD_SEED_DATABASE_URL or DATABASE_URL")?,
    };
    let config = tokio_postgres::Config::from_str(&url)
        .map_err(|_| anyhow::anyhow!("the database URL cannot be parsed"))?;
    let spec: TestDataSpec = match &args.spec {
        Some(json) if !json.trim().is_empty() => {
            serde_json::from_str(json).context("PREVIEWD_SEED_SPEC is not a testData spec")?
        }
        _ => anyhow::bail!("no spec: set PREVIEWD_SEED_SPEC to the testData spec as JSON"),
    };
    if !spec.enabled {
        println!("test data is not enabled in the spec: nothing to do");
        return Ok(SeedReport::default());
    }
    let mut options = SeedOptions::default();
    if !args.schemas.is_empty() {
        options.schemas = Some(args.schemas.clone());
    }
    if let Some(p) = args.parallelism {
        options.load.parallelism = p.clamp(1, 32);
    }
    if let Some(s) = &args.snapshot {
        options.snapshot = Some(SnapshotSource::parse(s)?);
    }
    options.snapshot_policy.sha256 = args
        .snapshot_sha256
        .clone()
        .filter(|s| !s.trim().is_empty());
    options.snapshot_policy.authorization = args
        .snapshot_authorization
        .as_ref()
        .map(|a| a.expose_secret().trim().to_string())
        .filter(|a| !a.is_empty());
    if let Some(ca) = &args.snapshot_ca {
        options.snapshot_policy.extra_roots_pem =
            vec![std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?];
    }
    if spec.ai_model == Some(true) {
        match (&args.proposals_url, &args.proposals_token) {
            (Some(url), Some(token)) if !url.trim().is_empty() => {
                options.proposals = Some(Arc::new(crate::proposals::OperatorProposals::new(
                    url,
                    token.expose_secret().to_string(),
                )?));
            }
            _ => println!(
                "aiModel is set but the operator gave this Job no data-proposal endpoint \
                 (AI off, or a fork's pull request); heuristics decide"
            ),
        }
    }
    Ok(previewd_data::seed(&config, &spec, &options).await?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    #[test]
    fn summaries_are_json_and_fit_the_termination_message() {
        let ok = termination_summary(3, 120, 45, None);
        let v: serde_json::Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["tables"], 3);
        assert_eq!(v["rows"], 120);
        assert_eq!(v["durationMs"], 45);
        assert!(v["error"].is_null());

        let long = "é\"\\".repeat(5000);
        let s = termination_summary(0, 0, 9, Some(&long));
        assert!(s.len() <= TERMINATION_MESSAGE_MAX, "{}", s.len());
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert!(v["error"].as_str().unwrap().ends_with('…'));
        assert!(v["error"].as_str().unwrap().len() > 1000);
    }

    #[test]
    fn proposal_outcomes_fit_the_termination_message() {
        let outcome = ProposalOutcome {
            source: "openai:gpt-4o-mini".into(),
            requests: 18,
            made: 30,
            passed: 21,
            rejected: (0..50)
                .map(|i| previewd_data::proposal::Rejection {
                    what: format!("public.table_{i} rows"),
                    reason: "é".repeat(500),
                })
                .collect(),
            rejected_omitted: 12,
            lookup_rows: 40,
            model_text_share: 0.4237,
            digest: "0123456789abcdef0123456789abcdef".into(),
        };
        let summary = proposal_summary(&outcome);
        assert_eq!(summary.rejected.len(), MAX_PROPOSAL_REJECTIONS);
        assert_eq!(summary.rejected_total, 62);
        assert_eq!(summary.model_text_percent, 42);
        let long_error = "x".repeat(5000);
        let text = termination_summary_with(18, 9000, 1200, Some(&long_error), Some(&summary));
        assert!(text.len() <= TERMINATION_MESSAGE_MAX, "{}", text.len());
        let back = previewd_core::testrun::parse_seed_report(&text).unwrap();
        assert_eq!(back.proposals.unwrap().passed, 21);
    }
}
