//! One PoV IO queue as the host sees it: a request slot it writes and a response slot
//! it reads (paper §5; `docs/protocol.md`, "IO queues"). A pure state machine: it
//! reassembles requests the block layer split, checks that a request names the
//! queue's owner, parks response-slot READs until the response is there, and never
//! calls into forwarding (the device decides what a complete request does).

use crate::block::{BlockRequest, BlockStatus, BufferError, Completions, IoBuffer};
use crate::session::QueueOwner;
use pov_proto::crypto::{Protection, SessionKeys};
use pov_proto::io::{RequestHeader, ResponseHeader, RESPONSE_TAG_OFFSET};
use pov_proto::layout::{HEADER_SIZE, SLOT_SIZE};
use pov_proto::{Status, MAX_IO_BYTES};
use std::time::{Duration, Instant};

/// How long a partially written request may wait for its remaining bytes (a block
/// layer split delivers them within microseconds).
pub(crate) const INCOMPLETE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a response-window READ waits for a request of its parity to arrive
/// (submitted with its WRITE, it arrives within microseconds of it). After that it is
/// answered with whatever the slot holds, which its host sees as a mismatch.
pub(crate) const EARLY_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// A response-window READ waiting for a response of its parity.
struct WindowRead {
    req: BlockRequest,
    /// Byte offset within the window.
    offset: usize,
    /// `request_id % 2` of the response it waits for.
    parity: u8,
    /// When it arrived.
    since: Instant,
}

/// State of a queue's response slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespState {
    /// No request was ever dispatched on this queue.
    Empty,
    /// A request is being written (some of its bytes arrived) or is being served.
    Pending,
    /// The response is in `resp_buf`.
    Ready,
}

/// What a WRITE to the request slot amounts to.
#[derive(Debug)]
pub(crate) enum SlotWrite {
    /// Refused (a request is being served, the buffer is unreadable, the header's
    /// identity fields are unreadable): complete the WRITE with IOERR.
    Refused,
    /// The request names another owner (session, PID or queue): complete the WRITE
    /// with IOERR; the owner's slots are untouched (paper §4.6).
    Foreign(Status),
    /// Part of a request (block-layer split): complete the WRITE, wait for the rest.
    Partial,
    /// A whole request, not yet accepted: the caller verifies its tag
    /// ([`Queue::request_mut`]) and then [`Queue::accept`]s it (complete the WRITE and
    /// serve the header, or answer the decode error `(op, request_id, status)`) or
    /// [`Queue::reject`]s it (fail the WRITE).
    Complete(Result<RequestHeader, (u16, u64, Status)>),
}

/// One open IO queue. See the module docs.
pub(crate) struct Queue {
    pub owner: QueueOwner,
    req_buf: Vec<u8>,
    /// Byte ranges of the request slot written since the last dispatch, merged.
    covered: Vec<(usize, usize)>,
    incomplete_since: Option<Instant>,
    resp_buf: Vec<u8>,
    resp_len: usize,
    resp: RespState,
    /// Response-slot READs waiting for the response, with their slot offsets.
    parked: Vec<(BlockRequest, usize)>,
    /// Response-window READs waiting for a response of their parity.
    windows: Vec<WindowRead>,
    /// Request ID of the response in `resp_buf` (when `Ready`).
    resp_request: u64,
    /// A request of this queue is being served (one at a time).
    pub busy: bool,
    /// Request ID of the last request accepted: a request must carry a larger one
    /// (replays and reorders refused).
    pub last_request: u64,
    /// The request being served: when it was accepted and the data bytes it carries
    /// (for the tenant's counters, taken when it is answered).
    pub current: Option<(Instant, u64)>,
    /// The response state before a split request made it `Pending` (restored if the
    /// request is rejected).
    prior: RespState,
}

impl Queue {
    pub(crate) fn new(owner: QueueOwner) -> Queue {
        Queue {
            owner,
            // Both slots grow to the largest request and response the queue has seen
            // (a 4 KiB workload keeps ~5 KiB per slot, not 1 MiB): opening a queue
            // costs no page faults, and idle queues of thousands of sessions no memory.
            req_buf: vec![0; HEADER_SIZE],
            covered: Vec::new(),
            incomplete_since: None,
            resp_buf: vec![0; HEADER_SIZE],
            resp_len: 0,
            resp: RespState::Empty,
            parked: Vec::new(),
            windows: Vec::new(),
            resp_request: 0,
            busy: false,
            last_request: 0,
            current: None,
            prior: RespState::Empty,
        }
    }

    /// Adds `start..end` to the covered ranges, merged in place (no allocation once the
    /// vector has room).
    fn cover(&mut self, start: usize, end: usize) {
        self.covered.push((start, end));
        self.covered.sort_unstable();
        let mut kept = 0;
        for i in 0..self.covered.len() {
            let (s, e) = self.covered[i];
            if kept > 0 && s <= self.covered[kept - 1].1 {
                let last = &mut self.covered[kept - 1];
                last.1 = last.1.max(e);
            } else {
                self.covered[kept] = (s, e);
                kept += 1;
            }
        }
        self.covered.truncate(kept);
    }

    /// Bytes covered contiguously from the slot start.
    fn contiguous(&self) -> usize {
        match self.covered.first() {
            Some(&(0, e)) => e,
            _ => 0,
        }
    }

    fn forget_partial(&mut self) {
        self.covered.clear();
        self.incomplete_since = None;
    }

    /// Takes a WRITE of `buf` at byte `offset` of the request slot (`offset + len` is
    /// inside the slot: the caller classified the IO). `queue` is this queue's ID.
    pub(crate) fn write(&mut self, queue: u32, offset: usize, buf: &dyn IoBuffer, now: Instant) -> SlotWrite {
        if self.busy {
            // One request at a time per queue: the owner's request stays untouched.
            return SlotWrite::Refused;
        }
        let len = buf.len();
        grow(&mut self.req_buf, offset + len);
        if buf.read_at(0, &mut self.req_buf[offset..offset + len]).is_err() {
            return SlotWrite::Refused;
        }
        self.cover(offset, offset + len);
        let have = self.contiguous();
        if have < HEADER_SIZE {
            self.incomplete_since.get_or_insert(now);
            return SlotWrite::Partial;
        }
        let Some(ids) = RequestHeader::peek_ids(&self.req_buf[..HEADER_SIZE]) else { return SlotWrite::Refused };
        // Ownership first: a request from a process that does not own the queue fails
        // its own WRITE and never touches the owner's response slot (paper §4.6).
        let owner = if ids.session_id != self.owner.session_id {
            Err(Status::BadSession)
        } else if ids.pid != self.owner.pid {
            Err(Status::PidMismatch)
        } else if ids.queue_id != queue {
            Err(Status::BadQueue)
        } else {
            Ok(())
        };
        if let Err(st) = owner {
            self.forget_partial();
            return SlotWrite::Foreign(st);
        }
        let header = RequestHeader::decode(&self.req_buf[..HEADER_SIZE]);
        if let Ok(h) = &header {
            if have < HEADER_SIZE + h.payload_len as usize {
                // Split by the block layer: wait for the rest; READs of the response
                // slot meanwhile wait for this request's answer.
                if self.incomplete_since.is_none() {
                    self.incomplete_since = Some(now);
                    if self.resp != RespState::Pending {
                        self.prior = self.resp;
                    }
                }
                self.resp = RespState::Pending;
                return SlotWrite::Partial;
            }
        }
        self.forget_partial();
        SlotWrite::Complete(header.map_err(|e| (ids.op, ids.request_id, e.status())))
    }

    /// The request in the slot, header and `payload_len` payload bytes (to verify its
    /// tag in place).
    pub(crate) fn request_mut(&mut self, payload_len: usize) -> &mut [u8] {
        grow(&mut self.req_buf, HEADER_SIZE + payload_len);
        &mut self.req_buf[..HEADER_SIZE + payload_len]
    }

    /// Accepts the complete request `request_id`: READs of the response slot now wait
    /// for its answer.
    pub(crate) fn accept(&mut self, request_id: u64) {
        self.last_request = request_id;
        self.resp = RespState::Pending;
    }

    /// Rejects the complete request in the slot (its tag did not verify, or its ID is
    /// not above the last): the response slot is as it was, READs parked by a split of
    /// this request are answered from it into `out`.
    ///
    /// Window READs waiting for a response are answered at once from the slot as it is
    /// (their host sees that its request did not come through instead of waiting).
    pub(crate) fn reject(&mut self, queue: u32, out: &mut Completions) {
        if self.resp == RespState::Pending && !self.busy {
            self.resp = self.prior;
            for (r, offset) in std::mem::take(&mut self.parked) {
                self.read(queue, r, offset, out);
            }
        }
        if self.resp != RespState::Pending {
            for w in self.take_windows(|_| true) {
                self.serve_now(queue, w.req, w.offset, out);
            }
        }
    }

    /// The first `len` payload bytes of the request in the slot.
    pub(crate) fn payload(&self, len: usize) -> &[u8] {
        // The slot holds that much once the request is complete; never index past it.
        let end = (HEADER_SIZE + len).min(self.req_buf.len());
        &self.req_buf[HEADER_SIZE.min(end)..end]
    }

    /// A request whose remaining bytes have not arrived by `now` is given up: returns
    /// its `(op, request_id)` (zeros if even those are missing) for an `Invalid`
    /// answer.
    pub(crate) fn expire_incomplete(&mut self, now: Instant) -> Option<(u16, u64)> {
        let since = self.incomplete_since?;
        if now.duration_since(since) < INCOMPLETE_TIMEOUT {
            return None;
        }
        self.forget_partial();
        let ids = RequestHeader::peek_ids(&self.req_buf[..HEADER_SIZE]);
        Some(ids.map_or((0, 0), |i| (i.op, i.request_id)))
    }

    /// When [`Queue::expire_incomplete`] or [`Queue::expire_windows`] must look next.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let windows = self.windows.iter().filter(|w| !self.served_by_pending(w.parity)).map(|w| w.since);
        let incomplete = self.incomplete_since.map(|t| t + INCOMPLETE_TIMEOUT);
        windows.min().map(|t| t + EARLY_READ_TIMEOUT).into_iter().chain(incomplete).min()
    }

    /// `true` if the request being served will answer a window READ of `parity`.
    fn served_by_pending(&self, parity: u8) -> bool {
        self.resp == RespState::Pending && self.last_request % 2 == u64::from(parity)
    }

    /// Answers, from the slot as it is, window READs that waited
    /// [`EARLY_READ_TIMEOUT`] for a request of their parity (the request being served
    /// is waited for however long it takes). Returns how many.
    pub(crate) fn expire_windows(&mut self, queue: u32, now: Instant, out: &mut Completions) -> usize {
        // The parity the request being served will answer (see `served_by_pending`).
        let served = (self.resp == RespState::Pending).then_some((self.last_request % 2) as u8);
        let gone = self.take_windows(|w| Some(w.parity) != served && now.duration_since(w.since) >= EARLY_READ_TIMEOUT);
        let n = gone.len();
        for w in gone {
            self.serve_now(queue, w.req, w.offset, out);
        }
        n
    }

    /// Removes and returns the waiting window READs for which `pick` says yes.
    fn take_windows(&mut self, mut pick: impl FnMut(&WindowRead) -> bool) -> Vec<WindowRead> {
        let (taken, kept) = std::mem::take(&mut self.windows).into_iter().partition(|w| pick(w));
        self.windows = kept;
        taken
    }

    /// A READ of response window `parity` at byte `offset`: completed into `out` at once
    /// if the slot holds the response to a request of that parity, else kept until one
    /// is there (the READ may arrive before its request's WRITE) or, when no such
    /// request comes, for [`EARLY_READ_TIMEOUT`]. Returns `true` if it waits for a
    /// request that has not arrived.
    pub(crate) fn read_window(
        &mut self,
        queue: u32,
        req: BlockRequest,
        offset: usize,
        parity: u8,
        now: Instant,
        out: &mut Completions,
    ) -> bool {
        if self.resp == RespState::Ready && self.resp_request % 2 == u64::from(parity) {
            self.serve_now(queue, req, offset, out);
            return false;
        }
        let early = !self.served_by_pending(parity);
        self.windows.push(WindowRead { req, offset, parity, since: now });
        early
    }

    /// Completes a READ with the slot's contents now (a `NoRequest` header if nothing
    /// was answered yet; the last response, even while another request is served).
    fn serve_now(&mut self, queue: u32, mut req: BlockRequest, offset: usize, out: &mut Completions) {
        let r = if self.resp_len > 0 {
            copy_out(&mut req, &self.resp_buf[..self.resp_len], offset)
        } else {
            copy_out(&mut req, &no_request(queue), offset)
        };
        out.complete_copy(req, r);
    }

    /// A READ of the response slot at byte `offset`: completed into `out` at once (the
    /// response, or a `NoRequest` header if nothing was ever asked), or parked until the
    /// response of the request in progress is there.
    pub(crate) fn read(&mut self, queue: u32, mut req: BlockRequest, offset: usize, out: &mut Completions) {
        match self.resp {
            RespState::Pending => self.parked.push((req, offset)),
            RespState::Ready => {
                let r = copy_out(&mut req, &self.resp_buf[..self.resp_len], offset);
                out.complete_copy(req, r);
            }
            RespState::Empty => {
                let r = copy_out(&mut req, &no_request(queue), offset);
                out.complete_copy(req, r);
            }
        }
    }

    /// Puts the response `header` (its `queue_id` and `payload_len` are set here), the
    /// `trace` of a traced request (in the header's reserved bytes) and `payload` (at most 1 MiB kept) in the response slot, sealed with the session's
    /// keys (`pov_proto::crypto`: encrypted with [`Protection::Confidential`]), ends
    /// the request in progress, and completes every parked READ into `out`.
    pub(crate) fn respond(
        &mut self,
        queue: u32,
        mut header: ResponseHeader,
        trace: Option<&pov_proto::trace::Trace>,
        payload: &[u8],
        seal: (&SessionKeys, Protection),
        out: &mut Completions,
    ) {
        let payload = &payload[..payload.len().min(MAX_IO_BYTES as usize)];
        header.queue_id = queue;
        header.payload_len = payload.len() as u32;
        header.encode_into(&mut self.resp_buf[..HEADER_SIZE]);
        if let Some(t) = trace {
            t.encode_into(&mut self.resp_buf[..HEADER_SIZE]);
        }
        grow(&mut self.resp_buf, HEADER_SIZE + payload.len());
        self.resp_buf[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
        self.resp_len = HEADER_SIZE + payload.len();
        let (keys, protection) = seal;
        keys.seal_response(
            queue,
            header.request_id,
            &mut self.resp_buf[..self.resp_len],
            HEADER_SIZE,
            RESPONSE_TAG_OFFSET,
            protection,
        );
        self.resp = RespState::Ready;
        self.resp_request = header.request_id;
        self.busy = false;
        for (mut r, offset) in self.parked.drain(..) {
            let c = copy_out(&mut r, &self.resp_buf[..self.resp_len], offset);
            out.complete_copy(r, c);
        }
        let parity = (header.request_id % 2) as u8;
        for w in self.take_windows(|w| w.parity == parity) {
            self.serve_now(queue, w.req, w.offset, out);
        }
    }

    /// Frees the queue: parked READs complete with IOERR into `out`.
    pub(crate) fn free(self, out: &mut Completions) {
        let windows = self.windows.into_iter().map(|w| w.req);
        for r in self.parked.into_iter().map(|(r, _)| r).chain(windows) {
            out.complete(r, BlockStatus::IoErr, 0);
        }
    }
}

/// The response header a READ gets before queue `queue` answered anything.
fn no_request(queue: u32) -> [u8; HEADER_SIZE] {
    let mut b = [0u8; HEADER_SIZE];
    let h =
        ResponseHeader { op: 0, status: Status::NoRequest, queue_id: queue, request_id: 0, result: 0, payload_len: 0, flags: 0 };
    h.encode_into(&mut b);
    b
}

/// Makes `buf` at least `len` bytes long (zero-filled), never longer than a slot.
fn grow(buf: &mut Vec<u8>, len: usize) {
    let len = len.min(SLOT_SIZE as usize);
    if buf.len() < len {
        buf.resize(len, 0);
    }
}

/// Writes `data[offset..]` into the whole of `req`'s buffer, zero-filled past the end of
/// `data`. Returns the bytes written (the buffer length).
pub(crate) fn copy_out(req: &mut BlockRequest, data: &[u8], offset: usize) -> Result<u32, BufferError> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let len = req.buf.len();
    let n = if offset < data.len() { (data.len() - offset).min(len) } else { 0 };
    if n > 0 {
        req.buf.write_at(0, &data[offset..offset + n])?;
    }
    let mut at = n;
    while at < len {
        let k = (len - at).min(ZEROS.len());
        req.buf.write_at(at, &ZEROS[..k])?;
        at += k;
    }
    Ok(len as u32)
}
