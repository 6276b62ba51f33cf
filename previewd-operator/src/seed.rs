//! `previewd seed-data`: fills the preview environment's PostgreSQL database with test data.
//! It runs as the data-seed Job in the environment's namespace, after the application's
//! migrations, with the database credentials from a Secret of that namespace.
//!
//! Environment:
//! - `PREVIEWD_SEED_DATABASE_URL`, else `DATABASE_URL`: `postgres://user:password@host:port/db`;
//! - `PREVIEWD_SEED_SPEC`: the environment's `testData` spec as JSON (CRD shape);
//! - `PREVIEWD_SEED_SNAPSHOT`: for `production-snapshot`, a dump file path or http(s) URL;
//! - `PREVIEWD_SEED_SCHEMAS`: comma-separated PostgreSQL schemas (default: all user schemas);
//! - `PREVIEWD_SEED_TERMINATION_LOG`: where the summary goes (default `/dev/termination-log`).
//!
//! It prints a report and writes `{"tables":N,"rows":N,"durationMs":N,"error":null|"..."}`
//! (at most 4 KiB, the error message shortened to fit) to the termination log when that path
//! is writable, so the controller reads the outcome from the pod's status. The exit code is
//! non-zero on failure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use previewd_data::{SeedOptions, SeedReport, SnapshotSource, TestDataSpec};
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
    /// Dump file or http(s) URL for the `production-snapshot` strategy.
    #[arg(long, env = "PREVIEWD_SEED_SNAPSHOT")]
    pub snapshot: Option<String>,
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

/// The summary written to the termination log: valid JSON of at most 4 KiB.
pub fn termination_summary(
    tables: u64,
    rows: u64,
    duration_ms: u64,
    error: Option<&str>,
) -> String {
    let render = |error: Option<&str>| {
        serde_json::json!({
            "tables": tables,
            "rows": rows,
            "durationMs": duration_ms,
            "error": error,
        })
        .to_string()
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
            let summary = termination_summary(report.tables, report.rows, report.duration_ms, None);
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
}
