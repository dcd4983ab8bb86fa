//! Virtio devices and the transport that connects them to the guest.
//!
//! petrel implements virtio 1.x ("modern") only: every device offers `VIRTIO_F_VERSION_1`,
//! the driver must accept it, and the legacy interface is not offered.
//!
//! # Shape
//!
//! A device implements [`VirtioDevice`]: its type, queue sizes, features, configuration space,
//! and what to do when the driver has finished setting it up ([`VirtioDevice::activate`]) or
//! resets it ([`VirtioDevice::reset`]). It does not know how the guest reaches it: a transport
//! wraps a `dyn VirtioDevice`, owns the registers the driver programs, and hands the device
//! its queues and a [`VirtioInterrupt`] when the driver sets `DRIVER_OK`. petrel has one
//! transport, [`mmio::MmioTransport`] (virtio-mmio, version 2); a PCI transport can sit
//! beside it later without device changes.
//!
//! The split queues themselves are the `virtio-queue` crate's [`Queue`]. The rust-vmm
//! `virtio-device` crate, which has a similar device trait, is not published on crates.io,
//! so petrel defines its own, small one here.
//!
//! # Notifications and interrupts
//!
//! - **Driver → device.** The transport creates one [`EventFd`] per queue. The VMM registers
//!   each as a KVM ioeventfd on the queue-notify register (see
//!   [`mmio::queue_notify_address`] and [`mmio::MmioTransport::queue_events`]), so a guest
//!   notification completes inside KVM and only wakes the event loop; a notification that
//!   reaches the transport anyway (no ioeventfd) is forwarded to the same eventfd. The device
//!   gets the eventfds in [`ActiveQueue::notify`] and watches them from the VMM's event loop.
//! - **Device → driver.** The device calls [`VirtioInterrupt::trigger`]; the transport's
//!   implementation records the reason where the driver reads it (the MMIO InterruptStatus
//!   register) and raises its [`InterruptLine`](crate::interrupt::InterruptLine), which the
//!   VMM backs with an irqfd.
//!
//! Devices never see a KVM handle.
//!
//! # What the devices share
//!
//! - **The queue lifecycle** (`device_queues`): every device keeps one `DeviceQueues`, built
//!   with its number of queues and the queues whose eventfds the event loop should watch. It
//!   checks activation (that many queues, every one ready), follows `disable_queue` and
//!   `reset`, holds the queues, guest memory, interrupt and "broken" flag, writes a
//!   state-change eventfd on activation and reset, and on that event (re)registers the
//!   current activation's queue eventfds with `event-manager`. It tells the device which
//!   event it got (a state change, queue *i*, or an fd it does not own, which virtio-net
//!   checks against its TAP and virtio-vsock against its epoll instance), raises the queue
//!   interrupt after a batch and reports `DEVICE_NEEDS_RESET` when a queue breaks.
//!   virtio-blk and virtio-rng are its one-queue case.
//! - **Chains** (`chain`): copying a descriptor chain defensively, taking the next available
//!   chain, the faults every device can meet in a queue or chain (`QueueFault`, which each
//!   device's own fault type wraps), checking a receive chain's writable buffers and
//!   scattering bytes across them, and logging a guest's bad requests (the first at warning
//!   level, the rest at debug level).
//! - A configuration space is a byte array read at an offset, zero past its end
//!   (`read_config_bytes`).
//!
//! # Devices
//!
//! - [`block`]: virtio-blk backed by a raw image file.
//! - [`net`]: virtio-net backed by a host TAP device.
//! - [`rng`]: virtio-rng (entropy) backed by the host's `getrandom(2)`.
//! - [`vsock`]: virtio-vsock (host/guest stream sockets) with Firecracker's hybrid Unix-socket
//!   model.
//!
//! # Wiring a device into a VMM
//!
//! All of it happens in one place, before the vCPUs start: the device, its transport on the
//! MMIO bus, an ioeventfd per queue, the irqfd, the event-loop subscription, and the kernel
//! command line.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
//! use petrel_devices::bus::Bus;
//! use petrel_devices::virtio::block::{Block, BlockConfig};
//! use petrel_devices::virtio::mmio::{
//!     kernel_cmdline_entry, queue_notify_address, MmioTransport, VIRTIO_MMIO_WINDOW,
//! };
//! use petrel_memory::vm_memory::GuestAddress;
//! use petrel_memory::GuestMemoryMmap;
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! # let image = std::env::temp_dir().join(format!("petrel-doc-{}.img", std::process::id()));
//! # std::fs::write(&image, vec![0u8; 1 << 20])?;
//! let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)])?;
//! let (base, irq) = (0xd000_0000, 5); // from the VMM's resource allocator
//!
//! // The device: --disk path=FILE,id=root
//! let block = Arc::new(Mutex::new(Block::new(BlockConfig {
//!     path: image.clone(),
//!     read_only: false,
//!     id: Some("root".into()),
//! })?));
//!
//! // Its transport on the MMIO bus. With KVM, `irqfd` is registered with KVM_IRQFD for `irq`.
//! let irqfd = Arc::new(EventFd::new(EFD_NONBLOCK)?);
//! let transport = MmioTransport::new(mem.clone(), block.clone(), irqfd)?;
//! for (queue, event) in transport.queue_events()? {
//!     // With KVM: vm.register_ioevent(&event, &IoEventAddress::Mmio(addr), u32::from(queue))
//!     let addr = queue_notify_address(base);
//!     # let _ = (queue, event, addr);
//! }
//! let mut mmio = Bus::new();
//! mmio.insert_named(Arc::new(Mutex::new(transport)), base, VIRTIO_MMIO_WINDOW, "virtio-blk")?;
//!
//! // The device's queue work runs on the event loop.
//! let mut event_loop: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
//!     EventManager::new()?;
//! event_loop.add_subscriber(block);
//!
//! // Without ACPI or a device tree, Linux learns about the device from its command line.
//! assert_eq!(kernel_cmdline_entry(base, irq), "virtio_mmio.device=4K@0xd0000000:5");
//! # std::fs::remove_file(&image)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod block;
pub(crate) mod chain;
mod device_queues;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::io;
use std::sync::Arc;

use thiserror::Error;
use virtio_bindings::virtio_config;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use petrel_memory::GuestMemoryMmap;

/// Device type of a block device (virtio 1.2, section 5).
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// Device type of a network card (virtio-net; virtio 1.2, section 5).
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// Device type of an entropy source (virtio-rng; virtio 1.2, section 5).
pub const TYPE_RNG: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
/// Device type of a socket device (virtio-vsock; virtio 1.2, section 5).
pub const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;

/// Device status bit: the guest has noticed the device.
pub const STATUS_ACKNOWLEDGE: u32 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
/// Device status bit: the guest knows how to drive the device.
pub const STATUS_DRIVER: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER;
/// Device status bit: the driver has accepted features; set by the driver, kept by the device
/// only if it accepts them.
pub const STATUS_FEATURES_OK: u32 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK;
/// Device status bit: the driver is set up and the device is live.
pub const STATUS_DRIVER_OK: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
/// Device status bit, set by the device: it hit an error it cannot recover from without a
/// reset.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = virtio_config::VIRTIO_CONFIG_S_FAILED;

/// Feature mask of `VIRTIO_F_VERSION_1` (bit 32): virtio 1.x, not legacy. Required.
pub const FEATURE_VERSION_1: u64 = 1 << virtio_config::VIRTIO_F_VERSION_1;
/// Feature mask of `VIRTIO_RING_F_INDIRECT_DESC` (bit 28).
pub const FEATURE_RING_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Feature mask of `VIRTIO_RING_F_EVENT_IDX` (bit 29). A transport that sees it negotiated
/// enables event-index suppression on the device's queues.
pub const FEATURE_RING_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The largest queue size virtio allows for a split queue.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Why a device raises its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VirtioInterruptKind {
    /// The device put buffers in a used ring.
    Queue,
    /// The device changed its configuration space (or needs a reset).
    Config,
}

/// How a device interrupts its driver, implemented by the transport.
///
/// Calls take no lock the transport's register accesses hold, so a device may call them
/// while its own mutex is held (see the lock order in [`mmio`]).
pub trait VirtioInterrupt: Send + Sync {
    /// Records why the device interrupts, where the driver will look, and raises the
    /// interrupt line. For [`VirtioInterruptKind::Config`] the transport also moves the
    /// configuration generation on, so a driver reading the configuration space across the
    /// change notices it.
    fn trigger(&self, kind: VirtioInterruptKind) -> io::Result<()>;

    /// The device entered a state it cannot leave without a reset (for example, the driver
    /// published more buffers than its queue holds). The transport sets
    /// `DEVICE_NEEDS_RESET` in the device status and sends a configuration interrupt, as
    /// virtio 1.2 section 2.1.2 asks. The device should stop using its queues.
    fn set_needs_reset(&self) -> io::Result<()>;
}

/// A queue the driver has set up, as a device receives it on activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue, configured with the driver's size and ring addresses (already checked to
    /// lie inside guest memory). If the driver did not enable it, `queue.ready()` is false.
    pub queue: Queue,
    /// Signalled each time the driver notifies this queue. Non-blocking.
    pub notify: EventFd,
}

/// Why a device refused to start.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// The transport passed a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// The number of queues the device has.
        expected: usize,
        /// The number passed.
        got: usize,
    },
    /// The driver did not enable a queue the device needs.
    #[error("queue {index} was not enabled by the driver")]
    QueueNotReady {
        /// The queue's index.
        index: u16,
    },
    /// The device is already running.
    #[error("device is already active")]
    AlreadyActive,
    /// The device could not signal its event loop.
    #[error("cannot notify the event loop")]
    EventLoop(#[source] io::Error),
}

/// Fills `data` from a configuration space laid out in `config`, starting at `offset`; bytes
/// past the end of the space read as zero (what [`VirtioDevice::read_config`] asks).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(available) = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..))
    else {
        return;
    };
    let len = available.len().min(data.len());
    data[..len].copy_from_slice(&available[..len]);
}

/// A virtio device, independent of the transport that exposes it.
///
/// The transport calls these methods while the driver programs it, from vCPU threads,
/// with the device's mutex held. They must be quick: a vCPU is stopped meanwhile. The work
/// on queues happens elsewhere, normally on the VMM's event loop.
pub trait VirtioDevice: Send {
    /// The virtio device type ([`TYPE_BLOCK`], ...).
    fn device_type(&self) -> u32;

    /// The maximum size of each of the device's queues, one entry per queue. Each must be a
    /// power of two no larger than [`MAX_QUEUE_SIZE`].
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers. The transport adds [`FEATURE_VERSION_1`] and
    /// removes transport features it does not implement.
    fn avail_features(&self) -> u64;

    /// The features the driver accepted. Called once per initialisation, when the driver
    /// sets `FEATURES_OK` and the transport has checked that the set is a subset of what was
    /// offered and includes [`FEATURE_VERSION_1`].
    fn ack_features(&mut self, features: u64);

    /// Fills `data` from the device configuration space at `offset`. Bytes past the end of
    /// the space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver writes `data` into the configuration space at `offset`. Read-only fields
    /// and bytes past the end ignore the write.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device: the driver set `DRIVER_OK`. `queues` has one entry per queue in
    /// [`queue_max_sizes`](Self::queue_max_sizes), in order. An error makes the transport
    /// report `DEVICE_NEEDS_RESET` to the driver.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;

    /// The driver disabled queue `index` while the device runs (wrote 0 to QueueReady after
    /// DRIVER_OK; virtio-drivers does this before resetting a device, then frees the rings).
    /// Stop using that queue's rings; a reset follows.
    fn disable_queue(&mut self, index: u16);

    /// The driver reset the device (wrote 0 to the status): drop the queues, the interrupt
    /// and the accepted features, and return to the state after construction. Called on
    /// every reset, active or not. Returns whether the device could reset; if not, the
    /// transport reports `DEVICE_NEEDS_RESET`.
    fn reset(&mut self) -> bool;
}
