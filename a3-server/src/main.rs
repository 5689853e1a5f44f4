use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Everything the A3 writes (catalog, store, keys, tokens, agent configs) is owner-only
    // from its creation, not chmodded after.
    // SAFETY: umask only swaps the process's file-creation mask; no memory is involved.
    unsafe { libc::umask(0o077) };
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
