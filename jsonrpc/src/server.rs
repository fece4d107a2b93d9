//! The control socket server: one poll-based thread for every connection and a small
//! pool of worker threads for the calls, with limits (docs/security.md, "Resource
//! limits").
//!
//! * **Threads**: `rpc-poll` accepts, reads, splits the stream into JSON values
//!   ([`crate::scan`]) and writes answers with non-blocking IO, sleeping in `poll(2)`
//!   when nothing happens; `rpc-worker-N` ([`RpcLimits::workers`]) parse and run
//!   calls, so a slow call (a volume open waiting for a proxy) holds one worker, not
//!   the socket. The thread count does not depend on the number of clients.
//! * **One call at a time per connection**: a connection's next value is not looked
//!   at (nor its socket read) until the answer to the previous one has been written,
//!   so answers keep the order of requests and a client that does not read its
//!   answers only stalls itself.
//! * **Limits**: at most [`RpcLimits::max_connections`] connections (SPDK's default,
//!   64); one more is accepted, answered with error [`codes::EBUSY`] and closed. A
//!   value larger than [`RpcLimits::max_request_bytes`] is answered with -32600 and
//!   the connection closed (the stream cannot be resynchronized); a batch of more than
//!   [`RpcLimits::max_batch`] calls is answered with one -32600 error and none of its
//!   calls runs; an answer larger than [`RpcLimits::max_response_bytes`] is replaced
//!   by a -32603 error with the call's id (in a batch, each call that does not fit).
//!   A connection that has not completed a request [`RpcLimits::idle_timeout`] after
//!   it connected or got its last answer (nothing at all, or half a request), or that
//!   has not taken any byte of an answer for that long, is closed (with a -32600
//!   error first if it sent half a request). A batch's answer stays within the answer
//!   limit plus one such error per call that did not fit (at most `max_batch` of
//!   them).

use crate::scan::{Scan, Scanner};
use crate::{codes, error_response, handle_value, RpcError, Service};
use pov_runtime::sys::EventFd;
use rustix::event::{PollFd, PollFlags, Timespec};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default [`RpcLimits::max_connections`] (SPDK's `SPDK_JSONRPC_MAX_CONNS`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default [`RpcLimits::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Default [`RpcLimits::max_response_bytes`]: 16 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Default [`RpcLimits::idle_timeout`]: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default [`RpcLimits::workers`].
pub const DEFAULT_WORKERS: usize = 4;
/// Smallest [`RpcLimits::max_response_bytes`] accepted: room for the error that
/// replaces a larger answer.
pub const MIN_RESPONSE_BYTES: usize = 1024;

/// How long a connection refused for [`RpcLimits::max_connections`] is kept after
/// its error was written, so that the client's request is read (and discarded)
/// rather than its write failing with a broken pipe before it reads the error.
const REFUSE_LINGER: Duration = Duration::from_secs(1);
/// Bytes one read takes from a socket.
const READ_CHUNK: usize = 64 << 10;
/// How long accepting pauses after `accept` fails (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits of the control socket server (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcLimits {
    /// Most connections served at once (at least 1).
    pub max_connections: usize,
    /// Largest request (one JSON value), bytes.
    pub max_request_bytes: usize,
    /// Most calls in one batch (a JSON array), at least 1.
    pub max_batch: usize,
    /// Largest answer to one request or one batch, bytes (at least
    /// [`MIN_RESPONSE_BYTES`]).
    pub max_response_bytes: usize,
    /// How long a connection may take to send a complete request, and to take an
    /// answer; `None`: forever.
    pub idle_timeout: Option<Duration>,
    /// Threads running calls (at least 1).
    pub workers: usize,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_request_bytes: crate::MAX_REQUEST_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            workers: DEFAULT_WORKERS,
        }
    }
}

/// A request handed to a worker: the connection and the bytes of one JSON value.
struct Job {
    conn: u64,
    value: Vec<u8>,
}

/// A worker's answer: the bytes to write (empty: none) and whether to close after.
struct Done {
    conn: u64,
    answer: Vec<u8>,
    close: bool,
}

/// Answers of the workers, waiting for the poll thread.
struct Finished {
    list: Mutex<Vec<Done>>,
    wake: EventFd,
}

/// The control socket server. [`stop`](Self::stop) (or drop) closes every connection
/// and removes the socket file.
pub struct RpcServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    finished: Arc<Finished>,
    poll: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer").field("path", &self.path).field("workers", &self.workers.len()).finish()
    }
}

impl RpcServer {
    /// Listens on `path` (a stale socket file there is replaced) and serves `service`
    /// with the default [`RpcLimits`].
    ///
    /// # Errors
    /// As [`RpcServer::start_with`].
    pub fn start(path: &Path, service: Arc<dyn Service>) -> io::Result<RpcServer> {
        RpcServer::start_with(path, service, RpcLimits::default())
    }

    /// Listens on `path` and serves `service` within `limits`.
    ///
    /// # Errors
    /// [`io::ErrorKind::AddrInUse`] if another server listens on `path` or `path` is
    /// not a socket; any error from `bind`, creating the wake-up eventfd or starting
    /// the threads.
    pub fn start_with(path: &Path, service: Arc<dyn Service>, limits: RpcLimits) -> io::Result<RpcServer> {
        crate::claim_socket_path(path)?;
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let limits = RpcLimits {
            max_connections: limits.max_connections.max(1),
            max_batch: limits.max_batch.max(1),
            max_response_bytes: limits.max_response_bytes.max(MIN_RESPONSE_BYTES),
            workers: limits.workers.max(1),
            ..limits
        };
        let stop = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(Finished { list: Mutex::new(Vec::new()), wake: EventFd::new()? });
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let mut server = RpcServer {
            path: path.to_path_buf(),
            stop: stop.clone(),
            finished: finished.clone(),
            poll: None,
            workers: Vec::new(),
        };
        for i in 0..limits.workers {
            let (rx, done, d, l) = (jobs_rx.clone(), finished.clone(), service.clone(), limits.clone());
            let t = std::thread::Builder::new().name(format!("rpc-worker-{i}")).spawn(move || worker(d.as_ref(), &rx, &done, &l));
            match t {
                Ok(t) => server.workers.push(t),
                Err(e) => {
                    drop(jobs_tx);
                    server.stop_all();
                    return Err(e);
                }
            }
        }
        let mut poller = PollLoop {
            listener,
            limits,
            conns: HashMap::new(),
            refused: Vec::new(),
            next_id: 1,
            jobs: jobs_tx,
            finished: finished.clone(),
            stop: stop.clone(),
            accept_retry: None,
            refusals: 0,
        };
        match std::thread::Builder::new().name("rpc-poll".into()).spawn(move || poller.run()) {
            Ok(t) => server.poll = Some(t),
            Err(e) => {
                server.stop_all();
                return Err(e);
            }
        }
        log::info!("RPC server listening on {}", path.display());
        Ok(server)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes every connection (a call being served finishes first;
    /// its answer is dropped) and removes the socket file.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.finished.wake.notify();
        if let Some(p) = self.poll.take() {
            let _ = p.join();
        }
        // The poll thread held the job sender: the workers end after their call.
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if self.path.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
        self.path = PathBuf::new();
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A worker: parses and runs one value at a time.
fn worker(service: &dyn Service, jobs: &Mutex<Receiver<Job>>, finished: &Finished, limits: &RpcLimits) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let (answer, close) = answer(service, &job.value, limits);
        finished.list.lock().unwrap_or_else(|e| e.into_inner()).push(Done { conn: job.conn, answer, close });
        finished.wake.notify();
    }
}

/// `{"jsonrpc": "2.0", "id": null, "error": ...}` as bytes with the trailing newline.
fn error_line(code: i32, message: String) -> Vec<u8> {
    line(&error_response(Value::Null, RpcError::new(code, message)))
}

fn line(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    b
}

/// Parses and answers one value: the answer's bytes (empty for notifications only)
/// and whether the connection must close after it (a parse error).
fn answer(service: &dyn Service, value: &[u8], limits: &RpcLimits) -> (Vec<u8>, bool) {
    let v: Value = match serde_json::from_slice(value) {
        Ok(v) => v,
        Err(e) => return (error_line(codes::PARSE_ERROR, format!("Parse error: {e}")), true),
    };
    let Some(reply) = handle_value(service, v) else { return (Vec::new(), false) };
    (encode_bounded(reply, limits.max_response_bytes), false)
}

/// Encodes an answer as one line of at most `limit` bytes: an answer (or, in a
/// batch, each call's answer) that does not fit is replaced by a -32603 error with
/// the call's id.
fn encode_bounded(reply: Value, limit: usize) -> Vec<u8> {
    let too_large = |r: &Value, len: usize, left: usize| {
        let id = r.get("id").cloned().unwrap_or(Value::Null);
        let message =
            format!("answer of {len} bytes exceeds the limit of {left} bytes left of {limit} (--rpc-max-response-bytes)");
        serde_json::to_vec(&error_response(id, RpcError::new(codes::INTERNAL_ERROR, message))).unwrap_or_default()
    };
    match reply {
        Value::Array(items) => {
            let mut out = b"[".to_vec();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let b = serde_json::to_vec(item).unwrap_or_default();
                // Keep room for this error and the closing "]\n".
                let left = limit.saturating_sub(out.len() + 2);
                if b.len() <= left {
                    out.extend_from_slice(&b);
                } else {
                    log::warn!("RPC answer of {} bytes in a batch exceeds the answer limit", b.len());
                    out.extend_from_slice(&too_large(item, b.len(), left));
                }
            }
            out.extend_from_slice(b"]\n");
            out
        }
        r => {
            let b = line(&r);
            if b.len() <= limit {
                return b;
            }
            log::warn!("RPC answer of {} bytes exceeds the answer limit of {limit}", b.len());
            let mut e = too_large(&r, b.len() - 1, limit);
            e.push(b'\n');
            e
        }
    }
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    /// Received bytes not yet handed to a worker.
    inbuf: Vec<u8>,
    scan: Scanner,
    /// The answer being written: `out[written..]` is left.
    out: Vec<u8>,
    written: usize,
    /// A call of this connection is on a worker.
    busy: bool,
    /// Close once `out` is written (parse error, request too large, timeout).
    close_after: bool,
    /// When the connection became ready for its next request (accept, or its last
    /// answer written), or last took answer bytes while one is being written.
    since: Instant,
    /// The peer closed its side: serve what is complete, then close.
    eof: bool,
}

/// A refused connection: its error is being written, then it is kept until the
/// client closes or [`REFUSE_LINGER`] passes.
struct Refused {
    stream: UnixStream,
    out: Vec<u8>,
    written: usize,
    until: Instant,
}

/// The poll thread's state.
struct PollLoop {
    listener: UnixListener,
    limits: RpcLimits,
    conns: HashMap<u64, Conn>,
    refused: Vec<Refused>,
    next_id: u64,
    jobs: Sender<Job>,
    finished: Arc<Finished>,
    stop: Arc<AtomicBool>,
    accept_retry: Option<Instant>,
    /// Connections refused so far (logged at powers of two, not each).
    refusals: u64,
}

/// What to do with a connection after some work on it.
#[derive(PartialEq, Eq)]
enum Next {
    Keep,
    Close,
}

impl PollLoop {
    fn run(&mut self) {
        let mut ids: Vec<u64> = Vec::new();
        let mut conns_ready: Vec<(u64, PollFlags)> = Vec::new();
        let mut refused_ready: Vec<usize> = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if self.accept_retry.is_some_and(|t| now >= t) {
                self.accept_retry = None;
            }
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(now));
            let (woken, acceptable) = match self.wait(timeout, &mut ids, &mut conns_ready, &mut refused_ready) {
                Ok(r) => r,
                Err(e) => {
                    log::error!("RPC poll: {e}; the control socket stops serving");
                    return;
                }
            };
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            if woken {
                self.take_finished();
            }
            if acceptable {
                self.accept();
            }
            for &(id, flags) in &conns_ready {
                if self.on_ready(id, flags) == Next::Close {
                    self.conns.remove(&id);
                }
            }
            self.serve_refused(&refused_ready);
            self.expire(Instant::now());
        }
        // Stop: every connection closes as it is dropped.
        self.conns.clear();
        self.refused.clear();
    }

    /// Sleeps in `poll(2)` until a descriptor is ready or `timeout` passes: the
    /// wake-up eventfd, the listener (unless pausing after an accept error), every
    /// connection with something to wait for, and the refused ones. Returns whether
    /// the eventfd and the listener are ready; fills the ready connections (by id)
    /// and refused connections (by index).
    fn wait(
        &self,
        timeout: Option<Duration>,
        ids: &mut Vec<u64>,
        conns_ready: &mut Vec<(u64, PollFlags)>,
        refused_ready: &mut Vec<usize>,
    ) -> rustix::io::Result<(bool, bool)> {
        ids.clear();
        conns_ready.clear();
        refused_ready.clear();
        let mut fds = vec![PollFd::new(&self.finished.wake, PollFlags::IN)];
        let listening = self.accept_retry.is_none();
        if listening {
            fds.push(PollFd::new(&self.listener, PollFlags::IN));
        }
        let base = fds.len();
        for (id, c) in &self.conns {
            let f = if c.written < c.out.len() {
                PollFlags::OUT
            } else if !c.busy && !c.eof && !c.close_after {
                PollFlags::IN
            } else {
                continue;
            };
            ids.push(*id);
            fds.push(PollFd::new(&c.stream, f));
        }
        let refused_base = fds.len();
        for r in &self.refused {
            let f = if r.written < r.out.len() { PollFlags::OUT } else { PollFlags::IN };
            fds.push(PollFd::new(&r.stream, f));
        }
        let ts = timeout.map(|t| {
            let t = t.max(Duration::from_millis(1)).min(Duration::from_secs(3600));
            Timespec { tv_sec: t.as_secs() as _, tv_nsec: t.subsec_nanos() as _ }
        });
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) => {}
            Err(e) if e == rustix::io::Errno::INTR => return Ok((false, false)),
            Err(e) => return Err(e),
        }
        let ready = |i: usize| !fds[i].revents().is_empty();
        let woken = ready(0);
        let acceptable = listening && ready(1);
        for (k, id) in ids.iter().enumerate() {
            let r = fds[base + k].revents();
            if !r.is_empty() {
                conns_ready.push((*id, r));
            }
        }
        refused_ready.extend((0..self.refused.len()).filter(|k| ready(refused_base + k)));
        Ok((woken, acceptable))
    }

    /// The earliest instant something times out.
    fn next_deadline(&self) -> Option<Instant> {
        let conns = self.limits.idle_timeout.and_then(|t| self.conns.values().filter(|c| !c.busy).map(|c| c.since + t).min());
        let refused = self.refused.iter().map(|r| r.until).min();
        [conns, refused, self.accept_retry].into_iter().flatten().min()
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("RPC accept: {e}; pausing for {ACCEPT_BACKOFF:?}");
                    self.accept_retry = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("RPC: cannot make a connection non-blocking: {e}");
                continue;
            }
            if self.conns.len() >= self.limits.max_connections {
                self.refuse(stream);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let now = Instant::now();
            let c = Conn {
                stream,
                inbuf: Vec::new(),
                scan: Scanner::default(),
                out: Vec::new(),
                written: 0,
                busy: false,
                close_after: false,
                since: now,
                eof: false,
            };
            self.conns.insert(id, c);
        }
    }

    fn refuse(&mut self, stream: UnixStream) {
        let max = self.limits.max_connections;
        self.refusals += 1;
        if self.refusals.is_power_of_two() {
            log::warn!("RPC: {max} connections open; {} refused so far", self.refusals);
        }
        let out =
            error_line(codes::EBUSY, format!("too many connections: {max} are open (--rpc-max-connections); try again later"));
        let mut r = Refused { stream, out, written: 0, until: Instant::now() + REFUSE_LINGER };
        // Written now (it fits an empty socket buffer); linger only while there is
        // room, so refusals cannot pile up.
        let _ = write_some(&mut r.stream, &r.out, &mut r.written);
        if r.written == r.out.len() {
            let _ = r.stream.shutdown(std::net::Shutdown::Write);
        }
        if self.refused.len() < max {
            self.refused.push(r);
        }
    }

    fn serve_refused(&mut self, ready: &[usize]) {
        let mut gone = vec![false; self.refused.len()];
        let mut buf = [0u8; 4096];
        for &k in ready {
            let Some(r) = self.refused.get_mut(k) else { continue };
            if r.written < r.out.len() {
                match write_some(&mut r.stream, &r.out, &mut r.written) {
                    Ok(()) if r.written == r.out.len() => {
                        let _ = r.stream.shutdown(std::net::Shutdown::Write);
                    }
                    Ok(()) => {}
                    Err(_) => gone[k] = true,
                }
                continue;
            }
            // Discard what the client sends; its close ends the linger.
            match r.stream.read(&mut buf) {
                Ok(0) => gone[k] = true,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => gone[k] = true,
            }
        }
        let mut i = 0;
        self.refused.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
    }

    /// Moves the workers' answers to their connections.
    fn take_finished(&mut self) {
        self.finished.wake.drain();
        let done = std::mem::take(&mut *self.finished.list.lock().unwrap_or_else(|e| e.into_inner()));
        for d in done {
            // A connection closed meanwhile (timeout cannot hit a busy one, but the
            // peer may have gone): the answer is dropped.
            let Some(c) = self.conns.get_mut(&d.conn) else { continue };
            c.busy = false;
            c.close_after |= d.close;
            c.out = d.answer;
            c.written = 0;
            c.since = Instant::now();
            if self.progress(d.conn) == Next::Close {
                self.conns.remove(&d.conn);
            }
        }
    }

    fn on_ready(&mut self, id: u64, flags: PollFlags) -> Next {
        let Some(c) = self.conns.get_mut(&id) else { return Next::Close };
        if c.written < c.out.len() {
            return self.progress(id);
        }
        if flags.intersects(PollFlags::IN | PollFlags::HUP | PollFlags::ERR) && !c.busy {
            let max = self.limits.max_request_bytes;
            // Read only up to one byte past the limit: enough to tell it is exceeded.
            let room = (max + 1).saturating_sub(c.inbuf.len()).min(READ_CHUNK);
            if room > 0 {
                let at = c.inbuf.len();
                c.inbuf.resize(at + room, 0);
                let r = c.stream.read(&mut c.inbuf[at..]);
                let n = *r.as_ref().unwrap_or(&0);
                c.inbuf.truncate(at + n);
                match r {
                    Ok(0) => c.eof = true,
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(e) => {
                        log::debug!("RPC connection closed: {e}");
                        return Next::Close;
                    }
                }
            }
        }
        self.progress(id)
    }

    /// Writes what is pending; then, if the connection is free, hands its next
    /// complete value to a worker (or answers a limit error itself).
    fn progress(&mut self, id: u64) -> Next {
        let limits = self.limits.clone();
        let Some(c) = self.conns.get_mut(&id) else { return Next::Close };
        loop {
            if c.written < c.out.len() {
                let before = c.written;
                if write_some(&mut c.stream, &c.out, &mut c.written).is_err() {
                    return Next::Close;
                }
                if c.written > before {
                    c.since = Instant::now();
                }
                if c.written < c.out.len() {
                    return Next::Keep;
                }
                c.out = Vec::new();
                c.written = 0;
                c.since = Instant::now();
            }
            if c.close_after {
                return Next::Close;
            }
            if c.busy {
                return Next::Keep;
            }
            match c.scan.scan(&c.inbuf) {
                Scan::Complete { start, end, elements } => {
                    let value = c.inbuf[start..end].to_vec();
                    c.inbuf.drain(..end);
                    c.scan.reset();
                    if elements > limits.max_batch {
                        log::warn!("RPC: refusing a batch of {elements} calls");
                        c.out = error_line(
                            codes::INVALID_REQUEST,
                            format!(
                                "Invalid request: batch of {elements} calls exceeds the limit of {} (--rpc-max-batch); none was run",
                                limits.max_batch
                            ),
                        );
                        continue;
                    }
                    c.busy = true;
                    if self.jobs.send(Job { conn: id, value }).is_err() {
                        return Next::Close;
                    }
                    return Next::Keep;
                }
                Scan::Invalid { byte, .. } => {
                    c.out = error_line(codes::PARSE_ERROR, format!("Parse error: byte {byte:#04x} cannot start a JSON value"));
                    c.close_after = true;
                }
                Scan::Incomplete if c.inbuf.len() > limits.max_request_bytes => {
                    log::warn!("RPC: a request exceeds {} bytes; closing its connection", limits.max_request_bytes);
                    c.out = error_line(
                        codes::INVALID_REQUEST,
                        format!("Invalid request: larger than {} bytes; closing the connection", limits.max_request_bytes),
                    );
                    c.close_after = true;
                }
                Scan::Incomplete if c.eof => {
                    // The peer is gone: a last bare value (`42` then EOF) is complete
                    // and answered (a half literal gets its parse error); a partial
                    // object, array or string is dropped.
                    if !c.scan.in_bare_value() {
                        return Next::Close;
                    }
                    let value = std::mem::take(&mut c.inbuf);
                    c.scan.reset();
                    c.busy = true;
                    c.close_after = true;
                    if self.jobs.send(Job { conn: id, value }).is_err() {
                        return Next::Close;
                    }
                    return Next::Keep;
                }
                Scan::Incomplete => return Next::Keep,
            }
        }
    }

    /// Closes connections past their idle timeout and refused ones past their linger.
    fn expire(&mut self, now: Instant) {
        self.refused.retain(|r| now < r.until);
        let Some(limit) = self.limits.idle_timeout else { return };
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.busy && now.saturating_duration_since(c.since) >= limit)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(c) = self.conns.get_mut(&id) else { continue };
            if c.written < c.out.len() {
                log::warn!("RPC: closing a connection that took no answer byte for {limit:?}");
                self.conns.remove(&id);
            } else if c.scan.in_value() || c.inbuf.iter().any(|b| !b.is_ascii_whitespace()) {
                log::warn!("RPC: closing a connection with an incomplete request after {limit:?}");
                c.out = error_line(
                    codes::INVALID_REQUEST,
                    format!(
                        "Invalid request: incomplete after {} s (--rpc-idle-timeout); closing the connection",
                        limit.as_secs_f64()
                    ),
                );
                c.close_after = true;
                c.since = now;
                // Best effort: one write, then closed whatever it took.
                let _ = write_some(&mut c.stream, &c.out, &mut c.written);
                self.conns.remove(&id);
            } else {
                log::debug!("RPC: closing a connection idle for {limit:?}");
                self.conns.remove(&id);
            }
        }
    }
}

/// Writes as much of `out[*written..]` as the socket takes without blocking.
fn write_some(s: &mut UnixStream, out: &[u8], written: &mut usize) -> io::Result<()> {
    while *written < out.len() {
        match s.write(&out[*written..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => *written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_over_the_limit_become_errors_with_their_id() {
        let small = json!({"jsonrpc": "2.0", "id": 1, "result": "x"});
        assert_eq!(encode_bounded(small.clone(), 1024), line(&small));
        let big = json!({"jsonrpc": "2.0", "id": 7, "result": "y".repeat(5000)});
        let b = encode_bounded(big.clone(), 1024);
        assert!(b.len() <= 1024 && b.ends_with(b"\n"));
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!((v["id"].clone(), v["error"]["code"].clone()), (json!(7), json!(codes::INTERNAL_ERROR)));
        assert!(v["error"]["message"].as_str().unwrap().contains("exceeds the limit"), "{v}");
        let batch = json!([small, big, {"jsonrpc": "2.0", "id": 3, "result": 1}]);
        let b = encode_bounded(batch, 1024);
        assert!(b.len() <= 1024, "{}", b.len());
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v[0]["result"], "x");
        assert_eq!((v[1]["id"].clone(), v[1]["error"]["code"].clone()), (json!(7), json!(codes::INTERNAL_ERROR)));
        assert_eq!(v[2]["result"], 1);
        // Many calls that each fit but not together.
        let many: Vec<Value> = (0..100).map(|i| json!({"jsonrpc": "2.0", "id": i, "result": "z".repeat(100)})).collect();
        let b = encode_bounded(Value::Array(many), 4096);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 100);
        assert!(v[0].get("result").is_some() && v[99].get("error").is_some());
    }
}
