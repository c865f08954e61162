//! The `wasp` binary: CLI parsing, tracing setup, then one library call.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser};

/// A WebAssembly-scriptable L4/L7 proxy and load balancer.
#[derive(Debug, Parser)]
#[command(name = "wasp", version)]
enum Cli {
    /// Validate a config file and print every problem found, compiler-style, to stderr.
    ///
    /// Exits 1 when there is any error, 0 when the file is clean or has warnings only.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The config file.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    match Cli::parse() {
        Cli::Check(args) => check(&args),
    }
}

/// Diagnostics go to stderr (like a compiler's), so stdout stays free for machine output.
fn check(args: &CheckArgs) -> ExitCode {
    let (_config, report) = wasp::config::load(&args.config);
    eprint!("{}", report.render());
    if report.has_errors() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
