//! PoV file IO through the whole path (host → pov-dpud → pov-proxy → backend) with
//! many requests in flight.
//!
//! The session, its queues and the file are set up with the `pov-host` library
//! ([`pov_host::Session`], [`pov_host::File`]), which keeps the session alive with its
//! heartbeat thread. The IOs themselves go out asynchronously on a second libblkio
//! connection to the same device: for PoV queue `q` of the session, one IO is a WRITE
//! of the request (512-byte [`RequestHeader`] + write data) to `q`'s request slot and a
//! READ of `q`'s response slot submitted together, which the device parks until the
//! proxy answers (docs/protocol.md, "IO requests"). So `qd` PoV queues give `qd` IOs
//! in flight, where the synchronous `pov-host` API would block a thread per IO.

use blkio::{Blkioq, ReqFlags};
use pov_host::{Device, File, OpenOptions, Protection, Session, SessionKeys, SessionOptions};
use pov_proto::io::{Op, RequestHeader, ResponseHeader, SdkHint, REQUEST_TAG_OFFSET, RESPONSE_TAG_OFFSET};
use pov_proto::layout::{Geometry, HEADER_SIZE, SLOT_SIZE};
use pov_proto::Status;
use std::sync::Arc;

use crate::engine::Target;
use crate::mem::Slab;
use crate::workload::{Dir, Io};

/// Where and as whom to do PoV file IO.
#[derive(Debug, Clone)]
pub struct PovFileSpec {
    /// Tenant name.
    pub tenant: String,
    /// Tenant secret.
    pub secret: Vec<u8>,
    /// File path in the tenant's namespace; created if missing.
    pub path: String,
    /// File size in bytes: the file is extended (never shrunk) to this size so that
    /// reads inside it are full.
    pub size: u64,
    /// How the session's responses are protected (payloads encrypted, or only
    /// authenticated).
    pub protection: Protection,
}

struct Inflight {
    request_id: u64,
    dir: Dir,
    len: usize,
}

/// PoV file IO: one slot per PoV queue of a dedicated session.
pub struct PovFileTarget {
    // Field order: IO state first; the session (and its heartbeat) is dropped last.
    req: Slab,
    resp: Slab,
    inflight: Vec<Option<Inflight>>,
    queue_ids: Vec<u32>,
    geometry: Geometry,
    pid: u32,
    session_id: u64,
    handle: u64,
    next_request: u64,
    keys: Arc<SessionKeys>,
    protection: Protection,
    file: Option<File>,
    session: Option<Session>,
    _device: Device,
}

impl PovFileTarget {
    /// Opens a session with `qd` queues on the PoV device at vhost-user socket
    /// `socket`, creates/opens `spec.path` for writing and extends it to `spec.size`;
    /// IO buffers for IOs of up to `max_io` bytes come from `blkio` (the connection the
    /// IOs will travel on).
    ///
    /// Errors: the device is not a PoV device, authentication fails, the device grants
    /// fewer than `qd` queues per session (see `pov_device_create num_queues`), `max_io`
    /// is over 1 MiB, file errors.
    pub fn new(
        blkio: &mut blkio::Blkio,
        socket: &std::path::Path,
        spec: &PovFileSpec,
        qd: usize,
        max_io: usize,
    ) -> anyhow::Result<PovFileTarget> {
        anyhow::ensure!(max_io <= pov_proto::MAX_IO_BYTES as usize, "PoV IOs are at most 1 MiB");
        let device = Device::open(&format!("vhost-user:{}", socket.display()))?;
        let opts = SessionOptions { queues: qd as u32, protection: spec.protection, ..SessionOptions::default() };
        let session = Session::open_with(&device, &spec.tenant, &spec.secret, &opts)?;
        let queue_ids = session.queue_ids().to_vec();
        anyhow::ensure!(
            queue_ids.len() >= qd,
            "the device granted {} queues per session, queue depth {qd} needs {qd} (raise pov_device_create num_queues)",
            queue_ids.len()
        );
        let file = OpenOptions::new().write(true).create(true).open(&session, &spec.path)?;
        if file.stat()?.size < spec.size {
            file.set_len(spec.size)?;
        }
        let req = Slab::new(blkio, qd, HEADER_SIZE + max_io)?;
        let resp = Slab::new(blkio, qd, (HEADER_SIZE + max_io).min(SLOT_SIZE as usize))?;
        Ok(PovFileTarget {
            req,
            resp,
            inflight: (0..qd).map(|_| None).collect(),
            queue_ids,
            geometry: device.geometry(),
            pid: std::process::id(),
            session_id: session.info().session_id,
            handle: file.handle(),
            // IDs the library's own requests on this session will not use.
            next_request: session.reserve_request_ids(1 << 48),
            keys: session.keys().clone(),
            protection: session.protection(),
            file: Some(file),
            session: Some(session),
            _device: device,
        })
    }
}

impl Drop for PovFileTarget {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            if let Err(e) = f.close() {
                log::warn!("closing the benchmark file: {e}");
            }
        }
        if let Some(s) = self.session.take() {
            if let Err(e) = s.close() {
                log::warn!("closing the benchmark session: {e}");
            }
        }
    }
}

/// Bytes to READ from a response slot for `payload` expected bytes: header + payload
/// rounded up to 4 KiB, at most one slot.
fn response_len(payload: usize) -> usize {
    (HEADER_SIZE + payload).div_ceil(4096).saturating_mul(4096).min(SLOT_SIZE as usize)
}

impl Target for PovFileTarget {
    fn slots(&self) -> usize {
        self.inflight.len()
    }

    fn submit(&mut self, q: &mut Blkioq, slot: usize, io: &Io) -> usize {
        let queue_id = self.queue_ids[slot];
        let request_id = self.next_request;
        self.next_request += 1;
        let (op, payload) = match io.dir {
            Dir::Read => (Op::Read, 0),
            Dir::Write => (Op::Write, io.len),
        };
        let hdr = RequestHeader {
            op,
            queue_id,
            pid: self.pid,
            session_id: self.session_id,
            request_id,
            file_handle: self.handle,
            offset: io.offset,
            length: if op == Op::Read { io.len as u32 } else { 0 },
            flags: 0,
            payload_len: payload as u32,
            hint: SdkHint::default(),
        };
        hdr.encode_into(self.req.slice_mut(slot, 0, HEADER_SIZE));
        // Sealing encrypts the payload in place, so each write lays down its data
        // afresh, as the library copies the caller's buffer into the slot.
        self.req.slice_mut(slot, HEADER_SIZE, payload).fill(0x5a);
        // Every request is sealed with the session's keys, as the library's are (pov_proto::crypto).
        self.keys.seal_request(queue_id, request_id, self.req.slice_mut(slot, 0, HEADER_SIZE + payload), REQUEST_TAG_OFFSET);
        let wlen = (HEADER_SIZE + payload).div_ceil(512) * 512;
        let rlen = response_len(if op == Op::Read { io.len } else { 0 });
        q.write(self.geometry.request_slot(queue_id), self.req.ptr(slot, 0), wlen, slot, ReqFlags::empty());
        q.read(self.geometry.response_slot(queue_id), self.resp.ptr(slot, 0), rlen, slot, ReqFlags::empty());
        self.inflight[slot] = Some(Inflight { request_id, dir: io.dir, len: io.len });
        2
    }

    fn complete(&mut self, slot: usize) -> Result<(), String> {
        let Some(f) = self.inflight[slot].take() else { return Err("no request in flight".into()) };
        let r = ResponseHeader::decode(self.resp.slice(slot, 0, HEADER_SIZE)).map_err(|e| format!("bad response header: {e}"))?;
        if r.request_id != f.request_id || r.queue_id != self.queue_ids[slot] {
            return Err(format!(
                "response to request {} of queue {} where request {} of queue {} was sent",
                r.request_id, r.queue_id, f.request_id, self.queue_ids[slot]
            ));
        }
        let total = HEADER_SIZE + r.payload_len as usize;
        if total > self.resp.slot_len() {
            return Err(format!("response of {total} bytes does not fit the slot"));
        }
        let (queue, protection) = (self.queue_ids[slot], self.protection);
        self.keys
            .open_response(queue, f.request_id, self.resp.slice_mut(slot, 0, total), HEADER_SIZE, RESPONSE_TAG_OFFSET, protection)
            .map_err(|e| format!("response to request {}: {e}", f.request_id))?;
        if r.status != Status::Ok {
            return Err(format!("PoV {:?} answered {:?}", f.dir, r.status));
        }
        if r.result != f.len as u64 {
            return Err(format!("PoV {:?} of {} bytes moved {} bytes", f.dir, f.len, r.result));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_reads_cover_header_and_data() {
        assert_eq!(response_len(0), 4096);
        assert_eq!(response_len(4096), 8192);
        assert_eq!(response_len(1 << 20), SLOT_SIZE as usize);
    }
}
