//! virtio-net, the network device (virtio 1.2 section 5.1), backed by a host TAP device.
//!
//! - [`NetBackend`] / [`Tap`] (`tap`): where frames go and come from. [`Tap::open`] attaches
//!   to (or creates) a TAP interface with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte
//!   vnet header, so every frame crosses the TAP with the same `virtio_net_hdr_v1` the guest
//!   uses, and checksum/segmentation offloads pass through untouched.
//! - [`Net`] (`device`): features, configuration space (MAC, link status), the
//!   [`VirtioDevice`](super::VirtioDevice) implementation, and the generated MAC.
//! - `event_handler`: the `event-manager` subscriber that moves frames. Activation (two
//!   ready queues), disable, reset and watching both queue eventfds are the shared
//!   `DeviceQueues` lifecycle (see the [virtio module](super)); the device adds watching the
//!   TAP's fd.
//!
//! # Queues and features
//!
//! Two queues of [`QUEUE_SIZE`] entries: receive (0) and transmit (1). Offered features:
//! `VERSION_1`, `MAC`, `STATUS` (the link is always up), `CSUM`, `GUEST_CSUM`,
//! `GUEST_TSO4/6`, `GUEST_UFO`, `HOST_TSO4/6`, `HOST_UFO` and `MRG_RXBUF`. The guest's
//! receive offloads (`GUEST_*`) are mirrored on the TAP with `TUNSETOFFLOAD`, so the host
//! kernel only hands the device packets the guest accepted. No control queue, no multiqueue.
//!
//! # Transmit
//!
//! On a notification of the transmit queue, each chain is a 12-byte header followed by the
//! frame, in device-readable buffers. It is copied out of guest memory, checked and written
//! to the backend; the chain completes with used length 0 (the device writes nothing).
//!
//! # Receive
//!
//! Frames are read from the backend only when it is readable **and** the driver has posted
//! receive buffers. When the receive queue is empty, the device stops watching the backend's
//! fd (no busy loop) until the driver notifies the receive queue. A frame is written with its
//! header into one chain, or with `MRG_RXBUF` into as many chains as needed, `num_buffers`
//! telling the driver how many. A frame is never delivered truncated: one that cannot fit is
//! dropped and counted.
//!
//! # Hostile drivers
//!
//! The device keeps working whatever a driver puts in its queues. On transmit, a chain that
//! is broken (loop, index outside the queue, indirect descriptor), has a device-writable
//! buffer, points outside guest memory, is longer than [`MAX_TX_CHAIN`] or shorter than a
//! header plus an Ethernet header, or carries a malformed header (unknown flags or
//! `gso_type`, an offload that was not negotiated, `gso_size` 0, `hdr_len` or checksum
//! offsets past the frame) completes with used length 0 and its frame is dropped and counted.
//! On receive, a broken chain, one with a device-readable buffer or a buffer outside guest
//! memory, and (without `MRG_RXBUF`) one too small for any frame (under a header plus an
//! Ethernet header) completes with used length 0. Errors in the queues themselves (an available index
//! more than a queue's worth ahead, a used ring that cannot be written) set
//! `DEVICE_NEEDS_RESET`.

mod device;
mod event_handler;
#[cfg(test)]
mod fake;
mod tap;

use std::io;

use thiserror::Error;

pub use self::device::{generated_mac, Net, NetStats};
pub use self::tap::{is_valid_tap_name, NetBackend, Tap, TapError};

/// The size of each of the device's two queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Size of the `virtio_net_hdr_v1` that precedes every frame (virtio 1.x always has
/// `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame (without header) the device moves: a 64 KiB GSO packet plus an Ethernet
/// header and a VLAN tag (65550 bytes, as in Linux's virtio-net and QEMU).
pub const MAX_FRAME_LEN: usize = 65550;
/// The most bytes a transmit chain may hold: header plus [`MAX_FRAME_LEN`].
pub const MAX_TX_CHAIN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Why a network device could not be created.
#[derive(Debug, Error)]
pub enum NetError {
    /// The eventfd that wakes the event loop could not be created.
    #[error("cannot create the network device's eventfd")]
    EventFd(#[source] io::Error),
}
