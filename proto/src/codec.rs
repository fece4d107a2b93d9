//! Little-endian field access on fixed-layout records. Every accessor is bounds-checked
//! by the caller's length check; none of them panics on a record of the checked size.

pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn need(b: &[u8], n: usize) -> Result<(), crate::DecodeError> {
    if b.len() < n {
        Err(crate::DecodeError::Truncated { need: n, have: b.len() })
    } else {
        Ok(())
    }
}

pub(crate) fn check_magic(b: &[u8], expected: u32) -> Result<(), crate::DecodeError> {
    let found = get_u32(b, 0);
    if found != expected {
        return Err(crate::DecodeError::BadMagic { found, expected });
    }
    let v = get_u16(b, 4);
    if v != crate::PROTOCOL_VERSION {
        return Err(crate::DecodeError::BadVersion(v));
    }
    Ok(())
}

/// Writes a short string as `len: u8` + bytes into a fixed field of `cap` bytes
/// (`1 + max` bytes). Returns an error if it does not fit.
pub(crate) fn put_short_str(
    b: &mut [u8],
    off: usize,
    max: usize,
    s: &[u8],
    field: &'static str,
) -> Result<(), crate::DecodeError> {
    if s.len() > max {
        return Err(crate::DecodeError::Invalid { field, why: "too long" });
    }
    b[off] = s.len() as u8;
    b[off + 1..off + 1 + s.len()].copy_from_slice(s);
    b[off + 1 + s.len()..off + 1 + max].fill(0);
    Ok(())
}

pub(crate) fn get_short_str(b: &[u8], off: usize, max: usize, field: &'static str) -> Result<Vec<u8>, crate::DecodeError> {
    let len = b[off] as usize;
    if len > max {
        return Err(crate::DecodeError::Invalid { field, why: "length exceeds field" });
    }
    Ok(b[off + 1..off + 1 + len].to_vec())
}
