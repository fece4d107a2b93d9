//! Fuzz target bodies for this crate's decoders (feature `fuzzing`; also compiled for
//! the crate's own tests), and [`replay`], which runs a seed corpus through one of them
//! as an ordinary test.
//!
//! Every function here takes arbitrary bytes and must never panic. It decodes them with
//! one decoder and checks that decoder's properties: where an encoder exists, a decoded
//! value encodes to bytes that decode to the same value (`decode(encode(x)) == x` for
//! every decoded `x`), and a decoded value is within the limits the decoder promises.
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` are one line each calling these; the
//! seed corpora are `fuzz/seeds/<target>/` (see `docs/fuzzing.md`).

use crate::admin::{AdminRequest, AdminResponse, ADMIN_RESPONSE_SIZE, MAX_PREFIX, MAX_TENANT_NAME};
use crate::crypto::{Protection, SessionKeys, NONCE_LEN, TAG_LEN};
use crate::entry::{DirEntry, Stat};
use crate::io::{RequestHeader, ResponseHeader, MAX_PATH, REQUEST_TAG_OFFSET, RESPONSE_TAG_OFFSET};
use crate::layout::{
    ConfigSpace, Geometry, Region, ADMIN_MAILBOXES, ADMIN_MAILBOX_OFFSET, ADMIN_RECORD_SIZE, ADMIN_REQ_OFFSET, CONFIG_SIZE,
    HEADER_SIZE, MAILBOX_SIZE, MAX_DEVICE_NAME, QUEUE_STRIDE, RESP_SLOT_OFFSET, SESSION_MAILBOX_OFFSET, SLOT_SIZE,
};
use crate::wire::{frame_len, ProxyRequest, ProxyResponse, LEN_PREFIX, MAX_FRAME};
use crate::MAX_IO_BYTES;
use std::path::Path;

/// Target `proto_io`: the IO request and response headers ([`crate::io`]).
pub fn io_headers(data: &[u8]) {
    let req = RequestHeader::decode(data);
    if data.len() >= HEADER_SIZE {
        assert_eq!(req, RequestHeader::decode(&data[..HEADER_SIZE]), "decoding reads the header only");
    }
    if let Ok(h) = &req {
        assert!(h.payload_len <= MAX_IO_BYTES && h.length <= MAX_IO_BYTES, "{h:?}");
        assert!(!h.op.is_dpu_only(), "a host request never carries a DPU-only operation: {h:?}");
        assert!(!h.op.carries_path() || h.payload_len as usize <= h.op.max_path_payload(), "{h:?}");
        assert!(h.hint.retry_forbidden_len <= 12, "{h:?}");
        let _ = h.hint.forbids(h.queue_id);
        let mut b = [0u8; HEADER_SIZE];
        h.encode_into(&mut b);
        assert_eq!(RequestHeader::decode(&b).as_ref(), Ok(h), "request header round trip");
    }
    assert_eq!(RequestHeader::peek_ids(data).is_some(), data.len() >= 32);
    if let Ok(r) = ResponseHeader::decode(data) {
        assert!(r.payload_len <= MAX_IO_BYTES, "{r:?}");
        let mut b = [0u8; HEADER_SIZE];
        r.encode_into(&mut b);
        assert_eq!(ResponseHeader::decode(&b), Ok(r), "response header round trip");
    }
}

/// Target `proto_admin`: admin requests and sealed admin answers ([`crate::admin`]).
/// A decoded request re-encodes to itself and its return fields
/// ([`AdminRequest::peek_return`]) are the decoded ones; the input opened as an answer
/// with a key and mailbox taken from it never panics (and, were it authentic, would
/// reseal to an answer that opens the same); an answer built from the input's bytes
/// opens with its key and mailbox and with no other, and not after one byte changes.
pub fn admin(data: &[u8]) {
    if let Ok(r) = AdminRequest::decode(data) {
        assert!(r.tenant.len() <= MAX_TENANT_NAME && r.prefix.len() <= MAX_PREFIX, "{r:?}");
        let b = r.encode().expect("a decoded admin request encodes");
        assert_eq!(AdminRequest::decode(&b).as_ref(), Ok(&r), "admin request round trip");
        let ret = AdminRequest::peek_return(data).expect("a decodable request has a return address");
        assert_eq!((ret.op, ret.seq, ret.mailbox, ret.exchange_key), (r.op as u16, r.seq, r.mailbox, r.exchange_key));
    }
    let mut key = [0u8; NONCE_LEN];
    let n = data.len().min(NONCE_LEN);
    key[..n].copy_from_slice(&data[..n]);
    let mailbox = data.get(NONCE_LEN..NONCE_LEN + 2).map_or(0, |m| u16::from_le_bytes([m[0], m[1]])) % ADMIN_MAILBOXES;
    if let Ok(r) = AdminResponse::open(data, mailbox, &key) {
        assert_eq!(AdminResponse::open(&r.seal(mailbox, &key), mailbox, &key).as_ref(), Ok(&r), "admin answer round trip");
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        for (j, b) in w.iter_mut().enumerate() {
            *b = data.get(i * 8 + j).copied().unwrap_or(0);
        }
        u64::from_le_bytes(w)
    };
    let answer = AdminResponse {
        op: word(0) as u16,
        status: word(1) as u32,
        seq: word(2),
        session_id: word(3),
        queue_id: word(4) as u32,
        area: (word(4) >> 32) as u32,
        max_queues: word(5) as u32,
        heartbeat_interval_ms: (word(5) >> 32) as u32,
        session_timeout_ms: word(6) as u32,
        exchange_id: word(7),
        device_nonce: key,
        // Up to 64 queue IDs, as many as the input's ninth word says.
        queue_ids: (0..word(8) % 65).map(|i| word(9 + i as usize) as u32).collect(),
    };
    let mut sealed = answer.seal(mailbox, &key);
    assert_eq!(AdminResponse::open(&sealed, mailbox, &key).as_ref(), Ok(&answer), "sealed admin answer opens");
    assert!(AdminResponse::open(&sealed, mailbox ^ 1, &key).is_err(), "an answer opens in its own mailbox only");
    let mut other = key;
    other[0] ^= 1;
    assert!(AdminResponse::open(&sealed, mailbox, &other).is_err(), "an answer opens with its exchange key only");
    let at = (word(8) % ADMIN_RESPONSE_SIZE as u64) as usize;
    sealed[at] ^= 1 << (word(8) >> 61);
    assert!(AdminResponse::open(&sealed, mailbox, &key).is_err(), "altered byte {at} of an admin answer went unnoticed");
}

/// Target `proto_seal`: sealed IO requests and responses ([`SessionKeys`]) with fixed
/// session keys. The input taken as a sealed request or response (any queue and
/// request ID it names) is refused: nobody without the keys can make one. The input
/// sealed as a request and as a response (both protections) opens back to itself, and
/// one changed byte (header, payload or tag), another queue or another request ID is
/// refused.
pub fn seal(data: &[u8]) {
    thread_local! {
        static KEYS: SessionKeys = SessionKeys::derive(b"fuzz-secret", &[1; NONCE_LEN], &[2; NONCE_LEN], "acme", 7);
    }
    KEYS.with(|k| seal_with(k, data));
}

fn seal_with(k: &SessionKeys, data: &[u8]) {
    let ids = RequestHeader::peek_ids(data);
    let (queue, request_id) = ids.map_or((0, 0), |i| (i.queue_id, i.request_id));
    let len = data.len().min(HEADER_SIZE + MAX_IO_BYTES as usize);
    let mut buf = data[..len].to_vec();
    if buf.len() < HEADER_SIZE {
        buf.resize(HEADER_SIZE, 0);
    }
    let mut forged = buf.clone();
    assert!(k.open_request(queue, request_id, &mut forged, REQUEST_TAG_OFFSET).is_err(), "an unsealed request opened");
    for p in [Protection::Confidential, Protection::IntegrityOnly] {
        let mut forged = buf.clone();
        assert!(
            k.open_response(queue, request_id, &mut forged, HEADER_SIZE, RESPONSE_TAG_OFFSET, p).is_err(),
            "an unsealed response opened ({p:?})"
        );
    }
    // Round trips, and a flipped bit anywhere is caught. The tag field is zeroed by
    // sealing and opening, so compare with it zeroed.
    let flip = (request_id as usize).wrapping_mul(31).wrapping_add(queue as usize) % buf.len();
    let mut clear = buf.clone();
    clear[REQUEST_TAG_OFFSET..REQUEST_TAG_OFFSET + TAG_LEN].fill(0);
    let mut b = buf.clone();
    k.seal_request(queue, request_id, &mut b, REQUEST_TAG_OFFSET);
    let sealed = b.clone();
    k.open_request(queue, request_id, &mut b, REQUEST_TAG_OFFSET).expect("a sealed request opens");
    assert_eq!(b, clear, "request round trip");
    for (q, r, at) in [(queue ^ 1, request_id, None), (queue, request_id.wrapping_add(1), None), (queue, request_id, Some(flip))]
    {
        let mut b = sealed.clone();
        if let Some(at) = at {
            b[at] ^= 0x80;
        }
        assert!(k.open_request(q, r, &mut b, REQUEST_TAG_OFFSET).is_err(), "altered request opened ({q}, {r}, {at:?})");
    }
    let mut clear = buf.clone();
    clear[RESPONSE_TAG_OFFSET..RESPONSE_TAG_OFFSET + TAG_LEN].fill(0);
    for p in [Protection::Confidential, Protection::IntegrityOnly] {
        let mut b = buf.clone();
        k.seal_response(queue, request_id, &mut b, HEADER_SIZE, RESPONSE_TAG_OFFSET, p);
        if p == Protection::IntegrityOnly {
            assert_eq!(b[HEADER_SIZE..], clear[HEADER_SIZE..], "an integrity-only response leaves its payload in clear");
        }
        let sealed = b.clone();
        k.open_response(queue, request_id, &mut b, HEADER_SIZE, RESPONSE_TAG_OFFSET, p).expect("a sealed response opens");
        assert_eq!(b, clear, "response round trip ({p:?})");
        let mut b = sealed.clone();
        b[flip] ^= 0x80;
        assert!(
            k.open_response(queue, request_id, &mut b, HEADER_SIZE, RESPONSE_TAG_OFFSET, p).is_err(),
            "a response with byte {flip} altered opened ({p:?})"
        );
        let mut b = sealed;
        assert!(
            k.open_response(queue ^ 1, request_id, &mut b, HEADER_SIZE, RESPONSE_TAG_OFFSET, p).is_err(),
            "another queue's response opened ({p:?})"
        );
    }
}

/// Target `proto_config`: the configuration record ([`ConfigSpace`]) and the
/// classification of block IO into regions ([`Geometry::classify`]), checked against
/// a reference classifier. The input's first 15 bytes (when present) also give a
/// geometry (`areas: u16`, `queues_per_area: u8`), an offset (`u64`) and a length
/// (`u32`) to classify.
pub fn config_space(data: &[u8]) {
    if let Ok(c) = ConfigSpace::decode(data) {
        assert!(c.name.len() <= MAX_DEVICE_NAME, "{c:?}");
        assert_eq!(ConfigSpace::decode(&c.encode()), Ok(c.clone()), "config record round trip");
        let g = c.geometry;
        assert_eq!(Geometry::new(g.areas, g.queues_per_area), Ok(g));
        for (offset, len) in [(0, 512), (g.capacity_bytes() - 512, 512), (g.request_slot(g.total_queues() - 1), 4096)] {
            check_classify(g, offset, len);
        }
    }
    if data.len() >= 15 {
        let areas = u16::from_le_bytes([data[0], data[1]]) as u32;
        let Ok(g) = Geometry::new(areas, data[2] as u32) else { return };
        let offset = u64::from_le_bytes(data[3..11].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(data[11..15].try_into().unwrap_or_default()) as u64;
        check_classify(g, offset, len);
        // The same IO moved next to each region boundary of its queue.
        let q = g.total_queues() - 1;
        let near = offset % (2 * SLOT_SIZE);
        let first = g.queue_id(g.areas - 1, 0);
        for base in [
            0,
            ADMIN_REQ_OFFSET,
            ADMIN_MAILBOX_OFFSET,
            g.request_slot(q),
            g.response_slot(q),
            g.session_mailbox(g.areas - 1),
            g.response_slot(first),
            g.window_base(),
            g.response_window(q, 1),
            g.capacity_bytes(),
        ] {
            check_classify(g, base.wrapping_add(near).wrapping_sub(SLOT_SIZE), len);
        }
    }
}

/// Checks one classification: the region found is the one the reference gives, and
/// its offsets stay inside it (they index buffers of exactly the region's size).
fn check_classify(g: Geometry, offset: u64, len: u64) {
    let got = g.classify(offset, len);
    let within = |start: u64, size: u64, rel: u64| offset.checked_sub(start) == Some(rel) && rel + len <= size;
    match got {
        Region::Config { offset: rel } => assert!(within(0, CONFIG_SIZE, rel), "{got:?} for {offset}+{len}"),
        Region::AdminRequest { offset: rel } => {
            assert!(within(ADMIN_REQ_OFFSET, ADMIN_RECORD_SIZE as u64, rel), "{got:?} for {offset}+{len}")
        }
        Region::AdminMailboxes { offset: rel } => {
            assert!(within(ADMIN_MAILBOX_OFFSET, ADMIN_MAILBOXES as u64 * MAILBOX_SIZE, rel), "{got:?} for {offset}+{len}")
        }
        Region::SessionMailbox { area, offset: rel } => {
            assert!(area < g.areas && within(g.session_mailbox(area), MAILBOX_SIZE, rel), "{got:?} for {offset}+{len}")
        }
        Region::RequestSlot { queue, offset: rel } => {
            assert!(queue < g.total_queues() && within(g.request_slot(queue), SLOT_SIZE, rel), "{got:?} for {offset}+{len}")
        }
        Region::ResponseSlot { queue, offset: rel } => {
            assert!(queue < g.total_queues() && within(g.response_slot(queue), SLOT_SIZE, rel), "{got:?} for {offset}+{len}")
        }
        Region::ResponseWindow { queue, parity, offset: rel } => assert!(
            queue < g.total_queues() && parity < 2 && within(g.response_window(queue, parity.into()), SLOT_SIZE, rel),
            "{got:?} for {offset}+{len}"
        ),
        Region::Guard | Region::Crossing => {}
    }
    if len > 0 {
        assert_eq!(got, reference_classify(g, offset, len), "classify({offset}, {len}) with {g:?}");
    }
}

/// What [`Geometry::classify`] must answer for a non-empty IO: the region that holds
/// it whole; `Crossing` if it leaves the device or overlaps a region it is not inside;
/// else `Guard`.
fn reference_classify(g: Geometry, offset: u64, len: u64) -> Region {
    let Some(end) = offset.checked_add(len).filter(|e| *e <= g.capacity_bytes()) else { return Region::Crossing };
    let mut regions = vec![
        (0, CONFIG_SIZE, Region::Config { offset: 0 }),
        (ADMIN_REQ_OFFSET, ADMIN_RECORD_SIZE as u64, Region::AdminRequest { offset: 0 }),
        (ADMIN_MAILBOX_OFFSET, ADMIN_MAILBOXES as u64 * MAILBOX_SIZE, Region::AdminMailboxes { offset: 0 }),
    ];
    // The slots of every queue the IO touches (an IO inside the device touches at most
    // len / QUEUE_STRIDE + 2 queues).
    let queue_at = |b: u64| b.checked_sub(crate::layout::IO_BASE).map(|r| r / QUEUE_STRIDE);
    if let (first, Some(last)) = (queue_at(offset).unwrap_or(0), queue_at(end - 1)) {
        for q in first..=last.min(g.total_queues() as u64 - 1) {
            let q = q as u32;
            regions.push((g.request_slot(q), SLOT_SIZE, Region::RequestSlot { queue: q, offset: 0 }));
            regions.push((g.request_slot(q) + RESP_SLOT_OFFSET, SLOT_SIZE, Region::ResponseSlot { queue: q, offset: 0 }));
            if q % g.queues_per_area == 0 {
                let area = q / g.queues_per_area;
                regions.push((
                    g.request_slot(q) + SESSION_MAILBOX_OFFSET,
                    MAILBOX_SIZE,
                    Region::SessionMailbox { area, offset: 0 },
                ));
            }
        }
    }
    // The response windows of every queue the IO touches past the IO areas.
    let window_of = |b: u64| b.checked_sub(g.window_base()).map(|r| r / QUEUE_STRIDE);
    if let (first, Some(last)) = (window_of(offset).unwrap_or(0), window_of(end - 1)) {
        for q in first..=last.min(g.total_queues() as u64 - 1) {
            for parity in 0..2u8 {
                let start = g.response_window(q as u32, parity.into());
                regions.push((start, SLOT_SIZE, Region::ResponseWindow { queue: q as u32, parity, offset: 0 }));
            }
        }
    }
    for (start, size, region) in &regions {
        if offset >= *start && end <= start + size {
            let rel = offset - start;
            return match *region {
                Region::Config { .. } => Region::Config { offset: rel },
                Region::AdminRequest { .. } => Region::AdminRequest { offset: rel },
                Region::AdminMailboxes { .. } => Region::AdminMailboxes { offset: rel },
                Region::SessionMailbox { area, .. } => Region::SessionMailbox { area, offset: rel },
                Region::RequestSlot { queue, .. } => Region::RequestSlot { queue, offset: rel },
                Region::ResponseSlot { queue, .. } => Region::ResponseSlot { queue, offset: rel },
                Region::ResponseWindow { queue, parity, .. } => Region::ResponseWindow { queue, parity, offset: rel },
                r => r,
            };
        }
    }
    // The admin space's guard (ADMIN_SIZE) counts as part of it, as in the layout.
    let admin_space = (ADMIN_REQ_OFFSET, crate::layout::ADMIN_SIZE);
    if regions.iter().map(|(s, n, _)| (*s, *n)).chain([admin_space]).any(|(s, n)| offset < s + n && end > s) {
        return Region::Crossing;
    }
    Region::Guard
}

/// Target `proto_entry`: stat records and directory listings ([`crate::entry`]).
pub fn entry(data: &[u8]) {
    if let Ok(s) = Stat::decode(data) {
        assert_eq!(Stat::decode(&s.encode()), Ok(s), "stat round trip");
    }
    if let Ok(entries) = DirEntry::decode_all(data) {
        let mut out = Vec::with_capacity(data.len());
        for e in &entries {
            e.encode_into(&mut out);
        }
        assert_eq!(entries.iter().map(DirEntry::encoded_len).sum::<usize>(), data.len());
        // The encoding has no free bits: a decoded listing encodes to the same bytes.
        assert_eq!(out, data, "directory listing round trip");
    }
}

/// Target `proto_path`: path normalization and tenant names ([`crate::path`]). A
/// normalized path stays inside the namespace and normalizes to itself; a valid tenant
/// name (a directory name on the proxy) is one plain path component.
pub fn path(data: &[u8]) {
    if let Ok(p) = crate::path::normalize(data) {
        assert!(p.len() <= data.len() && p.len() <= MAX_PATH, "{p:?}");
        assert!(!p.contains('\0'), "{p:?}");
        if !p.is_empty() {
            for c in p.split('/') {
                assert!(!matches!(c, "" | "." | ".."), "component {c:?} in {p:?}");
                assert!(c.len() <= crate::path::MAX_COMPONENT, "{p:?}");
            }
        }
        assert_eq!(crate::path::normalize(p.as_bytes()).as_deref(), Ok(p.as_str()), "normalization is idempotent");
        if p.len() + 2 <= MAX_PATH {
            assert_eq!(crate::path::normalize(format!("/{p}/").as_bytes()).as_deref(), Ok(p.as_str()));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if crate::path::valid_tenant_name(s) {
            assert_eq!(crate::path::normalize(data).as_deref(), Ok(s), "tenant name {s:?} is one plain component");
        }
    }
}

/// Target `proto_wire`: DPU–proxy frames ([`crate::wire`]): the length prefix, and the
/// request and response bodies, decoded from the input itself and from the body its
/// length prefix announces.
pub fn wire(data: &[u8]) {
    let body = match frame_len(data) {
        Ok(None) => {
            assert!(data.len() < LEN_PREFIX);
            None
        }
        Ok(Some(n)) => {
            assert!(n <= MAX_FRAME);
            data.get(LEN_PREFIX..LEN_PREFIX + n)
        }
        Err(_) => None,
    };
    for b in std::iter::once(data).chain(body) {
        wire_body(b);
    }
}

fn wire_body(b: &[u8]) {
    let mut out = Vec::new();
    if let Ok(r) = ProxyRequest::decode(b) {
        assert!(r.req.tenant.len() <= MAX_TENANT_NAME && r.req.path.len() <= MAX_PATH, "{:?}", r.req);
        assert!(r.payload.len() <= MAX_IO_BYTES as usize);
        r.req.encode_frame(r.payload, &mut out).expect("a decoded proxy request encodes");
        assert_eq!(frame_len(&out), Ok(Some(out.len() - LEN_PREFIX)));
        let d = ProxyRequest::decode(&out[LEN_PREFIX..]).expect("an encoded proxy request decodes");
        assert_eq!((&d.req, d.payload), (&r.req, r.payload), "proxy request round trip");
    }
    if let Ok((r, payload)) = ProxyResponse::decode(b) {
        assert!(payload.len() <= MAX_IO_BYTES as usize);
        r.encode_frame(payload, &mut out);
        assert_eq!(frame_len(&out), Ok(Some(out.len() - LEN_PREFIX)));
        assert_eq!(ProxyResponse::decode(&out[LEN_PREFIX..]), Ok((r, payload)), "proxy response round trip");
        // A redirect's payload is a route table (and anything else must not decode
        // into one that fails its own checks).
        route_table(payload);
    }
    route_table(b);
}

/// A route table (the payload of a `Redirect`): decodes only when valid, round-trips,
/// and every slot computation stays in range.
fn route_table(b: &[u8]) {
    use crate::route::{RouteInput, RouteTable};
    if let Ok(t) = RouteTable::decode(b) {
        assert!(t.validate().is_ok(), "{t:?}");
        assert_eq!(RouteTable::decode(&t.encode()).as_ref(), Ok(&t), "route table round trip");
        let (h, tail) = b.split_at(b.len().min(8));
        let key = h.iter().fold(0u64, |k, &x| k << 8 | u64::from(x));
        let path = std::str::from_utf8(tail).unwrap_or("p");
        for input in [
            RouteInput::File { tenant: "t", path, location: key, offset: key },
            RouteInput::File { tenant: "t", path, location: 0, offset: 0 },
            RouteInput::Volume { name: path, offset: key },
        ] {
            let slot = t.slot(input);
            assert!(slot < t.slots());
            assert!(t.owner(slot).map_or(true, |o| o < t.members.len()));
        }
    }
}

/// Hand-made seeds of fuzz target `target` of this crate: valid messages of its format
/// (and, for `proto_config`, IO ranges at region boundaries). The ignored test
/// `write_seeds` stores them as `fuzz/seeds/<target>/valid-N`; rerun it after a format
/// change (`docs/fuzzing.md`).
pub fn valid_seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::admin::{AdminOp, QosClass};
    use crate::entry::Kind;
    use crate::io::{flags, Op, SdkHint};
    use crate::Status;
    let header = |op: Op, payload: &[u8]| {
        let h = RequestHeader {
            op,
            queue_id: 3,
            pid: 42,
            session_id: 0x1234_5678_9abc_def0,
            request_id: 7,
            file_handle: 1,
            offset: 4096,
            length: 512,
            flags: flags::CREATE | flags::WRITE,
            payload_len: payload.len() as u32,
            hint: SdkHint {
                location_key: 9,
                reroute: 1,
                retry_forbidden_len: 2,
                retry_forbidden: [4, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
        };
        let mut b = vec![0u8; HEADER_SIZE];
        h.encode_into(&mut b);
        b.extend_from_slice(payload);
        b
    };
    match target {
        "proto_io" => {
            let mut r = vec![0u8; HEADER_SIZE];
            let resp = ResponseHeader {
                op: 3,
                status: Status::NotFound,
                queue_id: 3,
                request_id: 7,
                result: 512,
                payload_len: 512,
                flags: flags::MORE,
            };
            resp.encode_into(&mut r);
            vec![header(Op::Open, b"/dir/file"), header(Op::Write, &[0xab; 64]), header(Op::Read, &[]), r]
        }
        "proto_admin" => {
            let mut hello = AdminRequest::new(AdminOp::Hello, 42);
            hello.tenant = "acme".into();
            hello.mailbox = 17;
            hello.exchange_key = [0x11; NONCE_LEN];
            hello.nonce = [0x22; NONCE_LEN];
            let open = AdminRequest {
                op: AdminOp::OpenSession,
                exchange_id: 9,
                grant_flags: crate::admin::GRANT_READ_ONLY,
                prefix: "/data/in".into(),
                mac: [0x33; 32],
                ..hello.clone()
            };
            let queue = AdminRequest {
                op: AdminOp::CreateQueue,
                session_id: 5,
                seq: 3,
                qos: QosClass::Bandwidth,
                mailbox: crate::admin::SESSION_MAILBOX,
                tenant: String::new(),
                ..hello.clone()
            };
            let resp = AdminResponse {
                op: 1,
                session_id: 5,
                seq: 1,
                area: 2,
                max_queues: 16,
                heartbeat_interval_ms: 1000,
                session_timeout_ms: 10_000,
                ..Default::default()
            };
            let mut seeds: Vec<Vec<u8>> =
                [hello, open, queue].iter().map(|r| r.encode().map(|b| b.to_vec()).unwrap_or_default()).collect();
            // A sealed answer (the target opens it with the key its first bytes give, so it
            // is refused, as a forged answer is).
            seeds.push(resp.seal(0, &[0; NONCE_LEN]).to_vec());
            seeds
        }
        "proto_seal" => vec![header(Op::Write, &[0xab; 4096]), header(Op::Read, &[]), vec![0x5a; 700]],
        "proto_config" => {
            let g = Geometry { areas: 64, queues_per_area: 16 };
            let io = |areas: u16, qpa: u8, offset: u64, len: u32| {
                let mut b = areas.to_le_bytes().to_vec();
                b.push(qpa);
                b.extend_from_slice(&offset.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
                b
            };
            vec![
                ConfigSpace { geometry: g, name: "pov0".into(), features: crate::layout::features::ALL }.encode().to_vec(),
                io(64, 16, ADMIN_REQ_OFFSET, 512),
                io(2, 2, Geometry { areas: 2, queues_per_area: 2 }.capacity_bytes(), 0),
                io(1, 1, Geometry { areas: 1, queues_per_area: 1 }.request_slot(0) + SLOT_SIZE - 512, 1024),
                io(4096, 64, Geometry { areas: 4096, queues_per_area: 64 }.response_slot(7) + 4096, 1 << 20),
            ]
        }
        "proto_entry" => {
            let mut list = Vec::new();
            for e in [
                DirEntry { kind: Kind::Dir, size: 0, name: "sub".into() },
                DirEntry { kind: Kind::File, size: 1 << 33, name: "été.txt".into() },
            ] {
                e.encode_into(&mut list);
            }
            vec![Stat { kind: Kind::File, mode: 0o644, size: 12345, mtime_ns: 1_700_000_000_000_000_000 }.encode().to_vec(), list]
        }
        "proto_path" => ["/a//b/./c", "../other/secret", "dir/file.txt", "acme-1", "/", "a/\0b"]
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect(),
        "proto_wire" => {
            let mut req = Vec::new();
            let r = ProxyRequest {
                tag: 11,
                offset: 4096,
                length: 512,
                session_id: 5,
                ..ProxyRequest::new(Op::Write, "acme", "dir/file")
            };
            r.encode_frame(b"payload", &mut req).unwrap_or_default();
            let mut resp = Vec::new();
            ProxyResponse { op: 3, tag: 11, status: Status::Ok, result: 4, flags: 0 }.encode_frame(b"data", &mut resp);
            let table = crate::route::RouteTable::hashed(3, vec!["tcp:127.0.0.1:4420".into(), "tls:proxy-b:4420".into()], 8)
                .map(|t| t.encode())
                .unwrap_or_default();
            let mut redirect = Vec::new();
            ProxyResponse { op: 3, tag: 12, status: Status::Redirect, result: 0, flags: 0 }.encode_frame(&table, &mut redirect);
            vec![req, resp, redirect]
        }
        _ => Vec::new(),
    }
}

/// Runs every file of the seed corpus `fuzz/seeds/<target>/` through `check` (the body
/// of the fuzz target `target`); returns the number of files. This is how each crate's
/// tests replay the corpora on a stable toolchain.
///
/// # Panics
/// If the corpus is missing or empty, or (naming the file) if `check` panics.
pub fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()));
    let mut files: Vec<_> = entries.map(|e| e.expect("corpus directory entry").path()).collect();
    files.sort();
    assert!(!files.is_empty(), "seed corpus {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if let Err(p) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("fuzz target {target} failed on seed {}", f.display());
            std::panic::resume_unwind(p);
        }
    }
    files.len()
}

/// Stores `seeds` as `fuzz/seeds/<target>/valid-N` (for the crates' `write_seeds`
/// tests).
///
/// # Panics
/// If a file cannot be written.
pub fn write_valid_seeds(target: &str, seeds: &[Vec<u8>]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for (i, s) in seeds.iter().enumerate() {
        let f = dir.join(format!("valid-{i}"));
        std::fs::write(&f, s).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_corpora_replay() {
        for (target, check) in TARGETS.into_iter().zip(CHECKS) {
            assert!(replay(target, check) > 0);
            // The hand-made seeds as this build encodes them (the stored ones may be of
            // an older format).
            let seeds = valid_seeds(target);
            assert!(!seeds.is_empty(), "{target}");
            for s in seeds {
                check(&s);
            }
        }
    }

    const TARGETS: [&str; 7] =
        ["proto_io", "proto_admin", "proto_seal", "proto_config", "proto_entry", "proto_path", "proto_wire"];
    const CHECKS: [fn(&[u8]); 7] = [io_headers, admin, seal, config_space, entry, path, wire];

    /// Regenerates the hand-made seeds (`valid_seeds`) in `fuzz/seeds/`.
    #[test]
    #[ignore = "writes fuzz/seeds/: run by hand after a format change"]
    fn write_seeds() {
        for target in TARGETS {
            write_valid_seeds(target, &valid_seeds(target));
        }
    }

    /// The bodies accept the inputs every fuzzer starts from.
    #[test]
    fn trivial_inputs() {
        for data in [&[][..], &[0u8; 1], &[0xff; 600]] {
            for check in CHECKS {
                check(data);
            }
        }
    }
}
