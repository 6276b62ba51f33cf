//! Every condition reason the code can set is in the troubleshooting table
//! (`docs/troubleshooting.md`). The list is read from the code: the reason literals of
//! every place that sets a condition or stalls an environment (the planner, the strategies
//! and stages, the claims), and the reasons of the core's verdicts, so a new reason
//! without a row fails the suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

/// The source of `file` without its test modules.
fn production_code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "tests" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") && !name.contains("tests") && name != "testing.rs" {
            out.push(path);
        }
    }
}

/// The text of the call or struct literal starting at `start` (an opening `(` or `{`).
fn span(text: &str, start: usize) -> &str {
    let bytes = text.as_bytes();
    let (open, close) = match bytes[start] {
        b'(' => (b'(', b')'),
        _ => (b'{', b'}'),
    };
    let mut depth = 0;
    for (i, b) in bytes.iter().enumerate().skip(start) {
        if *b == open {
            depth += 1;
        } else if *b == close {
            depth -= 1;
            if depth == 0 {
                return &text[start..=i];
            }
        }
    }
    &text[start..]
}

/// CamelCase string literals standing alone in `text` (not inside a longer string).
fn camel_literals(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else { break };
        let literal = &after[..close];
        let camel = literal.len() > 2
            && literal
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_uppercase())
            && literal.chars().all(|c| c.is_ascii_alphanumeric())
            && literal.chars().any(|c| c.is_ascii_lowercase());
        if camel {
            out.push(literal.to_string());
        }
        rest = &after[close + 1..];
    }
    out
}

/// Reasons set in the code: the literals of every condition write and every stall, the
/// `reason` fields of refusals, and the `REASON_*` constants.
fn reasons_in_code() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["previewd-kube/src", "previewd-github/src"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut reasons = BTreeSet::new();
    for file in files {
        let code = production_code(&file);
        for marker in ["set_condition(", "pass.set(", ".stall(", "Refused {"] {
            let mut from = 0;
            while let Some(at) = code[from..].find(marker) {
                let start = from + at + marker.len() - 1;
                for literal in camel_literals(span(&code, start)) {
                    reasons.insert(literal);
                }
                from = start + 1;
            }
        }
        // Reasons chosen in a tuple before the write: `(passed, "Reason", ...)` and
        // `Some(("Reason", message))`.
        for marker in ["(true, \"", "(false, \"", "Some((\""] {
            let mut from = 0;
            while let Some(at) = code[from..].find(marker) {
                let start = from + at + marker.len() - 1;
                reasons.extend(
                    camel_literals(&code[start..start + 40.min(code.len() - start)])
                        .into_iter()
                        .take(1),
                );
                from = start + 1;
            }
        }
        for line in code.lines() {
            let line = line.trim();
            let reason_field = line.starts_with("reason: \"");
            let reason_const =
                line.starts_with("pub const REASON_") || line.starts_with("const REASON_");
            if reason_field || reason_const {
                reasons.extend(camel_literals(line));
            }
        }
    }
    // The core's verdicts and the phase machine's failure reasons.
    use previewd_core::BudgetVerdict;
    for verdict in [
        BudgetVerdict::WithinBudget,
        BudgetVerdict::Warning {
            limit: previewd_core::BudgetLimit::Daily,
            used: Default::default(),
            allowed: Default::default(),
        },
        BudgetVerdict::DailyExceeded {
            limit: Default::default(),
            estimated_daily: Default::default(),
        },
        BudgetVerdict::TotalExceeded {
            limit: Default::default(),
            spent: Default::default(),
        },
    ] {
        reasons.insert(verdict.reason().to_string());
    }
    for reason in previewd_kube::plan::FAILURE_REASONS {
        reasons.insert(reason.to_string());
    }
    for sleep in [
        previewd_kube::plan::sleep::SleepReason::Idle,
        previewd_kube::plan::sleep::SleepReason::Command,
        previewd_kube::plan::sleep::SleepReason::Budget,
    ] {
        reasons.insert(sleep.as_str().to_string());
    }
    reasons
}

#[test]
fn every_condition_reason_has_a_row_in_the_troubleshooting_table() {
    let reasons = reasons_in_code();
    assert!(
        reasons.len() > 40
            && [
                "RepositoryNotClaimed",
                "ManifestRefused",
                "SecretNotAllowed",
                "TotalBudgetExceeded"
            ]
            .iter()
            .all(|r| reasons.contains(*r)),
        "the scan found too little: {reasons:?}"
    );
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/troubleshooting.md"),
    )
    .unwrap_or_default();
    if std::env::var_os("PREVIEWD_LIST_REASONS").is_some() {
        eprintln!("{}", reasons.iter().cloned().collect::<Vec<_>>().join("\n"));
    }
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| ")).collect();
    let missing: Vec<&String> = reasons
        .iter()
        .filter(|r| !rows.iter().any(|row| row.contains(&format!("`{r}`"))))
        .collect();
    assert!(
        missing.is_empty(),
        "condition reasons with no row in docs/troubleshooting.md: {missing:?}"
    );
}
