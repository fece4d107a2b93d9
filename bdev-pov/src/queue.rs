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
            req_buf: vec![0; SLOT_SIZE as usize],
            covered: Vec::new(),
            incomplete_since: None,
            resp_buf: vec![0; SLOT_SIZE as usize],
            resp_len: 0,
            resp: RespState::Empty,
            parked: Vec::new(),
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
    pub(crate) fn reject(&mut self, queue: u32, out: &mut Completions) {
        if self.resp == RespState::Pending && !self.busy {
            self.resp = self.prior;
            for (r, offset) in std::mem::take(&mut self.parked) {
                self.read(queue, r, offset, out);
            }
        }
    }

    /// The first `len` payload bytes of the request in the slot.
    pub(crate) fn payload(&self, len: usize) -> &[u8] {
        &self.req_buf[HEADER_SIZE..HEADER_SIZE + len]
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

    /// When [`Queue::expire_incomplete`] must look next, if a request is incomplete.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.incomplete_since.map(|t| t + INCOMPLETE_TIMEOUT)
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
                let mut b = [0u8; HEADER_SIZE];
                let h = ResponseHeader {
                    op: 0,
                    status: Status::NoRequest,
                    queue_id: queue,
                    request_id: 0,
                    result: 0,
                    payload_len: 0,
                    flags: 0,
                };
                h.encode_into(&mut b);
                let r = copy_out(&mut req, &b, offset);
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
        self.busy = false;
        for (mut r, offset) in self.parked.drain(..) {
            let c = copy_out(&mut r, &self.resp_buf[..self.resp_len], offset);
            out.complete_copy(r, c);
        }
    }

    /// Frees the queue: parked READs complete with IOERR into `out`.
    pub(crate) fn free(self, out: &mut Completions) {
        for (r, _) in self.parked {
            out.complete(r, BlockStatus::IoErr, 0);
        }
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
