use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = a3_server::cli::Cli::parse();
    match a3_server::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
