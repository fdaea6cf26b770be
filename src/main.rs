//! `shorthorn`: the one binary. Daemons (manager, replica, engine) and the CLI share it;
//! this file only parses the command line and hands each subcommand to its module.

mod agent;
mod api;
mod cli;
mod credentials;
mod daemon;
mod metrics;
mod process;
mod size;
mod ui;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.log_format);
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
