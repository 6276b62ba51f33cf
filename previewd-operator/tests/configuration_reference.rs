//! docs/configuration.md is generated from the flags; this fails when it is stale.
//! Regenerate with `PREVIEWD_BLESS=1 cargo test -p previewd-operator --test configuration_reference`.
#![allow(clippy::unwrap_used)]

#[test]
fn configuration_reference_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    let generated = previewd_operator::reference::configuration_markdown();
    if std::env::var_os("PREVIEWD_BLESS").is_some() {
        std::fs::write(path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/configuration.md is stale: run `PREVIEWD_BLESS=1 cargo test -p previewd-operator \
         --test configuration_reference`"
    );
    // Every flag appears with its environment variable.
    for needle in [
        "`--webhook-secret`",
        "`PREVIEWD_WEBHOOK_SECRET`",
        "`--leader-elect`",
        "`PREVIEWD_LEADER_ELECT_LEASE_DURATION`",
    ] {
        assert!(generated.contains(needle), "{needle} missing");
    }
}
