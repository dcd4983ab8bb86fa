//! Building the kernel command line within the kernel's limit.

use linux_loader::cmdline::Cmdline;
use thiserror::Error;

use crate::kernel::{KernelFormat, LoadedKernel, ELF_CMDLINE_MAX};
use crate::layout::CMDLINE_MAX_SIZE;

/// Why a command line was refused.
#[derive(Debug, PartialEq, Eq, Error)]
pub enum CmdlineError {
    /// Longer than the kernel accepts.
    #[error("kernel command line is {len} bytes; this kernel accepts at most {max}")]
    TooLong {
        /// Length of the command line (without the NUL).
        len: usize,
        /// The kernel's limit (without the NUL).
        max: usize,
    },
    /// Contains a NUL byte, which would end it early.
    #[error("kernel command line contains a NUL byte at offset {offset}")]
    InteriorNul {
        /// Byte offset of the NUL.
        offset: usize,
    },
    /// Contains a byte that is not printable ASCII (space to `~`).
    #[error("kernel command line contains non-printable or non-ASCII byte {byte:#04x} at offset {offset}")]
    NotPrintable {
        /// Byte offset.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// Has init arguments (after ` -- `) but no kernel arguments before them.
    #[error("kernel command line has init arguments after \"--\" but no kernel arguments")]
    OnlyInitArgs,
    /// linux-loader refused it.
    #[error("invalid kernel command line")]
    Invalid(#[source] linux_loader::cmdline::Error),
}

/// Longest command line (without the NUL) `kernel` accepts: the bzImage's `cmdline_size`, or
/// 2047 for an ELF kernel (x86 `COMMAND_LINE_SIZE` is 2048 including the NUL). Never more than
/// fits between [`CMDLINE_START`](crate::layout::CMDLINE_START) and the EBDA.
pub fn cmdline_limit(kernel: &LoadedKernel) -> usize {
    let max = match (kernel.format, &kernel.setup_header) {
        (KernelFormat::BzImage, Some(hdr)) => hdr.cmdline_size,
        _ => ELF_CMDLINE_MAX,
    };
    (u64::from(max).min(CMDLINE_MAX_SIZE - 1)) as usize
}

/// Checks `text` and builds a [`Cmdline`] whose capacity is the kernel's limit.
///
/// Only printable ASCII is accepted. Leading and trailing spaces are dropped. Text after the
/// first unquoted ` -- ` is kept as init arguments, so the caller can still append kernel
/// arguments (for example `virtio_mmio.device=`) with [`Cmdline::insert_str`].
pub fn build_cmdline(text: &str, kernel: &LoadedKernel) -> Result<Cmdline, CmdlineError> {
    for (offset, &byte) in text.as_bytes().iter().enumerate() {
        if byte == 0 {
            return Err(CmdlineError::InteriorNul { offset });
        }
        if !(b' '..=b'~').contains(&byte) {
            return Err(CmdlineError::NotPrintable { offset, byte });
        }
    }
    let max = cmdline_limit(kernel);
    // Normalise first (trimming, "--" split) with room to spare, then measure the result.
    let roomy = Cmdline::try_from(text, text.len() + 1).map_err(CmdlineError::Invalid)?;
    let len = match roomy.as_cstring() {
        Ok(c) => c.as_bytes().len(),
        Err(linux_loader::cmdline::Error::NoBootArgsInserted) => {
            return Err(CmdlineError::OnlyInitArgs)
        }
        Err(e) => return Err(CmdlineError::Invalid(e)),
    };
    if len > max {
        return Err(CmdlineError::TooLong { len, max });
    }
    Cmdline::try_from(text, max + 1).map_err(CmdlineError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use linux_loader::loader::bootparam::setup_header;

    fn elf_kernel() -> LoadedKernel {
        LoadedKernel {
            format: KernelFormat::Elf,
            entry: 0x100_0000,
            start: 0x100_0000,
            end: 0x200_0000,
            reserved_end: 0x200_0000,
            setup_header: None,
            pvh_entry: None,
        }
    }

    fn bz_kernel(cmdline_size: u32) -> LoadedKernel {
        let hdr = setup_header {
            cmdline_size,
            ..Default::default()
        };
        LoadedKernel {
            format: KernelFormat::BzImage,
            setup_header: Some(hdr),
            ..elf_kernel()
        }
    }

    fn bytes(c: &Cmdline) -> Vec<u8> {
        c.as_cstring().unwrap().into_bytes()
    }

    #[test]
    fn plain_text_round_trips() {
        let c = build_cmdline("console=ttyS0 reboot=k panic=1", &elf_kernel()).unwrap();
        assert_eq!(bytes(&c), b"console=ttyS0 reboot=k panic=1");
    }

    #[test]
    fn init_args_are_kept_and_more_args_can_be_added() {
        let mut c = build_cmdline("console=ttyS0 -- --verbose", &elf_kernel()).unwrap();
        c.insert_str("quiet").unwrap();
        assert_eq!(bytes(&c), b"console=ttyS0 quiet -- --verbose");
    }

    #[test]
    fn elf_limit_is_2047_characters() {
        let k = elf_kernel();
        assert_eq!(cmdline_limit(&k), 2047);
        let ok = "a".repeat(2047);
        assert_eq!(bytes(&build_cmdline(&ok, &k).unwrap()).len(), 2047);
        let long = "a".repeat(2048);
        assert_eq!(
            build_cmdline(&long, &k).unwrap_err(),
            CmdlineError::TooLong {
                len: 2048,
                max: 2047
            }
        );
    }

    #[test]
    fn bzimage_limit_is_its_cmdline_size() {
        let k = bz_kernel(255);
        assert!(build_cmdline(&"b".repeat(255), &k).is_ok());
        assert_eq!(
            build_cmdline(&"b".repeat(256), &k).unwrap_err(),
            CmdlineError::TooLong { len: 256, max: 255 }
        );
        // The capacity is the limit, so appending past it fails too.
        let mut c = build_cmdline(&"b".repeat(250), &k).unwrap();
        assert!(c.insert_str("x=12345").is_err());
    }

    #[test]
    fn huge_cmdline_size_is_capped_by_the_space_below_the_ebda() {
        let k = bz_kernel(u32::MAX);
        assert_eq!(cmdline_limit(&k) as u64, CMDLINE_MAX_SIZE - 1);
        let zero = bz_kernel(0);
        assert!(build_cmdline("", &zero).is_ok());
        assert_eq!(
            build_cmdline("x", &zero).unwrap_err(),
            CmdlineError::TooLong { len: 1, max: 0 }
        );
    }

    #[test]
    fn surrounding_spaces_do_not_count() {
        let k = bz_kernel(3);
        assert_eq!(bytes(&build_cmdline("  abc  ", &k).unwrap()), b"abc");
    }

    #[test]
    fn nul_and_non_printable_bytes_are_refused() {
        let k = elf_kernel();
        assert_eq!(
            build_cmdline("console=ttyS0\0evil", &k).unwrap_err(),
            CmdlineError::InteriorNul { offset: 13 }
        );
        assert_eq!(
            build_cmdline("a\nb", &k).unwrap_err(),
            CmdlineError::NotPrintable {
                offset: 1,
                byte: b'\n'
            }
        );
        assert_eq!(
            build_cmdline("ü", &k).unwrap_err(),
            CmdlineError::NotPrintable {
                offset: 0,
                byte: 0xc3
            }
        );
    }

    #[test]
    fn only_init_args_is_refused() {
        assert_eq!(
            build_cmdline(" -- init", &elf_kernel()).unwrap_err(),
            CmdlineError::OnlyInitArgs
        );
    }
}
