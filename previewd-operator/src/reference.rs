//! The configuration reference (`docs/configuration.md`), generated from the flags
//! themselves so that it cannot drift: `cargo test -p previewd-operator --test
//! configuration_reference` fails when the committed file differs, and rewrites it with
//! `PREVIEWD_BLESS=1`.

use std::fmt::Write as _;

use clap::CommandFactory;

use crate::cli::Cli;

/// The reference of every flag of `previewd run`, as Markdown.
pub fn configuration_markdown() -> String {
    let mut cli = Cli::command();
    cli.build();
    let mut out = String::new();
    out.push_str(
        "# Configuration reference\n\n\
         <!-- Generated from the flags by previewd-operator/src/reference.rs; do not edit. \
         Regenerate with `PREVIEWD_BLESS=1 cargo test -p previewd-operator --test \
         configuration_reference`. -->\n\n\
         Every flag of `previewd run` can also be set with the environment variable shown \
         (the Helm chart sets them from its values). Durations are written like `30s`, `5m`, \
         `4h`, `7d`.\n\n",
    );
    let run = cli
        .get_subcommands()
        .find(|c| c.get_name() == "run")
        .cloned()
        .unwrap_or_else(|| cli.clone());
    out.push_str("| flag | environment variable | default | description |\n");
    out.push_str("|---|---|---|---|\n");
    for arg in run.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| format!("`{}`", v.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(", ");
        let values = arg
            .get_possible_values()
            .iter()
            .map(|v| format!("`{}`", v.get_name()))
            .collect::<Vec<_>>();
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
            .replace('\n', " ")
            .replace('|', "\\|");
        if !values.is_empty() {
            let _ = write!(help, " One of {}.", values.join(", "));
        }
        let _ = writeln!(out, "| `--{long}` | {env} | {default} | {help} |");
    }
    out.push_str(
        "\nAI settings are read from the environment (and from the ConfigMap named by \
         `--ai-config-map`): `ENABLE_AI`, `AI_PROVIDER` (`openai` or `ollama`), \
         `AI_BASE_URL`, `AI_MODEL`, `OPENAI_API_KEY`. The log filter is `RUST_LOG` \
         (default `info`).\n",
    );
    out
}
