//! A small soak of the `previewd` binary on the local control plane: a few dozen
//! randomized PR events (open, push, label, unlabel, close, reopen, duplicate and
//! out-of-order deliveries) with one SIGKILL of the operator and one forced watch expiry,
//! then the invariants (see `previewd_scenario::soak`). API-server and etcd restarts are
//! left to `previewd-scenario soak --control-plane-restarts` on a private control plane:
//! the suite's cluster is shared and is never restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use previewd_scenario::soak::{self, SoakArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_events_with_a_crash_keep_every_invariant() {
    let mut args = SoakArgs::small(36, 4);
    args.previewd_bin = Some(env!("CARGO_BIN_EXE_previewd").into());
    let report = soak::run(args).await.expect("soak ran");
    eprintln!("{report:#}");
    assert_eq!(report["events"], 36, "{report:#}");
    assert_eq!(report["faults"]["operator_sigkill"], 1, "{report:#}");
    assert_eq!(report["faults"]["watch_expiry"], 1, "{report:#}");
    assert!(
        report["watch_streams_ended"].as_u64().unwrap()
            + report["watches_answered_410"].as_u64().unwrap()
            > 0,
        "the forced expiry reached the operator's watches: {report:#}"
    );
    assert_eq!(report["violations"], 0, "{report:#}");
}
