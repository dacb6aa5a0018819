//! One segment file: a Glommio DMA file (O_DIRECT, aligned writes, no page cache) on
//! devices with polled queues, or a buffered file (page cache, made durable by
//! `fdatasync`) elsewhere and where the filesystem refuses O_DIRECT (EINVAL).

use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::cell::Cell;
use std::path::Path;

/// Reads go through a buffered handle even when writes are DMA: Glommio's DMA reads
/// (registered buffers) failed here with EOPNOTSUPP on virtio disks after a few MiB. A
/// buffered read after an O_DIRECT write is coherent (the write invalidates the cached
/// pages), and reading back is the slow path (replay, backlog), not the request path.
pub struct SegFile {
    io: Io,
    /// Which sync handles have an fdatasync in flight.
    busy: [Cell<bool>; SYNC_HANDLES],
}

enum Io {
    Dma {
        w: DmaFile,
        r: BufferedFile,
    },
    /// `w` writes in place with pwrite(2): a copy into the page cache, a few us, where
    /// io_uring would hand a buffered write to a kernel worker thread (measured: ~90 us
    /// of CPU per commit here). `f` syncs (on io_uring: fdatasync blocks) and reads;
    /// `f2` is the second handle to sync on (`fdatasync`).
    Buffered {
        f: BufferedFile,
        f2: BufferedFile,
        w: std::fs::File,
        buf: std::cell::RefCell<Vec<u8>>,
    },
}

enum Handle<'a> {
    Dma(&'a DmaFile),
    Buffered(&'a BufferedFile),
}

/// How many `fdatasync`s of one segment may be in flight, each on its own open file: the
/// kernel reports a writeback error once per open file, so two syncs on one handle at
/// once could each leave the error to the other. A sync that fails also fails the batches
/// written while it ran (`writer::spawn_sync`): it may have taken their error.
pub const SYNC_HANDLES: usize = 2;

/// Whether an open failed because the filesystem refuses O_DIRECT.
fn refuses_direct(e: &glommio::GlommioError<()>) -> bool {
    match e {
        glommio::GlommioError::IoError(io)
        | glommio::GlommioError::EnhancedIoError { source: io, .. } => {
            io.raw_os_error() == Some(libc::EINVAL)
        }
        _ => false,
    }
}

/// Whether segments on `dir`'s block device are written with O_DIRECT. Glommio sends DMA
/// I/O on block devices to its io_uring poll ring (IOPOLL), which is completed by
/// spinning; on a device without polled queues (`queue/io_poll` = 0, e.g. virtio-blk)
/// that burned a whole core at one connection (219 us of CPU per request) and reads
/// failed with EOPNOTSUPP. There, buffered writes (page cache, then `fdatasync`) keep the
/// same durability at a fraction of the CPU.
pub fn direct_io_ok(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // TEST HOOK (tests/spool.rs; `fault-injection` builds only): exercise the DMA path on
    // a machine without polled queues.
    if crate::faults::env("INGESTD_TEST_SPOOL_DIRECT").is_some() {
        return true;
    }
    let Ok(m) = std::fs::metadata(dir) else {
        return false;
    };
    let (maj, min) = (libc::major(m.dev()), libc::minor(m.dev()));
    let dev = format!("/sys/dev/block/{maj}:{min}");
    // A partition's queue is its disk's.
    ["queue/io_poll", "../queue/io_poll"]
        .iter()
        .any(|q| std::fs::read_to_string(format!("{dev}/{q}")).is_ok_and(|v| v.trim() == "1"))
}

impl SegFile {
    fn new(io: Io) -> SegFile {
        SegFile {
            io,
            busy: Default::default(),
        }
    }

    /// A sync handle with no fdatasync in flight, taken until `release`d.
    pub fn take_handle(&self) -> Option<usize> {
        let h = self.busy.iter().position(|b| !b.get())?;
        self.busy[h].set(true);
        Some(h)
    }

    pub fn release(&self, h: usize) {
        self.busy[h].set(false);
    }

    /// Opens (and with `create`, creates) a segment for reading and writing; `direct`:
    /// with O_DIRECT writes (see `direct_io_ok`).
    pub async fn open(path: &Path, create: bool, direct: bool) -> std::io::Result<SegFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create);
        if !direct {
            return Self::buffered(&o, path).await;
        }
        match o.dma_open(path).await {
            Ok(w) => {
                let r = OpenOptions::new()
                    .read(true)
                    .buffered_open(path)
                    .await
                    .map_err(io_error)?;
                Ok(SegFile::new(Io::Dma { w, r }))
            }
            Err(e) if refuses_direct(&e) => {
                tracing::warn!(path = %path.display(), "spool: this filesystem refuses O_DIRECT, using buffered files");
                Self::buffered(&o, path).await
            }
            Err(e) => Err(io_error(e)),
        }
    }

    async fn buffered(o: &OpenOptions, path: &Path) -> std::io::Result<SegFile> {
        let f = o.buffered_open(path).await.map_err(io_error)?;
        let f2 = OpenOptions::new()
            .read(true)
            .write(true)
            .buffered_open(path)
            .await
            .map_err(io_error)?;
        let w = std::fs::OpenOptions::new().write(true).open(path)?;
        Ok(SegFile::new(Io::Buffered {
            f,
            f2,
            w,
            buf: Default::default(),
        }))
    }

    /// Writes `len` bytes (a multiple of `format::BLOCK`) at `pos` (aligned), filled in
    /// place by `fill` (straight into the DMA buffer: no extra copy).
    pub async fn write_with(
        &self,
        len: usize,
        pos: u64,
        fill: impl FnOnce(&mut [u8]),
    ) -> std::io::Result<()> {
        let n = match &self.io {
            Io::Dma { w: f, .. } => {
                let mut buf = f.alloc_dma_buffer(len);
                fill(buf.as_bytes_mut());
                f.write_at(buf, pos).await
            }
            Io::Buffered { w, buf, .. } => {
                use std::os::unix::fs::FileExt;
                // One buffer per segment, reused: no allocation and zero fill per commit.
                let mut buf = buf.borrow_mut();
                buf.clear();
                buf.resize(len, 0);
                fill(&mut buf);
                let r = w.write_all_at(&buf, pos);
                // A batch far above the usual size does not keep its memory.
                if buf.capacity() > 1 << 20 {
                    *buf = Vec::new();
                }
                return r;
            }
        }
        .map_err(io_error)?;
        if n != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {n} of {len}"),
            ));
        }
        Ok(())
    }

    /// Reads up to `len` bytes at `pos` (aligned); fewer at the end of the file.
    pub async fn read_at(&self, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let r = match &self.io {
            Io::Dma { r: f, .. } | Io::Buffered { f, .. } => f.read_at(pos, len).await,
        }
        .map_err(io_error)?;
        Ok(r.to_vec())
    }

    pub async fn fdatasync(&self) -> std::io::Result<()> {
        self.fdatasync_on(0).await
    }

    /// fdatasync through handle `h` (< `SYNC_HANDLES`); it covers every write that
    /// completed before it started, whichever handle wrote it.
    pub async fn fdatasync_on(&self, h: usize) -> std::io::Result<()> {
        match self.handle(h) {
            Handle::Dma(f) => f.fdatasync().await,
            Handle::Buffered(f) => f.fdatasync().await,
        }
        .map_err(io_error)
    }

    /// fdatasync through handle `h` as a blocking syscall on this thread (`inline`): the
    /// same open file as `fdatasync_on(h)`, so each handle still has one sync at a time.
    pub fn fdatasync_blocking(&self, h: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        crate::sys::fdatasync(match self.handle(h) {
            Handle::Dma(f) => f.as_raw_fd(),
            Handle::Buffered(f) => f.as_raw_fd(),
        })
    }

    /// The open file sync handle `h` syncs through: one per handle, for the writeback
    /// error rule at `SYNC_HANDLES`.
    fn handle(&self, h: usize) -> Handle<'_> {
        match (&self.io, h) {
            (Io::Dma { w, .. }, 0) => Handle::Dma(w),
            (Io::Dma { r, .. }, _) => Handle::Buffered(r),
            (Io::Buffered { f, .. }, 0) => Handle::Buffered(f),
            (Io::Buffered { f2, .. }, _) => Handle::Buffered(f2),
        }
    }

    pub async fn close(self) {
        let _ = match self.io {
            Io::Dma { w, r } => {
                let _ = r.close().await;
                w.close().await
            }
            Io::Buffered { f, f2, .. } => {
                let _ = f2.close().await;
                f.close().await
            }
        };
    }
}

/// Glommio's error as an io::Error, keeping the OS error code (ENOSPC, EIO) where there
/// is one.
fn io_error(e: glommio::GlommioError<()>) -> std::io::Error {
    match e {
        glommio::GlommioError::IoError(io) => io,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}
