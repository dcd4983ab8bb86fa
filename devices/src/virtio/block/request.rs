//! virtio-blk requests: from a descriptor chain to a checked [`Request`], and its execution.
//!
//! [`parse`] is pure apart from reading the guest's header and segment descriptions: it
//! checks everything the driver controls before any disk I/O happens.
//!
//! # Layout
//!
//! virtio 1.x forbids devices from assuming how a driver splits a request into descriptors,
//! so a chain is read as two byte streams: the device-readable descriptors (which must come
//! first) and the device-writable ones. The readable stream is the 16-byte header followed by
//! the data of a write or the segments of a discard / write-zeroes; the writable stream is the
//! data of a read or the id buffer of GET_ID, followed by the one status byte. A request
//! whose stream lengths do not match its type (a read with device-readable data, a write with
//! device-writable data, a flush with data) is refused.
//!
//! # Status
//!
//! The status byte is the last byte of the chain's last descriptor, which must be
//! device-writable and in guest memory ([`status_location`]); a broken chain uses its last
//! descriptor read. Everything that goes wrong after that is reported there:
//! `VIRTIO_BLK_S_UNSUPP` for unknown request types and flags, `VIRTIO_BLK_S_IOERR` for the
//! rest ([`RequestError::status`]).

use std::io;

use thiserror::Error;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::Disk;
use super::{
    ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_REQUEST_BYTES, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, SECTOR_SIZE,
};
use crate::virtio::chain::{Chain, ChainError};
use petrel_memory::GuestMemoryMmap;

/// Status byte: success.
pub(crate) const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// Status byte: the request failed.
pub(crate) const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
/// Status byte: the request (type or flags) is not supported.
pub(crate) const STATUS_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

/// Size of the request header: type, reserved, sector.
const HEADER_SIZE: u64 = 16;
/// Size of one discard / write-zeroes segment: sector, sector count, flags.
const RANGE_SIZE: u64 = 16;

/// A piece of guest memory a request reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Guest-physical address.
    pub(crate) addr: u64,
    /// Length in bytes.
    pub(crate) len: u32,
}

/// One segment of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    /// First sector.
    pub(crate) sector: u64,
    /// Number of sectors.
    pub(crate) sectors: u32,
    /// Write-zeroes only: the device may deallocate the range.
    pub(crate) unmap: bool,
}

/// A request whose every guest-controlled part has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `VIRTIO_BLK_T_IN`: read sectors into `data`.
    Read {
        /// First sector.
        sector: u64,
        /// Where the data goes.
        data: Vec<Segment>,
    },
    /// `VIRTIO_BLK_T_OUT`: write `data` to sectors.
    Write {
        /// First sector.
        sector: u64,
        /// Where the data comes from.
        data: Vec<Segment>,
    },
    /// `VIRTIO_BLK_T_FLUSH`: make completed writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: write the id (serial number) into `buffer`, at most
    /// [`ID_BYTES`] bytes.
    GetId {
        /// Where the id goes.
        buffer: Vec<Segment>,
    },
    /// `VIRTIO_BLK_T_DISCARD`.
    Discard(Vec<Range>),
    /// `VIRTIO_BLK_T_WRITE_ZEROES`.
    WriteZeroes(Vec<Range>),
}

/// Why a request failed. Each maps to the status byte the driver sees.
#[derive(Debug, Error)]
pub(crate) enum RequestError {
    /// The chain has no device-writable last byte to put the status in.
    #[error("the chain has no device-writable status byte in guest memory")]
    NoStatus,
    /// The chain could not be followed.
    #[error("broken descriptor chain")]
    Chain(#[source] ChainError),
    /// A descriptor has length zero.
    #[error("descriptor {index} has length zero")]
    ZeroLength {
        /// The descriptor's index.
        index: u16,
    },
    /// A descriptor's buffer is not (entirely) in guest memory.
    #[error("descriptor {index} ({len} bytes at {addr:#x}) is not in guest memory")]
    OutsideMemory {
        /// The descriptor's index.
        index: u16,
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor {index} follows a device-writable one")]
    ReadableAfterWritable {
        /// The descriptor's index.
        index: u16,
    },
    /// The device-readable part is shorter than a header.
    #[error("request header is {len} bytes, less than 16")]
    ShortHeader {
        /// Bytes available.
        len: u64,
    },
    /// The buffer directions or sizes do not fit the request type.
    #[error("{kind}: {readable} device-readable and {writable} device-writable bytes do not fit its layout")]
    Layout {
        /// The request type.
        kind: &'static str,
        /// Bytes the device may read.
        readable: u64,
        /// Bytes the device may write.
        writable: u64,
    },
    /// A read or write of no data, or of partial sectors.
    #[error("data length {len} is not a non-zero multiple of 512")]
    DataLength {
        /// The data length.
        len: u64,
    },
    /// A read or write of more data than the device allows.
    #[error("data length {len} is more than {MAX_REQUEST_BYTES}")]
    TooLarge {
        /// The data length.
        len: u64,
    },
    /// The request reaches past the end of the disk.
    #[error("{bytes} bytes at sector {sector} run past the end of the disk ({capacity} sectors)")]
    PastEnd {
        /// The first sector.
        sector: u64,
        /// The length in bytes.
        bytes: u64,
        /// The disk's capacity in sectors.
        capacity: u64,
    },
    /// A request that modifies a read-only disk.
    #[error("{kind} on a read-only disk")]
    ReadOnly {
        /// The request type.
        kind: &'static str,
    },
    /// Too many segments in a discard or write-zeroes request.
    #[error("{kind} with {count} segments, more than {max}")]
    TooManySegments {
        /// The request type.
        kind: &'static str,
        /// Segments in the request.
        count: u64,
        /// The limit.
        max: u32,
    },
    /// A discard or write-zeroes segment larger than the device allows.
    #[error("{kind} of {sectors} sectors, more than {max}")]
    TooManySectors {
        /// The request type.
        kind: &'static str,
        /// Sectors in the segment.
        sectors: u32,
        /// The limit.
        max: u32,
    },
    /// A request type the device does not implement.
    #[error("request type {0} is not supported")]
    UnsupportedType(u32),
    /// Flags the device does not implement in a discard or write-zeroes segment.
    #[error("{kind} flags {flags:#x} are not supported")]
    UnsupportedFlags {
        /// The request type.
        kind: &'static str,
        /// The flags.
        flags: u32,
    },
    /// Guest memory could not be accessed (it was checked, so this is a bug or a race).
    #[error("guest memory access failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The host file operation failed.
    #[error("disk I/O failed")]
    Io(#[source] io::Error),
}

impl RequestError {
    /// The status byte the driver gets for this error.
    pub(crate) fn status(&self) -> u8 {
        match self {
            Self::UnsupportedType(_) | Self::UnsupportedFlags { .. } => STATUS_UNSUPP,
            _ => STATUS_IOERR,
        }
    }

    /// Whether the guest caused the error (as opposed to the host).
    pub(crate) fn is_guest_error(&self) -> bool {
        !matches!(self, Self::Io(_) | Self::Memory(_))
    }
}

/// Bytes spread over guest buffers, in order.
#[derive(Debug, Default)]
struct Stream {
    segments: Vec<Segment>,
    len: u64,
}

impl Stream {
    fn push(&mut self, segment: Segment) {
        self.segments.push(segment);
        self.len += u64::from(segment.len);
    }

    /// The segments that hold bytes `[start, start + len)` of the stream.
    fn range(&self, start: u64, len: u64) -> Vec<Segment> {
        let end = start + len;
        let mut pos = 0u64;
        let mut out = Vec::new();
        for segment in &self.segments {
            let seg_start = pos;
            let seg_end = pos + u64::from(segment.len);
            pos = seg_end;
            let from = seg_start.max(start);
            let to = seg_end.min(end);
            if from < to {
                out.push(Segment {
                    addr: segment.addr + (from - seg_start),
                    // At most `segment.len`.
                    len: (to - from) as u32,
                });
            }
        }
        out
    }

    /// Reads bytes `[start, start + buf.len())` of the stream.
    fn read(&self, mem: &GuestMemoryMmap, start: u64, buf: &mut [u8]) -> Result<(), RequestError> {
        let mut filled = 0usize;
        for segment in self.range(start, buf.len() as u64) {
            let len = segment.len as usize;
            mem.read_slice(&mut buf[filled..filled + len], GuestAddress(segment.addr))
                .map_err(RequestError::Memory)?;
            filled += len;
        }
        Ok(())
    }
}

/// Writes `bytes` over `segments`, in order (as far as they reach).
fn write_segments(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    bytes: &[u8],
) -> Result<(), RequestError> {
    let mut rest = bytes;
    for segment in segments {
        let len = (segment.len as usize).min(rest.len());
        mem.write_slice(&rest[..len], GuestAddress(segment.addr))
            .map_err(RequestError::Memory)?;
        rest = &rest[len..];
    }
    Ok(())
}

/// Where the status byte of `chain` goes: the last byte of its last descriptor, if that is
/// device-writable and in guest memory.
pub(crate) fn status_location(mem: &GuestMemoryMmap, chain: &Chain) -> Option<GuestAddress> {
    let last = chain.descriptors.last()?;
    if !last.writable || last.len == 0 {
        return None;
    }
    let addr = GuestAddress(last.addr.checked_add(u64::from(last.len) - 1)?);
    mem.address_in_range(addr).then_some(addr)
}

/// What the device needs to know about the disk to check a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskLimits {
    /// Capacity in sectors.
    pub(crate) sectors: u64,
    /// Whether writes are refused.
    pub(crate) read_only: bool,
}

impl DiskLimits {
    /// Checks that `bytes` at `sector` lie inside the disk.
    fn check_range(&self, sector: u64, bytes: u64) -> Result<(), RequestError> {
        let end = sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(bytes));
        match end {
            Some(end) if end <= self.sectors * SECTOR_SIZE => Ok(()),
            _ => Err(RequestError::PastEnd {
                sector,
                bytes,
                capacity: self.sectors,
            }),
        }
    }

    fn check_writable(&self, kind: &'static str) -> Result<(), RequestError> {
        if self.read_only {
            Err(RequestError::ReadOnly { kind })
        } else {
            Ok(())
        }
    }
}

/// Checks the data length of a read or write.
fn check_data_length(len: u64) -> Result<(), RequestError> {
    if len == 0 || len % SECTOR_SIZE != 0 {
        Err(RequestError::DataLength { len })
    } else if len > MAX_REQUEST_BYTES {
        Err(RequestError::TooLarge { len })
    } else {
        Ok(())
    }
}

/// Turns `chain` into a [`Request`], checking everything the driver controls against guest
/// memory and `limits`. The caller has found the status byte ([`status_location`]).
pub(crate) fn parse(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    limits: DiskLimits,
) -> Result<Request, RequestError> {
    if let Some(error) = chain.error {
        return Err(RequestError::Chain(error));
    }
    let mut readable = Stream::default();
    let mut writable = Stream::default();
    for desc in &chain.descriptors {
        if desc.len == 0 {
            return Err(RequestError::ZeroLength { index: desc.index });
        }
        if !mem.check_range(GuestAddress(desc.addr), desc.len as usize) {
            return Err(RequestError::OutsideMemory {
                index: desc.index,
                addr: desc.addr,
                len: desc.len,
            });
        }
        let segment = Segment {
            addr: desc.addr,
            len: desc.len,
        };
        if desc.writable {
            writable.push(segment);
        } else if writable.len > 0 {
            return Err(RequestError::ReadableAfterWritable { index: desc.index });
        } else {
            readable.push(segment);
        }
    }
    if writable.len == 0 {
        return Err(RequestError::NoStatus);
    }
    if readable.len < HEADER_SIZE {
        return Err(RequestError::ShortHeader { len: readable.len });
    }
    let mut header = [0u8; HEADER_SIZE as usize];
    readable.read(mem, 0, &mut header)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    // Bytes the device reads after the header, and writes before the status byte.
    let data_out = readable.len - HEADER_SIZE;
    let data_in = writable.len - 1;
    let layout = |kind| RequestError::Layout {
        kind,
        readable: readable.len,
        writable: writable.len,
    };

    match request_type {
        VIRTIO_BLK_T_IN => {
            if data_out != 0 {
                return Err(layout("read"));
            }
            check_data_length(data_in)?;
            limits.check_range(sector, data_in)?;
            Ok(Request::Read {
                sector,
                data: writable.range(0, data_in),
            })
        }
        VIRTIO_BLK_T_OUT => {
            if data_in != 0 {
                return Err(layout("write"));
            }
            limits.check_writable("write")?;
            check_data_length(data_out)?;
            limits.check_range(sector, data_out)?;
            Ok(Request::Write {
                sector,
                data: readable.range(HEADER_SIZE, data_out),
            })
        }
        VIRTIO_BLK_T_FLUSH => {
            if data_in != 0 || data_out != 0 {
                return Err(layout("flush"));
            }
            Ok(Request::Flush)
        }
        VIRTIO_BLK_T_GET_ID => {
            if data_out != 0 || data_in == 0 {
                return Err(layout("get-id"));
            }
            Ok(Request::GetId {
                buffer: writable.range(0, data_in.min(ID_BYTES as u64)),
            })
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let zeroes = request_type == VIRTIO_BLK_T_WRITE_ZEROES;
            let kind = if zeroes { "write-zeroes" } else { "discard" };
            if data_in != 0 || data_out == 0 || data_out % RANGE_SIZE != 0 {
                return Err(layout(kind));
            }
            limits.check_writable(kind)?;
            let ranges = parse_ranges(mem, &readable, data_out / RANGE_SIZE, zeroes, limits)?;
            Ok(if zeroes {
                Request::WriteZeroes(ranges)
            } else {
                Request::Discard(ranges)
            })
        }
        other => Err(RequestError::UnsupportedType(other)),
    }
}

/// Reads and checks the `count` segments of a discard or write-zeroes request.
fn parse_ranges(
    mem: &GuestMemoryMmap,
    readable: &Stream,
    count: u64,
    zeroes: bool,
    limits: DiskLimits,
) -> Result<Vec<Range>, RequestError> {
    let (kind, max_segments, max_sectors, allowed_flags) = if zeroes {
        (
            "write-zeroes",
            MAX_WRITE_ZEROES_SEG,
            MAX_WRITE_ZEROES_SECTORS,
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
        )
    } else {
        // virtio 1.2, 5.2.6.2: a discard with the unmap flag set is unsupported.
        ("discard", MAX_DISCARD_SEG, MAX_DISCARD_SECTORS, 0)
    };
    if count > u64::from(max_segments) {
        return Err(RequestError::TooManySegments {
            kind,
            count,
            max: max_segments,
        });
    }
    let mut raw = vec![0u8; (count * RANGE_SIZE) as usize];
    readable.read(mem, HEADER_SIZE, &mut raw)?;
    let mut ranges = Vec::with_capacity(raw.len() / RANGE_SIZE as usize);
    for entry in raw.chunks_exact(RANGE_SIZE as usize) {
        let mut sector = [0u8; 8];
        let mut sectors = [0u8; 4];
        let mut flags = [0u8; 4];
        sector.copy_from_slice(&entry[..8]);
        sectors.copy_from_slice(&entry[8..12]);
        flags.copy_from_slice(&entry[12..]);
        let (sector, sectors, flags) = (
            u64::from_le_bytes(sector),
            u32::from_le_bytes(sectors),
            u32::from_le_bytes(flags),
        );
        if flags & !allowed_flags != 0 {
            return Err(RequestError::UnsupportedFlags { kind, flags });
        }
        if sectors > max_sectors {
            return Err(RequestError::TooManySectors {
                kind,
                sectors,
                max: max_sectors,
            });
        }
        limits.check_range(sector, u64::from(sectors) * SECTOR_SIZE)?;
        ranges.push(Range {
            sector,
            sectors,
            unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

impl Request {
    /// Runs the request against `disk`. Returns how many bytes it wrote into guest buffers
    /// (not counting the status byte).
    pub(crate) fn execute(
        &self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        id: &[u8; ID_BYTES],
    ) -> Result<u32, RequestError> {
        let total = |segments: &[Segment]| segments.iter().map(|s| s.len).sum::<u32>();
        match self {
            Self::Read { sector, data } => {
                disk.read_into(mem, data, sector * SECTOR_SIZE)
                    .map_err(RequestError::Io)?;
                // At most MAX_REQUEST_BYTES, which fits.
                Ok(total(data))
            }
            Self::Write { sector, data } => {
                disk.write_from(mem, data, sector * SECTOR_SIZE)
                    .map_err(RequestError::Io)?;
                Ok(0)
            }
            Self::Flush => {
                disk.flush().map_err(RequestError::Io)?;
                Ok(0)
            }
            Self::GetId { buffer } => {
                write_segments(mem, buffer, id)?;
                Ok(total(buffer))
            }
            Self::Discard(ranges) => {
                for range in ranges.iter().filter(|r| r.sectors != 0) {
                    disk.discard(
                        range.sector * SECTOR_SIZE,
                        u64::from(range.sectors) * SECTOR_SIZE,
                    )
                    .map_err(RequestError::Io)?;
                }
                Ok(0)
            }
            Self::WriteZeroes(ranges) => {
                for range in ranges.iter().filter(|r| r.sectors != 0) {
                    disk.write_zeroes(
                        range.sector * SECTOR_SIZE,
                        u64::from(range.sectors) * SECTOR_SIZE,
                        range.unmap,
                    )
                    .map_err(RequestError::Io)?;
                }
                Ok(0)
            }
        }
    }
}

/// What a request that completed with OK did, for the device's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completed {
    /// A read of `bytes` bytes.
    Read {
        /// Bytes read from the image.
        bytes: u64,
    },
    /// A write of `bytes` bytes.
    Write {
        /// Bytes written to the image.
        bytes: u64,
    },
    /// A flush.
    Flush,
    /// GET_ID, discard or write-zeroes.
    Other,
}

impl Request {
    /// What this request does, once it has succeeded.
    fn completed(&self) -> Completed {
        let bytes = |segments: &[Segment]| segments.iter().map(|s| u64::from(s.len)).sum();
        match self {
            Self::Read { data, .. } => Completed::Read { bytes: bytes(data) },
            Self::Write { data, .. } => Completed::Write { bytes: bytes(data) },
            Self::Flush => Completed::Flush,
            Self::GetId { .. } | Self::Discard(_) | Self::WriteZeroes(_) => Completed::Other,
        }
    }
}

/// The device's answer to one chain.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The used length to report: bytes written into the chain's buffers, status included.
    pub(crate) used_len: u32,
    /// The status byte written, if the chain had room for one.
    pub(crate) status: Option<u8>,
    /// What the request did, if it completed with OK.
    pub(crate) completed: Option<Completed>,
    /// What went wrong, if anything.
    pub(crate) error: Option<RequestError>,
}

/// Parses and executes `chain`, and writes its status byte.
pub(crate) fn answer(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    disk: &Disk,
    id: &[u8; ID_BYTES],
) -> Answer {
    let Some(status_addr) = status_location(mem, chain) else {
        let error = chain
            .error
            .map_or(RequestError::NoStatus, RequestError::Chain);
        return Answer {
            used_len: 0,
            status: None,
            completed: None,
            error: Some(error),
        };
    };
    let limits = DiskLimits {
        sectors: disk.sectors(),
        read_only: disk.read_only(),
    };
    let result = parse(mem, chain, limits).and_then(|request| {
        let written = request.execute(mem, disk, id)?;
        Ok((written, request.completed()))
    });
    let (status, used_len, completed, error) = match result {
        Ok((written, completed)) => (STATUS_OK, written.saturating_add(1), Some(completed), None),
        Err(error) => (error.status(), 1, None, Some(error)),
    };
    if let Err(e) = mem.write_obj(status, status_addr) {
        // Checked above; guest memory does not shrink.
        return Answer {
            used_len: 0,
            status: None,
            completed: None,
            error: Some(RequestError::Memory(e)),
        };
    }
    Answer {
        used_len,
        status: Some(status),
        completed,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::chain::{read_chain, Descriptor};
    use crate::virtio::test_utils::{guest_memory, MEM_SIZE};

    const LIMITS: DiskLimits = DiskLimits {
        sectors: 16,
        read_only: false,
    };

    fn chain(descs: &[(u64, u32, bool)]) -> Chain {
        Chain {
            head: 0,
            descriptors: (0u16..)
                .zip(descs)
                .map(|(index, &(addr, len, writable))| Descriptor {
                    index,
                    addr,
                    len,
                    writable,
                })
                .collect(),
            error: None,
        }
    }

    fn header(mem: &GuestMemoryMmap, addr: u64, request_type: u32, sector: u64) {
        mem.write_obj(request_type, GuestAddress(addr)).unwrap();
        mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(addr + 8)).unwrap();
    }

    #[test]
    fn the_usual_three_descriptor_layout_parses() {
        let mem = guest_memory();
        header(&mem, 0x8000, VIRTIO_BLK_T_IN, 3);
        let c = chain(&[(0x8000, 16, false), (0x9000, 1024, true), (0xa000, 1, true)]);
        assert_eq!(
            parse(&mem, &c, LIMITS).unwrap(),
            Request::Read {
                sector: 3,
                data: vec![Segment {
                    addr: 0x9000,
                    len: 1024
                }]
            }
        );
        assert_eq!(status_location(&mem, &c), Some(GuestAddress(0xa000)));
    }

    #[test]
    fn any_layout_is_accepted() {
        let mem = guest_memory();
        // A write whose header and data share one descriptor, split oddly.
        header(&mem, 0x8000, VIRTIO_BLK_T_OUT, 1);
        let c = chain(&[(0x8000, 10, false), (0x800a, 518, false), (0xa000, 1, true)]);
        assert_eq!(
            parse(&mem, &c, LIMITS).unwrap(),
            Request::Write {
                sector: 1,
                data: vec![Segment {
                    addr: 0x8010,
                    len: 512
                }]
            }
        );
        // A read whose data and status share one descriptor.
        header(&mem, 0x8000, VIRTIO_BLK_T_IN, 0);
        let c = chain(&[(0x8000, 16, false), (0x9000, 513, true)]);
        assert_eq!(
            parse(&mem, &c, LIMITS).unwrap(),
            Request::Read {
                sector: 0,
                data: vec![Segment {
                    addr: 0x9000,
                    len: 512
                }]
            }
        );
        assert_eq!(status_location(&mem, &c), Some(GuestAddress(0x9200)));
    }

    #[test]
    fn a_header_split_across_descriptors_is_read_whole() {
        let mem = guest_memory();
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(0x8000))
            .unwrap();
        mem.write_obj(0u32, GuestAddress(0x8100)).unwrap();
        mem.write_obj(7u64, GuestAddress(0x8200)).unwrap();
        let c = chain(&[
            (0x8000, 4, false),
            (0x8100, 4, false),
            (0x8200, 8, false),
            (0x9000, 512, true),
            (0xa000, 1, true),
        ]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Ok(Request::Read { sector: 7, .. })
        ));
    }

    #[test]
    fn wrong_directions_are_refused_with_the_reason() {
        let mem = guest_memory();
        header(&mem, 0x8000, VIRTIO_BLK_T_IN, 0);
        // A read whose data buffer is device-readable.
        let c = chain(&[(0x8000, 16, false), (0x9000, 512, false), (0xa000, 1, true)]);
        let err = parse(&mem, &c, LIMITS).unwrap_err();
        assert!(matches!(
            err,
            RequestError::Layout {
                kind: "read",
                readable: 528,
                writable: 1
            }
        ));
        assert_eq!(err.status(), STATUS_IOERR);
        // A write whose data buffer is device-writable.
        header(&mem, 0x8000, VIRTIO_BLK_T_OUT, 0);
        let c = chain(&[(0x8000, 16, false), (0x9000, 512, true), (0xa000, 1, true)]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::Layout { kind: "write", .. })
        ));
        // A device-readable buffer after a device-writable one.
        let c = chain(&[(0x8000, 16, false), (0x9000, 512, true), (0xa000, 1, false)]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::ReadableAfterWritable { index: 2 })
        ));
        assert_eq!(status_location(&mem, &c), None, "no writable status byte");
    }

    #[test]
    fn lengths_and_ranges_are_checked() {
        let mem = guest_memory();
        let read = |sector, len| {
            header(&mem, 0x8000, VIRTIO_BLK_T_IN, sector);
            parse(
                &mem,
                &chain(&[(0x8000, 16, false), (0x10000, len, true), (0xa000, 1, true)]),
                LIMITS,
            )
        };
        assert!(matches!(
            read(0, 100),
            Err(RequestError::DataLength { len: 100 })
        ));
        assert!(read(0, 8192).is_ok(), "all 16 sectors");
        assert!(matches!(
            read(1, 8192),
            Err(RequestError::PastEnd {
                sector: 1,
                bytes: 8192,
                capacity: 16
            })
        ));
        assert!(matches!(
            read(u64::MAX, 512),
            Err(RequestError::PastEnd { .. })
        ));
        assert!(matches!(
            read(u64::MAX / 512, 512),
            Err(RequestError::PastEnd { .. })
        ));
        // More than the per-request limit, inside guest memory: refused before the range.
        let huge = chain(&[(0x8000, 16, false), (0, u32::MAX, true), (0xa000, 1, true)]);
        header(&mem, 0x8000, VIRTIO_BLK_T_IN, 0);
        let err = parse(&mem, &huge, LIMITS).unwrap_err();
        assert!(
            matches!(err, RequestError::OutsideMemory { index: 1, .. }),
            "{err}"
        );
        // No data at all.
        header(&mem, 0x8000, VIRTIO_BLK_T_OUT, 0);
        let c = chain(&[(0x8000, 16, false), (0xa000, 1, true)]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::DataLength { len: 0 })
        ));
        assert!(matches!(
            check_data_length(MAX_REQUEST_BYTES + 512),
            Err(RequestError::TooLarge { .. })
        ));
        // A header that is too short.
        let c = chain(&[(0x8000, 8, false), (0xa000, 1, true)]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::ShortHeader { len: 8 })
        ));
    }

    #[test]
    fn buffers_outside_guest_memory_and_empty_buffers_are_refused() {
        let mem = guest_memory();
        header(&mem, 0x8000, VIRTIO_BLK_T_IN, 0);
        let c = chain(&[
            (0x8000, 16, false),
            (MEM_SIZE - 256, 512, true),
            (0xa000, 1, true),
        ]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::OutsideMemory { index: 1, .. })
        ));
        let c = chain(&[
            (0x8000, 16, false),
            (u64::MAX - 10, 512, true),
            (0xa000, 1, true),
        ]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::OutsideMemory { index: 1, .. })
        ));
        let c = chain(&[(0x8000, 16, false), (0x9000, 0, true), (0xa000, 1, true)]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::ZeroLength { index: 1 })
        ));
        // The status byte itself outside memory: nowhere to answer.
        let c = chain(&[(0x8000, 16, false), (MEM_SIZE, 1, true)]);
        assert_eq!(status_location(&mem, &c), None);
        let c = chain(&[(0x8000, 16, false), (u64::MAX, 2, true)]);
        assert_eq!(status_location(&mem, &c), None);
    }

    #[test]
    fn discard_and_write_zeroes_segments_are_checked() {
        let mem = guest_memory();
        let range = |addr: u64, sector: u64, sectors: u32, flags: u32| {
            mem.write_obj(sector, GuestAddress(addr)).unwrap();
            mem.write_obj(sectors, GuestAddress(addr + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(addr + 12)).unwrap();
        };
        let request = |request_type, segments: u32| {
            header(&mem, 0x8000, request_type, 0);
            parse(
                &mem,
                &chain(&[
                    (0x8000, 16, false),
                    (0x9000, 16 * segments, false),
                    (0xa000, 1, true),
                ]),
                LIMITS,
            )
        };
        range(0x9000, 2, 4, 0);
        range(0x9010, 8, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP);
        assert!(matches!(
            request(VIRTIO_BLK_T_DISCARD, 2),
            Err(RequestError::UnsupportedFlags {
                kind: "discard",
                flags: 1
            })
        ));
        assert_eq!(
            request(VIRTIO_BLK_T_WRITE_ZEROES, 2).unwrap(),
            Request::WriteZeroes(vec![
                Range {
                    sector: 2,
                    sectors: 4,
                    unmap: false
                },
                Range {
                    sector: 8,
                    sectors: 8,
                    unmap: true
                },
            ])
        );
        range(0x9010, 8, 8, 0x2);
        let err = request(VIRTIO_BLK_T_WRITE_ZEROES, 2).unwrap_err();
        assert_eq!(err.status(), STATUS_UNSUPP);
        range(0x9010, 9, 8, 0);
        assert!(matches!(
            request(VIRTIO_BLK_T_DISCARD, 2),
            Err(RequestError::PastEnd { sector: 9, .. })
        ));
        range(0x9010, 0, MAX_WRITE_ZEROES_SECTORS + 1, 0);
        assert!(matches!(
            request(VIRTIO_BLK_T_WRITE_ZEROES, 2),
            Err(RequestError::TooManySectors { .. })
        ));
        assert!(matches!(
            request(VIRTIO_BLK_T_DISCARD, MAX_DISCARD_SEG + 1),
            Err(RequestError::TooManySegments { count: 33, .. })
        ));
        // Not a whole number of segments.
        header(&mem, 0x8000, VIRTIO_BLK_T_DISCARD, 0);
        let c = chain(&[(0x8000, 16, false), (0x9000, 12, false), (0xa000, 1, true)]);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::Layout {
                kind: "discard",
                ..
            })
        ));
        // Read-only disks refuse both.
        let read_only = DiskLimits {
            read_only: true,
            ..LIMITS
        };
        header(&mem, 0x8000, VIRTIO_BLK_T_DISCARD, 0);
        let c = chain(&[(0x8000, 16, false), (0x9000, 16, false), (0xa000, 1, true)]);
        assert!(matches!(
            parse(&mem, &c, read_only),
            Err(RequestError::ReadOnly { kind: "discard" })
        ));
    }

    #[test]
    fn get_id_fills_at_most_twenty_bytes_and_unknown_types_are_unsupported() {
        let mem = guest_memory();
        header(&mem, 0x8000, VIRTIO_BLK_T_GET_ID, 0);
        let c = chain(&[(0x8000, 16, false), (0x9000, 64, true), (0xa000, 1, true)]);
        assert_eq!(
            parse(&mem, &c, LIMITS).unwrap(),
            Request::GetId {
                buffer: vec![Segment {
                    addr: 0x9000,
                    len: 20
                }]
            }
        );
        header(&mem, 0x8000, 0x1234, 0);
        let err = parse(&mem, &c, LIMITS).unwrap_err();
        assert!(matches!(err, RequestError::UnsupportedType(0x1234)));
        assert_eq!(err.status(), STATUS_UNSUPP);
        // Flush with data is refused.
        header(&mem, 0x8000, VIRTIO_BLK_T_FLUSH, 0);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::Layout { kind: "flush", .. })
        ));
    }

    #[test]
    fn a_broken_chain_is_an_error_answered_in_its_last_writable_byte() {
        let mem = guest_memory();
        let table = GuestAddress(0x1000);
        use crate::virtio::chain::{DESC_F_NEXT, DESC_F_WRITE};
        use crate::virtio::test_utils::write_descriptor;
        write_descriptor(&mem, table, 0, 0x8000, 16, DESC_F_NEXT, 1);
        write_descriptor(&mem, table, 1, 0xa000, 1, DESC_F_NEXT | DESC_F_WRITE, 0);
        let c = read_chain(&mem, table, 8, 0);
        assert!(matches!(
            parse(&mem, &c, LIMITS),
            Err(RequestError::Chain(ChainError::Loop { index: 1, next: 0 }))
        ));
        assert_eq!(status_location(&mem, &c), Some(GuestAddress(0xa000)));
    }
}
