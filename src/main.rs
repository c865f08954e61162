//! The `wasp` binary: CLI parsing, tracing setup, then one library call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use wasp::config::{self, LogFormat};

/// mimalloc: a proxy allocates and frees small buffers on every request. With one runtime per
/// worker they are mostly freed on the thread that allocated them, and mimalloc (v2) still
/// takes fewer instructions and less CPU per request there than glibc (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "wasp",
    version,
    about = "A WebAssembly-scriptable L4/L7 proxy and load balancer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a config; SIGHUP reloads it, SIGTERM/SIGINT drain and stop.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config and print every problem as FILE:LINE:COL diagnostics (to stderr);
    /// exits 1 on any error, 0 when clean or with warnings only.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start the reference lab in one process: echo servers node1..node4 and lab 2's routing.
    Demo,
    /// Wasm plugins: `wasp plugin new NAME --role router` scaffolds a plugin crate.
    Plugin {
        #[command(subcommand)]
        action: PluginCommand,
    },
    /// Talk to a running wasp's runtime API (the [admin] listener): list, drain, reweight,
    /// add and remove servers, reload.
    Ctl(wasp::admin::ctl::CtlArgs),
    /// The lab's echo server: answers with its name and what it received.
    Echo {
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "ADDR")]
        listen: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Create a plugin crate that builds with `cargo build --release --target wasm32-wasip2`,
    /// and print the config lines that load it.
    New {
        /// The plugin's (and its crate's) name.
        name: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Where to create the crate's folder.
        #[arg(long, value_name = "D", default_value = ".")]
        dir: PathBuf,
        /// The wasp-plugin SDK (plugins/sdk in wasp's source).
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Role {
    Router,
    Balancer,
    Health,
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasp: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. wasp's own errors already name their cause in their
/// message, so a cause whose text the line holds already is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config } => {
            // Diagnostics go to stderr, like a compiler's; stdout stays free.
            let (loaded, mut report) = config::load_for_check(&config);
            // Plugins load as `run` would load them (compiled, linked, role exports), also
            // when the rest of the file has errors.
            let plugins = match &loaded {
                Ok(loaded) => &loaded.plugins,
                Err(plugins) => plugins,
            };
            report
                .diagnostics
                .extend(wasp::plugin::check::check(plugins));
            report.diagnostics.sort_by_key(|d| (d.line, d.col));
            eprint!("{}", report.render());
            Ok(if report.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Run { config } => {
            let (loaded, report) = config::load(&config);
            let Some(loaded) = loaded else {
                eprint!("{}", report.render());
                return Ok(ExitCode::FAILURE);
            };
            let _log = init_tracing(loaded.global.log_format);
            open_files();
            wasp::runtime::log_diagnostics(&report);
            control_runtime()?.block_on(wasp::runtime::run(loaded))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            let _log = init_tracing(LogFormat::Text);
            open_files();
            control_runtime()?.block_on(wasp::demo::run())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            action:
                PluginCommand::New {
                    name,
                    role,
                    dir,
                    sdk,
                },
        } => {
            let role = match role {
                Role::Router => config::PluginRole::Router,
                Role::Balancer => config::PluginRole::Balancer,
                Role::Health => config::PluginRole::Health,
            };
            let sdk = sdk.unwrap_or_else(wasp::plugin::scaffold::default_sdk);
            let made = wasp::plugin::scaffold::new_plugin(&name, role, &dir, &sdk)?;
            print!("{}", made.instructions);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(args) => {
            let out = control_runtime()?.block_on(wasp::admin::ctl::run(&args));
            match out {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("wasp ctl: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Echo { name, listen } => {
            let _log = init_tracing(LogFormat::Text);
            let addr: SocketAddr = config::parse_bind(&listen)
                .map_err(anyhow::Error::msg)
                .context("--listen")?;
            control_runtime()?.block_on(async {
                let stop = tokio_util::sync::CancellationToken::new();
                let on_signal = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    on_signal.cancel();
                });
                wasp::echo::run_echo(&name, addr, stop).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Turns transparent huge pages off for this process, before the workers start, unless
/// `MIMALLOC_ALLOW_THP` is set: then mimalloc's own setting decides (`1` keeps them).
///
/// mimalloc gives each thread's heap its own 32 MiB segment and asks for huge pages for
/// them, so every segment a thread touches costs at least 2 MiB of RSS: an idle `wasp run`
/// with 2 workers had 12 to 18 MiB of huge pages, 27 to 29 MiB of RSS in all (HAProxy: 14
/// MiB), and 40 MiB with 8 workers. Without them: 17 and 16 MiB. With them wasp served
/// about 1% more requests per second on lab 2 (docs/benchmarks.md). The setting is the
/// process's own: other processes and the host keep theirs.
fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    // It fails only on kernels older than 3.15, which then serve with huge pages as before.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Raises the open-file limit to the hard limit (`wasp::limits`) and says what it is: a warning
/// when it stays low enough to cap the connections served.
fn open_files() {
    match wasp::limits::raise_open_files() {
        Ok(files) if files.now < wasp::limits::LOW_OPEN_FILES => tracing::warn!(
            limit = files.now,
            "the open-file limit is low: each client connection and each server connection \
             takes one, and accepts fail beyond it; raise the hard limit (ulimit -Hn, \
             systemd LimitNOFILE=)"
        ),
        Ok(files) if files.now > files.before => {
            tracing::info!(
                limit = files.now,
                was = files.before,
                "open-file limit raised"
            )
        }
        Ok(files) => tracing::debug!(limit = files.now, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// The main thread's runtime: signals, reloads and accept loops. Connections are served on
/// the worker threads the library starts (`[global] workers`).
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// The default log filter. The HTTP/2 and TLS libraries log what a peer did wrong at `warn`,
/// one line per offending frame or message: a client sending unsolicited PING acks would
/// write 150 bytes of log for every 17 it sends. wasp logs the outcome itself (the refused
/// request, the closed connection), so theirs are kept to errors.
const DEFAULT_LOG_FILTER: &str = "info,h2=error,rustls=error";

/// Logs go to stdout through a background writer, so a slow terminal or pipe never stalls a
/// worker (lines are dropped instead if it falls far behind). `RUST_LOG` replaces
/// [`DEFAULT_LOG_FILTER`], e.g. `RUST_LOG=info,wasp::access=off` silences the access log.
fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::describe;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:80: {source}")]
    struct Named {
        source: io::Error,
    }

    fn in_use() -> io::Error {
        io::Error::new(io::ErrorKind::AddrInUse, "Address already in use")
    }

    #[test]
    fn a_cause_the_message_names_is_not_repeated() {
        let e = anyhow::Error::new(Named { source: in_use() });
        assert_eq!(
            describe(&e),
            "cannot listen on 127.0.0.1:80: Address already in use"
        );
    }

    #[test]
    fn a_context_keeps_its_cause() {
        let e = anyhow::Error::new(in_use()).context("--listen");
        assert_eq!(describe(&e), "--listen: Address already in use");
    }
}
