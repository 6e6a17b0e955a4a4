//! The `lobby` binary: flags, logging, bind, then `lobby::run` until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use lobby::Config;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// glibc's allocator keeps the heap it grew for the large transient buffers
/// of a ramp (every join reply and snapshot lists everyone), so an idle lobby
/// would hold that memory for ever; mimalloc gives it back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(err) => return flag_error(err),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    raise_open_file_limit();
    let tls = match lobby::tls(&config) {
        Ok(tls) => tls,
        Err(err) => {
            eprintln!("lobby: {err}");
            return ExitCode::FAILURE;
        }
    };

    let listener = match TcpListener::bind(config.bind).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("lobby: cannot listen on {}: {err}", config.bind);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.bind);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("lobby listening on {addr}; open {scheme}://{addr}/ in a browser");

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
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "the following required arguments were not provided:" names them below.
    match lines.next().filter(|_| first.ends_with(':')) {
        Some(what) => eprintln!("lobby: {first} {what} (see lobby --help)"),
        None => eprintln!("lobby: {first} (see lobby --help)"),
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
    tracing::info!("shutting down: closing every stream");
}
