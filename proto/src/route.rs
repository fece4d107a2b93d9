//! Route tables (paper §4.3.2): which proxy of a cluster serves a request, in one hop
//! (`docs/protocol.md`, "Route tables and redirects").
//!
//! A [`RouteTable`] has an **epoch** (a version: higher is newer), a [`Placement`]
//! that maps a request to a **route slot**, the cluster's **members** (proxy endpoints
//! as DPUs dial them) and the **owner** of every slot (an index into the members).
//! The DPU and the proxies compute a request's slot with the same function
//! ([`RouteTable::slot`]), so a proxy can tell whether a request it receives is its own.
//!
//! Placements:
//!
//! * [`Placement::Hash`]: `slots` slots; a file request's slot is Ceph's rjenkins hash
//!   of its location string, reduced with Ceph's stable mod — the location string is
//!   the file's location key in hex when the request carries one (the SDK hint), else
//!   `tenant/path`; a plain-volume request's is `volume.<offset / 4 MiB, 16 hex>`.
//! * [`Placement::Ceph`]: the slots are the placement groups of the CephFS data pool
//!   (`pg_num` of them): a file request that carries the file's location key (its
//!   inode number) maps to the data object `<inode hex>.<offset / object_size, 8 hex>`
//!   (CephFS's default layout: stripe unit = object size, stripe count 1), and the object
//!   to its PG exactly as Ceph does (`ceph_str_hash_rjenkins`, then `ceph_stable_mod`
//!   with `pg_num` and its mask; Ceph's `pg_pool_t::raw_hash_to_pg`). Requests without
//!   a location key (path operations: open, stat by path, list, remove) and volume
//!   requests hash as for [`Placement::Hash`] over `pg_num` slots.
//!
//! Wire form ([`RouteTable::encode`], the payload of a [`crate::Status::Redirect`]
//! answer), little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `PoVT` |
//! | 4 | 2 | protocol version (2) |
//! | 6 | 2 | reserved (0) |
//! | 8 | 4 | epoch (≥ 1) |
//! | 12 | 1 | placement: 1 hash, 2 Ceph |
//! | 13 | 1 | members (1..=[`MAX_MEMBERS`]) |
//! | 14 | 2 | reserved (0) |
//! | 16 | 4 | slots (1..=[`MAX_SLOTS`]; Ceph: `pg_num`) |
//! | 20 | 4 | object size, bytes (Ceph; 0 for hash) |
//! | 24 | … | members: `len: u16` then that many bytes of endpoint, each |
//! | … | slots | owner of each slot: a member index, or 255 = none (any member) |

use crate::codec::*;
use crate::DecodeError;

/// Magic of an encoded route table: ASCII `PoVT`.
pub const ROUTE_TABLE_MAGIC: u32 = u32::from_le_bytes(*b"PoVT");
/// Most members of a cluster.
pub const MAX_MEMBERS: usize = 64;
/// Most route slots (Ceph: placement groups of the data pool).
pub const MAX_SLOTS: u32 = 1 << 16;
/// Longest member endpoint, bytes.
pub const MAX_ENDPOINT: usize = 256;
/// Owner value of a slot no member owns (any member may serve it).
pub const NO_OWNER: u8 = 255;
/// Fixed part of an encoded table, bytes.
const HEADER: usize = 24;
/// Size of a plain-volume route piece, bytes (RBD's default object size).
pub const VOLUME_PIECE: u64 = 4 << 20;

/// How requests map to route slots. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Hash of the file's location (or path), or of the volume piece.
    Hash,
    /// Ceph placement groups of the CephFS data pool; `object_size` in bytes (≥ 4 KiB).
    Ceph {
        /// Object size of the file layout, bytes.
        object_size: u32,
    },
}

/// What a request is, as far as routing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteInput<'a> {
    /// A file request of `tenant` on `path` at byte `offset`; `location` is the file's
    /// location key (inode number; 0 = unknown).
    File {
        /// Tenant name.
        tenant: &'a str,
        /// Path inside the tenant's namespace, as the request carries it.
        path: &'a str,
        /// Location key (0: unknown).
        location: u64,
        /// Byte offset of the request.
        offset: u64,
    },
    /// A plain-volume request on volume `name` at byte `offset`.
    Volume {
        /// Volume name.
        name: &'a str,
        /// Byte offset.
        offset: u64,
    },
}

/// A versioned route table. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// Version; a table with a higher epoch replaces one with a lower.
    pub epoch: u32,
    /// Request → slot.
    pub placement: Placement,
    /// Member endpoints (`tcp:HOST:PORT`, `tls:HOST:PORT`), as DPUs dial them.
    pub members: Vec<String>,
    /// Owner of each slot: a member index, or [`NO_OWNER`].
    pub owners: Vec<u8>,
}

/// Why a route table is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route table: {0}")]
pub struct RouteTableError(pub String);

impl RouteTable {
    /// A hash-placement table over `members` with `slots` slots owned in turn
    /// (slot `s` by member `s mod members`).
    pub fn hashed(epoch: u32, members: Vec<String>, slots: u32) -> Result<RouteTable, RouteTableError> {
        let n = members.len().max(1);
        let owners = (0..slots).map(|s| (s as usize % n) as u8).collect();
        let t = RouteTable { epoch, placement: Placement::Hash, members, owners };
        t.validate()?;
        Ok(t)
    }

    /// Checks the limits of the module docs: epoch ≥ 1, 1..=64 members of at most 256
    /// bytes each, 1..=65536 slots, owners in range, Ceph object size ≥ 4 KiB.
    pub fn validate(&self) -> Result<(), RouteTableError> {
        let bad = |why: String| Err(RouteTableError(why));
        if self.epoch == 0 {
            return bad("the epoch must be at least 1".into());
        }
        if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
            return bad(format!("{} members: 1-{MAX_MEMBERS} are allowed", self.members.len()));
        }
        if let Some(m) = self.members.iter().find(|m| m.is_empty() || m.len() > MAX_ENDPOINT) {
            return bad(format!("member endpoint {m:?}: 1-{MAX_ENDPOINT} bytes"));
        }
        if self.owners.is_empty() || self.owners.len() > MAX_SLOTS as usize {
            return bad(format!("{} slots: 1-{MAX_SLOTS} are allowed", self.owners.len()));
        }
        if let Some((s, o)) = self.owners.iter().enumerate().find(|(_, &o)| o != NO_OWNER && o as usize >= self.members.len()) {
            return bad(format!("slot {s} is owned by member {o}, but there are {} members", self.members.len()));
        }
        if let Placement::Ceph { object_size } = self.placement {
            if object_size < 4096 {
                return bad(format!("object size {object_size}: at least 4096 bytes"));
            }
        }
        Ok(())
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The slot of a request (below [`RouteTable::slots`]).
    pub fn slot(&self, input: RouteInput<'_>) -> u32 {
        slot_of(self.placement, self.slots(), input)
    }

    /// The member that owns `slot` (`None`: nobody, or out of range).
    pub fn owner(&self, slot: u32) -> Option<usize> {
        match self.owners.get(slot as usize) {
            Some(&o) if o != NO_OWNER => Some(o as usize),
            _ => None,
        }
    }

    /// The member index of `endpoint`, if it is a member.
    pub fn member(&self, endpoint: &str) -> Option<usize> {
        self.members.iter().position(|m| m == endpoint)
    }

    /// Encodes the table (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HEADER];
        put_u32(&mut out, 0, ROUTE_TABLE_MAGIC);
        put_u16(&mut out, 4, crate::PROTOCOL_VERSION);
        put_u32(&mut out, 8, self.epoch);
        let (kind, osize) = match self.placement {
            Placement::Hash => (1, 0),
            Placement::Ceph { object_size } => (2, object_size),
        };
        out[12] = kind;
        out[13] = self.members.len().min(255) as u8;
        put_u32(&mut out, 16, self.owners.len() as u32);
        put_u32(&mut out, 20, osize);
        for m in &self.members {
            out.extend_from_slice(&(m.len() as u16).to_le_bytes());
            out.extend_from_slice(m.as_bytes());
        }
        out.extend_from_slice(&self.owners);
        out
    }

    /// Decodes and validates an encoded table. Never panics on any input.
    pub fn decode(b: &[u8]) -> Result<RouteTable, DecodeError> {
        need(b, HEADER)?;
        check_magic(b, ROUTE_TABLE_MAGIC)?;
        let inv = |field, why| DecodeError::Invalid { field, why };
        let placement = match b[12] {
            1 => Placement::Hash,
            2 => Placement::Ceph { object_size: get_u32(b, 20) },
            _ => return Err(inv("route placement", "unknown")),
        };
        let n = b[13] as usize;
        let slots = get_u32(b, 16) as usize;
        if n == 0 || n > MAX_MEMBERS || slots == 0 || slots > MAX_SLOTS as usize {
            return Err(inv("route table", "member or slot count out of range"));
        }
        let mut off = HEADER;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            need(b, off + 2)?;
            let len = get_u16(b, off) as usize;
            off += 2;
            need(b, off + len)?;
            let m = std::str::from_utf8(&b[off..off + len]).map_err(|_| inv("route member", "not UTF-8"))?;
            members.push(m.to_string());
            off += len;
        }
        if b.len() != off + slots {
            return Err(inv("route table", "length does not match its counts"));
        }
        let t = RouteTable { epoch: get_u32(b, 8), placement, members, owners: b[off..].to_vec() };
        t.validate().map_err(|_| inv("route table", "fails validation"))?;
        Ok(t)
    }
}

/// The slot of `input` among `slots` under `placement` (see the module docs).
pub fn slot_of(placement: Placement, slots: u32, input: RouteInput<'_>) -> u32 {
    let slots = slots.max(1);
    let hash = match (placement, input) {
        (Placement::Ceph { object_size }, RouteInput::File { location, offset, .. }) if location != 0 => {
            let mut name = Hex::default();
            name.push_hex(location, 0);
            name.push(b'.');
            name.push_hex(offset / u64::from(object_size.max(1)), 8);
            ceph_str_hash_rjenkins(name.bytes())
        }
        (_, RouteInput::File { location, .. }) if location != 0 => {
            let mut name = Hex::default();
            name.push_hex(location, 0);
            ceph_str_hash_rjenkins(name.bytes())
        }
        (_, RouteInput::File { tenant, path, .. }) => {
            rjenkins_parts(&[tenant.as_bytes(), b"/", path.trim_start_matches('/').as_bytes()])
        }
        (_, RouteInput::Volume { name, offset }) => {
            let mut piece = Hex::default();
            piece.push(b'.');
            piece.push_hex(offset / VOLUME_PIECE, 16);
            rjenkins_parts(&[name.as_bytes(), piece.bytes()])
        }
    };
    ceph_stable_mod(hash, slots, pg_num_mask(slots))
}

/// A short string built on the stack (hex numbers and dots).
struct Hex {
    buf: [u8; 40],
    len: usize,
}

impl Default for Hex {
    fn default() -> Hex {
        Hex { buf: [0; 40], len: 0 }
    }
}

impl Hex {
    fn push(&mut self, c: u8) {
        if self.len < self.buf.len() {
            self.buf[self.len] = c;
            self.len += 1;
        }
    }
    /// Lower-case hex of `v`, zero-padded to at least `width` digits (`%0*llx`).
    fn push_hex(&mut self, v: u64, width: usize) {
        let digits = (64 - v.leading_zeros() as usize).div_ceil(4).max(1).max(width);
        for i in (0..digits).rev() {
            let d = if i >= 16 { 0 } else { (v >> (4 * i)) & 0xf } as u8;
            self.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `pg_num_mask` of a pool with `pg_num` PGs: the smallest `2^k - 1` ≥ `pg_num - 1`
/// (Ceph's `pg_pool_t::calc_pg_masks`).
pub fn pg_num_mask(pg_num: u32) -> u32 {
    if pg_num <= 1 {
        return 0;
    }
    let bits = 32 - (pg_num - 1).leading_zeros();
    ((1u64 << bits) - 1) as u32
}

/// Ceph's stable mod (`ceph_stable_mod`, `src/include/ceph_fs.h`): `x` reduced to
/// `0..b` so that growing `b` moves as few values as possible; `bmask` is
/// [`pg_num_mask`]`(b)`.
pub fn ceph_stable_mod(x: u32, b: u32, bmask: u32) -> u32 {
    if (x & bmask) < b {
        x & bmask
    } else {
        x & (bmask >> 1)
    }
}

/// Ceph's default object-name hash, Robert Jenkins' 1996 hash as Ceph implements it
/// (`ceph_str_hash_rjenkins`, `src/common/ceph_hash.cc`; `CEPH_STR_HASH_RJENKINS`).
/// Checked against `ceph osd map` in `e2e/tests/ceph.rs`.
pub fn ceph_str_hash_rjenkins(s: &[u8]) -> u32 {
    rjenkins_parts(&[s])
}

/// [`ceph_str_hash_rjenkins`] of the concatenation of `parts` (without building it).
pub fn rjenkins_parts(parts: &[&[u8]]) -> u32 {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let mut bytes = parts.iter().flat_map(|p| p.iter().copied());
    let (mut a, mut b, mut c) = (0x9e37_79b9u32, 0x9e37_79b9u32, 0u32);
    let mut len = length;
    let word = |k: &[u8]| u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
    let mut block = [0u8; 12];
    while len >= 12 {
        for x in block.iter_mut() {
            *x = bytes.next().unwrap_or(0);
        }
        a = a.wrapping_add(word(&block[0..4]));
        b = b.wrapping_add(word(&block[4..8]));
        c = c.wrapping_add(word(&block[8..12]));
        mix(&mut a, &mut b, &mut c);
        len -= 12;
    }
    let mut k = [0u8; 12];
    for x in k.iter_mut().take(len) {
        *x = bytes.next().unwrap_or(0);
    }
    c = c.wrapping_add(length as u32);
    // The tail: bytes 8..11 go to c above its low byte (which holds the length),
    // 4..8 to b, 0..4 to a — the C switch's fall-through cases.
    if len > 8 {
        for (i, &x) in k.iter().enumerate().take(len).skip(8) {
            c = c.wrapping_add(u32::from(x) << (8 * (i - 7)));
        }
    }
    for (i, &x) in k.iter().enumerate().take(len.min(8)).skip(4) {
        b = b.wrapping_add(u32::from(x) << (8 * (i - 4)));
    }
    for (i, &x) in k.iter().enumerate().take(len.min(4)) {
        a = a.wrapping_add(u32::from(x) << (8 * i));
    }
    mix(&mut a, &mut b, &mut c);
    c
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 13);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 8);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 13);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 12);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 16);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 5);
    *a = a.wrapping_sub(*b).wrapping_sub(*c) ^ (*c >> 3);
    *b = b.wrapping_sub(*c).wrapping_sub(*a) ^ (*a << 10);
    *c = c.wrapping_sub(*a).wrapping_sub(*b) ^ (*b >> 15);
}

/// The CephFS data object holding byte `offset` of the file with inode `ino` under the
/// default layout with `object_size`-byte objects: `<ino hex>.<index, 8 hex>`.
pub fn cephfs_data_object(ino: u64, offset: u64, object_size: u32) -> String {
    format!("{ino:x}.{:08x}", offset / u64::from(object_size.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_mod_and_masks_match_ceph() {
        assert_eq!(pg_num_mask(8), 7);
        assert_eq!(pg_num_mask(12), 15);
        assert_eq!(pg_num_mask(1), 0);
        // pg_num 12, mask 15: values 12..15 fold into 4..7.
        assert_eq!(ceph_stable_mod(13, 12, 15), 5);
        assert_eq!(ceph_stable_mod(11, 12, 15), 11);
        assert_eq!(ceph_stable_mod(0xffff_fff9, 8, 7), 1);
    }

    #[test]
    fn rjenkins_is_stable_and_streams() {
        // Every tail length and the block path agree with the one-slice form.
        let s = b"10000000000.00000000-and-a-longer-tail";
        for n in 0..s.len() {
            let (x, y) = s[..n].split_at(n / 3);
            assert_eq!(rjenkins_parts(&[x, y]), ceph_str_hash_rjenkins(&s[..n]), "length {n}");
        }
        assert_ne!(ceph_str_hash_rjenkins(b"a"), ceph_str_hash_rjenkins(b"b"));
        assert_eq!(cephfs_data_object(0x10000000000, 9 << 22, 4 << 20), "10000000000.00000009");
    }

    #[test]
    fn slots_agree_with_object_names() {
        let t = RouteTable {
            epoch: 3,
            placement: Placement::Ceph { object_size: 4 << 20 },
            members: vec!["tcp:a:1".into()],
            owners: vec![0; 8],
        };
        let input = RouteInput::File { tenant: "t", path: "f", location: 0x10000000000, offset: (4 << 20) + 5 };
        let obj = cephfs_data_object(0x10000000000, (4 << 20) + 5, 4 << 20);
        assert_eq!(t.slot(input), ceph_stable_mod(ceph_str_hash_rjenkins(obj.as_bytes()), 8, 7));
        // Same file, same slot under hash placement, whatever the offset.
        let h = RouteTable::hashed(1, vec!["a".into(), "b".into()], 64).unwrap();
        let at = |offset| h.slot(RouteInput::File { tenant: "t", path: "/d/f", location: 0, offset });
        assert_eq!(at(0), at(1 << 30));
        assert_eq!(at(0), h.slot(RouteInput::File { tenant: "t", path: "d/f", location: 0, offset: 0 }), "leading / ignored");
        assert!(at(0) < 64);
    }

    #[test]
    fn encode_decode_round_trip_and_bad_input() {
        let t = RouteTable::hashed(7, vec!["tcp:127.0.0.1:1".into(), "tls:h:2".into(), "tcp:x:3".into()], 10).unwrap();
        let b = t.encode();
        assert_eq!(RouteTable::decode(&b).unwrap(), t);
        for n in 0..b.len() {
            assert!(RouteTable::decode(&b[..n]).is_err(), "truncated at {n}");
        }
        let mut bad = b.clone();
        *bad.last_mut().unwrap() = 3; // owner 3 of 3 members
        assert!(RouteTable::decode(&bad).is_err());
        let mut zero = b.clone();
        put_u32(&mut zero, 8, 0);
        assert!(RouteTable::decode(&zero).is_err(), "epoch 0");
        assert!(RouteTable::hashed(1, vec![], 4).is_err());
        assert_eq!(t.owner(4), Some(1));
        assert_eq!(t.member("tls:h:2"), Some(1));
    }
}
