//! `previewd junit-summary <file>...`: turns JUnit XML reports into the test-run summary
//! the controller reads from a test Job's termination message (docs/TESTS.md), so that a
//! test image only has to end with
//!
//! ```sh
//! pytest --junitxml=/tmp/report.xml; previewd junit-summary /tmp/report.xml --output /dev/termination-log
//! ```
//!
//! The summary (at most 4 KiB) goes to standard output, and to `--output` when given. The
//! exit code is 0 when the reports were read, whatever the tests did, unless
//! `--fail-on-failures` is given.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use previewd_core::testrun::{encode_summary, summary_from_junit};

/// Flags of `previewd junit-summary`.
#[derive(Debug, Clone, Args)]
pub struct JunitSummaryArgs {
    /// JUnit XML reports to combine.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Also write the summary to this file (in a test Job: /dev/termination-log).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Exit with status 1 when a test failed.
    #[arg(long)]
    pub fail_on_failures: bool,
}

/// Largest report read, so that a runaway report cannot exhaust the runner's memory.
const MAX_REPORT_BYTES: u64 = 256 * 1024 * 1024;

/// Runs `previewd junit-summary`; returns whether every test passed.
pub fn junit_summary(args: &JunitSummaryArgs) -> anyhow::Result<bool> {
    let mut reports = Vec::with_capacity(args.reports.len());
    for path in &args.reports {
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= MAX_REPORT_BYTES,
            "{} is {size} bytes, more than {MAX_REPORT_BYTES}",
            path.display()
        );
        reports.push(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    let summary =
        summary_from_junit(&reports).with_context(|| "converting the JUnit reports".to_string())?;
    let json = encode_summary(&summary);
    println!("{json}");
    if let Some(out) = &args.output {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(summary.passed())
}
