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
/// | 1 | 3 | reserved |
/// | 4 | 4 | permission bits (`0o777` at most; 0 from a backend that keeps none) |
/// | 8 | 8 | size, bytes |
/// | 16 | 8 | modification time, ns since the Unix epoch |
/// | 24 | 8 | reserved |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits, `0o777` at most (`rwxrwxrwx`; no set-id or sticky bits).
    pub mode: u32,
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
        put_u32(&mut b, 4, self.mode & MODE_MASK);
        put_u64(&mut b, 8, self.size);
        put_u64(&mut b, 16, self.mtime_ns);
        b
    }

    /// Decodes 32 bytes.
    pub fn decode(b: &[u8]) -> Result<Stat, DecodeError> {
        need(b, STAT_SIZE)?;
        let mode = get_u32(b, 4) & MODE_MASK;
        Ok(Stat { kind: Kind::from_u8(b[0])?, mode, size: get_u64(b, 8), mtime_ns: get_u64(b, 16) })
    }
}

/// The permission bits PoV carries (`rwxrwxrwx`): set-user-ID, set-group-ID and
/// sticky bits are never stored or reported.
pub const MODE_MASK: u32 = 0o777;

/// Capacity of the storage behind a tenant's namespace (48 bytes on the wire), the
/// response payload of `StatFs`; the fields of POSIX `statvfs`.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | block size, bytes (the unit of the block counts) |
/// | 4 | 4 | longest name component, bytes |
/// | 8 | 8 | blocks in total |
/// | 16 | 8 | free blocks |
/// | 24 | 8 | blocks available to the tenant |
/// | 32 | 8 | file slots (inodes) in total (0: no limit known) |
/// | 40 | 8 | free file slots |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(missing_docs)]
pub struct StatFs {
    pub block_size: u32,
    pub name_max: u32,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

/// Encoded size of a [`StatFs`].
pub const STATFS_SIZE: usize = 48;

impl StatFs {
    /// Encodes into 48 bytes.
    pub fn encode(&self) -> [u8; STATFS_SIZE] {
        let mut b = [0u8; STATFS_SIZE];
        put_u32(&mut b, 0, self.block_size);
        put_u32(&mut b, 4, self.name_max);
        for (i, v) in [self.blocks, self.blocks_free, self.blocks_available, self.files, self.files_free].into_iter().enumerate()
        {
            put_u64(&mut b, 8 + 8 * i, v);
        }
        b
    }

    /// Decodes 48 bytes. A zero block size is [`DecodeError::Invalid`].
    pub fn decode(b: &[u8]) -> Result<StatFs, DecodeError> {
        need(b, STATFS_SIZE)?;
        let s = StatFs {
            block_size: get_u32(b, 0),
            name_max: get_u32(b, 4),
            blocks: get_u64(b, 8),
            blocks_free: get_u64(b, 16),
            blocks_available: get_u64(b, 24),
            files: get_u64(b, 32),
            files_free: get_u64(b, 40),
        };
        if s.block_size == 0 {
            return Err(DecodeError::Invalid { field: "block_size", why: "zero" });
        }
        Ok(s)
    }

    /// Total capacity in bytes (saturating).
    pub fn total_bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }

    /// Bytes available to the tenant (saturating).
    pub fn available_bytes(&self) -> u64 {
        self.blocks_available.saturating_mul(u64::from(self.block_size))
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
        let s = Stat { kind: Kind::File, mode: 0o640, size: 5, mtime_ns: 6 };
        assert_eq!(Stat::decode(&s.encode()).unwrap(), s);
        let setuid = Stat { mode: 0o4755, ..s };
        assert_eq!(Stat::decode(&setuid.encode()).unwrap().mode, 0o755, "set-id bits are never carried");
        let f =
            StatFs { block_size: 4096, name_max: 255, blocks: 10, blocks_free: 4, blocks_available: 3, files: 9, files_free: 1 };
        assert_eq!(StatFs::decode(&f.encode()).unwrap(), f);
        assert_eq!((f.total_bytes(), f.available_bytes()), (40960, 12288));
        assert!(StatFs::decode(&StatFs::default().encode()).is_err(), "block size 0");
        assert!(StatFs::decode(&f.encode()[..47]).is_err());
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
