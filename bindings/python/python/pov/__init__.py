"""PoV for Python: the files of a PoV session, through a PoV device.

A PoV device is a virtio-blk device (``/dev/vdX``) or a vhost-user socket
(``vhost-user:/run/pov/pov0.sock``) exposed by the DPU; this package is the host
library (``pov-host``, in Rust) with a Python face::

    import pov
    dev = pov.Device("vhost-user:/run/pov/pov0.sock")
    with dev.open_session("acme", secret) as s:       # secret: bytes, never an argv
        with s.open("/logs/today", "w") as f:         # r r+ w w+ x x+ a a+ (binary)
            f.write(b"hello")
        for e in s.scandir("/logs"):
            print(e.name, e.size, e.is_dir)

Errors are ``OSError`` subclasses with the errno PoV reports (``FileNotFoundError``,
``PermissionError``, ``FileExistsError``, ...). Device calls release the GIL, so
threads sharing a session run in parallel. Files are raw binary IO objects:
``io.BufferedReader(f)`` and ``io.TextIOWrapper(...)`` work on them.
"""

from ._native import DirEntry, Device, File, Session, Stat, StatFs, __version__


def read_secret(path):
    """The tenant secret in the key file ``path`` (one trailing newline dropped),
    as ``pov-host --secret-file`` reads it."""
    with open(path, "rb") as f:
        data = f.read()
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data


__all__ = ["Device", "Session", "File", "Stat", "DirEntry", "StatFs", "read_secret", "__version__"]
