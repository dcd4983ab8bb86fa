//! Test helpers: guest memory, the driver's side of a split queue, and an interrupt recorder.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::{DESC_F_NEXT, DESC_F_WRITE};
use super::{ActiveQueue, VirtioInterrupt, VirtioInterruptKind};
use petrel_memory::GuestMemoryMmap;

/// End of the low RAM region of [`guest_memory`], which starts at 0.
pub(crate) const MEM_SIZE: u64 = 0x10_0000;
/// A second RAM region, after a hole, so tests can cross region boundaries.
pub(crate) const HIGH_START: u64 = 0x20_0000;
/// Size of the second region.
pub(crate) const HIGH_SIZE: u64 = 0x4_0000;

/// Where [`DriverQueue`] puts its rings.
pub(crate) const DESC_TABLE: u64 = 0x1000;
pub(crate) const AVAIL_RING: u64 = 0x3000;
pub(crate) const USED_RING: u64 = 0x4000;

/// Plain guest memory, no KVM: `[0, 1 MiB)` and `[2 MiB, 2 MiB + 256 KiB)`.
pub(crate) fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MEM_SIZE as usize),
        (GuestAddress(HIGH_START), HIGH_SIZE as usize),
    ])
    .unwrap()
}

/// Writes descriptor table entry `index`.
pub(crate) fn write_descriptor(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(table.0 + u64::from(index) * 16))
        .unwrap();
}

/// One buffer of a chain a test submits: address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buf {
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) writable: bool,
}

/// A buffer the device reads.
pub(crate) fn readable(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        writable: false,
    }
}

/// A buffer the device writes.
pub(crate) fn writable(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        writable: true,
    }
}

/// The driver's side of a split queue, by default at [`DESC_TABLE`], [`AVAIL_RING`],
/// [`USED_RING`].
pub(crate) struct DriverQueue {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    avail_idx: u16,
    next_desc: u16,
}

impl DriverQueue {
    pub(crate) fn new(mem: &GuestMemoryMmap, size: u16) -> Self {
        Self::with_rings(mem, size, DESC_TABLE, AVAIL_RING, USED_RING)
    }

    /// A queue whose descriptor table, available ring and used ring are at
    /// `base`, `base + 0x1000` and `base + 0x2000`, for devices with several queues.
    pub(crate) fn at(mem: &GuestMemoryMmap, size: u16, base: u64) -> Self {
        Self::with_rings(mem, size, base, base + 0x1000, base + 0x2000)
    }

    fn with_rings(
        mem: &GuestMemoryMmap,
        size: u16,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Self {
        assert!(size <= 256, "the rings are laid out for 256 entries");
        let queue = Self {
            mem: mem.clone(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            avail_idx: 0,
            next_desc: 0,
        };
        queue.set_avail_idx(0);
        mem.write_obj(0u16, GuestAddress(used_ring + 2)).unwrap();
        queue
    }

    /// The device's view of this queue, set up and ready.
    pub(crate) fn device_queue(&self) -> Queue {
        let mut queue = Queue::new(256).unwrap();
        queue.set_size(self.size);
        queue.set_desc_table_address(Some(self.desc_table as u32), Some(0));
        queue.set_avail_ring_address(Some(self.avail_ring as u32), Some(0));
        queue.set_used_ring_address(Some(self.used_ring as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(&self.mem));
        queue
    }

    /// This queue as the transport hands it to a device on activation, enabled by the
    /// driver or not, with a fresh notification eventfd.
    pub(crate) fn active_queue(&self, ready: bool) -> ActiveQueue {
        let mut queue = self.device_queue();
        queue.set_ready(ready);
        ActiveQueue {
            queue,
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// Writes `bufs` as a chain in the next free descriptors and publishes its head.
    pub(crate) fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.write_chain(bufs);
        self.publish(head);
        head
    }

    /// Writes `bufs` as a chain in the next free descriptors without publishing it.
    pub(crate) fn write_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if buf.writable {
                flags |= DESC_F_WRITE;
            }
            let next = if last { 0 } else { self.next_desc };
            self.write_descriptor(index, buf.addr, buf.len, flags, next);
        }
        head
    }

    /// Writes descriptor table entry `index`.
    pub(crate) fn write_descriptor(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        write_descriptor(
            &self.mem,
            GuestAddress(self.desc_table),
            index,
            addr,
            len,
            flags,
            next,
        );
    }

    /// Puts `head` in the available ring and moves its index on.
    pub(crate) fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head, GuestAddress(self.avail_ring + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available ring's index as a (possibly lying) driver would.
    pub(crate) fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(self.avail_ring + 2))
            .unwrap();
    }

    /// The used ring's index.
    pub(crate) fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap()
    }

    /// Used ring entry `n` (counting from the first ever): (descriptor id, length written).
    pub(crate) fn used(&self, n: u16) -> (u32, u32) {
        let slot = u64::from(n % self.size);
        let addr = self.used_ring + 4 + 8 * slot;
        (
            self.mem.read_obj(GuestAddress(addr)).unwrap(),
            self.mem.read_obj(GuestAddress(addr + 4)).unwrap(),
        )
    }

    /// The used ring's flags (the device sets `VRING_USED_F_NO_NOTIFY` there).
    pub(crate) fn used_flags(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_ring)).unwrap()
    }
}

/// A [`VirtioInterrupt`] that counts what the device asked for.
#[derive(Debug, Default)]
pub(crate) struct RecordingInterrupt {
    queue: AtomicUsize,
    config: AtomicUsize,
    needs_reset: AtomicUsize,
}

impl RecordingInterrupt {
    /// (queue interrupts, config interrupts, needs-reset reports) so far.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        (
            self.queue.load(Ordering::SeqCst),
            self.config.load(Ordering::SeqCst),
            self.needs_reset.load(Ordering::SeqCst),
        )
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: VirtioInterruptKind) -> io::Result<()> {
        let counter = match kind {
            VirtioInterruptKind::Queue => &self.queue,
            VirtioInterruptKind::Config => &self.config,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn set_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A temporary image file, removed on drop.
pub(crate) struct TempImage(pub(crate) PathBuf);

impl TempImage {
    pub(crate) fn new(name: &str, contents: &[u8]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "petrel-blk-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let mut file = File::create(&path).unwrap();
        file.write_all(contents).unwrap();
        Self(path)
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
