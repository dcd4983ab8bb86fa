//! Loading a Linux kernel image (ELF `vmlinux` or `bzImage`) into guest memory.
//!
//! The format is detected from the content (ELF magic at offset 0, `"HdrS"` at 0x202), never
//! from the file name. Each format is checked by petrel first, so a bad image gets an error
//! that names the problem; the copy itself is done by linux-loader.

mod bzimage;
mod elf;

use std::io::{self, Read, Seek};

use linux_loader::loader::bootparam::setup_header;
use petrel_memory::layout::MemoryLayout;
use petrel_memory::GuestMemoryMmap;
use thiserror::Error;

use crate::reader::{image_len, read_at};

pub use bzimage::BZIMAGE_ENTRY_OFFSET;
pub use elf::ELF_CMDLINE_MAX;

/// Kernel image formats petrel can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF64 `vmlinux`, entered at its ELF entry point.
    Elf,
    /// A compressed `bzImage`, entered at its 64-bit entry (load address + 0x200).
    BzImage,
}

/// Where a kernel was placed in guest memory and how to enter it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadedKernel {
    /// Format of the image.
    pub format: KernelFormat,
    /// Guest physical address of the 64-bit entry point.
    pub entry: u64,
    /// Lowest guest address written.
    pub start: u64,
    /// One past the last guest byte the image occupies (ELF: including `.bss`).
    pub end: u64,
    /// One past the last byte the kernel uses before it reads the e820 map. For a bzImage
    /// this is the end of its decompression buffer
    /// (`max(align_up(load, kernel_alignment), pref_address) + init_size`); for ELF it equals
    /// `end`. Nothing else may be placed below this address (the initrd goes above it).
    pub reserved_end: u64,
    /// The bzImage setup header (with `code32_start` set to the load address); `None` for ELF.
    pub setup_header: Option<setup_header>,
    /// The 32-bit PVH entry point from the ELF `XEN_ELFNOTE_PHYS32_ENTRY` note, if present.
    pub pvh_entry: Option<u64>,
}

/// Why a kernel image could not be loaded.
#[derive(Debug, Error)]
pub enum KernelError {
    /// Reading the image failed.
    #[error("cannot read kernel image")]
    Io(#[source] io::Error),
    /// Neither an ELF nor a bzImage.
    #[error("not a kernel image: no ELF magic and no \"HdrS\" boot header at 0x202")]
    NotAKernel,
    /// The file ends before something its headers describe.
    #[error("kernel image is truncated: {what} needs {needed} bytes but the file has {len}")]
    Truncated {
        /// What is cut off.
        what: &'static str,
        /// File length the headers require.
        needed: u64,
        /// Actual file length.
        len: u64,
    },
    /// The image is not for x86-64 (or has no 64-bit entry point).
    #[error("kernel is not a 64-bit x86 kernel: {what}")]
    NotX86_64 {
        /// What gave it away.
        what: String,
    },
    /// The bzImage boot protocol is older than 2.06.
    #[error(
        "bzImage boot protocol {}.{:02} is too old; 2.06 or newer is needed",
        .version >> 8,
        .version & 0xff
    )]
    TooOldBootProtocol {
        /// The raw `version` field, e.g. 0x0205.
        version: u16,
    },
    /// A zImage, which loads below 1 MiB.
    #[error("zImage kernels (LOADED_HIGH not set) are not supported")]
    LoadedLow,
    /// A header field has a value that cannot be right.
    #[error("invalid {field} {value:#x} in kernel header")]
    BadHeaderField {
        /// Name of the field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// An ELF image without any `PT_LOAD` segment that has file data.
    #[error("ELF kernel has no loadable segments")]
    NoLoadableSegments,
    /// The image would be loaded below 1 MiB, over the boot structures.
    #[error("kernel would load at {addr:#x}, below 1 MiB")]
    BelowHighMemory {
        /// Lowest address the image wants.
        addr: u64,
    },
    /// The kernel does not fit in the RAM below the MMIO hole.
    #[error("kernel needs [{start:#x}, {end:#x}) but ram below 4 GiB ends at {ram_end:#x}")]
    DoesNotFit {
        /// Start of the range the kernel needs.
        start: u64,
        /// End of the range the kernel needs (`u64::MAX` if it overflows).
        end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// The ELF entry point is not inside the loaded segments.
    #[error("entry point {entry:#x} is outside the loaded kernel [{start:#x}, {end:#x})")]
    EntryOutsideImage {
        /// The entry point.
        entry: u64,
        /// Start of the loaded range.
        start: u64,
        /// End of the loaded range.
        end: u64,
    },
    /// linux-loader refused the image or could not write guest memory.
    #[error("cannot load kernel into guest memory")]
    Loader(#[source] linux_loader::loader::Error),
}

/// Returns the format of `image` judged by its content.
pub fn detect_format<F: Read + Seek>(image: &mut F) -> Result<KernelFormat, KernelError> {
    let len = image_len(image).map_err(KernelError::Io)?;
    detect(image, len)
}

fn detect<F: Read + Seek>(image: &mut F, len: u64) -> Result<KernelFormat, KernelError> {
    let mut magic = [0u8; 4];
    if len >= 4 {
        read_at(image, 0, &mut magic).map_err(KernelError::Io)?;
        if magic == elf::ELF_MAGIC {
            return Ok(KernelFormat::Elf);
        }
    }
    if len >= bzimage::HDRS_OFFSET + 4 {
        read_at(image, bzimage::HDRS_OFFSET, &mut magic).map_err(KernelError::Io)?;
        if magic == bzimage::HDRS_MAGIC {
            return Ok(KernelFormat::BzImage);
        }
    }
    Err(KernelError::NotAKernel)
}

/// Loads `image` into `mem` and returns where it went.
///
/// An ELF is loaded at its segments' physical addresses; a bzImage's protected-mode part is
/// loaded at [`HIMEM_START`](crate::layout::HIMEM_START). Everything the kernel needs must fit
/// in RAM below the MMIO hole (`layout.low_ram_end()`).
pub fn load_kernel<F: Read + Seek>(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    image: &mut F,
) -> Result<LoadedKernel, KernelError> {
    let len = image_len(image).map_err(KernelError::Io)?;
    let kernel = match detect(image, len)? {
        KernelFormat::Elf => elf::load(mem, layout, image, len)?,
        KernelFormat::BzImage => bzimage::load(mem, layout, image, len)?,
    };
    log::debug!(
        "loaded {:?} kernel at [{:#x}, {:#x}), entry {:#x}",
        kernel.format,
        kernel.start,
        kernel.end,
        kernel.entry
    );
    Ok(kernel)
}

/// Fails with [`KernelError::DoesNotFit`] unless `[start, end)` lies below low RAM's end.
fn check_fits(layout: &MemoryLayout, start: u64, end: Option<u64>) -> Result<(), KernelError> {
    let ram_end = layout.low_ram_end();
    match end {
        Some(end) if end <= ram_end => Ok(()),
        _ => Err(KernelError::DoesNotFit {
            start,
            end: end.unwrap_or(u64::MAX),
            ram_end,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_images::{bzimage, elf_image, ElfSegment};
    use std::io::Cursor;

    #[test]
    fn format_is_detected_by_content() {
        let elf = elf_image(0x100_0000, &[ElfSegment::load(0x100_0000, vec![1; 16])]);
        assert_eq!(
            detect_format(&mut Cursor::new(elf)).unwrap(),
            KernelFormat::Elf
        );
        let bz = bzimage().build();
        assert_eq!(
            detect_format(&mut Cursor::new(bz)).unwrap(),
            KernelFormat::BzImage
        );
    }

    #[test]
    fn text_and_tiny_files_are_not_kernels() {
        let text = b"#!/bin/sh\necho this is not a kernel\n".repeat(100);
        for data in [text, Vec::new(), b"\x7fEL".to_vec(), vec![0u8; 0x205]] {
            assert!(matches!(
                detect_format(&mut Cursor::new(data)),
                Err(KernelError::NotAKernel)
            ));
        }
    }

    #[test]
    fn hdrs_one_byte_short_is_not_detected() {
        let mut data = vec![0u8; 0x205];
        data[0x202..0x205].copy_from_slice(b"Hdr");
        assert!(matches!(
            detect_format(&mut Cursor::new(data)),
            Err(KernelError::NotAKernel)
        ));
        let mut data = vec![0u8; 0x206];
        data[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(
            detect_format(&mut Cursor::new(data)).unwrap(),
            KernelFormat::BzImage
        );
    }

    #[test]
    fn error_messages_name_the_problem() {
        let e = KernelError::TooOldBootProtocol { version: 0x0205 };
        assert_eq!(
            e.to_string(),
            "bzImage boot protocol 2.05 is too old; 2.06 or newer is needed"
        );
        let e = KernelError::DoesNotFit {
            start: 0x100_0000,
            end: 0x300_0000,
            ram_end: 0x200_0000,
        };
        assert_eq!(
            e.to_string(),
            "kernel needs [0x1000000, 0x3000000) but ram below 4 GiB ends at 0x2000000"
        );
    }
}
