//! Beyond one cluster, in simulation: N environments whose objects are spread over K
//! target clusters, each with an API server that carries out a measured number of
//! writes a second, while every environment's own records (the `PreviewEnvironment`,
//! its status, Events, report confirmations) are written to one management API server.
//! A fluid model with one-second steps: pull requests arrive at a rate; each environment
//! needs its target writes (previewd's applies and what Kubernetes' controllers, the
//! scheduler and the kubelets write for them) on its cluster, and its management writes
//! on the management API server, each queue served first come first served. The
//! figures that go in are the scale run's (writes per environment from the audit log,
//! write throughput from the floor), so the answer is sized from evidence, not guessed.

use clap::Args;
use serde_json::{Value, json};

/// Flags of `previewd-scenario clusters`.
#[derive(Clone, Debug, Args)]
pub struct ClustersArgs {
    /// Environments, comma-separated (one row each).
    #[arg(long, default_value = "1000,5000,20000", value_delimiter = ',')]
    pub environments: Vec<u64>,
    /// Target clusters, comma-separated (one column each).
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    pub clusters: Vec<u64>,
    /// Writes per environment on its target cluster (previewd's applies and
    /// Kubernetes' own writes for them), from the audit log.
    #[arg(long)]
    pub target_writes: f64,
    /// Writes per environment on the management API server (the environment object, its
    /// status, Events, report confirmations), from the audit log.
    #[arg(long)]
    pub management_writes: f64,
    /// Writes a second one API server carries out, from the floor.
    #[arg(long)]
    pub writes_per_second: f64,
    /// Pull requests opened per second.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// The management API server is also the first target cluster (a single cluster
    /// today).
    #[arg(long)]
    pub management_is_a_target: bool,
}

/// Seconds until every environment's writes are done.
pub fn time_to_all_ready(environments: u64, clusters: u64, args: &ClustersArgs) -> f64 {
    let k = clusters.max(1) as usize;
    let mut target_backlog = vec![0.0f64; k];
    let mut management_backlog = 0.0f64;
    let mut arrived = 0u64;
    let mut t = 0u64;
    let rate = args.rate.max(0.001);
    // Environments go round-robin to clusters; a step moves each queue by what its API
    // server carries out in a second (the shared one splits its second between both
    // queues in proportion to their backlogs).
    loop {
        let due = ((t + 1) as f64 * rate).floor() as u64;
        while arrived < environments.min(due) {
            target_backlog[(arrived % k as u64) as usize] += args.target_writes;
            management_backlog += args.management_writes;
            arrived += 1;
        }
        for (i, backlog) in target_backlog.iter_mut().enumerate() {
            if i == 0 && args.management_is_a_target {
                let total = *backlog + management_backlog;
                if total > 0.0 {
                    let done = args.writes_per_second.min(total);
                    let share = *backlog / total;
                    *backlog -= done * share;
                    management_backlog -= done * (1.0 - share);
                }
            } else {
                *backlog = (*backlog - args.writes_per_second).max(0.0);
            }
        }
        if !args.management_is_a_target {
            management_backlog = (management_backlog - args.writes_per_second).max(0.0);
        }
        t += 1;
        let done = target_backlog.iter().all(|b| *b < 0.5) && management_backlog < 0.5;
        if (arrived >= environments && done) || t > 10 * 24 * 3600 {
            return t as f64;
        }
    }
}

/// `previewd-scenario clusters`: the table.
pub fn run(args: &ClustersArgs) -> Value {
    let rows: Vec<Value> = args
        .environments
        .iter()
        .map(|n| {
            let cells: serde_json::Map<String, Value> = args
                .clusters
                .iter()
                .map(|k| {
                    (
                        format!("clusters_{k}"),
                        json!(time_to_all_ready(*n, *k, args)),
                    )
                })
                .collect();
            json!({"environments": n, "seconds_to_all_ready": cells})
        })
        .collect();
    json!({
        "scenario": "clusters",
        "model": {
            "target_writes_per_environment": args.target_writes,
            "management_writes_per_environment": args.management_writes,
            "api_server_writes_per_second": args.writes_per_second,
            "rate_per_second": args.rate,
            "management_is_a_target": args.management_is_a_target,
        },
        "rows": rows,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(shared: bool) -> ClustersArgs {
        ClustersArgs {
            environments: vec![],
            clusters: vec![],
            target_writes: 50.0,
            management_writes: 5.0,
            writes_per_second: 100.0,
            rate: 1000.0,
            management_is_a_target: shared,
        }
    }

    #[test]
    fn more_clusters_divide_the_target_writes_until_management_bounds_them() {
        let a = args(false);
        // One cluster: 1000 × 50 writes at 100/s.
        assert_eq!(time_to_all_ready(1000, 1, &a), 500.0);
        assert_eq!(time_to_all_ready(1000, 2, &a), 250.0);
        // Past 10 clusters the management API server (1000 × 5 at 100/s) is the bound.
        assert_eq!(time_to_all_ready(1000, 20, &a), 50.0);
        // A single cluster that is also the management one carries both.
        assert_eq!(time_to_all_ready(1000, 1, &args(true)), 550.0);
    }
}
