//! `previewd test-summary <file>...` (also `junit-summary`): turns a test runner's reports
//! into the test-run summary the controller reads from a test Job's termination message
//! (docs/TESTS.md), so that a test image only has to end with
//!
//! ```sh
//! pytest --junitxml=/tmp/report.xml; previewd test-summary /tmp/report.xml --termination-log /dev/termination-log
//! go test -json ./... > /tmp/go.json; previewd test-summary --framework go /tmp/go.json --termination-log /dev/termination-log
//! ```
//!
//! The format comes from `--framework`, which defaults to `$PREVIEWD_TEST_FRAMEWORK`, which
//! the test Job gets from `spec.tests.framework`: `junit` (JUnit XML), `go` (`go test
//! -json`), `pytest` (pytest's JSON report) or `jest` (`jest --json`).
//!
//! The summary (at most 4 KiB) goes to standard output, and to `--termination-log` when
//! given. The exit code is 0 when the reports were read, whatever the tests did, unless
//! `--fail-on-failures` is given.
//!
//! `-o` selects an output format in the other subcommands, so it no longer names the
//! summary file here: `-o FILE` is refused with a message naming `--termination-log`, and
//! the former `--output FILE` still works, with a warning.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use previewd_core::testrun::{TestFramework, encode_summary, summary_from_reports};

/// Flags of `previewd junit-summary`.
#[derive(Debug, Clone, Args)]
pub struct JunitSummaryArgs {
    /// Reports to combine.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// Their format: junit, go, pytest or jest.
    #[arg(long, env = "PREVIEWD_TEST_FRAMEWORK", default_value = "junit")]
    pub framework: TestFramework,
    /// Also write the summary to this file (in a test Job: /dev/termination-log).
    #[arg(long, value_name = "FILE")]
    pub termination_log: Option<PathBuf>,
    /// Former name of --termination-log.
    #[arg(
        long,
        value_name = "FILE",
        hide = true,
        conflicts_with = "termination_log"
    )]
    pub output: Option<PathBuf>,
    /// `-o FILE` named the summary file before `-o` meant an output format: refused.
    #[arg(short = 'o', value_name = "FILE", hide = true)]
    pub legacy_o: Option<PathBuf>,
    /// Exit with status 1 when a test failed.
    #[arg(long)]
    pub fail_on_failures: bool,
}

/// Largest report read, so that a runaway report cannot exhaust the runner's memory.
const MAX_REPORT_BYTES: u64 = 256 * 1024 * 1024;

/// Runs `previewd junit-summary`; returns whether every test passed.
pub fn junit_summary(args: &JunitSummaryArgs) -> anyhow::Result<bool> {
    if let Some(file) = &args.legacy_o {
        anyhow::bail!(
            "`-o` no longer names the summary file (in the other subcommands it selects an output format): use --termination-log {}",
            file.display()
        );
    }
    if args.output.is_some() {
        eprintln!("previewd: warning: --output is deprecated; use --termination-log");
    }
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
    let summary = summary_from_reports(args.framework, &reports)
        .with_context(|| format!("converting the {} reports", args.framework.as_str()))?;
    let json = encode_summary(&summary);
    println!("{json}");
    if let Some(out) = args.termination_log.as_ref().or(args.output.as_ref()) {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(summary.passed())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reports_become_a_summary_in_the_output_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.xml");
        let b = dir.path().join("b.xml");
        std::fs::write(
            &a,
            r#"<testsuite time="1.5"><testcase classname="cart" name="pays"><failure message="expected 200"/></testcase><testcase name="adds"/></testsuite>"#,
        )
        .unwrap();
        std::fs::write(&b, r#"<testsuites><testsuite><testcase name="logs_in"><skipped/></testcase></testsuite></testsuites>"#).unwrap();
        let out = dir.path().join("termination-log");
        let args = JunitSummaryArgs {
            reports: vec![a, b],
            framework: TestFramework::Junit,
            termination_log: Some(out.clone()),
            output: None,
            legacy_o: None,
            fail_on_failures: true,
        };
        assert!(!junit_summary(&args).unwrap(), "a test failed");
        let written = std::fs::read_to_string(&out).unwrap();
        let summary = previewd_core::testrun::parse_summary(&written).unwrap();
        assert_eq!(
            (
                summary.total,
                summary.passed,
                summary.failed,
                summary.skipped
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(summary.failures[0].name, "cart.pays");
        assert_eq!(summary.failures[0].reason, "expected 200");

        let broken = dir.path().join("broken.xml");
        std::fs::write(&broken, "<testsuite><testcase").unwrap();
        let err = junit_summary(&JunitSummaryArgs {
            reports: vec![broken],
            framework: TestFramework::Junit,
            termination_log: None,
            output: None,
            legacy_o: None,
            fail_on_failures: false,
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("invalid JUnit XML"), "{err:#}");
    }

    #[test]
    fn the_framework_selects_the_parser() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("go.json");
        std::fs::write(
            &report,
            concat!(
                r#"{"Action":"pass","Package":"shop","Test":"TestA","Elapsed":0.1}"#,
                "\n",
                r#"{"Action":"output","Package":"shop","Test":"TestB","Output":"    b_test.go:9: boom\n"}"#,
                "\n",
                r#"{"Action":"fail","Package":"shop","Test":"TestB","Elapsed":0.1}"#,
                "\n"
            ),
        )
        .unwrap();
        let out = dir.path().join("termination-log");
        let cli = crate::cli::parse([
            "previewd",
            "test-summary",
            "--framework",
            "go",
            report.to_str().unwrap(),
            "--termination-log",
            out.to_str().unwrap(),
        ])
        .unwrap();
        let crate::cli::Command::JunitSummary(args) = cli.command else {
            panic!("not test-summary")
        };
        assert_eq!(args.framework, TestFramework::Go);
        assert!(!junit_summary(&args).unwrap());
        let summary =
            previewd_core::testrun::parse_summary(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!((summary.total, summary.failed), (2, 1));
        assert_eq!(summary.failures[0].reason, "b_test.go:9: boom");
        // The same report read as JUnit XML is refused, not miscounted.
        let mut as_junit = args.clone();
        as_junit.framework = TestFramework::Junit;
        assert!(junit_summary(&as_junit).is_err());
        // `junit-summary` still works.
        assert!(crate::cli::parse(["previewd", "junit-summary", "r.xml"]).is_ok());
    }

    fn parsed(args: &[&str]) -> JunitSummaryArgs {
        let mut argv = vec!["previewd", "junit-summary"];
        argv.extend_from_slice(args);
        match crate::cli::parse(argv).unwrap().command {
            crate::cli::Command::JunitSummary(args) => args,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn the_summary_file_moved_from_o_to_termination_log() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.xml");
        std::fs::write(&report, r#"<testsuite><testcase name="ok"/></testsuite>"#).unwrap();
        let report = report.to_str().unwrap();
        let out = dir.path().join("log");
        let out_text = out.to_str().unwrap();
        // `-o FILE` is refused, naming the new flag, and writes nothing.
        let err = junit_summary(&parsed(&[report, "-o", out_text])).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("use --termination-log {out_text}")),
            "{err}"
        );
        assert!(!out.exists());
        // The former --output still writes the file; --termination-log is the flag now.
        for flag in ["--output", "--termination-log"] {
            assert!(junit_summary(&parsed(&[report, flag, out_text])).unwrap());
            assert!(
                std::fs::read_to_string(&out)
                    .unwrap()
                    .contains("\"passed\":1")
            );
            std::fs::remove_file(&out).unwrap();
        }
    }
}
