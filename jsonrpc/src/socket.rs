//! Unix socket paths shared by the daemons' socket servers (the control socket here,
//! vhost-user sockets on the DPU).

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Makes `path` free for a new unix socket: a stale socket file (nobody accepts on it)
/// is removed.
///
/// # Errors
/// [`io::ErrorKind::AddrInUse`] if a server accepts connections on `path` or if `path`
/// is something other than a socket (it is left alone).
pub fn claim_socket_path(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("{} exists and is not a socket", path.display())));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(io::ErrorKind::AddrInUse, format!("{} is in use by a running server", path.display())));
    }
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn claims_stale_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        claim_socket_path(&p).unwrap();
        let l = UnixListener::bind(&p).unwrap();
        assert_eq!(claim_socket_path(&p).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(l);
        claim_socket_path(&p).unwrap();
        assert!(!p.exists());
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(claim_socket_path(&p).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        assert!(p.exists());
    }
}
