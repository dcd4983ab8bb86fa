//! Fixed guest addresses of the x86-64 boot structures petrel writes.
//!
//! All of them sit in the first MiB, below the kernel (which loads at [`HIMEM_START`] or above).
//!
//! | address            | what                                               |
//! |--------------------|----------------------------------------------------|
//! | `0x500`            | GDT (4 entries, 32 bytes)                          |
//! | `0x520`            | IDT (one zero entry)                               |
//! | `0x7000`           | zero page (`struct boot_params`, 4 KiB)            |
//! | `0x8ff0`           | initial stack pointer (stack grows down from here) |
//! | `0x9000`           | PML4                                               |
//! | `0xa000`           | PDPT                                               |
//! | `0xb000`           | page directory (512 × 2 MiB pages = first 1 GiB)   |
//! | `0x20000`          | kernel command line (up to the EBDA)               |
//! | `0x9fc00`          | EBDA start; `[0x9fc00, 1 MiB)` is reserved in e820 |
//! | `0x100000` (1 MiB) | kernel load address (bzImage) / lowest ELF segment |

/// Guest address of the GDT.
pub const GDT_START: u64 = 0x500;
/// Guest address of the IDT.
pub const IDT_START: u64 = 0x520;
/// Guest address of the zero page (`boot_params`); passed to the kernel in `rsi`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial `rsp` of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Guest address of the PML4 table (the initial `cr3`).
pub const PML4_START: u64 = 0x9000;
/// Guest address of the page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Guest address of the page directory.
pub const PDE_START: u64 = 0xb000;
/// Guest address of the kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Start of the extended BIOS data area; reserved in the e820 map up to 1 MiB.
pub const EBDA_START: u64 = 0x9fc00;
/// First address above the legacy low memory; kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// Most bytes (including the NUL) the command line may take at [`CMDLINE_START`]
/// before it would run into the EBDA.
pub const CMDLINE_MAX_SIZE: u64 = EBDA_START - CMDLINE_START;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, length) of every structure, sorted by address.
        let areas = [
            (GDT_START, 4 * 8),
            (IDT_START, 8),
            (ZERO_PAGE_START, 4096),
            (BOOT_STACK_POINTER - 0x800, 0x800),
            (PML4_START, 4096),
            (PDPTE_START, 4096),
            (PDE_START, 4096),
            (CMDLINE_START, CMDLINE_MAX_SIZE),
            (EBDA_START, HIMEM_START - EBDA_START),
        ];
        for pair in areas.windows(2) {
            assert!(
                pair[0].0 + pair[0].1 <= pair[1].0,
                "{:#x?} overlaps {:#x?}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(
            std::mem::size_of::<linux_loader::loader::bootparam::boot_params>(),
            4096
        );
    }
}
