//! The few raw socket operations Glommio does not expose. All `unsafe` of the crate lives
//! here, each with its SAFETY note.

use socket2::{Domain, Protocol, Socket, Type};
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A non-blocking listening socket with SO_REUSEPORT (one per executor) and our backlog.
pub fn listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    sk.set_reuse_address(true)?;
    sk.bind(&addr.into())?;
    sk.listen(backlog)?;
    // Accepted sockets inherit TCP_NODELAY from the listener (Linux copies the listener's
    // TCP state), which saves a setsockopt per connection. Nagle would hold a second small
    // answer (pipelined, ack=kafka) until the client's delayed ACK.
    sk.set_nodelay(true)?;
    // Non-blocking: the executor's epoll tells when to accept, and `shed_pending` stops
    // when the backlog is empty.
    sk.set_nonblocking(true)?;
    Ok(sk.into())
}

/// accept4 of one pending connection, non-blocking and close-on-exec.
pub fn accept(listen_fd: RawFd) -> io::Result<TcpStream> {
    // SAFETY: accept4 on a listening fd; null address pointers are allowed.
    let fd = unsafe {
        libc::accept4(
            listen_fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by accept4 and is owned by nobody else.
    Ok(unsafe { TcpStream::from_raw_fd(fd) })
}

/// An accept error that means "no fd or memory for a new socket", not "this connection
/// failed": the backlog then has to be shed (see `shed_pending`).
pub fn out_of_fds(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// recv(2) without blocking; WouldBlock when nothing is there.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// send(2) without blocking and without SIGPIPE; WouldBlock when the buffer is full.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A new epoll instance.
pub fn epoll() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is ours.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers `fd` once, edge-triggered, for both directions, with `token` as its data.
pub fn epoll_add(ep: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: token,
    };
    // SAFETY: `ev` is a valid epoll_event; the kernel copies it.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ready events without waiting.
pub fn epoll_poll(ep: RawFd, events: &mut [libc::epoll_event]) -> &[libc::epoll_event] {
    // SAFETY: `events` is valid for `events.len()` entries, which the kernel fills.
    let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 0) };
    &events[..n.max(0) as usize]
}

/// Resolves once `fd` is readable, through a one-shot poll on the executor's io_uring,
/// so the executor sleeps in its ring and still wakes for `fd`. Glommio has no public
/// poll-an-fd call; a stream over a duplicate of `fd` arms exactly that poll when created
/// and completes its read when the poll fires (the recv itself then fails on a non-socket,
/// which is expected). The duplicate is closed on return.
pub async fn ring_readable(fd: RawFd) {
    use futures_lite::AsyncReadExt;
    // SAFETY: F_DUPFD_CLOEXEC duplicates a live fd of ours; the duplicate is owned by the
    // stream below and closed when it drops.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        // Out of fds: fall back to a short sleep rather than spinning.
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        return;
    }
    // SAFETY: `dup` is a fresh fd owned by nobody else.
    let mut s = unsafe { glommio::net::TcpStream::from_raw_fd(dup) };
    let _ = s.read(&mut [0u8; 1]).await;
}

/// Shuts both directions: a pending write fails at once (write deadline passed).
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: as in `shutdown_read`.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

/// At the fd limit: accepts and immediately closes pending connections, so clients are
/// refused promptly instead of waiting in the backlog. Returns how many were closed.
/// The caller frees one fd first (see `SpareFd`), so accept can succeed.
pub fn shed_pending(listen_fd: RawFd) -> usize {
    let mut n = 0;
    // Each accepted stream is dropped (closed) right away.
    while accept(listen_fd).is_ok() {
        n += 1;
    }
    n
}

/// Makes a pending read on a connection return 0, so an idle keep-alive connection
/// closes itself at shutdown.
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: the caller guarantees `fd` is a live socket (connections leave the registry
    // before their stream is dropped); shutdown(2) does not close or invalidate it.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
}

/// CPUs this process may run on (its affinity mask, e.g. from systemd's CPUAffinity= or
/// taskset), in ascending order; executors are pinned to these by default.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set, and sched_getaffinity
    // writes at most size_of::<cpu_set_t>() bytes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    if !ok {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the initialized set for indexes below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// One fd kept in reserve so that, at the fd limit, there is a descriptor to accept (and
/// close) a pending connection with.
pub struct SpareFd(Option<File>);

impl SpareFd {
    pub fn new() -> SpareFd {
        SpareFd(File::open("/dev/null").ok())
    }

    /// Frees the reserved fd, runs `f`, then reserves one again.
    pub fn with_released<T>(&mut self, f: impl FnOnce() -> T) -> T {
        self.0 = None;
        let r = f();
        self.0 = File::open("/dev/null").ok();
        r
    }
}

impl Default for SpareFd {
    fn default() -> Self {
        Self::new()
    }
}

/// Wakes the Kafka thread from librdkafka's own threads whenever the producer's main
/// queue (delivery reports, errors) goes from empty to non-empty, so that thread can
/// sleep until there is work instead of napping in short intervals.
pub struct QueueWake {
    queue: *mut rdkafka::bindings::rd_kafka_queue_t,
    /// Kept alive while librdkafka may call back with a pointer to it.
    _wake: std::sync::Arc<crate::lane::KafkaWake>,
}

// SAFETY: librdkafka queue handles are thread-safe; the pointer is only used to disable
// the callback and release the handle on drop.
unsafe impl Send for QueueWake {}

unsafe extern "C" fn queue_event(
    _rk: *mut rdkafka::bindings::rd_kafka_t,
    opaque: *mut std::ffi::c_void,
) {
    // SAFETY: `opaque` is the KafkaWake that `QueueWake` keeps alive until the callback
    // is disabled in its drop.
    let wake = unsafe { &*(opaque as *const crate::lane::KafkaWake) };
    wake.wake();
}

impl QueueWake {
    pub fn enable(
        producer: &crate::kafka::KafkaProducer,
        wake: std::sync::Arc<crate::lane::KafkaWake>,
    ) -> QueueWake {
        let rk = rdkafka::producer::Producer::client(producer).native_ptr();
        // SAFETY: `rk` is a live producer handle; the returned queue reference is released
        // in drop, before the producer is (the Kafka thread drops this first).
        let queue = unsafe { rdkafka::bindings::rd_kafka_queue_get_main(rk) };
        let opaque = std::sync::Arc::as_ptr(&wake) as *mut std::ffi::c_void;
        // SAFETY: the callback only reads `opaque`, which outlives the registration.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_cb_event_enable(queue, Some(queue_event), opaque)
        };
        QueueWake { queue, _wake: wake }
    }

    /// Events waiting in the queue (the callback fires only on empty -> non-empty).
    pub fn pending(&self) -> bool {
        // SAFETY: `queue` is a live queue reference owned by self.
        unsafe { rdkafka::bindings::rd_kafka_queue_length(self.queue) > 0 }
    }
}

impl Drop for QueueWake {
    fn drop(&mut self) {
        // SAFETY: disables the callback before the KafkaWake may go away, then releases
        // our queue reference.
        unsafe {
            rdkafka::bindings::rd_kafka_queue_cb_event_enable(
                self.queue,
                None,
                std::ptr::null_mut(),
            );
            rdkafka::bindings::rd_kafka_queue_destroy(self.queue);
        }
    }
}
