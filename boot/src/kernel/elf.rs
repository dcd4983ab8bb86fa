//! ELF64 `vmlinux` checks and loading.

use std::io::{Read, Seek};

use linux_loader::loader::{elf::Elf, KernelLoader, PvhBootCapability};
use petrel_memory::layout::MemoryLayout;
use petrel_memory::GuestMemoryMmap;
use vm_memory::GuestAddress;

use super::{check_fits, KernelError, KernelFormat, LoadedKernel};
use crate::layout::HIMEM_START;
use crate::reader::{read_at, VolatileReader};

/// `\x7fELF`.
pub(super) const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// Longest command line (without the NUL) an ELF kernel accepts: x86 `COMMAND_LINE_SIZE`
/// (2048, including the NUL) minus one.
pub const ELF_CMDLINE_MAX: u32 = 2047;

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

/// The parts of a program header petrel checks.
struct Phdr {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

impl Phdr {
    fn parse(b: &[u8]) -> Phdr {
        Phdr {
            p_type: u32_at(b, 0),
            offset: u64_at(b, 8),
            paddr: u64_at(b, 24),
            filesz: u64_at(b, 32),
            memsz: u64_at(b, 40),
        }
    }
}

/// What the checks found: the entry point and the guest range the segments cover.
struct ElfPlan {
    entry: u64,
    start: u64,
    end: u64,
}

/// Checks the headers against the file length and the memory layout.
fn check<F: Read + Seek>(
    image: &mut F,
    len: u64,
    layout: &MemoryLayout,
) -> Result<ElfPlan, KernelError> {
    // e_ident is enough to tell a 32-bit or big-endian ELF, even if the file is short.
    let mut ident = [0u8; 16];
    let ident_len = len.min(16) as usize;
    read_at(image, 0, &mut ident[..ident_len]).map_err(KernelError::Io)?;
    if ident_len >= 5 && ident[4] == ELFCLASS32 {
        return Err(KernelError::NotX86_64 {
            what: "32-bit ELF (ELFCLASS32)".into(),
        });
    }
    if ident_len >= 5 && ident[4] != ELFCLASS64 {
        return Err(KernelError::BadHeaderField {
            field: "e_ident[EI_CLASS]",
            value: ident[4].into(),
        });
    }
    if ident_len >= 6 && ident[5] != ELFDATA2LSB {
        return Err(KernelError::NotX86_64 {
            what: "big-endian ELF".into(),
        });
    }
    if len < EHDR_SIZE {
        return Err(KernelError::Truncated {
            what: "ELF header",
            needed: EHDR_SIZE,
            len,
        });
    }
    let mut ehdr = [0u8; EHDR_SIZE as usize];
    read_at(image, 0, &mut ehdr).map_err(KernelError::Io)?;
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(KernelError::NotX86_64 {
            what: format!("ELF machine {machine}, expected {EM_X86_64} (EM_X86_64)"),
        });
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if u64::from(phentsize) != PHDR_SIZE {
        return Err(KernelError::BadHeaderField {
            field: "e_phentsize",
            value: phentsize.into(),
        });
    }
    if phoff < EHDR_SIZE {
        return Err(KernelError::BadHeaderField {
            field: "e_phoff",
            value: phoff,
        });
    }
    if phnum == 0 {
        return Err(KernelError::NoLoadableSegments);
    }
    let table_end = phoff.checked_add(u64::from(phnum) * PHDR_SIZE);
    if table_end.is_none_or(|end| end > len) {
        return Err(KernelError::Truncated {
            what: "program header table",
            needed: table_end.unwrap_or(u64::MAX),
            len,
        });
    }
    let mut table = vec![0u8; usize::from(phnum) * PHDR_SIZE as usize];
    read_at(image, phoff, &mut table).map_err(KernelError::Io)?;

    let mut range: Option<(u64, u64)> = None;
    let mut has_data = false;
    for raw in table.chunks_exact(PHDR_SIZE as usize) {
        let ph = Phdr::parse(raw);
        if ph.p_type != PT_LOAD && ph.p_type != PT_NOTE {
            continue;
        }
        let data_end = ph.offset.checked_add(ph.filesz);
        if data_end.is_none_or(|end| end > len) {
            return Err(KernelError::Truncated {
                what: if ph.p_type == PT_LOAD {
                    "segment data"
                } else {
                    "note segment"
                },
                needed: data_end.unwrap_or(u64::MAX),
                len,
            });
        }
        if ph.p_type != PT_LOAD {
            continue;
        }
        // linux-loader copies p_filesz bytes, so a larger p_filesz would write past the
        // segment (even for p_memsz == 0).
        if ph.filesz > ph.memsz {
            return Err(KernelError::BadHeaderField {
                field: "p_filesz",
                value: ph.filesz,
            });
        }
        if ph.memsz == 0 {
            continue;
        }
        if ph.paddr < HIMEM_START {
            return Err(KernelError::BelowHighMemory { addr: ph.paddr });
        }
        let Some(seg_end) = ph.paddr.checked_add(ph.memsz) else {
            return Err(KernelError::DoesNotFit {
                start: ph.paddr,
                end: u64::MAX,
                ram_end: layout.low_ram_end(),
            });
        };
        has_data |= ph.filesz > 0;
        range = Some(match range {
            None => (ph.paddr, seg_end),
            Some((s, e)) => (s.min(ph.paddr), e.max(seg_end)),
        });
    }
    let (start, end) = match range {
        Some(r) if has_data => r,
        _ => return Err(KernelError::NoLoadableSegments),
    };
    // Report the whole kernel's range, not just the first segment that does not fit.
    check_fits(layout, start, Some(end))?;
    if entry < start || entry >= end {
        return Err(KernelError::EntryOutsideImage { entry, start, end });
    }
    Ok(ElfPlan { entry, start, end })
}

/// Checks and loads an ELF kernel at its physical addresses.
pub(super) fn load<F: Read + Seek>(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: &mut F,
    len: u64,
) -> Result<LoadedKernel, KernelError> {
    let plan = check(image, len, layout)?;
    let mut reader = VolatileReader::new(image);
    let result = Elf::load(mem, None, &mut reader, Some(GuestAddress(HIMEM_START)))
        .map_err(KernelError::Loader)?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => Some(addr.0),
        PvhBootCapability::PvhEntryNotPresent | PvhBootCapability::PvhEntryIgnored => None,
    };
    Ok(LoadedKernel {
        format: KernelFormat::Elf,
        entry: plan.entry,
        start: plan.start,
        end: plan.end.max(result.kernel_end),
        reserved_end: plan.end.max(result.kernel_end),
        setup_header: None,
        pvh_entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::load_kernel;
    use crate::test_images::{elf_image, pvh_note, ElfSegment};
    use petrel_memory::guest_ram::create_guest_memory;
    use petrel_memory::layout::{GIB, MIB};
    use std::io::Cursor;
    use vm_memory::Bytes;

    fn setup(size: u64) -> (MemoryLayout, GuestMemoryMmap) {
        let layout = MemoryLayout::new(size).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        (layout, mem)
    }

    fn load_bytes(
        size: u64,
        image: Vec<u8>,
    ) -> Result<(GuestMemoryMmap, LoadedKernel), KernelError> {
        let (layout, mem) = setup(size);
        let k = load_kernel(&mem, &layout, &mut Cursor::new(image))?;
        Ok((mem, k))
    }

    const KBASE: u64 = 0x100_0000;

    #[test]
    fn segments_land_at_their_physical_addresses() {
        let text: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let data = vec![0xab; 300];
        let image = elf_image(
            KBASE + 0x40,
            &[
                ElfSegment::load(KBASE, text.clone()),
                ElfSegment::load(KBASE + 0x20_0000, data.clone()).with_memsz(0x1000),
            ],
        );
        let (mem, k) = load_bytes(32 * MIB, image).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert_eq!(k.entry, KBASE + 0x40);
        assert_eq!(k.start, KBASE);
        assert_eq!(k.end, KBASE + 0x20_1000);
        assert_eq!(k.reserved_end, k.end);
        assert!(k.setup_header.is_none());
        assert_eq!(k.pvh_entry, None);
        let mut back = vec![0u8; text.len()];
        mem.read_slice(&mut back, GuestAddress(KBASE)).unwrap();
        assert_eq!(back, text);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(KBASE + 0x20_0000))
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn pvh_note_is_reported() {
        let image = elf_image(
            KBASE,
            &[
                ElfSegment::load(KBASE, vec![0x90; 64]),
                ElfSegment::note(pvh_note(0x100_0123)),
            ],
        );
        let (_, k) = load_bytes(32 * MIB, image).unwrap();
        assert_eq!(k.pvh_entry, Some(0x100_0123));
    }

    #[test]
    fn other_notes_give_no_pvh_entry() {
        let mut note = pvh_note(0x100_0123);
        note[8] = 17; // n_type: not XEN_ELFNOTE_PHYS32_ENTRY
        let image = elf_image(
            KBASE,
            &[
                ElfSegment::load(KBASE, vec![0x90; 64]),
                ElfSegment::note(note),
            ],
        );
        let (_, k) = load_bytes(32 * MIB, image).unwrap();
        assert_eq!(k.pvh_entry, None);
    }

    #[test]
    fn program_headers_past_eof_are_truncated() {
        let image = elf_image(KBASE, &[ElfSegment::load(KBASE, vec![1; 64])]);
        // Keep the ELF header and half of the program header table.
        let cut = image[..64 + 20].to_vec();
        match load_bytes(32 * MIB, cut) {
            Err(KernelError::Truncated { what, needed, len }) => {
                assert_eq!(what, "program header table");
                assert_eq!(needed, 64 + 56);
                assert_eq!(len, 84);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn segment_data_past_eof_is_truncated() {
        let image = elf_image(KBASE, &[ElfSegment::load(KBASE, vec![1; 4096])]);
        let full = image.len() as u64;
        let cut = image[..image.len() - 1].to_vec();
        match load_bytes(32 * MIB, cut) {
            Err(KernelError::Truncated { what, needed, len }) => {
                assert_eq!(what, "segment data");
                assert_eq!(needed, full);
                assert_eq!(len, full - 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn short_elf_header_is_truncated() {
        let image = elf_image(KBASE, &[ElfSegment::load(KBASE, vec![1; 64])]);
        assert!(matches!(
            load_bytes(32 * MIB, image[..40].to_vec()),
            Err(KernelError::Truncated {
                what: "ELF header",
                needed: 64,
                len: 40
            })
        ));
    }

    #[test]
    fn thirty_two_bit_elf_is_refused() {
        let mut image = elf_image(KBASE, &[ElfSegment::load(KBASE, vec![1; 64])]);
        image[4] = ELFCLASS32;
        let e = load_bytes(32 * MIB, image.clone()).unwrap_err();
        assert!(matches!(e, KernelError::NotX86_64 { .. }), "{e:?}");
        assert!(e.to_string().contains("32-bit"));
        // Even a short 32-bit file gets that error, not "truncated".
        let e = load_bytes(32 * MIB, image[..52].to_vec()).unwrap_err();
        assert!(matches!(e, KernelError::NotX86_64 { .. }), "{e:?}");
    }

    #[test]
    fn other_machines_and_big_endian_are_refused() {
        let mut image = elf_image(KBASE, &[ElfSegment::load(KBASE, vec![1; 64])]);
        image[18] = 183; // EM_AARCH64
        let e = load_bytes(32 * MIB, image).unwrap_err();
        assert!(e.to_string().contains("machine 183"), "{e}");

        let mut image = elf_image(KBASE, &[ElfSegment::load(KBASE, vec![1; 64])]);
        image[5] = 2; // ELFDATA2MSB
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::NotX86_64 { .. })
        ));
    }

    #[test]
    fn kernel_past_ram_does_not_fit() {
        // 32 MiB of RAM, kernel at 16 MiB with 17 MiB of memsz.
        let image = elf_image(
            KBASE,
            &[ElfSegment::load(KBASE, vec![1; 64]).with_memsz(17 * MIB)],
        );
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::DoesNotFit {
                start: KBASE,
                end: 0x210_0000,
                ram_end: 0x200_0000
            })
        ));
    }

    #[test]
    fn does_not_fit_reports_the_whole_kernel() {
        let image = elf_image(
            KBASE,
            &[
                ElfSegment::load(KBASE, vec![1; 64]).with_memsz(20 * MIB),
                ElfSegment::load(KBASE + 20 * MIB, vec![2; 64]),
            ],
        );
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::DoesNotFit {
                start: KBASE,
                end: 0x240_0040,
                ram_end: 0x200_0000
            })
        ));
    }

    #[test]
    fn kernel_in_the_mmio_hole_does_not_fit_even_with_high_ram() {
        let image = elf_image(2 * GIB, &[ElfSegment::load(2 * GIB, vec![1; 64])]);
        assert!(matches!(
            load_bytes(3 * GIB, image),
            Err(KernelError::DoesNotFit { .. })
        ));
    }

    #[test]
    fn overflowing_segment_does_not_fit() {
        let image = elf_image(
            KBASE,
            &[ElfSegment::load(KBASE, vec![1; 64]).with_memsz(u64::MAX - 10)],
        );
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::DoesNotFit { end: u64::MAX, .. })
        ));
    }

    #[test]
    fn segment_below_one_mib_is_refused() {
        let image = elf_image(0x8000, &[ElfSegment::load(0x8000, vec![1; 64])]);
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::BelowHighMemory { addr: 0x8000 })
        ));
    }

    #[test]
    fn entry_outside_segments_is_refused() {
        let image = elf_image(KBASE + 0x1000, &[ElfSegment::load(KBASE, vec![1; 64])]);
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::EntryOutsideImage {
                entry: 0x100_1000,
                ..
            })
        ));
    }

    #[test]
    fn no_loadable_segment_is_refused() {
        let image = elf_image(KBASE, &[ElfSegment::note(pvh_note(KBASE as u32))]);
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::NoLoadableSegments)
        ));
    }

    #[test]
    fn bad_phentsize_is_named() {
        let mut image = elf_image(KBASE, &[ElfSegment::load(KBASE, vec![1; 64])]);
        image[54] = 32;
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::BadHeaderField {
                field: "e_phentsize",
                value: 32
            })
        ));
    }
}
