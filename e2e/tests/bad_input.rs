//! Bad input from a host, through a raw libblkio connection to the real daemon: every
//! case gets an error (an IO error completion or an error response), and the daemon
//! keeps serving another tenant's session correctly the whole time.

use pov_e2e::{pattern, Stack, SECRET};
use pov_host::transport::{BlockOp, BlockTransport, Lane};
use pov_host::vhost::VhostUserTransport;
use pov_host::{Device, IoBuf, OpenOptions, Session};
use pov_proto::io::{flags, round_to_sector, Op, RequestHeader, ResponseHeader, SdkHint};
use pov_proto::layout::{Geometry, HEADER_SIZE, SLOT_SIZE};
use pov_proto::Status;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

struct Raw {
    t: VhostUserTransport,
    g: Geometry,
    buf: IoBuf,
    resp: IoBuf,
}

impl Raw {
    fn write(&mut self, off: u64, bytes: &[u8]) -> std::io::Result<()> {
        let len = round_to_sector(bytes.len());
        self.buf[..len].fill(0);
        self.buf[..bytes.len()].copy_from_slice(bytes);
        self.t.submit(Lane::Data(0), &mut [BlockOp::write(off, &mut self.buf, len)])
    }

    fn response(&mut self, q: u32) -> ResponseHeader {
        let off = self.g.response_slot(q);
        self.t.submit(Lane::Data(0), &mut [BlockOp::read(off, &mut self.resp, 512)]).expect("read response");
        ResponseHeader::decode(&self.resp[..512]).expect("response header")
    }

    /// Sends a crafted request on queue `q` and returns its response.
    fn call(&mut self, q: u32, bytes: &[u8]) -> ResponseHeader {
        self.write(self.g.request_slot(q), bytes).expect("request write accepted");
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
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = pattern(4096 + (i as usize % 7) * 1000, i);
                sb.write(&format!("/bg/{}", i % 5), &data).expect("background write");
                assert_eq!(sb.read(&format!("/bg/{}", i % 5)).expect("background read"), data);
                good_ops.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });

        let dev_a = Device::open(&stack.device_spec()).unwrap();
        let sa = Session::open(&dev_a, "acme", SECRET.as_bytes(), 2).unwrap();
        let (sid, q) = (sa.info().session_id, sa.queue_ids()[1]);
        let pid = std::process::id();
        let g = dev_a.geometry();
        let t = VhostUserTransport::connect(&stack.vhost_sock, 1, Some(Duration::from_secs(10))).unwrap();
        let buf = t.alloc_buf(2 * SLOT_SIZE as usize).unwrap();
        let resp = t.alloc_buf(SLOT_SIZE as usize).unwrap();
        let mut raw = Raw { t, g, buf, resp };

        // Random bytes in a request slot: no owner can be established -> IO error.
        assert!(raw.write(g.request_slot(q), &pattern(4096, 9)).is_err(), "random bytes accepted");
        // Wrong magic from the owner: error response.
        let mut b = req(Op::Stat, q, pid, sid, 1, b"/x");
        b[0] ^= 0xff;
        let r = raw.call(q, &b);
        assert_eq!((r.status, r.request_id), (Status::BadMagic, 1));
        // Unknown operation.
        let mut b = req(Op::Stat, q, pid, sid, 2, b"/x");
        b[6] = 0x7f;
        assert_eq!(raw.call(q, &b).status, Status::UnknownOp);
        // Truncated request: the header announces 8 KiB of payload that never comes.
        let mut b = req(Op::Write, q, pid, sid, 3, &[]);
        b[56..60].copy_from_slice(&8192u32.to_le_bytes());
        let r = raw.call(q, &b);
        assert_eq!((r.status, r.request_id), (Status::Invalid, 3));
        // A read over 1 MiB.
        let mut b = req(Op::Read, q, pid, sid, 4, &[]);
        b[48..52].copy_from_slice(&(pov_proto::MAX_IO_BYTES + 1).to_le_bytes());
        assert_eq!(raw.call(q, &b).status, Status::TooLarge);
        // A block IO larger than a slot (what a merge would produce) -> IO error.
        assert!(raw.write(g.request_slot(q), &vec![0u8; SLOT_SIZE as usize + 4096]).is_err());
        // Wrong process ID -> IO error, and the owner's queue still works afterwards.
        assert!(raw.write(g.request_slot(q), &req(Op::Stat, q, pid + 1, sid, 5, b"/x")).is_err());
        // Out-of-range queue: a queue not open, and one past the end of the device.
        let unopened = q + 1;
        assert!(raw.write(g.request_slot(unopened), &req(Op::Stat, unopened, pid, sid, 6, b"/x")).is_err());
        assert!(raw.write(g.capacity_bytes(), &[0u8; 512]).is_err());
        // Another tenant's file: `..` is refused, and the same name is a different file.
        let r = raw.call(q, &req(Op::Open, q, pid, sid, 7, b"/../other/secret"));
        assert_eq!(r.status, Status::Permission);
        assert!(sa.read("/secret").is_err(), "acme must not see other's /secret");
        assert!(sa.read("/../other/secret").is_err());
        // After all that, the session still works.
        let f = OpenOptions::new().write(true).create(true).open(&sa, "/after").unwrap();
        f.write_at(b"still fine", 0).unwrap();
        assert_eq!(sa.read("/after").unwrap(), b"still fine");
        stop.store(true, Ordering::Relaxed);
    });
    assert!(good_ops.load(Ordering::Relaxed) > 0);
    assert_eq!(sb.read("/secret").unwrap(), b"tenant other's data");
}
