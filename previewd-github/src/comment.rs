//! The body of previewd's one sticky pull-request comment. Pure: build a
//! [`CommentView`] (by hand or from an environment with [`CommentView::from_environment`])
//! and call [`render_comment`].
//!
//! The body always carries the hidden [`COMMENT_MARKER`]; the client finds its comment
//! by that marker *and* by the comment being authored by the bot itself, so a marker
//! planted by someone else is never edited.

use std::fmt::Write as _;

use jiff::Timestamp;
use previewd_core::Phase;
use previewd_core::environment::EnvironmentView;

/// Hidden marker identifying previewd's comment.
pub const COMMENT_MARKER: &str = "<!-- previewd:environment -->";

/// Largest comment body GitHub accepts, in characters.
pub const COMMENT_MAX_CHARS: usize = 65_536;

const TRUNCATION_NOTE: &str = "\n\n_… truncated._\n";

/// Test results shown in the comment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestsView {
    /// Tests run.
    pub total: i64,
    /// Passed.
    pub passed: i64,
    /// Failed.
    pub failed: i64,
    /// Skipped.
    pub skipped: i64,
    /// Names of failed tests.
    pub failed_tests: Vec<String>,
    /// Why each failed test failed, by name (untrusted text, escaped).
    pub failure_reasons: std::collections::BTreeMap<String, String>,
}

/// Everything the comment shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommentView {
    /// Lifecycle phase.
    pub phase: Option<Phase>,
    /// Main URL.
    pub url: Option<String>,
    /// Service name → URL.
    pub service_urls: Vec<(String, String)>,
    /// Head commit the environment runs (or is being built for).
    pub head_sha: Option<String>,
    /// Test results.
    pub tests: Option<TestsView>,
    /// Estimated cost per day, formatted (`$2.34`).
    pub estimated_daily_cost: Option<String>,
    /// Spend so far, formatted.
    pub cost_to_date: Option<String>,
    /// Why the cost budget is exceeded and what happens, while it is.
    pub budget_exceeded: Option<String>,
    /// When the environment expires.
    pub expires_at: Option<Timestamp>,
    /// Status message (why it failed, what it waits for). Untrusted text is escaped.
    pub message: Option<String>,
    /// Why the environment is asleep, when it is.
    pub sleeping: Option<String>,
    /// Deletion is near: the comment warns and says how to extend.
    pub expiring_soon: bool,
    /// The answer to the last PR command (escaped).
    pub command_reply: Option<String>,
}

impl CommentView {
    /// The view of an environment's current status.
    pub fn from_environment(env: &EnvironmentView) -> Self {
        CommentView {
            phase: env.phase,
            url: env.url.clone(),
            service_urls: env
                .urls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            head_sha: env
                .deployed_sha
                .clone()
                .or_else(|| Some(env.head_sha.clone())),
            tests: env.tests.as_ref().map(|t| TestsView {
                total: t.total,
                passed: t.passed,
                failed: t.failed,
                skipped: t.skipped,
                failed_tests: t.failed_tests.clone(),
                failure_reasons: t.failure_reasons.clone(),
            }),
            estimated_daily_cost: env.estimated_daily.map(|m| m.to_string()),
            cost_to_date: env.actual_to_date.map(|m| m.to_string()),
            budget_exceeded: env.budget_exceeded.clone(),
            expires_at: env.expires_at,
            message: env.message.clone(),
            sleeping: env.sleeping.clone(),
            expiring_soon: env.expiring_soon,
            command_reply: env.command_reply.clone(),
        }
    }
}

fn phase_badge(phase: Option<Phase>) -> (&'static str, &'static str) {
    match phase {
        None | Some(Phase::Pending) => ("⏳", "Pending"),
        Some(Phase::Provisioning) => ("🚧", "Provisioning"),
        Some(Phase::Ready) => ("✅", "Ready"),
        Some(Phase::Testing) => ("🧪", "Testing"),
        Some(Phase::Complete) => ("✅", "Complete"),
        Some(Phase::Failed) => ("❌", "Failed"),
        Some(Phase::Terminating) => ("🧹", "Terminating"),
        Some(Phase::Terminated) => ("🗑️", "Terminated"),
    }
}

/// Escapes text for a Markdown table cell or line: no HTML, no table breaks, no
/// comment markers.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push_str("\\|"),
            '`' => out.push('\''),
            '\n' | '\r' => out.push(' '),
            other => out.push(other),
        }
    }
    out
}

/// Renders the comment body: marker, phase, URLs, commit, tests, cost, expiry. Never
/// longer than [`COMMENT_MAX_CHARS`] characters.
pub fn render_comment(view: &CommentView) -> String {
    let mut out = String::new();
    let (icon, phase) = phase_badge(view.phase);
    let _ = writeln!(out, "{COMMENT_MARKER}");
    if view.sleeping.is_some() && view.phase.is_some_and(Phase::is_active) {
        let _ = writeln!(out, "### 💤 Preview environment: **Asleep** ({phase})\n");
    } else {
        let _ = writeln!(out, "### {icon} Preview environment: **{phase}**\n");
    }
    if view.expiring_soon
        && let Some(expires) = view.expires_at
    {
        let _ = writeln!(
            out,
            "> [!WARNING]\n> This environment will be deleted at {} UTC. Comment `/preview extend` (or `/preview extend 4h`) to keep it.\n",
            expires.strftime("%Y-%m-%d %H:%M")
        );
    }
    if let Some(sleeping) = &view.sleeping {
        let _ = writeln!(out, "**Asleep:** {}\n", escape(sleeping));
    }
    if let Some(url) = &view.url {
        let _ = writeln!(out, "**URL:** {}\n", escape(url));
    }
    if !view.service_urls.is_empty() {
        let _ = writeln!(out, "| Service | URL |\n|---|---|");
        for (service, url) in &view.service_urls {
            let _ = writeln!(out, "| {} | {} |", escape(service), escape(url));
        }
        out.push('\n');
    }
    if let Some(sha) = &view.head_sha {
        let short: String = sha.chars().take(7).collect();
        let _ = writeln!(out, "**Commit:** `{}`", escape(&short));
    }
    if let Some(tests) = &view.tests {
        let _ = writeln!(
            out,
            "**Tests:** {} passed, {} failed, {} skipped ({} total)",
            tests.passed, tests.failed, tests.skipped, tests.total
        );
        if !tests.failed_tests.is_empty() {
            let _ = writeln!(out, "\n<details><summary>Failed tests</summary>\n");
            for name in &tests.failed_tests {
                match tests.failure_reasons.get(name) {
                    Some(reason) => {
                        let _ = writeln!(out, "- {}: {}", escape(name), escape(reason));
                    }
                    None => {
                        let _ = writeln!(out, "- {}", escape(name));
                    }
                }
            }
            let _ = writeln!(out, "\n</details>\n");
        }
    }
    match (&view.estimated_daily_cost, &view.cost_to_date) {
        (Some(daily), Some(total)) => {
            let _ = writeln!(
                out,
                "**Cost:** {} per day (estimate), {} so far",
                escape(daily),
                escape(total)
            );
        }
        (Some(daily), None) => {
            let _ = writeln!(out, "**Cost:** {} per day (estimate)", escape(daily));
        }
        (None, Some(total)) => {
            let _ = writeln!(out, "**Cost:** {} so far", escape(total));
        }
        (None, None) => {}
    }
    if let Some(budget) = &view.budget_exceeded {
        let _ = writeln!(out, "**Budget exceeded:** ⚠️ {}", escape(budget));
    }
    if let Some(expires) = view.expires_at {
        let _ = writeln!(
            out,
            "**Expires:** {} UTC",
            expires.strftime("%Y-%m-%d %H:%M")
        );
    }
    if let Some(message) = &view.message
        && view.sleeping.as_ref() != Some(message)
    {
        let _ = writeln!(out, "\n> {}", escape(message));
    }
    if let Some(reply) = &view.command_reply {
        let _ = writeln!(out, "\n**Last command:** {}", escape(reply));
    }
    cap_body(&out)
}

/// Cuts a body to [`COMMENT_MAX_CHARS`] characters, keeping the marker and saying so.
pub fn cap_body(body: &str) -> String {
    let with_marker = if body.contains(COMMENT_MARKER) {
        body.to_string()
    } else {
        format!("{COMMENT_MARKER}\n{body}")
    };
    if with_marker.chars().count() <= COMMENT_MAX_CHARS {
        return with_marker;
    }
    let keep = COMMENT_MAX_CHARS - TRUNCATION_NOTE.chars().count();
    let mut out: String = with_marker.chars().take(keep).collect();
    out.push_str(TRUNCATION_NOTE);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_part() {
        let view = CommentView {
            phase: Some(Phase::Ready),
            url: Some("https://pr-7.preview.acme.dev".into()),
            service_urls: vec![("api".into(), "https://pr-7.preview.acme.dev/api".into())],
            head_sha: Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821".into()),
            tests: Some(TestsView {
                total: 10,
                passed: 8,
                failed: 2,
                skipped: 1,
                failed_tests: vec!["checkout <script>".into(), "cart.pays".into()],
                failure_reasons: [(
                    "cart.pays".to_string(),
                    "expected 200, got <500>".to_string(),
                )]
                .into(),
            }),
            estimated_daily_cost: Some("$2.34".into()),
            cost_to_date: Some("$0.50".into()),
            budget_exceeded: Some(
                "spent $1.50, above the total budget of $1.00 (policy warn)".into(),
            ),
            expires_at: Some("2024-05-01T12:30:00Z".parse().unwrap()),
            message: Some("line1\nline2 | x".into()),
            ..CommentView::default()
        };
        let body = render_comment(&view);
        assert!(body.starts_with(COMMENT_MARKER));
        assert!(body.contains("**Ready**"));
        assert!(body.contains("| api | https://pr-7.preview.acme.dev/api |"));
        assert!(body.contains("`ec26c3e`"));
        assert!(body.contains("8 passed, 2 failed, 1 skipped (10 total)"));
        assert!(body.contains("- checkout &lt;script&gt;\n"));
        assert!(body.contains("- cart.pays: expected 200, got &lt;500&gt;"));
        assert!(body.contains("$2.34 per day (estimate), $0.50 so far"));
        assert!(body.contains(
            "**Budget exceeded:** ⚠️ spent $1.50, above the total budget of $1.00 (policy warn)"
        ));
        assert!(body.contains("2024-05-01 12:30 UTC"));
        assert!(body.contains("> line1 line2 \\| x"));
    }

    #[test]
    fn long_bodies_are_capped_and_keep_the_marker() {
        let view = CommentView {
            tests: Some(TestsView {
                failed_tests: (0..20_000).map(|i| format!("test_{i}")).collect(),
                ..TestsView::default()
            }),
            ..CommentView::default()
        };
        let body = render_comment(&view);
        assert_eq!(body.chars().count(), COMMENT_MAX_CHARS);
        assert!(body.starts_with(COMMENT_MARKER));
        assert!(body.ends_with(TRUNCATION_NOTE));
        let bare = cap_body("hello");
        assert_eq!(bare, format!("{COMMENT_MARKER}\nhello"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod lifecycle_tests {
    use super::*;

    #[test]
    fn the_expiry_warning_sleep_and_command_answer_are_rendered() {
        let view = CommentView {
            phase: Some(Phase::Ready),
            expires_at: Some("2026-05-01T12:30:00Z".parse().unwrap()),
            expiring_soon: true,
            sleeping: Some("asleep: no push or command for 2h".into()),
            command_reply: Some("`/preview sleep` by @alice <b>".into()),
            ..CommentView::default()
        };
        let body = render_comment(&view);
        assert!(body.contains("**Asleep**"), "{body}");
        assert!(
            body.contains("will be deleted at 2026-05-01 12:30 UTC"),
            "{body}"
        );
        assert!(body.contains("/preview extend"));
        assert!(body.contains("no push or command for 2h"));
        assert!(
            body.contains("**Last command:** '/preview sleep' by @alice &lt;b&gt;"),
            "{body}"
        );
        let quiet = render_comment(&CommentView {
            phase: Some(Phase::Ready),
            expires_at: Some("2026-05-01T12:30:00Z".parse().unwrap()),
            ..CommentView::default()
        });
        assert!(!quiet.contains("will be deleted") && !quiet.contains("Asleep"));
    }
}
