//! The zero page (`struct boot_params`), its e820 map, and the command line bytes.

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header, LOADED_HIGH};
use linux_loader::loader::load_cmdline;
use petrel_memory::layout::MemoryLayout;
use petrel_memory::GuestMemoryMmap;
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress};

use crate::initrd::InitrdPlacement;
use crate::kernel::LoadedKernel;
use crate::layout::{CMDLINE_START, EBDA_START, HIMEM_START, ZERO_PAGE_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;
/// `boot_flag` value (offset 0x1fe).
pub const BOOT_FLAG: u16 = 0xaa55;
/// `header` magic `"HdrS"` (offset 0x202).
pub const HDRS: u32 = 0x5372_6448;
/// `type_of_loader` for a loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `kernel_alignment` written for ELF kernels (16 MiB, Linux's default physical alignment).
pub const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// One entry of the e820 memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub mem_type: u32,
}

/// Why the zero page could not be written.
#[derive(Debug, Error)]
pub enum ZeroPageError {
    /// The e820 map does not fit the zero page's table.
    #[error("e820 map has {count} entries, the zero page holds {max}")]
    TooManyE820Entries {
        /// Entries needed.
        count: usize,
        /// Entries available.
        max: usize,
    },
    /// The command line could not be turned into bytes.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written to guest memory.
    #[error("cannot write the kernel command line at {CMDLINE_START:#x}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    /// The zero page could not be written to guest memory.
    #[error("cannot write the zero page at {ZERO_PAGE_START:#x}")]
    Write(#[source] vm_memory::GuestMemoryError),
    /// `boot_params.acpi_rsdp_addr` could not be written.
    #[error("cannot write acpi_rsdp_addr of the zero page at {boot_params:#x}")]
    WriteAcpiRsdp {
        /// Address of the zero page.
        boot_params: u64,
        /// What guest memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Offset of `acpi_rsdp_addr` (u64) in `boot_params`.
pub const ACPI_RSDP_ADDR_OFFSET: u64 = std::mem::offset_of!(boot_params, acpi_rsdp_addr) as u64;

/// The e820 map for `layout`: RAM `[0, EBDA_START)`, reserved `[EBDA_START, 1 MiB)`,
/// RAM `[1 MiB, low_ram_end)`, and RAM `[4 GiB, end)` when there is RAM above the hole.
pub fn e820_entries(layout: &MemoryLayout) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            mem_type: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            mem_type: E820_RESERVED,
        },
    ];
    for region in layout.ram_regions() {
        // The first region starts at 0; its part below 1 MiB is described above.
        let start = region.start.max(HIMEM_START);
        if region.end() > start {
            map.push(E820Entry {
                addr: start,
                size: region.end() - start,
                mem_type: E820_RAM,
            });
        }
    }
    map
}

/// The setup header petrel writes for a kernel without one (ELF `vmlinux`).
fn synthesized_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS,
        kernel_alignment: ELF_KERNEL_ALIGNMENT,
        loadflags: LOADED_HIGH,
        ..Default::default()
    }
}

/// Builds `boot_params` for `kernel`: its setup header (a bzImage's own, or a synthesized one
/// for ELF), loader type, command line pointer and length, initrd location, and the e820 map.
pub fn build_boot_params(
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    cmdline_len: u32,
    initrd: Option<&InitrdPlacement>,
) -> Result<boot_params, ZeroPageError> {
    let mut params = boot_params {
        hdr: kernel.setup_header.unwrap_or_else(synthesized_header),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.ext_cmd_line_ptr = (CMDLINE_START >> 32) as u32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.ext_ramdisk_image = (initrd.addr >> 32) as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
        params.ext_ramdisk_size = (initrd.size >> 32) as u32;
    }
    let map = e820_entries(layout);
    let max = params.e820_table.len();
    if map.len() > max {
        return Err(ZeroPageError::TooManyE820Entries {
            count: map.len(),
            max,
        });
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.mem_type,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Writes the command line at [`CMDLINE_START`] and `boot_params` at [`ZERO_PAGE_START`].
/// Returns the zero page address (the kernel expects it in `rsi`).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<&InitrdPlacement>,
) -> Result<u64, ZeroPageError> {
    let len = cmdline
        .as_cstring()
        .map_err(ZeroPageError::Cmdline)?
        .as_bytes()
        .len();
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(ZeroPageError::WriteCmdline)?;
    // The command line fits below the EBDA (build_cmdline caps it), so its length fits u32;
    // saturate rather than trust a Cmdline built elsewhere.
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    let params = build_boot_params(layout, kernel, len, initrd)?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(ZeroPageError::Write)?;
    Ok(ZERO_PAGE_START)
}

/// Sets `acpi_rsdp_addr` (offset 0x070) of the zero page at `boot_params_addr` to `rsdp`, so
/// the kernel uses that RSDP instead of scanning for one. Call it after [`write_zero_page`],
/// which leaves the field 0.
pub fn set_acpi_rsdp(
    mem: &GuestMemoryMmap,
    boot_params_addr: u64,
    rsdp: u64,
) -> Result<(), ZeroPageError> {
    let error = |source| ZeroPageError::WriteAcpiRsdp {
        boot_params: boot_params_addr,
        source,
    };
    let field = GuestAddress(boot_params_addr)
        .checked_add(ACPI_RSDP_ADDR_OFFSET)
        .ok_or_else(|| {
            error(vm_memory::GuestMemoryError::InvalidGuestAddress(
                GuestAddress(boot_params_addr),
            ))
        })?;
    mem.write_obj(rsdp, field).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::build_cmdline;
    use crate::kernel::{load_kernel, KernelFormat};
    use crate::test_images::{bzimage, elf_image, ElfSegment};
    use petrel_memory::guest_ram::create_guest_memory;
    use petrel_memory::layout::{GIB, MIB};
    use std::io::Cursor;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            mem_type: E820_RAM,
        }
    }

    fn ebda() -> E820Entry {
        E820Entry {
            addr: 0x9fc00,
            size: 0x100000 - 0x9fc00,
            mem_type: E820_RESERVED,
        }
    }

    fn map(size: u64) -> Vec<E820Entry> {
        e820_entries(&MemoryLayout::new(size).unwrap())
    }

    #[test]
    fn e820_for_32_mib() {
        assert_eq!(
            map(32 * MIB),
            vec![ram(0, 0x9fc00), ebda(), ram(0x10_0000, 31 * MIB)]
        );
    }

    #[test]
    fn e820_for_128_mib() {
        assert_eq!(
            map(128 * MIB),
            vec![ram(0, 0x9fc00), ebda(), ram(0x10_0000, 127 * MIB)]
        );
    }

    #[test]
    fn e820_for_3_gib() {
        assert_eq!(
            map(3 * GIB),
            vec![
                ram(0, 0x9fc00),
                ebda(),
                ram(0x10_0000, 2 * GIB - MIB),
                ram(4 * GIB, GIB)
            ]
        );
    }

    #[test]
    fn e820_for_6_gib() {
        assert_eq!(
            map(6 * GIB),
            vec![
                ram(0, 0x9fc00),
                ebda(),
                ram(0x10_0000, 2 * GIB - MIB),
                ram(4 * GIB, 4 * GIB)
            ]
        );
    }

    #[test]
    fn e820_ram_adds_up_to_the_layout_minus_the_ebda() {
        for size in [2 * MIB, 32 * MIB, 2 * GIB, 6 * GIB] {
            let total: u64 = map(size)
                .iter()
                .filter(|e| e.mem_type == E820_RAM)
                .map(|e| e.size)
                .sum();
            assert_eq!(total, size - (HIMEM_START - EBDA_START));
        }
    }

    fn u8_at(mem: &GuestMemoryMmap, off: u64) -> u8 {
        mem.read_obj(GuestAddress(ZERO_PAGE_START + off)).unwrap()
    }
    fn u16_at(mem: &GuestMemoryMmap, off: u64) -> u16 {
        mem.read_obj(GuestAddress(ZERO_PAGE_START + off)).unwrap()
    }
    fn u32_at(mem: &GuestMemoryMmap, off: u64) -> u32 {
        mem.read_obj(GuestAddress(ZERO_PAGE_START + off)).unwrap()
    }
    fn u64_at(mem: &GuestMemoryMmap, off: u64) -> u64 {
        mem.read_obj(GuestAddress(ZERO_PAGE_START + off)).unwrap()
    }

    /// Reads the e820 table back at Linux's offsets: count at 0x1e8, 20-byte entries at 0x2d0.
    fn e820_back(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
        let n = u8_at(mem, 0x1e8) as u64;
        (0..n)
            .map(|i| {
                let off = 0x2d0 + 20 * i;
                E820Entry {
                    addr: u64_at(mem, off),
                    size: u64_at(mem, off + 8),
                    mem_type: u32_at(mem, off + 16),
                }
            })
            .collect()
    }

    #[test]
    fn elf_zero_page_fields_are_at_linux_offsets() {
        let layout = MemoryLayout::new(6 * GIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let image = elf_image(0x100_0000, &[ElfSegment::load(0x100_0000, vec![1; 64])]);
        let k = load_kernel(&mem, &layout, &mut Cursor::new(image)).unwrap();
        let cmdline = build_cmdline("console=ttyS0 panic=1", &k).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x7f00_0000,
            size: 0x12_3456,
        };
        let zp = write_zero_page(&mem, &layout, &k, &cmdline, Some(&initrd)).unwrap();
        assert_eq!(zp, ZERO_PAGE_START);

        assert_eq!(u16_at(&mem, 0x1fe), 0xaa55); // boot_flag
        assert_eq!(&u32_at(&mem, 0x202).to_le_bytes(), b"HdrS"); // header
        assert_eq!(u8_at(&mem, 0x210), 0xff); // type_of_loader
        assert_eq!(u8_at(&mem, 0x211) & LOADED_HIGH, LOADED_HIGH); // loadflags
        assert_eq!(u32_at(&mem, 0x218), 0x7f00_0000); // ramdisk_image
        assert_eq!(u32_at(&mem, 0x21c), 0x12_3456); // ramdisk_size
        assert_eq!(u32_at(&mem, 0x228), CMDLINE_START as u32); // cmd_line_ptr
        assert_eq!(u32_at(&mem, 0x230), 0x100_0000); // kernel_alignment
        assert_eq!(u32_at(&mem, 0x238), 21); // cmdline_size = length written
        assert_eq!(u32_at(&mem, 0x0c0), 0); // ext_ramdisk_image
        assert_eq!(u8_at(&mem, 0x1ef), 0); // sentinel

        assert_eq!(e820_back(&mem), e820_entries(&layout));
        assert_eq!(e820_back(&mem).len(), 4);

        let mut text = [0u8; 22];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0 panic=1\0");
    }

    #[test]
    fn bzimage_header_is_copied_with_loader_fields_set() {
        let layout = MemoryLayout::new(128 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let spec = bzimage().initrd_addr_max(0x37ff_ffff).cmdline_size(511);
        let k = load_kernel(&mem, &layout, &mut Cursor::new(spec.build())).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        let cmdline = build_cmdline("root=/dev/vda", &k).unwrap();
        write_zero_page(&mem, &layout, &k, &cmdline, None).unwrap();

        assert_eq!(u16_at(&mem, 0x1fe), 0xaa55);
        assert_eq!(&u32_at(&mem, 0x202).to_le_bytes(), b"HdrS");
        assert_eq!(u16_at(&mem, 0x206), 0x020f); // version from the image
        assert_eq!(u8_at(&mem, 0x1f1), spec.setup_sects); // setup_sects from the image
        assert_eq!(u8_at(&mem, 0x210), 0xff);
        assert_eq!(u32_at(&mem, 0x214), HIMEM_START as u32); // code32_start = load address
        assert_eq!(u32_at(&mem, 0x218), 0); // no initrd
        assert_eq!(u32_at(&mem, 0x21c), 0);
        assert_eq!(u32_at(&mem, 0x228), CMDLINE_START as u32);
        assert_eq!(u32_at(&mem, 0x22c), 0x37ff_ffff); // initrd_addr_max from the image
        assert_eq!(u32_at(&mem, 0x230), 0x20_0000); // kernel_alignment from the image
        assert_eq!(u16_at(&mem, 0x236), 0x03); // xloadflags from the image
        assert_eq!(u64_at(&mem, 0x258), 0x100_0000); // pref_address
        assert_eq!(u32_at(&mem, 0x260), 0x20_0000); // init_size
        assert_eq!(
            e820_back(&mem),
            vec![ram(0, 0x9fc00), ebda(), ram(0x10_0000, 127 * MIB)]
        );
    }

    #[test]
    fn e820_for_3_gib_is_written() {
        let layout = MemoryLayout::new(3 * GIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let image = elf_image(0x100_0000, &[ElfSegment::load(0x100_0000, vec![1; 64])]);
        let k = load_kernel(&mem, &layout, &mut Cursor::new(image)).unwrap();
        let cmdline = build_cmdline("", &k).unwrap();
        write_zero_page(&mem, &layout, &k, &cmdline, None).unwrap();
        assert_eq!(e820_back(&mem), map(3 * GIB));
        assert_eq!(u32_at(&mem, 0x238), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(CMDLINE_START)).unwrap(), 0);
    }

    #[test]
    fn initrd_above_4_gib_uses_the_ext_fields() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let image_kernel = LoadedKernel {
            format: KernelFormat::Elf,
            entry: 0x100_0000,
            start: 0x100_0000,
            end: 0x110_0000,
            reserved_end: 0x110_0000,
            setup_header: None,
            pvh_entry: None,
        };
        let initrd = InitrdPlacement {
            addr: 0x1_2345_6000,
            size: 0x2_0000_0010,
        };
        let p = build_boot_params(&layout, &image_kernel, 0, Some(&initrd)).unwrap();
        assert_eq!({ p.hdr.ramdisk_image }, 0x2345_6000);
        assert_eq!({ p.ext_ramdisk_image }, 1);
        assert_eq!({ p.hdr.ramdisk_size }, 0x10);
        assert_eq!({ p.ext_ramdisk_size }, 2);
    }

    #[test]
    fn acpi_rsdp_addr_is_written_at_offset_0x70() {
        assert_eq!(ACPI_RSDP_ADDR_OFFSET, 0x70);
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let image = elf_image(0x100_0000, &[ElfSegment::load(0x100_0000, vec![1; 64])]);
        let k = load_kernel(&mem, &layout, &mut Cursor::new(image)).unwrap();
        let cmdline = build_cmdline("console=ttyS0", &k).unwrap();
        let zp = write_zero_page(&mem, &layout, &k, &cmdline, None).unwrap();
        assert_eq!(u64_at(&mem, 0x70), 0);
        set_acpi_rsdp(&mem, zp, 0xe0000).unwrap();
        assert_eq!(u64_at(&mem, 0x70), 0xe0000);
        // Nothing around it changed.
        assert_eq!(u64_at(&mem, 0x68), 0);
        assert_eq!(u64_at(&mem, 0x78), 0);
        assert_eq!(e820_back(&mem), e820_entries(&layout));
        assert_eq!(u32_at(&mem, 0x228), CMDLINE_START as u32);
    }

    #[test]
    fn acpi_rsdp_addr_outside_memory_is_an_error() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        for addr in [64 * MIB, u64::MAX - 8] {
            let e = set_acpi_rsdp(&mem, addr, 0xe0000).unwrap_err();
            assert!(
                matches!(e, ZeroPageError::WriteAcpiRsdp { boot_params, .. } if boot_params == addr),
                "{e}"
            );
        }
    }
}
