//! Stat and directory-entry records carried in response payloads.

use crate::codec::*;
use crate::DecodeError;

/// Kind of a file-system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A regular file.
    File = 1,
    /// A directory.
    Dir = 2,
}

impl Kind {
    fn from_u8(v: u8) -> Result<Kind, DecodeError> {
        match v {
            1 => Ok(Kind::File),
            2 => Ok(Kind::Dir),
            _ => Err(DecodeError::Invalid { field: "kind", why: "unknown entry kind" }),
        }
    }
}

/// Attributes of a file or directory (32 bytes on the wire).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 1 | kind (1 file, 2 directory) |
/// | 1 | 7 | reserved |
/// | 8 | 8 | size, bytes |
/// | 16 | 8 | modification time, ns since the Unix epoch |
/// | 24 | 8 | reserved |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    pub size: u64,
    pub mtime_ns: u64,
}

/// Encoded size of a [`Stat`].
pub const STAT_SIZE: usize = 32;

impl Stat {
    /// Encodes into 32 bytes.
    pub fn encode(&self) -> [u8; STAT_SIZE] {
        let mut b = [0u8; STAT_SIZE];
        b[0] = self.kind as u8;
        put_u64(&mut b, 8, self.size);
        put_u64(&mut b, 16, self.mtime_ns);
        b
    }

    /// Decodes 32 bytes.
    pub fn decode(b: &[u8]) -> Result<Stat, DecodeError> {
        need(b, STAT_SIZE)?;
        Ok(Stat { kind: Kind::from_u8(b[0])?, size: get_u64(b, 8), mtime_ns: get_u64(b, 16) })
    }
}

/// One directory entry: `kind: u8, name_len: u16, size: u64, name` (11 + name bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub kind: Kind,
    pub size: u64,
    pub name: String,
}

impl DirEntry {
    /// Bytes this entry takes when encoded.
    pub fn encoded_len(&self) -> usize {
        11 + self.name.len()
    }

    /// Appends the encoded entry to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(self.name.as_bytes());
    }

    /// Decodes every entry in a List payload.
    pub fn decode_all(mut b: &[u8]) -> Result<Vec<DirEntry>, DecodeError> {
        let mut v = Vec::new();
        while !b.is_empty() {
            need(b, 11)?;
            let kind = Kind::from_u8(b[0])?;
            let n = get_u16(b, 1) as usize;
            let size = get_u64(b, 3);
            need(b, 11 + n)?;
            let name = String::from_utf8(b[11..11 + n].to_vec())
                .map_err(|_| DecodeError::Invalid { field: "name", why: "not UTF-8" })?;
            v.push(DirEntry { kind, size, name });
            b = &b[11 + n..];
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = Stat { kind: Kind::File, size: 5, mtime_ns: 6 };
        assert_eq!(Stat::decode(&s.encode()).unwrap(), s);
        let es = vec![
            DirEntry { kind: Kind::Dir, size: 0, name: "a".into() },
            DirEntry { kind: Kind::File, size: 9, name: "bé".into() },
        ];
        let mut out = Vec::new();
        for e in &es {
            e.encode_into(&mut out);
        }
        assert_eq!(DirEntry::decode_all(&out).unwrap(), es);
        assert!(DirEntry::decode_all(&out[..out.len() - 1]).is_err());
    }
}
