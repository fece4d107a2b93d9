//! Bad input from a host, through a raw libblkio connection to the real daemon: every
//! case gets an error (an IO error completion or an error response), and the daemon
//! keeps serving another tenant's session correctly the whole time.

use pov_e2e::{pattern, Stack, SECRET};
use pov_host::transport::{BlockOp, BlockTransport, Lane};
use pov_host::vhost::VhostUserTransport;
use pov_host::{Device, IoBuf, OpenOptions, Session};
use pov_proto::crypto::{Protection, SessionKeys};
use pov_proto::io::{
    flags, round_to_sector, Op, RequestHeader, ResponseHeader, SdkHint, REQUEST_TAG_OFFSET, RESPONSE_TAG_OFFSET,
};
use pov_proto::layout::{Geometry, HEADER_SIZE, SLOT_SIZE};
use pov_proto::Status;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A raw connection that speaks for the session whose keys it holds (the session's
/// own process crafting bad requests).
struct Raw {
    t: VhostUserTransport,
    g: Geometry,
    buf: IoBuf,
    resp: IoBuf,
    keys: Arc<SessionKeys>,
}

impl Raw {
    fn write(&mut self, off: u64, bytes: &[u8]) -> std::io::Result<()> {
        let len = round_to_sector(bytes.len());
        self.buf[..len].fill(0);
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.t.submit(Lane::Data(0), &mut [BlockOp::write(off, &mut self.buf, len)])
    }

    /// Reads queue `q`'s response (no payload: these are all errors) and checks that
    /// the device sealed it for this session and request.
    fn response(&mut self, q: u32) -> ResponseHeader {
        let off = self.g.response_slot(q);
        self.t.submit(Lane::Data(0), &mut [BlockOp::read(off, &mut self.resp, 512)]).expect("read response");
        let r = ResponseHeader::decode(&self.resp[..512]).expect("response header");
        self.keys
            .open_response(q, r.request_id, &mut self.resp[..512], HEADER_SIZE, RESPONSE_TAG_OFFSET, Protection::Confidential)
            .expect("response sealed for this session");
        r
    }

    /// Tags a crafted request with the session's key, as the session's own process
    /// can: header and payload, or only the header of one that does not decode (the
    /// device cannot trust such a header's payload length, so it checks the header).
    fn tag(&self, q: u32, rid: u64, mut bytes: Vec<u8>) -> Vec<u8> {
        let len = if RequestHeader::decode(&bytes[..HEADER_SIZE]).is_ok() { bytes.len() } else { HEADER_SIZE };
        self.keys.seal_request(q, rid, &mut bytes[..len], REQUEST_TAG_OFFSET);
        bytes
    }

    /// Sends a crafted request on queue `q`, sealed, and returns its response.
    fn call(&mut self, q: u32, rid: u64, bytes: Vec<u8>) -> ResponseHeader {
        let bytes = self.tag(q, rid, bytes);
        self.write(self.g.request_slot(q), &bytes).expect("request write accepted");
        self.response(q)
    }
}

fn req(op: Op, q: u32, pid: u32, session: u64, rid: u64, payload: &[u8]) -> Vec<u8> {
    let h = RequestHeader {
        op,
        queue_id: q,
        pid,
        session_id: session,
        request_id: rid,
        file_handle: 0,
        offset: 0,
        length: 0,
        flags: flags::CREATE,
        payload_len: payload.len() as u32,
        hint: SdkHint::default(),
    };
    let mut b = vec![0u8; HEADER_SIZE + payload.len()];
    h.encode_into(&mut b);
    b[HEADER_SIZE..].copy_from_slice(payload);
    b
}

#[test]
fn bad_input_gets_errors_and_other_sessions_keep_working() {
    let stack = Stack::start(json!({}));
    // The victim tenant keeps doing verified IO in the background.
    let stop = AtomicBool::new(false);
    let good_ops = AtomicU64::new(0);
    let dev_b = Device::open(&stack.device_spec()).unwrap();
    let sb = Session::open(&dev_b, "other", SECRET.as_bytes(), 2).unwrap();
    sb.write("/secret", b"tenant other's data").unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // Bounded: at most 20 000 round trips or 120 s, whichever comes first.
            let start = std::time::Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 20_000 && start.elapsed() < Duration::from_secs(120) {
                let data = pattern(4096 + (i as usize % 7) * 1000, i);
                sb.write(&format!("/bg/{}", i % 5), &data).expect("background write");
                assert_eq!(sb.read(&format!("/bg/{}", i % 5)).expect("background read"), data);
                good_ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });

        // However the attacks below end (a failed assertion too), the background
        // loop stops, so that the scope can end.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        let dev_a = Device::open(&stack.device_spec()).unwrap();
        let sa = Session::open(&dev_a, "acme", SECRET.as_bytes(), 2).unwrap();
        let (sid, q) = (sa.info().session_id, sa.queue_ids()[1]);
        let pid = std::process::id();
        let g = dev_a.geometry();
        let t = VhostUserTransport::connect(&stack.vhost_sock, 1, Some(Duration::from_secs(10))).unwrap();
        let buf = t.alloc_buf(2 * SLOT_SIZE as usize).unwrap();
        let resp = t.alloc_buf(SLOT_SIZE as usize).unwrap();
        let mut raw = Raw { t, g, buf, resp, keys: sa.keys().clone() };
        // Request IDs above the session's own on this queue, reserved for these.
        let base = sa.reserve_request_ids(1000);

        // Random bytes in a request slot: no owner can be established -> IO error.
        assert!(raw.write(g.request_slot(q), &pattern(4096, 9)).is_err(), "random bytes accepted");
        // Wrong magic from the owner: error response.
        let mut b = req(Op::Stat, q, pid, sid, base + 1, b"/x");
        b[0] ^= 0xff;
        let r = raw.call(q, base + 1, b);
        assert_eq!((r.status, r.request_id), (Status::BadMagic, base + 1));
        // Unknown operation.
        let mut b = req(Op::Stat, q, pid, sid, base + 2, b"/x");
        b[6] = 0x7f;
        assert_eq!(raw.call(q, base + 2, b).status, Status::UnknownOp);
        // Truncated request: the header announces 8 KiB of payload that never comes.
        let mut b = req(Op::Write, q, pid, sid, base + 3, &[]);
        b[56..60].copy_from_slice(&8192u32.to_le_bytes());
        let r = raw.call(q, base + 3, b);
        assert_eq!((r.status, r.request_id), (Status::Invalid, base + 3));
        // A read over 1 MiB.
        let mut b = req(Op::Read, q, pid, sid, base + 4, &[]);
        b[48..52].copy_from_slice(&(pov_proto::MAX_IO_BYTES + 1).to_le_bytes());
        assert_eq!(raw.call(q, base + 4, b).status, Status::TooLarge);
        // A block IO larger than a slot (what a merge would produce) -> IO error.
        assert!(raw.write(g.request_slot(q), &vec![0u8; SLOT_SIZE as usize + 4096]).is_err());
        // Wrong process ID -> IO error, and the owner's queue still works afterwards.
        let b = raw.tag(q, base + 5, req(Op::Stat, q, pid + 1, sid, base + 5, b"/x"));
        assert!(raw.write(g.request_slot(q), &b).is_err());
        // Unsealed (forged) and replayed requests -> IO error, nothing served.
        assert!(raw.write(g.request_slot(q), &req(Op::Stat, q, pid, sid, base + 6, b"/x")).is_err(), "unsealed");
        let b = raw.tag(q, base + 4, req(Op::Stat, q, pid, sid, base + 4, b"/x"));
        assert!(raw.write(g.request_slot(q), &b).is_err(), "request ID used already");
        let mut b = raw.tag(q, base + 7, req(Op::Stat, q, pid, sid, base + 7, b"/x"));
        b[HEADER_SIZE] = b'y';
        assert!(raw.write(g.request_slot(q), &b).is_err(), "payload changed after tagging");
        // Out-of-range queue: a queue not open, and one past the end of the device.
        let unopened = q + 1;
        let b = raw.tag(unopened, base + 8, req(Op::Stat, unopened, pid, sid, base + 8, b"/x"));
        assert!(raw.write(g.request_slot(unopened), &b).is_err());
        assert!(raw.write(g.capacity_bytes(), &[0u8; 512]).is_err());
        // Another tenant's file: `..` is refused, and the same name is a different file.
        let r = raw.call(q, base + 9, req(Op::Open, q, pid, sid, base + 9, b"/../other/secret"));
        assert_eq!(r.status, Status::Permission);
        assert!(sa.read("/secret").is_err(), "acme must not see other's /secret");
        assert!(sa.read("/../other/secret").is_err());
        // After all that, the session still works.
        let f = OpenOptions::new().write(true).create(true).open(&sa, "/after").unwrap();
        f.write_at(b"still fine", 0).unwrap();
        assert_eq!(sa.read("/after").unwrap(), b"still fine");
    });
    assert!(good_ops.load(Ordering::Relaxed) > 0);
    assert_eq!(sb.read("/secret").unwrap(), b"tenant other's data");
}
