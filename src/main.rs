//! Thin entry point: flags and config, logging, start, wait for a signal, stop.

use clap::Parser;
use ingestd::config::{Cli, Config, LogFormat};
use ingestd::notify::{self, Notifier};
use ingestd::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(&cli, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ingestd: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        print!("{}", cfg.describe());
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg);
    let mut signals = Signals::new([SIGTERM, SIGINT]).expect("signal handlers");
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ingestd: {e}");
            notify::failed(&e);
            return ExitCode::FAILURE;
        }
    };
    println!("ingestd listening on {}", server.addr);
    // systemd: READY=1 once ready, STATUS=, WATCHDOG=1 (no-op without NOTIFY_SOCKET).
    let shutdown_timeout = Duration::from_millis(server.cfg.shutdown_timeout_ms);
    let notifier = Notifier::start(server.metrics.clone(), shutdown_timeout);
    let first = signals.forever().next();
    tracing::info!(signal = first, "signal received");
    // A second signal exits at once, without flushing.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            tracing::warn!("second signal: exiting without flush");
            std::process::exit(130);
        }
    });
    notifier.stopping();
    server.shutdown();
    notifier.stopped();
    ExitCode::SUCCESS
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    // Colors only on a terminal: under systemd stderr is the journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
