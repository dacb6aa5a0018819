//! One segment file: a Glommio DMA file (O_DIRECT, aligned writes, no page cache), or a
//! buffered file where the filesystem refuses O_DIRECT (EINVAL). Glommio itself uses
//! buffered I/O on tmpfs behind the same DmaFile API.

use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use std::path::Path;

/// Reads go through a buffered handle even when writes are DMA: Glommio's DMA reads
/// (registered buffers) failed here with EOPNOTSUPP on virtio disks after a few MiB. A
/// buffered read after an O_DIRECT write is coherent (the write invalidates the cached
/// pages), and reading back is the slow path (replay, backlog), not the request path.
pub enum SegFile {
    Dma { w: DmaFile, r: BufferedFile },
    Buffered(BufferedFile),
}

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

impl SegFile {
    /// Opens (and with `create`, creates) a segment for reading and writing.
    pub async fn open(path: &Path, create: bool) -> std::io::Result<SegFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create);
        match o.dma_open(path).await {
            Ok(w) => {
                let r = OpenOptions::new()
                    .read(true)
                    .buffered_open(path)
                    .await
                    .map_err(io_error)?;
                Ok(SegFile::Dma { w, r })
            }
            Err(e) if refuses_direct(&e) => {
                tracing::warn!(path = %path.display(), "spool: this filesystem refuses O_DIRECT, using buffered files");
                o.buffered_open(path)
                    .await
                    .map(SegFile::Buffered)
                    .map_err(io_error)
            }
            Err(e) => Err(io_error(e)),
        }
    }

    /// Writes `len` bytes (a multiple of `format::BLOCK`) at `pos` (aligned), filled in
    /// place by `fill` (straight into the DMA buffer: no extra copy).
    pub async fn write_with(
        &self,
        len: usize,
        pos: u64,
        fill: impl FnOnce(&mut [u8]),
    ) -> std::io::Result<()> {
        let n = match self {
            SegFile::Dma { w: f, .. } => {
                let mut buf = f.alloc_dma_buffer(len);
                fill(buf.as_bytes_mut());
                f.write_at(buf, pos).await
            }
            SegFile::Buffered(f) => {
                let mut buf = vec![0; len];
                fill(&mut buf);
                f.write_at(buf, pos).await
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
        let r = match self {
            SegFile::Dma { r: f, .. } | SegFile::Buffered(f) => f.read_at(pos, len).await,
        }
        .map_err(io_error)?;
        Ok(r.to_vec())
    }

    pub async fn fdatasync(&self) -> std::io::Result<()> {
        match self {
            SegFile::Dma { w: f, .. } => f.fdatasync().await,
            SegFile::Buffered(f) => f.fdatasync().await,
        }
        .map_err(io_error)
    }

    pub async fn close(self) {
        let _ = match self {
            SegFile::Dma { w, r } => {
                let _ = r.close().await;
                w.close().await
            }
            SegFile::Buffered(f) => f.close().await,
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
