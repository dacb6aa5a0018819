//! Socket readiness for one executor: one edge-triggered epoll instance, each connection
//! registered once for its lifetime.
//!
//! Why not Glommio's own sockets: Glommio arms a one-shot io_uring POLL_ADD after nearly
//! every read of a keep-alive connection (one per request), and each completion arrives as
//! io_uring task work that interrupts the executor; that was the largest cost above
//! nginx in the profile. epoll keeps the registration, and `run` harvests the ready
//! connections of a whole loop iteration with one epoll_wait. The executor still sleeps in
//! its io_uring: when nothing is ready, `run` waits on a ring poll of the epoll fd.
//!
//! Before sleeping in the ring, `run` blocks in epoll_wait itself once every other task
//! of the executor is idle (`quiescent`), until the executor's next timer is due
//! (`timer::next_deadline`; every executor timer is made through `exec::timer`) and at
//! most `direct_wait_ms`: a ring sleep costs several io_uring_enter calls, a membarrier,
//! a dup, a poll and a close, which at one connection (a sleep per request) made the
//! executor cost twice nginx's whole request. Only the Kafka thread wakes an executor from
//! outside; during a direct wait its wake also signals an eventfd in this epoll set
//! (`ExecWake`), so an ack=kafka answer needs no ring sleep either. Ring completions may
//! wait (`direct_wait`), so there is no direct wait while the spool has work in flight
//! (`Spool::ring_busy`: an ack=durable sync through io_uring, a sync that is about to run
//! inline (`spool::inline`), and about a sync and a roll a second under ack=queued).
//!
//! Writes always try the syscall first and wait only after WouldBlock; reads do too,
//! unless the previous read already drained the socket (`Slot::readable`). With edge
//! triggering, data that arrives after that point raises a new event, so no wakeup is
//! lost; an event for a socket nobody waits on only marks it readable.

use crate::exec::timer;
use crate::kafka::lane::ExecWake;
use crate::sys;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const READ: usize = 0;
const WRITE: usize = 1;
/// Longest stretch `Poller::run` keeps Glommio from reaping its ring under load.
const RING_PASS: Duration = Duration::from_micros(500);
/// Longest timer wait of `Poller::ring_wait` when no fd is left to wait in the ring with.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// The epoll token of the Kafka thread's eventfd (no slab key reaches it).
const WAKE_TOKEN: u64 = u64::MAX;
/// How many yields `quiescent` waits for the other tasks to go idle before it gives up
/// and sleeps in the ring as before.
const QUIET_SPINS: usize = 16;

thread_local! {
    /// Polls of this thread's counted tasks (every task but the poller's own).
    static ACTIVITY: Cell<u64> = const { Cell::new(0) };
}

/// Wraps a task so that `Poller::run` sees it run: every task an executor spawns goes
/// through this, or a direct wait could block while that task is ready to run.
pub fn counted<F: std::future::Future>(f: F) -> Counted<F> {
    Counted(f)
}

pub struct Counted<F>(F);

impl<F: std::future::Future> std::future::Future for Counted<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        ACTIVITY.with(|a| a.set(a.get() + 1));
        // SAFETY: structural pinning of the only field; `Counted` never moves it out.
        unsafe { self.map_unchecked_mut(|c| &mut c.0) }.poll(cx)
    }
}

/// Blocking in epoll_wait before the ring sleep (`Poller::enable_direct`).
struct Direct {
    wake: Arc<ExecWake>,
    ms: i32,
    /// True while some I/O of the executor will complete in its ring (the spool's), which
    /// a direct wait would not see.
    held: Box<dyn Fn() -> bool>,
}

pub struct Poller {
    ep: OwnedFd,
    waiters: RefCell<Slab<Slot>>,
    /// The duplicate of `ep` that the next ring wait hands to Glommio (which closes it).
    /// Made again right after each wait, while the fd just closed is still free, so that
    /// at the process's fd limit the executor still sleeps in its ring instead of
    /// falling back to a timer and spinning.
    ring_fd: Cell<Option<OwnedFd>>,
    direct: RefCell<Option<Direct>>,
    /// Direct waits the Kafka thread's eventfd ended (tests).
    eventfd_wakes: Cell<u64>,
}

/// Per registered fd.
struct Slot {
    /// The task waiting to read, and the one waiting to write.
    wakers: [Option<Waker>; 2],
    /// Data may be waiting. Cleared by a short read (TCP's receive queue was emptied), set
    /// again by the next event: a keep-alive connection then makes one recv per request
    /// instead of a second one that would only say WouldBlock (nginx does the same).
    readable: bool,
    /// The peer closed (or the socket failed): a short read no longer means "wait for an
    /// event", since the EOF may have arrived with the data and raises no further event.
    hup: bool,
    /// The peer sent TCP urgent data (MSG_OOB): Linux ends a read at the urgent mark, so a
    /// short read no longer means the queue is empty either. Only WouldBlock does, for the
    /// rest of this connection's life.
    urgent: bool,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            wakers: [None, None],
            readable: true,
            hup: false,
            urgent: false,
        }
    }
}

impl Poller {
    pub fn new() -> io::Result<Rc<Poller>> {
        let ep = sys::epoll()?;
        let ring_fd = Cell::new(Some(sys::dup(ep.as_raw_fd())?));
        Ok(Rc::new(Poller {
            ep,
            waiters: RefCell::new(Slab::new()),
            ring_fd,
            direct: RefCell::new(None),
            eventfd_wakes: Cell::new(0),
        }))
    }

    /// Turns on direct waits of up to `ms`, woken from the Kafka thread through `wake`,
    /// never while `held()`.
    pub fn enable_direct(
        &self,
        wake: Arc<ExecWake>,
        ms: u64,
        held: Box<dyn Fn() -> bool>,
    ) -> io::Result<()> {
        let fd = wake.eventfd()?;
        sys::epoll_add_events(self.ep.as_raw_fd(), fd, WAKE_TOKEN, libc::EPOLLIN)?;
        *self.direct.borrow_mut() = Some(Direct {
            wake,
            ms: ms as i32,
            held,
        });
        Ok(())
    }

    /// A new socket's first read waits for its first event: registering a socket that
    /// already holds data queues an event at once, and a client's request usually
    /// arrives after the accept, so a recv right away would mostly just say WouldBlock.
    fn register(&self, fd: RawFd) -> io::Result<usize> {
        let key = self.waiters.borrow_mut().insert(Slot {
            readable: false,
            ..Slot::default()
        });
        if let Err(e) = sys::epoll_add(self.ep.as_raw_fd(), fd, key as u64) {
            self.waiters.borrow_mut().remove(key);
            return Err(e);
        }
        Ok(key)
    }

    /// Runs `f` on the fd's slot (a default one if it is gone).
    fn slot<T>(&self, key: usize, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut waiters = self.waiters.borrow_mut();
        match waiters.get_mut(key) {
            Some(s) => f(s),
            None => f(&mut Slot::default()),
        }
    }

    /// Wakes the task at the fd's next event in `dir`.
    fn park(&self, key: usize, dir: usize, cx: &Context<'_>) {
        self.slot(key, |s| s.wakers[dir] = Some(cx.waker().clone()));
    }

    /// Runs `op`; on WouldBlock, parks the task until the fd's next event in `dir`.
    fn poll_op<T>(
        &self,
        key: usize,
        dir: usize,
        cx: &Context<'_>,
        op: impl FnOnce() -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.park(key, dir, cx);
                Poll::Pending
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            r => Poll::Ready(r),
        }
    }

    /// The executor's readiness loop (one task per executor, runs until it ends). When
    /// nothing is ready it blocks in epoll_wait (a direct wait, when enabled and the
    /// executor's other tasks are idle), else sleeps in the ring. Spinning on epoll
    /// instead (10 and 50 us were tried) cost more CPU per request than it saved.
    ///
    /// Under steady load there is always something ready, and a task that only yields
    /// keeps Glommio's task queue from emptying; Glommio then reaps its ring (timers, and
    /// wake-ups from the Kafka thread for ack=kafka answers) only at its 100 ms preemption
    /// tick. So at least every `RING_PASS` the loop waits through the ring instead of
    /// yielding, which lets the queue drain and the ring be reaped.
    pub async fn run(self: Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut last_pass = Instant::now();
        let mut backoff = Duration::ZERO;
        // Whether the next idle gap looks short enough for a direct wait: the last one
        // was. A wait that ran to the bound costs its wake-up and the ring sleep after
        // it, so after one the next idle gap goes to the ring at once.
        let mut gap_short = true;
        loop {
            let mut ready = sys::epoll_poll(self.ep.as_raw_fd(), &mut events);
            if ready.is_empty() && gap_short {
                // `held` again after the idle check: the tasks that ran during its yields
                // may have started a sync (a stale answer let 201s wait for the next wake
                // from outside: the Kafka thread's hand-off).
                match self.direct_ms().filter(|_| !self.held()) {
                    Some(ms) if quiescent().await && !self.held() => {
                        // Until the earliest timer is due (none is: straight to the ring,
                        // where Glommio fires it), and at most the bound.
                        if let Some(w) = until_next_timer(Instant::now()).map(|t| t.min(ms)) {
                            match self.direct_wait(&mut events, w) {
                                Some((r, timed_out)) => {
                                    // Ending at a timer says nothing about the gap's length.
                                    gap_short = !(timed_out && w == ms);
                                    ready = r;
                                    // The executor was idle, and its ring holds nothing to
                                    // reap (`held`; a timer due ends the wait): this counts
                                    // as a pass. Else every burst of a paced load that
                                    // follows a wait longer than RING_PASS took a ring
                                    // pass: ~8 io_uring_enter, a dup and a close.
                                    last_pass = Instant::now();
                                }
                                // A Kafka wake was pending: its task runs before the next look.
                                None => continue,
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !ready.is_empty() {
                self.dispatch(ready);
                if last_pass.elapsed() < RING_PASS {
                    // Let the woken connections run before looking again.
                    futures_lite::future::yield_now().await;
                    continue;
                }
            }
            // Nothing ready, or time for a pass through the ring: the woken connections
            // run first, then Glommio reaps its ring while this waits for the next event.
            let slept = Instant::now();
            self.ring_wait(&mut backoff).await;
            last_pass = Instant::now();
            if let Some(ms) = self.direct_ms() {
                gap_short = last_pass - slept < Duration::from_millis(ms as u64);
            }
        }
    }

    fn direct_ms(&self) -> Option<i32> {
        self.direct.borrow().as_ref().map(|d| d.ms)
    }

    fn held(&self) -> bool {
        self.direct.borrow().as_ref().is_some_and(|d| (d.held)())
    }

    /// Blocks in epoll_wait for up to `ms`: the events, and whether it ran to its end
    /// without any. None (at once) if a Kafka wake is pending, which it then delivers
    /// here. Ring completions do not reliably end it: an fdatasync that an io_uring
    /// worker completed was seen only at the next wake from outside (measured: 201s
    /// waited for the Kafka thread's hand-off), hence no direct wait while the spool has
    /// work in flight. An interrupted wait (EINTR) goes on to the ring sleep at once.
    fn direct_wait<'e>(
        &self,
        events: &'e mut [libc::epoll_event],
        ms: i32,
    ) -> Option<(&'e [libc::epoll_event], bool)> {
        let direct = self.direct.borrow();
        let wake = &direct.as_ref().expect("direct wait enabled").wake;
        if !wake.begin_direct() {
            wake.wake_here();
            return None;
        }
        let r = sys::epoll_wait(self.ep.as_raw_fd(), events, ms);
        wake.end_direct();
        match r {
            Ok(ready) => Some((ready, ready.is_empty())),
            Err(_) => Some((&[], false)),
        }
    }

    /// Sleeps in the executor's ring until epoll has an event (or Glommio has other
    /// work). Only if another thread took the fd freed by the last wait (the process is
    /// at its fd limit) does it wait on a timer instead, longer each time up to
    /// `MAX_BACKOFF`, so a process at the limit never spins.
    async fn ring_wait(&self, backoff: &mut Duration) {
        let fd = match self.ring_fd.take() {
            Some(fd) => Ok(fd),
            None => sys::dup(self.ep.as_raw_fd()),
        };
        match fd {
            Ok(fd) => {
                ring_readable(fd).await;
                self.ring_fd.set(sys::dup(self.ep.as_raw_fd()).ok());
                *backoff = Duration::ZERO;
            }
            Err(_) => {
                *backoff = (*backoff * 2).clamp(Duration::from_millis(1), MAX_BACKOFF);
                timer::sleep(*backoff).await;
            }
        }
    }

    /// Marks the ready sockets and wakes the tasks waiting on them.
    fn dispatch(&self, ready: &[libc::epoll_event]) {
        let mut waiters = self.waiters.borrow_mut();
        for ev in ready {
            if ev.u64 == WAKE_TOKEN {
                self.eventfd_wakes.set(self.eventfd_wakes.get() + 1);
                if let Some(d) = self.direct.borrow().as_ref() {
                    d.wake.take_signal();
                }
                continue;
            }
            let Some(slot) = waiters.get_mut(ev.u64 as usize) else {
                continue;
            };
            let bits = ev.events as i32;
            let gone = libc::EPOLLHUP | libc::EPOLLERR;
            if bits & (libc::EPOLLRDHUP | gone) != 0 {
                slot.hup = true;
            }
            if bits & libc::EPOLLPRI != 0 {
                slot.urgent = true;
            }
            if bits & (libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLRDHUP | gone) != 0 {
                slot.readable = true;
                if let Some(w) = slot.wakers[READ].take() {
                    w.wake();
                }
            }
            if bits & (libc::EPOLLOUT | gone) != 0 {
                if let Some(w) = slot.wakers[WRITE].take() {
                    w.wake();
                }
            }
        }
    }
}

/// A connection registered with the executor's poller.
pub struct Sock {
    stream: TcpStream,
    key: usize,
    poller: Rc<Poller>,
}

impl Sock {
    pub fn new(stream: TcpStream, poller: Rc<Poller>) -> io::Result<Sock> {
        let key = poller.register(stream.as_raw_fd())?;
        Ok(Sock {
            stream,
            key,
            poller,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The client's address as the socket sees it (a load balancer's, behind one).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.peer_addr().ok()
    }

    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (fd, len, p) = (self.fd(), buf.len(), &self.poller);
        poll_fn(|cx| {
            if !p.slot(self.key, |s| s.readable) {
                p.park(self.key, READ, cx);
                return Poll::Pending;
            }
            let r = sys::recv(fd, &mut *buf);
            // Drained: WouldBlock, or a short read (unless urgent data may have cut it
            // short). Not EINTR: data may still be queued.
            p.slot(self.key, |s| {
                let drained = match &r {
                    Ok(n) => *n > 0 && *n < len && !s.urgent,
                    Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                };
                if drained {
                    s.readable = s.hup;
                }
            });
            p.poll_op(self.key, READ, cx, || r)
        })
        .await
    }

    /// Copies the bytes queued on the socket into `buf` without consuming them, once at
    /// least `min` of them are queued (`min` is taken as 1 if smaller, as `buf.len()` if
    /// larger): the count copied. Fewer than `min` only when the peer has closed or the
    /// read side was shut down (no more will come); 0 then when nothing at all is queued.
    ///
    /// Waits for readability as `read` does, and while too few bytes are queued, for the
    /// socket's next event: data that arrives after a peek raises a new edge. Unlike
    /// `read`, a peek that finds too few bytes does not mark the socket drained (they are
    /// still queued), so a `read` right after it gets them without waiting. Bytes held
    /// back by TCP urgent data never reach `min`: the wait then lasts until the read side
    /// is shut down (the connection's deadline).
    pub async fn peek(&self, buf: &mut [u8], min: usize) -> io::Result<usize> {
        let (fd, p) = (self.fd(), &self.poller);
        let min = min.clamp(1, buf.len().max(1));
        poll_fn(|cx| {
            if !p.slot(self.key, |s| s.readable) {
                p.park(self.key, READ, cx);
                return Poll::Pending;
            }
            match sys::peek(fd, &mut *buf) {
                Ok(n) if n >= min || n == 0 || p.slot(self.key, |s| s.hup) => Poll::Ready(Ok(n)),
                Ok(_) => {
                    // Too few: wait for the next event, with the slot still readable.
                    p.park(self.key, READ, cx);
                    Poll::Pending
                }
                Err(e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        p.slot(self.key, |s| s.readable = s.hup);
                    }
                    p.poll_op(self.key, READ, cx, || Err(e))
                }
            }
        })
        .await
    }

    /// Sends all of `buf`; `on_block` runs before the first wait for buffer space (to arm
    /// a deadline only when one is needed).
    pub async fn write_all(&self, mut buf: &[u8], mut on_block: impl FnMut()) -> io::Result<()> {
        let fd = self.fd();
        while !buf.is_empty() {
            let n = poll_fn(|cx| {
                let r = self
                    .poller
                    .poll_op(self.key, WRITE, cx, || sys::send(fd, buf));
                if r.is_pending() {
                    on_block();
                }
                r
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // Closing the fd (the stream drops right after) removes it from the epoll set.
        self.poller.waiters.borrow_mut().remove(self.key);
    }
}

/// The executor's listening socket, registered with its poller.
pub struct Listener {
    sock: Sock,
}

impl Listener {
    pub fn new(l: TcpListener, poller: Rc<Poller>) -> io::Result<Listener> {
        // A TcpStream over the listening fd only to share `Sock`'s registration and
        // drop; accept goes through `sys::accept`.
        let stream = TcpStream::from(OwnedFd::from(l));
        Ok(Listener {
            sock: Sock::new(stream, poller)?,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    /// Waits for the listener's next event (a new connection), without trying accept
    /// first. At the fd limit accept fails before it looks at the backlog, so after the
    /// backlog was shed this, not a retry of accept, is what the accept loop waits on.
    pub async fn next_connection(&self) {
        let s = &self.sock;
        s.poller.slot(s.key, |slot| slot.readable = false);
        poll_fn(|cx| {
            if s.poller
                .slot(s.key, |slot| std::mem::take(&mut slot.readable))
            {
                return Poll::Ready(());
            }
            s.poller.park(s.key, READ, cx);
            Poll::Pending
        })
        .await
    }

    pub async fn accept(&self) -> io::Result<TcpStream> {
        let fd = self.fd();
        let s = &self.sock;
        poll_fn(|cx| s.poller.poll_op(s.key, READ, cx, || sys::accept(fd))).await
    }
}

/// Milliseconds until this executor's earliest timer is due (rounded up, so a wait that
/// long finds it due), `i32::MAX` if it has none, None if one is due already.
fn until_next_timer(now: Instant) -> Option<i32> {
    match timer::next_deadline() {
        None => Some(i32::MAX),
        Some(t) if t <= now => None,
        Some(t) => {
            let us = (t - now).as_micros();
            Some(us.div_ceil(1000).min(i32::MAX as u128) as i32)
        }
    }
}

/// True once a yield let no counted task run: every other task of the executor is
/// waiting (tasks queued before the yield ran before it returned). False if they kept
/// running for `QUIET_SPINS` yields.
async fn quiescent() -> bool {
    quiet_after(0).await
}

/// `quiescent` for a counted task (its own poll after each yield is not the others').
pub async fn others_quiescent() -> bool {
    quiet_after(1).await
}

async fn quiet_after(own_polls: u64) -> bool {
    for _ in 0..QUIET_SPINS {
        let before = ACTIVITY.with(Cell::get);
        futures_lite::future::yield_now().await;
        if ACTIVITY.with(Cell::get) - before <= own_polls {
            return true;
        }
    }
    false
}

/// Resolves once the fd that `dup` duplicates is readable, through a one-shot poll on
/// the executor's io_uring, so the executor sleeps in its ring and still wakes for it.
/// Glommio has no public poll-an-fd call; a stream over a duplicate arms exactly that poll
/// when created and completes its read when the poll fires (the recv itself then fails on
/// a non-socket, which is expected). The stream closes `dup` on return.
async fn ring_readable(dup: OwnedFd) {
    use futures_lite::AsyncReadExt;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the stream takes over `dup`, a live fd nobody else owns.
    let mut s = unsafe { glommio::net::TcpStream::from_raw_fd(dup.into_raw_fd()) };
    let _ = s.read(&mut [0u8; 1]).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

    /// Round `.3`'s completion task: registers with `ExecWake` (saying so in `armed`),
    /// resolves once the other thread has sent that round's wake (`sent`) and the task
    /// was polled after it. Polls before that (spurious wakes) register again.
    struct Woken(Arc<ExecWake>, Arc<AtomicU64>, Arc<AtomicU64>, u64);

    impl std::future::Future for Woken {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.2.load(SeqCst) >= self.3 {
                return Poll::Ready(());
            }
            self.0.register(cx.waker());
            self.0.begin_drain();
            self.1.store(self.3, SeqCst);
            Poll::Pending
        }
    }

    #[test]
    fn a_wake_from_another_thread_ends_a_direct_wait() {
        // The executor blocks in epoll_wait (up to 2 s) once its tasks are idle; a wake
        // sent meanwhile must end that wait through the eventfd. Without it the wake
        // would wait in Glommio's foreign queue until the wait ended some other way: its
        // bound, or task work from Glommio's own rings (EINTR), which can also beat the
        // eventfd now and then (the poller then sleeps in its ring, and the next wakes
        // go the foreign way), so only some rounds of the 20 are expected to show it.
        glommio::LocalExecutor::default().run(async {
            const ROUNDS: u64 = 20;
            let wake = Arc::new(ExecWake::default());
            let poller = Poller::new().unwrap();
            poller
                .enable_direct(wake.clone(), 2000, Box::new(|| false))
                .unwrap();
            glommio::spawn_local(poller.clone().run()).detach();
            let (armed, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let sender = {
                let (wake, armed, sent) = (wake.clone(), armed.clone(), sent.clone());
                std::thread::spawn(move || {
                    for round in 1..=ROUNDS {
                        while armed.load(SeqCst) < round {
                            std::thread::yield_now();
                        }
                        // After a wait that ended otherwise the poller sleeps in its
                        // ring (no socket here to end that): then the wake goes
                        // through Glommio's foreign queue, as it does in production.
                        let t0 = Instant::now();
                        while !wake.in_direct_wait() && t0.elapsed() < Duration::from_millis(100) {
                            std::thread::yield_now();
                        }
                        sent.store(round, SeqCst);
                        wake.wake();
                    }
                })
            };
            for round in 1..=ROUNDS {
                let (w, a, s) = (wake.clone(), armed.clone(), sent.clone());
                glommio::spawn_local(counted(Woken(w, a, s, round))).await;
            }
            sender.join().unwrap();
            assert!(
                poller.eventfd_wakes.get() >= 1,
                "no direct wait of {ROUNDS} ended by the eventfd"
            );
        });
    }

    #[test]
    fn quiescent_waits_for_every_counted_task_to_go_idle() {
        // A task that keeps yielding (as the flusher does before it flushes) is ready to
        // run: the poller must not block while it is.
        glommio::LocalExecutor::default().run(async {
            let done = Rc::new(Cell::new(false));
            let d = done.clone();
            glommio::spawn_local(counted(async move {
                for _ in 0..5 {
                    futures_lite::future::yield_now().await;
                }
                d.set(true);
            }))
            .detach();
            assert!(quiescent().await);
            assert!(done.get(), "quiescent before the task went idle");
            // A task that never goes idle: give up after QUIET_SPINS yields.
            let stop = Rc::new(Cell::new(false));
            let s = stop.clone();
            glommio::spawn_local(counted(async move {
                while !s.get() {
                    futures_lite::future::yield_now().await;
                }
            }))
            .detach();
            assert!(!quiescent().await);
            stop.set(true);
        });
    }
}
