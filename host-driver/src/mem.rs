//! Raw memory and raw system calls: every `unsafe` block of this crate lives here.
//!
//! * [`IoBuf`]: an IO buffer whose address and length suit direct IO to a block device.
//!   It is either heap memory aligned to 4 KiB (the kernel path, `O_DIRECT`) or a piece
//!   of memory that libblkio has mapped for the device (the vhost-user path, where the
//!   device can only reach memory the client announced to it).
//! * `RegionPool`: hands out [`IoBuf`]s backed by libblkio memory regions
//!   (`alloc_mem_region` + `map_mem_region`) and takes them back for reuse.
//! * [`uring_rw`]: several reads and writes of one file descriptor submitted together
//!   through io_uring (the kernel path's joint round trip).

use std::alloc::Layout;
use std::io;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Alignment of every [`IoBuf`], in bytes: enough for `O_DIRECT` on any Linux block
/// device (logical block sizes are at most 4 KiB).
pub const IO_ALIGN: usize = 4096;

/// Rounds `n` up to a multiple of `align` (a power of two).
pub(crate) fn round_up(n: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (n + align - 1) & !(align - 1)
}

/// Heap buffers at least this large are mapped straight from the kernel (fresh zero
/// pages, nothing to clear; glibc would serve them from its heap once earlier ones were
/// freed and clear every byte: ~1 ms per 1 MiB buffer in a TCG guest), bytes.
const MMAP_MIN: usize = 256 << 10;

enum Owner {
    /// Allocated with the global allocator with this layout.
    Heap(Layout),
    /// An anonymous private mapping of `len` bytes of its own.
    Mapped,
    /// Lent by a [`RegionPool`]; goes back to it on drop.
    Pool { pool: Arc<RegionPool>, piece: Piece },
}

/// A zero-initialised IO buffer aligned to [`IO_ALIGN`] whose length is a multiple of
/// [`IO_ALIGN`].
///
/// Transports hand these out ([`crate::transport::BlockTransport::alloc_buf`]); a
/// transport may refuse a buffer it did not allocate (libblkio can only do IO to its
/// own mapped memory).
pub struct IoBuf {
    ptr: NonNull<u8>,
    len: usize,
    owner: Owner,
    /// A device may still be writing into this buffer (an IO was abandoned): never
    /// reuse its memory.
    in_doubt: bool,
}

// SAFETY: an IoBuf owns its memory exclusively (like a Box<[u8]>); nothing else holds
// the pointer, so moving it to another thread is sound.
unsafe impl Send for IoBuf {}
// SAFETY: shared access only hands out `&[u8]`, which is sound from any thread.
unsafe impl Sync for IoBuf {}

impl IoBuf {
    /// Allocates a zeroed heap buffer of at least `len` bytes (rounded up to a multiple
    /// of [`IO_ALIGN`], and at least [`IO_ALIGN`]), aligned to [`IO_ALIGN`]; one of
    /// 256 KiB or more is an anonymous mapping of its own (`mmap(2)`).
    ///
    /// Errors: `OutOfMemory` if the allocation fails, `InvalidInput` if `len` is absurd.
    pub fn aligned(len: usize) -> io::Result<IoBuf> {
        let size = round_up(len.max(1), IO_ALIGN);
        if size >= MMAP_MIN {
            // SAFETY: an anonymous private mapping of `size` bytes at an address the
            // kernel picks: no existing memory is touched. Pages are page aligned
            // (≥ IO_ALIGN) and read as zeros.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(io::ErrorKind::OutOfMemory, format!("cannot map a {size}-byte IO buffer: {e}")));
            }
            let ptr = NonNull::new(raw.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned a null IO buffer"))?;
            return Ok(IoBuf { ptr, len: size, owner: Owner::Mapped, in_doubt: false });
        }
        let layout = Layout::from_size_align(size, IO_ALIGN)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "IO buffer too large"))?;
        // SAFETY: `layout` has a non-zero size (at least IO_ALIGN bytes).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "cannot allocate IO buffer"))?;
        Ok(IoBuf { ptr, len: size, owner: Owner::Heap(layout), in_doubt: false })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` if the buffer has no bytes (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `true` if the buffer lives in memory mapped for a libblkio device.
    pub fn is_device_memory(&self) -> bool {
        matches!(self.owner, Owner::Pool { .. })
    }

    /// Marks the buffer as possibly still in use by the device (an IO on it was
    /// abandoned after a timeout or a transport failure). Its memory will not be handed
    /// out again; libblkio frees it with the device.
    pub(crate) fn set_in_doubt(&mut self) {
        self.in_doubt = true;
    }

    /// Address of byte `off`, for handing to a device. Panics if `off > len`.
    pub(crate) fn ptr_at(&mut self, off: usize) -> *mut u8 {
        assert!(off <= self.len);
        // SAFETY: `off <= len`, so the result stays inside (or one past the end of) the
        // allocation this buffer owns.
        unsafe { self.ptr.as_ptr().add(off) }
    }
}

impl std::ops::Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for reads of `len` bytes for the life of `self` (heap
        // memory we own, or a mapped region the pool keeps alive), the bytes are
        // initialised (zeroed when the memory was first allocated: heap memory by
        // alloc_zeroed or a fresh anonymous mapping, device memory by its new memfd;
        // written since), and `&self` rules out a `&mut` alias.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .field("device_memory", &self.is_device_memory())
            .finish()
    }
}

impl Drop for IoBuf {
    fn drop(&mut self) {
        match &self.owner {
            Owner::Mapped => {
                // SAFETY: `ptr..ptr + len` is the whole mapping `aligned` made, unmapped
                // only here; nothing borrows it any more.
                unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
            }
            Owner::Heap(layout) => {
                // SAFETY: `ptr` came from `alloc_zeroed(layout)` and is freed only here.
                unsafe { std::alloc::dealloc(self.ptr.as_ptr(), *layout) }
            }
            Owner::Pool { pool, piece } => {
                if self.in_doubt {
                    log::warn!("not reusing device memory at {:#x}: an IO on it was abandoned", piece.addr);
                } else {
                    pool.give_back(Piece { fresh: false, ..*piece })
                }
            }
        }
    }
}

/// Device memory the pool lends at most: a region mapped at once holds up to this many
/// bytes' worth of equal buffers (mapping a region is a vhost-user round trip, about
/// 0.5 ms, and the device accepts a limited number of regions).
const REGION_TARGET_BYTES: usize = 16 << 20;
/// Most buffers cut from one region.
const REGION_MAX_PIECES: usize = 64;

/// One buffer's worth of a mapped region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    addr: usize,
    len: usize,
    /// Never lent yet: still zero (a new memfd reads as zeros), so no need to clear it.
    fresh: bool,
}

/// Memory regions mapped for one libblkio instance, cut into equal buffers and handed
/// out as [`IoBuf`]s, reused after they are dropped.
///
/// A region is mapped for up to [`REGION_MAX_PIECES`] buffers of one size at a time (up
/// to [`REGION_TARGET_BYTES`]), so that a session's queues cost one mapping, not two
/// per queue; pieces never used cost no memory (the memfd's pages are allocated when
/// first touched). The pool keeps the `Blkio` alive, and libblkio frees regions only
/// when the `Blkio` and all its queues are dropped, so a lent buffer's memory stays
/// valid for as long as the buffer exists.
pub(crate) struct RegionPool {
    blkio: Arc<Mutex<blkio::Blkio>>,
    align: usize,
    free: Mutex<Vec<Piece>>,
}

impl RegionPool {
    /// A pool for a started `Blkio`.
    pub(crate) fn new(blkio: Arc<Mutex<blkio::Blkio>>) -> io::Result<Arc<RegionPool>> {
        let align = {
            let b = blkio.lock().unwrap_or_else(|e| e.into_inner());
            b.get_u64("mem-region-alignment").map_err(blkio_err("get mem-region-alignment"))?
        };
        let align = usize::try_from(align).unwrap_or(IO_ALIGN).max(IO_ALIGN);
        if !align.is_power_of_two() {
            return Err(io::Error::other(format!("mem-region-alignment {align} is not a power of two")));
        }
        Ok(Arc::new(RegionPool { blkio, align, free: Mutex::new(Vec::new()) }))
    }

    /// A buffer of at least `len` bytes in device-mapped memory: zeroed if `zero`, else
    /// holding what this process last put there if it was lent before.
    pub(crate) fn alloc(self: &Arc<Self>, len: usize, zero: bool) -> io::Result<IoBuf> {
        let want = round_up(len.max(1), self.align);
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            free.iter().position(|p| p.len == want).map(|i| free.swap_remove(i))
        };
        let piece = match reused {
            Some(p) => p,
            None => self.map_pieces(want)?,
        };
        let ptr =
            NonNull::new(piece.addr as *mut u8).ok_or_else(|| io::Error::other("libblkio returned a null memory region"))?;
        let mut buf = IoBuf { ptr, len: want, owner: Owner::Pool { pool: Arc::clone(self), piece }, in_doubt: false };
        if zero && !piece.fresh {
            buf.fill(0);
        }
        Ok(buf)
    }

    /// Maps a new region for buffers of `want` bytes; keeps all but one of its pieces
    /// in the free list and returns that one.
    fn map_pieces(&self, want: usize) -> io::Result<Piece> {
        let pieces = (REGION_TARGET_BYTES / want).clamp(1, REGION_MAX_PIECES);
        let size = want.checked_mul(pieces).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "IO buffer too large"))?;
        let r = {
            let mut b = self.blkio.lock().unwrap_or_else(|e| e.into_inner());
            let r = b.alloc_mem_region(size).map_err(blkio_err("alloc_mem_region"))?;
            if let Err(e) = b.map_mem_region(&r) {
                b.free_mem_region(&r);
                return Err(blkio_err("map_mem_region")(e));
            }
            r
        };
        if r.addr == 0 || r.addr % IO_ALIGN != 0 || r.len < size {
            return Err(io::Error::other("libblkio memory region is misaligned or short"));
        }
        log::debug!("mapped device memory region of {size} bytes at {:#x}: {pieces} buffers of {want} bytes", r.addr);
        let mut all = (0..pieces).map(|i| Piece { addr: r.addr + i * want, len: want, fresh: true });
        let first = all.next().expect("at least one piece");
        self.free.lock().unwrap_or_else(|e| e.into_inner()).extend(all);
        Ok(first)
    }

    fn give_back(&self, piece: Piece) {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).push(piece);
    }
}

/// One reaped libblkio completion: the request's `user_data` and its outcome.
pub(crate) struct Reaped {
    pub(crate) user_data: usize,
    pub(crate) result: io::Result<()>,
}

/// Submits what is enqueued on `q` and reaps the completions that are ready, up to
/// `max`, without waiting (`do_io` with `min_completions` 0). `EINTR` is retried.
///
/// Errors: any other `do_io` error.
pub(crate) fn blkio_reap_ready(q: &mut blkio::Blkioq, max: usize) -> io::Result<Vec<Reaped>> {
    let mut slots: Vec<std::mem::MaybeUninit<blkio::Completion>> = (0..max).map(|_| std::mem::MaybeUninit::uninit()).collect();
    let n = loop {
        match q.do_io(&mut slots, 0, None, None) {
            Ok(n) => break n.min(max),
            Err(e) if e.errno() == blkio::Errno::INTR => continue,
            Err(e) => return Err(blkio_err("do_io")(e)),
        }
    };
    let mut out = Vec::with_capacity(n);
    for slot in &slots[..n] {
        // SAFETY: do_io initialised the first `n` elements of the slice it was given.
        let c = unsafe { slot.assume_init_read() };
        let result = if c.ret < 0 {
            let msg = if c.error_msg.is_null() {
                String::new()
            } else {
                // SAFETY: libblkio sets `error_msg` to null or to a static
                // NUL-terminated string (see `Completion::for_failed_req`).
                let m = unsafe { std::ffi::CStr::from_ptr(c.error_msg) };
                format!(": {}", m.to_string_lossy())
            };
            let os = io::Error::from_raw_os_error(-c.ret);
            Err(io::Error::new(os.kind(), format!("IO completed with error {os}{msg}")))
        } else {
            Ok(())
        };
        out.push(Reaped { user_data: c.user_data, result });
    }
    Ok(out)
}

/// Waits up to `timeout` for the eventfd `fd` (a libblkio queue's completion fd) to
/// become readable, then resets it (reads its counter), so the next wait sleeps until
/// the device signals again. Returns whether it was signalled; `EINTR` counts as not.
///
/// Errors: `poll(2)` failures other than `EINTR`.
pub(crate) fn wait_eventfd(fd: std::os::fd::RawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid pollfd that outlives the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    if r == 0 || pfd.revents & libc::POLLIN == 0 {
        return Ok(false);
    }
    let mut counter = 0u64;
    // SAFETY: reads at most 8 bytes into `counter`, which outlives the call. The fd is
    // non-blocking (libblkio's eventfd); an EAGAIN (another reader reset it first) is
    // harmless.
    let _ = unsafe { libc::read(fd, (&mut counter as *mut u64).cast(), 8) };
    Ok(true)
}

/// Converts a libblkio error into an `io::Error` that keeps its errno and message.
pub(crate) fn blkio_err(what: &'static str) -> impl Fn(blkio::Error) -> io::Error {
    move |e| {
        let errno = e.errno().raw_os_error();
        let kind = io::Error::from_raw_os_error(errno).kind();
        let msg = e.message();
        if msg.contains("os error") {
            io::Error::new(kind, format!("libblkio {what}: {msg}"))
        } else {
            io::Error::new(kind, format!("libblkio {what}: {msg} (errno {errno})"))
        }
    }
}

/// The real user and group IDs of this process (`getuid(2)`, `getgid(2)`): the owner
/// a FUSE mount reports for every file.
#[cfg(feature = "fuse")]
pub(crate) fn process_ids() -> (u32, u32) {
    // SAFETY: getuid and getgid take no arguments, cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Submits every op of `ops` on `fd` through `ring` with one `io_uring_enter(2)` (no
/// ordering between them: the device may see them in any order) and waits for all of
/// them. Returns each op's result as the kernel gave it (bytes moved, or `-errno`),
/// in `ops` order.
///
/// Errors: the ring is too small for `ops` (`InvalidInput`), or `io_uring_enter`
/// failed before the ops were submitted.
pub(crate) fn uring_rw(
    ring: &mut io_uring::IoUring,
    fd: std::os::fd::RawFd,
    ops: &mut [crate::transport::BlockOp<'_>],
) -> io::Result<Vec<i32>> {
    use io_uring::{opcode, types};
    if ops.len() > ring.params().sq_entries() as usize || ops.iter().any(|o| o.buf_offset + o.len > o.buf.len()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "io_uring batch larger than the ring or its buffers"));
    }
    // Completions left over from an earlier call that failed midway are not ours.
    ring.completion().for_each(drop);
    for (i, o) in ops.iter_mut().enumerate() {
        let ptr = o.buf.ptr_at(o.buf_offset);
        let len = o.len as u32;
        let entry = match o.dir {
            crate::transport::Dir::Write => opcode::Write::new(types::Fd(fd), ptr, len).offset(o.dev_offset).build(),
            crate::transport::Dir::Read => opcode::Read::new(types::Fd(fd), ptr, len).offset(o.dev_offset).build(),
        };
        // SAFETY: `ptr..ptr + len` lies inside `o.buf` (checked above), which `ops`
        // borrows mutably until this function returns, and it returns only after every
        // submitted entry has completed (the loop below), so the kernel never touches
        // the memory after the borrow ends. The ring had room for all of `ops`, and it
        // is empty at this point (every earlier call waited for all its entries).
        unsafe { ring.submission().push(&entry.user_data(i as u64)) }
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "io_uring submission queue full"))?;
    }
    let mut res = vec![None; ops.len()];
    let mut left = ops.len();
    while left > 0 {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => continue,
            // io_uring_enter(2) fails only for a call that submitted nothing (a partial
            // submission returns its count), and with everything submitted the wait
            // fails only with EINTR. So nothing of ours is in flight: the caller must
            // drop the ring, whose unsubmitted entries go with it.
            Err(e) => return Err(e),
        }
        for c in ring.completion() {
            if let Some(slot) = res.get_mut(c.user_data() as usize) {
                if slot.replace(c.result()).is_none() {
                    left -= 1;
                }
            }
        }
    }
    Ok(res.into_iter().map(|r| r.unwrap_or(-libc::EIO)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_zeroed_and_rounded() {
        for len in [0usize, 1, 511, 512, 4096, 4097, 1 << 20, (1 << 20) + 4096] {
            let mut b = IoBuf::aligned(len).unwrap();
            assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0, "len {len}");
            assert!(b.len() >= len.max(1));
            assert_eq!(b.len() % IO_ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0));
            let last = b.len() - 1;
            b[last] = 7;
            let p = b.ptr_at(last);
            assert_eq!(p as usize, b.as_ptr() as usize + last);
            assert!(!b.is_device_memory());
        }
    }

    #[test]
    fn round_up_works() {
        assert_eq!(round_up(0, 512), 0);
        assert_eq!(round_up(1, 512), 512);
        assert_eq!(round_up(512, 512), 512);
        assert_eq!(round_up(513, 4096), 4096);
        assert_eq!(round_up(4097, 4096), 8192);
    }
}
