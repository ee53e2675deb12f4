//! The `vsactl` binary: parse arguments, run, exit with the contract's status.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vsactl::cli::Cli::parse();
    vsactl::run(cli, &vsactl::context::Env::from_process())
}
