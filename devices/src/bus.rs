//! An address bus: a map from non-overlapping address ranges to devices.
//!
//! A VMM keeps one [`Bus`] for port I/O and one for MMIO. It fills them while building the VM,
//! then shares each as an `Arc<Bus>` with every vCPU thread. After that the bus is read-only,
//! so an exit costs one `BTreeMap` lookup and one lock: the mutex of the device that owns the
//! address. There is no bus-wide lock.
//!
//! # Lock order
//!
//! 1. The bus itself has no lock; it is immutable once shared.
//! 2. An access locks exactly one device mutex, for the duration of that access only.
//!    The bus never holds two device locks at once.
//! 3. A device must not call back into a bus, or lock another bus device, while its own lock is
//!    held (that would allow a lock cycle between two vCPUs). Locks private to a device, such
//!    as the state of its interrupt line or its host backend, come after its device mutex.
//! 4. Host-side code (an event loop feeding the serial port, a virtio backend) locks the same
//!    device mutex and follows the same rules.
//!
//! A device whose mutex was poisoned by a panic during an earlier access keeps working: the
//! bus logs a warning, clears the poison and hands the device its current state. A panic in
//! one device must not take the vCPU threads down with it.
//!
//! # Statistics
//!
//! Each range carries a name ([`Bus::insert_named`]) and always-on counters: reads, writes,
//! and the total time of those accesses, measured by the bus around the device call (so it
//! includes waiting for the device's mutex). Accesses no device took — unmapped, or running
//! past the end of a range — are counted per bus. The counters are relaxed atomics: the
//! access path takes no lock besides the device's own. [`Bus::stats`] reads them.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use thiserror::Error;

/// A device that answers reads and writes in a range of a [`Bus`].
///
/// `base` is the start of the range the device was inserted at and `offset` the distance of
/// the access from it, so one device type can serve several ranges (COM1 and COM2, say).
/// The bus guarantees that `offset + data.len()` does not pass the end of the range and that
/// `data` is not empty.
pub trait BusDevice: Send {
    /// Fills `data` with the bytes the device returns at `base + offset`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Handles the guest writing `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A range of bus addresses: `len` bytes from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BusRange {
    /// The first address of the range.
    pub base: u64,
    /// The number of addresses; never zero for a range on a bus.
    pub len: u64,
}

impl BusRange {
    /// The last address inside the range (inclusive, so a range may end at `u64::MAX`).
    /// For a zero-length range this is `base`.
    pub fn last(&self) -> u64 {
        self.base.saturating_add(self.len.saturating_sub(1))
    }

    /// Whether `addr` lies inside the range.
    pub fn contains(&self, addr: u64) -> bool {
        self.len != 0 && addr >= self.base && addr <= self.last()
    }

    /// Whether the two ranges share at least one address.
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.len != 0 && other.len != 0 && self.base <= other.last() && other.base <= self.last()
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..={:#x}", self.base, self.last())
    }
}

/// Why a range could not be inserted, or an access was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BusError {
    /// A range of zero bytes was inserted.
    #[error("bus range at {base:#x} has zero length")]
    ZeroLength {
        /// Where the range would have started.
        base: u64,
    },
    /// `base + len` does not fit in 64 bits.
    #[error("bus range of {len:#x} bytes at {base:#x} runs past the end of the address space")]
    Overflow {
        /// Where the range would have started.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// The new range shares addresses with a range already on the bus.
    #[error("bus range {new} overlaps {existing}")]
    Overlap {
        /// The range being inserted.
        new: BusRange,
        /// The range already on the bus.
        existing: BusRange,
    },
    /// No device owns the address. The caller decides what the guest sees (on x86, absent
    /// ports and MMIO read as all ones).
    #[error("no device at {addr:#x}")]
    Unmapped {
        /// The first address of the access.
        addr: u64,
    },
    /// The access starts inside a device's range but runs past its end.
    #[error("{len}-byte access at {addr:#x} runs past the end of {range}")]
    PastEnd {
        /// The first address of the access.
        addr: u64,
        /// The size of the access in bytes.
        len: usize,
        /// The range of the device the access started in.
        range: BusRange,
    },
}

/// A device as a bus holds it: shared with the VMM, locked per access.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// The name [`Bus::insert`] gives a range.
pub const UNNAMED: &str = "unnamed";

/// The access counters of one range.
#[derive(Debug, Default)]
struct RangeCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    total_ns: AtomicU64,
}

impl RangeCounters {
    fn add(&self, count: &AtomicU64, start: Instant) {
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(nanos, Ordering::Relaxed);
    }
}

struct BusEntry {
    len: u64,
    name: &'static str,
    device: SharedDevice,
    counters: RangeCounters,
}

/// The access counts of one range of a [`Bus`], as [`Bus::stats`] returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusRangeStats {
    /// The name the range was inserted with ([`UNNAMED`] through [`Bus::insert`]).
    pub name: &'static str,
    /// The range.
    pub range: BusRange,
    /// Reads the device answered.
    pub reads: u64,
    /// Writes the device received.
    pub writes: u64,
    /// The time of those reads and writes, in nanoseconds, measured by the bus around the
    /// device call (including waiting for the device's mutex).
    pub total_ns: u64,
}

impl BusRangeStats {
    /// Reads plus writes.
    pub fn accesses(&self) -> u64 {
        self.reads.wrapping_add(self.writes)
    }
}

/// A map from address ranges to devices, keyed by the start of each range.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use petrel_devices::bus::{Bus, BusDevice, BusError};
///
/// struct Scratch(u8);
/// impl BusDevice for Scratch {
///     fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
///         data.fill(self.0);
///     }
///     fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
///         self.0 = data[0];
///     }
/// }
///
/// let mut bus = Bus::new();
/// bus.insert(Arc::new(Mutex::new(Scratch(0))), 0x80, 1)?;
/// bus.write(0x80, &[0x42])?;
/// let mut byte = [0];
/// bus.read(0x80, &mut byte)?;
/// assert_eq!(byte, [0x42]);
/// assert_eq!(bus.read(0x81, &mut byte), Err(BusError::Unmapped { addr: 0x81 }));
/// # Ok::<(), BusError>(())
/// ```
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, BusEntry>,
    unclaimed_reads: AtomicU64,
    unclaimed_writes: AtomicU64,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`, named [`UNNAMED`] in the statistics; see
    /// [`insert_named`](Self::insert_named).
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        self.insert_named(device, base, len, UNNAMED)
    }

    /// Puts `device` at `[base, base + len)`; `name` labels the range in [`stats`](Self::stats)
    /// (e.g. `"serial"`, `"i8042"`; several ranges may share a name).
    ///
    /// Refuses a zero length, a range that wraps past `u64::MAX`, and a range that shares any
    /// address with one already on the bus (the error names both ranges). Ranges may touch.
    pub fn insert_named(
        &mut self,
        device: SharedDevice,
        base: u64,
        len: u64,
        name: &'static str,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength { base });
        }
        if base.checked_add(len - 1).is_none() {
            return Err(BusError::Overflow { base, len });
        }
        let new = BusRange { base, len };
        // Ranges on the bus are disjoint and sorted, so among those starting at or before the
        // new range's last address, the one starting last also ends last: it is the only one
        // that can reach into the new range.
        if let Some((&existing_base, entry)) = self.devices.range(..=new.last()).next_back() {
            let existing = BusRange {
                base: existing_base,
                len: entry.len,
            };
            if existing.overlaps(&new) {
                return Err(BusError::Overlap { new, existing });
            }
        }
        self.devices.insert(
            base,
            BusEntry {
                len,
                name,
                device,
                counters: RangeCounters::default(),
            },
        );
        Ok(())
    }

    /// Reads `data.len()` bytes at `addr` from the device that owns them.
    ///
    /// An empty `data` succeeds without touching any device.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        if data.is_empty() {
            return Ok(());
        }
        let (range, entry) = self
            .resolve(addr, data.len())
            .inspect_err(|_| self.note_unclaimed(&self.unclaimed_reads))?;
        let start = Instant::now();
        lock_device(&entry.device, range).read(range.base, addr - range.base, data);
        entry.counters.add(&entry.counters.reads, start);
        Ok(())
    }

    /// Writes `data` at `addr` to the device that owns it.
    ///
    /// An empty `data` succeeds without touching any device.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), BusError> {
        if data.is_empty() {
            return Ok(());
        }
        let (range, entry) = self
            .resolve(addr, data.len())
            .inspect_err(|_| self.note_unclaimed(&self.unclaimed_writes))?;
        let start = Instant::now();
        lock_device(&entry.device, range).write(range.base, addr - range.base, data);
        entry.counters.add(&entry.counters.writes, start);
        Ok(())
    }

    /// The ranges on the bus, in address order.
    pub fn ranges(&self) -> impl Iterator<Item = BusRange> + '_ {
        self.devices.iter().map(|(&base, entry)| BusRange {
            base,
            len: entry.len,
        })
    }

    /// The access counters of every range, in address order.
    pub fn stats(&self) -> Vec<BusRangeStats> {
        self.devices
            .iter()
            .map(|(&base, entry)| BusRangeStats {
                name: entry.name,
                range: BusRange {
                    base,
                    len: entry.len,
                },
                reads: entry.counters.reads.load(Ordering::Relaxed),
                writes: entry.counters.writes.load(Ordering::Relaxed),
                total_ns: entry.counters.total_ns.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Reads no device took: [`BusError::Unmapped`] or [`BusError::PastEnd`].
    pub fn unclaimed_reads(&self) -> u64 {
        self.unclaimed_reads.load(Ordering::Relaxed)
    }

    /// Writes no device took: [`BusError::Unmapped`] or [`BusError::PastEnd`].
    pub fn unclaimed_writes(&self) -> u64 {
        self.unclaimed_writes.load(Ordering::Relaxed)
    }

    fn note_unclaimed(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// How many ranges are on the bus.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the bus has no ranges.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Finds the device owning `[addr, addr + len)`, which must lie in one range.
    fn resolve(&self, addr: u64, len: usize) -> Result<(BusRange, &BusEntry), BusError> {
        let (&base, entry) = self
            .devices
            .range(..=addr)
            .next_back()
            .ok_or(BusError::Unmapped { addr })?;
        let range = BusRange {
            base,
            len: entry.len,
        };
        if !range.contains(addr) {
            return Err(BusError::Unmapped { addr });
        }
        // `addr` is inside the range, so `room` is at least 1 and cannot underflow.
        let room = range.len - (addr - base);
        if u64::try_from(len).map_or(true, |len| len > room) {
            return Err(BusError::PastEnd { addr, len, range });
        }
        Ok((range, entry))
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.ranges().map(|range| range.to_string()))
            .finish()
    }
}

/// Locks a device, recovering from a poisoned mutex instead of panicking.
fn lock_device<'a>(
    device: &'a Mutex<dyn BusDevice + 'static>,
    range: BusRange,
) -> MutexGuard<'a, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| {
        log::warn!("device at {range} panicked during an earlier access; using its current state");
        device.clear_poison();
        poisoned.into_inner()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_log;

    /// Records every access it sees.
    #[derive(Default)]
    struct Recorder {
        reads: Vec<(u64, u64, usize)>,
        writes: Vec<(u64, u64, Vec<u8>)>,
        fill: u8,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            self.reads.push((base, offset, data.len()));
            data.fill(self.fill);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.writes.push((base, offset, data.to_vec()));
        }
    }

    fn recorder(fill: u8) -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder {
            fill,
            ..Recorder::default()
        }))
    }

    fn range(base: u64, len: u64) -> BusRange {
        BusRange { base, len }
    }

    #[test]
    fn every_overlap_shape_is_refused_and_names_both_ranges() {
        // Existing range: 0x100..=0x10f.
        let cases = [
            (0x100, 0x10, "identical"),
            (0x104, 0x4, "inside"),
            (0x0f0, 0x40, "covering"),
            (0x0f8, 0x10, "over the start"),
            (0x108, 0x10, "over the end"),
            (0x10f, 0x1, "last byte"),
            (0x0ff, 0x2, "first byte from below"),
            (0x000, u64::MAX, "everything"),
        ];
        for (base, len, shape) in cases {
            let mut bus = Bus::new();
            bus.insert(recorder(0), 0x100, 0x10).unwrap();
            let err = bus.insert(recorder(0), base, len).unwrap_err();
            assert_eq!(
                err,
                BusError::Overlap {
                    new: range(base, len),
                    existing: range(0x100, 0x10),
                },
                "{shape}"
            );
            let message = err.to_string();
            assert!(message.contains("0x100..=0x10f"), "{shape}: {message}");
            assert!(
                message.contains(&format!("{base:#x}")),
                "{shape}: {message}"
            );
            assert_eq!(bus.len(), 1, "{shape}");
        }
    }

    #[test]
    fn overlap_with_a_range_before_a_later_neighbour_is_found() {
        let mut bus = Bus::new();
        bus.insert(recorder(0), 0x100, 0x100).unwrap();
        bus.insert(recorder(0), 0x300, 0x10).unwrap();
        let err = bus.insert(recorder(0), 0x1f0, 0x20).unwrap_err();
        assert_eq!(
            err,
            BusError::Overlap {
                new: range(0x1f0, 0x20),
                existing: range(0x100, 0x100),
            }
        );
    }

    #[test]
    fn touching_ranges_are_allowed() {
        let mut bus = Bus::new();
        bus.insert(recorder(0), 0x10, 0x8).unwrap();
        bus.insert(recorder(0), 0x8, 0x8).unwrap();
        bus.insert(recorder(0), 0x18, 0x8).unwrap();
        let ranges: Vec<_> = bus.ranges().collect();
        assert_eq!(ranges, [range(0x8, 8), range(0x10, 8), range(0x18, 8)]);
    }

    #[test]
    fn zero_length_and_wrapping_ranges_are_refused() {
        let mut bus = Bus::new();
        assert_eq!(
            bus.insert(recorder(0), 0x10, 0),
            Err(BusError::ZeroLength { base: 0x10 })
        );
        assert_eq!(
            bus.insert(recorder(0), u64::MAX, 2),
            Err(BusError::Overflow {
                base: u64::MAX,
                len: 2
            })
        );
        // A range may end exactly at the top of the address space.
        bus.insert(recorder(7), u64::MAX - 1, 2).unwrap();
        let mut data = [0; 2];
        bus.read(u64::MAX - 1, &mut data).unwrap();
        assert_eq!(data, [7, 7]);
        assert!(bus.insert(recorder(0), u64::MAX, 1).is_err());
    }

    #[test]
    fn accesses_reach_the_owning_device_with_base_and_offset() {
        let com1 = recorder(0x11);
        let com2 = recorder(0x22);
        let mut bus = Bus::new();
        bus.insert(com1.clone(), 0x3f8, 8).unwrap();
        bus.insert(com2.clone(), 0x2f8, 8).unwrap();

        let mut byte = [0];
        bus.read(0x3fd, &mut byte).unwrap();
        assert_eq!(byte, [0x11]);
        bus.read(0x2f8, &mut byte).unwrap();
        assert_eq!(byte, [0x22]);
        bus.write(0x3ff, &[0xaa]).unwrap();
        let mut word = [0; 2];
        bus.read(0x2fe, &mut word).unwrap();
        assert_eq!(word, [0x22, 0x22]);

        let com1 = com1.lock().unwrap();
        assert_eq!(com1.reads, [(0x3f8, 5, 1)]);
        assert_eq!(com1.writes, [(0x3f8, 7, vec![0xaa])]);
        let com2 = com2.lock().unwrap();
        assert_eq!(com2.reads, [(0x2f8, 0, 1), (0x2f8, 6, 2)]);
        assert!(com2.writes.is_empty());
    }

    #[test]
    fn unmapped_addresses_are_reported() {
        let mut bus = Bus::new();
        bus.insert(recorder(0), 0x60, 1).unwrap();
        bus.insert(recorder(0), 0x64, 1).unwrap();
        let mut byte = [0xcc];
        for addr in [0, 0x5f, 0x61, 0x63, 0x65, u64::MAX] {
            assert_eq!(
                bus.read(addr, &mut byte),
                Err(BusError::Unmapped { addr }),
                "{addr:#x}"
            );
            assert_eq!(bus.write(addr, &[1]), Err(BusError::Unmapped { addr }));
        }
        assert_eq!(byte, [0xcc], "a failed read leaves the buffer alone");
        assert!(Bus::new().read(0, &mut byte).is_err());
    }

    #[test]
    fn an_access_running_past_the_end_of_a_range_is_refused() {
        let dev = recorder(0);
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x1000, 0x10).unwrap();
        let mut dword = [0; 4];
        assert_eq!(
            bus.read(0x100e, &mut dword),
            Err(BusError::PastEnd {
                addr: 0x100e,
                len: 4,
                range: range(0x1000, 0x10),
            })
        );
        assert!(bus.write(0x100d, &[0; 4]).is_err());
        // Exactly up to the end is fine.
        bus.read(0x100c, &mut dword).unwrap();
        let dev = dev.lock().unwrap();
        assert_eq!(dev.reads, [(0x1000, 0xc, 4)]);
        assert!(dev.writes.is_empty());
    }

    #[test]
    fn a_write_spanning_two_devices_is_refused() {
        let low = recorder(0);
        let high = recorder(0);
        let mut bus = Bus::new();
        bus.insert(low.clone(), 0x10, 8).unwrap();
        bus.insert(high.clone(), 0x18, 8).unwrap();
        let err = bus.write(0x16, &[1, 2, 3, 4]).unwrap_err();
        assert_eq!(
            err,
            BusError::PastEnd {
                addr: 0x16,
                len: 4,
                range: range(0x10, 8),
            }
        );
        assert!(low.lock().unwrap().writes.is_empty());
        assert!(high.lock().unwrap().writes.is_empty());
    }

    #[test]
    fn zero_length_accesses_touch_nothing() {
        let dev = recorder(0);
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x10, 8).unwrap();
        bus.read(0x10, &mut []).unwrap();
        bus.write(0x17, &[]).unwrap();
        bus.write(0x1000, &[]).unwrap();
        let dev = dev.lock().unwrap();
        assert!(dev.reads.is_empty() && dev.writes.is_empty());
    }

    #[test]
    fn a_poisoned_device_keeps_working_and_is_reported_once() {
        let dev = recorder(0x5a);
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x80, 1).unwrap();

        let poisoner = dev.clone();
        let result = std::thread::spawn(move || {
            let _guard = poisoner.lock().unwrap();
            panic!("device bug");
        })
        .join();
        assert!(result.is_err());
        assert!(dev.is_poisoned());

        let logs = test_log::capture(|| {
            let mut byte = [0];
            bus.read(0x80, &mut byte).unwrap();
            assert_eq!(byte, [0x5a]);
            bus.write(0x80, &[1]).unwrap();
        });
        let warnings: Vec<_> = logs.iter().filter(|r| r.contains("panicked")).collect();
        assert_eq!(warnings.len(), 1, "{logs:?}");
        assert!(warnings[0].contains("0x80..=0x80"));
        assert!(!dev.is_poisoned());
        let dev = dev.lock().unwrap();
        assert_eq!(dev.reads.len(), 1);
        assert_eq!(dev.writes.len(), 1);
    }

    /// Takes at least a millisecond per write.
    struct Slow;

    impl BusDevice for Slow {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn accesses_are_counted_per_named_range() {
        let mut bus = Bus::new();
        bus.insert_named(recorder(0), 0x3f8, 8, "serial").unwrap();
        bus.insert(recorder(0), 0x60, 5).unwrap();
        bus.insert_named(Arc::new(Mutex::new(Slow)), 0x80, 1, "slow")
            .unwrap();
        let mut byte = [0];
        for _ in 0..3 {
            bus.write(0x3f8, b"x").unwrap();
        }
        bus.read(0x3fd, &mut byte).unwrap();
        bus.read(0x64, &mut byte).unwrap();
        bus.write(0x80, &[1]).unwrap();
        bus.write(0x80, &[2]).unwrap();

        let stats = bus.stats();
        let summary: Vec<_> = stats
            .iter()
            .map(|s| (s.name, s.range, s.reads, s.writes))
            .collect();
        assert_eq!(
            summary,
            [
                ("unnamed", range(0x60, 5), 1, 0),
                ("slow", range(0x80, 1), 0, 2),
                ("serial", range(0x3f8, 8), 1, 3),
            ]
        );
        assert_eq!(stats[2].accesses(), 4);
        assert!(
            stats[1].total_ns >= 2_000_000,
            "device time is measured: {:?}",
            stats[1]
        );
        assert!(stats[2].total_ns < stats[1].total_ns);
        assert_eq!((bus.unclaimed_reads(), bus.unclaimed_writes()), (0, 0));
    }

    #[test]
    fn unclaimed_accesses_are_counted_apart() {
        let dev = recorder(0);
        let mut bus = Bus::new();
        bus.insert_named(dev, 0x10, 8, "dev").unwrap();
        let mut dword = [0; 4];
        assert!(bus.read(0x40, &mut dword).is_err()); // unmapped
        assert!(bus.read(0x16, &mut dword).is_err()); // past the end
        assert!(bus.write(0x0, &[1]).is_err());
        bus.read(0x50, &mut []).unwrap(); // empty: not an access
        assert_eq!((bus.unclaimed_reads(), bus.unclaimed_writes()), (2, 1));
        let stats = bus.stats();
        assert_eq!(
            (stats[0].reads, stats[0].writes, stats[0].total_ns),
            (0, 0, 0)
        );
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let mut bus = Bus::new();
        bus.insert_named(recorder(0), 0x10, 8, "dev").unwrap();
        let bus = Arc::new(bus);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    let mut byte = [0];
                    for _ in 0..500 {
                        bus.write(0x10, &[1]).unwrap();
                        bus.read(0x11, &mut byte).unwrap();
                        let _ = bus.read(0x20, &mut byte);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let stats = bus.stats();
        assert_eq!((stats[0].reads, stats[0].writes), (2000, 2000));
        assert_eq!(bus.unclaimed_reads(), 2000);
    }

    #[test]
    fn debug_lists_the_ranges() {
        let mut bus = Bus::new();
        assert!(bus.is_empty());
        bus.insert(recorder(0), 0x3f8, 8).unwrap();
        assert_eq!(format!("{bus:?}"), r#"["0x3f8..=0x3ff"]"#);
    }
}
