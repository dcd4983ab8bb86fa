//! The host side of a block device: a raw image file (or a host block device).
//!
//! Reads and writes go straight between the file and guest memory with `pread(2)` /
//! `pwrite(2)` at explicit offsets (no seek position, no bounce buffer): guest memory is
//! reached through `vm-memory` slices, whose raw pointers are handed to the kernel, which
//! copies the bytes. No Rust reference to guest memory is ever made, so a guest changing the
//! buffers meanwhile cannot break Rust's aliasing rules; it only gets what it deserves.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::request::Segment;
use super::{BlockError, SECTOR_SIZE};
use petrel_memory::GuestMemoryMmap;

/// An open disk image.
#[derive(Debug)]
pub(crate) struct Disk {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    /// An id derived from the file's identity, for disks given none.
    derived_id: String,
    /// Whether "discards are ignored" was logged already.
    discard_unsupported_logged: Cell<bool>,
}

/// How a `fallocate(2)` mode that the file system does not implement shows up.
fn unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
    )
}

impl Disk {
    /// Opens `path` read-write, or read-only if `read_only`.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let path_buf = path.to_path_buf();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOENT) => BlockError::Missing {
                    path: path_buf.clone(),
                },
                Some(libc::EISDIR) => BlockError::IsDirectory {
                    path: path_buf.clone(),
                },
                _ => BlockError::Open {
                    path: path_buf.clone(),
                    source,
                },
            })?;
        let open_error = |source| BlockError::Open {
            path: path_buf.clone(),
            source,
        };
        let metadata = file.metadata().map_err(open_error)?;
        let file_type = metadata.file_type();
        if file_type.is_dir() {
            return Err(BlockError::IsDirectory { path: path_buf });
        }
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(BlockError::NotAFile { path: path_buf });
        }
        // Works for block devices too, whose metadata length is 0.
        let size = (&file).seek(SeekFrom::End(0)).map_err(open_error)?;
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::SizeNotAligned {
                path: path_buf,
                size,
            });
        }
        let derived_id = format!("{:x}-{:x}", metadata.dev(), metadata.ino());
        Ok(Self {
            file,
            path: path_buf,
            sectors: size / SECTOR_SIZE,
            read_only,
            derived_id,
            discard_unsupported_logged: Cell::new(false),
        })
    }

    /// The path the image was opened from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The capacity in sectors.
    pub(crate) fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the image was opened read-only.
    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// An id for a disk given none: the file's device and inode numbers, in hex.
    pub(crate) fn derived_id(&self) -> &str {
        &self.derived_id
    }

    /// Reads the image from byte `offset` into the guest memory `segments`, in order.
    pub(crate) fn read_into(
        &self,
        mem: &GuestMemoryMmap,
        segments: &[Segment],
        offset: u64,
    ) -> io::Result<()> {
        self.transfer(mem, segments, offset, Direction::FromFile)
    }

    /// Writes the guest memory `segments`, in order, to the image from byte `offset`.
    pub(crate) fn write_from(
        &self,
        mem: &GuestMemoryMmap,
        segments: &[Segment],
        offset: u64,
    ) -> io::Result<()> {
        self.transfer(mem, segments, offset, Direction::ToFile)
    }

    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        segments: &[Segment],
        mut offset: u64,
        direction: Direction,
    ) -> io::Result<()> {
        for segment in segments {
            let len = usize::try_from(segment.len).map_err(io::Error::other)?;
            for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(segment.addr), len) {
                let slice = slice.map_err(io::Error::other)?;
                let guard = slice.ptr_guard_mut();
                self.transfer_all(guard.as_ptr(), guard.len(), offset, direction)?;
                offset = offset
                    .checked_add(guard.len() as u64)
                    .ok_or_else(|| io::Error::other("offset overflow"))?;
            }
        }
        Ok(())
    }

    /// One `pread`/`pwrite` loop over `len` bytes at `ptr`.
    fn transfer_all(
        &self,
        mut ptr: *mut u8,
        mut len: usize,
        mut offset: u64,
        direction: Direction,
    ) -> io::Result<()> {
        while len > 0 {
            let file_offset =
                libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset overflow"))?;
            let done = match direction {
                // SAFETY: `ptr` points to `len` bytes of guest memory inside a mapped region
                // (a `VolatileSlice` from `get_slices`, alive while its guard is). The kernel
                // writes into it; no Rust reference to that memory exists.
                Direction::FromFile => unsafe {
                    libc::pread(self.file.as_raw_fd(), ptr.cast(), len, file_offset)
                },
                // SAFETY: as above; the kernel only reads the memory.
                Direction::ToFile => unsafe {
                    libc::pwrite(self.file.as_raw_fd(), ptr.cast(), len, file_offset)
                },
            };
            let done = match usize::try_from(done) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(done) => done,
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(error);
                }
            };
            ptr = ptr.wrapping_add(done);
            len -= done;
            offset += done as u64;
        }
        Ok(())
    }

    /// Makes every completed write durable: `fdatasync(2)`.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `len` bytes at `offset` (they read back as zeroes afterwards). Returns
    /// `Ok(false)` when the host file system cannot punch holes: a discard is only a hint.
    pub(crate) fn discard(&self, offset: u64, len: u64) -> io::Result<bool> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(&e) => {
                if !self.discard_unsupported_logged.replace(true) {
                    log::info!(
                        "virtio-blk {}: the host cannot punch holes in the image ({e}); discards are ignored",
                        self.path.display()
                    );
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `len` bytes at `offset` read as zeroes: zeroes the range (or punches a hole,
    /// first if `unmap` allows deallocating), and if the file system can do neither, writes
    /// zeroes.
    pub(crate) fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let zero = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let modes = if unmap { [punch, zero] } else { [zero, punch] };
        for mode in modes {
            match self.fallocate(mode, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.write_zero_bytes(offset, len)
    }

    fn write_zero_bytes(&self, mut offset: u64, mut len: u64) -> io::Result<()> {
        const CHUNK: u64 = 1 << 20;
        let zeroes = vec![0u8; CHUNK.min(len) as usize];
        while len > 0 {
            let n = CHUNK.min(len);
            let mut chunk = &zeroes[..n as usize];
            while !chunk.is_empty() {
                let written = std::os::unix::fs::FileExt::write_at(&self.file, chunk, offset)?;
                if written == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                chunk = &chunk[written..];
                offset += written as u64;
            }
            len -= n;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let overflow = |_| io::Error::other("range overflow");
        let offset = libc::off_t::try_from(offset).map_err(overflow)?;
        let len = libc::off_t::try_from(len).map_err(overflow)?;
        loop {
            // SAFETY: a system call on a file descriptor this struct owns; no memory is
            // passed.
            let result = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
            if result == 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    FromFile,
    ToFile,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{guest_memory, TempImage, HIGH_START, MEM_SIZE};
    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn opening_checks_what_the_path_is() {
        let dir = std::env::temp_dir();
        let missing = dir.join(format!("petrel-no-such-image-{}", std::process::id()));
        assert!(matches!(
            Disk::open(&missing, false),
            Err(BlockError::Missing { .. })
        ));
        for read_only in [false, true] {
            assert!(matches!(
                Disk::open(&dir, read_only),
                Err(BlockError::IsDirectory { .. })
            ));
        }
        assert!(matches!(
            Disk::open(Path::new("/dev/null"), true),
            Err(BlockError::NotAFile { .. })
        ));
        let odd = TempImage::new("odd", &[0; 1000]);
        let err = Disk::open(&odd.0, false).unwrap_err();
        assert!(matches!(err, BlockError::SizeNotAligned { size: 1000, .. }));
        assert!(err
            .to_string()
            .contains("1000 bytes, not a multiple of 512"));

        let image = TempImage::new("ok", &[0; 4096]);
        let disk = Disk::open(&image.0, true).unwrap();
        assert_eq!((disk.sectors(), disk.read_only()), (8, true));
        assert!(!disk.derived_id().is_empty() && disk.derived_id().len() <= 20);
        // A read-only disk cannot be written even by mistake.
        assert!(disk.file.write_at(b"x", 0).is_err());
    }

    #[test]
    fn reads_and_writes_go_straight_to_guest_memory_across_regions() {
        let data = pattern(8192);
        let image = TempImage::new("rw", &data);
        let disk = Disk::open(&image.0, false).unwrap();
        let mem = guest_memory();
        // Two segments: one in low memory, one in the high region.
        let segments = [
            Segment {
                addr: MEM_SIZE - 512,
                len: 512,
            },
            Segment {
                addr: HIGH_START,
                len: 1024,
            },
        ];
        disk.read_into(&mem, &segments, 512).unwrap();
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(MEM_SIZE - 512))
            .unwrap();
        assert_eq!(got, data[512..1024]);
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(HIGH_START)).unwrap();
        assert_eq!(got, data[1024..2048]);

        mem.write_slice(&[0xab; 512], GuestAddress(MEM_SIZE - 512))
            .unwrap();
        disk.write_from(&mem, &segments[..1], 4096).unwrap();
        let contents = image.contents();
        assert_eq!(contents[4096..4608], [0xab; 512]);
        assert_eq!(contents[4608..], data[4608..]);
    }

    #[test]
    fn a_segment_outside_guest_memory_fails_and_reading_past_eof_fails() {
        let image = TempImage::new("bad", &[1; 1024]);
        let disk = Disk::open(&image.0, false).unwrap();
        let mem = guest_memory();
        let outside = [Segment {
            addr: MEM_SIZE - 256,
            len: 512,
        }];
        assert!(disk.read_into(&mem, &outside, 0).is_err());
        let inside = [Segment {
            addr: 0x8000,
            len: 512,
        }];
        let err = disk.read_into(&mem, &inside, 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn write_zeroes_and_discard_leave_zeroes() {
        let image = TempImage::new("zero", &[0x5a; 16384]);
        let disk = Disk::open(&image.0, false).unwrap();
        disk.write_zeroes(4096, 4096, false).unwrap();
        disk.write_zeroes(512, 512, true).unwrap();
        let contents = image.contents();
        assert_eq!(contents.len(), 16384, "the size is kept");
        assert!(contents[4096..8192].iter().all(|&b| b == 0));
        assert!(contents[512..1024].iter().all(|&b| b == 0));
        assert!(contents[..512].iter().all(|&b| b == 0x5a));
        assert!(contents[1024..4096].iter().all(|&b| b == 0x5a));
        assert!(contents[8192..].iter().all(|&b| b == 0x5a));

        if disk.discard(8192, 4096).unwrap() {
            assert!(image.contents()[8192..12288].iter().all(|&b| b == 0));
        }
        assert_eq!(image.contents().len(), 16384);
        // The slow path, for file systems that cannot zero ranges.
        disk.write_zero_bytes(12288, 4096).unwrap();
        assert!(image.contents()[12288..].iter().all(|&b| b == 0));
    }
}
