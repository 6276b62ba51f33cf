//! `previewd-scenario`: the scale and soak scenarios. Progress goes to stderr; the last
//! line on stdout is one JSON object with the figures.
//!
//! ```sh
//! export $(testenv/up | tail -n1)
//! cargo build --release -p previewd-operator -p previewd-scenario
//! target/release/previewd-scenario scale --environments 100 --services 5
//! target/release/previewd-scenario soak --events 1000
//! ```

use clap::{Parser, Subcommand};

/// Scale and soak scenarios against the local control plane (loopback only).
#[derive(Debug, Parser)]
#[command(name = "previewd-scenario", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// N environments × S services: webhook to Ready to gone, with the figures.
    Scale(previewd_scenario::scale::ScaleArgs),
    /// Randomized PR events with crashes and restarts, then the invariants.
    Soak(previewd_scenario::soak::SoakArgs),
    /// The floor alone: the same objects applied and deleted with no operator.
    Floor(previewd_scenario::floor::FloorArgs),
    /// Beyond one cluster, in simulation: time to all Ready over K target clusters.
    Clusters(previewd_scenario::clusters::ClustersArgs),
    /// GitHub reporting in simulation: how long the backlog of a burst takes to drain.
    ReportSim(previewd_scenario::report_sim::ReportSimArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let value = match cli.command {
        Command::Scale(args) => previewd_scenario::scale::run(args).await?,
        Command::Soak(args) => previewd_scenario::soak::run(args).await?,
        Command::Floor(args) => previewd_scenario::floor::run(args).await?,
        Command::Clusters(args) => previewd_scenario::clusters::run(&args),
        // The simulation runs its own runtime on a paused clock.
        Command::ReportSim(args) => {
            tokio::task::spawn_blocking(move || previewd_scenario::report_sim::run(&args)).await??
        }
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    println!("{value}");
    Ok(())
}
