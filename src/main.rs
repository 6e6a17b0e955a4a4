//! The `lobby` binary: flags, logging, bind, then `lobby::run` until SIGINT or
//! SIGTERM; or, as `lobby watch`, the terminal client in `lobby::watch`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lobby::Config;
use lobby::config::Listen;
use lobby::watch::WatchArgs;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// A small, fast "who's online" server: POST /join, then listen on GET /events.
///
/// With no command it serves; `lobby watch` follows a lobby from the terminal.
#[derive(Debug, Parser)]
#[command(name = "lobby", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    serve: Config,

    /// How log lines are written: pretty (for people) or json (one object a
    /// line, for a log collector).
    #[arg(
        long,
        env = "LOBBY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Pretty,
        value_name = "FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Follow a lobby from the terminal: who is online, then a line per join and leave.
    Watch(WatchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return flag_error(err),
    };
    match cli.command {
        Some(Command::Watch(args)) => watch(args).await,
        None => serve(cli.serve, cli.log_format).await,
    }
}

/// `lobby watch`: its output is its interface, so it logs nothing; an error
/// is one line on stderr and exit code 1.
async fn watch(args: WatchArgs) -> ExitCode {
    match lobby::watch::run(args, signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lobby watch: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Pretty => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Each line one JSON object, its fields (id, name, reason) at the top
        // level, where a collector looks for them.
        LogFormat::Json => logs.json().flatten_event(true).with_ansi(false).init(),
    }
}

async fn serve(config: Config, log_format: LogFormat) -> ExitCode {
    init_logging(log_format);
    raise_open_file_limit();
    let tls = match lobby::tls(&config) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("lobby: {err}");
            return ExitCode::FAILURE;
        }
    };
    // Told before anything is served (`run` reads it again, as it must when
    // a test calls it alone).
    if let Err(err) = config.tickets() {
        eprintln!("lobby: {err}");
        return ExitCode::FAILURE;
    }

    let listen = config.listen();
    let listener = match TcpListener::bind(listen.addr()).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("lobby: cannot listen on {}: {err}", listen.addr());
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen.addr());
    let scheme = if tls.is_some() { "https" } else { "http" };
    // Every interface is a choice the operator did not write down: say why.
    let why = match listen {
        Listen::Port(_) => {
            " (every interface, on PORT, as hosting platforms ask; --bind or LOBBY_BIND would win)"
        }
        Listen::Bind(_) | Listen::Default(_) => "",
    };
    tracing::info!("lobby listening on {addr}{why}; open {scheme}://{addr}/ in a browser");

    match lobby::run_with_tls(listener, config, tls, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("lobby stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("lobby: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print as clap has them; a bad flag or variable is
/// one line, `lobby: <what is wrong>`, and exit code 2.
fn flag_error(err: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let text = err.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "the following required arguments were not provided:" names them on the
    // lines below; bring them onto the one line.
    let missing: Vec<&str> = lines
        .take_while(|line| first.ends_with(':') && line.starts_with("  "))
        .map(str::trim)
        .collect();
    let help = if text.contains("Usage: lobby watch") {
        "lobby watch --help"
    } else {
        "lobby --help"
    };
    if missing.is_empty() {
        eprintln!("lobby: {first} (see {help})");
    } else {
        eprintln!("lobby: {first} {} (see {help})", missing.join(", "));
    }
    ExitCode::from(2)
}

/// Every open stream holds a file descriptor, and the soft limit is often far
/// below the hard one: raise it so the machine, not a default, sets the ceiling.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!("could not raise the open file limit: {err}"),
    }
}

async fn shutdown_signal() {
    signal().await;
    tracing::info!("shutting down: closing every stream");
}

/// Ctrl-C (SIGINT) or SIGTERM.
async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
