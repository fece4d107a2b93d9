//! IO memory: one libblkio memory region per job, cut into equal per-slot buffers.
//! Every `unsafe` block of the crate's IO memory handling lives here.

use blkio::{Blkio, MemoryRegion};

/// A device-mapped memory region of `slots * slot_len` bytes. The region is freed with
/// its `Blkio` instance, which must outlive this value (the job owns both and drops
/// the `Slab` first).
pub struct Slab {
    region: MemoryRegion,
    slot_len: usize,
    slots: usize,
}

impl Slab {
    /// Allocates and maps a region for `slots` buffers of `slot_len` bytes (rounded up
    /// to 4 KiB), zero-filled.
    ///
    /// Errors: libblkio allocation or mapping failures.
    pub fn new(b: &mut Blkio, slots: usize, slot_len: usize) -> anyhow::Result<Slab> {
        let slot_len = slot_len.div_ceil(4096) * 4096;
        let align = b.get_u64("mem-region-alignment").unwrap_or(4096).max(4096) as usize;
        let len = (slots * slot_len).div_ceil(align) * align;
        let region = b.alloc_mem_region(len).map_err(|e| anyhow::anyhow!("libblkio alloc_mem_region({len}): {e}"))?;
        if let Err(e) = b.map_mem_region(&region) {
            b.free_mem_region(&region);
            anyhow::bail!("libblkio map_mem_region: {e}");
        }
        anyhow::ensure!(region.addr != 0 && region.len >= slots * slot_len, "libblkio returned a short region");
        let s = Slab { region, slot_len, slots };
        for i in 0..slots {
            s.slice_mut(i, 0, slot_len).fill(0);
        }
        Ok(s)
    }

    /// Bytes per slot (the requested length rounded up to 4 KiB).
    pub fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Pointer to byte `off` of slot `slot`, for libblkio requests.
    ///
    /// Panics if `slot` or `off` is out of range.
    pub fn ptr(&self, slot: usize, off: usize) -> *mut u8 {
        assert!(slot < self.slots && off <= self.slot_len, "slab index out of range");
        (self.region.addr + slot * self.slot_len + off) as *mut u8
    }

    /// Bytes `off..off + len` of slot `slot`.
    ///
    /// Panics if the range leaves the slot.
    pub fn slice(&self, slot: usize, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.slot_len);
        // SAFETY: the range lies inside the mapped region (checked above and in `new`),
        // which stays mapped until the owning Blkio is dropped, after this Slab. The
        // caller only reads a slot whose requests have all completed.
        unsafe { std::slice::from_raw_parts(self.ptr(slot, off), len) }
    }

    /// Mutable bytes `off..off + len` of slot `slot`.
    ///
    /// Panics if the range leaves the slot.
    #[allow(clippy::mut_from_ref)]
    pub fn slice_mut(&self, slot: usize, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.slot_len);
        // SAFETY: as in `slice`; callers write a slot only while none of its requests is
        // in flight, and never hold two slices of one slot at once.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(slot, off), len) }
    }
}
