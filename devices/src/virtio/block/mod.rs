//! virtio-blk backed by a raw disk image (virtio 1.2 section 5.2).
//!
//! - [`Block`] (`device`): opens the image, offers the features, serves the configuration
//!   space, and implements [`VirtioDevice`](super::VirtioDevice).
//! - `request`: turns a descriptor chain into a request, checking everything a hostile driver
//!   controls, and executes it.
//! - `disk`: the host file: positional reads and writes straight between the file and guest
//!   memory, `fdatasync`, hole punching and zeroing.
//! - `event_handler`: the `event-manager` subscriber that watches the queue and runs the
//!   requests. Activation, disable, reset and the event-loop registrations are the shared
//!   one-queue `DeviceQueues` lifecycle (see the [virtio module](super)).
//! - [`BlockStats`] (`stats`): request counts, bytes and host time per device, relaxed
//!   atomics the event loop adds to and anyone holding [`Block::stats`] reads without a lock.
//!
//! # Features
//!
//! `VIRTIO_F_VERSION_1`, `FLUSH` (a flush is `fdatasync(2)` on the image), `BLK_SIZE` (512),
//! `SEG_MAX` ([`SEG_MAX`], the queue size minus header and status), `SIZE_MAX`
//! ([`SIZE_MAX`] bytes per segment), `RO` for read-only images, and for writable images
//! `DISCARD` and `WRITE_ZEROES` (host `fallocate(2)`). `GET_ID` returns the disk's id as its
//! serial number. One queue of [`QUEUE_SIZE`] entries; no event index, no indirect
//! descriptors, no multi-queue.
//!
//! # Where disk I/O runs, and why
//!
//! On the VMM's event-loop thread (petrel's main thread), never on a vCPU thread. The guest's
//! queue notification is a write to the QueueNotify register, which KVM turns into an
//! ioeventfd signal without leaving the kernel (the VMM registers it); the vCPU continues at
//! once. The event loop wakes on that eventfd and runs the queue: it reads and writes the
//! image with `pread`/`pwrite` directly into and out of guest memory, completes the requests
//! in the used ring and raises the interrupt through the irqfd. A guest doing I/O therefore
//! never stalls its vCPUs on the host disk, and the device needs no thread of its own. The
//! price: a long request delays the other event-loop work (console input, for instance) while
//! it runs; one batch is at most one queue's worth of requests, each at most
//! [`SEG_MAX`] × [`SIZE_MAX`] bytes, before the loop gets a turn.
//!
//! # Hostile drivers
//!
//! Every request the driver can get wrong is answered, and the device keeps working:
//! descriptors outside guest memory, looping or broken chains, zero or oversized lengths,
//! buffers with the wrong direction, data lengths that are not whole sectors, sectors past the
//! end of the disk, and writes to a read-only disk complete with `VIRTIO_BLK_S_IOERR`; unknown
//! request types and flags with `VIRTIO_BLK_S_UNSUPP`. The status goes into the last byte of
//! the chain's last descriptor if that byte is device-writable and in guest memory;
//! otherwise the chain is completed with a used length of 0 and nothing is written.
//! Errors that break the queue itself (an available index more than a queue's worth ahead, a
//! chain head outside the queue) set `DEVICE_NEEDS_RESET`: the device stops using the queue
//! until the driver resets it. The first bad request is logged at warning level, the rest
//! at debug level.
//!
//! # Durability
//!
//! Requests complete only after the host system call returned: data written is in the host
//! file (page cache) when the guest sees the write complete, and on stable storage when it
//! sees a FLUSH complete.

mod device;
mod disk;
mod event_handler;
mod request;
mod stats;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

pub use self::device::{Block, BlockConfig};
pub use self::stats::{BlockStats, BlockStatsSnapshot, LatencyAggregate};

/// Bytes per virtio-blk sector (the unit of the request header and the capacity).
pub const SECTOR_SIZE: u64 = 512;
/// The size of the device's one queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request (`seg_max`): a chain also needs a header and a status buffer.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment in bytes (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Largest data transfer of one request, in bytes.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Length of the id (serial number) GET_ID returns.
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;
/// Largest discard, in sectors, per segment (`max_discard_sectors`).
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX;
/// Segments per discard request (`max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 32;
/// Discard alignment the driver should use, in sectors: 4 KiB, the host file system's block.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Largest write-zeroes, in sectors, per segment (`max_write_zeroes_sectors`): 64 MiB, so
/// the rare host file system that can neither zero nor punch ranges writes zeroes in
/// bounded pieces.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 17;
/// Segments per write-zeroes request (`max_write_zeroes_seg`).
pub const MAX_WRITE_ZEROES_SEG: u32 = 32;

/// Why a block device could not be created.
#[derive(Debug, Error)]
pub enum BlockError {
    /// The image does not exist.
    #[error("disk image {path} does not exist")]
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// The path is a directory.
    #[error("disk image {path} is a directory")]
    IsDirectory {
        /// The path given.
        path: PathBuf,
    },
    /// The path is neither a regular file nor a block device.
    #[error("disk image {path} is not a regular file or block device")]
    NotAFile {
        /// The path given.
        path: PathBuf,
    },
    /// The image could not be opened or its size read.
    #[error("cannot open disk image {path}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// What the host said.
        #[source]
        source: io::Error,
    },
    /// The image's size is not a whole number of sectors.
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    SizeNotAligned {
        /// The path given.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// The id is longer than virtio-blk's serial number.
    #[error("disk id {id:?} is {len} bytes, more than {ID_BYTES}")]
    IdTooLong {
        /// The id given.
        id: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The id is empty or has characters other than printable ASCII.
    #[error("disk id {id:?} must be 1 to {ID_BYTES} printable ASCII characters")]
    InvalidId {
        /// The id given.
        id: String,
    },
    /// The eventfd that wakes the event loop could not be created.
    #[error("cannot create the block device's eventfd")]
    EventFd(#[source] io::Error),
}
