//! The GDT, IDT and identity-mapped page tables a vCPU needs to enter a 64-bit kernel.

use petrel_memory::GuestMemoryMmap;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START};

/// GDT entries written at [`GDT_START`]: null, 64-bit code (selector 0x08), data (0x10),
/// TSS (0x18).
pub const GDT_ENTRIES: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];
/// `limit` of the IDT (one zero 8-byte entry).
pub const IDT_LIMIT: u16 = 7;
/// Page-table entry flags: present and writable.
pub const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry flag for a 2 MiB page.
pub const PDE_PAGE_SIZE: u64 = 0x80;
/// Bytes mapped by the identity page tables (512 × 2 MiB).
pub const IDENTITY_MAPPED: u64 = 1 << 30;

/// What was written, in the shape a vCPU setup needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTables {
    /// Guest address of the GDT.
    pub gdt_base: u64,
    /// The GDT entries (null, code, data, TSS).
    pub gdt_entries: [u64; 4],
    /// Guest address of the IDT.
    pub idt_base: u64,
    /// IDT limit.
    pub idt_limit: u16,
    /// Guest address of the PML4 (the value for `cr3`).
    pub page_table_root: u64,
}

/// Why the tables could not be written.
#[derive(Debug, Error)]
pub enum CpuTablesError {
    /// Guest memory does not cover the table's address.
    #[error("cannot write the {what} at {addr:#x}")]
    Write {
        /// Which table.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The underlying error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

fn write(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), CpuTablesError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| CpuTablesError::Write { what, addr, source })
}

/// Writes the GDT at [`GDT_START`], a zero IDT at [`IDT_START`], and page tables at
/// [`PML4_START`] / [`PDPTE_START`] / [`PDE_START`] that identity-map the first 1 GiB with
/// 2 MiB pages.
pub fn write_cpu_tables(mem: &GuestMemoryMmap) -> Result<CpuTables, CpuTablesError> {
    let gdt: Vec<u8> = GDT_ENTRIES.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(mem, "GDT", GDT_START, &gdt)?;
    write(mem, "IDT", IDT_START, &0u64.to_le_bytes())?;

    let mut pml4 = [0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPTE_START | PTE_PRESENT_RW).to_le_bytes());
    write(mem, "PML4", PML4_START, &pml4)?;

    let mut pdpt = [0u8; 4096];
    pdpt[..8].copy_from_slice(&(PDE_START | PTE_PRESENT_RW).to_le_bytes());
    write(mem, "PDPT", PDPTE_START, &pdpt)?;

    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PDE_PAGE_SIZE | PTE_PRESENT_RW).to_le_bytes())
        .collect();
    write(mem, "page directory", PDE_START, &pd)?;

    Ok(CpuTables {
        gdt_base: GDT_START,
        gdt_entries: GDT_ENTRIES,
        idt_base: IDT_START,
        idt_limit: IDT_LIMIT,
        page_table_root: PML4_START,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_memory::guest_ram::create_guest_memory;
    use petrel_memory::layout::{MemoryLayout, MIB};

    fn read_u64(mem: &GuestMemoryMmap, addr: u64) -> u64 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Walks the tables the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let pml4e = read_u64(mem, cr3 + ((va >> 39) & 0x1ff) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read_u64(mem, (pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8);
        if pdpte & 1 == 0 || pdpte & PDE_PAGE_SIZE != 0 {
            return None;
        }
        let pde = read_u64(mem, (pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8);
        if pde & 1 == 0 || pde & PDE_PAGE_SIZE == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff & 0x000f_ffff_ffff_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn tables_read_back() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        // Dirty the page-table pages first: the tables must not depend on zeroed memory.
        mem.write_slice(&[0xffu8; 0x3000], GuestAddress(PML4_START))
            .unwrap();
        let t = write_cpu_tables(&mem).unwrap();
        assert_eq!(t.gdt_base, 0x500);
        assert_eq!(t.idt_base, 0x520);
        assert_eq!(t.idt_limit, 7);
        assert_eq!(t.page_table_root, 0x9000);

        let gdt: Vec<u64> = (0..4).map(|i| read_u64(&mem, 0x500 + 8 * i)).collect();
        assert_eq!(
            gdt,
            vec![
                0,
                0x00af_9b00_0000_ffff,
                0x00cf_9300_0000_ffff,
                0x008f_8b00_0000_ffff
            ]
        );
        assert_eq!(t.gdt_entries.to_vec(), gdt);
        assert_eq!(read_u64(&mem, 0x520), 0);

        assert_eq!(read_u64(&mem, 0x9000), 0xa003);
        assert_eq!(read_u64(&mem, 0x9008), 0);
        assert_eq!(read_u64(&mem, 0xa000), 0xb003);
        assert_eq!(read_u64(&mem, 0xa008), 0);
        assert_eq!(read_u64(&mem, 0xb000), 0x83);
        assert_eq!(read_u64(&mem, 0xb008), 0x20_0083);
        assert_eq!(read_u64(&mem, 0xb000 + 511 * 8), (511 << 21) | 0x83);
    }

    #[test]
    fn first_gib_is_identity_mapped_and_nothing_else() {
        let layout = MemoryLayout::new(32 * MIB).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let t = write_cpu_tables(&mem).unwrap();
        for va in [
            0,
            0x7000,
            0x100_0000 + 0x200,
            0x1234_5678,
            IDENTITY_MAPPED - 1,
        ] {
            assert_eq!(translate(&mem, t.page_table_root, va), Some(va));
        }
        assert_eq!(translate(&mem, t.page_table_root, IDENTITY_MAPPED), None);
        assert_eq!(translate(&mem, t.page_table_root, 1 << 39), None);
    }

    #[test]
    fn gdt_code_segment_is_64_bit_and_data_is_writable() {
        let code = GDT_ENTRIES[1];
        assert_eq!((code >> 53) & 1, 1, "L bit");
        assert_eq!((code >> 54) & 1, 0, "D bit must be clear with L");
        assert_eq!((code >> 47) & 1, 1, "present");
        assert_eq!((code >> 40) & 0xf, 0xb, "execute/read, accessed");
        let data = GDT_ENTRIES[2];
        assert_eq!((data >> 40) & 0xf, 0x3, "read/write, accessed");
        let tss = GDT_ENTRIES[3];
        assert_eq!((tss >> 40) & 0xf, 0xb, "busy 64-bit TSS");
    }
}
