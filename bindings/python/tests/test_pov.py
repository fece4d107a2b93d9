"""pytest for the Python package `pov`, against a live PoV device.

scripts/bindings-test starts a PoV stack and runs this with POV_DEVICE, POV_TENANT and
POV_SECRET_FILE set (as pov-host reads them). Every test works under its own directory
/py-test/<test name> and removes it."""

import errno
import hashlib
import io
import os
import threading

import pytest

import pov

DEVICE = os.environ.get("POV_DEVICE")
TENANT = os.environ.get("POV_TENANT")
SECRET_FILE = os.environ.get("POV_SECRET_FILE")

pytestmark = pytest.mark.skipif(
    not (DEVICE and TENANT and SECRET_FILE),
    reason="needs a PoV stack: POV_DEVICE, POV_TENANT, POV_SECRET_FILE (scripts/bindings-test)",
)


@pytest.fixture(scope="module")
def device():
    return pov.Device(DEVICE)


@pytest.fixture(scope="module")
def secret():
    return pov.read_secret(SECRET_FILE)


@pytest.fixture
def session(device, secret):
    with device.open_session(TENANT, secret) as s:
        yield s


@pytest.fixture
def root(session, request):
    path = "/py-test/" + request.node.name
    remove_tree(session, path)
    session.mkdir(path, parents=True)
    yield path
    remove_tree(session, path)


def remove_tree(s, path):
    try:
        st = s.stat(path)
    except FileNotFoundError:
        return
    if st.is_dir:
        for e in s.scandir(path):
            remove_tree(s, path + "/" + e.name)
    s.remove(path)


def pattern(n, seed):
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d-%d" % (seed, block)).digest()
        block += 1
    return bytes(out[:n])


def test_version_and_repr(device):
    assert pov.__version__.count(".") == 2
    assert "pov.Device" in repr(device)


def test_bytes_round_trip_of_3_mib(session, root):
    data = pattern(3 << 20, 1)
    session.write_bytes(root + "/big", data)
    assert session.read_bytes(root + "/big") == data
    assert session.stat(root + "/big").size == len(data)
    session.write_bytes(root + "/view", memoryview(data)[10:20])
    assert session.read_bytes(root + "/view") == data[10:20]


def test_files_are_raw_io_objects(session, root):
    lines = "".join("line %d: %s\n" % (i, "é" * (i % 7)) for i in range(5000))
    with session.open(root + "/text", "w") as f:
        assert f.writable() and f.seekable() and f.mode == "w"
        w = io.TextIOWrapper(io.BufferedWriter(f), encoding="utf-8")
        w.write(lines)
        w.flush()
        w.detach().detach()
    with session.open(root + "/text") as f:
        r = io.TextIOWrapper(io.BufferedReader(f, buffer_size=4096), encoding="utf-8")
        got = r.readlines()
    assert "".join(got) == lines
    assert got[4999].startswith("line 4999")
    with session.open(root + "/text", "rb") as f:
        assert f.read(4) == b"line"
        assert f.tell() == 4
        assert f.seek(-10, 2) == len(lines.encode()) - 10
        assert f.read() == lines.encode()[-10:]
        assert f.read() == b""
        buf = bytearray(8)
        f.seek(0)
        assert f.readinto(buf) == 8 and bytes(buf) == b"line 0: "
        assert f.pread(5, 8) == lines.encode()[8:13]
        assert f.tell() == 8, "pread does not move the cursor"
        with pytest.raises(OSError) as e:
            f.write(b"x")
        assert e.value.errno == errno.EBADF


def test_open_modes(session, root):
    p = root + "/m"
    with pytest.raises(FileNotFoundError):
        session.open(p, "r")
    with session.open(p, "x") as f:
        f.write(b"0123456789")
    with pytest.raises(FileExistsError):
        session.open(p, "x")
    with session.open(p, "r+") as f:
        f.seek(2)
        f.write(b"ab")
    assert session.read_bytes(p) == b"01ab456789", "r+ does not truncate"
    with session.open(p, "a") as f:
        f.write(b"END")
        assert f.tell() == 13
        f.pwrite(b"Z", 0)
    assert session.read_bytes(p) == b"Z1ab456789END"
    with session.open(p, "wb") as f:
        f.write(b"new")
        assert f.truncate(1) == 1
    assert session.read_bytes(p) == b"n"
    for bad in ["rw", "t", "rt", "", "bb", "w+x"]:
        with pytest.raises(ValueError):
            session.open(p, bad)


def test_namespace_calls(session, root):
    session.mkdir(root + "/a/b/c", parents=True)
    session.mkdir(root + "/a/b/c", parents=True)
    with pytest.raises(FileExistsError):
        session.mkdir(root + "/a")
    with pytest.raises(FileNotFoundError):
        session.mkdir(root + "/missing/x")
    session.mkdir(root + "/d", 0o750)
    assert session.stat(root + "/d").mode == 0o750
    session.write_bytes(root + "/a/f1", b"one")
    session.write_bytes(root + "/a/f2", b"two!")
    entries = {e.name: e for e in session.scandir(root + "/a")}
    assert set(entries) == {"b", "f1", "f2"}
    assert entries["b"].is_dir and not entries["f1"].is_dir and entries["f2"].size == 4
    assert sorted(session.listdir(root + "/a")) == ["b", "f1", "f2"]
    with pytest.raises(FileExistsError):
        session.rename(root + "/a/f1", root + "/a/f2", replace=False)
    session.rename(root + "/a/f1", root + "/a/f2", sync=True)
    assert session.read_bytes(root + "/a/f2") == b"one"
    with pytest.raises(FileNotFoundError):
        session.stat(root + "/a/f1")
    session.chmod(root + "/a/f2", 0o604)
    session.utime_ns(root + "/a/f2", 1_700_000_000_123_456_789)
    st = session.stat(root + "/a/f2")
    assert st.mode == 0o604 and st.mtime_ns // 1000 == 1_700_000_000_123_456
    with pytest.raises(ValueError):
        session.chmod(root + "/a/f2", 0o4755)
    with pytest.raises(OSError) as e:
        session.remove(root + "/a")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        session.scandir(root + "/a/f2")
    fs = session.statvfs()
    assert fs.blocks > 0 and fs.block_size > 0 and fs.blocks_available <= fs.blocks


def test_threads_share_a_file_and_the_gil_is_released(session, root):
    region = 512 << 10
    with session.open(root + "/shared", "w") as f:
        errors = []

        def write(i):
            try:
                f.pwrite(pattern(region, 100 + i), i * region)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors and not any(t.is_alive() for t in threads)
        f.fsync()
    data = session.read_bytes(root + "/shared")
    assert len(data) == 8 * region
    for i in range(8):
        assert data[i * region:(i + 1) * region] == pattern(region, 100 + i), "region %d" % i


def test_a_wrong_secret_is_refused(device):
    with pytest.raises(PermissionError) as e:
        device.open_session(TENANT, b"not the secret")
    assert e.value.errno == errno.EPERM
    with pytest.raises(PermissionError):
        device.open_session("no-such-tenant", b"x")


def test_grants_hold_read_only_and_prefix(device, secret, session, root):
    session.write_bytes(root + "/inside/f", b"data")
    session.write_bytes(root + "/outside", b"secret data")
    with device.open_session(TENANT, secret, queues=1, read_only=True) as ro:
        assert ro.read_bytes(root + "/inside/f") == b"data"
        with pytest.raises(PermissionError):
            ro.write_bytes(root + "/inside/f", b"overwrite")
        with pytest.raises(PermissionError):
            ro.open(root + "/inside/f", "r+")
        with pytest.raises(PermissionError):
            ro.remove(root + "/inside/f")
    assert session.read_bytes(root + "/inside/f") == b"data"
    with device.open_session(TENANT, secret, queues=1, prefix=root + "/inside") as px:
        assert px.read_bytes(root + "/inside/f") == b"data"
        with pytest.raises(PermissionError):
            px.read_bytes(root + "/outside")
        with pytest.raises(PermissionError):
            px.rename(root + "/inside/f", root + "/stolen")
        with pytest.raises(OSError):
            px.read_bytes(root + "/inside/../outside")


def test_bad_arguments_are_clear_errors(device, secret, session, root):
    with pytest.raises(TypeError):
        session.stat(42)
    with pytest.raises(TypeError):
        session.write_bytes(root + "/t", "text is not bytes")
    with pytest.raises(ValueError):
        device.open_session(TENANT, secret, failover_timeout=-1)
    with pytest.raises(OSError):
        session.stat(root + "/nul\0byte")
    with pytest.raises(OSError):
        pov.Device("vhost-user:/nonexistent/pov.sock")
    with pytest.raises(OSError):
        pov.Device("not a device spec")


def test_closed_handles_fail_cleanly(device, secret, root):
    s = device.open_session(TENANT, secret, queues=1, integrity_only=True)
    f = s.open(root + "/c", "w")
    f.write(b"x")
    f.close()
    f.close()
    assert f.closed
    with pytest.raises(ValueError):
        f.read()
    with pytest.raises(ValueError):
        f.seekable()
    g = s.open(root + "/c")
    s.close()
    s.close()
    assert s.closed
    with pytest.raises(ValueError):
        s.stat(root)
    with pytest.raises(OSError):
        g.read()
