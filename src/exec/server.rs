//! Starts the pieces: the Kafka thread, the metadata probe, and one Glommio executor per
//! core, each with its own SO_REUSEPORT listener. `Server::shutdown` stops them in order.

use crate::config::Config;
use crate::exec::admit::ConnAuth;
use crate::exec::conn::Conn;
use crate::exec::link::{Link, Refused, Tls};
use crate::exec::local::Exec;
use crate::exec::poller::{counted, Listener, Poller, Sock};
use crate::exec::route::Listener as Kind;
use crate::exec::timer;
use crate::exec::watch::Watch;
use crate::http::response::{self, Conn as Keep};
use crate::kafka::lane::{make_lane, ExecutorLane, KafkaWake};
use crate::kafka::{create_producer, probe_metadata, KafkaShared, KafkaThread};
use crate::metrics::{bump, Metrics};
use crate::spool::{Feed, Spool};
use crate::sys;
use crate::tls::Certs;
use glommio::{LocalExecutorBuilder, Placement};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub struct Server {
    /// The plain HTTP and the HTTPS address (each unless turned off).
    pub addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    /// The admin listener's address (`admin_listen`), if any.
    pub admin_addr: Option<SocketAddr>,
    /// Tenants and per-address limits, shared by the executors; SIGHUP swaps the policy.
    pub edge: Arc<crate::auth::Edge>,
    /// The TLS configuration in use, which SIGHUP loads again.
    pub certs: Option<Arc<Certs>>,
    pub metrics: Arc<Metrics>,
    pub cfg: Arc<Config>,
    shutdown: Arc<AtomicBool>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    kafka: Option<JoinHandle<()>>,
    kafka_shared: Arc<KafkaShared>,
    probe_stop: Arc<AtomicBool>,
    probe: Option<JoinHandle<()>>,
    /// Keeps the embedded mock cluster alive for the process.
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl Server {
    pub fn start(cfg: Config) -> Result<Server, String> {
        let plain = Some(cfg.listen).filter(|_| cfg.plain_http);
        for a in [plain, cfg.tls_listen, cfg.admin_listen]
            .into_iter()
            .flatten()
        {
            if a.port() != 0 && !cfg.takeover && sys::listened_on(a) {
                return Err(format!(
                    "another process already listens on {a}: a second ingestd there would silently take part of its traffic (SO_REUSEPORT). Stop it, or start with --takeover (takeover = true) to hand over during a rolling upgrade"
                ));
            }
        }
        let cfg = Arc::new(cfg);
        let (mock, bootstrap) = if cfg.embedded() {
            embedded(&cfg)?
        } else {
            (None, cfg.brokers.clone())
        };
        let metrics = Metrics::new(cfg.executors);
        metrics
            .spooled
            .store(cfg.spool_dir.is_some(), Ordering::Relaxed);
        metrics.queue_limits[0].store(cfg.queue_max_bytes as u64, Ordering::Relaxed);
        metrics.queue_limits[1].store(cfg.queue_max_records as u64, Ordering::Relaxed);
        metrics.queue_limits[2].store(cfg.memory_max_bytes as u64, Ordering::Relaxed);
        let wake = KafkaWake::new();
        let kafka_shared = Arc::new(KafkaShared {
            wake: wake.clone(),
            stop: AtomicBool::new(false),
        });
        let mut exec_lanes = Vec::new();
        let mut kafka_lanes = Vec::new();
        for i in 0..cfg.executors {
            let (e, k) = make_lane(i as u8, wake.clone());
            exec_lanes.push(e);
            kafka_lanes.push(k);
        }
        let kt = KafkaThread::new(
            cfg.clone(),
            bootstrap.clone(),
            kafka_lanes,
            metrics.clone(),
            kafka_shared.clone(),
        )?;
        let kafka = std::thread::Builder::new()
            .name("ingestd-kafka".into())
            .spawn(move || kt.run())
            .map_err(|e| e.to_string())?;
        wake.set_thread(kafka.thread().clone());

        let probe_stop = Arc::new(AtomicBool::new(false));
        let probe = {
            let p = create_producer(&cfg, &bootstrap, None)?;
            let (m, s) = (metrics.clone(), probe_stop.clone());
            std::thread::Builder::new()
                .name("ingestd-meta".into())
                .spawn(move || probe_metadata(p, m, s))
                .map_err(|e| e.to_string())?
        };

        let retry_after: &'static str =
            Box::leak(format!("retry-after: {}\r\n", cfg.retry_after_secs).into_boxed_str());
        let certs = match cfg.tls_listen {
            Some(_) => {
                let c = Certs::new(cfg.clone(), metrics.clone())?;
                c.watch()
                    .map_err(|e| format!("tls_watch_ms: thread: {e}"))?;
                Some(c)
            }
            None => None,
        };
        let edge = crate::auth::Edge::new(&cfg)?;
        let _ = metrics.edge.set(edge.clone());
        let shutdown = Arc::new(AtomicBool::new(false));
        let allowed = sys::allowed_cpus();
        // Plain, HTTPS, admin: the admin listener is executor 0's alone (health and
        // metrics need no core of their own).
        let mut addrs = [plain, cfg.tls_listen, cfg.admin_listen];
        let mut executors = Vec::new();
        for (i, lane) in exec_lanes.into_iter().enumerate() {
            let cpu = cfg
                .cpus
                .get(i)
                .copied()
                .unwrap_or(allowed[i % allowed.len()]);
            let (tx, rx) = mpsc::channel();
            let (c, m, sd) = (cfg.clone(), metrics.clone(), shutdown.clone());
            let (tls, e) = (certs.clone(), edge.clone());
            let mine = if i == 0 {
                addrs
            } else {
                [addrs[0], addrs[1], None]
            };
            let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("ingestd-exec-{i}"))
                .spawn(move || async move {
                    let listen = Listen { addrs: mine, tls };
                    counted(run_executor(lane, c, m, e, sd, listen, tx, retry_after)).await;
                })
                .map_err(|e| {
                    format!("executor {i} on cpu {cpu}: {e} (raise `ulimit -l` / LimitMEMLOCK)")
                })?;
            executors.push(handle);
            // Executor 0 resolves port 0; the others bind the same concrete ports.
            let got = rx.recv().map_err(|_| {
                format!("executor {i} on cpu {cpu} failed to start: io_uring needs locked memory (>= 512 KiB per executor): raise `ulimit -l` / LimitMEMLOCK")
            })??;
            if i == 0 {
                addrs = got;
            }
        }
        metrics.listening.store(true, Ordering::Release);
        let [addr, tls_addr, admin_addr] = addrs;
        info!(?addr, ?tls_addr, ?admin_addr, executors = cfg.executors, brokers = %bootstrap, "listening");
        Ok(Server {
            addr,
            tls_addr,
            admin_addr,
            edge,
            certs,
            metrics,
            cfg,
            shutdown,
            executors,
            kafka: Some(kafka),
            kafka_shared,
            probe_stop,
            probe: Some(probe),
            _mock: mock,
        })
    }

    /// SIGHUP: loads the TLS files again (new connections get them).
    /// SIGHUP: the TLS files again, and `cfg` (the configuration read again, or the
    /// error that made it invalid): its tenants, tokens and JWT keys take effect for the
    /// next request on every connection; an invalid one keeps the policy in force.
    pub fn reload(&self, cfg: Result<Config, String>) {
        if let Some(c) = &self.certs {
            c.reload("SIGHUP");
        }
        let policies = &self.edge.policies;
        match cfg.and_then(|c| {
            let changed = restart_only_changes(&self.cfg, &c);
            policies.reload(&c).map(|()| changed)
        }) {
            Ok(changed) => {
                let p = policies.current();
                info!(
                    generation = p.generation,
                    tenants = p.tenants.len(),
                    schemas = p.schemas.len(),
                    "SIGHUP: tenants, tokens, JWT keys and schemas reloaded"
                );
                if !changed.is_empty() {
                    warn!(keys = ?changed, "SIGHUP: these settings changed in the file but take a restart (they are not reloaded)");
                }
            }
            Err(e) => {
                policies.reload_failures.fetch_add(1, Ordering::Relaxed);
                if crate::schema::is_schema_error(&e) {
                    policies
                        .schema_reload_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                error!(error = %e, "SIGHUP: the configuration is invalid; the tenants, tokens, keys and schemas in force stay");
            }
        }
    }

    /// Graceful stop: no new connections, finish requests in flight, flush the producer.
    pub fn shutdown(mut self) {
        info!("shutting down: no new connections, finishing requests in flight");
        self.shutdown.store(true, Ordering::Release);
        for h in self.executors.drain(..) {
            if let Err(e) = h.join() {
                error!(error = %e, "executor failed");
            }
        }
        self.kafka_shared.stop.store(true, Ordering::Release);
        self.kafka_shared.wake.wake();
        if let Some(k) = self.kafka.take() {
            let _ = k.join();
        }
        self.probe_stop.store(true, Ordering::Release);
        if let Some(p) = self.probe.take() {
            let _ = p.join();
        }
        info!("stopped");
    }
}

/// Starts an in-process mock cluster with the configured topics.
fn embedded(
    cfg: &Config,
) -> Result<(Option<MockCluster<'static, DefaultProducerContext>>, String), String> {
    let mock = MockCluster::new(1).map_err(|e| format!("embedded mock cluster: {e}"))?;
    let topics = cfg
        .default_topic
        .iter()
        .chain(cfg.topics.iter().filter(|t| *t != "*"));
    for t in topics {
        mock.create_topic(t, cfg.embedded_partitions, 1)
            .map_err(|e| format!("embedded topic {t}: {e}"))?;
    }
    let servers = mock.bootstrap_servers();
    warn!(bootstrap = %servers, "using the embedded mock Kafka cluster: records live in memory only");
    Ok((Some(mock), servers))
}

/// Connections of this executor: the ticker enforces their read deadlines and closes the
/// idle ones at shutdown.
type Registry = Rc<RefCell<Slab<Rc<Watch>>>>;

/// The addresses an executor binds (plain HTTP, HTTPS; each `None` when off) and the TLS
/// configuration its HTTPS listener uses.
struct Listen {
    addrs: [Option<SocketAddr>; 3],
    tls: Option<Arc<Certs>>,
}

type Ready = mpsc::Sender<Result<[Option<SocketAddr>; 3], String>>;

/// The settings a SIGHUP does not apply (all but tenants, tokens, JWT keys and the TLS
/// files), by name, that differ between `old` and `new`.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(a), Ok(b)) = (toml::Table::try_from(old), toml::Table::try_from(new)) else {
        return Vec::new();
    };
    const RELOADED: &[&str] = &["tenants", "jwt", "auth_tokens", "auth_token_file", "topic"];
    a.keys()
        .chain(b.keys())
        .filter(|k| !RELOADED.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn run_executor(
    lane: ExecutorLane,
    cfg: Arc<Config>,
    metrics: Arc<Metrics>,
    edge: Arc<crate::auth::Edge>,
    shutdown: Arc<AtomicBool>,
    listen: Listen,
    ready: Ready,
    retry_after: &'static str,
) {
    let poller = match Poller::new() {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(format!("epoll: {e}")));
            return;
        }
    };
    let mut listeners = Vec::new();
    let mut local = [None, None, None];
    for (i, addr) in listen.addrs.iter().enumerate() {
        let Some(addr) = *addr else { continue };
        let bound = sys::listener(addr, cfg.listen_backlog).and_then(|l| {
            let local = l.local_addr()?;
            Ok((Listener::new(l, poller.clone())?, local))
        });
        match bound {
            Ok((l, a)) => {
                local[i] = Some(a);
                // The second address is the HTTPS one, the third the admin listener.
                let tls = if i == 1 { listen.tls.clone() } else { None };
                let kind = if i == 2 { Kind::Admin } else { Kind::Public };
                listeners.push((l, tls, kind, i));
            }
            Err(e) => {
                let _ = ready.send(Err(format!("bind {addr}: {e}")));
                return;
            }
        }
    }
    let spool = match &cfg.spool_dir {
        None => None,
        Some(dir) => {
            // A commit batch gathered while the previous one is written: at most a
            // quarter segment, and never more than the in-memory queue.
            let pending_max = (cfg.spool_segment_bytes as usize / 4).min(cfg.queue_max_bytes);
            let opened = Spool::open(
                dir,
                lane.index,
                cfg.executors,
                cfg.spool_segment_bytes,
                cfg.spool_segments(),
                pending_max,
                std::time::Duration::from_micros(cfg.spool_inline_sync_us),
                metrics.clone(),
            );
            match opened {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = ready.send(Err(format!("spool_dir {}: {e}", dir.display())));
                    return;
                }
            }
        }
    };
    let _ = ready.send(Ok(local));
    let wake = lane.wake.clone();
    let exec = Exec::with_edge(lane, cfg.clone(), metrics, retry_after, spool.clone(), edge);
    if cfg.direct_wait_ms > 0 {
        // Only the spool's I/O completes where a direct wait does not see it. An ack=kafka
        // wait needs no ring: the Kafka thread's wake ends a direct wait too.
        let sp = spool.as_ref().map(Rc::downgrade);
        let held = Box::new(move || {
            sp.as_ref()
                .is_some_and(|s| s.upgrade().is_some_and(|s| s.ring_busy()))
        });
        if let Err(e) = poller.enable_direct(wake, cfg.direct_wait_ms, held) {
            // Only the cheaper wait is lost: the ring sleep still works.
            warn!(%e, "direct_wait_ms: no eventfd; the executor sleeps in its ring only");
        }
    }
    glommio::spawn_local(poller.clone().run()).detach();
    glommio::spawn_local(counted(exec.clone().flusher())).detach();
    glommio::spawn_local(counted(exec.clone().completer())).detach();
    if let Some(sp) = &spool {
        let feed: Rc<dyn Feed> = exec.clone();
        glommio::spawn_local(counted(sp.clone().write_loop(feed.clone()))).detach();
        glommio::spawn_local(counted(sp.clone().read_loop(feed))).detach();
        sp.prepare_spare();
    }
    let conns: Registry = Rc::new(RefCell::new(Slab::new()));
    let stop = Rc::new(Cell::new(false));
    let ticker = glommio::spawn_local(counted(ticker(
        exec.clone(),
        shutdown,
        conns.clone(),
        stop.clone(),
    )));
    let shared = Rc::new(Accepting {
        exec: exec.clone(),
        poller,
        conns: conns.clone(),
        stop,
    });
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|(l, tls, kind, slot)| {
            glommio::spawn_local(counted(accept_loop(l, tls, kind, slot, shared.clone())))
        })
        .collect();
    for l in loops {
        l.await;
    }
    // Let connections finish what they have, within the shutdown deadline.
    until_empty(&conns, Duration::from_millis(cfg.shutdown_timeout_ms)).await;
    let left = conns.borrow().len();
    for (_, w) in conns.borrow().iter() {
        // Their tasks' reads and writes fail now, so they end and close their sockets
        // before the executor stops, rather than holding clients through the flush.
        w.close();
    }
    until_empty(&conns, Duration::from_millis(200)).await;
    let deadline = Instant::now() + Duration::from_millis(cfg.shutdown_timeout_ms);
    if let Some(sp) = &spool {
        // Finish writing what was appended; the reader stops handing records over.
        sp.stop();
        while !sp.written() && Instant::now() < deadline {
            timer::sleep(Duration::from_millis(1)).await;
        }
    }
    // Records answered 202 may still sit in this executor's batch or overflow.
    exec.hand_over(Duration::from_millis(cfg.shutdown_timeout_ms))
        .await;
    if let Some(sp) = &spool {
        // Kafka's reports on what was handed over trim the spool, so a clean restart
        // replays nothing; what Kafka did not take by the deadline stays on disk.
        exec.settle_in_flight(deadline).await;
        sp.close();
    }
    if left > 0 {
        warn!(
            connections = left,
            executor = exec.index,
            "shutdown deadline: closing connections still busy"
        );
    }
    drop(ticker);
}

/// What the accept loops of one executor share.
struct Accepting {
    exec: Rc<Exec>,
    poller: Rc<Poller>,
    conns: Registry,
    stop: Rc<Cell<bool>>,
}

/// Accepts connections on one listener until shutdown and serves each in its own task;
/// `tls`: the listener speaks HTTPS; `slot`: its place in `STOP_WAKERS`.
async fn accept_loop(
    listener: Listener,
    tls: Option<Arc<Certs>>,
    kind: Kind,
    slot: usize,
    a: Rc<Accepting>,
) {
    let (exec, conns, cfg) = (&a.exec, &a.conns, &a.exec.cfg);
    let stop = || StopWait(a.stop.clone(), slot);
    let listen_fd = listener.fd();
    let mut spare = sys::SpareFds::new();
    let mut last_log: Option<Instant> = None;
    let mut shed_since_log = 0;

    while !a.stop.get() {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) if !sys::out_of_fds(&e) => {
                // This connection failed (e.g. reset before accept): try the next one.
                bump(&exec.stats().accept_errors, 1);
                continue;
            }
            Some(Err(e)) => {
                bump(&exec.stats().accept_errors, 1);
                // At the fd limit the pending connection stays in the backlog. Close what
                // waits there with the spare fds (clients get a prompt close, not a hang),
                // then wait without spinning. Existing connections keep being served.
                let (shed, drained) = spare.shed(listen_fd);
                bump(&exec.stats().connections_refused, shed as u64);
                shed_since_log += shed;
                if last_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    warn!(error = %e, executor = exec.index, closed = shed_since_log, "accept failed (fd limit?): closing new connections until fds free up");
                    last_log = Some(Instant::now());
                    shed_since_log = 0;
                }
                if drained {
                    // At the limit accept fails at once whether or not a client waits, so
                    // retrying it would spin: sleep until a new connection arrives.
                    let next = listener.next_connection();
                    futures_lite::future::or(next, stop()).await;
                } else {
                    // Other threads took every spare with clients still waiting (no edge
                    // will come for them): look again shortly rather than spin.
                    timer::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        if conns.borrow().len() >= cfg.max_connections {
            bump(&exec.stats().connections_refused, 1);
            drop(stream);
            continue;
        }
        let stream = match Sock::new(stream, a.poller.clone()) {
            Ok(s) => s,
            Err(_) => {
                bump(&exec.stats().accept_errors, 1);
                continue;
            }
        };
        let watch = Rc::new(Watch::new(stream.fd()));
        let key = conns.borrow_mut().insert(watch.clone());
        bump(&exec.stats().connections, 1);
        let (exec2, conns2, tls) = (exec.clone(), conns.clone(), tls.clone());
        glommio::spawn_local(counted(async move {
            serve(exec2.clone(), stream, tls, kind, watch).await;
            conns2.borrow_mut().remove(key);
            let s = &exec2.stats().connections;
            s.store(
                s.load(Ordering::Relaxed).saturating_sub(1),
                Ordering::Relaxed,
            );
        }))
        .detach();
    }
}

/// Serves one accepted connection: the client's address first (the socket's peer, or
/// the PROXY header's), counted against its per-address limit; the TLS handshake on the
/// HTTPS listener; then requests until it ends.
async fn serve(exec: Rc<Exec>, sock: Sock, tls: Option<Arc<Certs>>, kind: Kind, watch: Rc<Watch>) {
    let mut auth = ConnAuth::default();
    // The socket's peer, where something uses it (a getpeername per connection else).
    let cfg = &exec.cfg;
    if exec.guard.edge.addrs.is_some() || cfg.client_address_header.is_some() {
        auth.addr = sock.peer_addr();
    }
    // Behind a load balancer the client is the one its PROXY header names; a connection
    // without a valid header is closed unanswered (it did not come through the balancer,
    // or is its TCP check). LOCAL (the balancer's own health check) keeps the socket's.
    if exec.cfg.proxy_protocol && kind == Kind::Public {
        let ms = exec.cfg.header_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(ms);
        match crate::exec::proxy::read_header(&sock, &watch, deadline).await {
            Ok(crate::http::proxy::Header::Proxied { src, .. }) => auth.addr = Some(src),
            Ok(crate::http::proxy::Header::Local) => {}
            Err(e) => {
                exec.guard.edge.proxy_refused(e.reason());
                tracing::debug!(reason = e.reason(), peer = ?auth.addr, "closed: no valid PROXY protocol header");
                return;
            }
        }
    }
    let mut over = None;
    if let (Some(addrs), Some(a), Kind::Public) = (&exec.guard.edge.addrs, auth.addr, kind) {
        match addrs.connect(&a.ip(), crate::auth::budget::now_ns()) {
            Ok(s) => auth.slot = Some(s),
            Err(s) => {
                auth.slot = Some(s);
                over = Some(crate::error::HttpError::TooManyConnections);
            }
        }
    }
    if exec.cfg.client_address_header.is_some() {
        if let Some(a) = auth.addr {
            let _ = write!(auth.addr_text, "{a}");
        }
    }
    let slot = auth.slot;
    // Over its address's limit on the HTTPS listener: closed at once, without the cost
    // of a handshake (the plain listener answers 429 to the first request).
    if over.is_some() && tls.is_some() {
        forget(&exec, slot);
        return;
    }
    let mut link = match tls {
        None => Link::Plain(sock),
        Some(certs) => match handshake(&exec, sock, &certs, &watch).await {
            Some(t) => Link::Tls(Box::new(t)),
            None => {
                forget(&exec, slot);
                return;
            }
        },
    };
    let ms = exec.cfg.body_timeout_ms;
    let mut conn = Conn::new(exec.clone(), watch.clone(), kind, auth);
    if let Some(e) = over {
        conn.refuse_with(e);
    }
    conn.serve(&mut link).await;
    drop(conn);
    forget(&exec, slot);
    if let Link::Tls(t) = &mut link {
        // close_notify is a write like any answer: a client that stops reading does not
        // hold the connection past the write timeout.
        watch.arm_write(Instant::now() + Duration::from_millis(ms));
        t.close().await;
        watch.disarm();
    }
}

/// A connection counted in the per-address table ended.
fn forget(exec: &Exec, slot: Option<crate::auth::addrs::SlotId>) {
    if let (Some(a), Some(s)) = (&exec.guard.edge.addrs, slot) {
        a.disconnect(s);
    }
}

/// The TLS handshake, within `header_timeout_ms` like a request head: a client that
/// connects and sends half a ClientHello holds the connection no longer than one that
/// drips a head. A plain HTTP request gets a plain 400 that says to use https://.
async fn handshake(exec: &Exec, sock: Sock, certs: &Certs, watch: &Watch) -> Option<Tls> {
    let failed = || bump(&exec.stats().tls_handshake_failures, 1);
    let Ok(mut t) = Tls::new(sock, certs.current()) else {
        failed();
        return None;
    };
    watch.arm(
        Instant::now() + Duration::from_millis(exec.cfg.header_timeout_ms),
        true,
    );
    let r = t.handshake().await;
    watch.disarm();
    match r {
        Ok(()) => return Some(t),
        Err(Refused::PlainHttp) => {
            let mut out = Vec::new();
            let e = crate::error::HttpError::PlainHttpOnTls;
            {
                let date = exec.date.borrow();
                response::error(&mut out, &e, &date, Keep::Close, exec.retry_after, false);
            }
            t.write_plain(&out).await;
            exec.stats().request(e.status().0, 0);
        }
        Err(Refused::Failed) => {}
    }
    failed();
    None
}

/// Waits until every connection has ended, or `within` passed.
async fn until_empty(conns: &Registry, within: Duration) {
    let deadline = Instant::now() + within;
    while !conns.borrow().is_empty() && Instant::now() < deadline {
        timer::sleep(Duration::from_millis(10)).await;
    }
}

/// Once per 100 ms: refresh the Date header each second, advance the heartbeat, end reads
/// and ack=kafka waits past their deadline, and at shutdown close idle connections.
async fn ticker(exec: Rc<Exec>, shutdown: Arc<AtomicBool>, conns: Registry, stop: Rc<Cell<bool>>) {
    let mut n = 0u64;
    loop {
        timer::sleep(Duration::from_millis(100)).await;
        n += 1;
        if n.is_multiple_of(10) {
            exec.date.borrow_mut().refresh();
        }
        bump(&exec.stats().heartbeat, 1);
        if shutdown.load(Ordering::Acquire) && !exec.shutting_down.get() {
            exec.shutting_down.set(true);
            stop.set(true);
            STOP_WAKERS.with(|ws| {
                for w in ws.iter().filter_map(Cell::take) {
                    w.wake();
                }
            });
        }
        let (now, closing) = (Instant::now(), exec.shutting_down.get());
        exec.expire_waiters(now);
        for (_, w) in conns.borrow().iter() {
            w.check(now, closing);
        }
    }
}

/// Resolves once the ticker has set the executor's stop flag; the second field is the
/// accept loop's slot in `STOP_WAKERS`.
struct StopWait(Rc<Cell<bool>>, usize);

impl std::future::Future for StopWait {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0.get() {
            return std::task::Poll::Ready(());
        }
        STOP_WAKERS.with(|w| w[self.1].set(Some(cx.waker().clone())));
        std::task::Poll::Pending
    }
}

thread_local! {
    /// The accept loops' wakers (plain, HTTPS), woken by the ticker at shutdown (one set
    /// per executor thread).
    static STOP_WAKERS: [Cell<Option<std::task::Waker>>; 3] = const { [Cell::new(None), Cell::new(None), Cell::new(None)] };
}
