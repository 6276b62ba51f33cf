//! Where the real model is, for the tests that need one.
//!
//! - `PREVIEWD_LLM_URL` set: that server (started by `scripts/llm-up`).
//! - Not set, and `PREVIEWD_LLM_REQUIRED=1` (what `scripts/test` and CI set): the test
//!   fails, whatever else is set; a suite that expects a model never passes without one.
//! - Not set, and `PREVIEWD_SKIP_REAL_LLM=1`: the test is skipped, saying so.
//! - Otherwise the test fails and says how to start the server or skip.

/// The base URL of the real model server, or `None` when the test is to be skipped.
pub fn real_model_url() -> Option<String> {
    let url = std::env::var("PREVIEWD_LLM_URL")
        .ok()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty());
    let flag = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    match url {
        Some(url) => Some(url),
        None if flag("PREVIEWD_LLM_REQUIRED") => panic!(
            "the suite expects a model server (PREVIEWD_LLM_REQUIRED=1) but PREVIEWD_LLM_URL \
             is not set: scripts/llm-up failed or its output was not exported"
        ),
        None if flag("PREVIEWD_SKIP_REAL_LLM") => {
            eprintln!("SKIPPED: real-model test (PREVIEWD_SKIP_REAL_LLM=1)");
            None
        }
        None => panic!(
            "PREVIEWD_LLM_URL is not set. Start the local model server with \
             `eval \"$(scripts/llm-up | tail -n1 | sed 's/^/export /')\"` and run the tests \
             again (or set PREVIEWD_SKIP_REAL_LLM=1 to skip them)."
        ),
    }
}
