//! Creating the guest RAM mapping for a [`MemoryLayout`].

use thiserror::Error;
use vm_memory::mmap::FromRangesError;
use vm_memory::GuestAddress;

use crate::layout::MemoryLayout;
use crate::GuestMemoryMmap;

/// Why guest RAM could not be created.
#[derive(Debug, Error)]
pub enum GuestRamError {
    /// A region is larger than the host address space can map.
    #[error("ram region at {start:#x} of {size:#x} bytes does not fit the host address space")]
    RegionTooLarge {
        /// Guest address of the region.
        start: u64,
        /// Size of the region.
        size: u64,
    },
    /// The host refused the mapping.
    #[error("cannot map guest ram")]
    Map(#[source] FromRangesError),
}

/// Maps anonymous host memory for every RAM region of `layout`.
///
/// The mapping is private, anonymous and `MAP_NORESERVE`, and is not pre-faulted: host memory is
/// only consumed for pages the guest (or the VMM) actually touches.
pub fn create_guest_memory(layout: &MemoryLayout) -> Result<GuestMemoryMmap, GuestRamError> {
    let ranges = layout
        .ram_regions()
        .iter()
        .map(|r| {
            usize::try_from(r.size)
                .map(|size| (GuestAddress(r.start), size))
                .map_err(|_| GuestRamError::RegionTooLarge {
                    start: r.start,
                    size: r.size,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    log::debug!(
        "mapping {:#x} bytes of guest ram in {} region(s)",
        layout.ram_size(),
        ranges.len()
    );
    GuestMemoryMmap::from_ranges(&ranges).map_err(GuestRamError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GIB, MIB};
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    /// Resident set size of this process in bytes, from /proc/self/statm.
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn regions_match_the_layout() {
        let layout = MemoryLayout::new(3 * GIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        assert_eq!(mem.num_regions(), 2);
        let got: Vec<(u64, u64)> = mem.iter().map(|r| (r.start_addr().0, r.len())).collect();
        assert_eq!(got, vec![(0, 2 * GIB), (4 * GIB, GIB)]);
        assert_eq!(mem.last_addr(), GuestAddress(5 * GIB - 1));
        // Nothing is mapped inside the hole.
        assert!(mem.write_obj(1u8, GuestAddress(2 * GIB)).is_err());
    }

    #[test]
    fn memory_is_zeroed_and_writable_at_both_ends() {
        let layout = MemoryLayout::new(3 * GIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        for addr in [0, 2 * GIB - 8, 4 * GIB, 5 * GIB - 8] {
            assert_eq!(mem.read_obj::<u64>(GuestAddress(addr)).unwrap(), 0);
            mem.write_obj(0xdead_beef_u64, GuestAddress(addr)).unwrap();
            assert_eq!(
                mem.read_obj::<u64>(GuestAddress(addr)).unwrap(),
                0xdead_beef
            );
        }
    }

    #[test]
    fn sixteen_gib_does_not_raise_rss() {
        let layout = MemoryLayout::new(16 * GIB).unwrap();
        let before = rss_bytes();
        let mem = create_guest_memory(&layout).unwrap();
        let after = rss_bytes();
        assert_eq!(mem.num_regions(), 2);
        // Other tests run in parallel in this process, so allow some noise, but far less than
        // what pre-faulting even a tiny part of 16 GiB would cost.
        assert!(
            after.saturating_sub(before) < 64 * MIB,
            "rss grew from {before} to {after}"
        );
        // Touching one page in the high region costs about one page, not the region.
        mem.write_obj(1u8, GuestAddress(10 * GIB)).unwrap();
        let touched = rss_bytes();
        assert!(touched.saturating_sub(before) < 64 * MIB);
    }
}
