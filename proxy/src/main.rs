//! `pov-proxy`: see `pov_proxy::cli` for the options and `pov_proxy` for the design.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = pov_proxy::cli::Args::parse();
    match pov_proxy::cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pov-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
