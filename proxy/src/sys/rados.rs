//! A safe wrapper over the parts of librados (`<rados/librados.h>`) and librbd
//! (`<rbd/librbd.h>`) the proxy uses: a cluster connection, pool IO contexts, object
//! reads and writes (the direct baseline of the Ceph benchmark), and RBD images (the
//! Ceph store of plain volumes), over the bindgen-generated declarations of the
//! `ceph-sys` crate (`vendor/ceph-sys`, from the headers of Debian's `librados-dev` and
//! `librbd-dev`); calls return a negative errno on failure, turned into [`Errno`].
//!
//! librados and librbd handles are thread-safe: one [`Rados`], [`IoCtx`] or
//! [`RbdImage`] may be used from several threads at once.

use super::cephfs::{check, cstr, Errno};
use ceph_sys::{
    rados_buffer_free, rados_conf_read_file, rados_conf_set, rados_connect, rados_create2, rados_ioctx_create,
    rados_ioctx_destroy, rados_ioctx_t, rados_mon_command, rados_read, rados_remove, rados_shutdown, rados_t, rados_write,
    rbd_close, rbd_create, rbd_flush, rbd_get_size, rbd_image_t, rbd_open, rbd_read, rbd_write,
};
use std::ffi::c_int;
use std::ptr;
use std::sync::Arc;

/// A connected RADOS cluster handle; shut down when the last user drops it.
pub struct Rados {
    raw: rados_t,
}

// SAFETY: librados cluster handles are documented thread-safe.
unsafe impl Send for Rados {}
// SAFETY: as above.
unsafe impl Sync for Rados {}

impl std::fmt::Debug for Rados {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rados").finish_non_exhaustive()
    }
}

impl Rados {
    /// Connects as `client.<id>` with config file `conf` and extra `options`
    /// (`rados_conf_set` pairs, e.g. `keyring`, `rados_osd_op_timeout`).
    ///
    /// Errors: the failing step and its errno.
    pub fn connect(id: &str, conf: &str, options: &[(&str, &str)]) -> Result<Arc<Rados>, (&'static str, Errno)> {
        let name = cstr(&format!("client.{id}")).map_err(|e| ("client name", e))?;
        let mut raw = ptr::null_mut();
        // SAFETY: valid out-pointer; both strings NUL-terminated for the call.
        check(unsafe { rados_create2(&mut raw, c"ceph".as_ptr(), name.as_ptr(), 0) }).map_err(|e| ("rados_create2", e))?;
        let r = Rados { raw };
        let conf = cstr(conf).map_err(|e| ("config path", e))?;
        // SAFETY: created, unconnected handle; NUL-terminated path.
        check(unsafe { rados_conf_read_file(r.raw, conf.as_ptr()) }).map_err(|e| ("rados_conf_read_file", e))?;
        for (k, v) in options {
            let (k, v) = (cstr(k).map_err(|e| ("option", e))?, cstr(v).map_err(|e| ("option", e))?);
            // SAFETY: unconnected handle; NUL-terminated strings.
            check(unsafe { rados_conf_set(r.raw, k.as_ptr(), v.as_ptr()) }).map_err(|e| ("rados_conf_set", e))?;
        }
        // SAFETY: configured handle.
        check(unsafe { rados_connect(r.raw) }).map_err(|e| ("rados_connect", e))?;
        Ok(Arc::new(r))
    }

    /// An IO context on `pool`.
    ///
    /// Errors: `ENOENT` if the pool does not exist.
    pub fn ioctx(self: &Arc<Rados>, pool: &str) -> Result<IoCtx, Errno> {
        let p = cstr(pool)?;
        let mut io = ptr::null_mut();
        // SAFETY: connected handle, NUL-terminated pool name, valid out-pointer.
        check(unsafe { rados_ioctx_create(self.raw, p.as_ptr(), &mut io) })?;
        Ok(IoCtx { raw: io, _cluster: self.clone() })
    }
}

impl Rados {
    /// Runs a monitor command (`cmd`: its JSON, e.g. `{"prefix":"osd dump","format":"json"}`)
    /// and returns its output buffer.
    ///
    /// Errors: the command's negative return value (its status text is logged).
    pub fn mon_command(&self, cmd: &str) -> Result<Vec<u8>, Errno> {
        let c = cstr(cmd)?;
        let cmds = [c.as_ptr()];
        let (mut out, mut out_len, mut st, mut st_len) = (ptr::null_mut(), 0usize, ptr::null_mut(), 0usize);
        // SAFETY: connected handle; one NUL-terminated command string in an array of
        // length 1; no input buffer; valid out-pointers for both buffers and lengths.
        let r = unsafe {
            rados_mon_command(self.raw, cmds.as_ptr() as *mut _, 1, ptr::null(), 0, &mut out, &mut out_len, &mut st, &mut st_len)
        };
        let take = |p: *mut std::ffi::c_char, len: usize| -> Vec<u8> {
            if p.is_null() {
                return Vec::new();
            }
            // SAFETY: librados allocated `len` bytes at `p` for this call; copied
            // before the buffer is freed, freed exactly once.
            let v = unsafe { std::slice::from_raw_parts(p as *const u8, len) }.to_vec();
            // SAFETY: as above.
            unsafe { rados_buffer_free(p) };
            v
        };
        let (out, status) = (take(out, out_len), take(st, st_len));
        match check(r) {
            Ok(_) => Ok(out),
            Err(e) => {
                log::debug!("mon command {cmd}: {e:?}: {}", String::from_utf8_lossy(&status));
                Err(e)
            }
        }
    }
}

impl Drop for Rados {
    fn drop(&mut self) {
        // SAFETY: created by rados_create2, shut down exactly once, after every IoCtx
        // (each holds an Arc to this handle).
        unsafe { rados_shutdown(self.raw) };
    }
}

/// An IO context on one pool.
pub struct IoCtx {
    raw: rados_ioctx_t,
    _cluster: Arc<Rados>,
}

// SAFETY: librados IO contexts may be shared by threads (operations on one context
// are serialized internally where needed).
unsafe impl Send for IoCtx {}
// SAFETY: as above.
unsafe impl Sync for IoCtx {}

impl IoCtx {
    /// Writes `data` into object `oid` at `offset` (bytes); synchronous (acknowledged
    /// by the OSDs).
    pub fn write(&self, oid: &str, data: &[u8], offset: u64) -> Result<(), Errno> {
        let o = cstr(oid)?;
        // SAFETY: `data` is valid for `data.len()` bytes for the call.
        check(unsafe { rados_write(self.raw, o.as_ptr(), data.as_ptr().cast(), data.len(), offset) }).map(|_| ())
    }

    /// Reads up to `buf.len()` bytes of object `oid` at `offset`; returns the count.
    pub fn read(&self, oid: &str, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
        let o = cstr(oid)?;
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes for the call.
        check(unsafe { rados_read(self.raw, o.as_ptr(), buf.as_mut_ptr().cast(), buf.len(), offset) }).map(|n| n as usize)
    }

    /// Removes object `oid`.
    pub fn remove(&self, oid: &str) -> Result<(), Errno> {
        let o = cstr(oid)?;
        // SAFETY: NUL-terminated object name.
        check(unsafe { rados_remove(self.raw, o.as_ptr()) }).map(|_| ())
    }

    /// Creates RBD image `name` of `size` bytes (default object size, 4 MiB).
    ///
    /// Errors: `EEXIST` if it exists.
    pub fn rbd_create(&self, name: &str, size: u64) -> Result<(), Errno> {
        let n = cstr(name)?;
        let mut order: c_int = 0;
        // SAFETY: NUL-terminated name; `order` is a valid in/out int (0 = default).
        check(unsafe { rbd_create(self.raw, n.as_ptr(), size, &mut order) }).map(|_| ())
    }

    /// Opens RBD image `name` (read-write, no snapshot).
    ///
    /// Errors: `ENOENT` if it does not exist.
    pub fn rbd_open(self: &Arc<IoCtx>, name: &str) -> Result<RbdImage, Errno> {
        let n = cstr(name)?;
        let mut img = ptr::null_mut();
        // SAFETY: NUL-terminated name, valid out-pointer, null snapshot = head.
        check(unsafe { rbd_open(self.raw, n.as_ptr(), &mut img, ptr::null()) })?;
        Ok(RbdImage { raw: img, _io: self.clone() })
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: created by rados_ioctx_create, destroyed exactly once, after every
        // image opened on it (each holds an Arc to this context).
        unsafe { rados_ioctx_destroy(self.raw) };
    }
}

/// An open RBD image.
pub struct RbdImage {
    raw: rbd_image_t,
    _io: Arc<IoCtx>,
}

// SAFETY: librbd image handles are thread-safe (internal locking).
unsafe impl Send for RbdImage {}
// SAFETY: as above.
unsafe impl Sync for RbdImage {}

impl RbdImage {
    /// Size in bytes.
    pub fn size(&self) -> Result<u64, Errno> {
        let mut s = 0u64;
        // SAFETY: open image; valid out-pointer.
        check(unsafe { rbd_get_size(self.raw, &mut s) })?;
        Ok(s)
    }

    /// Reads `buf.len()` bytes at `offset`; returns the count.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes for the call.
        let n = unsafe { rbd_read(self.raw, offset, buf.len(), buf.as_mut_ptr().cast()) };
        check(c_int::try_from(n).unwrap_or(-libc::EIO)).map(|n| n as usize)
    }

    /// Writes `data` at `offset`; returns the count.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        // SAFETY: `data` is valid for `data.len()` bytes for the call.
        let n = unsafe { rbd_write(self.raw, offset, data.len(), data.as_ptr().cast()) };
        check(c_int::try_from(n).unwrap_or(-libc::EIO)).map(|n| n as usize)
    }

    /// Makes every completed write durable (flushes librbd's cache).
    pub fn flush(&self) -> Result<(), Errno> {
        // SAFETY: open image.
        check(unsafe { rbd_flush(self.raw) }).map(|_| ())
    }
}

impl Drop for RbdImage {
    fn drop(&mut self) {
        // SAFETY: opened by rbd_open, closed exactly once.
        unsafe { rbd_close(self.raw) };
    }
}
