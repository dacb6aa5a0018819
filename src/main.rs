//! Thin entry point: flags and config, logging, start, wait for a signal, stop.

use clap::Parser;
use ingestd::config::{Cli, Config, LogFormat};
use ingestd::exec::server::Server;
use ingestd::notify::{self, Notifier};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
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
    // Any panic ends the process, after the usual message: a thread that died (the Kafka
    // thread above all) would otherwise leave executors answering 202 into lanes nobody
    // drains while /readyz still says 200. Exiting lets systemd restart the service.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("panic: exiting (abort) so that the service is restarted");
        std::process::abort();
    }));
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP]).expect("signal handlers");
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ingestd: {e}");
            notify::failed(&e);
            return ExitCode::FAILURE;
        }
    };
    // Tests and scripts read this line: the plain address first, then the HTTPS one.
    let mut line = String::from("ingestd listening on");
    if let Some(a) = server.addr {
        line += &format!(" {a}");
    }
    if let Some(a) = server.tls_addr {
        line += &format!(" tls {a}");
    }
    if let Some(a) = server.admin_addr {
        line += &format!(" admin {a}");
    }
    println!("{line}");
    // systemd: READY=1 once ready, STATUS=, WATCHDOG=1 (no-op without NOTIFY_SOCKET).
    let drain = Duration::from_millis(server.cfg.drain_ms);
    let stop_bound = drain + 2 * Duration::from_millis(server.cfg.shutdown_timeout_ms);
    let notifier = Notifier::start(server.metrics.clone(), stop_bound);
    // SIGHUP reads the configuration again for its tenants, tokens and JWT keys, and
    // loads the TLS files again (systemd's ExecReload); the others stop.
    let first = signals.forever().find(|&s| {
        if s == SIGHUP {
            server.reload(Config::load(&cli, std::env::vars()));
        }
        s != SIGHUP
    });
    tracing::info!(signal = first, "signal received");
    // A second signal exits at once, without flushing.
    std::thread::spawn(move || {
        if signals.forever().any(|s| s != SIGHUP) {
            tracing::warn!("second signal: exiting without flush");
            std::process::exit(130);
        }
    });
    notifier.stopping();
    if !drain.is_zero() {
        // Still serving; /readyz turns 503 so health checks move clients elsewhere.
        tracing::info!(
            drain_ms = server.cfg.drain_ms,
            "draining: /readyz answers 503, still serving"
        );
        server
            .metrics
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(drain);
    }
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
