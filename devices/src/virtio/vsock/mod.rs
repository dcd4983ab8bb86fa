//! virtio-vsock, the socket device (virtio 1.2 section 5.10), with Firecracker's hybrid
//! Unix-socket model on the host side.
//!
//! - [`Vsock`] (`device`): the guest CID, the host socket, the
//!   [`VirtioDevice`](super::VirtioDevice) implementation and [`VsockStats`].
//! - `packet`: the 44-byte packet header and its operations.
//! - `connection`: one stream's state and flow-control counters.
//! - `unix`: the host's Unix sockets and the `CONNECT` line.
//! - `event_handler`: the `event-manager` subscriber that moves packets and bytes.
//!   Activation (three ready queues), disable, reset and watching the receive and transmit
//!   queue eventfds are the shared `DeviceQueues` lifecycle (see the [virtio module](super));
//!   the device adds its own epoll instance.
//!
//! # What the device offers
//!
//! Stream sockets (`AF_VSOCK`, `SOCK_STREAM`) between the guest (its CID, 3 to
//! 0xFFFF_FFFE, in the configuration space as a read-only le64) and the host (CID 2). Three
//! queues of [`QUEUE_SIZE`]: receive (0, device → driver), transmit (1), event (2). The only
//! feature is `VIRTIO_F_VERSION_1`; stream sockets need no feature bit, `SEQPACKET` is not
//! offered. Host programs see plain Unix stream sockets, the same way Firecracker exposes
//! them, so tools written for Firecracker work unchanged:
//!
//! - **Host → guest.** The device listens on `uds_path`. A host program connects and writes
//!   `CONNECT <port>\n` (decimal; the line at most 32 bytes, possibly in several
//!   writes). The device picks a host port (counting up from 2^30, skipping ports in
//!   use) and sends the guest `OP_REQUEST` from (2, that port) to (guest CID, `port`). When
//!   the guest accepts (`OP_RESPONSE`) the device writes `OK <hostport>\n` to the Unix stream
//!   and bytes flow both ways; when it refuses (`OP_RST`) or does not answer within
//!   [`GRACE_PERIOD`], the Unix stream is closed. A line that is malformed, too long or
//!   names a port beyond `u32` closes the stream.
//! - **Guest → host.** A guest `OP_REQUEST` to CID 2 port P connects (without blocking) to
//!   the Unix socket `<uds_path>_P`, which a host program listens on. Success answers
//!   `OP_RESPONSE`; failure (nobody listening, no such file, backlog full) `OP_RST`.
//!
//! The socket file at `uds_path` is created by [`Vsock::new`] (replacing a stale socket
//! nobody listens on, refusing a live one or any other kind of file) and removed when the
//! device is dropped.
//!
//! # Flow control
//!
//! Each connection advertises [`CONN_BUF_ALLOC`] (256 KiB) of buffer space to the guest.
//! Guest data (`OP_RW`) is written to the Unix stream at once; what the stream cannot take
//! waits in the connection (never more than the advertised space: the guest's credit
//! guarantees it) and is flushed when the stream becomes writable; the device watches
//! `EPOLLOUT` only while something waits. `fwd_cnt` counts bytes actually written to the
//! host. A `CREDIT_UPDATE` goes to the guest when it asks (`OP_CREDIT_REQUEST`) and when the
//! free space the guest last heard about falls below [`CREDIT_UPDATE_THRESHOLD`] while the
//! host has read more since.
//!
//! Host data is read from a Unix stream only when the guest has posted receive buffers and
//! its credit (`buf_alloc - (tx_cnt - fwd_cnt)` from its last packet) allows; a read never
//! exceeds the credit, the buffer, or [`MAX_PKT_LEN`]. At zero credit the device stops
//! watching the stream and sends `OP_CREDIT_REQUEST`; any guest packet that raises the credit
//! resumes it. Data waits in the host socket, not in petrel's memory. Control packets
//! (`REQUEST`, `RESPONSE`, `RST`, `SHUTDOWN`, `CREDIT_*`) wait in a bounded per-device backlog
//! until the guest posts receive buffers; while it is long, the device stops taking transmit
//! chains and new host connections, so a guest that posts no receive buffers pushes back on
//! itself. Nothing busy-loops: with no receive buffers, streams are not read until the
//! driver notifies the receive queue.
//!
//! # Closing
//!
//! - Guest `OP_RST`: the Unix stream is closed at once (the host reads end of file).
//! - Guest `OP_SHUTDOWN` with both flags: what waits for the host is flushed, then the Unix
//!   stream is closed and the device answers `OP_RST`. With `SEND` only, the write side of
//!   the Unix stream is shut down after the flush (the host reads end of file and can still
//!   answer); with `RECEIVE`, the device stops reading the stream.
//! - Host end of file: the device sends `OP_SHUTDOWN`. If the host closed its end entirely
//!   (epoll reports a hangup), the flags are `RECEIVE | SEND` and the guest has
//!   [`GRACE_PERIOD`] to answer with `OP_RST` (or its own `OP_SHUTDOWN`) before the device
//!   resets the connection itself. If the host only shut down its write side, the flag is
//!   `SEND` and the guest can go on sending; a later full close is noticed from the hangup.
//! - Host stream errors (`EPIPE`, `ECONNRESET`): `OP_RST` to the guest.
//!
//! Whichever side closes, the connection ends on both: the host sees end of file, the guest an
//! `OP_RST`.
//!
//! # Event queue
//!
//! The device holds the driver's event-queue buffers and never uses them: petrel has no
//! snapshot or migration, so `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` is never sent.
//!
//! # Hostile drivers
//!
//! The device keeps working whatever the guest puts in its queues:
//!
//! - Transmit chains that are broken (loop, index outside the queue, indirect descriptor),
//!   hold a device-writable buffer, point outside guest memory, are shorter than the header,
//!   or whose header `len` is larger than the data the chain holds or than [`MAX_PKT_LEN`],
//!   are dropped and counted; when the header was readable and names a live connection, that
//!   connection is reset, since its byte stream would have a hole.
//! - A source CID other than the guest's: dropped.
//! - A destination CID other than 2, a type other than stream, an unknown operation, or a
//!   packet for no connection: `OP_RST` back (never in answer to an `OP_RST`).
//! - Protocol violations on a connection (data beyond the advertised credit, a `fwd_cnt`
//!   claiming more than the device sent, `OP_RW` before the handshake or after
//!   `SHUTDOWN_SEND`, a second `OP_REQUEST`, an unexpected `OP_RESPONSE`): `OP_RST`, and the
//!   Unix stream is closed.
//! - Receive chains too short for a header, with a device-readable buffer, or outside guest
//!   memory complete with used length 0 and are skipped.
//! - Errors in the queues themselves (an available index more than a queue's worth ahead, a
//!   chain head outside the queue, a used ring that cannot be written) set
//!   `DEVICE_NEEDS_RESET`; the device closes every connection and waits for a reset.
//!
//! # Example
//!
//! ```
//! use petrel_devices::virtio::vsock::{Vsock, VsockConfig};
//! use petrel_devices::virtio::VirtioDevice;
//!
//! let path = std::env::temp_dir().join(format!("petrel-doc-vsock-{}", std::process::id()));
//! let vsock = Vsock::new(VsockConfig { guest_cid: 3, uds_path: path.clone() })?;
//! assert_eq!(vsock.device_type(), 19);
//! let mut cid = [0u8; 8];
//! vsock.read_config(0, &mut cid);
//! assert_eq!(u64::from_le_bytes(cid), 3);
//! // Host programs connect to `path` and write "CONNECT <port>\n".
//! assert!(path.exists());
//! drop(vsock);
//! assert!(!path.exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod connection;
mod device;
mod event_handler;
#[cfg(test)]
mod fake;
pub mod packet;
mod unix;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use self::device::{Vsock, VsockStats};

/// The size of each of the device's three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue (device → driver).
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue (driver → device).
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue.
pub const EVENT_QUEUE: u16 = 2;
/// The host's context id.
pub const HOST_CID: u64 = 2;
/// The smallest guest CID accepted (0 to 2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// The largest guest CID accepted (`u32::MAX` is `VMADDR_CID_ANY`).
pub const MAX_GUEST_CID: u64 = 0xFFFF_FFFE;
/// The largest payload of one packet, either way (64 KiB, as Linux's driver uses).
pub const MAX_PKT_LEN: u32 = 64 * 1024;
/// The receive buffer the device advertises per connection (`buf_alloc`).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// A credit update goes to the guest when the free space it knows of falls below this.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// How long the device waits for the guest to accept a host connection, to answer a shutdown
/// with `OP_RST`, or for the host to read what the guest sent before closing.
pub const GRACE_PERIOD: Duration = Duration::from_secs(2);
/// The most connections (including host connections still sending `CONNECT`) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// The first host port given to host-initiated connections.
pub const FIRST_HOST_PORT: u32 = 1 << 30;

/// What the device is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id, 3 ..= 0xFFFF_FFFE.
    pub guest_cid: u64,
    /// Where the device listens for host connections; guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Why a socket device could not be created.
#[derive(Debug, Error)]
pub enum VsockError {
    /// The guest CID is reserved or too large.
    #[error("guest CID {0} is outside {MIN_GUEST_CID}..={MAX_GUEST_CID}")]
    InvalidCid(u64),
    /// The socket path does not fit in a Unix socket address.
    #[error("socket path {} is too long for a Unix socket (at most 107 bytes)", .0.display())]
    PathTooLong(PathBuf),
    /// Something other than a socket is at the path.
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// A program is listening on the path (another VMM?).
    #[error("{} is in use: a program is listening on it", .0.display())]
    InUse(PathBuf),
    /// The listening socket could not be created.
    #[error("cannot listen on {}", .0.display())]
    Bind(PathBuf, #[source] io::Error),
    /// An eventfd, epoll instance or timer could not be created.
    #[error("cannot create the socket device's {0}")]
    Resource(&'static str, #[source] io::Error),
}
