//! virtio-rng, the entropy device (virtio 1.2 section 5.4), backed by the host's
//! `getrandom(2)`.
//!
//! - [`Rng`] (`device`): offers the features and implements
//!   [`VirtioDevice`](super::VirtioDevice). The device has no configuration space.
//! - `event_handler`: the `event-manager` subscriber that watches the queue and fills the
//!   driver's buffers. Activation, disable, reset and the event-loop registrations are the
//!   shared one-queue `DeviceQueues` lifecycle (see the [virtio module](super)).
//!
//! # Requests
//!
//! One queue of [`QUEUE_SIZE`] entries; the only feature is `VIRTIO_F_VERSION_1` (no event
//! index, no indirect descriptors). Every chain the driver makes available is a request for
//! entropy: the device fills its device-writable buffers, in chain order, with bytes from
//! `getrandom(2)` (flags 0: the host's urandom pool, which blocks only before the host's
//! pool is first initialised), written straight into guest memory, and completes the chain
//! with the number of bytes written. One request gets at most [`MAX_REQUEST_BYTES`] (64 KiB);
//! a driver asking for more gets that much and asks again, as the spec allows. Requests run on
//! the VMM's event-loop thread, like virtio-blk's, and a batch stops after one queue's worth
//! of chains so other event-loop work gets a turn.
//!
//! # Hostile drivers
//!
//! virtio-rng has no status byte, so a request the device cannot serve completes with a used
//! length of 0 and nothing written: a chain with no device-writable buffer, a writable buffer
//! (the part the device would fill) outside guest memory, a looping or broken chain, an
//! indirect descriptor (not offered), or a host `getrandom` failure. The device keeps
//! working. Errors in the queue itself (an available index more than a queue's worth ahead,
//! a chain head outside the queue, a used ring that cannot be written) set
//! `DEVICE_NEEDS_RESET`, and the device leaves the queue alone until the driver resets it.
//! The first bad request is logged at warning level, the rest at debug level.
//!
//! # Why it is off by default in petrel
//!
//! The VMM attaches it only when asked (`--rng`): an extra device costs a little boot time
//! (the guest probes one more virtio-mmio window), and most microVM guests seed their pool
//! from RDRAND/RDSEED anyway. Firecracker's entropy device is opt-in for the same reasons.

mod device;
mod event_handler;

use std::io;

use thiserror::Error;

pub use self::device::Rng;

/// The size of the device's one queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets, whatever the length of its buffers (64 KiB).
pub const MAX_REQUEST_BYTES: u32 = 64 * 1024;

/// Why an entropy device could not be created.
#[derive(Debug, Error)]
pub enum RngError {
    /// The eventfd that wakes the event loop could not be created.
    #[error("cannot create the entropy device's eventfd")]
    EventFd(#[source] io::Error),
}
