//! Secret scrubbing and the send policy for untrusted PR content.
//!
//! [`scrub_secrets`] replaces obvious credentials with `[REDACTED]` before any text leaves
//! the operator: PEM private keys, AWS access key ids, GitHub, OpenAI, Slack, Google,
//! Stripe, GitLab, npm and PyPI tokens, Azure `AccountKey=` values, `scheme://user:pass@`
//! URL credentials, JWTs, bearer tokens and `password=`/`secret:`/`token:`-style
//! assignments with long values (rules ported from gitleaks and trufflehog, offline
//! parts only). Every untrusted input of a prompt — diffs, titles and file paths — goes
//! through it in [`crate::provider::render_prompt`]. It is a safety net, not a guarantee; [`may_send`] keeps fork PRs away from
//! external providers unless the repository allows it.

use std::sync::LazyLock;

use previewd_core::ai::{AiError, Capabilities};
use regex::{Captures, Regex};

/// The replacement text.
pub const REDACTED: &str = "[REDACTED]";

struct Rule {
    regex: Regex,
    /// Keep capture groups 1..=keep and redact the rest of the match.
    keep: usize,
    /// When this group matched, the match is left alone (e.g. a function call).
    skip_group: Option<usize>,
    /// The match ends in `@` (a URL's userinfo), which is put back after the redaction.
    suffix_at: bool,
}

const PATTERNS: &[(&str, usize, Option<usize>)] = &[
    // PEM private key blocks, also with diff prefixes on each line.
    (
        r"(?s)-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
        0,
        None,
    ),
    // A BEGIN line whose END was cut off: redact the base64 lines that follow.
    (
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?:\r?\n[+\- ]?[A-Za-z0-9+/=]{16,})*",
        0,
        None,
    ),
    // AWS access key ids.
    (r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", 0, None),
    // GitHub tokens.
    (r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b", 0, None),
    (r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b", 0, None),
    // OpenAI keys.
    (
        r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
        0,
        None,
    ),
    // Slack tokens.
    (r"\bxox[abposre]-[A-Za-z0-9-]{10,}", 0, None),
    // Google API keys.
    (r"\bAIza[0-9A-Za-z_\-]{35}", 0, None),
    // Stripe secret and restricted keys.
    (
        r"\b(?:sk|rk)_(?:live|test|prod)_[0-9A-Za-z]{10,99}",
        0,
        None,
    ),
    // GitLab personal, pipeline-trigger, runner and deploy tokens.
    (
        r"\bgl(?:pat|ptt|rt|dt|oas|cbt|imt|ft|agent)-[0-9A-Za-z_\-]{20,}",
        0,
        None,
    ),
    // npm access tokens.
    (r"\bnpm_[A-Za-z0-9]{36}", 0, None),
    // PyPI upload tokens.
    (r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,}", 0, None),
    // Azure storage account keys and SAS signatures in connection strings.
    (
        r"(?i)(\b(?:AccountKey|SharedAccessKey|SharedAccessSignature)\s*=\s*)[A-Za-z0-9+/%&=_\-.:]{20,}",
        1,
        None,
    ),
    // Credentials in URLs: scheme://user:password@host keeps the scheme and the host.
    // A password that starts with `$` or `{` is a placeholder and left alone.
    (
        r"(?i)(\b[a-z][a-z0-9+.\-]{1,20}://)[^\s:/?#@\[\]]+:(?:[^\s@/$\{][^\s@/]*)(@)",
        1,
        None,
    ),
    // JSON Web Tokens.
    (
        r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        0,
        None,
    ),
    // Bearer tokens in headers or code.
    (r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{16,}=*", 1, None),
    // key = value / key: value assignments whose key names a secret and whose value is long.
    // Values that start like a placeholder ($VAR, <...>, {{...}}, [REDACTED]) or continue as
    // a function call are left alone.
    (
        r#"(?i)(\b[A-Za-z0-9_.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key|access[_\-]?key|private[_\-]?key|credentials?)[A-Za-z0-9_.\-]*["']?)(\s*(?::|=|:=|=>)\s*)(["']?)([^\s"'`,;$<{\[(][^\s"'`,;()]{11,})(\()?"#,
        3,
        Some(5),
    ),
];

static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
    PATTERNS
        .iter()
        .filter_map(|(pattern, keep, skip_group)| {
            Regex::new(pattern).ok().map(|regex| Rule {
                suffix_at: pattern.ends_with("(@)"),
                keep: if pattern.ends_with("(@)") { 1 } else { *keep },
                regex,
                skip_group: *skip_group,
            })
        })
        .collect()
});

/// Replaces obvious secrets in `text` with [`REDACTED`]; returns the scrubbed text and how
/// many secrets were replaced.
pub fn scrub_secrets(text: &str) -> (String, usize) {
    let mut current = text.to_string();
    let mut count = 0;
    for rule in RULES.iter() {
        if !rule.regex.is_match(&current) {
            continue;
        }
        let replaced = rule
            .regex
            .replace_all(&current, |caps: &Captures<'_>| {
                if rule.skip_group.is_some_and(|g| caps.get(g).is_some()) {
                    return caps[0].to_string();
                }
                count += 1;
                let mut out = String::new();
                for group in 1..=rule.keep {
                    if let Some(m) = caps.get(group) {
                        out.push_str(m.as_str());
                    }
                }
                out.push_str(REDACTED);
                if rule.suffix_at {
                    out.push('@');
                }
                out
            })
            .into_owned();
        current = replaced;
    }
    (current, count)
}

/// Whether untrusted content of a PR may be sent to a provider with `capabilities`: fork
/// PRs go to external providers only when `allow_forks` is set.
pub fn may_send(
    capabilities: &Capabilities,
    is_fork: bool,
    allow_forks: bool,
) -> Result<(), AiError> {
    if capabilities.external && is_fork && !allow_forks {
        return Err(AiError::Disabled(
            "content of fork pull requests is not sent to external providers (set ai.allowForkPRs to allow it)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(RULES.len(), PATTERNS.len());
    }

    #[test]
    fn secrets_are_redacted() {
        let pem = "+-----BEGIN RSA PRIVATE KEY-----\n+MIIEowIBAAKCAQEAx3f9\n+-----END RSA PRIVATE KEY-----\n";
        let cases = [
            (pem, "MIIEowIBAAKCAQEAx3f9"),
            (
                "+-----BEGIN OPENSSH PRIVATE KEY-----\n+b3BlbnNzaC1rZXktdjEAAAAABG5vbmU\n",
                "b3BlbnNzaC1rZXktdjEAAAAABG5vbmU",
            ),
            ("aws_key = AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
            (
                "export GH=ghp_1234567890abcdefghijklmnopqrstuvwxyzAB",
                "ghp_1234567890abcdefghijklmnopqrstuvwxyzAB",
            ),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
                "github_pat_11ABCDEFG0123456789",
            ),
            (
                "OPENAI=sk-proj-abcdefghijklmnopqrstuvwx1234",
                "sk-proj-abcdefghijklmnopqrstuvwx1234",
            ),
            (
                "slack: xoxb-123456789012-abcdefghijkl",
                "xoxb-123456789012-abcdefghijkl",
            ),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "dozjgNryP4J3jVmNHl0w5N",
            ),
            (
                "Authorization: Bearer abcdefghijklmnop1234567890",
                "abcdefghijklmnop1234567890",
            ),
            ("DB_PASSWORD=hunter2hunter2hunter2", "hunter2hunter2hunter2"),
            (
                "  client_secret: \"9f8e7d6c5b4a39281706\"",
                "9f8e7d6c5b4a39281706",
            ),
            (
                "apiKey => 'Zm9vYmFyYmF6cXV4cXV1eA'",
                "Zm9vYmFyYmF6cXV4cXV1eA",
            ),
            (
                "maps(\"AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI\")",
                "AIzaSyDdI0hCZtE6vySjMm-WEfRq3CPzqKqqsHI",
            ),
            (
                "stripe.api_key = sk_live_4eC39HqLyjWDarjtT1zdp7dc",
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            ),
            (
                "rk_test_51H8abcdefghijklmnop",
                "rk_test_51H8abcdefghijklmnop",
            ),
            (
                "+ GITLAB=glpat-xxxxxxxxxxxxxxxxxxxx1234",
                "glpat-xxxxxxxxxxxxxxxxxxxx1234",
            ),
            (
                "//registry.npmjs.org/:_authToken npm_abcdefghijklmnopqrstuvwxyz0123456789",
                "npm_abcdefghijklmnopqrstuvwxyz0123456789",
            ),
            (
                "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey=Zm9vYmFyYmF6cXV4cXV1eGZvb2Jhcg==;EndpointSuffix=core.windows.net",
                "Zm9vYmFyYmF6cXV4cXV1eGZvb2Jhcg==",
            ),
            (
                "DATABASE_URL: postgres://app:s3cr3t-passw0rd@db.internal:5432/app",
                "s3cr3t-passw0rd",
            ),
            (
                "git clone https://x-access-token:abc123def456@github.com/acme/x",
                "abc123def456",
            ),
        ];
        for (input, secret) in cases {
            let (out, n) = scrub_secrets(input);
            assert!(!out.contains(secret), "{input:?} -> {out:?}");
            assert!(out.contains(REDACTED), "{out:?}");
            assert!(n >= 1, "{input:?}");
        }
    }

    #[test]
    fn keys_and_structure_survive() {
        let (out, n) = scrub_secrets(
            "Authorization: Bearer abcdefghijklmnop1234567890\nDB_PASSWORD=hunter2hunter2hunter2\n",
        );
        assert_eq!(
            out,
            "Authorization: Bearer [REDACTED]\nDB_PASSWORD=[REDACTED]\n"
        );
        assert_eq!(n, 2);
        let (out, n) = scrub_secrets("api_key = \"sk-abcdefghijklmnopqrstuvwxyz\"");
        assert_eq!(out, "api_key = \"[REDACTED]\"");
        assert_eq!(n, 1);
    }

    #[test]
    fn ordinary_code_is_left_alone() {
        let clean = [
            "password: ${DB_PASSWORD}",
            "let token = get_token_from_env();",
            "secret: short",
            "token: <your token here>",
            "password = \"{{ .Values.password }}\"",
            "risk-assessment-framework-module-abc",
            "fn parse_token(input: &str) -> Token",
            "AKIA is a prefix used by AWS",
            "bearer of bad news",
            "index 1111111..2222222 100644",
            "skip-this-test-because-it-is-slow",
            "https://github.com/acme/shop/pull/12",
            "postgres://app:${DB_PASSWORD}@db:5432/app",
            "ssh://git@github.com/acme/shop.git",
            "task_list_items and sk_live_ ids",
        ];
        for input in clean {
            let (out, n) = scrub_secrets(input);
            assert_eq!((out.as_str(), n), (input, 0), "{input:?}");
        }
    }

    #[test]
    fn url_credentials_keep_scheme_and_host() {
        let (out, n) = scrub_secrets("redis://default:hunter2hunter2@cache:6379/0");
        assert_eq!(out, "redis://[REDACTED]@cache:6379/0");
        assert_eq!(n, 1);
    }

    #[test]
    fn forks_stay_away_from_external_providers_unless_allowed() {
        let external = Capabilities {
            json_schema: true,
            max_context_tokens: 1000,
            external: true,
        };
        let local = Capabilities {
            external: false,
            ..external.clone()
        };
        assert!(matches!(
            may_send(&external, true, false),
            Err(AiError::Disabled(_))
        ));
        assert_eq!(may_send(&external, true, true), Ok(()));
        assert_eq!(may_send(&external, false, false), Ok(()));
        assert_eq!(may_send(&local, true, false), Ok(()));
    }
}
