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
    fn tenant_names() {
        assert!(valid_tenant_name("acme-1"));
        assert!(!valid_tenant_name(""));
        assert!(!valid_tenant_name("../x"));
        assert!(!valid_tenant_name(".hidden"));
        assert!(!valid_tenant_name("a/b"));
    }
}
