//! Tenant namespace paths.
//!
//! A host names files with `/`-separated paths inside its tenant's namespace. Before a
//! path reaches a backend it is normalized: empty and `.` components are dropped, and a
//! `..` component, a NUL byte, a component over 255 bytes or a path over
//! [`MAX_PATH`](crate::io::MAX_PATH) bytes is rejected. The result never escapes the
//! namespace, whatever the host sent. The namespace root is the empty path.

use crate::Status;

/// Longest path component, in bytes.
pub const MAX_COMPONENT: usize = 255;

/// Normalizes a path from a host. Returns the components joined by `/` (no leading
/// slash; `""` is the namespace root), or [`Status::Permission`] for a path that
/// tries to leave the namespace and [`Status::Invalid`] / [`Status::NameTooLong`] for
/// malformed ones.
pub fn normalize(raw: &[u8]) -> Result<String, Status> {
    if raw.len() > crate::io::MAX_PATH {
        return Err(Status::NameTooLong);
    }
    let s = std::str::from_utf8(raw).map_err(|_| Status::Invalid)?;
    if s.contains('\0') {
        return Err(Status::Invalid);
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(Status::Permission),
            c if c.len() > MAX_COMPONENT => return Err(Status::NameTooLong),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Splits and normalizes the payload of a rename (`docs/protocol.md`, "Names and
/// attributes"): the source path, one NUL byte, the destination path. Each is
/// normalized as by [`normalize`]; neither may be the namespace root
/// ([`Status::Permission`]). A payload without the separator is [`Status::Invalid`].
/// Returns `(from, to)`.
pub fn split_rename(raw: &[u8]) -> Result<(String, String), Status> {
    let sep = raw.iter().position(|&b| b == 0).ok_or(Status::Invalid)?;
    let (from, to) = (normalize(&raw[..sep])?, normalize(&raw[sep + 1..])?);
    if from.is_empty() || to.is_empty() {
        return Err(Status::Permission);
    }
    Ok((from, to))
}

/// Encodes the payload of a rename from `from` to `to` (the reverse of
/// [`split_rename`]).
pub fn join_rename(from: &str, to: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(from.len() + 1 + to.len());
    v.extend_from_slice(from.as_bytes());
    v.push(0);
    v.extend_from_slice(to.as_bytes());
    v
}

/// `true` if the normalized path `inner` is `outer` or lies below it (a directory
/// cannot be renamed into itself).
pub fn is_within(inner: &str, outer: &str) -> bool {
    inner == outer || (inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/')
}

/// Checks a tenant name: 1..=63 bytes of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn valid_tenant_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= crate::admin::MAX_TENANT_NAME
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize(b"/a//b/./c").unwrap(), "a/b/c");
        assert_eq!(normalize(b"/").unwrap(), "");
        assert_eq!(normalize(b"../other/secret"), Err(Status::Permission));
        assert_eq!(normalize(b"/a/../../b"), Err(Status::Permission));
        assert_eq!(normalize(b"a\0b"), Err(Status::Invalid));
        assert_eq!(normalize(&[0xff, 0xfe]), Err(Status::Invalid));
        assert_eq!(normalize("x".repeat(256).as_bytes()), Err(Status::NameTooLong));
    }

    #[test]
    fn rename_payloads() {
        assert_eq!(split_rename(&join_rename("/a//b", "c/./d")), Ok(("a/b".into(), "c/d".into())));
        assert_eq!(split_rename(b"a/b"), Err(Status::Invalid), "no separator");
        assert_eq!(split_rename(b"a\0../x"), Err(Status::Permission), "the destination leaves the namespace");
        assert_eq!(split_rename(b"/\0x"), Err(Status::Permission), "the root is no source");
        assert_eq!(split_rename(b"x\0y\0z"), Err(Status::Invalid), "a second NUL");
        assert!(is_within("a/b", "a") && is_within("a", "a") && !is_within("ab", "a") && !is_within("a", "a/b"));
    }

    #[test]
    fn tenant_names() {
        assert!(valid_tenant_name("acme-1"));
        assert!(!valid_tenant_name(""));
        assert!(!valid_tenant_name("../x"));
        assert!(!valid_tenant_name(".hidden"));
        assert!(!valid_tenant_name("a/b"));
    }
}
