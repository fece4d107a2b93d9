//! Plain block IO to any vhost-user-blk device: a PoV null or plain volume,
//! qemu-storage-daemon, SPDK, ... One benchmark IO = one virtio-blk request.

use blkio::{Blkioq, ReqFlags};

use crate::engine::Target;
use crate::mem::Slab;
use crate::workload::{Dir, Io};

/// Block IO with one buffer of the largest IO size per slot. Write buffers hold a
/// fixed non-zero pattern; read data is not checked (the targets measured are null
/// devices or hold arbitrary data).
pub struct BlockTarget {
    slab: Slab,
}

impl BlockTarget {
    /// `slots` buffers of `max_io` bytes in `blkio`'s memory.
    ///
    /// Errors: memory allocation or mapping failures.
    pub fn new(blkio: &mut blkio::Blkio, slots: usize, max_io: usize) -> anyhow::Result<BlockTarget> {
        let slab = Slab::new(blkio, slots, max_io)?;
        for i in 0..slots {
            slab.slice_mut(i, 0, max_io).fill(0xa5);
        }
        Ok(BlockTarget { slab })
    }
}

impl Target for BlockTarget {
    fn slots(&self) -> usize {
        usize::MAX
    }

    fn submit(&mut self, q: &mut Blkioq, slot: usize, io: &Io) -> usize {
        let p = self.slab.ptr(slot, 0);
        match io.dir {
            Dir::Read => q.read(io.offset, p, io.len, slot, ReqFlags::empty()),
            Dir::Write => q.write(io.offset, p, io.len, slot, ReqFlags::empty()),
        }
        1
    }

    fn complete(&mut self, _slot: usize) -> Result<(), String> {
        Ok(())
    }
}
