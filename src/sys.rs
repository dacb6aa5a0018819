//! The few raw socket operations Glommio does not expose. All `unsafe` of the crate lives
//! here, each with its SAFETY note.

use socket2::{Domain, Protocol, Socket, Type};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};

/// A listening socket with SO_REUSEPORT (one per executor) and our backlog, handed to
/// Glommio. Also returns the fd so `shed_pending` can use it at the fd limit.
pub fn listener(addr: SocketAddr, backlog: i32) -> io::Result<(glommio::net::TcpListener, RawFd)> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_port(true)?;
    sk.set_reuse_address(true)?;
    sk.bind(&addr.into())?;
    sk.listen(backlog)?;
    // Non-blocking so `shed_pending` stops when the backlog is empty; io_uring's accept
    // and Glommio's direct accept both work on a non-blocking listener.
    sk.set_nonblocking(true)?;
    let fd = sk.into_raw_fd();
    // SAFETY: `fd` is a bound, listening TCP socket we own; ownership moves to Glommio.
    let l = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
    Ok((l, fd))
}

/// At the fd limit: accepts and immediately closes pending connections, so clients are
/// refused promptly instead of waiting in the backlog. Returns how many were closed.
/// The caller frees one fd first (see `SpareFd`), so accept can succeed.
pub fn shed_pending(listen_fd: RawFd) -> usize {
    let mut n = 0;
    loop {
        // SAFETY: accept4 on a listening fd owned by this executor's live listener; null
        // address pointers are allowed. The returned fd is ours and closed right away.
        let fd = unsafe {
            libc::accept4(
                listen_fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return n;
        }
        // SAFETY: `fd` was just returned by accept4 and is not used elsewhere.
        drop(unsafe { File::from_raw_fd(fd) });
        n += 1;
    }
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
