//! The few raw socket, file and process calls Glommio does not expose (accept,
//! recv/send, epoll, shutdown, a blocking fdatasync, CPU affinity), each `unsafe` with its SAFETY note. The other `unsafe`
//! of the crate sits where it is needed: `kafka/wake.rs` (librdkafka's queue callback)
//! and `exec/poller.rs` (the ring wait).

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

/// Whether some socket already listens on `addr`: a bind without SO_REUSEPORT (but with
/// SO_REUSEADDR, so connections in TIME_WAIT do not count) fails then.
pub fn listened_on(addr: SocketAddr) -> bool {
    let Ok(sk) = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)) else {
        return false;
    };
    let _ = sk.set_reuse_address(true);
    matches!(sk.bind(&addr.into()), Err(e) if e.kind() == io::ErrorKind::AddrInUse)
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

/// recv(2) with MSG_PEEK, without blocking: copies what is queued and leaves it queued for
/// the next recv; WouldBlock when nothing is there, 0 at the end of the stream.
pub fn peek(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
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

/// Registers `fd` once, edge-triggered, for both directions and urgent data, with
/// `token` as its data.
pub fn epoll_add(ep: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let all = libc::EPOLLIN | libc::EPOLLPRI | libc::EPOLLOUT | libc::EPOLLRDHUP;
    epoll_add_events(ep, fd, token, all)
}

/// Registers `fd` once, edge-triggered, for `events` only (an eventfd: EPOLLIN, since
/// it is always writable and each read of it would raise an EPOLLOUT edge).
pub fn epoll_add_events(ep: RawFd, fd: RawFd, token: u64, events: i32) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (events | libc::EPOLLET) as u32,
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
    epoll_wait(ep, events, 0).unwrap_or(&[])
}

/// Ready events, waiting up to `ms` for the first: empty if none came by then, an error
/// (EINTR) if a signal or task work interrupted the wait.
pub fn epoll_wait(
    ep: RawFd,
    events: &mut [libc::epoll_event],
    ms: i32,
) -> io::Result<&[libc::epoll_event]> {
    // SAFETY: `events` is valid for `events.len()` entries, which the kernel fills.
    let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(&events[..n as usize])
}

/// A non-blocking eventfd: another thread's wake-up, readable in an epoll set.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is ours.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes an eventfd readable. It cannot fail short of counter overflow (2^64 - 1
/// unread signals), so the result is not looked at.
pub fn eventfd_signal(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an fd the caller keeps open.
    unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
}

/// Reads an eventfd back to zero (non-blocking: nothing to read is fine).
pub fn eventfd_drain(fd: RawFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
}

/// A duplicate of `fd` (close-on-exec).
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a live fd of ours and returns a new one or -1.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(dup) })
}

/// fdatasync(2) on this thread, retried after EINTR.
pub fn fdatasync(fd: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: fdatasync only reads the fd number; a stale one fails with EBADF.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// fsync(2) of a directory: makes the entries created, renamed or removed in it so far
/// survive a power cut (a file's own sync does not cover its name).
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, with every directory it creates made durable: each new directory's
/// parent is synced after it (else a power cut can take the directory back, and with it
/// every synced file inside).
pub fn create_dir_synced(dir: &std::path::Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p);
        d = p.parent();
    }
    std::fs::create_dir_all(dir)?;
    // Outermost first: each new directory is durable before what it holds matters.
    for p in missing.iter().rev() {
        sync_dir(
            p.parent()
                .filter(|q| !q.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new(".")),
        )?;
    }
    Ok(())
}

/// Shuts both directions: a pending write fails at once (write deadline passed).
pub fn shutdown_both(fd: RawFd) {
    // SAFETY: as in `shutdown_read`.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
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
    // SAFETY: cpu_set_t is plain data; zeroed is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: sched_getaffinity writes at most `size` bytes into `set`.
    let ok = unsafe { libc::sched_getaffinity(0, size, &mut set) } == 0;
    if !ok {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the initialized set for indexes below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Fds kept in reserve so that, at the fd limit, there is a descriptor to accept (and
/// close) pending connections with. Several, because a freed fd goes to whichever thread
/// asks first: librdkafka, reconnecting to a broker at the limit, takes one now and then
/// (and needs it more than a client that would be refused anyway).
pub struct SpareFds(Vec<File>);

impl SpareFds {
    const KEEP: usize = 8;

    pub fn new() -> SpareFds {
        let mut s = SpareFds(Vec::new());
        s.refill();
        s
    }

    /// Takes fds into reserve up to `KEEP`; false when none is held (the process has no
    /// fd to give until one is freed).
    pub fn refill(&mut self) -> bool {
        while self.0.len() < Self::KEEP {
            match File::open("/dev/null") {
                Ok(f) => self.0.push(f),
                Err(_) => break,
            }
        }
        !self.0.is_empty()
    }

    /// At the fd limit: accepts and at once closes every pending connection, so clients
    /// are refused promptly instead of waiting in the backlog, freeing a reserved fd
    /// whenever accept finds none. Returns how many were closed, and whether the backlog
    /// was seen empty (false: the spares ran out first, connections may still wait).
    pub fn shed(&mut self, listen_fd: RawFd) -> (usize, bool) {
        let mut n = 0;
        let drained = loop {
            match accept(listen_fd) {
                // Dropped, so closed, at once.
                Ok(_) => n += 1,
                Err(e) if out_of_fds(&e) => {
                    if self.0.pop().is_none() {
                        break false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                // This connection failed (reset, aborted): on to the next one.
                Err(_) => {}
            }
        };
        self.refill();
        (n, drained)
    }
}

impl Default for SpareFds {
    fn default() -> Self {
        Self::new()
    }
}
