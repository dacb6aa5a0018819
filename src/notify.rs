//! systemd's notify protocol for `Type=notify` units, spoken from a thread of its own so it
//! keeps talking while `Server::shutdown` blocks:
//!
//! - `READY=1` when `Metrics::ready` (the same check as `GET /readyz`) first holds. READY=1,
//!   and with it the return of `systemctl start`, comes once every executor listens and,
//!   with a spool (`spool_dir`, set in the packaged config), each executor's first spool
//!   segment is ready: it does not wait for the broker, because the spool takes records
//!   (201/202) while the broker is away. Without a spool it also waits for the broker's
//!   metadata and the producer's idempotent producer id; a broker that stays unreachable
//!   then fails the start after `TimeoutStartSec=`.
//! - `STATUS=` one line every few seconds: req/s, queued records, broker up/down;
//! - `WATCHDOG=1` at half of `WatchdogSec=`, and only if every executor's ticker and the
//!   Kafka thread advanced their heartbeats since the previous check, so a stuck thread
//!   stops the pings and systemd kills and restarts the service;
//! - `STOPPING=1` at shutdown, then `EXTEND_TIMEOUT_USEC=` every second until the drain and
//!   flush are done, never past ingestd's own worst case (`drain_ms + 2 x
//!   shutdown_timeout_ms`).
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) no thread is started and every call is
//! a no-op.

use crate::metrics::{Metrics, CODES};
use sd_notify::NotifyState;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How often `STATUS=` is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often readiness is polled until `READY=1` is sent.
const READY_POLL: Duration = Duration::from_millis(50);
/// How often `EXTEND_TIMEOUT_USEC=` is repeated while shutting down.
const EXTEND_EVERY: Duration = Duration::from_secs(1);
/// Slack on top of ingestd's own shutdown deadlines before systemd may kill it.
const EXTEND_SLACK: Duration = Duration::from_secs(5);

/// Handle kept by `main`: tells the notifier thread that shutdown began and waits for it.
pub struct Notifier {
    tx: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the notifier thread when `NOTIFY_SOCKET` is set; otherwise returns an inert
    /// handle. `stop_bound` is the longest a stop takes: `drain_ms + 2 x shutdown_timeout_ms`.
    pub fn start(metrics: Arc<Metrics>, stop_bound: Duration) -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier {
                tx: None,
                thread: None,
            };
        }
        // Follows sd_watchdog_enabled(3): WATCHDOG_USEC, and WATCHDOG_PID naming this process
        // when set.
        let watchdog = sd_notify::watchdog_enabled();
        info!(
            watchdog_ms = watchdog.map(|w| w.as_millis() as u64),
            "systemd notify socket found"
        );
        let (tx, rx) = mpsc::channel();
        let state = State::new(metrics, watchdog, stop_bound);
        let thread = std::thread::Builder::new()
            .name("ingestd-notify".into())
            .spawn(move || state.run(rx));
        match thread {
            Ok(t) => Notifier {
                tx: Some(tx),
                thread: Some(t),
            },
            Err(e) => {
                warn!(error = %e, "cannot start the systemd notify thread");
                Notifier {
                    tx: None,
                    thread: None,
                }
            }
        }
    }

    /// Shutdown began: `STOPPING=1`, then keep extending the stop timeout.
    pub fn stopping(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(());
        }
    }

    /// Shutdown finished: stop the thread.
    pub fn stopped(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Tells systemd why the start failed (shown by `systemctl status`).
pub fn failed(reason: &str) {
    let line = format!("failed: {}", reason.replace('\n', " "));
    let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
}

struct State {
    metrics: Arc<Metrics>,
    watchdog: Option<Duration>,
    /// Worst case of a graceful stop: connection drain plus producer flush, plus slack.
    stop_budget: Duration,
    ready: bool,
    stopping: Option<Instant>,
    next_status: Instant,
    next_watchdog: Instant,
    next_extend: Instant,
    heartbeats: Heartbeats,
    /// Requests counted at the previous STATUS line, and when.
    last_requests: (u64, Instant),
    /// A watchdog check found a stalled thread (logged once per episode).
    stalled: bool,
    send_failed: bool,
}

impl State {
    fn new(metrics: Arc<Metrics>, watchdog: Option<Duration>, stop_bound: Duration) -> State {
        let now = Instant::now();
        State {
            heartbeats: Heartbeats::new(&metrics),
            last_requests: (requests(&metrics), now),
            metrics,
            watchdog,
            stop_budget: stop_bound + EXTEND_SLACK,
            ready: false,
            stopping: None,
            next_status: now,
            next_watchdog: now,
            next_extend: now,
            stalled: false,
            send_failed: false,
        }
    }

    fn run(mut self, rx: mpsc::Receiver<()>) {
        loop {
            self.tick(Instant::now());
            let wait = self.next_due().saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(()) if self.stopping.is_none() => {
                    let now = Instant::now();
                    self.stopping = Some(now);
                    self.next_status = now;
                    self.next_extend = now;
                    self.send(&[NotifyState::Stopping]);
                }
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn next_due(&self) -> Instant {
        let mut due = self.next_status;
        if self.stopping.is_some() {
            due = due.min(self.next_extend);
        } else if !self.ready {
            due = due.min(Instant::now() + READY_POLL);
        } else if self.watchdog.is_some() {
            due = due.min(self.next_watchdog);
        }
        due
    }

    fn tick(&mut self, now: Instant) {
        if let Some(since) = self.stopping {
            if now >= self.next_extend {
                self.next_extend = now + EXTEND_EVERY;
                // Never promise more than ingestd's own deadlines allow.
                let left = self.stop_budget.saturating_sub(now - since);
                if !left.is_zero() {
                    let usec = left.as_micros().min(u32::MAX as u128) as u32;
                    self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
                }
            }
        } else if !self.ready && self.metrics.ready() {
            self.ready = true;
            // systemd arms the watchdog now; the first check compares against this baseline.
            self.heartbeats.check(&self.metrics);
            self.next_watchdog = now + self.watchdog.unwrap_or_default() / 2;
            let line = self.status_line(now);
            self.send(&[NotifyState::Ready, NotifyState::Status(&line)]);
            self.next_status = now + STATUS_EVERY;
            info!("sent READY=1 to systemd");
        } else if let Some(w) = self.watchdog.filter(|_| self.ready) {
            if now >= self.next_watchdog {
                self.next_watchdog = now + w / 2;
                self.watchdog_check();
            }
        }
        if now >= self.next_status {
            self.next_status = now + STATUS_EVERY;
            let line = self.status_line(now);
            self.send(&[NotifyState::Status(&line)]);
        }
    }

    /// Pings only if every thread made progress since the previous check.
    fn watchdog_check(&mut self) {
        let stuck = self.heartbeats.check(&self.metrics);
        if stuck.is_empty() {
            if self.stalled {
                info!("watchdog: every thread makes progress again");
                self.stalled = false;
            }
            self.send(&[NotifyState::Watchdog]);
        } else if !self.stalled {
            self.stalled = true;
            warn!(
                stalled = %stuck.join(", "),
                "watchdog: no progress since the last check; withholding WATCHDOG=1"
            );
        }
    }

    fn status_line(&mut self, now: Instant) -> String {
        let m = &self.metrics;
        if let Some(since) = self.stopping {
            return format!(
                "stopping: draining and flushing to Kafka ({:.1} s, at most {} s)",
                (now - since).as_secs_f64(),
                self.stop_budget.as_secs()
            );
        }
        if !self.ready {
            return format!(
                "starting: listeners {}, broker metadata {}, producer id {}",
                if m.listening.load(Relaxed) {
                    "bound"
                } else {
                    "binding"
                },
                if m.broker_ready.load(Relaxed) {
                    "known"
                } else {
                    "waiting"
                },
                if m.producer_ready.load(Relaxed) {
                    "assigned"
                } else {
                    "waiting"
                },
            );
        }
        let reqs = requests(m);
        let (prev, at) = std::mem::replace(&mut self.last_requests, (reqs, now));
        let secs = (now - at).as_secs_f64();
        let rate = if secs > 0.0 {
            reqs.wrapping_sub(prev) as f64 / secs
        } else {
            0.0
        };
        let failed: u64 = m.kafka.failed.iter().map(|f| f.load(Relaxed)).sum();
        let mut line = format!(
            "{:.0} req/s, {} records queued, {} connections, broker {}, {} delivered, {} failed",
            rate,
            m.total(|e| &e.queue_records),
            m.total(|e| &e.connections),
            if m.broker_ready.load(Relaxed) {
                "up"
            } else {
                "DOWN"
            },
            m.kafka.delivered.load(Relaxed),
            failed,
        );
        if m.spooled.load(Relaxed) {
            let seg = m.total(|e| &e.spool.segments);
            let left = m.replay_left();
            line.push_str(&format!(", spool {seg} segments"));
            if left > 0 {
                line.push_str(&format!(", replaying {left} records"));
            }
        }
        line
    }

    fn send(&mut self, states: &[NotifyState]) {
        match sd_notify::notify(states) {
            Ok(()) => self.send_failed = false,
            Err(e) if !self.send_failed => {
                self.send_failed = true;
                warn!(error = %e, "cannot write to NOTIFY_SOCKET");
            }
            Err(_) => {}
        }
    }
}

/// Final HTTP responses counted so far (interim `100 Continue` excluded).
fn requests(m: &Metrics) -> u64 {
    let cont = CODES.iter().position(|&c| c == 100);
    m.execs
        .iter()
        .flat_map(|e| e.requests.iter().enumerate())
        .filter(|(i, _)| Some(*i) != cont)
        .map(|(_, n)| n.load(Relaxed))
        .sum()
}

/// Last seen heartbeat of every executor, then of the Kafka thread.
struct Heartbeats(Vec<u64>);

impl Heartbeats {
    fn new(m: &Metrics) -> Heartbeats {
        Heartbeats(Self::read(m))
    }

    fn read(m: &Metrics) -> Vec<u64> {
        m.execs
            .iter()
            .map(|e| e.heartbeat.load(Relaxed))
            .chain([m.kafka.heartbeat.load(Relaxed)])
            .collect()
    }

    /// Names of the threads whose heartbeat did not move since the previous call.
    fn check(&mut self, m: &Metrics) -> Vec<String> {
        let now = Self::read(m);
        let kafka = now.len() - 1;
        let stuck = now
            .iter()
            .zip(&self.0)
            .enumerate()
            .filter(|(_, (a, b))| a == b)
            .map(|(i, _)| {
                if i == kafka {
                    "kafka thread".to_string()
                } else {
                    format!("executor {i}")
                }
            })
            .collect();
        self.0 = now;
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::bump;

    #[test]
    fn heartbeats_name_the_stalled_threads() {
        let m = Metrics::new(2);
        let mut h = Heartbeats::new(&m);
        assert_eq!(h.check(&m).len(), 3, "nothing moved yet");
        bump(&m.execs[0].heartbeat, 1);
        bump(&m.execs[1].heartbeat, 1);
        bump(&m.kafka.heartbeat, 1);
        assert!(h.check(&m).is_empty());
        bump(&m.execs[0].heartbeat, 1);
        bump(&m.execs[1].heartbeat, 1);
        assert_eq!(h.check(&m), vec!["kafka thread"]);
        bump(&m.execs[0].heartbeat, 1);
        bump(&m.kafka.heartbeat, 1);
        assert_eq!(h.check(&m), vec!["executor 1"]);
    }

    #[test]
    fn status_lines() {
        let m = Metrics::new(1);
        let mut s = State::new(m.clone(), None, Duration::from_secs(20));
        let t0 = Instant::now();
        assert_eq!(
            s.status_line(t0),
            "starting: listeners binding, broker metadata waiting, producer id waiting"
        );
        m.listening.store(true, Relaxed);
        m.broker_ready.store(true, Relaxed);
        s.ready = true;
        s.last_requests = (0, t0);
        m.execs[0].request(202, 10);
        m.execs[0].request(202, 10);
        m.execs[0].request(100, 10);
        bump(&m.execs[0].queue_records, 5);
        let line = s.status_line(t0 + Duration::from_secs(1));
        assert!(line.starts_with("2 req/s, 5 records queued"), "{line}");
        assert!(line.contains("broker up"), "{line}");
        s.stopping = Some(t0);
        let line = s.status_line(t0 + Duration::from_millis(1500));
        assert!(line.starts_with("stopping:") && line.contains("1.5 s, at most 25 s"));
    }
}
