//! Placing an initial ramdisk in guest memory.

use std::io::{self, Read, Seek, SeekFrom};

use petrel_memory::layout::{MemoryLayout, PAGE_SIZE};
use petrel_memory::GuestMemoryMmap;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::kernel::LoadedKernel;
use crate::reader::{image_len, VolatileReader};

/// Highest address an initrd may occupy for kernels that do not say (ELF `vmlinux`): the
/// `initrd_addr_max` every x86-64 bzImage reports. Low RAM ends at 2 GiB anyway.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// Where the initrd was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    /// Guest address of the first byte (page aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Why the initrd could not be loaded.
#[derive(Debug, Error)]
pub enum InitrdError {
    /// The initrd file is empty.
    #[error("initrd is empty")]
    Empty,
    /// The initrd does not fit between the kernel and the highest allowed address.
    #[error(
        "initrd of {size} bytes does not fit in the {room} bytes between the kernel and {limit:#x}"
    )]
    TooBig {
        /// Size of the initrd.
        size: u64,
        /// Bytes available.
        room: u64,
        /// One past the highest address the initrd may use.
        limit: u64,
    },
    /// Reading the initrd failed.
    #[error("cannot read initrd")]
    Io(#[source] io::Error),
    /// Copying into guest memory failed.
    #[error("cannot copy initrd into guest memory")]
    Copy(#[source] vm_memory::GuestMemoryError),
}

/// One past the highest address the initrd may occupy for `kernel` in `layout`:
/// `min(initrd_addr_max + 1, low_ram_end)`. `initrd_addr_max` comes from the bzImage header,
/// or is [`DEFAULT_INITRD_ADDR_MAX`] for ELF kernels.
pub fn initrd_limit(layout: &MemoryLayout, kernel: &LoadedKernel) -> u64 {
    let addr_max = kernel
        .setup_header
        .map_or(DEFAULT_INITRD_ADDR_MAX, |h| u64::from(h.initrd_addr_max));
    (addr_max + 1).min(layout.low_ram_end())
}

/// Computes where an initrd of `size` bytes goes: the highest page-aligned address such that it
/// ends at or below [`initrd_limit`] and starts at or above the kernel (`kernel.reserved_end`,
/// which is at least `kernel.end`).
pub fn place_initrd(
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    size: u64,
) -> Result<InitrdPlacement, InitrdError> {
    if size == 0 {
        return Err(InitrdError::Empty);
    }
    let limit = initrd_limit(layout, kernel);
    let floor = kernel.end.max(kernel.reserved_end);
    let room = limit.saturating_sub(floor);
    let too_big = || InitrdError::TooBig { size, room, limit };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if addr < floor {
        return Err(too_big());
    }
    Ok(InitrdPlacement { addr, size })
}

/// Copies the whole of `image` into guest memory at the place [`place_initrd`] picks.
pub fn load_initrd<F: Read + Seek>(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    image: &mut F,
) -> Result<InitrdPlacement, InitrdError> {
    let size = image_len(image).map_err(InitrdError::Io)?;
    let placement = place_initrd(layout, kernel, size)?;
    image.seek(SeekFrom::Start(0)).map_err(InitrdError::Io)?;
    // place_initrd bounded size by low RAM (at most 2 GiB), so this cannot fail on a 64-bit host.
    let len = usize::try_from(size).map_err(|_| InitrdError::TooBig {
        size,
        room: usize::MAX as u64,
        limit: placement.addr.saturating_add(size),
    })?;
    let mut reader = VolatileReader::new(image);
    mem.read_exact_volatile_from(GuestAddress(placement.addr), &mut reader, len)
        .map_err(InitrdError::Copy)?;
    log::debug!(
        "loaded initrd at [{:#x}, {:#x})",
        placement.addr,
        placement.addr + size
    );
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelFormat;
    use linux_loader::loader::bootparam::setup_header;
    use petrel_memory::guest_ram::create_guest_memory;
    use petrel_memory::layout::{GIB, MIB};
    use std::io::Cursor;

    fn kernel(end: u64, initrd_addr_max: Option<u32>) -> LoadedKernel {
        LoadedKernel {
            format: if initrd_addr_max.is_some() {
                KernelFormat::BzImage
            } else {
                KernelFormat::Elf
            },
            entry: 0x100_0000,
            start: 0x100_0000,
            end,
            reserved_end: end,
            setup_header: initrd_addr_max.map(|m| setup_header {
                initrd_addr_max: m,
                ..Default::default()
            }),
            pvh_entry: None,
        }
    }

    #[test]
    fn goes_at_the_top_of_low_ram_page_aligned() {
        let layout = MemoryLayout::new(128 * MIB).unwrap();
        let k = kernel(0x200_0000, None);
        let p = place_initrd(&layout, &k, 10_000).unwrap();
        assert_eq!(p.size, 10_000);
        assert_eq!(p.addr % PAGE_SIZE, 0);
        assert_eq!(p.addr, (128 * MIB - 10_000) & !0xfff);
        assert!(p.addr + p.size <= 128 * MIB);
        // One page higher would not fit.
        assert!(p.addr + PAGE_SIZE + p.size > 128 * MIB);
    }

    #[test]
    fn stays_under_initrd_addr_max() {
        // 3 GiB of RAM: low RAM ends at 2 GiB, but the kernel only takes initrds below 896 MiB.
        let layout = MemoryLayout::new(3 * GIB).unwrap();
        let k = kernel(0x200_0000, Some(0x37ff_ffff));
        assert_eq!(initrd_limit(&layout, &k), 0x3800_0000);
        let p = place_initrd(&layout, &k, 5 * MIB + 1).unwrap();
        assert_eq!(p.addr, (0x3800_0000 - 5 * MIB - 1) & !0xfff);
        // Without a header, the limit is low RAM's end.
        let elf = kernel(0x200_0000, None);
        assert_eq!(initrd_limit(&layout, &elf), 2 * GIB);
        let p = place_initrd(&layout, &elf, MIB).unwrap();
        assert_eq!(p.addr + p.size, 2 * GIB);
    }

    #[test]
    fn exact_fit_above_the_kernel_is_allowed() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let k = kernel(16 * MIB, None);
        let p = place_initrd(&layout, &k, 16 * MIB).unwrap();
        assert_eq!(p.addr, 16 * MIB);
    }

    #[test]
    fn too_big_names_the_sizes() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let k = kernel(16 * MIB, None);
        let e = place_initrd(&layout, &k, 16 * MIB + 1).unwrap_err();
        match &e {
            InitrdError::TooBig { size, room, limit } => {
                assert_eq!(*size, 16 * MIB + 1);
                assert_eq!(*room, 16 * MIB);
                assert_eq!(*limit, 32 * MIB);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "initrd of 16777217 bytes does not fit in the 16777216 bytes between the kernel and 0x2000000"
        );
        // Larger than all of RAM, and sizes that would overflow.
        for size in [64 * MIB, u64::MAX] {
            assert!(matches!(
                place_initrd(&layout, &k, size),
                Err(InitrdError::TooBig { .. })
            ));
        }
    }

    #[test]
    fn respects_the_kernel_decompression_buffer() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mut k = kernel(2 * MIB, None);
        k.reserved_end = 30 * MIB;
        assert!(place_initrd(&layout, &k, 2 * MIB).is_ok());
        assert!(matches!(
            place_initrd(&layout, &k, 2 * MIB + 1),
            Err(InitrdError::TooBig { room, .. }) if room == 2 * MIB
        ));
    }

    #[test]
    fn kernel_above_the_limit_leaves_no_room() {
        let layout = MemoryLayout::new(3 * GIB).unwrap();
        let k = kernel(0x4000_0000, Some(0x37ff_ffff));
        assert!(matches!(
            place_initrd(&layout, &k, 4096),
            Err(InitrdError::TooBig { room: 0, .. })
        ));
    }

    #[test]
    fn empty_is_refused() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let k = kernel(2 * MIB, None);
        assert!(matches!(
            load_initrd(&mem, &layout, &k, &mut Cursor::new(Vec::new())),
            Err(InitrdError::Empty)
        ));
    }

    #[test]
    fn bytes_are_copied_to_the_chosen_place() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let k = kernel(2 * MIB, None);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let mut src = Cursor::new(data.clone());
        src.set_position(1234); // load_initrd must read from the start
        let p = load_initrd(&mem, &layout, &k, &mut src).unwrap();
        assert_eq!(p.size, data.len() as u64);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(p.addr)).unwrap();
        assert_eq!(back, data);
    }
}
