//! Unit tests of the driver (device, session, files, CLI copies) against the real PoV
//! device and proxy, run in process by [`crate::harness`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pov_proto::entry::{DirEntry, Kind};
use pov_proto::io::{Op, RequestHeader, SdkHint};
use pov_proto::layout::{Geometry, HEADER_SIZE};
use pov_proto::testing::pattern;
use pov_proto::{Status, MAX_IO_BYTES};

use crate::engine::encode_request;
use crate::error::Chain;
use crate::harness::{Stack, SECRET, TENANT};
use crate::transport::{BlockOp, Lane};
use crate::{status_of, Device, ErrorKind, OpenOptions, Session};

/// Longest a test waits for something to happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// A stack with the default device and a 4-queue session on it.
fn setup() -> (Stack, Device, Session) {
    let stack = Stack::start(|_| {});
    let dev = stack.device();
    let s = Session::open(&dev, TENANT, SECRET, 4).unwrap();
    (stack, dev, s)
}

/// List requests the proxy needs for `entries` (in listing order): it fills each page
/// with up to 1 MiB of encoded entries.
fn list_pages(entries: &[DirEntry]) -> usize {
    let (mut pages, mut used) = (1, 0);
    for e in entries {
        if used + e.encoded_len() > MAX_IO_BYTES as usize {
            pages += 1;
            used = 0;
        }
        used += e.encoded_len();
    }
    pages
}

/// What the other tests observe through the harness is real: it counts the handles the
/// driver holds and notices a queue reused before its response was read.
#[test]
fn harness_sees_handles_and_queue_reuse() {
    let (stack, dev, s) = setup();
    let f = s.create("/h").unwrap();
    assert_eq!(stack.open_handles(), 1);
    f.close().unwrap();
    assert_eq!(stack.open_handles(), 0);
    assert!(stack.violations().is_empty(), "{:?}", stack.violations());

    // Two requests on one queue before reading the first response, as a broken driver
    // would send them (the session itself uses queue index 0 here, never 3).
    let q = s.queue_ids()[3];
    let g = dev.geometry();
    let t = dev.transport();
    let hdr = RequestHeader {
        op: Op::Stat,
        queue_id: q,
        pid: std::process::id(),
        session_id: s.info().session_id,
        request_id: 1 << 40,
        file_handle: 0,
        offset: 0,
        length: 0,
        flags: 0,
        payload_len: 1,
        hint: SdkHint::default(),
    };
    let mut req = t.alloc_buf(4096).unwrap();
    let n = encode_request(&mut req, &hdr, b"/");
    s.keys().seal_request(q, 1 << 40, &mut req[..HEADER_SIZE + 1], pov_proto::io::REQUEST_TAG_OFFSET);
    t.submit(Lane::Data(3), &mut [BlockOp::write(g.request_slot(q), &mut req, n)]).unwrap();
    let _ = t.submit(Lane::Data(3), &mut [BlockOp::write(g.request_slot(q), &mut req, n)]);
    assert_eq!(stack.violations(), vec![format!("queue {q} reused before its response was read")]);
    let mut resp = t.alloc_buf(4096).unwrap();
    t.submit(Lane::Data(3), &mut [BlockOp::read(g.response_slot(q), &mut resp, 4096)]).unwrap();
    s.close().unwrap();
}

#[test]
fn device_validates_config() {
    let stack = Stack::start(|_| {});
    let dev = stack.device();
    assert_eq!(dev.name(), "dev0");
    assert_eq!(dev.geometry(), Geometry::new(4, 8).unwrap());

    // A configuration space damaged on its way to the driver: a bad magic, all zeros.
    stack.faults().mangle_config(Some(|b| b[0] = b'X'));
    let e = Device::from_transport(stack.transport()).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotPovDevice);
    assert!(Chain(&e).to_string().contains("bad magic"), "{e}");
    stack.faults().mangle_config(Some(|b| b.fill(0)));
    let e = Device::from_transport(stack.transport()).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::NotPovDevice);
    stack.faults().mangle_config(None);
    assert_eq!(stack.device().name(), "dev0");
}

#[test]
fn session_lifecycle() {
    let stack = Stack::start(|_| {});
    let dev = stack.device();
    let e = Session::open(&dev, TENANT, b"wrong", 2).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Admin(Status::AuthFailed));
    assert_eq!(e.status(), Some(Status::AuthFailed));
    assert!(e.to_string().contains("acme"), "{e}");
    assert_eq!(Session::open(&dev, "../evil", SECRET, 2).unwrap_err().kind(), &ErrorKind::InvalidArgument);
    assert_eq!(Session::open(&dev, TENANT, SECRET, 0).unwrap_err().kind(), &ErrorKind::InvalidArgument);

    // More queues than the area holds: capped at max_queues.
    let s = Session::open(&dev, TENANT, SECRET, 100).unwrap();
    assert_eq!(s.queue_ids().len(), 8);
    assert_eq!(stack.stats().queues, 8);
    s.close().unwrap();
    // The device frees a closed session's area at its next keep-alive check.
    stack.wait_for("the session and its queues to go", |st| (st.sessions, st.queues) == (0, 0));

    // Drop closes too.
    {
        let _s = Session::open(&dev, TENANT, SECRET, 3).unwrap();
        let st = stack.stats();
        assert_eq!((st.sessions, st.queues), (1, 3));
    }
    stack.wait_for("the dropped session to go", |st| (st.sessions, st.queues) == (0, 0));

    // Opening and closing a session of 8 queues takes four admin exchanges: Hello,
    // OpenSession, one CreateQueue for all 8, CloseSession (it was 2 + 8 + 8 + 1).
    let before = stack.stats().admin_requests;
    let s = Session::open(&dev, TENANT, SECRET, 8).unwrap();
    assert_eq!(s.queue_ids().len(), 8);
    s.close().unwrap();
    assert_eq!(stack.stats().admin_requests - before, 4);
    stack.wait_for("the 8-queue session to go", |st| (st.sessions, st.queues) == (0, 0));
}

/// A closed session's queues are free at once: a tenant at its queue limit can close a
/// session and open the next right away (the device used to free them only at its next
/// reclaim check, 100 ms later, and the next open failed with `Quota`).
#[test]
fn a_closed_sessions_queues_are_free_at_once() {
    let stack = Stack::start(|c| c.max_queues_per_tenant = Some(8));
    let dev = stack.device();
    for round in 0..5 {
        let s = Session::open(&dev, TENANT, SECRET, 8).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(s.queue_ids().len(), 8);
        s.close().unwrap();
        assert_eq!(stack.stats().queues, 0, "round {round}");
    }
}

/// Another process writing admin requests between ours and our read of the answer,
/// one of them aimed at our mailbox, does not disturb the exchange (protocol v1 had
/// one shared answer record: the driver then saw `AdminMismatch`).
#[test]
fn another_process_cannot_disturb_admin_exchanges() {
    let stack = Stack::start(|_| {});
    let dev = stack.device();
    stack.faults().race_admin(true);
    let s = Session::open(&dev, TENANT, SECRET, 2).expect("open despite the other process");
    s.write("/raced", b"ok").unwrap();
    assert_eq!(s.read("/raced").unwrap(), b"ok");
    s.close().expect("close despite the other process");
    assert!(stack.stats().admin_mailbox_busy > 0, "the request aimed at our mailbox was refused");
}

#[test]
fn large_io_is_split_into_one_mib_requests() {
    let (stack, _dev, s) = setup();
    let data = pattern(1, 3 * MAX_IO_BYTES as usize + 12345);
    let f = s.create("/big/file.bin").unwrap();
    assert_eq!(f.write_at(&data, 0).unwrap(), data.len());
    let writes: Vec<_> = stack.requests().into_iter().filter(|r| r.0 == Op::Write).collect();
    assert_eq!(writes.len(), 4);
    assert!(writes.iter().all(|w| w.1 <= MAX_IO_BYTES));
    assert_eq!(stack.file("big/file.bin").unwrap(), data);

    let mut back = vec![0u8; data.len() + 100];
    assert_eq!(f.read_at(&mut back, 0).unwrap(), data.len(), "short only at EOF");
    assert_eq!(&back[..data.len()], &data[..]);
    let reads: Vec<_> = stack.requests().into_iter().filter(|r| r.0 == Op::Read).collect();
    assert!(reads.iter().all(|r| r.2 <= MAX_IO_BYTES && r.1 == 0));

    // Unaligned offsets and lengths.
    let mut mid = vec![0u8; 1_500_000];
    f.read_exact_at(&mut mid, 777).unwrap();
    assert_eq!(&mid[..], &data[777..777 + 1_500_000]);
    assert_eq!(f.read_at(&mut mid, data.len() as u64 + 5).unwrap(), 0);
    let e = f.read_exact_at(&mut mid, data.len() as u64 - 10).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    assert_eq!(f.stat().unwrap().size, data.len() as u64);
    assert!(stack.violations().is_empty(), "{:?}", stack.violations());
}

#[test]
fn file_operations() {
    let (stack, _dev, s) = setup();
    let f = s.create("/d/a").unwrap();
    assert_eq!(f.append(b"hello").unwrap(), 0);
    assert_eq!(f.append(b" world").unwrap(), 5);
    assert_eq!(f.append(b"").unwrap(), 11);
    f.write_at(b"J", 0).unwrap();
    f.set_len(5).unwrap();
    f.sync().unwrap();
    assert_eq!(s.read("/d/a").unwrap(), b"Jello");
    let st = s.stat("d/a").unwrap();
    assert_eq!((st.kind, st.size), (Kind::File, 5));
    assert_eq!(s.stat("/d").unwrap().kind, Kind::Dir);
    f.close().unwrap();

    // Zero-byte files.
    s.write("/d/empty", b"").unwrap();
    assert_eq!(s.read("/d/empty").unwrap(), b"");

    // Read-only handles cannot write; create_new refuses existing files.
    let ro = s.open_file("/d/a", &OpenOptions::new()).unwrap();
    let e = ro.write_at(b"x", 0).unwrap_err();
    assert_eq!(status_of(&e), Some(Status::Permission));
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    drop(ro);
    let e = s.open_file("/d/a", OpenOptions::new().write(true).create_new(true)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    let e = s.open_file("/nope", &OpenOptions::new()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("open /nope"), "{e}");
    assert_eq!(s.stat("/nope").unwrap_err().kind(), std::io::ErrorKind::NotFound);

    // Remove: files, empty dirs; non-empty dirs need remove_all.
    let e = s.remove("/d").unwrap_err();
    assert_eq!(status_of(&e), Some(Status::NotEmpty));
    s.remove("/d/empty").unwrap();
    s.write("/d/e/f/g", b"1").unwrap();
    s.create_dir_all("/d/empty/dir").unwrap();
    s.create_dir_all("/d/empty/dir").unwrap();
    assert!(s.list("/d/empty/dir").unwrap().is_empty());
    assert_eq!(s.stat("/d/empty").unwrap().kind, Kind::Dir);
    assert_eq!(s.create_dir_all("/d/e/f/g").unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    s.remove_all("/d").unwrap();
    assert!(s.list("/").unwrap().is_empty());
    assert_eq!(stack.open_handles(), 0, "every handle closed");
}

/// `File` as std's: `io::copy` in and out, `BufReader` lines, seeks from each end.
#[test]
fn files_are_read_write_seek() {
    use std::io::{BufRead, Read, Seek, SeekFrom, Write};
    let (_stack, _dev, s) = setup();
    let data = pattern(11, 3 * MAX_IO_BYTES as usize + 77);
    let mut f = s.create("/rws/big").unwrap();
    assert_eq!(std::io::copy(&mut &data[..], &mut f).unwrap(), data.len() as u64);
    f.write_all(b"\nline two\nline three\n").unwrap();
    f.flush().unwrap();
    assert_eq!(f.stream_position().unwrap(), data.len() as u64 + 21);
    assert_eq!(f.seek(SeekFrom::End(-11)).unwrap(), data.len() as u64 + 10);
    let mut tail = String::new();
    f.read_to_string(&mut tail).unwrap();
    assert_eq!(tail, "line three\n");
    assert_eq!(f.seek(SeekFrom::Current(-20)).unwrap(), data.len() as u64 + 1);
    let lines: Vec<String> = std::io::BufReader::new(&f).lines().map(Result::unwrap).collect();
    assert_eq!(lines, ["line two", "line three"]);
    assert_eq!(f.seek(SeekFrom::Current(-(i64::MAX))).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    f.rewind().unwrap();
    let mut back = Vec::new();
    std::io::copy(&mut (&f).take(data.len() as u64), &mut back).unwrap();
    assert!(back == data, "io::copy out");
    assert_eq!(f.read_at(&mut [0u8; 4], 0).unwrap(), 4, "positional reads leave the cursor alone");
    assert_eq!(f.stream_position().unwrap(), data.len() as u64);
    f.close().unwrap();
}

/// Names and attributes end to end (library → DPU → proxy → local backend): mkdir,
/// rename (replacing or not), modes and mtimes, statfs; each one request.
#[test]
fn names_and_attributes() {
    let (stack, _dev, s) = setup();
    let kind = |e: std::io::Error| e.kind();
    s.create_dir("/a", None).unwrap();
    assert_eq!(s.create_dir("/a", None).map_err(kind), Err(std::io::ErrorKind::AlreadyExists));
    assert_eq!(s.create_dir("/x/y", None).map_err(kind), Err(std::io::ErrorKind::NotFound));
    let before = stack.count(Op::Mkdir);
    s.create_dir_all("/x/y/z").unwrap();
    assert_eq!(stack.count(Op::Mkdir), before + 1, "mkdir -p is one request");
    s.create_dir("/m", Some(0o751)).unwrap();
    assert_eq!(s.stat("/m").unwrap().mode, 0o751);
    // An atomic replace, the way a careful writer updates a file.
    s.write("/a/f", b"old").unwrap();
    s.write("/a/f.tmp", b"new").unwrap();
    assert_eq!(s.rename_noreplace("/a/f.tmp", "/a/f").map_err(kind), Err(std::io::ErrorKind::AlreadyExists));
    s.rename("/a/f.tmp", "/a/f").unwrap();
    assert_eq!(s.read("/a/f").unwrap(), b"new");
    assert_eq!(s.stat("/a/f.tmp").map_err(kind).unwrap_err(), std::io::ErrorKind::NotFound);
    s.rename("/a", "/x/y/z/a").unwrap();
    assert_eq!(s.read("/x/y/z/a/f").unwrap(), b"new", "a tree moves whole");
    let e = s.rename("/x", "/x/y/inside").unwrap_err();
    assert_eq!(status_of(&e), Some(Status::Invalid), "{e}");
    assert!(e.to_string().contains("/x -> /x/y/inside"), "the error names both paths: {e}");
    assert_eq!(stack.file("x/y/z/a/f").as_deref(), Some(&b"new"[..]), "on the backend, under the new name");
    // Modes and times.
    s.set_attr("/x/y/z/a/f", Some(0o640), Some(1_234_567_890_000_000_007)).unwrap();
    let st = s.stat("/x/y/z/a/f").unwrap();
    assert_eq!((st.mode, st.mtime_ns, st.size), (0o640, 1_234_567_890_000_000_007, 3));
    assert_eq!(s.set_attr("/", Some(0o777), None).map_err(kind), Err(std::io::ErrorKind::PermissionDenied));
    let f = s.statfs("/").unwrap();
    assert!(f.block_size > 0 && f.blocks > 0 && f.blocks_available <= f.blocks, "{f:?}");
    s.remove_all("/x").unwrap();
    s.remove_all("/m").unwrap();
}

#[test]
fn listing_pages_and_large_responses() {
    let (stack, _dev, s) = setup();
    // The proxy fills a page with up to 1 MiB of entries: 4000 entries of 265 bytes
    // take two pages.
    let long = "n".repeat(250);
    let names: Vec<String> = (0..4000).map(|i| format!("{long}{i:04}")).collect();
    std::thread::scope(|sc| {
        for part in names.chunks(1000).enumerate() {
            let s = &s;
            sc.spawn(move || {
                for (j, name) in part.1.iter().enumerate() {
                    let i = part.0 * 1000 + j;
                    s.write(&format!("/dir/{name}"), &[0u8; 3][..i % 4]).unwrap();
                }
            });
        }
    });
    s.write("/dir/sub/x", b"x").unwrap();
    let entries = s.list("/dir").unwrap();
    assert_eq!(entries.len(), 4001);
    let files: HashSet<&str> = entries.iter().filter(|e| e.kind == Kind::File).map(|e| e.name.as_str()).collect();
    assert!(names.iter().all(|n| files.contains(n.as_str())));
    assert!(entries.iter().any(|e| e.name == "sub" && e.kind == Kind::Dir));
    assert_eq!(list_pages(&entries), 2);
    assert_eq!(stack.count(Op::List), 2, "4001 entries at up to 1 MiB per page");
    assert_eq!(status_of(&s.list("/dir/sub/x").unwrap_err()), Some(Status::NotDir));
}

#[test]
fn list_response_larger_than_first_read() {
    let stack = Stack::start(|_| {});
    let dev = stack.device();
    let s = Session::open(&dev, TENANT, SECRET, 1).unwrap();
    // One page holds everything: ~200 KiB of entries, more than the 64 KiB first read.
    let long = "m".repeat(240);
    for i in 0..800 {
        s.write(&format!("/many/{long}{i:04}"), b"").unwrap();
    }
    let entries = s.list("/many").unwrap();
    assert_eq!(entries.len(), 800);
    assert_eq!(stack.count(Op::List), 1);
}

#[test]
fn threads_share_a_session_and_never_overlap_on_a_queue() {
    let stack = Stack::start(|_| {});
    let dev = stack.device();
    let s = Arc::new(Session::open(&dev, TENANT, SECRET, 2).unwrap());
    let handles: Vec<_> = (0..8u8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let data = pattern(u64::from(t), 200_000 + t as usize);
                let path = format!("/t/{t}");
                let f = s.create(&path).unwrap();
                for (i, chunk) in data.chunks(7_000).enumerate() {
                    f.write_at(chunk, (i * 7_000) as u64).unwrap();
                }
                f.close().unwrap();
                assert_eq!(s.read(&path).unwrap(), data);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(stack.violations().is_empty(), "{:?}", stack.violations());
    Arc::try_unwrap(s).unwrap().close().unwrap();
    stack.wait_for("the session to go", |st| st.sessions == 0);
}

#[test]
fn heartbeats_run_and_a_reclaimed_session_is_surfaced() {
    let stack = Stack::start(|c| {
        c.heartbeat_interval_ms = 5;
        c.session_timeout_ms = 500;
    });
    let dev = stack.device();
    let no_failover = crate::SessionOptions { queues: 1, failover_timeout: None, ..Default::default() };
    let s = Session::open_with(&dev, TENANT, SECRET, &no_failover).unwrap();
    assert_eq!(s.info().heartbeat_interval, Duration::from_millis(5));
    let f = s.create("/hb").unwrap();
    let t0 = Instant::now();
    while s.heartbeats() < 3 {
        assert!(t0.elapsed() < PATIENCE, "heartbeats never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Heartbeats stop reaching the device: it reclaims the session, and the first
    // heartbeat that gets through again is told so.
    stack.faults().lose_heartbeats(true);
    stack.wait_for("the device to reclaim the session", |st| st.sessions_reclaimed >= 1);
    stack.faults().lose_heartbeats(false);
    let t0 = Instant::now();
    while s.check().is_ok() {
        assert!(t0.elapsed() < PATIENCE, "reclaim never noticed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let e = f.write_at(b"x", 0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
    assert!(e.to_string().contains("reclaimed"), "{e}");
    drop(f);
    let e = s.close().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed);
}

/// Heartbeat WRITEs refused for longer than one admin exchange retries (as when another
/// process keeps every shared mailbox busy) are a refusal, not a lost device: the
/// session does not fail over (another process must not be able to make it).
#[test]
fn refused_heartbeats_do_not_fail_a_session_over() {
    let stack = Stack::start(|c| {
        c.heartbeat_interval_ms = 5;
        c.session_timeout_ms = 10_000;
    });
    let dev = stack.device();
    let s = Session::open(&dev, TENANT, SECRET, 1).unwrap();
    let id = s.current_session_id();
    stack.faults().lose_heartbeats(true);
    // Longer than the ~1 s one admin exchange spends trying 32 mailboxes.
    std::thread::sleep(Duration::from_millis(1800));
    stack.faults().lose_heartbeats(false);
    let h0 = s.heartbeats();
    let t0 = Instant::now();
    while s.heartbeats() <= h0 {
        assert!(t0.elapsed() < PATIENCE, "heartbeats did not resume");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.failovers(), 0, "refused heartbeats alone do not fail the session over");
    assert_eq!(s.current_session_id(), id);
    s.write("/still", b"here").unwrap();
    s.close().unwrap();
}

/// With failover (the default), a session the device reclaimed is opened again by
/// itself: its open file is opened again under the new session and keeps working, and
/// what was written before is there.
#[test]
fn a_reclaimed_session_fails_over_and_its_files_keep_working() {
    let stack = Stack::start(|c| {
        c.heartbeat_interval_ms = 5;
        c.session_timeout_ms = 500;
    });
    let dev = stack.device();
    let s = Session::open(&dev, TENANT, SECRET, 2).unwrap();
    let first_id = s.info().session_id;
    let f = s.create("/fo").unwrap();
    f.write_at(b"before", 0).unwrap();
    stack.faults().lose_heartbeats(true);
    stack.wait_for("the device to reclaim the session", |st| st.sessions_reclaimed >= 1);
    stack.faults().lose_heartbeats(false);
    let t0 = Instant::now();
    while s.failovers() == 0 {
        assert!(t0.elapsed() < PATIENCE, "the reclaimed session never failed over");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.check().unwrap();
    f.write_at(b"-after", 6).unwrap();
    let mut buf = [0u8; 12];
    assert_eq!(f.read_at(&mut buf, 0).unwrap(), 12);
    assert_eq!(&buf, b"before-after");
    assert_ne!(f.handle(), 0, "the file was opened again");
    assert_eq!(s.queue_ids().len(), 2, "the queues were created again");
    assert_ne!(s.current_session_id(), first_id, "a new session");
    let (h0, t0) = (s.heartbeats(), Instant::now());
    while s.heartbeats() <= h0 + 2 {
        assert!(t0.elapsed() < PATIENCE, "heartbeats did not resume on the new session");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.check().unwrap();
    drop(f);
    s.close().unwrap();
}

#[test]
fn closed_session_fails_file_ops_cleanly() {
    let stack = Stack::start(|_| {});
    let dev = stack.device();
    let s = Session::open(&dev, TENANT, SECRET, 1).unwrap();
    let f = s.create("/x").unwrap();
    s.close().unwrap();
    let e = f.read_at(&mut [0u8; 4], 0).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotConnected);
    assert_eq!(f.close().unwrap_err().kind(), std::io::ErrorKind::NotConnected);
}

#[cfg(feature = "cli")]
fn tree_of(root: &std::path::Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, Option<Vec<u8>>)>) {
        let mut es: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        es.sort();
        for p in es {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                out.push((rel, None));
                walk(root, &p, out);
            } else {
                out.push((rel, Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[cfg(feature = "cli")]
#[test]
fn cli_copies_trees_in_and_out() {
    use crate::cli::{cat, copy, ls, rm, CopyOptions, Loc};
    let (stack, _dev, s) = setup();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("zero"), b"").unwrap();
    std::fs::write(src.join("one"), b"1").unwrap();
    std::fs::write(src.join("sub/page"), pattern(3, 4096)).unwrap();
    std::fs::write(src.join("sub/deeper/big"), pattern(4, 3 * (1 << 20) + 7)).unwrap();
    std::fs::write(src.join("sub/exact"), pattern(5, 1 << 20)).unwrap();

    let local = |p: &std::path::Path| Loc::Local(p.to_path_buf());
    let e = copy(&s, &local(&src), &Loc::parse("pov:/tree"), &CopyOptions::new(false), 4).unwrap_err();
    assert!(e.to_string().contains("use -r"), "{e}");
    let summary = copy(&s, &local(&src), &Loc::parse("pov:/tree"), &CopyOptions::new(true), 4).unwrap();
    assert!(summary.starts_with("copied 5 files"), "{summary}");
    assert!(summary.contains("MiB/s"), "{summary}");
    assert_eq!(stack.file("tree/sub/deeper/big").unwrap(), pattern(4, 3 * (1 << 20) + 7));
    assert_eq!(stack.file("tree/zero").unwrap(), b"");
    assert_eq!(s.stat("/tree/empty").unwrap().kind, Kind::Dir, "empty directories are kept");

    let out = tmp.path().join("out");
    copy(&s, &Loc::parse("pov:/tree"), &local(&out), &CopyOptions::new(true), 4).unwrap();
    assert_eq!(tree_of(&src), tree_of(&out));

    // Into an existing directory: lands under the source's name.
    copy(&s, &Loc::parse("pov:/tree/one"), &local(&out), &CopyOptions::new(false), 1).unwrap();
    assert_eq!(std::fs::read(out.join("one")).unwrap(), b"1");
    copy(&s, &local(&src.join("sub/page")), &Loc::parse("pov:/tree/sub/"), &CopyOptions::new(false), 2).unwrap();
    copy(&s, &Loc::parse("pov:/tree/sub/deeper/big"), &Loc::parse("pov:/copy/big2"), &CopyOptions::new(false), 3).unwrap();
    assert_eq!(stack.file("copy/big2").unwrap(), pattern(4, 3 * (1 << 20) + 7));
    assert!(copy(&s, &local(&src), &local(&out), &CopyOptions::new(true), 1).is_err(), "local to local refused");
    let e = copy(&s, &Loc::parse("pov:/nothing"), &local(&out), &CopyOptions::new(false), 1).unwrap_err();
    assert!(e.to_string().contains("no such file"), "{e}");

    let mut text = Vec::new();
    cat(&s, "/tree/sub/deeper/big", &mut text).unwrap();
    assert_eq!(text, pattern(4, 3 * (1 << 20) + 7));
    let mut text = Vec::new();
    cat(&s, "/tree/sub/exact", &mut text).unwrap();
    assert_eq!(text.len(), 1 << 20);

    let mut listing = Vec::new();
    ls(&s, "/tree", false, &mut listing).unwrap();
    assert_eq!(String::from_utf8(listing).unwrap(), "empty/\none\nsub/\nzero\n");
    let mut listing = Vec::new();
    ls(&s, "/tree/one", true, &mut listing).unwrap();
    assert_eq!(String::from_utf8(listing).unwrap(), "-              1 one\n");

    assert!(rm(&s, "/tree", false, false).unwrap_err().to_string().contains("use -r"));
    assert!(rm(&s, "/", true, false).is_err());
    assert!(rm(&s, "/missing", false, false).is_err());
    rm(&s, "/missing", false, true).unwrap();
    rm(&s, "/tree", true, false).unwrap();
    assert_eq!(s.stat("/tree").unwrap_err().kind(), std::io::ErrorKind::NotFound);
    assert_eq!(stack.open_handles(), 0);
    assert!(stack.violations().is_empty());
}

/// `cp` writes each file under a temporary name and renames it into place (no
/// `.pov-part` file is left, an overwrite replaces the whole file), `-p` keeps mode
/// and mtime both ways, and a failed copy leaves nothing under the real name.
#[cfg(feature = "cli")]
#[test]
fn cli_copies_land_whole_and_keep_attributes() {
    use crate::cli::{copy, CopyOptions, Loc};
    use std::os::unix::fs::PermissionsExt;
    let (stack, _dev, s) = setup();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/big"), pattern(7, 3 << 20)).unwrap();
    std::fs::write(src.join("small"), b"small").unwrap();
    std::fs::set_permissions(src.join("small"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    std::fs::File::options().write(true).open(src.join("small")).unwrap().set_modified(when).unwrap();
    let local = |p: &std::path::Path| Loc::Local(p.to_path_buf());
    s.write("/t/src/d/big", b"an older, shorter version").unwrap();
    let renames = stack.count(Op::Rename);
    let p = CopyOptions { preserve: true, ..CopyOptions::new(true) };
    copy(&s, &local(&src), &Loc::parse("pov:/t"), &p, 4).unwrap();
    assert_eq!(stack.count(Op::Rename), renames + 2, "each file renamed into place");
    assert_eq!(stack.file("t/src/d/big").unwrap(), pattern(7, 3 << 20), "overwritten whole");
    let st = s.stat("/t/src/small").unwrap();
    assert_eq!((st.mode, st.mtime_ns), (0o640, 1_500_000_000 * 1_000_000_000), "-p into PoV");
    let names = |dir: &str| s.list(dir).unwrap().into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names("/t/src"), ["d", "small"], "no temporary name left");
    assert_eq!(names("/t/src/d"), ["big"]);
    // Out again with -p: the local file gets PoV's attributes.
    s.set_attr("/t/src/d/big", Some(0o604), Some(1_600_000_000 * 1_000_000_000)).unwrap();
    let out = tmp.path().join("out");
    copy(&s, &Loc::parse("pov:/t/src"), &local(&out), &p, 4).unwrap();
    let m = std::fs::metadata(out.join("d/big")).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o604);
    assert_eq!(m.modified().unwrap(), std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    assert_eq!(std::fs::read(out.join("d/big")).unwrap(), pattern(7, 3 << 20));
    let mut left: Vec<_> = std::fs::read_dir(out.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    left.sort();
    assert_eq!(left, ["big"], "no temporary name left locally");
    // Standard input, 2.5 MiB through a reader that hands out odd-sized pieces.
    struct Dribble(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for Dribble {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = b.len().min(70_001);
            self.0.read(&mut b[..n])
        }
    }
    let piped = pattern(9, 5 << 19);
    let summary =
        crate::cli::copy_stdin(&s, &mut Dribble(std::io::Cursor::new(piped.clone())), &Loc::parse("pov:/t/in"), true).unwrap();
    assert!(summary.starts_with(&format!("copied standard input ({} bytes", piped.len())), "{summary}");
    assert!(stack.file("t/in").unwrap() == piped, "stdin copied whole");
    let e = crate::cli::copy_stdin(&s, &mut &b"x"[..], &Loc::parse("pov:/t"), true).unwrap_err().to_string();
    assert!(e.contains("is a directory"), "{e}");
    // A copy that fails (its destination's parent is a file) leaves nothing behind.
    s.write("/blocker", b"x").unwrap();
    assert!(copy(&s, &local(&src.join("small")), &Loc::parse("pov:/blocker/x"), &CopyOptions::new(false), 1).is_err());
    assert_eq!(names("/"), ["blocker", "t"]);
    s.remove_all("/t").unwrap();
}

/// `pov-host mkdir`, `mv`, `chmod`, `df`, parsed as the command line would be.
#[cfg(feature = "cli")]
#[test]
fn cli_mkdir_mv_chmod_df() {
    use crate::cli::{run_with_session, Cli};
    use clap::Parser;
    let (stack, _dev, s) = setup();
    let run = |args: &[&str]| {
        let cli = Cli::try_parse_from(std::iter::once("pov-host").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        run_with_session(&cli.command, &s, 2).map_err(|e| crate::cli::error_chain(&e))
    };
    run(&["mkdir", "-p", "-m", "750", "pov:/a/b/c"]).unwrap();
    assert_eq!(s.stat("/a/b/c").unwrap().mode, 0o750);
    run(&["mkdir", "-p", "-m", "750", "pov:/a/b/c"]).unwrap();
    let e = run(&["mkdir", "pov:/a"]).unwrap_err();
    assert!(e.contains("mkdir pov:/a") && e.contains("exists"), "{e}");
    assert!(run(&["mkdir", "-m", "4755", "/x"]).unwrap_err().contains("at most 777"));
    assert!(run(&["chmod", "9", "/x"]).unwrap_err().contains("not an octal mode"));
    s.write("/f", b"data").unwrap();
    run(&["chmod", "604", "/f"]).unwrap();
    assert_eq!(s.stat("/f").unwrap().mode, 0o604);
    // mv into an existing directory keeps the name; -n refuses to replace.
    run(&["mv", "pov:/f", "pov:/a/b"]).unwrap();
    assert_eq!(stack.file("a/b/f").as_deref(), Some(&b"data"[..]));
    s.write("/g", b"other").unwrap();
    let e = run(&["mv", "-n", "/g", "/a/b/f"]).unwrap_err();
    assert!(e.contains("mv pov:/g pov:/a/b/f") && e.contains("exists"), "{e}");
    run(&["mv", "/g", "/a/b/f"]).unwrap();
    assert_eq!(stack.file("a/b/f").as_deref(), Some(&b"other"[..]), "replaced");
    let e = run(&["mv", "/a", "/a/b/c/a"]).unwrap_err();
    assert!(e.contains("invalid"), "{e}");
    run(&["df"]).unwrap();
    run(&["stat", "/a/b/f"]).unwrap();
    s.remove_all("/a").unwrap();
}

/// `cp` as cp(1) decides: symbolic links inside a tree are skipped unless `-L`, a link
/// back into the tree never loops, the operand itself is followed, `-n` keeps existing
/// files and `-i` asks about each.
#[cfg(feature = "cli")]
#[test]
fn cli_copy_links_and_overwrites() {
    use crate::cli::{copy, CopyOptions, Loc, Overwrite};
    use std::os::unix::fs::symlink;
    let (stack, _dev, s) = setup();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("real"), b"real").unwrap();
    std::fs::write(tmp.path().join("outside"), b"outside").unwrap();
    symlink(tmp.path().join("outside"), src.join("to-file")).unwrap();
    symlink(&src, src.join("d/loop")).unwrap();
    symlink(tmp.path().join("missing"), src.join("dangling")).unwrap();
    let local = |p: &std::path::Path| Loc::Local(p.to_path_buf());

    let summary = copy(&s, &local(&src), &Loc::parse("pov:/links"), &CopyOptions::new(true), 2).unwrap();
    assert!(summary.starts_with("copied 1 file") && summary.contains("3 symbolic links skipped"), "{summary}");
    assert_eq!(s.stat("/links/to-file").unwrap_err().kind(), std::io::ErrorKind::NotFound);
    let deref = CopyOptions { dereference: true, ..CopyOptions::new(true) };
    let summary = copy(&s, &local(&src), &Loc::parse("pov:/deref"), &deref, 2).unwrap();
    assert!(summary.starts_with("copied 2 files") && summary.contains("1 symbolic link skipped"), "{summary}");
    assert_eq!(stack.file("deref/to-file").unwrap(), b"outside");
    assert_eq!(s.stat("/deref/d/loop").unwrap_err().kind(), std::io::ErrorKind::NotFound, "the loop is not entered");
    // The operand itself is followed.
    copy(&s, &local(&src.join("to-file")), &Loc::parse("pov:/op"), &CopyOptions::new(false), 1).unwrap();
    assert_eq!(stack.file("op").unwrap(), b"outside");

    // -n keeps the existing file; the default overwrites; -i asks and obeys.
    std::fs::write(src.join("real"), b"changed").unwrap();
    let keep = CopyOptions { overwrite: Overwrite::Never, ..CopyOptions::new(false) };
    let summary = copy(&s, &local(&src.join("real")), &Loc::parse("pov:/links/real"), &keep, 1).unwrap();
    assert!(summary.starts_with("copied 0 files") && summary.contains("1 existing not overwritten"), "{summary}");
    assert_eq!(stack.file("links/real").unwrap(), b"real");
    let asked = std::cell::RefCell::new(Vec::new());
    let no = |d: &Loc| {
        asked.borrow_mut().push(d.to_string());
        Ok(false)
    };
    let ask = CopyOptions { overwrite: Overwrite::Ask(&no), ..CopyOptions::new(false) };
    copy(&s, &local(&src.join("real")), &Loc::parse("pov:/links/real"), &ask, 1).unwrap();
    copy(&s, &local(&src.join("real")), &Loc::parse("pov:/links/new"), &ask, 1).unwrap();
    assert_eq!(*asked.borrow(), ["pov:/links/real"], "asked only about the existing file");
    assert_eq!(stack.file("links/real").unwrap(), b"real");
    assert_eq!(stack.file("links/new").unwrap(), b"changed");
    let yes = |_: &Loc| Ok(true);
    let ask = CopyOptions { overwrite: Overwrite::Ask(&yes), ..CopyOptions::new(false) };
    copy(&s, &local(&src.join("real")), &Loc::parse("pov:/links/real"), &ask, 1).unwrap();
    assert_eq!(stack.file("links/real").unwrap(), b"changed");
    copy(&s, &Loc::parse("pov:/links/real"), &local(&src.join("d/x")), &keep, 1).unwrap();
    std::fs::write(src.join("d/x"), b"local").unwrap();
    copy(&s, &Loc::parse("pov:/links/real"), &local(&src.join("d/x")), &keep, 1).unwrap();
    assert_eq!(std::fs::read(src.join("d/x")).unwrap(), b"local", "-n protects local files too");
}

/// The SDK hint's location key: a file opened with one carries it on every request
/// (its Open included), and one opened without carries 0 (the device decides).
#[test]
fn location_keys_ride_on_every_request_of_their_file() {
    let (stack, _dev, s) = setup();
    let keyed = OpenOptions::new().write(true).create(true).location_key(0xfeed).open(&s, "/keyed").unwrap();
    let plain = OpenOptions::new().write(true).create(true).open(&s, "/plain").unwrap();
    let before = stack.locations().len();
    keyed.write_at(b"abc", 0).unwrap();
    let mut buf = [0u8; 3];
    keyed.read_at(&mut buf, 0).unwrap();
    let keyed_ops = stack.locations()[before..].to_vec();
    plain.write_at(b"abc", 0).unwrap();
    let plain_ops = stack.locations()[before + keyed_ops.len()..].to_vec();
    assert_eq!(keyed_ops, vec![(Op::Write, 0xfeed), (Op::Read, 0xfeed)]);
    assert_eq!(plain_ops, vec![(Op::Write, 0)]);
    let opens: Vec<u64> = stack.locations().iter().filter(|(op, _)| *op == Op::Open).map(|(_, k)| *k).collect();
    assert_eq!(opens, vec![0xfeed, 0], "the Open itself is routed by the key");
}

/// Runs `script` with `sh -c` in `dir` (at most 120 s): (success, stdout, stderr).
#[cfg(feature = "fuse")]
fn sh(dir: &std::path::Path, script: &str) -> (bool, String, String) {
    let out = std::process::Command::new("timeout")
        .args(["120", "sh", "-c", script])
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run sh");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Mounts `root` of `s` at `mp` in a thread of `scope`; returns the unmounter and the
/// thread (which returns `serve`'s result once unmounted).
#[cfg(feature = "fuse")]
fn mount_in<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    s: &'s Session,
    mp: &'s std::path::Path,
    opts: crate::fuse::MountOptions,
) -> (Mounted<'s>, std::thread::ScopedJoinHandle<'s, std::io::Result<()>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = scope.spawn(move || crate::fuse::serve(s, mp, &opts, |u| tx.send(u).unwrap()));
    match rx.recv_timeout(PATIENCE) {
        Ok(u) => (Mounted { unmounter: Some(u), mp }, t),
        Err(_) => panic!("mount did not come up: {:?}", t.join()),
    }
}

/// A test's mount: unmounted when dropped (lazily if busy), so a failed assertion
/// ends the server thread instead of leaving the scope waiting for it forever.
#[cfg(feature = "fuse")]
struct Mounted<'s> {
    unmounter: Option<crate::fuse::Unmounter>,
    mp: &'s std::path::Path,
}

#[cfg(feature = "fuse")]
impl Mounted<'_> {
    fn unmount(&mut self) -> std::io::Result<()> {
        self.unmounter.take().expect("mounted").unmount()
    }
}

#[cfg(feature = "fuse")]
impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if let Some(mut u) = self.unmounter.take() {
            if u.unmount().is_err() {
                let _ = crate::fuse::lazy_unmount(self.mp);
            }
        }
    }
}

#[cfg(feature = "fuse")]
fn mounted(mp: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(mp.to_str().unwrap()))
}

/// Real programs on a FUSE mount of a PoV directory: tar extracts a tree (modes kept),
/// SQLite runs transactions, git commits, fscks and clones, `cp -a` and `rsync -a` copy
/// a tree, shell tools rename and remove; the
/// bytes are checked through the session, on the backend and through the mount. Another
/// user of the host cannot enter the mount; what PoV cannot keep (links, set-id bits,
/// foreign owners, non-UTF-8 names) fails with a clear errno; a read-only mount refuses
/// writes with EROFS.
#[cfg(feature = "fuse")]
#[test]
fn fuse_mount_serves_real_programs() {
    use crate::fuse::MountOptions;
    let (stack, _dev, s) = setup();
    s.create_dir("/m", Some(0o755)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    // A source tree: nested directories, an empty file, a 3 MiB file (several 1 MiB
    // requests), an executable.
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("d/big"), pattern(7, 3 << 20)).unwrap();
    std::fs::write(src.join("d/e/run.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(src.join("d/e/run.sh")).unwrap().permissions(), 0o755);
    std::fs::set_permissions(src.join("d/e/run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, _, err) = sh(work.path(), "tar -C src -cf src.tar .");
    assert!(ok, "{err}");

    std::thread::scope(|scope| {
        let opts = MountOptions { root: "pov:/m".into(), ..MountOptions::default() };
        let (mut unmounter, server) = mount_in(scope, &s, &mp, opts);
        assert!(mounted(&mp), "in /proc/self/mounts");
        let m = mp.to_str().unwrap();

        // tar: extract, compare, run the executable from the mount.
        let (ok, _, err) = sh(work.path(), &format!("mkdir {m}/tree && tar -C {m}/tree -xf src.tar && diff -r src {m}/tree"));
        assert!(ok, "tar/diff: {err}");
        assert_eq!(s.read("/m/tree/d/big").unwrap(), pattern(7, 3 << 20), "through the session");
        assert_eq!(stack.file("m/tree/d/big"), Some(pattern(7, 3 << 20)), "on the backend");
        assert_eq!(s.stat("/m/tree/d/e/run.sh").unwrap().mode, 0o755, "tar's mode reached PoV");
        assert_eq!(s.stat("/m/tree/empty").unwrap().size, 0);
        let (ok, out, err) = sh(work.path(), &format!("{m}/tree/d/e/run.sh"));
        assert!(ok && out == "ran\n", "{out} {err}");

        // SQLite: two processes one after the other, transactions and a journal.
        let (ok, out, err) = sh(
            work.path(),
            &format!("sqlite3 {m}/db.sqlite 'create table t(a); begin; insert into t values(1),(2),(3); commit; select sum(a) from t;'"),
        );
        assert!(ok && out.trim() == "6", "sqlite: {out} {err}");
        let (ok, out, err) = sh(
            work.path(),
            &format!("sqlite3 {m}/db.sqlite 'insert into t values(4); pragma integrity_check; select count(*) from t;'"),
        );
        assert_eq!((ok, out.trim()), (true, "ok\n4"), "sqlite again: {err}");

        // git: init, add, commit, fsck, log.
        let git = format!(
            "cd {m} && git init -q repo && cd repo && echo hello > README && git add README && \
             git -c user.name=t -c user.email=t@e commit -q -m first && git fsck --strict 2>&1 && git log --format=%s"
        );
        let (ok, out, err) = sh(work.path(), &git);
        assert!(ok && out.trim_end().ends_with("first"), "git: {out} {err}");
        assert_eq!(s.read("/m/repo/README").unwrap(), b"hello\n");

        // git clone of a local repository onto the mount, and back out of it; cp -a and
        // rsync -a (temporary names renamed into place, modes and mtimes) of the tree.
        let clone = format!(
            "git clone -q {m}/repo {m}/clone && git -C {m}/clone fsck --strict 2>&1 && \
             git clone -q {m}/clone out-clone && cat out-clone/README"
        );
        let (ok, out, err) = sh(work.path(), &clone);
        assert!(ok && out.ends_with("hello\n"), "git clone: {out} {err}");
        let (ok, _, err) = sh(work.path(), &format!("cp -a src {m}/cpa && diff -r src {m}/cpa"));
        assert!(ok, "cp -a: {err}");
        let (ok, out, err) = sh(
            work.path(),
            &format!("rsync -a src/ {m}/rs/ && diff -r src {m}/rs && rsync -a -i --dry-run src/ {m}/rs/ | wc -l"),
        );
        assert!(ok && out.trim() == "0", "rsync -a (a second run has nothing to do: times and modes kept): {out} {err}");
        assert_eq!(s.read("/m/rs/d/big").unwrap(), pattern(7, 3 << 20));

        // Renames (a whole tree, and over an existing file), appends, truncation,
        // removal; the inode table follows the renames.
        let ops = format!(
            "cd {m} && mv tree moved && cat moved/d/e/run.sh >/dev/null && echo a > f && echo b >> f && \
             printf new > g && mv g f && truncate -s 2 f && rm -r moved/d/e && rmdir moved/d/e 2>/dev/null; ls moved/d"
        );
        let (ok, out, err) = sh(work.path(), &ops);
        assert!(ok && out == "big\n", "shell ops: {out} {err}");
        assert_eq!(s.read("/m/f").unwrap(), b"ne");
        assert!(s.stat("/m/tree").is_err() && s.stat("/m/moved/d/big").is_ok());
        let (ok, out, _) = sh(work.path(), &format!("stat -c '%s %a %U' {m}/moved/d/big && df -P {m} | tail -1"));
        assert!(ok && out.starts_with(&format!("{} 644 ", 3 << 20)), "stat (tar kept the mode): {out}");

        // What PoV cannot keep fails clearly, and nothing is left behind.
        for (cmd, want) in [
            ("ln -s f {m}/link", "not permitted"),
            ("ln {m}/f {m}/hard", "not permitted"),
            ("chmod u+s {m}/f", "not permitted"),
            ("chown 4242 {m}/f", "not permitted"),
            ("touch \"$(printf '{m}/bad\\377name')\"", "Invalid argument"),
        ] {
            let (ok, _, err) = sh(work.path(), &cmd.replace("{m}", m));
            assert!(!ok && err.contains(want), "{cmd}: wanted {want:?}, got {err}");
        }
        assert_eq!(s.stat("/m/f").unwrap().mode & 0o7000, 0);
        // Another user of this host cannot enter the mount (no allow_other).
        let (ok, _, err) = sh(work.path(), &format!("setpriv --reuid=65534 --regid=65534 --clear-groups ls {m}"));
        assert!(!ok && err.contains("Permission denied"), "another user: {err}");

        unmounter.unmount().unwrap();
        server.join().unwrap().expect("serve returns Ok once unmounted");
        assert!(!mounted(&mp));
    });

    // Read-only: reads work, every change is EROFS.
    std::thread::scope(|scope| {
        let opts = MountOptions { root: "/m".into(), read_only: true, ..MountOptions::default() };
        let (mut unmounter, server) = mount_in(scope, &s, &mp, opts);
        let m = mp.to_str().unwrap();
        let (ok, out, _) = sh(work.path(), &format!("cat {m}/f"));
        assert!(ok && out == "ne");
        let (ok, _, err) = sh(work.path(), &format!("touch {m}/new"));
        assert!(!ok && err.contains("Read-only file system"), "{err}");
        unmounter.unmount().unwrap();
        server.join().unwrap().unwrap();
    });
    // A root that is not a directory is refused before anything is mounted.
    let e = crate::fuse::serve(&s, &mp, &MountOptions { root: "/m/f".into(), ..MountOptions::default() }, |_| {
        panic!("mounted a file")
    })
    .unwrap_err();
    assert!(e.kind() == std::io::ErrorKind::InvalidInput && e.to_string().contains("not a directory"), "{e}");
    assert!(!mounted(&mp));
}
