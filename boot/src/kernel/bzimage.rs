//! bzImage checks and loading (Linux x86 boot protocol, `Documentation/arch/x86/boot.rst`).

use std::io::{Read, Seek};

use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{bzimage::BzImage, KernelLoader};
use petrel_memory::layout::MemoryLayout;
use petrel_memory::GuestMemoryMmap;
use vm_memory::{ByteValued, GuestAddress};

use super::{check_fits, KernelError, KernelFormat, LoadedKernel};
use crate::layout::HIMEM_START;
use crate::reader::{read_at, VolatileReader};

/// Offset of the `"HdrS"` magic in a bzImage.
pub(super) const HDRS_OFFSET: u64 = 0x202;
/// The `"HdrS"` magic.
pub(super) const HDRS_MAGIC: [u8; 4] = *b"HdrS";
/// Offset of the setup header in the image (and in `boot_params`).
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// The 64-bit entry point is this far past the protected-mode load address.
pub const BZIMAGE_ENTRY_OFFSET: u64 = 0x200;
/// Oldest boot protocol petrel accepts (2.06: `cmdline_size` exists).
const MIN_BOOT_PROTOCOL: u16 = 0x0206;

/// Checks the header against the file and layout, then loads the protected-mode kernel at
/// [`HIMEM_START`].
pub(super) fn load<F: Read + Seek>(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: &mut F,
    len: u64,
) -> Result<LoadedKernel, KernelError> {
    let hdr = read_header(image, len)?;
    let plan = check(&hdr, len, layout)?;
    let mut reader = VolatileReader::new(image);
    // No highmem check in linux-loader: it would compare the image's own code32_start,
    // which petrel overrides with the load address.
    let result = BzImage::load(mem, Some(GuestAddress(HIMEM_START)), &mut reader, None)
        .map_err(KernelError::Loader)?;
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry: HIMEM_START + BZIMAGE_ENTRY_OFFSET,
        start: HIMEM_START,
        end: result.kernel_end,
        reserved_end: plan.reserved_end.max(result.kernel_end),
        setup_header: result.setup_header,
        pvh_entry: None,
    })
}

fn read_header<F: Read + Seek>(image: &mut F, len: u64) -> Result<setup_header, KernelError> {
    let mut hdr = setup_header::default();
    let needed = SETUP_HEADER_OFFSET + hdr.as_slice().len() as u64;
    if len < needed {
        return Err(KernelError::Truncated {
            what: "setup header",
            needed,
            len,
        });
    }
    read_at(image, SETUP_HEADER_OFFSET, hdr.as_mut_slice()).map_err(KernelError::Io)?;
    Ok(hdr)
}

struct BzPlan {
    reserved_end: u64,
}

/// Header checks, in the order that gives the most useful error first.
fn check(hdr: &setup_header, len: u64, layout: &MemoryLayout) -> Result<BzPlan, KernelError> {
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(KernelError::TooOldBootProtocol { version });
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(KernelError::LoadedLow);
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(KernelError::NotX86_64 {
            what: "bzImage has no 64-bit entry point (XLF_KERNEL_64 not set)".into(),
        });
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let syssize = hdr.syssize;
    if syssize == 0 {
        return Err(KernelError::BadHeaderField {
            field: "syssize",
            value: 0,
        });
    }
    if len < setup_size {
        return Err(KernelError::Truncated {
            what: "setup sectors",
            needed: setup_size,
            len,
        });
    }
    let needed = setup_size + u64::from(syssize) * 16;
    if len < needed {
        return Err(KernelError::Truncated {
            what: "protected-mode kernel (syssize)",
            needed,
            len,
        });
    }
    // linux-loader copies everything after the setup sectors.
    let load_end = HIMEM_START.checked_add(len - setup_size);
    check_fits(layout, HIMEM_START, load_end)?;

    // Where the kernel decompresses itself (arch/x86/boot/compressed/head_64.S):
    // relocatable kernels use max(align_up(load, kernel_alignment), pref_address), the
    // others pref_address; the buffer is init_size bytes.
    let pref = hdr.pref_address;
    if pref < HIMEM_START {
        return Err(KernelError::BadHeaderField {
            field: "pref_address",
            value: pref,
        });
    }
    let decompress_at = if hdr.relocatable_kernel != 0 {
        let align = u64::from(hdr.kernel_alignment);
        if !align.is_power_of_two() {
            return Err(KernelError::BadHeaderField {
                field: "kernel_alignment",
                value: align,
            });
        }
        HIMEM_START.next_multiple_of(align).max(pref)
    } else {
        pref
    };
    let init_size = hdr.init_size;
    if init_size == 0 {
        return Err(KernelError::BadHeaderField {
            field: "init_size",
            value: 0,
        });
    }
    let reserved_end = decompress_at.checked_add(u64::from(init_size));
    check_fits(layout, decompress_at, reserved_end)?;
    Ok(BzPlan {
        reserved_end: reserved_end.unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::load_kernel;
    use crate::test_images::bzimage;
    use petrel_memory::guest_ram::create_guest_memory;
    use petrel_memory::layout::MIB;
    use std::io::Cursor;
    use vm_memory::Bytes;

    fn load_bytes(
        size: u64,
        image: Vec<u8>,
    ) -> Result<(GuestMemoryMmap, LoadedKernel), KernelError> {
        let layout = MemoryLayout::new(size).unwrap();
        let mem = create_guest_memory(&layout).unwrap();
        let k = load_kernel(&mem, &layout, &mut Cursor::new(image))?;
        Ok((mem, k))
    }

    #[test]
    fn payload_lands_at_one_mib_and_entry_is_plus_0x200() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let spec = bzimage().payload(payload.clone());
        let (mem, k) = load_bytes(32 * MIB, spec.build()).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.start, HIMEM_START);
        assert_eq!(k.entry, HIMEM_START + 0x200);
        assert_eq!(k.end, HIMEM_START + payload.len() as u64);
        // Decompression at 16 MiB (pref_address) with init_size 2 MiB.
        assert_eq!(k.reserved_end, 18 * MIB);
        assert_eq!(k.pvh_entry, None);
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.cmdline_size }, spec.cmdline_size);
        let mut back = vec![0u8; payload.len()];
        mem.read_slice(&mut back, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(back, payload);
        // The setup sectors are not loaded.
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(HIMEM_START - 1)).unwrap(),
            0
        );
    }

    #[test]
    fn setup_sects_zero_means_four() {
        let spec = bzimage().setup_sects(0);
        assert_eq!(spec.build().len(), 5 * 512 + spec.payload.len());
        let (mem, _) = load_bytes(32 * MIB, spec.build()).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(HIMEM_START)).unwrap(),
            spec.payload[0]
        );
    }

    #[test]
    fn relocatable_kernel_decompresses_at_aligned_address() {
        // Alignment 32 MiB above pref_address 16 MiB: the buffer starts at 32 MiB.
        let spec = bzimage()
            .kernel_alignment(32 * MIB as u32)
            .init_size(4 * MIB as u32);
        let (_, k) = load_bytes(64 * MIB, spec.build()).unwrap();
        assert_eq!(k.reserved_end, 36 * MIB);
        // A non-relocatable kernel always uses pref_address.
        let spec = spec.relocatable(false);
        let (_, k) = load_bytes(64 * MIB, spec.build()).unwrap();
        assert_eq!(k.reserved_end, 20 * MIB);
    }

    #[test]
    fn truncated_bzimage_is_reported() {
        let image = bzimage().payload(vec![7; 4096]).build();
        let full = image.len() as u64;
        match load_bytes(32 * MIB, image[..image.len() - 16].to_vec()) {
            Err(KernelError::Truncated { what, needed, len }) => {
                assert!(what.contains("syssize"), "{what}");
                assert_eq!(needed, full);
                assert_eq!(len, full - 16);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Cut inside the setup sectors.
        assert!(matches!(
            load_bytes(32 * MIB, image[..0x300].to_vec()),
            Err(KernelError::Truncated {
                what: "setup sectors",
                ..
            })
        ));
        // Cut inside the setup header.
        assert!(matches!(
            load_bytes(32 * MIB, image[..0x210].to_vec()),
            Err(KernelError::Truncated {
                what: "setup header",
                needed: 0x26c,
                len: 0x210
            })
        ));
    }

    #[test]
    fn thirty_two_bit_only_bzimage_is_refused() {
        let e = load_bytes(32 * MIB, bzimage().xloadflags(0).build()).unwrap_err();
        assert!(matches!(e, KernelError::NotX86_64 { .. }), "{e:?}");
        assert!(e.to_string().contains("XLF_KERNEL_64"));
    }

    #[test]
    fn old_protocol_and_zimage_are_refused() {
        assert!(matches!(
            load_bytes(32 * MIB, bzimage().version(0x0205).build()),
            Err(KernelError::TooOldBootProtocol { version: 0x0205 })
        ));
        assert!(matches!(
            load_bytes(32 * MIB, bzimage().loadflags(0).build()),
            Err(KernelError::LoadedLow)
        ));
    }

    #[test]
    fn decompression_buffer_past_ram_does_not_fit() {
        let spec = bzimage().init_size(64 * MIB as u32);
        assert!(matches!(
            load_bytes(32 * MIB, spec.build()),
            Err(KernelError::DoesNotFit {
                start: 0x100_0000,
                end: 0x500_0000,
                ram_end: 0x200_0000
            })
        ));
        // The same kernel fits in 128 MiB.
        assert!(load_bytes(128 * MIB, spec.build()).is_ok());
    }

    #[test]
    fn payload_past_ram_does_not_fit() {
        // 2 MiB of RAM: 1 MiB is left above HIMEM_START.
        let spec = bzimage()
            .payload(vec![1; 2 * MIB as usize])
            .pref_address(HIMEM_START)
            .kernel_alignment(0x1000)
            .init_size(0x1000);
        assert!(matches!(
            load_bytes(2 * MIB, spec.build()),
            Err(KernelError::DoesNotFit {
                start: HIMEM_START,
                ram_end: 0x20_0000,
                ..
            })
        ));
    }

    #[test]
    fn hostile_header_fields_are_named() {
        let cases = [
            (bzimage().kernel_alignment(0).build(), "kernel_alignment"),
            (
                bzimage().kernel_alignment(3 * MIB as u32).build(),
                "kernel_alignment",
            ),
            (bzimage().pref_address(0).build(), "pref_address"),
            (bzimage().init_size(0).build(), "init_size"),
            (bzimage().syssize(0).build(), "syssize"),
        ];
        for (image, field) in cases {
            match load_bytes(32 * MIB, image) {
                Err(KernelError::BadHeaderField { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: unexpected {other:?}"),
            }
        }
        // pref_address near u64::MAX must not overflow.
        let image = bzimage().pref_address(u64::MAX - 0x1000).build();
        assert!(matches!(
            load_bytes(32 * MIB, image),
            Err(KernelError::DoesNotFit { end: u64::MAX, .. })
        ));
    }
}
