//! The native part of the Python package `pov` (module `pov._native`; PyO3, built
//! with maturin: `bindings/python/pyproject.toml`). A thin layer over [`pov_host`]:
//!
//! ```python
//! import pov
//! dev = pov.Device("vhost-user:/run/pov/pov0.sock")      # or "/dev/vdb"
//! with dev.open_session("acme", open("key", "rb").read().strip()) as s:
//!     with s.open("/logs/today", "w") as f:               # r r+ w w+ x x+ a a+ ("b" optional)
//!         f.write(b"hello")
//!     print(s.stat("/logs/today").size, [e.name for e in s.scandir("/logs")])
//! ```
//!
//! * Errors are `OSError`s built from `(errno, message)`, so Python picks the subclass
//!   (`FileNotFoundError` for ENOENT, `PermissionError`, `FileExistsError`, ...); the
//!   errno is [`pov_host::errno_of`]'s and the message the whole error chain.
//! * Every call that talks to the device releases the GIL, so Python threads sharing
//!   a session (or a file) run their requests in parallel on the session's queues.
//! * A file is binary and unbuffered (a raw IO object: `read`, `readinto`, `write`,
//!   `seek`, `tell`, `truncate`, plus positional `pread`/`pwrite`), so
//!   `io.BufferedReader(f)` and `io.TextIOWrapper` work on it. Offsets and sizes are
//!   bytes; times ns since the Unix epoch.
//!
//! No `unsafe` code: PyO3 holds all of it.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::RwLock;
use std::time::Duration;

use pov_host::{Kind, OpenOptions, Protection, SessionOptions};
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// An `OSError(errno, message)` for `e`.
fn os_error(e: &io::Error) -> PyErr {
    PyOSError::new_err((pov_host::errno_of(e), pov_host::error::Chain(e).to_string()))
}

/// As [`os_error`] for a setup error.
fn setup_error(e: pov_host::Error) -> PyErr {
    let msg = pov_host::error::Chain(&e).to_string();
    PyOSError::new_err((pov_host::errno_of(&io::Error::from(e)), msg))
}

fn closed_error(what: &str) -> PyErr {
    PyValueError::new_err(format!("I/O operation on a closed {what}"))
}

/// An open PoV device.
#[pyclass(module = "pov._native", frozen)]
struct Device(pov_host::Device);

#[pymethods]
impl Device {
    /// Opens the PoV device at `spec` (`/dev/vdX` or `vhost-user:PATH`).
    #[new]
    fn new(py: Python<'_>, spec: &str) -> PyResult<Device> {
        py.allow_threads(|| pov_host::Device::open(spec)).map(Device).map_err(setup_error)
    }

    /// Opens a session of `tenant` authenticated with its `secret` (bytes; it never
    /// crosses the device). `queues`: requests in flight at once (1-64);
    /// `read_only`, `prefix` (limit the session to a subtree), `integrity_only`
    /// (responses authenticated, not encrypted), `failover_timeout` (seconds, `None`:
    /// no failover).
    #[pyo3(signature = (tenant, secret, *, queues=4, read_only=false, prefix=None, integrity_only=false, failover_timeout=Some(30.0)))]
    #[allow(clippy::too_many_arguments)]
    fn open_session(
        &self,
        py: Python<'_>,
        tenant: &str,
        secret: &[u8],
        queues: u32,
        read_only: bool,
        prefix: Option<String>,
        integrity_only: bool,
        failover_timeout: Option<f64>,
    ) -> PyResult<Session> {
        let failover_timeout = match failover_timeout {
            Some(t) if !(t.is_finite() && t > 0.0) => {
                return Err(PyValueError::new_err(format!("failover_timeout must be > 0 seconds, not {t}")))
            }
            t => t.map(Duration::from_secs_f64),
        };
        let opts = SessionOptions {
            queues,
            read_only,
            prefix: prefix.unwrap_or_default(),
            protection: if integrity_only { Protection::IntegrityOnly } else { Protection::Confidential },
            failover_timeout,
            ..SessionOptions::default()
        };
        let s = py.allow_threads(|| pov_host::Session::open_with(&self.0, tenant, secret, &opts)).map_err(setup_error)?;
        Ok(Session(RwLock::new(Some(s))))
    }

    fn __repr__(&self) -> String {
        format!("<pov.Device {}>", self.0.describe())
    }
}

/// Attributes of a file or directory (`Session.stat`, `File.stat`).
#[pyclass(module = "pov._native", frozen, get_all)]
struct Stat {
    /// Size in bytes.
    size: u64,
    /// Permission bits (0o777 at most).
    mode: u32,
    /// Modification time, ns since the Unix epoch.
    mtime_ns: u64,
    /// A directory (else a regular file).
    is_dir: bool,
}

impl From<pov_host::Stat> for Stat {
    fn from(s: pov_host::Stat) -> Stat {
        Stat { size: s.size, mode: s.mode, mtime_ns: s.mtime_ns, is_dir: s.kind == Kind::Dir }
    }
}

#[pymethods]
impl Stat {
    fn __repr__(&self) -> String {
        format!("Stat(size={}, mode=0o{:o}, mtime_ns={}, is_dir={})", self.size, self.mode, self.mtime_ns, self.is_dir)
    }
}

/// One entry of `Session.scandir`.
#[pyclass(module = "pov._native", frozen, get_all)]
struct DirEntry {
    /// The entry's name (no `/`).
    name: String,
    /// Size in bytes.
    size: u64,
    /// A directory (else a regular file).
    is_dir: bool,
}

#[pymethods]
impl DirEntry {
    fn __repr__(&self) -> String {
        format!("DirEntry({:?}, size={}, is_dir={})", self.name, self.size, self.is_dir)
    }
}

/// Capacity of the storage behind a path (`Session.statvfs`), in blocks of
/// `block_size` bytes.
#[pyclass(module = "pov._native", frozen, get_all)]
struct StatFs {
    block_size: u32,
    name_max: u32,
    blocks: u64,
    blocks_free: u64,
    blocks_available: u64,
    files: u64,
    files_free: u64,
}

/// An open session. Usable from several threads; a context manager that closes it.
#[pyclass(module = "pov._native", frozen)]
struct Session(RwLock<Option<pov_host::Session>>);

impl Session {
    /// Runs `f` on the open session with the GIL released.
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&pov_host::Session) -> io::Result<T> + Send) -> PyResult<T> {
        py.allow_threads(|| {
            let g = self.0.read().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(s) => f(s).map_err(|e| os_error(&e)),
                None => Err(closed_error("session")),
            }
        })
    }
}

/// Open options for a Python mode string (`"r"`, `"r+"`, `"w"`, `"w+"`, `"x"`, `"x+"`,
/// `"a"`, `"a+"`; a `"b"` is allowed, text modes are not: wrap the file in
/// `io.TextIOWrapper`). Returns the options and whether writes append.
fn parse_mode(mode: &str) -> PyResult<(OpenOptions, bool, bool)> {
    let bad = || PyValueError::new_err(format!("invalid mode {mode:?}: use r, r+, w, w+, x, x+, a or a+ (binary only)"));
    let m: String = mode.chars().filter(|&c| c != 'b').collect();
    if mode.matches('b').count() > 1 {
        return Err(bad());
    }
    let mut o = OpenOptions::new();
    let (writable, append) = match m.as_str() {
        "r" => (false, false),
        "r+" => {
            o.write(true);
            (true, false)
        }
        "w" | "w+" => {
            o.write(true).create(true).truncate(true);
            (true, false)
        }
        "x" | "x+" => {
            o.write(true).create_new(true);
            (true, false)
        }
        "a" | "a+" => {
            o.write(true).create(true);
            (true, true)
        }
        _ => return Err(bad()),
    };
    Ok((o, writable, append))
}

#[pymethods]
impl Session {
    /// Opens the file at `path` with a Python `mode` (binary): see `parse_mode`.
    #[pyo3(signature = (path, mode="r"))]
    fn open(&self, py: Python<'_>, path: &str, mode: &str) -> PyResult<File> {
        let (o, writable, append) = parse_mode(mode)?;
        let f = self.with(py, |s| s.open_file(path, &o))?;
        Ok(File { inner: RwLock::new(Some(f)), writable, append, mode: mode.to_string() })
    }

    /// Attributes of `path`.
    fn stat(&self, py: Python<'_>, path: &str) -> PyResult<Stat> {
        self.with(py, |s| s.stat(path)).map(Stat::from)
    }

    /// Entries of the directory `path`, in the device's order.
    fn scandir(&self, py: Python<'_>, path: &str) -> PyResult<Vec<DirEntry>> {
        let entries = self.with(py, |s| s.list(path))?;
        Ok(entries.into_iter().map(|e| DirEntry { name: e.name, size: e.size, is_dir: e.kind == Kind::Dir }).collect())
    }

    /// Names in the directory `path`.
    fn listdir(&self, py: Python<'_>, path: &str) -> PyResult<Vec<String>> {
        Ok(self.with(py, |s| s.list(path))?.into_iter().map(|e| e.name).collect())
    }

    /// Creates the directory `path` (`mode`: permission bits, default the backend's);
    /// `parents=True` creates missing parents and accepts an existing directory.
    #[pyo3(signature = (path, mode=None, *, parents=false))]
    fn mkdir(&self, py: Python<'_>, path: &str, mode: Option<u32>, parents: bool) -> PyResult<()> {
        self.with(py, |s| if parents { s.create_dir_all(path) } else { s.create_dir(path, mode) })
    }

    /// Removes a file or an empty directory.
    fn remove(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        self.with(py, |s| s.remove(path))
    }

    /// Renames `src` to `dst` in one step; `replace=False` fails with
    /// `FileExistsError` instead of replacing; `sync=True` makes it durable first.
    #[pyo3(signature = (src, dst, *, replace=true, sync=false))]
    fn rename(&self, py: Python<'_>, src: &str, dst: &str, replace: bool, sync: bool) -> PyResult<()> {
        if !replace && sync {
            return Err(PyValueError::new_err("rename: replace=False and sync=True cannot be combined"));
        }
        self.with(py, |s| match (replace, sync) {
            (false, _) => s.rename_noreplace(src, dst),
            (true, true) => s.rename_sync(src, dst),
            (true, false) => s.rename(src, dst),
        })
    }

    /// Sets the permission bits of `path` (0o777 at most).
    fn chmod(&self, py: Python<'_>, path: &str, mode: u32) -> PyResult<()> {
        if mode > 0o777 {
            return Err(PyValueError::new_err(format!("chmod {path}: mode 0o{mode:o} is not a permission mode")));
        }
        self.with(py, |s| s.set_attr(path, Some(mode), None))
    }

    /// Sets the modification time of `path` (ns since the Unix epoch).
    fn utime_ns(&self, py: Python<'_>, path: &str, mtime_ns: u64) -> PyResult<()> {
        self.with(py, |s| s.set_attr(path, None, Some(mtime_ns)))
    }

    /// Capacity of the storage behind `path`.
    #[pyo3(signature = (path="/"))]
    fn statvfs(&self, py: Python<'_>, path: &str) -> PyResult<StatFs> {
        let f = self.with(py, |s| s.statfs(path))?;
        Ok(StatFs {
            block_size: f.block_size,
            name_max: f.name_max,
            blocks: f.blocks,
            blocks_free: f.blocks_free,
            blocks_available: f.blocks_available,
            files: f.files,
            files_free: f.files_free,
        })
    }

    /// The whole content of the file `path`.
    fn read_bytes<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with(py, |s| s.read(path))?;
        Ok(PyBytes::new(py, &data))
    }

    /// Creates or replaces the file `path` with `data`.
    fn write_bytes(&self, py: Python<'_>, path: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = PyBuffer::<u8>::get(data)?.to_vec(py)?;
        self.with(py, |s| s.write(path, &data))
    }

    /// Closes the session (its files stop working). Closing twice is a no-op.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let s = self.0.write().unwrap_or_else(|p| p.into_inner()).take();
        match s {
            Some(s) => py.allow_threads(|| s.close()).map_err(setup_error),
            None => Ok(()),
        }
    }

    /// Whether the session is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: PyObject, _v: PyObject, _tb: PyObject) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

/// An open file: a raw (unbuffered) binary IO object with a cursor, plus positional
/// `pread`/`pwrite`. Usable from several threads (they share the cursor).
#[pyclass(module = "pov._native", frozen)]
struct File {
    inner: RwLock<Option<pov_host::File>>,
    writable: bool,
    append: bool,
    mode: String,
}

impl File {
    fn with<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&pov_host::File) -> io::Result<T> + Send) -> PyResult<T> {
        py.allow_threads(|| {
            let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(file) => f(file).map_err(|e| os_error(&e)),
                None => Err(closed_error("file")),
            }
        })
    }

    fn check_writable(&self) -> PyResult<()> {
        if self.writable {
            Ok(())
        } else {
            Err(PyOSError::new_err((9, "file not open for writing")))
        }
    }
}

#[pymethods]
impl File {
    /// Reads up to `size` bytes at the cursor (`-1`: to the end of the file); `b""`
    /// at the end.
    #[pyo3(signature = (size=-1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with(py, |mut f| {
            let mut buf = Vec::new();
            if size < 0 {
                f.read_to_end(&mut buf)?;
            } else {
                buf.resize(size as usize, 0);
                let n = f.read(&mut buf)?;
                buf.truncate(n);
            }
            Ok(buf)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Everything from the cursor to the end of the file.
    fn readall<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.read(py, -1)
    }

    /// Reads into the writable buffer `buf` at the cursor; returns the bytes read.
    fn readinto(&self, py: Python<'_>, buf: &Bound<'_, PyAny>) -> PyResult<usize> {
        let pybuf = PyBuffer::<u8>::get(buf)?;
        if pybuf.readonly() {
            return Err(PyValueError::new_err("readinto needs a writable buffer"));
        }
        // The buffer's bytes past what is read stay as they were.
        let mut whole = pybuf.to_vec(py)?;
        let n = self.with(py, |mut f| f.read(&mut whole))?;
        pybuf.copy_from_slice(py, &whole)?;
        Ok(n)
    }

    /// Writes all of `data` (bytes-like) at the cursor (at the end in append mode);
    /// returns its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        self.check_writable()?;
        let data = PyBuffer::<u8>::get(data)?.to_vec(py)?;
        let append = self.append;
        self.with(py, |mut f| {
            if append {
                // Up to 1 MiB is one atomic append; the cursor ends after the data.
                let at = f.append(&data)?;
                f.seek(SeekFrom::Start(at + data.len() as u64))?;
            } else {
                f.write_all(&data)?;
            }
            Ok(data.len())
        })
    }

    /// Reads up to `size` bytes at `offset` (the cursor does not move).
    fn pread<'py>(&self, py: Python<'py>, size: usize, offset: u64) -> PyResult<Bound<'py, PyBytes>> {
        let data = self.with(py, |f| {
            let mut buf = vec![0u8; size];
            let n = f.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    /// Writes `data` at `offset` (the cursor does not move); returns its length.
    fn pwrite(&self, py: Python<'_>, data: &Bound<'_, PyAny>, offset: u64) -> PyResult<usize> {
        self.check_writable()?;
        let data = PyBuffer::<u8>::get(data)?.to_vec(py)?;
        self.with(py, |f| f.write_at(&data, offset))
    }

    /// Moves the cursor (`whence`: 0 from the start, 1 from the cursor, 2 from the
    /// end); returns the new position.
    #[pyo3(signature = (offset, whence=0))]
    fn seek(&self, py: Python<'_>, offset: i64, whence: i32) -> PyResult<u64> {
        let to = match whence {
            0 if offset >= 0 => SeekFrom::Start(offset as u64),
            0 => return Err(PyValueError::new_err(format!("negative seek position {offset}"))),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            _ => return Err(PyValueError::new_err(format!("invalid whence ({whence}, should be 0, 1 or 2)"))),
        };
        self.with(py, |mut f| f.seek(to))
    }

    /// The cursor's position.
    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |mut f| f.stream_position())
    }

    /// Sets the size to `size` bytes (default: the cursor); returns it.
    #[pyo3(signature = (size=None))]
    fn truncate(&self, py: Python<'_>, size: Option<u64>) -> PyResult<u64> {
        self.check_writable()?;
        self.with(py, |mut f| {
            let size = match size {
                Some(s) => s,
                None => f.stream_position()?,
            };
            f.set_len(size)?;
            Ok(size)
        })
    }

    /// Makes the file's data durable on the backend.
    fn fsync(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |f| f.sync())
    }

    /// Nothing to flush: the file is unbuffered (every write is on the device when it
    /// returns). Fails on a closed file, as Python's raw files do.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |_| Ok(()))
    }

    /// Attributes of the file.
    fn stat(&self, py: Python<'_>) -> PyResult<Stat> {
        self.with(py, |f| f.stat()).map(Stat::from)
    }

    fn readable(&self) -> PyResult<bool> {
        self.with_open(|_| true)
    }

    fn writable(&self) -> PyResult<bool> {
        self.with_open(|f| f.writable)
    }

    fn seekable(&self) -> PyResult<bool> {
        self.with_open(|_| true)
    }

    /// Closes the file; closing twice is a no-op.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.inner.write().unwrap_or_else(|p| p.into_inner()).take();
        match f {
            Some(f) => py.allow_threads(|| f.close()).map_err(|e| os_error(&e)),
            None => Ok(()),
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    /// The mode the file was opened with.
    #[getter]
    fn mode(&self) -> &str {
        &self.mode
    }

    /// The file's PoV path.
    #[getter]
    fn name(&self) -> PyResult<String> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|f| f.path().to_string()).ok_or_else(|| closed_error("file"))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: PyObject, _v: PyObject, _tb: PyObject) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

impl File {
    fn with_open<T>(&self, f: impl FnOnce(&File) -> T) -> PyResult<T> {
        if self.closed() {
            Err(closed_error("file"))
        } else {
            Ok(f(self))
        }
    }
}

/// The native module `pov._native` (re-exported by the package `pov`).
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Device>()?;
    m.add_class::<Session>()?;
    m.add_class::<File>()?;
    m.add_class::<Stat>()?;
    m.add_class::<DirEntry>()?;
    m.add_class::<StatFs>()?;
    Ok(())
}
