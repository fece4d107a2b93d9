//! Fuzz target bodies (feature `fuzzing`): the virtqueue chain parser and the JSON-RPC
//! server. The cargo-fuzz targets `virtio_chain` and `rpc` in `fuzz/` call them; the
//! test `tests/fuzz_corpus.rs` replays their seed corpora `fuzz/seeds/<target>/`.

use crate::daemon::{Daemon, DeviceFactory};
use crate::rpc::{codes, handle_value};
use crate::rpc::{RpcLimits, RpcServer};
use crate::vhost_blk::request::{parse_chain, GuestBuffer, ParsedRequest, Segment, HEADER_LEN};
use arbitrary::{Arbitrary, Unstructured};
use bdev_pov::testing::MemDisk;
use bdev_pov::{BlockDevice, BlockOp, IoBuffer};
use pov_runtime::transport::{self, Connecting, Connector, Endpoint, Listener, TransportError};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest memory of the chain target: 128 KiB at 0 and (input byte 0, bit 4) 4 KiB at
/// [`HIGH`], with a gap between.
const LOW_SIZE: u64 = 0x2_0000;
/// Start of the optional second memory region.
const HIGH: u64 = 0x3_0000;
/// Where the input's memory contents go (past the rings of the largest queue).
const HEAP: u64 = 0x2000;

/// Reads an input front to back; past its end every read is zero.
struct Bytes0<'a>(&'a [u8]);

impl Bytes0<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let n = N.min(self.0.len());
        a[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        a
    }
}

/// Target `virtio_chain`: descriptor chains of a split virtqueue in guest memory built
/// from the input, through [`parse_chain`] (as the vring poller calls it) and the
/// [`GuestBuffer`] of every request it accepts. Never panics, every loop ends (the
/// chain iterator is bounded by the queue size), and the parser's verdict matches a
/// reference computed from the chain's descriptors: the right segments, the status
/// byte at the end of the device-writable part, and data inside guest memory.
///
/// Input layout: byte 0 = `log2(queue size) % 9` in bits 0-3, a second memory region
/// in bit 4, an explicit avail index in bit 5; byte 1 = number of descriptors; byte 2
/// = number of avail ring entries; bytes 3-4 = the avail index (if bit 5); then 16
/// bytes per descriptor (`addr: u64, len: u32, flags: u16, next: u16`; an address
/// below 2^32 is taken modulo 0x32000, so most land in or near guest memory); then 2
/// bytes per avail entry (a head index, modulo twice the queue size); the rest is
/// copied into guest memory at [`HEAP`] (headers, data, indirect tables).
pub fn virtio_chain(data: &[u8]) {
    let mut r = Bytes0(data);
    let [mode, n_desc, n_heads] = r.take::<3>();
    let avail_idx = u16::from_le_bytes(r.take::<2>());
    let size = 1u16 << ((mode & 0xf) % 9);
    let mut ranges = vec![(GuestAddress(0), LOW_SIZE as usize)];
    if mode & 0x10 != 0 {
        ranges.push((GuestAddress(HIGH), 0x1000));
    }
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"));
    let descs: Vec<RawDescriptor> = (0..u16::from(n_desc).min(size))
        .map(|_| {
            let addr = u64::from_le_bytes(r.take::<8>());
            let addr = if addr < 1 << 32 { addr % 0x3_2000 } else { addr };
            let (len, flags, next) =
                (u32::from_le_bytes(r.take::<4>()), u16::from_le_bytes(r.take::<2>()), u16::from_le_bytes(r.take::<2>()));
            RawDescriptor::from(Descriptor::new(addr, len, flags, next))
        })
        .collect();
    let heads: Vec<u16> = (0..u16::from(n_heads).min(size)).map(|_| u16::from_le_bytes(r.take::<2>()) % (2 * size)).collect();
    let heap = &r.0[..r.0.len().min((LOW_SIZE - HEAP) as usize)];
    mem.write_slice(heap, GuestAddress(HEAP)).expect("the heap is inside guest memory");
    let q = MockSplitQueue::new(&*mem, size);
    for (i, d) in descs.iter().enumerate() {
        q.desc_table().store(i as u16, *d).expect("a descriptor inside the table");
    }
    for (i, h) in heads.iter().enumerate() {
        q.avail().ring().ref_at(i).expect("an avail entry inside the ring").store(*h);
    }
    q.avail().idx().store(if mode & 0x20 != 0 { avail_idx } else { heads.len() as u16 });
    let mut queue: Queue = q.create_queue().expect("a valid mock queue");
    let Ok(chains) = queue.iter(&*mem) else { return };
    let mut seen = 0usize;
    for chain in chains {
        seen += 1;
        assert!(seen <= size as usize, "more chains than the queue holds");
        let head = chain.head_index();
        let descs: Vec<Descriptor> = chain.clone().collect();
        let got = parse_chain(head, chain, &mem);
        check_chain(&mem, head, &descs, &got);
        if let Ok(req) = got {
            check_buffer(&mem, req);
        }
    }
    let _ = queue.next_avail();
}

/// Compares [`parse_chain`]'s verdict on the chain of `descs` with a reference.
fn check_chain(
    mem: &GuestMemoryMmap,
    head: u16,
    descs: &[Descriptor],
    got: &Result<ParsedRequest, crate::vhost_blk::request::BadChain>,
) {
    let segs: Vec<(Segment, bool)> =
        descs.iter().filter(|d| d.len() > 0).map(|d| (Segment { addr: d.addr(), len: d.len() }, d.is_write_only())).collect();
    let readable: Vec<Segment> = segs.iter().filter(|(_, w)| !w).map(|(s, _)| *s).collect();
    let writable: Vec<Segment> = segs.iter().filter(|(_, w)| *w).map(|(s, _)| *s).collect();
    let ordered = segs.iter().skip_while(|(_, w)| !w).all(|(_, w)| *w);
    let in_memory = segs.iter().all(|(s, _)| mem.check_range(s.addr, s.len as usize));
    let sum = |v: &[Segment]| v.iter().map(|s| u64::from(s.len)).sum::<u64>();
    match got {
        Err(bad) => {
            assert_eq!(bad.head, head);
            if let Some(a) = bad.status {
                let last = writable.last().expect("a status address comes from a writable descriptor");
                assert_eq!(a.0, last.addr.0 + u64::from(last.len) - 1, "{bad:?}");
            }
            let short_header = sum(&readable) < HEADER_LEN as u64;
            let why_ok = !ordered || !in_memory || writable.is_empty() || short_header || bad.why == "sector out of range";
            assert!(why_ok, "parse_chain refused a good chain ({}): {descs:?}", bad.why);
        }
        Ok(req) => {
            assert_eq!(req.head, head);
            assert!(ordered && in_memory && !writable.is_empty() && sum(&readable) >= HEADER_LEN as u64, "{descs:?}");
            let last = writable.last().expect("checked above");
            assert_eq!(req.status.0, last.addr.0 + u64::from(last.len) - 1, "status byte at the end");
            assert_eq!(req.offset % 512, 0);
            assert!(req.data.iter().all(|s| s.len > 0 && mem.check_range(s.addr, s.len as usize)), "{req:?}");
            let data = sum(&req.data);
            match req.op {
                BlockOp::Read | BlockOp::GetId => assert_eq!(data, sum(&writable) - 1, "{req:?}"),
                BlockOp::Write => assert_eq!(data, sum(&readable) - HEADER_LEN as u64, "{req:?}"),
                BlockOp::Flush | BlockOp::Other(_) => assert_eq!(data, 0, "{req:?}"),
            }
        }
    }
}

/// Copies through the buffer of an accepted request: whole, byte by byte at the ends,
/// and out of range (which fails).
fn check_buffer(mem: &Arc<GuestMemoryMmap>, req: ParsedRequest) {
    let mut b = GuestBuffer::new(mem.clone(), req.data);
    let len = b.len();
    // The whole buffer, or (for a large one) 4 KiB at each end.
    let window = if len <= 256 * 1024 { len } else { 4096 };
    let mut part = vec![0u8; window];
    for at in [0, len - window] {
        b.read_at(at, &mut part).expect("the buffer is in guest memory");
        b.write_at(at, &part).expect("the buffer is in guest memory");
        let mut one = [0u8; 1];
        if window > 0 {
            b.read_at(at + window - 1, &mut one).expect("the buffer is in guest memory");
            assert_eq!(one[0], part[window - 1]);
        }
    }
    assert!(b.read_at(len, &mut [0u8; 1]).is_err());
    assert!(b.write_at(usize::MAX, &[0]).is_err());
}

/// Hand-made seeds of `virtio_chain`: a READ with two data descriptors, a WRITE with
/// data in the header's descriptor, FLUSH, GET_ID, a chain through an indirect table,
/// a loop, and a readable descriptor after the status.
pub fn chain_seeds() -> Vec<Vec<u8>> {
    const W: u16 = 2;
    const N: u16 = 1;
    const I: u16 = 4;
    let seed = |descs: &[(u64, u32, u16, u16)], heads: &[u16], heap: &[u8]| {
        let mut b = vec![4 | 0x10, descs.len() as u8, heads.len() as u8, 0, 0];
        for &(a, l, f, n) in descs {
            b.extend_from_slice(&a.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
            b.extend_from_slice(&f.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
        for h in heads {
            b.extend_from_slice(&h.to_le_bytes());
        }
        b.extend_from_slice(heap);
        b
    };
    let header = |t: u32, sector: u64| [&t.to_le_bytes()[..], &[0; 4], &sector.to_le_bytes()].concat();
    let (h, d, s) = (HEAP, HEAP + 0x100, HEAP + 0x1000);
    let indirect: Vec<u8> = [(h, 16u32, N, 1u16), (d, 512, W | N, 2), (s, 1, W, 0)]
        .iter()
        .flat_map(|&(a, l, f, n)| [&a.to_le_bytes()[..], &l.to_le_bytes(), &f.to_le_bytes(), &n.to_le_bytes()].concat())
        .collect();
    let table = HEAP + 0x200;
    let mut with_table = header(0, 8);
    with_table.resize(0x200, 0);
    with_table.extend_from_slice(&indirect);
    vec![
        seed(&[(h, 16, N, 1), (d, 4096, W | N, 2), (d + 8192, 512, W | N, 3), (s, 1, W, 0)], &[0], &header(0, 8)),
        seed(&[(h, 16 + 1024, N, 1), (s, 1, W, 0)], &[0], &header(1, 1)),
        seed(&[(h, 16, N, 1), (s, 1, W, 0), (h, 16, N, 3), (d, 20, W | N, 1)], &[0, 2], &[header(4, 0), header(8, 0)].concat()),
        seed(&[(table, 48, I, 0)], &[0], &with_table),
        seed(&[(h, 16, N, 1), (s, 1, W | N, 0)], &[0], &header(0, 0)),
        seed(&[(h, 16, N, 1), (d, 512, W | N, 2), (s, 1, N, 0)], &[0], &header(0, u64::MAX)),
        seed(&[(HIGH + 0xff0, 32, N, 1), (LOW_SIZE - 8, 16, W, 0)], &[0, 0, 1], &[]),
    ]
}

/// A `tcp` connector that never connects (it checks syntax like the real one): the
/// RPC target's calls may name any endpoint, and none may leave the process.
struct NoTcp;

impl Connector for NoTcp {
    fn scheme(&self) -> &'static str {
        "tcp"
    }
    fn check(&self, address: &str) -> Result<(), String> {
        transport::tcp::TcpConnector.check(address)
    }
    fn connect(&self, ep: &Endpoint) -> Result<Box<dyn Connecting>, TransportError> {
        Err(TransportError::Connect { endpoint: ep.to_string(), source: std::io::ErrorKind::PermissionDenied.into() })
    }
    fn listen(&self, _address: &str) -> std::io::Result<Box<dyn Listener>> {
        Err(std::io::ErrorKind::PermissionDenied.into())
    }
}

/// The reactor the RPC target's devices run on (started once per process, never
/// stopped), after the `tcp` scheme is replaced by [`NoTcp`].
fn reactors() -> &'static [pov_runtime::ReactorHandle] {
    static R: OnceLock<pov_runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| {
        transport::register(Arc::new(NoTcp));
        pov_runtime::Runtime::start(&[None], pov_runtime::ReactorConfig::default()).expect("a reactor")
    })
    .reactors()
}

/// A device factory whose PoV devices are RAM disks that write the call that
/// recreates them (for the RPC target and `tests/rpc.rs`).
pub fn memdisk_factory() -> DeviceFactory {
    Arc::new(|cfg, _tenants| {
        if cfg.proxies.is_empty() {
            return Err("at least one proxy endpoint is needed".into());
        }
        let call = json!({"method": "pov_device_create", "params": cfg});
        Ok(Box::new(MemDisk::new(1 << 20, &format!("pov-{}", cfg.name)).with_config_json(call)) as Box<dyn BlockDevice>)
    })
}

#[derive(Arbitrary, Debug)]
struct RpcInput {
    items: Vec<Item>,
    /// Bytes for a second server whose daemon has no reactor (so nothing in them can
    /// create a socket anywhere).
    raw: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Item {
    Call(Call),
    /// A batch (an empty one is an invalid request).
    Batch(Vec<Call>),
}

#[derive(Arbitrary, Debug)]
struct Call {
    id: Id,
    /// From 250 on, `"jsonrpc"` is not `"2.0"`.
    version: u8,
    method: Method,
    params: Option<Params>,
    /// Whitespace after the value.
    space: u8,
}

#[derive(Arbitrary, Debug)]
enum Id {
    Absent,
    Null,
    Num(u32),
    Str(String),
}

#[derive(Arbitrary, Debug)]
enum Method {
    /// One of the server's methods.
    Known(u8),
    Other(String),
    NotAString(u8),
}

#[derive(Arbitrary, Debug)]
enum Params {
    /// Parameters the method accepts (names of objects `n0`..`n3` chosen by the
    /// number), then the listed ones set or replaced.
    Valid(u8, Vec<(Key, Val)>),
    Object(Vec<(Key, Val)>),
    Array(Vec<Val>),
    Scalar(Val),
}

#[derive(Arbitrary, Debug)]
enum Key {
    /// One of [`KEYS`].
    Known(u8),
    Other(String),
}

/// Parameter names of the server's methods (and one that none takes).
const KEYS: [&str; 24] = [
    "name",
    "secret",
    "socket",
    "proxies",
    "num_queues",
    "max_sessions",
    "heartbeat_interval_ms",
    "session_timeout_ms",
    "request_timeout_ms",
    "virtqueues",
    "reactor",
    "size",
    "block_size",
    "volume",
    "null",
    "enabled",
    "batch_size",
    "window_us",
    "current",
    "include_aliases",
    "with_batches",
    "bogus",
    "name",
    "proxies",
];

/// Endpoints a call may name (any other string may be given too: `tcp` never connects,
/// see [`NoTcp`]).
const ENDPOINTS: [&str; 7] = ["tcp:127.0.0.1:1", "mem:fuzz-none", "127.0.0.1:9", "rdma:1.2.3.4:5", "", "tcp:", "tcp:[::1]:9"];

#[derive(Arbitrary, Debug)]
enum Val {
    Null,
    Bool(bool),
    U(u64),
    Small(u8),
    I(i64),
    F(f64),
    Str(String),
    /// A short name (`n0`..`n3`), so that calls meet the objects others created.
    Name(u8),
    Endpoints(Vec<u8>),
    List(Vec<u8>),
}

impl Val {
    fn json(&self, key: &str, dir: &Path) -> Value {
        if key == "socket" {
            // Sockets only ever go in this call's directory.
            let n = match self {
                Val::Small(n) | Val::Name(n) => *n,
                Val::U(n) => *n as u8,
                Val::Null => return Value::Null,
                _ => 0,
            };
            return json!(dir.join(format!("{}.sock", n % 4)));
        }
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => json!(b),
            Val::U(n) => json!(n),
            Val::Small(n) => json!(n),
            Val::I(n) => json!(n),
            Val::F(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Val::Str(s) => json!(s),
            Val::Name(n) => json!(format!("n{}", n % 4)),
            Val::Endpoints(v) => json!(v.iter().map(|i| ENDPOINTS[*i as usize % ENDPOINTS.len()]).collect::<Vec<_>>()),
            Val::List(v) => json!(v),
        }
    }
}

impl Call {
    /// The request as JSON, and the answer the server must give (`{"id"}`, with
    /// `"code"` if it must be that error), if any.
    fn json(&self, dir: &Path) -> (Value, Option<Value>) {
        let mut o = Map::new();
        let id = match &self.id {
            Id::Absent => None,
            Id::Null => Some(Value::Null),
            Id::Num(n) => Some(json!(n)),
            Id::Str(s) => Some(json!(s)),
        };
        if let Some(id) = &id {
            o.insert("id".into(), id.clone());
        }
        let bad_version = self.version >= 250;
        o.insert("jsonrpc".into(), json!(if bad_version { "1.0" } else { "2.0" }));
        let names = crate::rpc::method_names();
        let method = match &self.method {
            Method::Known(i) => json!(names[*i as usize % names.len()]),
            Method::Other(s) => json!(s),
            Method::NotAString(n) => json!(n),
        };
        let method_ok = method.is_string();
        let method_name = method.as_str().unwrap_or_default().to_string();
        o.insert("method".into(), method);
        match &self.params {
            None => {}
            Some(Params::Object(kv)) => {
                o.insert("params".into(), Value::Object(object(Map::new(), kv, dir)));
            }
            Some(Params::Valid(n, kv)) => {
                o.insert("params".into(), Value::Object(object(valid_params(&method_name, *n, dir), kv, dir)));
            }
            Some(Params::Array(v)) => {
                o.insert("params".into(), Value::Array(v.iter().map(|v| v.json("", dir)).collect()));
            }
            Some(Params::Scalar(v)) => {
                o.insert("params".into(), v.json("", dir));
            }
        }
        // A notification (no id) of a well-formed request gets no answer; a malformed
        // request is answered with -32600, an unknown method with -32601.
        let unknown = matches!(&self.method, Method::Other(m) if !names.contains(&m.as_str()));
        let answer = if id.is_some() || bad_version || !method_ok {
            let mut a = json!({ "id": id.unwrap_or(Value::Null) });
            if bad_version || !method_ok {
                a["code"] = json!(codes::INVALID_REQUEST);
            } else if unknown {
                a["code"] = json!(codes::METHOD_NOT_FOUND);
            }
            Some(a)
        } else {
            None
        };
        (Value::Object(o), answer)
    }
}

/// `p` with the pairs `kv` set (a `socket` always in `dir`).
fn object(mut p: Map<String, Value>, kv: &[(Key, Val)], dir: &Path) -> Map<String, Value> {
    for (k, v) in kv {
        let k = match k {
            Key::Known(i) => KEYS[*i as usize % KEYS.len()].to_string(),
            Key::Other(s) => s.clone(),
        };
        let v = v.json(&k, dir);
        p.insert(k, v);
    }
    p
}

/// Parameters `method` accepts, naming object `n{n % 4}` (socket `dir/{n % 4}.sock`).
fn valid_params(method: &str, n: u8, dir: &Path) -> Map<String, Value> {
    let name = format!("n{}", n % 4);
    let socket = dir.join(format!("{}.sock", n % 4));
    let v = match method {
        "pov_tenant_create" => json!({ "name": name, "secret": "s3cret" }),
        "pov_tenant_delete" | "pov_device_delete" | "pov_volume_delete" | "pov_device_get_devices" => json!({ "name": name }),
        "pov_device_create" => json!({ "name": name, "socket": socket, "proxies": ["tcp:127.0.0.1:1"] }),
        "pov_volume_create" => json!({ "name": name, "socket": socket, "size": 1 << 20, "null": true }),
        "pov_set_gathering" => json!({ "enabled": n % 2 == 0, "batch_size": 1 + u32::from(n), "window_us": n }),
        "framework_get_config" => json!({ "name": "pov" }),
        _ => json!({}),
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Longest request stream the RPC target sends to one server, bytes: it is written
/// whole before the server starts reading, so it must fit in the socket buffer.
const MAX_STREAM: usize = 64 * 1024;

/// Target `rpc`: JSON-RPC requests generated from the input (every method, parameters
/// of the right names with values of any type, ids of every kind, notifications,
/// batches, a wrong version) sent as one byte stream to the server's connection loop
/// on a daemon with one reactor and RAM-disk PoV devices; then the input's raw bytes
/// to a second server whose daemon has no reactor. Never panics (a handler's panic
/// aborts the fuzzer before the server turns it into an error), and every answer is a
/// valid JSON-RPC response: for the generated requests, exactly the answers expected
/// (one per request with an id, or malformed), in order, with their ids.
pub fn rpc(data: &[u8]) {
    let Ok(input) = RpcInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let reactors = reactors();
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!("pov-fuzz-rpc-{}-{}", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("a directory for the sockets");
    let mut stream = Vec::new();
    let mut expected: Vec<Value> = Vec::new();
    for item in &input.items {
        let (v, answer, space) = match item {
            Item::Call(c) => {
                let (v, a) = c.json(&dir);
                (v, a, c.space)
            }
            Item::Batch(calls) => {
                let (vs, answers): (Vec<Value>, Vec<Option<Value>>) = calls.iter().map(|c| c.json(&dir)).unzip();
                let answers: Vec<Value> = answers.into_iter().flatten().collect();
                let answer = if vs.is_empty() {
                    Some(json!({ "id": null, "code": codes::INVALID_REQUEST }))
                } else {
                    (!answers.is_empty()).then_some(Value::Array(answers))
                };
                (Value::Array(vs), answer, 0)
            }
        };
        let bytes = serde_json::to_vec(&v).expect("JSON");
        if stream.len() + bytes.len() + 2 > MAX_STREAM {
            break;
        }
        stream.extend_from_slice(&bytes);
        stream.extend_from_slice(&b" \n\t\r"[..(space % 3) as usize]);
        expected.extend(answer);
    }
    let daemon = Arc::new(Daemon::new(reactors.to_vec(), memdisk_factory()));
    let replies = serve(&daemon, &dir, &stream);
    assert_eq!(replies.len(), expected.len(), "answers to {:?}", String::from_utf8_lossy(&stream));
    for (r, want) in replies.iter().zip(&expected) {
        match (r, want) {
            (Value::Array(rs), Value::Array(ws)) => {
                assert_eq!(rs.len(), ws.len(), "batch answers: {r}");
                for (r, w) in rs.iter().zip(ws) {
                    check_response(r, Some(w));
                }
            }
            _ => check_response(r, Some(want)),
        }
    }
    drop(daemon);
    // The raw bytes: answers must be well formed, whatever the bytes.
    let raw = &input.raw[..input.raw.len().min(MAX_STREAM)];
    let bare = Arc::new(Daemon::new(Vec::new(), memdisk_factory()));
    let replies = serve(&bare, &dir, raw);
    let _ = std::fs::remove_dir_all(&dir);
    for (i, r) in replies.iter().enumerate() {
        match r {
            Value::Array(rs) => {
                assert!(!rs.is_empty(), "empty batch answer");
                rs.iter().for_each(|r| check_response(r, None));
            }
            r => {
                check_response(r, None);
                if r["error"]["code"] == json!(codes::PARSE_ERROR) {
                    assert_eq!(i, replies.len() - 1, "the connection closes after a parse error");
                }
            }
        }
    }
    // The server's entry point for decoded values as well.
    if let Ok(v) = serde_json::from_slice::<Value>(raw) {
        if let Some(r) = handle_value(&*bare, v) {
            match &r {
                Value::Array(rs) => rs.iter().for_each(|r| check_response(r, None)),
                r => check_response(r, None),
            }
        }
    }
}

/// Starts the control socket server (`rpc::server`, one worker, no idle timeout) for
/// `daemon` on a socket in `dir`, sends `bytes` on one connection, closes its write
/// side and returns the answers (one JSON value a line) once the server closed it;
/// then stops the server.
fn serve(daemon: &Arc<Daemon>, dir: &Path, bytes: &[u8]) -> Vec<Value> {
    let path = dir.join("rpc.sock");
    let limits = RpcLimits { workers: 1, idle_timeout: None, ..RpcLimits::default() };
    let server = RpcServer::start_with(&path, daemon.clone(), limits).expect("the RPC server starts");
    let mut client = UnixStream::connect(&path).expect("connect to the RPC server");
    // The answers are read by another thread while this one writes (the server reads
    // a connection's next request only after its answer was written), joined (not
    // scoped: a scoped thread may still hold its own handle when the scope ends, which
    // LeakSanitizer reports).
    let mut rx = client.try_clone().expect("a second handle of the connection");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        rx.read_to_end(&mut out).map(|_| out)
    });
    // The server closes the connection after a parse error or an over-long request,
    // so the rest of the stream may not be written.
    let _ = client.write_all(bytes);
    let _ = client.shutdown(std::net::Shutdown::Write);
    let out = reader.join().expect("the reader thread").expect("read the answers");
    server.stop();
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap_or_else(|e| panic!("answer {:?} is not JSON: {e}", String::from_utf8_lossy(l))))
        .collect()
}

/// Checks one response object: JSON-RPC 2.0, an id (the expected one and, for an
/// expected error, its code), and exactly one of a result or an error with an integer
/// code and a message.
fn check_response(r: &Value, want: Option<&Value>) {
    let o = r.as_object().unwrap_or_else(|| panic!("answer {r} is not an object"));
    assert_eq!(o.get("jsonrpc"), Some(&json!("2.0")), "{r}");
    let id = o.get("id").unwrap_or_else(|| panic!("answer {r} has no id"));
    assert!(id.is_null() || id.is_string() || id.is_number(), "{r}");
    match (o.get("result"), o.get("error")) {
        (Some(_), None) => {}
        (None, Some(e)) => {
            assert!(e["code"].is_i64() && e["message"].is_string(), "{r}");
        }
        _ => panic!("answer {r} needs exactly one of result and error"),
    }
    if let Some(w) = want {
        assert_eq!(id, &w["id"], "answer {r} to another request");
        if let Some(code) = w.get("code") {
            assert_eq!(&r["error"]["code"], code, "{r}");
        }
    }
}
