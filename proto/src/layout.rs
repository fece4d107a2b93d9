//! The PoV device address space (paper §5; `docs/protocol.md`, "Device layout").
//!
//! A PoV device is a virtio-blk device of 512-byte sectors whose byte address space is
//! divided into regions:
//!
//! ```text
//! 0        4 KiB        64 KiB      +1 KiB  +4 KiB                  +132 KiB    1 MiB (io_base)
//! | config |   guard    | admin req | guard | 256 admin mailboxes   | guard      | IO area 0 | IO area 1 | ...
//!
//! IO area a (area_stride bytes) = queues_per_area queues, each queue_stride (4 MiB) bytes:
//! | request slot (1 MiB + 4 KiB) | guard | response slot (1 MiB + 4 KiB) | guard |
//! ^ +0                                   ^ +2 MiB
//!
//! After the last IO area (window_base), when the configuration space advertises
//! features::RESPONSE_WINDOWS, 4 MiB per queue q (global ID):
//! | response window 0 (1 MiB + 4 KiB) | guard | response window 1 (1 MiB + 4 KiB) | guard |
//! ```
//!
//! A **response window** is a second view of a queue's response slot for the host that
//! submits the request WRITE and the response READ together (io_uring, libblkio): a READ
//! of window `p` is served only by a response to a request whose ID has parity `p`
//! (`request_id % 2`), and waits for one otherwise — so the READ may reach the device
//! before or after its WRITE (`docs/protocol.md`, "Response windows").
//!
//! Guard space is never part of a valid IO, so the host block layer can never merge
//! two requests aimed at different slots into one (they are never adjacent), and an IO
//! that touches two regions is rejected by the device.
//!
//! Reads of guard space return zeros (so partition scanners and `blkid` find nothing);
//! writes to guard space or to the configuration space fail with a virtio IO error.

use crate::codec::*;
use crate::{DecodeError, MAX_IO_BYTES, PROTOCOL_VERSION};

/// Bytes per sector (virtio-blk's unit for the request `sector` field).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the configuration space, in bytes.
pub const CONFIG_SIZE: u64 = 4096;
/// Byte offset of the admin space.
pub const ADMIN_OFFSET: u64 = 64 * 1024;
/// Byte offset of the admin request record (one WRITE of [`ADMIN_RECORD_SIZE`] bytes).
pub const ADMIN_REQ_OFFSET: u64 = ADMIN_OFFSET;
/// Size of the admin request record, in bytes.
pub const ADMIN_RECORD_SIZE: usize = crate::admin::ADMIN_REQUEST_SIZE;
/// Byte offset of admin mailbox 0: the answers to admin requests, one
/// [`MAILBOX_SIZE`]-byte record per mailbox (protocol v2: the paper's single shared
/// response record let any process read or clobber another's answer).
pub const ADMIN_MAILBOX_OFFSET: u64 = ADMIN_OFFSET + 4096;
/// Number of admin mailboxes.
pub const ADMIN_MAILBOXES: u16 = 256;
/// Size of one mailbox, in bytes.
pub const MAILBOX_SIZE: u64 = crate::admin::ADMIN_RESPONSE_SIZE as u64;
/// Size of the admin space, in bytes: the request record, a guard, the mailboxes.
pub const ADMIN_SIZE: u64 = 4096 + ADMIN_MAILBOXES as u64 * MAILBOX_SIZE;

/// Byte offset of admin mailbox `m`.
pub fn mailbox_offset(m: u16) -> u64 {
    ADMIN_MAILBOX_OFFSET + m as u64 * MAILBOX_SIZE
}
/// Byte offset of IO area 0.
pub const IO_BASE: u64 = 1 << 20;
/// Offset of an IO area's **session mailbox** from the area's start (the request slot
/// of its first queue), bytes: a [`MAILBOX_SIZE`]-byte record in the guard space after
/// that queue's response slot, where the device answers the session's authenticated
/// admin requests (`docs/protocol.md`, "In-session admin requests").
pub const SESSION_MAILBOX_OFFSET: u64 = 3 << 20 | 512 << 10;
/// Size of the IO request and response headers, in bytes.
pub const HEADER_SIZE: usize = 512;
/// Size of one request or response slot: header + up to 1 MiB payload, rounded up to
/// 4 KiB. Bytes.
pub const SLOT_SIZE: u64 = MAX_IO_BYTES as u64 + 4096;
/// Offset of the response slot from the start of its queue, in bytes.
pub const RESP_SLOT_OFFSET: u64 = 2 << 20;
/// Distance between consecutive queues, in bytes.
pub const QUEUE_STRIDE: u64 = 4 << 20;
/// Largest number of queues one session (IO area) may hold.
pub const MAX_QUEUES_PER_AREA: u32 = 64;
/// Largest number of IO areas (concurrent sessions) on one device.
pub const MAX_AREAS: u32 = 4096;
/// virtio-blk serial prefix that marks a PoV device (GET_ID, `/sys/block/vdX/serial`).
pub const SERIAL_PREFIX: &str = "pov-";
/// Length of the virtio-blk serial (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;
/// Magic at byte 0 of the configuration space: ASCII `PoVD`.
pub const CONFIG_MAGIC: u32 = u32::from_le_bytes(*b"PoVD");

/// Feature bits of the configuration record (its `features` field, byte 22). A host
/// uses a feature only if the device sets its bit; a device ignores bits it does not
/// know. Older devices write 0 there.
pub mod features {
    /// The device serves response windows ([`super::Geometry::response_window`]) and
    /// its capacity covers them ([`super::Geometry::capacity_bytes`]).
    pub const RESPONSE_WINDOWS: u16 = 1 << 0;
    /// Every feature this version of the protocol crate knows.
    pub const ALL: u16 = RESPONSE_WINDOWS;
}

/// Geometry of one PoV device; the configuration space carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of IO areas, i.e. the most sessions open at once.
    pub areas: u32,
    /// Queues per IO area, i.e. the most queues one session may create.
    pub queues_per_area: u32,
}

/// Which region an IO touches, as decided from its byte offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The read-only configuration space; `offset` is relative to it.
    Config { offset: u64 },
    /// The admin request record; `offset` is relative to [`ADMIN_REQ_OFFSET`].
    AdminRequest { offset: u64 },
    /// The admin mailboxes; `offset` is relative to [`ADMIN_MAILBOX_OFFSET`].
    AdminMailboxes { offset: u64 },
    /// The session mailbox of IO area `area`; `offset` is relative to it.
    SessionMailbox { area: u32, offset: u64 },
    /// A queue's request slot; `offset` is relative to the slot start.
    RequestSlot { queue: u32, offset: u64 },
    /// A queue's response slot; `offset` is relative to the slot start.
    ResponseSlot { queue: u32, offset: u64 },
    /// Response window `parity` (0 or 1) of a queue; `offset` is relative to its start.
    ResponseWindow { queue: u32, parity: u8, offset: u64 },
    /// Guard or unused space (reads return zeros, writes fail).
    Guard,
    /// The IO crosses a region boundary or leaves the device.
    Crossing,
}

impl Geometry {
    /// Checks the limits: 1..=[`MAX_AREAS`] areas and 1..=[`MAX_QUEUES_PER_AREA`]
    /// queues per area.
    pub fn new(areas: u32, queues_per_area: u32) -> Result<Geometry, DecodeError> {
        if areas == 0 || areas > MAX_AREAS {
            return Err(DecodeError::Invalid { field: "areas", why: "must be 1..=4096" });
        }
        if queues_per_area == 0 || queues_per_area > MAX_QUEUES_PER_AREA {
            return Err(DecodeError::Invalid { field: "queues_per_area", why: "must be 1..=64" });
        }
        Ok(Geometry { areas, queues_per_area })
    }

    /// Bytes between the starts of consecutive IO areas.
    pub fn area_stride(&self) -> u64 {
        self.queues_per_area as u64 * QUEUE_STRIDE
    }

    /// End of the last IO area, in bytes: where the response windows start, and the
    /// capacity of a device without [`features::RESPONSE_WINDOWS`].
    pub fn window_base(&self) -> u64 {
        IO_BASE + self.areas as u64 * self.area_stride()
    }

    /// Device capacity in bytes: the IO areas and, after them, two response windows per
    /// queue ([`QUEUE_STRIDE`] bytes per queue).
    pub fn capacity_bytes(&self) -> u64 {
        self.window_base() + self.total_queues() as u64 * QUEUE_STRIDE
    }

    /// Device capacity in 512-byte sectors (virtio-blk `capacity`).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_bytes() / SECTOR_SIZE
    }

    /// Total number of queues on the device; queue IDs are `0..total_queues()`.
    pub fn total_queues(&self) -> u32 {
        self.areas * self.queues_per_area
    }

    /// Global queue ID of queue `index` in area `area`.
    pub fn queue_id(&self, area: u32, index: u32) -> u32 {
        area * self.queues_per_area + index
    }

    /// Area that holds global queue `queue`.
    pub fn area_of(&self, queue: u32) -> u32 {
        queue / self.queues_per_area
    }

    /// Byte offset of the queue's request slot.
    pub fn request_slot(&self, queue: u32) -> u64 {
        IO_BASE + queue as u64 * QUEUE_STRIDE
    }

    /// Byte offset of IO area `area`'s session mailbox ([`SESSION_MAILBOX_OFFSET`]).
    pub fn session_mailbox(&self, area: u32) -> u64 {
        self.request_slot(area * self.queues_per_area) + SESSION_MAILBOX_OFFSET
    }

    /// Byte offset of the queue's response slot.
    pub fn response_slot(&self, queue: u32) -> u64 {
        self.request_slot(queue) + RESP_SLOT_OFFSET
    }

    /// Byte offset of the queue's response window for requests whose ID has parity
    /// `request_id % 2` ([`SLOT_SIZE`] bytes; see the module docs).
    pub fn response_window(&self, queue: u32, request_id: u64) -> u64 {
        self.window_base() + queue as u64 * QUEUE_STRIDE + (request_id % 2) * RESP_SLOT_OFFSET
    }

    /// Classifies an IO of `len` bytes at byte `offset`. A zero-length IO is classified
    /// by its offset (one at or past the capacity leaves the device).
    pub fn classify(&self, offset: u64, len: u64) -> Region {
        let end = match offset.checked_add(len) {
            // `offset <` too: a zero-length IO at the capacity would otherwise land in
            // the request slot of a queue past the last one.
            Some(e) if e <= self.capacity_bytes() && offset < self.capacity_bytes() => e,
            _ => return Region::Crossing,
        };
        let within = |start: u64, size: u64| offset >= start && end <= start + size;
        let touches = |start: u64, size: u64| offset < start + size && end > start;
        if within(0, CONFIG_SIZE) {
            return Region::Config { offset };
        }
        if within(ADMIN_REQ_OFFSET, ADMIN_RECORD_SIZE as u64) {
            return Region::AdminRequest { offset: offset - ADMIN_REQ_OFFSET };
        }
        if within(ADMIN_MAILBOX_OFFSET, ADMIN_MAILBOXES as u64 * MAILBOX_SIZE) {
            return Region::AdminMailboxes { offset: offset - ADMIN_MAILBOX_OFFSET };
        }
        if touches(0, CONFIG_SIZE) || touches(ADMIN_OFFSET, ADMIN_SIZE) {
            return Region::Crossing;
        }
        if offset < IO_BASE {
            return if end <= IO_BASE { Region::Guard } else { Region::Crossing };
        }
        let windows = self.window_base();
        if offset >= windows {
            let queue = ((offset - windows) / QUEUE_STRIDE) as u32;
            let base = windows + queue as u64 * QUEUE_STRIDE;
            let (rel, rel_end) = (offset - base, end - base);
            for parity in 0..2u8 {
                let start = parity as u64 * RESP_SLOT_OFFSET;
                if rel >= start && rel_end <= start + SLOT_SIZE {
                    return Region::ResponseWindow { queue, parity, offset: rel - start };
                }
            }
            let touches_window = |start: u64| rel < start + SLOT_SIZE && rel_end > start;
            if rel_end > QUEUE_STRIDE || touches_window(0) || touches_window(RESP_SLOT_OFFSET) {
                return Region::Crossing;
            }
            return Region::Guard;
        }
        if end > windows {
            return Region::Crossing;
        }
        let queue = ((offset - IO_BASE) / QUEUE_STRIDE) as u32;
        let base = self.request_slot(queue);
        let rel = offset - base;
        let rel_end = end - base;
        if rel_end > QUEUE_STRIDE {
            return Region::Crossing;
        }
        if rel_end <= SLOT_SIZE {
            return Region::RequestSlot { queue, offset: rel };
        }
        if rel >= RESP_SLOT_OFFSET && rel_end <= RESP_SLOT_OFFSET + SLOT_SIZE {
            return Region::ResponseSlot { queue, offset: rel - RESP_SLOT_OFFSET };
        }
        let first_of_area = queue % self.queues_per_area == 0;
        if first_of_area && within(base + SESSION_MAILBOX_OFFSET, MAILBOX_SIZE) {
            return Region::SessionMailbox { area: queue / self.queues_per_area, offset: rel - SESSION_MAILBOX_OFFSET };
        }
        let mailbox = first_of_area && touches(base + SESSION_MAILBOX_OFFSET, MAILBOX_SIZE);
        if touches(base, SLOT_SIZE) || touches(base + RESP_SLOT_OFFSET, SLOT_SIZE) || mailbox {
            return Region::Crossing;
        }
        Region::Guard
    }
}

/// The read-only configuration record at byte 0 of a PoV device (64 bytes used, the
/// rest of the 4 KiB configuration space reads as zeros).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `PoVD` |
/// | 4 | 2 | protocol version |
/// | 6 | 2 | header size (512) |
/// | 8 | 4 | max IO bytes (1 MiB) |
/// | 12 | 4 | areas |
/// | 16 | 4 | queues per area |
/// | 20 | 2 | admin mailboxes |
/// | 22 | 2 | features ([`features`]) |
/// | 24 | 8 | admin offset (bytes) |
/// | 32 | 8 | IO base (bytes) |
/// | 40 | 8 | queue stride (bytes) |
/// | 48 | 8 | response slot offset within a queue (bytes) |
/// | 56 | 8 | slot size (bytes) |
/// | 64 | 1+31 | device name (length-prefixed) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    /// Device geometry.
    pub geometry: Geometry,
    /// Device name given at `pov_device_create`.
    pub name: String,
    /// Feature bits ([`features`]); a decoded record keeps unknown bits.
    pub features: u16,
}

/// Bytes of the configuration record that carry data.
pub const CONFIG_RECORD_SIZE: usize = 96;
/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME: usize = 31;

impl ConfigSpace {
    /// Encodes into a [`CONFIG_RECORD_SIZE`]-byte record.
    pub fn encode(&self) -> [u8; CONFIG_RECORD_SIZE] {
        let mut b = [0u8; CONFIG_RECORD_SIZE];
        put_u32(&mut b, 0, CONFIG_MAGIC);
        put_u16(&mut b, 4, PROTOCOL_VERSION);
        put_u16(&mut b, 6, HEADER_SIZE as u16);
        put_u32(&mut b, 8, MAX_IO_BYTES);
        put_u32(&mut b, 12, self.geometry.areas);
        put_u32(&mut b, 16, self.geometry.queues_per_area);
        put_u16(&mut b, 20, ADMIN_MAILBOXES);
        put_u16(&mut b, 22, self.features);
        put_u64(&mut b, 24, ADMIN_OFFSET);
        put_u64(&mut b, 32, IO_BASE);
        put_u64(&mut b, 40, QUEUE_STRIDE);
        put_u64(&mut b, 48, RESP_SLOT_OFFSET);
        put_u64(&mut b, 56, SLOT_SIZE);
        let name = self.name.as_bytes();
        let n = name.len().min(MAX_DEVICE_NAME);
        b[64] = n as u8;
        b[65..65 + n].copy_from_slice(&name[..n]);
        b
    }

    /// Decodes and validates a configuration record: a host uses this to decide that a
    /// block device is a PoV device it can drive.
    pub fn decode(b: &[u8]) -> Result<ConfigSpace, DecodeError> {
        need(b, CONFIG_RECORD_SIZE)?;
        check_magic(b, CONFIG_MAGIC)?;
        let fixed = [
            (get_u16(b, 6) as u64, HEADER_SIZE as u64, "header_size"),
            (get_u32(b, 8) as u64, MAX_IO_BYTES as u64, "max_io_bytes"),
            (get_u16(b, 20) as u64, ADMIN_MAILBOXES as u64, "admin_mailboxes"),
            (get_u64(b, 24), ADMIN_OFFSET, "admin_offset"),
            (get_u64(b, 32), IO_BASE, "io_base"),
            (get_u64(b, 40), QUEUE_STRIDE, "queue_stride"),
            (get_u64(b, 48), RESP_SLOT_OFFSET, "response_slot_offset"),
            (get_u64(b, 56), SLOT_SIZE, "slot_size"),
        ];
        for (got, want, field) in fixed {
            if got != want {
                return Err(DecodeError::Invalid { field, why: "differs from this protocol version" });
            }
        }
        let geometry = Geometry::new(get_u32(b, 12), get_u32(b, 16))?;
        let name = get_short_str(b, 64, MAX_DEVICE_NAME, "name")?;
        let name = String::from_utf8(name).map_err(|_| DecodeError::Invalid { field: "name", why: "not UTF-8" })?;
        Ok(ConfigSpace { geometry, name, features: get_u16(b, 22) })
    }

    /// `true` if the device advertises every bit of `feature`.
    pub fn has(&self, feature: u16) -> bool {
        self.features & feature == feature
    }

    /// Bytes of device the host needs: [`Geometry::capacity_bytes`] with response
    /// windows, [`Geometry::window_base`] without.
    pub fn needed_capacity(&self) -> u64 {
        if self.has(features::RESPONSE_WINDOWS) {
            self.geometry.capacity_bytes()
        } else {
            self.geometry.window_base()
        }
    }
}

/// The virtio-blk serial (GET_ID, 20 bytes, NUL padded) of PoV device `name`:
/// `pov-<name>` truncated to 20 bytes.
pub fn serial_for(name: &str) -> [u8; SERIAL_LEN] {
    let mut s = [0u8; SERIAL_LEN];
    let full = format!("{SERIAL_PREFIX}{name}");
    let n = full.len().min(SERIAL_LEN);
    s[..n].copy_from_slice(&full.as_bytes()[..n]);
    s
}

/// `true` if a virtio-blk serial (as read from GET_ID or sysfs) marks a PoV device.
pub fn is_pov_serial(serial: &[u8]) -> bool {
    serial.starts_with(SERIAL_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Geometry {
        Geometry::new(8, 4).unwrap()
    }

    #[test]
    fn config_round_trip_and_validation() {
        let c = ConfigSpace { geometry: g(), name: "dev0".into(), features: features::ALL };
        let b = c.encode();
        assert_eq!(ConfigSpace::decode(&b).unwrap(), c);
        let mut bad = b;
        bad[0] ^= 1;
        assert!(matches!(ConfigSpace::decode(&bad), Err(DecodeError::BadMagic { .. })));
        let mut bad = b;
        bad[40] ^= 1;
        assert!(matches!(ConfigSpace::decode(&bad), Err(DecodeError::Invalid { .. })));
        assert!(matches!(ConfigSpace::decode(&b[..10]), Err(DecodeError::Truncated { .. })));
        assert!(ConfigSpace::decode(&[0u8; 4096]).is_err());
        // A record of an older device (features 0) still decodes; it needs no windows.
        let mut old = b;
        old[22..24].fill(0);
        let old = ConfigSpace::decode(&old).unwrap();
        assert!(!old.has(features::RESPONSE_WINDOWS));
        assert_eq!(old.needed_capacity(), g().window_base());
        assert_eq!(ConfigSpace::decode(&b).unwrap().needed_capacity(), g().capacity_bytes());
    }

    #[test]
    fn response_windows() {
        let g = g();
        let q = g.total_queues() - 1;
        let w0 = g.response_window(q, 10);
        let w1 = g.response_window(q, 11);
        assert_eq!(w1 - w0, RESP_SLOT_OFFSET);
        assert_eq!(g.classify(w0, SLOT_SIZE), Region::ResponseWindow { queue: q, parity: 0, offset: 0 });
        assert_eq!(g.classify(w1 + 512, 4096), Region::ResponseWindow { queue: q, parity: 1, offset: 512 });
        assert_eq!(g.classify(g.response_window(0, 1), 512), Region::ResponseWindow { queue: 0, parity: 1, offset: 0 });
        assert_eq!(g.classify(w0 + SLOT_SIZE, 512), Region::Guard);
        assert_eq!(g.classify(w0 + SLOT_SIZE - 512, 1024), Region::Crossing);
        assert_eq!(g.classify(w1 + SLOT_SIZE, 512), Region::Guard, "the guard after window 1");
        assert_eq!(g.classify(g.window_base() - 512, 1024), Region::Crossing, "IO areas into windows");
        assert_eq!(g.classify(w1, QUEUE_STRIDE), Region::Crossing);
        assert_eq!(g.capacity_bytes(), g.response_window(q, 0) + QUEUE_STRIDE);
        assert_eq!(g.classify(g.capacity_bytes() - 512, 512), Region::Guard);
        assert_eq!(g.classify(g.capacity_bytes(), 512), Region::Crossing);
    }

    #[test]
    fn slots_never_adjacent() {
        let g = g();
        for q in 0..g.total_queues() {
            let req_end = g.request_slot(q) + SLOT_SIZE;
            assert!(req_end < g.response_slot(q), "guard after request slot");
            let resp_end = g.response_slot(q) + SLOT_SIZE;
            if q + 1 < g.total_queues() {
                assert!(resp_end < g.request_slot(q + 1), "guard after response slot");
            }
        }
        const { assert!(ADMIN_OFFSET + ADMIN_SIZE < IO_BASE) };
        const { assert!(CONFIG_SIZE < ADMIN_OFFSET) };
    }

    #[test]
    fn classify_regions() {
        let g = g();
        assert_eq!(g.classify(0, 512), Region::Config { offset: 0 });
        assert_eq!(g.classify(ADMIN_REQ_OFFSET, 1024), Region::AdminRequest { offset: 0 });
        assert_eq!(g.classify(mailbox_offset(1), 512), Region::AdminMailboxes { offset: 512 });
        assert_eq!(g.classify(mailbox_offset(255), 512), Region::AdminMailboxes { offset: 255 * 512 });
        assert_eq!(g.classify(mailbox_offset(255), 1024), Region::Crossing, "past the last mailbox");
        assert_eq!(g.classify(ADMIN_REQ_OFFSET + 1024, 512), Region::Crossing, "the guard inside the admin space");
        assert_eq!(g.classify(ADMIN_REQ_OFFSET + 512, 1024), Region::Crossing);
        assert_eq!(g.classify(8192, 512), Region::Guard);
        let q = 5;
        assert_eq!(
            g.classify(g.request_slot(q), HEADER_SIZE as u64 + MAX_IO_BYTES as u64),
            Region::RequestSlot { queue: q, offset: 0 }
        );
        assert_eq!(g.classify(g.response_slot(q) + 4096, 4096), Region::ResponseSlot { queue: q, offset: 4096 });
        assert_eq!(g.classify(g.request_slot(q) + SLOT_SIZE - 512, 1024), Region::Crossing);
        assert_eq!(g.classify(g.request_slot(q) + SLOT_SIZE, 512), Region::Guard);
        // Session mailboxes: one per area, after its first queue's response slot.
        let qpa = g.queues_per_area;
        assert_eq!(g.classify(g.session_mailbox(1), 512), Region::SessionMailbox { area: 1, offset: 0 });
        assert_eq!(g.session_mailbox(1), g.request_slot(qpa) + SESSION_MAILBOX_OFFSET);
        assert_eq!(g.classify(g.session_mailbox(0) + 256, 256), Region::SessionMailbox { area: 0, offset: 256 });
        assert_eq!(g.classify(g.session_mailbox(1) - 512, 1024), Region::Crossing);
        assert_eq!(g.classify(g.session_mailbox(1) + 512, 512), Region::Guard);
        assert_eq!(
            g.classify(g.request_slot(qpa + 1) + SESSION_MAILBOX_OFFSET, 512),
            Region::Guard,
            "not the area's first queue"
        );
        const { assert!(SESSION_MAILBOX_OFFSET >= RESP_SLOT_OFFSET + SLOT_SIZE + 4096) };
        const { assert!(SESSION_MAILBOX_OFFSET + MAILBOX_SIZE < QUEUE_STRIDE) };
        assert_eq!(g.classify(g.capacity_bytes() - 512, 1024), Region::Crossing);
        assert_eq!(g.classify(u64::MAX - 10, 512), Region::Crossing);
        // An IO spanning two queues' slots (what a block-layer merge would produce).
        assert_eq!(g.classify(g.response_slot(q), QUEUE_STRIDE), Region::Crossing);
        // Zero-length IOs are classified by their offset; one at the capacity names no
        // queue (found by the checks of fuzz target proto_config: it was RequestSlot { queue: 32 }).
        assert_eq!(g.classify(g.request_slot(q) + 512, 0), Region::RequestSlot { queue: q, offset: 512 });
        assert_eq!(g.classify(g.capacity_bytes(), 0), Region::Crossing);
    }

    #[test]
    fn serial_marks_device() {
        let s = serial_for("a-very-long-device-name-here");
        assert_eq!(s.len(), SERIAL_LEN);
        assert!(is_pov_serial(&s));
        assert!(!is_pov_serial(b"QM00001"));
    }
}
