use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    #[cfg(feature = "failpoints")]
    a3_server::util::crashpoint::arm_from_env();
    let cli = a3_server::cli::Cli::parse();
    match a3_server::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
