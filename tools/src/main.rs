//! `streamhub-bench`: the load tool (see the library's documentation for
//! the scenarios). Exit codes as the server's: 0 success, 1 failure, 2 bad
//! usage.

use std::process::ExitCode;

use streamhub::error::Error;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match streamhub_tools::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ Error::Config(_)) => {
            eprintln!("streamhub-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("streamhub-bench: {e}");
            ExitCode::from(1)
        }
    }
}
