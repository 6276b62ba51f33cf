//! The previewd operator binary: flags, wiring, the admin server (`/healthz`, `/readyz`,
//! `/metrics`), subcommands (`run`, `list`, `describe`, ..., `crd`, `completion`,
//! `catalogue`, `eval-services`, `seed-data`, `junit-summary`) and the web view ([`dashboard`]).

pub mod admin;
pub mod backfill;
pub mod builder;
pub mod cli;
pub mod ctl;
pub mod dashboard;
pub mod junit;
pub mod leader;
pub mod proposals;
pub mod reference;
pub mod run;
pub mod seed;
pub mod waker;

pub use builder::OperatorBuilder;

use std::process::ExitCode;

use crate::cli::Command;

/// Entry point of the binary.
pub async fn main() -> ExitCode {
    // One TLS provider for every client in the process (kube, GitHub, AI).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run(args) => run::run(*args).await,
        Command::Crd => cli::print_crds(),
        Command::Completion(args) => {
            cli::print_completion(&args, &mut std::io::stdout());
            Ok(())
        }
        Command::EvalServices(args) => cli::eval_services(args).await,
        Command::Catalogue(args) => cli::print_catalogue(args),
        Command::List(args) => ctl::list(args).await,
        Command::Describe(args) => ctl::describe(args).await,
        Command::Extend(args) => ctl::extend(args).await,
        Command::Delete(args) => ctl::delete(args).await,
        Command::Sleep(args) => ctl::sleep(args).await,
        Command::Wake(args) => ctl::wake(args).await,
        Command::SeedData(args) => seed::seed_data(args).await,
        Command::JunitSummary(args) => match junit::junit_summary(&args) {
            Ok(false) if args.fail_on_failures => return ExitCode::FAILURE,
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("previewd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
