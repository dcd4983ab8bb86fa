//! Loading a Linux kernel for a 64-bit x86 KVM guest and writing everything it needs to
//! start: the kernel image (ELF `vmlinux` or `bzImage`), the command line, an optional
//! initrd, the zero page with its e820 map, a GDT/IDT and identity-mapped page tables.
//!
//! Plain data in, guest memory out: nothing here touches KVM, so any VMM that keeps guest RAM
//! in a `vm_memory::GuestMemoryMmap` and lays it out with [`petrel_memory::layout`] can use
//! it. After [`load_linux_boot`], set the boot vCPU to long mode with the returned
//! [`CpuTables`], `rip = entry_point`, `rsi = boot_params`,
//! `rsp = stack_pointer`.
//!
//! The steps are also public on their own ([`kernel::load_kernel`], [`cmdline::build_cmdline`],
//! [`initrd::load_initrd`], [`zero_page::write_zero_page`], [`cpu_tables::write_cpu_tables`])
//! for a VMM that wants to change one of them.
//!
//! [`acpi`] describes the machine to the guest: [`acpi::write_acpi_tables`] writes the RSDP,
//! XSDT, FADT (hardware-reduced, with sleep and reset registers), MADT and DSDT into the BIOS
//! area, and [`zero_page::set_acpi_rsdp`] tells the kernel where the RSDP is:
//!
//! ```no_run
//! # use petrel_boot::load_linux_boot;
//! # use petrel_memory::guest_ram::create_guest_memory;
//! # use petrel_memory::layout::{MemoryLayout, MIB};
//! use petrel_boot::acpi::{write_acpi_tables, AcpiConfig, AcpiPmRegisters, LegacySerial};
//! use petrel_boot::zero_page::set_acpi_rsdp;
//! # let layout = MemoryLayout::new(256 * MIB)?;
//! # let mem = create_guest_memory(&layout)?;
//! # let mut kernel = std::fs::File::open("bzImage")?;
//! let boot = load_linux_boot(&mem, &layout, &mut kernel, None::<&mut std::fs::File>, "")?;
//! let config = AcpiConfig {
//!     vcpus: 2,
//!     pm: AcpiPmRegisters { sleep_control: 0x600, sleep_status: 0x601, reset: 0x602, reset_value: 1 },
//!     i8042: true,
//!     serial_ports: vec![LegacySerial { port: 0x3f8, irq: 4 }],
//!     virtio_mmio: Vec::new(),
//! };
//! let rsdp = write_acpi_tables(&mem, &config)?;
//! set_acpi_rsdp(&mem, boot.boot_params, rsdp)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ```no_run
//! use std::fs::File;
//! use petrel_boot::load_linux_boot;
//! use petrel_memory::guest_ram::create_guest_memory;
//! use petrel_memory::layout::{MemoryLayout, MIB};
//!
//! let layout = MemoryLayout::new(256 * MIB)?;
//! let mem = create_guest_memory(&layout)?;
//! let mut kernel = File::open("bzImage")?;
//! let mut initrd = File::open("initrd.img")?;
//! let boot = load_linux_boot(&mem, &layout, &mut kernel, Some(&mut initrd), "console=ttyS0")?;
//! println!(
//!     "rip={:#x} rsi={:#x} rsp={:#x} cr3={:#x}",
//!     boot.entry_point, boot.boot_params, boot.stack_pointer, boot.cpu_tables.page_table_root
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod acpi;
pub mod cmdline;
pub mod cpu_tables;
pub mod initrd;
pub mod kernel;
pub mod layout;
mod reader;
#[cfg(test)]
mod test_images;
pub mod zero_page;

use std::io::{Read, Seek};

use petrel_memory::layout::MemoryLayout;
use petrel_memory::GuestMemoryMmap;
use thiserror::Error;

use cmdline::{build_cmdline, CmdlineError};
use cpu_tables::{write_cpu_tables, CpuTables, CpuTablesError};
use initrd::{load_initrd, InitrdError, InitrdPlacement};
use kernel::{load_kernel, KernelError, LoadedKernel};
use zero_page::{write_zero_page, ZeroPageError};

/// Everything a vCPU needs to start the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootEntry {
    /// 64-bit entry point (`rip`).
    pub entry_point: u64,
    /// Guest address of the zero page (`rsi`).
    pub boot_params: u64,
    /// Initial stack pointer (`rsp`), [`layout::BOOT_STACK_POINTER`].
    pub stack_pointer: u64,
    /// GDT, IDT and page-table root to load.
    pub cpu_tables: CpuTables,
    /// Where the kernel went.
    pub kernel: LoadedKernel,
    /// Where the initrd went, if there is one.
    pub initrd: Option<InitrdPlacement>,
}

/// Why the guest could not be prepared for boot.
#[derive(Debug, Error)]
pub enum BootError {
    /// Loading the kernel failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The command line was refused.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// Loading the initrd failed.
    #[error(transparent)]
    Initrd(#[from] InitrdError),
    /// Writing the zero page or command line failed.
    #[error(transparent)]
    ZeroPage(#[from] ZeroPageError),
    /// Writing the GDT, IDT or page tables failed.
    #[error(transparent)]
    CpuTables(#[from] CpuTablesError),
}

/// Loads `kernel`, the optional `initrd` and `cmdline` into `mem` and writes the boot
/// structures, in that order. `mem` must have been created from `layout`.
///
/// Pass `None::<&mut std::fs::File>` (or any reader type) when there is no initrd.
pub fn load_linux_boot<K: Read + Seek, I: Read + Seek>(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    kernel: &mut K,
    initrd: Option<&mut I>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    let loaded = load_kernel(mem, layout, kernel)?;
    let cmdline = build_cmdline(cmdline, &loaded)?;
    let initrd = match initrd {
        Some(image) => Some(load_initrd(mem, layout, &loaded, image)?),
        None => None,
    };
    let boot_params = write_zero_page(mem, layout, &loaded, &cmdline, initrd.as_ref())?;
    let cpu_tables = write_cpu_tables(mem)?;
    Ok(BootEntry {
        entry_point: loaded.entry,
        boot_params,
        stack_pointer: layout::BOOT_STACK_POINTER,
        cpu_tables,
        kernel: loaded,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelFormat;
    use crate::test_images::{bzimage, elf_image, ElfSegment};
    use petrel_memory::guest_ram::create_guest_memory;
    use petrel_memory::layout::{GIB, MIB};
    use std::io::Cursor;
    use vm_memory::{Bytes, GuestAddress};

    fn zp_u32(mem: &GuestMemoryMmap, off: u64) -> u32 {
        mem.read_obj(GuestAddress(layout::ZERO_PAGE_START + off))
            .unwrap()
    }

    #[test]
    fn bzimage_with_initrd_end_to_end() {
        let layout = MemoryLayout::new(128 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let mut kernel = Cursor::new(bzimage().build());
        let initrd_data = vec![0x42u8; 3 * MIB as usize + 5];
        let mut initrd = Cursor::new(initrd_data.clone());
        let boot = load_linux_boot(
            &mem,
            &layout,
            &mut kernel,
            Some(&mut initrd),
            "console=ttyS0 reboot=k",
        )
        .unwrap();
        assert_eq!(boot.kernel.format, KernelFormat::BzImage);
        assert_eq!(boot.entry_point, 0x10_0200);
        assert_eq!(boot.boot_params, 0x7000);
        assert_eq!(boot.stack_pointer, 0x8ff0);
        assert_eq!(boot.cpu_tables.page_table_root, 0x9000);
        let initrd = boot.initrd.unwrap();
        assert_eq!(initrd.addr, (128 * MIB - initrd_data.len() as u64) & !0xfff);
        assert_eq!(zp_u32(&mem, 0x218), initrd.addr as u32);
        assert_eq!(zp_u32(&mem, 0x21c), initrd_data.len() as u32);
        assert_eq!(zp_u32(&mem, 0x228), 0x20000);
        let mut back = vec![0u8; initrd_data.len()];
        mem.read_slice(&mut back, GuestAddress(initrd.addr))
            .unwrap();
        assert_eq!(back, initrd_data);
        let mut text = [0u8; 23];
        mem.read_slice(&mut text, GuestAddress(0x20000)).unwrap();
        assert_eq!(&text, b"console=ttyS0 reboot=k\0");
    }

    #[test]
    fn elf_without_initrd_end_to_end() {
        let layout = MemoryLayout::new(3 * GIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let image = elf_image(
            0x100_0100,
            &[ElfSegment::load(0x100_0000, vec![0xcc; 0x1000])],
        );
        let boot = load_linux_boot(
            &mem,
            &layout,
            &mut Cursor::new(image),
            None::<&mut Cursor<Vec<u8>>>,
            "console=ttyS0",
        )
        .unwrap();
        assert_eq!(boot.kernel.format, KernelFormat::Elf);
        assert_eq!(boot.entry_point, 0x100_0100);
        assert!(boot.initrd.is_none());
        assert_eq!(zp_u32(&mem, 0x218), 0);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(layout::ZERO_PAGE_START + 0x1e8))
                .unwrap(),
            4
        );
    }

    #[test]
    fn each_step_reports_its_own_error() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let none = None::<&mut Cursor<Vec<u8>>>;

        let text = b"just some text, not a kernel".to_vec();
        let e = load_linux_boot(&mem, &layout, &mut Cursor::new(text), none, "").unwrap_err();
        assert!(matches!(e, BootError::Kernel(KernelError::NotAKernel)));
        assert!(e.to_string().starts_with("not a kernel image"));

        let long = "x".repeat(300);
        let mut k = Cursor::new(bzimage().cmdline_size(255).build());
        let e = load_linux_boot(&mem, &layout, &mut k, None::<&mut Cursor<Vec<u8>>>, &long)
            .unwrap_err();
        assert!(matches!(
            e,
            BootError::Cmdline(CmdlineError::TooLong { len: 300, max: 255 })
        ));

        let mut k = Cursor::new(bzimage().build());
        let mut big = Cursor::new(vec![0u8; 31 * MIB as usize]);
        let e = load_linux_boot(&mem, &layout, &mut k, Some(&mut big), "").unwrap_err();
        assert!(matches!(e, BootError::Initrd(InitrdError::TooBig { .. })));
        assert!(e.to_string().contains(&(31 * MIB).to_string()), "{e}");
    }
}
