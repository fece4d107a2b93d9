//! Files: positional reads and writes on a handle opened through a
//! [`Session`](crate::Session).
//!
//! A [`File`] holds the session's request `engine` (not the session):
//! every method is one or more requests run by the engine. [`OpenOptions::open`] (in
//! [`crate::session`]) opens the handle.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use pov_proto::entry::{Stat, STAT_SIZE};
use pov_proto::io::{flags, Op};
use pov_proto::MAX_IO_BYTES;

use crate::engine::{decode_stat, run_parallel, split, wire_path, Call, Engine};
use crate::error::{protocol_error, Chain};

/// How to open a file, in the style of `std::fs::OpenOptions`. Every handle can read;
/// `write` makes it writable.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    write: bool,
    create: bool,
    create_new: bool,
    truncate: bool,
    location: u64,
}

impl OpenOptions {
    /// Read-only, open an existing file.
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// The proxy location key of the SDK hint (paper §4.3.2) for this file's requests:
    /// files opened with the same non-zero key are routed as one (to the same proxy of
    /// a cluster, in hash placement), e.g. the files of one job. 0 (the default) lets
    /// the device decide: by the file's inode, which with Ceph placement is the proxy
    /// next to the file's data (`docs/protocol.md`, "Route tables and redirects"). A
    /// key only moves this file's requests between proxies; it grants nothing.
    pub fn location_key(&mut self, key: u64) -> &mut OpenOptions {
        self.location = key;
        self
    }

    /// Allow writes, appends, truncation and fsync through the handle.
    pub fn write(&mut self, yes: bool) -> &mut OpenOptions {
        self.write = yes;
        self
    }

    /// Create the file (and its parent directories) if it does not exist. Needs `write`.
    pub fn create(&mut self, yes: bool) -> &mut OpenOptions {
        self.create = yes;
        self
    }

    /// Create the file, failing with `AlreadyExists` if it exists. Needs `write`.
    pub fn create_new(&mut self, yes: bool) -> &mut OpenOptions {
        self.create_new = yes;
        self
    }

    /// Truncate the file to 0 bytes on open. Needs `write`.
    pub fn truncate(&mut self, yes: bool) -> &mut OpenOptions {
        self.truncate = yes;
        self
    }

    /// The Open request flags for these options.
    ///
    /// Errors: `InvalidInput` if create/create_new/truncate is set without write.
    pub fn wire_flags(&self) -> io::Result<u32> {
        if (self.create || self.create_new || self.truncate) && !self.write {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "create, create_new and truncate need write(true)"));
        }
        let mut f = 0;
        if self.write {
            f |= flags::WRITE;
        }
        if self.create_new {
            f |= flags::CREATE | flags::EXCL;
        } else if self.create {
            f |= flags::CREATE;
        }
        if self.truncate {
            f |= flags::TRUNCATE;
        }
        Ok(f)
    }

    /// Opens `path` with one Open request on `engine`; see [`OpenOptions::open`].
    pub(crate) fn open_on(&self, engine: &Arc<Engine>, path: &str) -> io::Result<File> {
        let f = self.wire_flags()?;
        let wire = wire_path(path, Op::Open)?;
        let c = Call { flags: f, location: self.location, ..Call::path(Op::Open, &wire, 0) };
        let device = engine.call(&c, |h, _| Ok(h.result))?;
        if device == 0 {
            return Err(protocol_error(format!("open {wire}: device returned file handle 0")));
        }
        // The engine maps our ID to the device's handle (a failover opens it again).
        let handle = engine.register_handle(device, &wire, f, self.location);
        Ok(File { engine: Arc::clone(engine), handle, path: wire, closed: AtomicBool::new(false), pos: AtomicU64::new(0) })
    }
}

/// An open file of a PoV session. `Send + Sync`: all methods take `&self` and
/// positional offsets, so threads may share one `File` (each call uses its own queue).
///
/// Reads and writes larger than [`MAX_IO_BYTES`] (1 MiB) are split into requests of at
/// most 1 MiB that run in parallel on the session's queues; each request is atomic on
/// the device, the whole call is not.
///
/// `File` (and `&File`, as with `std::fs::File`) also implements [`io::Read`],
/// [`io::Write`] and [`io::Seek`] on a cursor kept in the library (bytes from the start
/// of the file, 0 at open), so `io::copy`, `BufReader` and `BufWriter` work; the
/// positional methods neither use nor move it. Threads sharing one `File` through
/// `&File` share its cursor, as with std's.
///
/// Dropping a `File` closes the handle, ignoring errors; [`File::close`] reports them.
pub struct File {
    engine: Arc<Engine>,
    /// The engine's ID for the file (mapped to the device's handle of the current
    /// session incarnation).
    handle: u64,
    path: String,
    closed: AtomicBool,
    /// The cursor of `Read`/`Write`/`Seek`, bytes.
    pos: AtomicU64,
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File").field("path", &self.path).field("handle", &self.handle).finish()
    }
}

impl File {
    /// The normalized path the file was opened with.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The device's handle for the file now (a failover of the session opens the file
    /// again under a new one); 0 if the file could not be opened again.
    pub fn handle(&self) -> u64 {
        self.engine.device_handle(self.handle, &self.path).unwrap_or(0)
    }

    /// Reads up to `buf.len()` bytes starting at byte `offset`; returns the bytes read,
    /// which is less than `buf.len()` only at end of file (0 at or past it).
    ///
    /// Errors: the device's status (e.g. `BadHandle`), transport errors, or
    /// `InvalidData` if the device returns more than was asked for.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let max = MAX_IO_BYTES as usize;
        let pieces: Vec<(u64, &mut [u8])> =
            buf.chunks_mut(max).enumerate().map(|(i, c)| (offset + (i * max) as u64, c)).collect();
        let lens: Vec<usize> = pieces.iter().map(|p| p.1.len()).collect();
        let results = run_parallel(pieces, self.engine.queue_count(), |(off, dst)| self.read_piece(dst, off));
        let mut done = 0;
        for (r, want) in results.into_iter().zip(lens) {
            let n = r.unwrap_or_else(|| Err(io::Error::other("read piece skipped")))?;
            done += n;
            if n < want {
                break;
            }
        }
        Ok(done)
    }

    /// One Read request of at most 1 MiB.
    fn read_piece(&self, dst: &mut [u8], off: u64) -> io::Result<usize> {
        let want = dst.len();
        let c = Call { offset: off, length: want as u32, expect: want, ..Call::handle(Op::Read, self.handle, &self.path) };
        self.engine.call(&c, |h, payload| {
            let n = h.result as usize;
            if n > want || payload.len() < n {
                return Err(protocol_error(format!(
                    "read {}: asked {want} bytes, device says {n} with {} payload bytes",
                    self.path,
                    payload.len()
                )));
            }
            dst[..n].copy_from_slice(&payload[..n]);
            Ok(n)
        })
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    ///
    /// Errors: `UnexpectedEof` if the file ends first, plus those of [`File::read_at`].
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_at(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read {}: end of file after {n} of {} bytes", self.path, buf.len()),
            ));
        }
        Ok(())
    }

    /// Writes all of `buf` at byte `offset` (in requests of at most 1 MiB) and returns
    /// `buf.len()`. The file grows as needed.
    ///
    /// Errors: `PermissionDenied` if the handle is not writable, the `NoSpace` status
    /// (errno `ENOSPC`) and other device statuses, transport errors, `WriteZero` if the
    /// device reports a short write. After an error some pieces may have been written.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let pieces: Vec<(u64, std::ops::Range<usize>)> = split(offset, buf.len(), MAX_IO_BYTES as usize).collect();
        let results = run_parallel(pieces, self.engine.queue_count(), |(off, range)| {
            let want = range.len();
            let c = Call { offset: off, payload: &buf[range], ..Call::handle(Op::Write, self.handle, &self.path) };
            let n = self.engine.call(&c, |h, _| Ok(h.result))?;
            if n != want as u64 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("write {}: device wrote {n} of {want} bytes at offset {off}", self.path),
                ));
            }
            Ok(())
        });
        for r in results {
            r.unwrap_or_else(|| Err(io::Error::other("write piece skipped")))?;
        }
        Ok(buf.len())
    }

    /// Appends `buf` at the end of the file and returns the byte offset where it landed.
    /// Up to 1 MiB is one atomic append; a larger `buf` is several appends, which other
    /// writers may interleave with (the returned offset is that of the first).
    ///
    /// Errors: as [`File::write_at`].
    pub fn append(&self, buf: &[u8]) -> io::Result<u64> {
        let mut first = None;
        for (_, range) in split(0, buf.len(), MAX_IO_BYTES as usize) {
            let c = Call { payload: &buf[range], ..Call::handle(Op::Append, self.handle, &self.path) };
            let at = self.engine.call(&c, |h, _| Ok(h.result))?;
            first.get_or_insert(at);
        }
        match first {
            Some(at) => Ok(at),
            // Nothing to append: report the current end of file.
            None => Ok(self.stat()?.size),
        }
    }

    /// Attributes of the open file.
    ///
    /// Errors: the device's status, transport errors.
    pub fn stat(&self) -> io::Result<Stat> {
        let c = Call { expect: STAT_SIZE, ..Call::handle(Op::Stat, self.handle, &self.path) };
        self.engine.call(&c, |_, p| decode_stat(p))
    }

    /// Sets the file size to `size` bytes (truncating or extending with zeros).
    ///
    /// Errors: `PermissionDenied` if the handle is not writable; other statuses.
    pub fn set_len(&self, size: u64) -> io::Result<()> {
        let c = Call { offset: size, ..Call::handle(Op::Truncate, self.handle, &self.path) };
        self.engine.call(&c, |_, _| Ok(()))
    }

    /// Makes the file's data durable on the storage backend.
    ///
    /// Errors: the device's status, transport errors.
    pub fn sync(&self) -> io::Result<()> {
        self.engine.call(&Call::handle(Op::Fsync, self.handle, &self.path), |_, _| Ok(()))
    }

    /// Closes the handle, reporting errors.
    ///
    /// Errors: the device's status, transport errors, `NotConnected` if the session is
    /// gone (the device dropped its handles with it).
    pub fn close(self) -> io::Result<()> {
        self.closed.store(true, Ordering::Relaxed);
        self.send_close()
    }

    fn send_close(&self) -> io::Result<()> {
        let r =
            self.engine.check().and_then(|()| self.engine.call(&Call::handle(Op::Close, self.handle, &self.path), |_, _| Ok(())));
        self.engine.forget_handle(self.handle);
        r
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::Relaxed) {
            if let Err(e) = self.send_close() {
                log::debug!("close {} on drop: {}", self.path, Chain(&e));
            }
        }
    }
}

impl io::Read for &File {
    /// Reads at the cursor and moves it past what was read.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let at = self.pos.load(Ordering::Relaxed);
        let n = self.read_at(buf, at)?;
        self.pos.store(at + n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl io::Write for &File {
    /// Writes all of `buf` at the cursor (in 1 MiB requests) and moves it past.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let at = self.pos.load(Ordering::Relaxed);
        let n = self.write_at(buf, at)?;
        self.pos.store(at + n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Nothing to do: every write has been answered by the device (use
    /// [`File::sync`] for durability on the backend).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for &File {
    /// Moves the cursor; `SeekFrom::End` asks the device for the size (one Stat).
    ///
    /// Errors: `InvalidInput` for a position before 0 or past `u64::MAX`; Stat's.
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            io::SeekFrom::Start(n) => (n, 0),
            io::SeekFrom::Current(d) => (self.pos.load(Ordering::Relaxed), d),
            io::SeekFrom::End(d) => (self.stat()?.size, d),
        };
        let new = base
            .checked_add_signed(delta)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("seek {}: position out of range", self.path)))?;
        self.pos.store(new, Ordering::Relaxed);
        Ok(new)
    }
}

impl io::Read for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl io::Write for File {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for File {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        (&*self).seek(to)
    }
}

impl std::os::unix::fs::FileExt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        File::read_at(self, buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        File::write_at(self, buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags() {
        assert_eq!(OpenOptions::new().wire_flags().unwrap(), 0);
        assert_eq!(OpenOptions::new().write(true).wire_flags().unwrap(), flags::WRITE);
        assert_eq!(
            OpenOptions::new().write(true).create(true).truncate(true).wire_flags().unwrap(),
            flags::WRITE | flags::CREATE | flags::TRUNCATE
        );
        assert_eq!(
            OpenOptions::new().write(true).create(true).create_new(true).wire_flags().unwrap(),
            flags::WRITE | flags::CREATE | flags::EXCL
        );
        assert!(OpenOptions::new().create(true).wire_flags().is_err());
        assert!(OpenOptions::new().truncate(true).wire_flags().is_err());
    }
}
