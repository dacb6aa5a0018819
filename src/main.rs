//! Thin entry point: flags and config, logging, start, wait for a signal, stop.

use clap::Parser;
use ingestd::config::{Cli, Config, LogFormat};
use ingestd::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::process::ExitCode;

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
        println!("configuration ok: {cfg:#?}");
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg);
    let mut signals = Signals::new([SIGTERM, SIGINT]).expect("signal handlers");
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ingestd: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ingestd listening on {}", server.addr);
    let first = signals.forever().next();
    tracing::info!(signal = first, "signal received");
    // A second signal exits at once, without flushing.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            tracing::warn!("second signal: exiting without flush");
            std::process::exit(130);
        }
    });
    server.shutdown();
    ExitCode::SUCCESS
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
