//! Test helpers: guest memory, the driver's side of a split queue, and an interrupt recorder.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::chain::{read_chain, Chain, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
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
    /// The first descriptor of the table's part left to [`RandomChains`] not handed out yet.
    random_next: u16,
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
            random_next: size,
        };
        for (start, end) in queue.ring_ranges() {
            mem.write_slice(&vec![0; (end - start) as usize], GuestAddress(start))
                .unwrap();
        }
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

    /// The guest-physical ranges `[start, end)` of the descriptor table, the available ring
    /// and the used ring.
    pub(crate) fn ring_ranges(&self) -> [(u64, u64); 3] {
        let size = u64::from(self.size);
        [
            (self.desc_table, self.desc_table + 16 * size),
            (self.avail_ring, self.avail_ring + 6 + 2 * size),
            (self.used_ring, self.used_ring + 6 + 8 * size),
        ]
    }

    /// Moves the available index `n` on without writing ring entries: the device finds
    /// whatever the skipped slots hold (a driver lying about its index).
    pub(crate) fn skip_avail(&mut self, n: u16) {
        self.avail_idx = self.avail_idx.wrapping_add(n);
        self.set_avail_idx(self.avail_idx);
    }

    /// The chain at `head` as a device walking the table sees it.
    pub(crate) fn chain(&self, head: u16) -> Chain {
        read_chain(&self.mem, GuestAddress(self.desc_table), self.size, head)
    }

    /// The device-writable buffers, as `[start, end)` ranges, and their total length, of the
    /// chain at `head` as a device walking the table sees it: up to its end or its first
    /// problem (a loop, a link outside the queue, an indirect or unreadable descriptor).
    pub(crate) fn writable_of(&self, head: u32) -> (Vec<(u64, u64)>, u64) {
        let Ok(head) = u16::try_from(head) else {
            return (Vec::new(), 0);
        };
        let chain = self.chain(head);
        let writable = chain.descriptors.iter().filter(|d| d.writable);
        let ranges = writable
            .clone()
            .map(|d| (d.addr, d.addr.saturating_add(u64::from(d.len))))
            .collect();
        (ranges, writable.map(|d| u64::from(d.len)).sum())
    }

    /// Checks the used entries from the `from`th to the current used index: none reports
    /// more bytes than its chain's writable buffers hold. Returns the entries (id, length)
    /// and the ranges the device was allowed to write (`ctx` names the case in failures).
    pub(crate) fn check_used_since(
        &self,
        from: u16,
        ctx: &str,
    ) -> (Vec<UsedEntry>, Vec<(u64, u64)>) {
        let mut entries = Vec::new();
        let mut allowed = Vec::new();
        let mut n = from;
        while n != self.used_idx() {
            let (id, len) = self.used(n);
            let (ranges, capacity) = self.writable_of(id);
            assert!(
                u64::from(len) <= capacity,
                "{ctx}: used entry {n} says {len} bytes in chain {id}, whose writable buffers \
                 hold {capacity}"
            );
            entries.push((id, len));
            allowed.extend(ranges);
            n = n.wrapping_add(1);
        }
        (entries, allowed)
    }

    /// Available ring entry `n` (counting from the first ever): a chain head.
    pub(crate) fn avail_entry(&self, n: u16) -> u16 {
        let slot = u64::from(n % self.size);
        self.mem
            .read_obj(GuestAddress(self.avail_ring + 4 + 2 * slot))
            .unwrap()
    }

    /// The used ring's flags (the device sets `VRING_USED_F_NO_NOTIFY` there).
    pub(crate) fn used_flags(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used_ring)).unwrap()
    }
}

/// A used ring entry: (descriptor id, length written).
pub(crate) type UsedEntry = (u32, u32);

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

// ------------------------------------------------------------ randomized hostile drivers

/// A small deterministic PRNG (SplitMix64) for the randomized hostile-driver tests: a fixed
/// seed makes every failure reproducible.
pub(crate) struct TestRng(u64);

impl TestRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True once in `n` times on average.
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Fills all guest memory (both RAM regions of [`guest_memory`]) but the `keep` ranges
/// (`[start, end)`, the rings) with random bytes, so a device writing zeroes or copies is
/// seen too.
pub(crate) fn scribble(mem: &GuestMemoryMmap, rng: &mut TestRng, keep: &[(u64, u64)]) {
    for (start, len) in [(0, MEM_SIZE), (HIGH_START, HIGH_SIZE)] {
        let mut bytes = rng.bytes(len as usize);
        let mut now = vec![0; len as usize];
        mem.read_slice(&mut now, GuestAddress(start)).unwrap();
        for &(from, to) in keep {
            let (from, to) = (from.max(start), to.min(start + len));
            if from < to {
                let range = (from - start) as usize..(to - start) as usize;
                bytes[range.clone()].copy_from_slice(&now[range]);
            }
        }
        mem.write_slice(&bytes, GuestAddress(start)).unwrap();
    }
}

/// A copy of all guest memory, to find what a device wrote.
pub(crate) struct MemSnapshot(Vec<(u64, Vec<u8>)>);

impl MemSnapshot {
    pub(crate) fn take(mem: &GuestMemoryMmap) -> Self {
        let regions = [(0, MEM_SIZE), (HIGH_START, HIGH_SIZE)]
            .into_iter()
            .map(|(start, len)| {
                let mut bytes = vec![0; len as usize];
                mem.read_slice(&mut bytes, GuestAddress(start)).unwrap();
                (start, bytes)
            })
            .collect();
        Self(regions)
    }

    /// The first byte that changed since the snapshot outside the `allowed` and `ignored`
    /// ranges (`[start, end)`), described, or `None`.
    /// Asserts the device wrote nothing outside the `allowed` ranges but in `ignored` ones
    /// since the snapshot (`ctx` names the case).
    pub(crate) fn assert_no_stray_write(
        &self,
        mem: &GuestMemoryMmap,
        allowed: &[(u64, u64)],
        ignored: &[(u64, u64)],
        ctx: &str,
    ) {
        if let Some(stray) = self.stray_write(mem, allowed, ignored) {
            panic!("{ctx}: {stray}");
        }
    }

    fn stray_write(
        &self,
        mem: &GuestMemoryMmap,
        allowed: &[(u64, u64)],
        ignored: &[(u64, u64)],
    ) -> Option<String> {
        const CHUNK: usize = 4096;
        let inside = |addr: u64| {
            allowed
                .iter()
                .chain(ignored)
                .any(|&(start, end)| (start..end).contains(&addr))
        };
        for (start, old) in &self.0 {
            let mut now = vec![0; old.len()];
            mem.read_slice(&mut now, GuestAddress(*start)).unwrap();
            for (i, (a, b)) in old.chunks(CHUNK).zip(now.chunks(CHUNK)).enumerate() {
                if a == b {
                    continue;
                }
                for (j, (x, y)) in a.iter().zip(b).enumerate() {
                    let addr = start + (i * CHUNK + j) as u64;
                    if x != y && !inside(addr) {
                        return Some(format!(
                            "guest byte {addr:#x} changed from {x:#04x} to {y:#04x}, outside \
                             every writable buffer"
                        ));
                    }
                }
            }
        }
        None
    }
}

/// Builds random descriptor chains, as a hostile driver would, in the upper half of a
/// queue's descriptor table (the lower half is left to the test's well-formed chains,
/// written with [`DriverQueue::add_chain`]): random counts, addresses (in RAM, across its
/// ends, in the hole, past the end, near `u64::MAX`), lengths (0, 1, huge, around the
/// device's limits), flags (NEXT, WRITE, INDIRECT), links out of range and loops, heads out
/// of range and available indices that run ahead. Each chain gets descriptors of its own, so
/// a later chain never rewrites an earlier one before the device read it.
pub(crate) struct RandomChains {
    pub(crate) rng: TestRng,
    /// Where in-RAM buffers start, `[start, end)`: clear of the rings.
    data: (u64, u64),
    /// Lengths the device treats specially; the builder tries them and their neighbours.
    limits: Vec<u32>,
}

impl RandomChains {
    pub(crate) fn new(seed: u64, data: (u64, u64), limits: &[u32]) -> Self {
        Self {
            rng: TestRng::new(seed),
            data,
            limits: limits.to_vec(),
        }
    }

    /// Hands the upper half of `queue`'s table to random chains and fills it with garbage
    /// descriptors, which random links may reach.
    pub(crate) fn begin(&mut self, queue: &mut DriverQueue) {
        queue.random_next = queue.size / 2;
        for index in queue.random_next..queue.size {
            let (addr, len) = (self.addr(), self.len());
            let flags = self.rng.next_u64() as u16 & (DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT);
            let next = self.rng.next_u64() as u16 % (2 * queue.size);
            queue.write_descriptor(index, addr, len, flags, next);
        }
    }

    /// A buffer address: mostly in the data area, sometimes where it must be refused.
    pub(crate) fn addr(&mut self) -> u64 {
        let rng = &mut self.rng;
        match rng.below(24) {
            0 => MEM_SIZE - rng.below(64),
            1 => MEM_SIZE + rng.below(HIGH_START - MEM_SIZE),
            2 => HIGH_START + rng.below(HIGH_SIZE),
            3 => HIGH_START + HIGH_SIZE - rng.below(64),
            4 => HIGH_START + HIGH_SIZE + rng.below(1 << 40),
            5 => u64::MAX - rng.below(0x1000),
            _ => self.data.0 + rng.below(self.data.1 - self.data.0),
        }
    }

    /// An address in the data area where `len` bytes fit (`len` is less than the area).
    pub(crate) fn data_addr(&mut self, len: u64) -> u64 {
        self.data.0 + self.rng.below(self.data.1 - self.data.0 - len + 1)
    }

    /// A buffer length: small mostly, sometimes 0, 1, huge, or around a limit.
    pub(crate) fn len(&mut self) -> u32 {
        let rng = &mut self.rng;
        match rng.below(16) {
            0 => 0,
            1 => 1,
            2 => u32::MAX - rng.below(16) as u32,
            3 => 1 << (16 + rng.below(16)),
            4 | 5 if !self.limits.is_empty() => {
                let limit = rng.pick(&self.limits);
                limit.wrapping_add(rng.below(3) as u32).wrapping_sub(1)
            }
            6..=9 => rng.below(64) as u32,
            _ => rng.below(4096) as u32,
        }
    }

    /// `n` descriptors of the random half not used yet, or `None` if it is full.
    fn take(&mut self, queue: &mut DriverQueue, n: u16) -> Option<Vec<u16>> {
        let start = queue.random_next;
        if n == 0 || queue.size - start < n {
            return None;
        }
        queue.random_next += n;
        Some((start..start + n).collect())
    }

    /// Writes a random chain and returns its head (not published). `writable` is the
    /// direction most of its buffers take (random if `None`). `None` when the random half
    /// of the table is full.
    pub(crate) fn chain(&mut self, queue: &mut DriverQueue, writable: Option<bool>) -> Option<u16> {
        let room = u64::from(queue.size - queue.random_next).max(1);
        let count = if self.rng.one_in(16) {
            1 + self.rng.below(room)
        } else {
            1 + self.rng.below(4.min(room))
        };
        let indices = self.take(queue, count as u16)?;
        let size = queue.size;
        for (i, &index) in indices.iter().enumerate() {
            let last = i + 1 == indices.len();
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            let write = match writable {
                Some(w) => w != self.rng.one_in(8),
                None => self.rng.one_in(2),
            };
            if write {
                flags |= DESC_F_WRITE;
            }
            if self.rng.one_in(32) {
                flags |= DESC_F_INDIRECT;
            }
            let mut next = if last { 0 } else { indices[i + 1] };
            if (last && self.rng.one_in(6)) || self.rng.one_in(24) {
                // A link where it should not go: back into the chain (a loop), into another
                // chain or the garbage, or outside the queue.
                flags |= DESC_F_NEXT;
                next = match self.rng.below(4) {
                    0 => indices[self.rng.below(i as u64 + 1) as usize],
                    1 => size / 2 + self.rng.below(u64::from(size - size / 2)) as u16,
                    2 => size + self.rng.below(u64::from(u16::MAX - size) + 1) as u16,
                    _ => u16::MAX,
                };
            }
            let (addr, len) = (self.addr(), self.len());
            queue.write_descriptor(index, addr, len, flags, next);
        }
        Some(indices[0])
    }

    /// Writes `bufs` as a well-formed chain in the random half and returns its head (not
    /// published); `None` when the random half of the table is full.
    pub(crate) fn buffers(&mut self, queue: &mut DriverQueue, bufs: &[Buf]) -> Option<u16> {
        let indices = self.take(queue, u16::try_from(bufs.len()).ok()?)?;
        for (i, (buf, &index)) in bufs.iter().zip(&indices).enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if last { 0 } else { DESC_F_NEXT };
            if buf.writable {
                flags |= DESC_F_WRITE;
            }
            let next = if last { 0 } else { indices[i + 1] };
            queue.write_descriptor(index, buf.addr, buf.len, flags, next);
        }
        Some(indices[0])
    }

    /// A receive chain: random, or half the time device-writable buffers of one of
    /// `lens` bytes in the data area, maybe spoiled.
    pub(crate) fn receive_chain(&mut self, queue: &mut DriverQueue, lens: &[u32]) -> Option<u16> {
        if self.rng.one_in(2) {
            return self.chain(queue, Some(true));
        }
        let len = self.rng.pick(lens);
        let addr = self.data_addr(u64::from(len));
        let mut bufs = self.split(addr, len, true);
        self.spoil(&mut bufs);
        self.buffers(queue, &bufs)
    }

    /// Splits `len` bytes at `addr` into one to three buffers of direction `writable`.
    pub(crate) fn split(&mut self, addr: u64, len: u32, writable: bool) -> Vec<Buf> {
        let mut cuts = vec![0, len];
        for _ in 0..self.rng.below(3) {
            cuts.push(self.rng.below(u64::from(len) + 1) as u32);
        }
        cuts.sort_unstable();
        cuts.windows(2)
            .map(|w| Buf {
                addr: addr.wrapping_add(u64::from(w[0])),
                len: w[1] - w[0],
                writable,
            })
            .collect()
    }

    /// Sometimes spoils one of `bufs`: flips its direction, moves it, or changes its length.
    /// Returns whether it did.
    pub(crate) fn spoil(&mut self, bufs: &mut [Buf]) -> bool {
        if bufs.is_empty() || !self.rng.one_in(4) {
            return false;
        }
        let i = self.rng.below(bufs.len() as u64) as usize;
        match self.rng.below(3) {
            0 => bufs[i].writable = !bufs[i].writable,
            1 => bufs[i].addr = self.addr(),
            _ => bufs[i].len = self.len(),
        }
        true
    }

    /// Writes up to `count` chains with `make` (which returns `None` when the table's random
    /// half is full) and publishes them, then now and then lies about the available index
    /// (into stale slots only with `stale`).
    pub(crate) fn batch(
        &mut self,
        queue: &mut DriverQueue,
        count: u64,
        stale: bool,
        mut make: impl FnMut(&mut Self, &mut DriverQueue) -> Option<u16>,
    ) {
        for _ in 0..count {
            let Some(head) = make(self, queue) else { break };
            self.publish(queue, head);
        }
        self.lie_about_avail_idx(queue, stale);
    }

    /// Publishes `head`, or now and then a head outside the queue instead.
    pub(crate) fn publish(&mut self, queue: &mut DriverQueue, head: u16) {
        if self.rng.one_in(64) {
            let size = queue.size;
            queue.publish(size + self.rng.below(u64::from(u16::MAX - size) + 1) as u16);
        } else {
            queue.publish(head);
        }
    }

    /// Now and then moves `queue`'s available index on without publishing: more than a
    /// queue's worth (the device needs a reset) or, with `stale`, a little (the device reads
    /// stale slots, which may name chains the test completed or posts later).
    pub(crate) fn lie_about_avail_idx(&mut self, queue: &mut DriverQueue, stale: bool) {
        if self.rng.one_in(48) {
            queue.skip_avail(queue.size + 1 + self.rng.below(1000) as u16);
        } else if stale && queue.size >= 8 && self.rng.one_in(24) {
            let most = u64::from(queue.size / 4).min(16);
            queue.skip_avail(1 + self.rng.below(most) as u16);
        }
    }
}

/// Whether ranges `a` and `b` (`[start, end)`) overlap.
pub(crate) fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Runs a one-queue device (`run`, twice: a full batch yields, as to the event loop) on what
/// a random batch published in `driver`, then checks the used entries from the `from`th on
/// and that nothing changed since `snapshot` outside their writable buffers. Returns the
/// entries.
pub(crate) fn run_checked(
    driver: &DriverQueue,
    snapshot: &MemSnapshot,
    from: u16,
    ctx: &str,
    mut run: impl FnMut(),
) -> Vec<UsedEntry> {
    run();
    run();
    let (entries, allowed) = driver.check_used_since(from, ctx);
    snapshot.assert_no_stray_write(&driver.mem, &allowed, &driver.ring_ranges(), ctx);
    entries
}

/// The driver side of a single-queue device under test (virtio-blk, virtio-rng): guest memory,
/// the queue's rings, the interrupt the device raises, the queue's notify eventfd, and how
/// many used entries the test has checked so far.
pub(crate) struct SingleQueueDriver {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) driver: DriverQueue,
    pub(crate) irq: std::sync::Arc<RecordingInterrupt>,
    pub(crate) notify: EventFd,
    pub(crate) completed: u16,
}

impl SingleQueueDriver {
    /// Guest memory and a queue of `size` entries; call [`activate`](Self::activate) next.
    pub(crate) fn new(size: u16) -> Self {
        let mem = guest_memory();
        Self {
            driver: DriverQueue::new(&mem, size),
            mem,
            irq: std::sync::Arc::new(RecordingInterrupt::default()),
            notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            completed: 0,
        }
    }

    /// Starts `device` on freshly initialised rings, as a driver does after a reset.
    pub(crate) fn activate(&mut self, device: &mut dyn super::VirtioDevice) {
        self.driver = DriverQueue::new(&self.mem, self.driver.size);
        self.completed = 0;
        let queue = ActiveQueue {
            queue: self.driver.device_queue(),
            notify: self.notify.try_clone().unwrap(),
        };
        device
            .activate(self.mem.clone(), self.irq.clone(), vec![queue])
            .unwrap();
    }

    /// Runs `process` (the device's queue work) and checks that `head` alone was completed,
    /// with one queue interrupt; returns its used length.
    pub(crate) fn complete(&mut self, head: u16, process: impl FnOnce()) -> u32 {
        let (queue_irqs, _, _) = self.irq.counts();
        process();
        assert_eq!(self.driver.used_idx(), self.completed + 1, "one completion");
        let (id, len) = self.driver.used(self.completed);
        assert_eq!(id, u32::from(head));
        self.completed += 1;
        assert_eq!(self.irq.counts().0, queue_irqs + 1, "one queue interrupt");
        len
    }

    /// After a batch of hostile requests: if the device asked for a reset, resets it and
    /// starts it again; then takes every used entry so far as checked.
    pub(crate) fn recover(&mut self, device: &mut dyn super::VirtioDevice, ctx: &str) {
        if self.irq.counts().2 > 0 {
            assert!(device.reset(), "{ctx}");
            self.irq = std::sync::Arc::new(RecordingInterrupt::default());
            self.activate(device);
        }
        self.completed = self.driver.used_idx();
    }
}
