//! Scale, soak and fault scenarios for previewd.
//!
//! Each scenario runs the real `previewd` binary as a child process against the cluster
//! named by `KUBECONFIG` (the local control plane of `testenv/up`), in a namespace of its
//! own, and drives it the way production does: signed `pull_request` webhooks, and a
//! GitHub-speaking server on loopback for everything the operator asks GitHub. The
//! operator talks to the API server through a counting proxy, so every request it makes
//! is counted by verb and resource. Nothing leaves 127.0.0.1.
//!
//! * [`scale`]: N environments with S services each, from webhook to Ready to gone,
//!   with latency percentiles, API requests per environment, operator memory and CPU.
//! * [`floor`]: the same objects applied without previewd, by parallel clients: what
//!   the cluster must do anyway, which every scale figure is divided by.
//! * [`report_sim`]: the GitHub reporter replayed on a paused clock, for how long
//!   reporting takes to catch up under GitHub's secondary limits.
//! * [`clusters`]: beyond one cluster, in simulation: how long N environments take over
//!   K target clusters, from the writes per environment and the write throughput
//!   measured here.
//! * [`soak`]: randomized PR events while the operator is killed, the API server and
//!   etcd are restarted and watches expire; then the invariants.
//!
//! The command `previewd-scenario` runs them and prints one JSON object as its last line.

pub mod audit;
pub mod cluster;
pub mod clusters;
pub mod floor;
pub mod github;
pub mod operator;
pub mod proxy;
pub mod report_sim;
pub mod rig;
pub mod scale;
pub mod soak;
pub mod stats;
pub mod webhook;
