//! The one test body every storing [`Backend`] must pass.
//!
//! Each case is a function taking a fresh backend; [`CASES`] lists them and
//! [`run_all`] runs them in turn on one backend (cases use distinct tenants, so they do
//! not disturb each other). In a test module,
//! `pov_proxy::backend_conformance_tests!(expr)` generates one `#[test]` per case,
//! where `expr` evaluates to `(guard, Box<dyn Backend>)` (the guard, e.g. a temporary
//! directory, lives as long as the test).
//!
//! Failures panic with a message naming the operation, as tests expect.
//!
//! A backend that does not store data ([`Backend::stores_data`] `false`: the null
//! backend) runs every case too; only the checks that need stored data are skipped
//! (each case says where), so name, permission and geometry checks run everywhere.

use super::Backend;
use pov_proto::entry::{DirEntry, Kind};
use pov_proto::io::flags::{CREATE, EXCL, TRUNCATE, WRITE};
use pov_proto::{Status, MAX_IO_BYTES};

const MIB: usize = 1 << 20;

pub use pov_proto::testing::pattern;

fn read_all(b: &mut dyn Backend, t: &str, p: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = b.read(t, p, offset, &mut buf).unwrap_or_else(|s| panic!("read {t}/{p}@{offset}: {s}"));
    buf.truncate(n);
    buf
}

fn create(b: &mut dyn Backend, t: &str, p: &str) {
    b.open(t, p, CREATE | WRITE).unwrap_or_else(|s| panic!("create {t}/{p}: {s}"));
}

/// `true` when `b` does not store data (the null backend): a case then stops after
/// its checks that do not depend on stored data (names, permissions, geometry).
fn skip_data(b: &dyn Backend) -> bool {
    !b.stores_data()
}

fn names(entries: &[DirEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.name.as_str()).collect()
}

/// Open: CREATE (with parents), EXCL, TRUNCATE, directories, files used as
/// directories, normalized spellings of one path.
pub fn open_create(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-open";
    assert_eq!(b.open(t, "f", 0), Err(Status::NotFound));
    assert_eq!(b.open(t, "f", WRITE), Err(Status::NotFound));
    create(b, t, "f");
    b.open(t, "f", 0).unwrap();
    b.open(t, "f", WRITE).unwrap();
    b.open(t, "f", CREATE).unwrap();
    assert_eq!(b.open(t, "f", CREATE | EXCL), Err(Status::Exists));
    b.open(t, "g", CREATE | EXCL | WRITE).unwrap();
    // Location keys (routing, pov_proto::route): stable per file, distinct per file
    // unless the backend has none (0).
    let (f1, f2, g) = (b.open(t, "f", 0).unwrap(), b.open(t, "f", WRITE).unwrap(), b.open(t, "g", 0).unwrap());
    assert_eq!(f1, f2, "a file keeps its location key");
    if f1 != 0 || g != 0 {
        assert_ne!(f1, g, "two files, two location keys");
    }
    create(b, t, "d1/d2/d3/f");
    assert_eq!(b.stat(t, "d1").unwrap().kind, Kind::Dir);
    assert_eq!(b.stat(t, "d1/d2").unwrap().kind, Kind::Dir);
    assert_eq!(b.stat(t, "d1/d2/d3/f").unwrap().kind, Kind::File);
    assert_eq!(b.open(t, "d1/d2", 0), Err(Status::IsDir));
    assert_eq!(b.open(t, "d1", CREATE | WRITE), Err(Status::IsDir));
    assert_eq!(b.open(t, "", 0), Err(Status::IsDir));
    assert_eq!(b.open(t, "/", CREATE), Err(Status::IsDir));
    assert_eq!(b.open(t, "f/sub", 0), Err(Status::NotDir));
    assert_eq!(b.open(t, "f/sub", CREATE | WRITE), Err(Status::NotDir));
    b.write(t, "f", 0, b"hello", false).unwrap();
    b.open(t, "f", WRITE).unwrap();
    assert_eq!(b.stat(t, "f").unwrap().size, 5, "open without TRUNCATE keeps data");
    b.open(t, "f", TRUNCATE | WRITE).unwrap();
    assert_eq!(b.stat(t, "f").unwrap().size, 0, "TRUNCATE empties the file");
    create(b, t, "/x//y/./z");
    assert_eq!(b.stat(t, "x/y/z").unwrap().kind, Kind::File);
}

/// Writes and reads at aligned and unaligned offsets, holes, short reads at end of
/// file, reads past it, empty IOs, synchronous writes.
pub fn read_write_offsets(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-rw";
    create(b, t, "f");
    assert_eq!(b.write(t, "f", 0, b"hello world", false), Ok(11));
    assert_eq!(read_all(b, t, "f", 0, 11), b"hello world");
    assert_eq!(b.write(t, "f", 6, b"WORLD", false), Ok(5));
    assert_eq!(read_all(b, t, "f", 0, 64), b"hello WORLD", "short read at end of file");
    let data = pattern(1, 5000);
    assert_eq!(b.write(t, "f", 4093, &data, false), Ok(5000));
    let all = read_all(b, t, "f", 0, 4093 + 5000);
    assert_eq!(all.len(), 9093);
    assert_eq!(&all[..11], b"hello WORLD");
    assert!(all[11..4093].iter().all(|&x| x == 0), "a hole reads as zeros");
    assert_eq!(&all[4093..], &data[..]);
    assert_eq!(read_all(b, t, "f", 4097, 13), &data[4..17], "unaligned read");
    assert_eq!(read_all(b, t, "f", 9000, 1000).len(), 93);
    assert_eq!(read_all(b, t, "f", 9093, 10).len(), 0, "read at end of file");
    assert_eq!(read_all(b, t, "f", 1 << 40, 10).len(), 0, "read far past end of file");
    assert_eq!(read_all(b, t, "f", 0, 0).len(), 0);
    assert_eq!(b.write(t, "f", 3, b"", false), Ok(0));
    assert_eq!(b.write(t, "f", 1, b"E", true), Ok(1), "synchronous write");
    assert_eq!(read_all(b, t, "f", 0, 5), b"hEllo");
    assert_eq!(b.stat(t, "f").unwrap().size, 9093);
}

/// A file larger than one IO (1 MiB), written in several pieces, read back in
/// unaligned 1 MiB pieces.
pub fn large_files(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-large";
    create(b, t, "big");
    let total = 3 * MIB + 777;
    let data = pattern(2, total);
    let mut off = 0usize;
    for len in [1_000_003usize, MIB, MIB, total - 1_000_003 - 2 * MIB] {
        assert_eq!(b.write(t, "big", off as u64, &data[off..off + len], false), Ok(len));
        off += len;
    }
    assert_eq!(b.stat(t, "big").unwrap().size, total as u64);
    let mut off = 333usize;
    let mut got = read_all(b, t, "big", 0, 333);
    while off < total {
        let piece = read_all(b, t, "big", off as u64, MAX_IO_BYTES as usize);
        assert_eq!(piece.len(), MIB.min(total - off));
        got.extend_from_slice(&piece);
        off += piece.len();
    }
    assert!(got == data, "large file read back differs");
}

/// Appends land at the end, one after the other; an empty append reports the size.
pub fn append_sequential(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-append";
    create(b, t, "log");
    assert_eq!(b.append(t, "log", b"abc", false), Ok(0));
    assert_eq!(b.append(t, "log", b"defgh", true), Ok(3));
    assert_eq!(b.append(t, "log", b"", false), Ok(8));
    b.write(t, "log", 20, b"z", false).unwrap();
    assert_eq!(b.append(t, "log", b"!", false), Ok(21));
    let got = read_all(b, t, "log", 0, 64);
    assert_eq!(&got[..8], b"abcdefgh");
    assert_eq!(&got[20..], b"z!");
}

/// Threads appending records of different sizes to one file through their own
/// channels: no record is lost, none overlaps or interleaves with another, and each
/// landed where its append said.
pub fn append_concurrent(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-append-mt";
    create(b, t, "log");
    const THREADS: usize = 4;
    const PER_THREAD: usize = 150;
    let handles: Vec<_> = (0..THREADS)
        .map(|th| {
            let mut ch = b.channel();
            std::thread::spawn(move || {
                let mut landed = Vec::new();
                for i in 0..PER_THREAD {
                    let len = 1 + (th * 7919 + i * 104_729) % 9000;
                    let rec = pattern((th * 1000 + i) as u64 + 7, len);
                    let off = ch.append(t, "log", &rec, false).expect("append");
                    landed.push((off, rec));
                }
                landed
            })
        })
        .collect();
    let mut all: Vec<(u64, Vec<u8>)> = handles.into_iter().flat_map(|h| h.join().expect("appender thread")).collect();
    all.sort_by_key(|(off, _)| *off);
    let total: usize = all.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(b.stat(t, "log").unwrap().size, total as u64, "appended data lost");
    let mut end = 0u64;
    for (off, rec) in &all {
        assert_eq!(*off, end, "appends overlap or leave a gap");
        end += rec.len() as u64;
    }
    let mut content = Vec::with_capacity(total);
    while content.len() < total {
        let piece = read_all(b, t, "log", content.len() as u64, MIB);
        assert!(!piece.is_empty());
        content.extend_from_slice(&piece);
    }
    for (off, rec) in &all {
        let off = *off as usize;
        assert!(content[off..off + rec.len()] == rec[..], "record at {off} interleaved");
    }
}

/// Truncate shrinks, grows with zeros, and reports the new size.
pub fn truncate(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-truncate";
    create(b, t, "f");
    let data = pattern(3, 100);
    b.write(t, "f", 0, &data, false).unwrap();
    assert_eq!(b.truncate(t, "f", 10), Ok(10));
    assert_eq!(b.stat(t, "f").unwrap().size, 10);
    assert_eq!(read_all(b, t, "f", 0, 100), &data[..10]);
    assert_eq!(b.truncate(t, "f", 5000), Ok(5000));
    let got = read_all(b, t, "f", 0, 6000);
    assert_eq!(got.len(), 5000);
    assert_eq!(&got[..10], &data[..10]);
    assert!(got[10..].iter().all(|&x| x == 0), "growing fills with zeros");
    assert_eq!(b.truncate(t, "f", 0), Ok(0));
    assert_eq!(read_all(b, t, "f", 0, 10).len(), 0);
    create(b, t, "d/f");
    assert_eq!(b.truncate(t, "d", 0), Err(Status::IsDir));
    assert_eq!(b.truncate(t, "nope", 0), Err(Status::NotFound));
}

/// Stat of files, directories, the namespace root (even before the tenant has any
/// file) and missing names.
pub fn stat(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-stat";
    let root = b.stat(t, "").unwrap();
    assert_eq!((root.kind, root.size), (Kind::Dir, 0), "root of a fresh tenant");
    create(b, t, "dir/f");
    b.write(t, "dir/f", 0, &pattern(4, 1234), false).unwrap();
    let s = b.stat(t, "dir/f").unwrap();
    assert_eq!((s.kind, s.size), (Kind::File, 1234));
    assert!(s.mtime_ns > 1_500_000_000 * 1_000_000_000, "mtime is ns since the epoch");
    assert_eq!(b.stat(t, "dir").unwrap().kind, Kind::Dir);
    assert_eq!(b.stat(t, "/dir/").unwrap().kind, Kind::Dir);
    assert_eq!(b.stat(t, "").unwrap().kind, Kind::Dir);
    assert_eq!(b.stat(t, "nope"), Err(Status::NotFound));
    assert_eq!(b.stat(t, "dir/f/x"), Err(Status::NotDir));
}

/// Listing: sorted by name (bytes), kinds and sizes, sub-directories, start index,
/// errors.
pub fn list_sorted(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-list";
    let empty = b.list(t, "", 0, MIB).unwrap();
    assert!(empty.entries.is_empty() && !empty.more, "root of a fresh tenant is empty");
    for (i, p) in ["b", "a", "C", "dir/x", "z10", "z9"].iter().enumerate() {
        create(b, t, p);
        b.write(t, p, 0, &pattern(i as u64, i * 10), false).unwrap();
    }
    let l = b.list(t, "", 0, MIB).unwrap();
    assert!(!l.more);
    assert_eq!(names(&l.entries), ["C", "a", "b", "dir", "z10", "z9"]);
    let size_of = |n: &str| l.entries.iter().find(|e| e.name == n).map(|e| (e.kind, e.size));
    assert_eq!(size_of("a"), Some((Kind::File, 10)));
    assert_eq!(size_of("C"), Some((Kind::File, 20)));
    assert_eq!(size_of("dir"), Some((Kind::Dir, 0)));
    assert_eq!(b.list(t, "", 0, MIB).unwrap(), l, "listing is deterministic");
    assert_eq!(names(&b.list(t, "", 2, MIB).unwrap().entries), ["b", "dir", "z10", "z9"]);
    let past = b.list(t, "", 6, MIB).unwrap();
    assert!(past.entries.is_empty() && !past.more);
    assert!(b.list(t, "", u64::MAX, MIB).unwrap().entries.is_empty());
    let sub = b.list(t, "/dir/", 0, MIB).unwrap();
    assert_eq!(sub.entries, [DirEntry { kind: Kind::File, size: 30, name: "x".into() }]);
    assert_eq!(b.list(t, "nope", 0, MIB), Err(Status::NotFound));
    assert_eq!(b.list(t, "a", 0, MIB), Err(Status::NotDir));
}

/// A directory whose listing does not fit in one 1 MiB page: pages carry `more`,
/// never exceed the byte budget, and together list every entry once, in order.
pub fn list_pagination(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-list-many";
    const N: usize = 4500;
    // 240-byte names: 251 encoded bytes each, ~1.08 MiB in total.
    let expected: Vec<String> = (0..N).map(|i| format!("{i:05}-{}", "n".repeat(234))).collect();
    for n in &expected {
        create(b, t, &format!("many/{n}"));
    }
    for budget in [MAX_IO_BYTES as usize, 100_000] {
        let mut got: Vec<String> = Vec::new();
        let mut pages = 0;
        loop {
            let page = b.list(t, "many", got.len() as u64, budget).unwrap();
            pages += 1;
            assert!(pages <= N, "pagination does not advance");
            let bytes: usize = page.entries.iter().map(DirEntry::encoded_len).sum();
            assert!(bytes <= budget, "page of {bytes} bytes over budget {budget}");
            assert!(!page.entries.is_empty() || !page.more, "empty page claims more");
            got.extend(page.entries.into_iter().map(|e| e.name));
            if !page.more {
                break;
            }
        }
        assert!(pages >= 2, "{N} long names must not fit in one page of {budget} bytes");
        assert!(got == expected, "paged listing differs from the directory");
    }
}

/// Remove files and empty directories; non-empty directories and the root refuse.
pub fn remove(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-remove";
    create(b, t, "f");
    assert_eq!(b.remove(t, "f"), Ok(()));
    assert_eq!(b.stat(t, "f"), Err(Status::NotFound));
    assert_eq!(b.remove(t, "f"), Err(Status::NotFound));
    create(b, t, "d/e/f");
    assert_eq!(b.remove(t, "d"), Err(Status::NotEmpty));
    assert_eq!(b.remove(t, "d/e"), Err(Status::NotEmpty));
    assert_eq!(b.remove(t, "d/e/f"), Ok(()));
    assert_eq!(b.remove(t, "d/e"), Ok(()));
    assert_eq!(b.remove(t, "/d/"), Ok(()));
    assert_eq!(b.remove(t, ""), Err(Status::Permission));
    assert!(b.list(t, "", 0, MIB).unwrap().entries.is_empty());
    create(b, t, "again");
    assert_eq!(b.stat(t, "again").unwrap().size, 0, "a removed name can be created anew");
}

/// Mkdir: one level, with parents (`mkdir -p`), modes, what is in the way, the root.
pub fn mkdir(b: &mut dyn Backend) {
    let t = "conf-mkdir";
    // The root always exists.
    assert_eq!(b.mkdir(t, "/", None, true), Ok(()), "mkdir -p of the root");
    assert_eq!(b.mkdir(t, "", None, false), Err(Status::Exists), "mkdir of the root");
    assert_eq!(b.mkdir(t, "../x", None, true), Err(Status::Permission));
    assert_eq!(b.mkdir("../x", "d", None, true), Err(Status::Permission));
    if skip_data(b) {
        return;
    }
    assert_eq!(b.mkdir(t, "d", None, false), Ok(()), "in a namespace that had no files yet");
    assert_eq!(b.stat(t, "d").unwrap().kind, Kind::Dir);
    assert!(b.list(t, "d", 0, MIB).unwrap().entries.is_empty());
    assert_eq!(b.mkdir(t, "d", None, false), Err(Status::Exists));
    assert_eq!(b.mkdir(t, "d", None, true), Ok(()), "mkdir -p of an existing directory");
    assert_eq!(b.mkdir(t, "a/b/c", None, false), Err(Status::NotFound), "missing parents");
    assert_eq!(b.mkdir(t, "a/b/c", Some(0o750), true), Ok(()));
    assert_eq!(b.stat(t, "a/b/c").unwrap().mode, 0o750);
    assert_eq!(b.stat(t, "a/b").unwrap().kind, Kind::Dir);
    assert_eq!(b.mkdir(t, "m", Some(0o4751), false), Ok(()));
    assert_eq!(b.stat(t, "m").unwrap().mode, 0o751, "no set-id bits");
    create(b, t, "f");
    assert_eq!(b.mkdir(t, "f", None, false), Err(Status::Exists));
    assert_eq!(b.mkdir(t, "f", None, true), Err(Status::Exists), "mkdir -p onto a file");
    assert_eq!(b.mkdir(t, "f/sub", None, false), Err(Status::NotDir));
    assert_eq!(b.mkdir(t, "f/sub", None, true), Err(Status::NotDir));
    // A file can be created in a made directory, and the directory removed again.
    create(b, t, "d/x");
    assert_eq!(b.remove(t, "d"), Err(Status::NotEmpty));
}

/// Rename: files and trees, replacing or not, what may not be renamed, contents kept.
pub fn rename(b: &mut dyn Backend) {
    let t = "conf-rename";
    assert_eq!(b.rename(t, "", "x", true, false), Err(Status::Permission), "the root is no source");
    assert_eq!(b.rename(t, "x", "/", true, false), Err(Status::Permission), "nor a destination");
    assert_eq!(b.rename(t, "x", "../u/x", true, false), Err(Status::Permission));
    assert_eq!(b.rename(t, "d", "d/e", true, false), Err(Status::Invalid), "into its own subtree");
    if skip_data(b) {
        return;
    }
    assert_eq!(b.rename(t, "missing", "x", true, false), Err(Status::NotFound));
    create(b, t, "f");
    b.write(t, "f", 0, b"first", false).unwrap();
    assert_eq!(b.rename(t, "f", "g", false, false), Ok(()));
    assert_eq!(b.stat(t, "f"), Err(Status::NotFound));
    assert_eq!(read_all(b, t, "g", 0, 64), b"first", "the data moved with the name");
    // Replacing: atomic swap of a new version into place.
    create(b, t, "g.tmp");
    b.write(t, "g.tmp", 0, b"second", false).unwrap();
    assert_eq!(b.rename(t, "g.tmp", "g", false, false), Err(Status::Exists), "no replace asked");
    assert_eq!(read_all(b, t, "g", 0, 64), b"first");
    assert_eq!(b.rename(t, "g.tmp", "g", true, true), Ok(()), "replacing, durably");
    assert_eq!(read_all(b, t, "g", 0, 64), b"second", "the old file was replaced");
    assert_eq!(b.stat(t, "g.tmp"), Err(Status::NotFound));
    // Across directories; the destination's parent must exist.
    create(b, t, "d1/a");
    assert_eq!(b.rename(t, "g", "nodir/g", true, false), Err(Status::NotFound));
    assert_eq!(b.rename(t, "g", "d1/a/g", true, false), Err(Status::NotDir), "a parent is a file");
    assert_eq!(b.rename(t, "g", "d1/g", true, false), Ok(()));
    assert_eq!(names(&b.list(t, "d1", 0, MIB).unwrap().entries), ["a", "g"]);
    // Directories move with their contents.
    assert_eq!(b.mkdir(t, "d2", None, false), Ok(()));
    assert_eq!(b.rename(t, "d1", "d2/inner", true, false), Ok(()));
    assert_eq!(read_all(b, t, "d2/inner/g", 0, 64), b"second");
    assert_eq!(b.stat(t, "d1"), Err(Status::NotFound));
    // What cannot replace what.
    create(b, t, "file");
    assert_eq!(b.rename(t, "file", "d2", true, false), Err(Status::IsDir), "a file onto a directory");
    assert_eq!(b.rename(t, "d2", "file", true, false), Err(Status::NotDir), "a directory onto a file");
    assert_eq!(b.mkdir(t, "empty", None, false), Ok(()));
    assert_eq!(b.rename(t, "empty", "d2", true, false), Err(Status::NotEmpty), "onto a non-empty directory");
    assert_eq!(b.mkdir(t, "empty2", None, false), Ok(()));
    assert_eq!(b.rename(t, "d2", "empty2", true, false), Ok(()), "a directory onto an empty one");
    assert_eq!(read_all(b, t, "empty2/inner/a", 0, 64), b"");
    // A file renamed onto itself stays.
    assert_eq!(b.rename(t, "file", "/file/", true, false), Ok(()));
    assert_eq!(b.stat(t, "file").unwrap().kind, Kind::File);
    // Another tenant's name is never reached: same path, other namespace.
    assert_eq!(b.rename("conf-rename-other", "file", "x", true, false), Err(Status::NotFound));
}

/// SetAttr: modes and modification times of files and directories; the root refuses.
pub fn set_attr(b: &mut dyn Backend) {
    let t = "conf-setattr";
    assert_eq!(b.set_attr(t, "", Some(0o777), None), Err(Status::Permission), "the root's attributes");
    assert_eq!(b.set_attr(t, "../u/f", Some(0o600), None), Err(Status::Permission));
    if skip_data(b) {
        return;
    }
    assert_eq!(b.set_attr(t, "missing", Some(0o600), None), Err(Status::NotFound));
    create(b, t, "f");
    b.write(t, "f", 0, b"data", false).unwrap();
    assert_eq!(b.set_attr(t, "f", Some(0o640), None), Ok(()));
    let s = b.stat(t, "f").unwrap();
    assert_eq!((s.mode, s.size), (0o640, 4), "mode set, data untouched");
    let when = 1_600_000_000_123_456_789;
    assert_eq!(b.set_attr(t, "f", None, Some(when)), Ok(()));
    let s = b.stat(t, "f").unwrap();
    assert_eq!((s.mode, s.mtime_ns), (0o640, when), "mtime set, mode kept");
    assert_eq!(b.set_attr(t, "f", Some(0o6755), Some(when + 1)), Ok(()));
    let s = b.stat(t, "f").unwrap();
    assert_eq!((s.mode, s.mtime_ns), (0o755, when + 1), "both at once; no set-id bits");
    assert_eq!(b.set_attr(t, "f", None, None), Ok(()), "nothing to set");
    b.mkdir(t, "d", None, false).unwrap();
    assert_eq!(b.set_attr(t, "d", Some(0o711), Some(when)), Ok(()));
    let s = b.stat(t, "d").unwrap();
    assert_eq!((s.kind, s.mode, s.mtime_ns), (Kind::Dir, 0o711, when));
    // A write after it moves mtime on again.
    b.write(t, "f", 0, b"more", false).unwrap();
    assert!(b.stat(t, "f").unwrap().mtime_ns > when + 1);
}

/// StatFs: sane figures for a namespace that does not exist yet and for one that does.
pub fn statfs(b: &mut dyn Backend) {
    let t = "conf-statfs";
    assert_eq!(b.statfs("../u", ""), Err(Status::Permission));
    let f = b.statfs(t, "").unwrap_or_else(|s| panic!("statfs of a new namespace: {s}"));
    assert!(f.block_size > 0 && f.name_max >= 255, "{f:?}");
    // (A Ceph cluster on memstore reports 0 blocks: the count is not required.)
    assert!(f.blocks_free <= f.blocks && f.blocks_available <= f.blocks, "{f:?}");
    if skip_data(b) {
        return;
    }
    create(b, t, "d/f");
    let g = b.statfs(t, "d/f").unwrap();
    assert_eq!((g.block_size, g.blocks), (f.block_size, f.blocks), "one store, one size");
}

/// Fsync of files, directories and the root; missing files fail.
pub fn fsync(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-fsync";
    assert_eq!(b.fsync(t, ""), Ok(()));
    create(b, t, "d/f");
    b.write(t, "d/f", 0, b"durable", false).unwrap();
    assert_eq!(b.fsync(t, "d/f"), Ok(()));
    assert_eq!(b.fsync(t, "d"), Ok(()));
    assert_eq!(b.fsync(t, ""), Ok(()));
    assert_eq!(b.fsync(t, "nope"), Err(Status::NotFound));
    assert_eq!(read_all(b, t, "d/f", 0, 16), b"durable");
}

/// Threads writing their own files through their own channels, chunks in a
/// scrambled order: every file reads back exactly.
pub fn concurrent_writers(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let t = "conf-writers";
    const THREADS: usize = 4;
    const CHUNKS: usize = 24;
    const CHUNK: usize = 50_001;
    for th in 0..THREADS {
        create(b, t, &format!("w{th}"));
    }
    let handles: Vec<_> = (0..THREADS)
        .map(|th| {
            let mut ch = b.channel();
            std::thread::spawn(move || {
                let p = format!("w{th}");
                let data = pattern(100 + th as u64, CHUNKS * CHUNK);
                for k in 0..CHUNKS {
                    let j = (k * 7) % CHUNKS;
                    let off = j * CHUNK;
                    assert_eq!(ch.write(t, &p, off as u64, &data[off..off + CHUNK], false), Ok(CHUNK));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    for th in 0..THREADS {
        let p = format!("w{th}");
        let data = pattern(100 + th as u64, CHUNKS * CHUNK);
        let mut got = Vec::new();
        while got.len() < data.len() {
            let piece = read_all(b, t, &p, got.len() as u64, MIB);
            assert!(!piece.is_empty());
            got.extend_from_slice(&piece);
        }
        assert!(got == data, "file {p} differs");
    }
}

/// Every operation on a missing file (or in a missing directory, or for a tenant
/// that has nothing yet) fails with NotFound and creates nothing.
pub fn missing_files(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    for t in ["conf-missing", "conf-missing-fresh"] {
        if t == "conf-missing" {
            create(b, t, "present");
        }
        for p in ["nope", "nodir/nope"] {
            let mut buf = [0u8; 8];
            assert_eq!(b.open(t, p, 0), Err(Status::NotFound), "open {t}/{p}");
            assert_eq!(b.open(t, p, WRITE | TRUNCATE), Err(Status::NotFound), "open {t}/{p}");
            assert_eq!(b.read(t, p, 0, &mut buf), Err(Status::NotFound), "read {t}/{p}");
            assert_eq!(b.write(t, p, 0, b"x", false), Err(Status::NotFound), "write {t}/{p}");
            assert_eq!(b.append(t, p, b"x", false), Err(Status::NotFound), "append {t}/{p}");
            assert_eq!(b.truncate(t, p, 1), Err(Status::NotFound), "truncate {t}/{p}");
            assert_eq!(b.stat(t, p), Err(Status::NotFound), "stat {t}/{p}");
            assert_eq!(b.list(t, p, 0, MIB), Err(Status::NotFound), "list {t}/{p}");
            assert_eq!(b.remove(t, p), Err(Status::NotFound), "remove {t}/{p}");
            assert_eq!(b.fsync(t, p), Err(Status::NotFound), "fsync {t}/{p}");
        }
        let l = b.list(t, "", 0, MIB).unwrap();
        assert!(l.entries.iter().all(|e| e.name == "present"), "failed calls created {:?}", names(&l.entries));
    }
}

/// A tenant reaching for another tenant's file: `..` paths are refused for every
/// operation, the same path under another tenant is a different file, and invalid
/// tenant names are refused.
pub fn tenant_isolation(b: &mut dyn Backend) {
    let (a, other) = ("conf-iso-a", "conf-iso-b");
    create(b, a, "secret");
    b.write(a, "secret", 0, b"a's secret", false).unwrap();
    let escapes = ["../conf-iso-a/secret", "x/../../conf-iso-a/secret", "/../conf-iso-a/secret", "..", "../conf-iso-a"];
    for p in escapes {
        let mut buf = [0u8; 64];
        let perm = Err(Status::Permission);
        assert_eq!(b.open(other, p, 0).map(|_| ()), perm, "open {p}");
        assert_eq!(b.open(other, p, CREATE | TRUNCATE | WRITE).map(|_| ()), perm, "open {p}");
        assert_eq!(b.read(other, p, 0, &mut buf), perm.map(|()| 0), "read {p}");
        assert_eq!(b.write(other, p, 0, b"pwned", false), perm.map(|()| 0), "write {p}");
        assert_eq!(b.append(other, p, b"pwned", false), perm.map(|()| 0), "append {p}");
        assert_eq!(b.truncate(other, p, 0), perm.map(|()| 0), "truncate {p}");
        assert_eq!(b.stat(other, p).map(|_| ()), perm, "stat {p}");
        assert_eq!(b.list(other, p, 0, MIB).map(|_| ()), perm, "list {p}");
        assert_eq!(b.remove(other, p), perm, "remove {p}");
        assert_eq!(b.fsync(other, p), perm, "fsync {p}");
    }
    {
        let mut buf = [0u8; 64];
        let long = "x".repeat(64);
        for bad in ["", "..", ".", "../conf-iso-a", "conf-iso-a/..", "conf-iso-a/x", ".hidden", "a b", long.as_str()] {
            assert_eq!(b.read(bad, "secret", 0, &mut buf), Err(Status::Permission), "tenant {bad:?}");
            assert_eq!(b.open(bad, "secret", CREATE | WRITE), Err(Status::Permission), "tenant {bad:?}");
            assert_eq!(b.list(bad, "", 0, MIB).map(|_| ()), Err(Status::Permission), "tenant {bad:?}");
        }
    }
    if skip_data(b) {
        return;
    }
    assert_eq!(b.stat(other, "secret"), Err(Status::NotFound));
    let mut buf = [0u8; 64];
    assert_eq!(b.read(other, "secret", 0, &mut buf), Err(Status::NotFound));
    create(b, other, "secret");
    b.write(other, "secret", 0, b"b", false).unwrap();
    assert_eq!(read_all(b, other, "secret", 0, 64), b"b");
    assert_eq!(read_all(b, a, "secret", 0, 64), b"a's secret");
    let lb = b.list(other, "", 0, MIB).unwrap();
    assert_eq!(lb.entries, [DirEntry { kind: Kind::File, size: 1, name: "secret".into() }]);
    assert_eq!(b.list(a, "", 0, MIB).unwrap().entries[0].size, 10);
    b.remove(other, "secret").unwrap();
    assert_eq!(read_all(b, a, "secret", 0, 64), b"a's secret");
}

/// Malformed names: NUL bytes, over-long components and paths.
pub fn bad_names(b: &mut dyn Backend) {
    let t = "conf-names";
    assert_eq!(b.open(t, "a\0b", CREATE), Err(Status::Invalid));
    let long = "c".repeat(256);
    assert_eq!(b.open(t, &long, CREATE), Err(Status::NameTooLong));
    let deep = "d/".repeat(2100);
    assert_eq!(b.open(t, &deep, CREATE), Err(Status::NameTooLong));
    let ok = "c".repeat(255);
    create(b, t, &ok);
    assert_eq!(b.stat(t, &ok).unwrap().kind, Kind::File);
}

/// Volumes: opening without CREATE, creating, reopening, size mismatch (no silent
/// resize), bad geometry and bad names.
pub fn volume_open(b: &mut dyn Backend) {
    let v = "conf-vol-open";
    let mut buf = vec![0u8; 512];
    let w = "conf-vol-geom";
    for (size, bs) in [(0u64, 512u32), (1000, 512), (4096, 1000), (4096, 256), (1 << 20, 1 << 17), (4096 + 512, 4096)] {
        assert_eq!(b.volume_open(w, size, bs, true), Err(Status::Invalid), "size {size} block size {bs}");
    }
    for bad in ["", "..", "../x", "a/b", ".hidden", "@volumes", "a b"] {
        assert_eq!(b.volume_open(bad, 4096, 512, true), Err(Status::Permission), "name {bad:?}");
        assert_eq!(b.volume_read(bad, 0, &mut buf), Err(Status::Permission), "name {bad:?}");
        assert_eq!(b.volume_write(bad, 0, &buf, false), Err(Status::Permission), "name {bad:?}");
        assert_eq!(b.volume_flush(bad), Err(Status::Permission), "name {bad:?}");
    }
    if skip_data(b) {
        return;
    }
    assert_eq!(b.volume_open(w, 4096, 512, false), Err(Status::NotFound), "bad geometry created nothing");
    assert_eq!(b.volume_open(v, 4 * MIB as u64, 512, false), Err(Status::NotFound));
    assert_eq!(b.volume_open(v, 4 * MIB as u64, 512, true), Ok(4 * MIB as u64));
    assert_eq!(b.volume_open(v, 4 * MIB as u64, 512, true), Ok(4 * MIB as u64), "reopen with CREATE");
    assert_eq!(b.volume_open(v, 4 * MIB as u64, 512, false), Ok(4 * MIB as u64), "reopen");
    assert_eq!(b.volume_open(v, 4 * MIB as u64, 4096, false), Ok(4 * MIB as u64), "another block size");
    assert_eq!(b.volume_open(v, 8 * MIB as u64, 512, true), Err(Status::Invalid), "bigger: no silent resize");
    assert_eq!(b.volume_open(v, 2 * MIB as u64, 512, false), Err(Status::Invalid), "smaller: no silent resize");
    assert_eq!(b.volume_read(v, 4 * MIB as u64 - 512, &mut buf), Ok(512), "size unchanged");
    assert_eq!(b.volume_read("conf-vol-none", 0, &mut buf), Err(Status::NotFound));
    assert_eq!(b.volume_write("conf-vol-none", 0, &buf, false), Err(Status::NotFound));
    assert_eq!(b.volume_flush("conf-vol-none"), Err(Status::NotFound));
}

fn vol_read(b: &mut dyn Backend, v: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xa5u8; len];
    assert_eq!(b.volume_read(v, offset, &mut buf), Ok(len), "volume read {v}@{offset}+{len}");
    buf
}

/// Volumes: writes and reads at many offsets (first and last block, unaligned, 1 MiB,
/// across 1 MiB boundaries), never-written ranges read as zeros, FUA writes, past-end
/// IO refused without a partial write, data visible through another channel.
pub fn volume_read_write(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let v = "conf-vol-rw";
    let size = 6 * MIB as u64 + 4096;
    assert_eq!(b.volume_open(v, size, 4096, true), Ok(size));
    assert!(vol_read(b, v, 0, MIB).iter().all(|&x| x == 0), "a new volume reads as zeros");
    assert!(vol_read(b, v, size - 4096, 4096).iter().all(|&x| x == 0));
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (0, pattern(10, 4096)),
        (size - 4096, pattern(11, 4096)),
        (MIB as u64 - 512, pattern(12, 1024)),
        (2 * MIB as u64, pattern(13, MIB)),
        (4 * MIB as u64 + 7, pattern(14, 1000)),
        (size - 512, pattern(15, 512)),
    ];
    for (i, (off, data)) in writes.iter().enumerate() {
        assert_eq!(b.volume_write(v, *off, data, i % 2 == 1), Ok(data.len()), "volume write at {off}");
    }
    for (off, data) in &writes[..5] {
        let got = vol_read(b, v, *off, data.len());
        if *off == size - 4096 {
            assert!(got[..3584] == data[..3584], "last block");
            assert!(got[3584..] == writes[5].1[..], "last sector overwritten");
        } else {
            assert!(got == *data, "read-after-write at {off}");
        }
    }
    assert!(vol_read(b, v, 4096, 4096).iter().all(|&x| x == 0), "never-written block reads as zeros");
    let across = vol_read(b, v, 2 * MIB as u64 - 100, 200);
    assert!(across[..100].iter().all(|&x| x == 0) && across[100..] == writes[3].1[..100]);
    assert_eq!(vol_read(b, v, 0, 0).len(), 0);
    let mut buf = vec![0u8; 4096];
    assert_eq!(b.volume_read(v, size - 2048, &mut buf), Err(Status::Invalid), "read past the end");
    assert_eq!(b.volume_read(v, size, &mut buf[..1]), Err(Status::Invalid));
    assert_eq!(b.volume_read(v, u64::MAX - 10, &mut buf), Err(Status::Invalid), "offset overflow");
    assert_eq!(b.volume_write(v, size - 2048, &pattern(16, 4096), false), Err(Status::Invalid), "write past the end");
    assert_eq!(b.volume_write(v, u64::MAX, b"x", false), Err(Status::Invalid));
    assert!(vol_read(b, v, size - 2048, 2048)[1536..] == writes[5].1[..], "a refused write wrote nothing");
    assert_eq!(b.volume_open(v, size, 4096, false), Ok(size), "size unchanged by past-end writes");
    let mut ch = b.channel();
    assert!(vol_read(ch.as_mut(), v, 2 * MIB as u64, MIB) == writes[3].1, "other channel sees the data");
    ch.volume_write(v, 8192, b"from channel", false).unwrap();
    assert_eq!(vol_read(b, v, 8192, 12), b"from channel");
}

/// Volumes: flush after writes through several channels (threads), and the data is
/// all there afterwards.
pub fn volume_flush(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let v = "conf-vol-flush";
    let size = 8 * MIB as u64;
    b.volume_open(v, size, 512, true).unwrap();
    assert_eq!(b.volume_flush(v), Ok(()), "flush of an unwritten volume");
    let handles: Vec<_> = (0..4u64)
        .map(|th| {
            let mut ch = b.channel();
            std::thread::spawn(move || {
                for k in 0..16u64 {
                    let off = (th * 16 + k) * 128 * 1024;
                    ch.volume_write(v, off, &pattern(th * 100 + k, 128 * 1024), false).expect("volume write");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }
    assert_eq!(b.volume_flush(v), Ok(()));
    for i in 0..64u64 {
        let (th, k) = (i / 16, i % 16);
        assert!(vol_read(b, v, i * 128 * 1024, 128 * 1024) == pattern(th * 100 + k, 128 * 1024), "chunk {i}");
    }
}

/// Volumes: two volumes are independent, and a volume never touches the tenant of the
/// same name (separate namespaces).
pub fn volume_independent(b: &mut dyn Backend) {
    if skip_data(b) {
        return;
    }
    let (v1, v2) = ("conf-vol-a", "conf-vol-b");
    b.volume_open(v1, MIB as u64, 512, true).unwrap();
    b.volume_open(v2, 2 * MIB as u64, 4096, true).unwrap();
    b.volume_write(v1, 0, &pattern(20, 8192), false).unwrap();
    b.volume_write(v2, 0, &pattern(21, 8192), false).unwrap();
    assert!(vol_read(b, v1, 0, 8192) == pattern(20, 8192));
    assert!(vol_read(b, v2, 0, 8192) == pattern(21, 8192));
    let mut buf = vec![0u8; 512];
    assert_eq!(b.volume_read(v1, MIB as u64, &mut buf), Err(Status::Invalid), "v1 has its own size");
    assert_eq!(b.volume_read(v2, MIB as u64, &mut buf), Ok(512));
    // A tenant named like a volume: its files are elsewhere.
    assert_eq!(b.stat(v1, "").map(|s| s.kind), Ok(Kind::Dir));
    assert!(b.list(v1, "", 0, MIB).unwrap().entries.is_empty(), "a volume is not a tenant file");
    create(b, v1, "f");
    b.write(v1, "f", 0, b"tenant data", false).unwrap();
    assert!(vol_read(b, v1, 0, 8192) == pattern(20, 8192), "tenant files do not touch the volume");
    assert_eq!(read_all(b, v1, "f", 0, 64), b"tenant data");
}

/// A conformance case.
pub type Case = fn(&mut dyn Backend);

/// Every case, with its name.
pub const CASES: &[(&str, Case)] = &[
    ("open_create", open_create),
    ("read_write_offsets", read_write_offsets),
    ("large_files", large_files),
    ("append_sequential", append_sequential),
    ("append_concurrent", append_concurrent),
    ("truncate", truncate),
    ("stat", stat),
    ("list_sorted", list_sorted),
    ("list_pagination", list_pagination),
    ("remove", remove),
    ("fsync", fsync),
    ("mkdir", mkdir),
    ("rename", rename),
    ("set_attr", set_attr),
    ("statfs", statfs),
    ("concurrent_writers", concurrent_writers),
    ("missing_files", missing_files),
    ("tenant_isolation", tenant_isolation),
    ("bad_names", bad_names),
    ("volume_open", volume_open),
    ("volume_read_write", volume_read_write),
    ("volume_flush", volume_flush),
    ("volume_independent", volume_independent),
];

/// Runs every case on `b`.
pub fn run_all(b: &mut dyn Backend) {
    for (name, case) in CASES {
        log::debug!("conformance case {name}");
        case(b);
    }
}

/// Generates one `#[test]` per conformance case. `$make` is evaluated once per test
/// and must yield `(guard, Box<dyn Backend>)`.
#[macro_export]
#[doc(hidden)]
macro_rules! backend_conformance_tests {
    ($make:expr) => {
        $crate::backend_conformance_tests!(@cases $make;
            open_create, read_write_offsets, large_files, append_sequential, append_concurrent,
            truncate, stat, list_sorted, list_pagination, remove, fsync, mkdir, rename, set_attr, statfs,
            concurrent_writers,
            missing_files, tenant_isolation, bad_names, volume_open, volume_read_write, volume_flush,
            volume_independent);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let (_guard, mut backend) = $make;
                $crate::backend::conformance::$case(backend.as_mut());
            }
        )*
    };
}
