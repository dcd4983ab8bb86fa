//! Adapts any `Read + Seek` image source to the `ReadVolatile` that linux-loader and
//! vm-memory need to copy straight into guest memory.

use std::io::{self, ErrorKind, Read, Seek, SeekFrom};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

const BOUNCE_SIZE: usize = 64 * 1024;

/// Wraps a reader; volatile reads go through a small bounce buffer.
pub(crate) struct VolatileReader<'a, F> {
    inner: &'a mut F,
    bounce: Vec<u8>,
}

impl<'a, F: Read> VolatileReader<'a, F> {
    pub(crate) fn new(inner: &'a mut F) -> Self {
        VolatileReader {
            inner,
            bounce: vec![0; BOUNCE_SIZE],
        }
    }
}

impl<F: Read> Read for VolatileReader<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<F: Seek> Seek for VolatileReader<'_, F> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<F: Read> ReadVolatile for VolatileReader<'_, F> {
    /// Fills `buf` completely, stopping early only at end of file. (vm-memory's
    /// `read_exact_volatile_from` calls this once per guest region and treats a short read
    /// as an error, so a `Read::read`-like partial result is not enough.)
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mut filled = 0;
        while filled < buf.len() {
            let want = (buf.len() - filled).min(self.bounce.len());
            let n = match self.inner.read(&mut self.bounce[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(VolatileMemoryError::IOError(e)),
            };
            buf.offset(filled)?.copy_from(&self.bounce[..n]);
            filled += n;
        }
        Ok(filled)
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
pub(crate) fn read_at<F: Read + Seek>(
    image: &mut F,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    image.seek(SeekFrom::Start(offset))?;
    image.read_exact(buf)
}

/// Length of the image in bytes.
pub(crate) fn image_len<F: Seek>(image: &mut F) -> io::Result<u64> {
    image.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_memory::vm_memory::{Bytes, GuestAddress};
    use petrel_memory::GuestMemoryMmap;
    use std::io::Cursor;

    /// A reader that hands out at most 3 bytes per call and is interrupted every other call.
    struct Dribble {
        data: Vec<u8>,
        pos: usize,
        calls: usize,
    }

    impl Read for Dribble {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Err(io::Error::from(ErrorKind::Interrupted));
            }
            let n = buf.len().min(3).min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn copies_a_large_image_into_guest_memory() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut cursor = Cursor::new(data.clone());
        let mut reader = VolatileReader::new(&mut cursor);
        mem.read_exact_volatile_from(GuestAddress(0x1000), &mut reader, data.len())
            .unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(0x1000)).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn short_reads_and_eintr_are_handled() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut src = Dribble {
            data: data.clone(),
            pos: 0,
            calls: 0,
        };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        let mut reader = VolatileReader::new(&mut src);
        mem.read_exact_volatile_from(GuestAddress(0), &mut reader, 100)
            .unwrap();
        let mut back = vec![0u8; 100];
        mem.read_slice(&mut back, GuestAddress(0)).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn eof_is_an_error_for_exact_reads() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        let mut cursor = Cursor::new(vec![1u8; 10]);
        let mut reader = VolatileReader::new(&mut cursor);
        assert!(mem
            .read_exact_volatile_from(GuestAddress(0), &mut reader, 11)
            .is_err());
    }
}
