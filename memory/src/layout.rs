//! The x86-64 guest physical address map: where RAM goes and what is reserved.
//!
//! Everything here is a pure function of the RAM size, so it can be unit-tested without KVM.
//!
//! | range                          | use                                                        |
//! |--------------------------------|------------------------------------------------------------|
//! | `0 .. min(ram, 2 GiB)`         | low RAM                                                    |
//! | `0x8000_0000 .. 0xC000_0000`   | reserved for a later PCI MMIO window (nothing uses it yet) |
//! | `0xC000_0000 .. 0xFEC0_0000`   | device MMIO allocation window ([`DEVICE_MMIO_START`])      |
//! | `0xFEC0_0000`                  | IOAPIC                                                     |
//! | `0xFEE0_0000`                  | local APIC                                                 |
//! | `0xFFFB_C000`, `0xFFFB_D000`   | KVM identity-map page and TSS (KVM needs these on Intel)   |
//! | `4 GiB .. 4 GiB + (ram - 2 GiB)` | high RAM, only when RAM is larger than 2 GiB             |

use thiserror::Error;

/// One kibibyte.
pub const KIB: u64 = 1 << 10;
/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;
/// Guest page size; RAM sizes must be a multiple of it.
pub const PAGE_SIZE: u64 = 4 * KIB;

/// Start of the 32-bit MMIO hole (2 GiB). Low RAM never reaches past this address.
pub const MMIO_HOLE_START: u64 = 0x8000_0000;
/// End of the 32-bit MMIO hole (4 GiB). RAM above 2 GiB continues here.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Start of the part of the hole reserved for a later PCI MMIO window (same as [`MMIO_HOLE_START`]).
pub const PCI_MMIO_RESERVED_START: u64 = MMIO_HOLE_START;
/// End of the reserved PCI MMIO window; device MMIO allocation starts here.
pub const PCI_MMIO_RESERVED_END: u64 = DEVICE_MMIO_START;
/// Start of the window the resource allocator hands out device MMIO ranges from.
pub const DEVICE_MMIO_START: u64 = 0xC000_0000;
/// End (exclusive) of the device MMIO window; the IOAPIC follows.
pub const DEVICE_MMIO_END: u64 = 0xFEC0_0000;
/// IOAPIC MMIO base (the in-kernel irqchip emulates it here).
pub const IOAPIC_START: u64 = 0xFEC0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xFEE0_0000;
/// Address given to `KVM_SET_IDENTITY_MAP_ADDR` (one page).
pub const KVM_IDENTITY_MAP_START: u64 = 0xFFFB_C000;
/// Address given to `KVM_SET_TSS_ADDR` (three pages).
pub const KVM_TSS_START: u64 = 0xFFFB_D000;

/// Smallest RAM size petrel accepts (2 MiB: room for the boot structures and a tiny kernel).
pub const MIN_RAM_SIZE: u64 = 2 * MIB;
/// Largest RAM size petrel accepts (1 TiB). This is petrel's own limit, chosen so that all
/// address arithmetic stays far from overflow; it is not a KVM limit.
pub const MAX_RAM_SIZE: u64 = 1 << 40;

// KVM's TSS takes three pages; it must end inside the hole.
const _: () = assert!(KVM_TSS_START + 3 * PAGE_SIZE <= MMIO_HOLE_END);

/// Why a RAM size cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// RAM size is zero.
    #[error("ram size is zero")]
    Zero,
    /// RAM size is not a multiple of the page size.
    #[error("ram size {size:#x} is not a multiple of {PAGE_SIZE} bytes")]
    NotPageAligned {
        /// The requested size.
        size: u64,
    },
    /// RAM size is below [`MIN_RAM_SIZE`].
    #[error("ram size {size:#x} is below the minimum of {min:#x}")]
    TooSmall {
        /// The requested size.
        size: u64,
        /// The minimum ([`MIN_RAM_SIZE`]).
        min: u64,
    },
    /// RAM size is above [`MAX_RAM_SIZE`].
    #[error("ram size {size:#x} is above the maximum of {max:#x}")]
    TooLarge {
        /// The requested size.
        size: u64,
        /// The maximum ([`MAX_RAM_SIZE`]).
        max: u64,
    },
}

/// A contiguous range of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// Guest physical address of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
}

impl RamRegion {
    /// One past the last byte of the region (saturates instead of overflowing).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }

    /// Whether `[addr, addr + len)` lies entirely inside this region.
    pub fn contains_range(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.start && end <= self.end(),
            None => false,
        }
    }
}

/// Where guest RAM lives for a given RAM size.
///
/// RAM fills `[0, min(size, 2 GiB))`; anything beyond 2 GiB is placed at 4 GiB, leaving
/// `[2 GiB, 4 GiB)` for MMIO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    ram_size: u64,
    regions: Vec<RamRegion>,
}

impl MemoryLayout {
    /// Lays out `ram_size` bytes of RAM.
    pub fn new(ram_size: u64) -> Result<MemoryLayout, LayoutError> {
        if ram_size == 0 {
            return Err(LayoutError::Zero);
        }
        if ram_size % PAGE_SIZE != 0 {
            return Err(LayoutError::NotPageAligned { size: ram_size });
        }
        if ram_size < MIN_RAM_SIZE {
            return Err(LayoutError::TooSmall {
                size: ram_size,
                min: MIN_RAM_SIZE,
            });
        }
        if ram_size > MAX_RAM_SIZE {
            return Err(LayoutError::TooLarge {
                size: ram_size,
                max: MAX_RAM_SIZE,
            });
        }
        // From here on ram_size <= 1 TiB, so none of the sums below can overflow.
        let low = ram_size.min(MMIO_HOLE_START);
        let mut regions = vec![RamRegion {
            start: 0,
            size: low,
        }];
        let high = ram_size - low;
        if high > 0 {
            regions.push(RamRegion {
                start: MMIO_HOLE_END,
                size: high,
            });
        }
        Ok(MemoryLayout { ram_size, regions })
    }

    /// The RAM regions, sorted by address (one or two of them).
    pub fn ram_regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// One past the last RAM byte below the MMIO hole (at most [`MMIO_HOLE_START`]).
    pub fn low_ram_end(&self) -> u64 {
        self.regions[0].end()
    }

    /// One past the highest RAM byte.
    pub fn end(&self) -> u64 {
        self.regions.last().map_or(0, RamRegion::end)
    }

    /// Whether `[addr, addr + len)` is entirely RAM (inside a single region).
    pub fn contains_range(&self, addr: u64, len: u64) -> bool {
        self.regions.iter().any(|r| r.contains_range(addr, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions(size: u64) -> Vec<(u64, u64)> {
        MemoryLayout::new(size)
            .unwrap()
            .ram_regions()
            .iter()
            .map(|r| (r.start, r.size))
            .collect()
    }

    #[test]
    fn small_sizes_are_one_low_region() {
        for size in [MIN_RAM_SIZE, 32 * MIB, 128 * MIB] {
            let l = MemoryLayout::new(size).unwrap();
            assert_eq!(regions(size), vec![(0, size)]);
            assert_eq!(l.ram_size(), size);
            assert_eq!(l.low_ram_end(), size);
            assert_eq!(l.end(), size);
        }
    }

    #[test]
    fn exactly_two_gib_fills_low_ram_only() {
        let l = MemoryLayout::new(2 * GIB).unwrap();
        assert_eq!(regions(2 * GIB), vec![(0, 2 * GIB)]);
        assert_eq!(l.low_ram_end(), MMIO_HOLE_START);
        assert_eq!(l.end(), MMIO_HOLE_START);
    }

    #[test]
    fn one_page_over_two_gib_starts_high_ram() {
        let l = MemoryLayout::new(2 * GIB + PAGE_SIZE).unwrap();
        assert_eq!(
            regions(2 * GIB + PAGE_SIZE),
            vec![(0, 2 * GIB), (4 * GIB, PAGE_SIZE)]
        );
        assert_eq!(l.end(), 4 * GIB + PAGE_SIZE);
    }

    #[test]
    fn three_gib_is_split_around_the_hole() {
        let l = MemoryLayout::new(3 * GIB).unwrap();
        assert_eq!(regions(3 * GIB), vec![(0, 2 * GIB), (4 * GIB, GIB)]);
        assert_eq!(l.low_ram_end(), 2 * GIB);
        assert_eq!(l.end(), 5 * GIB);
        assert_eq!(l.ram_size(), 3 * GIB);
    }

    #[test]
    fn six_gib_is_split_around_the_hole() {
        let l = MemoryLayout::new(6 * GIB).unwrap();
        assert_eq!(regions(6 * GIB), vec![(0, 2 * GIB), (4 * GIB, 4 * GIB)]);
        assert_eq!(l.low_ram_end(), 2 * GIB);
        assert_eq!(l.end(), 8 * GIB);
        let total: u64 = l.ram_regions().iter().map(|r| r.size).sum();
        assert_eq!(total, 6 * GIB);
    }

    #[test]
    fn max_size_is_accepted() {
        let l = MemoryLayout::new(MAX_RAM_SIZE).unwrap();
        assert_eq!(l.end(), MAX_RAM_SIZE + 2 * GIB);
    }

    #[test]
    fn no_ram_inside_the_hole() {
        for size in [32 * MIB, 2 * GIB, 3 * GIB, 6 * GIB] {
            let l = MemoryLayout::new(size).unwrap();
            for r in l.ram_regions() {
                assert!(r.end() <= MMIO_HOLE_START || r.start >= MMIO_HOLE_END);
            }
            assert!(!l.contains_range(MMIO_HOLE_START, 1));
            assert!(!l.contains_range(LAPIC_START, 1));
        }
    }

    #[test]
    fn zero_is_refused() {
        assert_eq!(MemoryLayout::new(0), Err(LayoutError::Zero));
    }

    #[test]
    fn unaligned_is_refused() {
        assert_eq!(
            MemoryLayout::new(32 * MIB + 1),
            Err(LayoutError::NotPageAligned { size: 32 * MIB + 1 })
        );
        assert_eq!(
            MemoryLayout::new(u64::MAX),
            Err(LayoutError::NotPageAligned { size: u64::MAX })
        );
    }

    #[test]
    fn too_small_is_refused() {
        assert_eq!(
            MemoryLayout::new(MIN_RAM_SIZE - PAGE_SIZE),
            Err(LayoutError::TooSmall {
                size: MIN_RAM_SIZE - PAGE_SIZE,
                min: MIN_RAM_SIZE
            })
        );
        assert!(matches!(
            MemoryLayout::new(PAGE_SIZE),
            Err(LayoutError::TooSmall { .. })
        ));
    }

    #[test]
    fn too_large_is_refused_without_overflow() {
        for size in [
            MAX_RAM_SIZE + PAGE_SIZE,
            !(PAGE_SIZE - 1),
            u64::MAX - MMIO_HOLE_END + 1,
            1 << 63,
        ] {
            assert_eq!(
                MemoryLayout::new(size),
                Err(LayoutError::TooLarge {
                    size,
                    max: MAX_RAM_SIZE
                })
            );
        }
    }

    #[test]
    fn contains_range_checks_both_ends() {
        let l = MemoryLayout::new(3 * GIB).unwrap();
        assert!(l.contains_range(0, 2 * GIB));
        assert!(!l.contains_range(0, 2 * GIB + 1));
        assert!(l.contains_range(4 * GIB, GIB));
        assert!(!l.contains_range(4 * GIB, GIB + 1));
        assert!(!l.contains_range(u64::MAX, 2));
        // A range spanning the hole is not RAM even though both ends are.
        assert!(!l.contains_range(2 * GIB - 1, 2 * GIB + 2));
    }

    #[test]
    fn fixed_addresses_sit_inside_the_hole_in_order() {
        let addrs = [
            MMIO_HOLE_START,
            PCI_MMIO_RESERVED_END,
            DEVICE_MMIO_END,
            LAPIC_START,
            KVM_IDENTITY_MAP_START,
            KVM_TSS_START,
            MMIO_HOLE_END,
        ];
        assert!(addrs.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(DEVICE_MMIO_END, IOAPIC_START);
        assert_eq!(KVM_IDENTITY_MAP_START + PAGE_SIZE, KVM_TSS_START);
    }
}
