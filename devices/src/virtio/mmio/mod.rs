//! The virtio-mmio transport, version 2 (virtio 1.2 section 4.2.2): a [`VirtioDevice`] behind
//! a 4 KiB window of registers on the MMIO bus.
//!
//! # What the transport does
//!
//! - Identifies the device: magic `"virt"`, version 2, the device type, and vendor ID
//!   [`VENDOR_ID`] (`0x4c52_5450`, the bytes `"PTRL"` read as a little-endian word).
//! - Feature negotiation in 32-bit pages. The device's features are offered with
//!   `VIRTIO_F_VERSION_1` added and the transport features this transport does not
//!   implement removed (packed rings, notification data, queue reset, SR-IOV, admin queues,
//!   and the legacy `NOTIFY_ON_EMPTY` / `ANY_LAYOUT`). Driver features are taken only between
//!   DRIVER and FEATURES_OK. FEATURES_OK is kept only if the driver's features include
//!   `VIRTIO_F_VERSION_1` and nothing that was not offered; otherwise the bit reads back clear,
//!   as the spec asks. There is no legacy interface.
//! - The device status state machine (see the `status` module): any write that only adds bits,
//!   in the spec's order, is accepted (virtio-drivers 0.13 writes ACKNOWLEDGE | DRIVER in one
//!   write); writing 0 resets; FAILED is accepted at any time; anything else is ignored and
//!   logged once.
//! - Queue setup: size, enable, and the three ring addresses, taken between FEATURES_OK and
//!   DRIVER_OK (size and addresses also later while the queue is disabled). Writing 0 to
//!   QueueReady is accepted at any time and reads back 0; while the device runs, the device is
//!   told to stop using that queue ([`VirtioDevice::disable_queue`]): virtio-drivers 0.13 does
//!   this before it resets a device, and spins until it reads 0 back. Re-enabling a queue
//!   after DRIVER_OK needs `VIRTIO_F_RING_RESET`, which is not offered: ignored.
//!   When the driver sets DRIVER_OK, every enabled queue is checked (size a power of
//!   two no larger than the maximum, rings aligned and inside guest memory, through
//!   `virtio-queue`'s `is_valid`) and the device is activated. If a queue is invalid or the
//!   device refuses, the status gets DEVICE_NEEDS_RESET and a configuration interrupt is sent.
//! - Configuration space at [`CONFIG_SPACE_OFFSET`], any access width, with the
//!   ConfigGeneration counter moving on every driver write and every configuration interrupt.
//! - InterruptStatus / InterruptACK, backed by atomics shared with the device.
//!
//! Registers below the configuration space are 32 bits wide; other widths or unaligned
//! accesses read as 0 and are ignored (logged once).
//!
//! # Notifications
//!
//! The transport creates one non-blocking [`EventFd`] per queue. The VMM should register each
//! as a KVM ioeventfd at [`queue_notify_address`] with the queue index as datamatch
//! (a 4-byte write), so that a guest notification completes inside KVM: the vCPU never waits
//! for the device. [`MmioTransport::queue_events`] lists them. A notification that does reach
//! the transport (no ioeventfd registered) is written to the same eventfd, so the device sees
//! no difference. Interrupts go out through the [`InterruptLine`] given to
//! [`MmioTransport::new`] (an irqfd), edge-triggered; the driver finds the reason in
//! InterruptStatus.
//!
//! # Lock order
//!
//! The transport is a [`BusDevice`] behind the bus's per-device mutex; the device has its own
//! mutex, shared with the VMM's event loop:
//!
//! 1. the transport's mutex (a vCPU accessing a register);
//! 2. the device's mutex (the transport, for config space, features, status changes; the event
//!    loop, for queue work);
//! 3. the interrupt state: atomics and the interrupt line, no lock.
//!
//! The event loop never takes the transport's mutex, so there is no cycle. The registers a
//! driver touches while I/O is in flight (QueueNotify, InterruptStatus, InterruptACK,
//! ConfigGeneration, reading Status) do not take the device's mutex: a vCPU is never blocked
//! behind a request the event loop is executing. Configuration-space accesses and status
//! changes do take it, and may wait for the batch of requests being processed; drivers make
//! those at set-up, on configuration changes and on reset.

mod interrupt;
mod status;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;
use virtio_bindings::virtio_config;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use self::interrupt::MmioInterrupt;
pub use self::interrupt::{INT_CONFIG, INT_VRING};
use self::status::{status_write, StatusWrite};
use super::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, FEATURE_RING_EVENT_IDX,
    FEATURE_VERSION_1, MAX_QUEUE_SIZE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK,
};
use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;
use petrel_memory::GuestMemoryMmap;

/// Size of a virtio-mmio device's register window on the MMIO bus.
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// The MagicValue register: `"virt"` in little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The Version register: 2, the virtio 1.x ("modern") virtio-mmio interface.
pub const MMIO_VERSION: u32 = 2;
/// The VendorID register: the bytes `"PTRL"` read as a little-endian word.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"PTRL");
/// Offset of the QueueNotify register in the window.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;
/// Offset of the device configuration space in the window.
pub const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// The guest-physical address of the QueueNotify register of a device whose window starts at
/// `base`: where to register the queues' ioeventfds (4-byte writes, datamatch = queue index).
pub fn queue_notify_address(base: u64) -> u64 {
    base + QUEUE_NOTIFY_OFFSET
}

/// The kernel command-line parameter that tells Linux's virtio-mmio driver about a device
/// whose window starts at `base` and whose interrupt is `irq` (needs
/// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), e.g. `virtio_mmio.device=4K@0xd0000000:5`.
pub fn kernel_cmdline_entry(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{irq}",
        VIRTIO_MMIO_WINDOW / 1024
    )
}

// Register offsets (virtio 1.2, table 4.1).
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_QUEUE_RESET: u64 = 0x0c0;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// Feature bits this transport does not implement; never offered.
const UNSUPPORTED_TRANSPORT_FEATURES: u64 = (1 << virtio_config::VIRTIO_F_NOTIFY_ON_EMPTY)
    | (1 << virtio_config::VIRTIO_F_ANY_LAYOUT)
    | (1 << virtio_config::VIRTIO_F_RING_PACKED)
    | (1 << virtio_config::VIRTIO_F_SR_IOV)
    | (1 << virtio_config::VIRTIO_F_NOTIFICATION_DATA)
    | (1 << virtio_config::VIRTIO_F_NOTIF_CONFIG_DATA)
    | (1 << virtio_config::VIRTIO_F_RING_RESET)
    | (1 << virtio_config::VIRTIO_F_ADMIN_VQ);

/// Required alignment of the descriptor table, available ring and used ring (virtio 1.2,
/// 2.7.2).
const DESC_ALIGN: u64 = 16;
const AVAIL_ALIGN: u64 = 2;
const USED_ALIGN: u64 = 4;

/// Errors of the virtio-mmio transport: setting it up, and (logged, never returned to the
/// guest) why the driver's queue setup was refused.
#[derive(Debug, Error)]
pub enum MmioError {
    /// The device declares a queue whose maximum size virtio does not allow.
    #[error("queue {index} has maximum size {size}; it must be a power of two from 1 to 32768")]
    InvalidMaxQueueSize {
        /// The queue's index.
        index: usize,
        /// Its declared maximum size.
        size: u16,
    },
    /// The device declares more queues than virtio-mmio can select.
    #[error("device has {count} queues, more than virtio-mmio can address")]
    TooManyQueues {
        /// The number of queues.
        count: usize,
    },
    /// A queue's notification eventfd could not be created or duplicated.
    #[error("cannot create a queue notification eventfd")]
    EventFd(#[source] io::Error),
    /// The driver set a queue size virtio does not allow.
    #[error("queue {index}: size {size} is not a power of two from 1 to {max}")]
    QueueSize {
        /// The queue's index.
        index: u16,
        /// The size the driver wrote.
        size: u32,
        /// The queue's maximum size.
        max: u16,
    },
    /// The driver placed a ring at a misaligned address.
    #[error("queue {index}: {ring} at {addr:#x} is not {align}-byte aligned")]
    QueueAlignment {
        /// The queue's index.
        index: u16,
        /// Which ring.
        ring: &'static str,
        /// Its address.
        addr: u64,
        /// The alignment virtio requires.
        align: u64,
    },
    /// The driver placed a ring outside guest memory.
    #[error("queue {index}: rings are not inside guest memory")]
    QueueMemory {
        /// The queue's index.
        index: u16,
    },
    /// The device refused to start.
    #[error("device refused to activate")]
    Activate(#[from] ActivateError),
}

/// The registers of one queue, as the driver programs them.
struct QueueRegisters {
    max_size: u16,
    /// QueueNum as written (checked on activation).
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
    notify: EventFd,
}

impl QueueRegisters {
    fn new(max_size: u16) -> Result<Self, MmioError> {
        Ok(Self {
            max_size,
            size: u32::from(max_size),
            ready: false,
            desc: 0,
            driver: 0,
            device: 0,
            notify: EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?,
        })
    }

    fn reset(&mut self) {
        self.size = u32::from(self.max_size);
        self.ready = false;
        self.desc = 0;
        self.driver = 0;
        self.device = 0;
        // Forget notifications from before the reset (EAGAIN: there were none).
        let _ = self.notify.read();
    }

    /// The queue as the device gets it; an enabled queue is checked against guest memory.
    fn build(
        &self,
        index: u16,
        mem: &GuestMemoryMmap,
        event_idx: bool,
    ) -> Result<ActiveQueue, MmioError> {
        // Cannot fail: the maximum was checked in `MmioTransport::new`.
        let mut queue = Queue::new(self.max_size).map_err(|_| MmioError::InvalidMaxQueueSize {
            index: usize::from(index),
            size: self.max_size,
        })?;
        if self.ready {
            let size = u16::try_from(self.size).ok();
            size.and_then(|size| queue.try_set_size(size).ok())
                .ok_or(MmioError::QueueSize {
                    index,
                    size: self.size,
                    max: self.max_size,
                })?;
            let misaligned = |ring, addr, align| MmioError::QueueAlignment {
                index,
                ring,
                addr,
                align,
            };
            queue
                .try_set_desc_table_address(GuestAddress(self.desc))
                .map_err(|_| misaligned("descriptor table", self.desc, DESC_ALIGN))?;
            queue
                .try_set_avail_ring_address(GuestAddress(self.driver))
                .map_err(|_| misaligned("available ring", self.driver, AVAIL_ALIGN))?;
            queue
                .try_set_used_ring_address(GuestAddress(self.device))
                .map_err(|_| misaligned("used ring", self.device, USED_ALIGN))?;
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            if !queue.is_valid(mem) {
                return Err(MmioError::QueueMemory { index });
            }
        }
        Ok(ActiveQueue {
            queue,
            notify: self.notify.try_clone().map_err(MmioError::EventFd)?,
        })
    }
}

/// Guest mistakes logged at warning level the first time only (then at debug level).
#[derive(Debug, Clone, Copy)]
enum Mistake {
    AccessSize,
    UnknownRegister,
    Status,
    FeaturesRefused,
    FeaturesOutOfState,
    QueueOutOfState,
    QueueNotify,
    Activation,
}

/// A virtio device on the MMIO bus, virtio-mmio version 2.
pub struct MmioTransport {
    mem: GuestMemoryMmap,
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<MmioInterrupt>,
    device_type: u32,
    offered_features: u64,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    /// The driver wrote a non-zero feature page beyond the first 64 bits.
    driver_features_beyond_64: bool,
    queue_select: u32,
    queues: Vec<QueueRegisters>,
    /// Driver-owned status bits (DEVICE_NEEDS_RESET lives in `interrupt`).
    status: u32,
    activated: bool,
    warned: u32,
}

impl MmioTransport {
    /// Puts `device` behind a virtio-mmio register window. `mem` is the guest memory its
    /// queues live in, `irq` the line its interrupts are raised on (an irqfd for the device's
    /// GSI). Creates one notification eventfd per queue.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        irq: Arc<dyn InterruptLine>,
    ) -> Result<Self, MmioError> {
        let (device_type, offered_features, max_sizes) = {
            let dev = lock(&device);
            (
                dev.device_type(),
                (dev.avail_features() | FEATURE_VERSION_1) & !UNSUPPORTED_TRANSPORT_FEATURES,
                dev.queue_max_sizes().to_vec(),
            )
        };
        if u16::try_from(max_sizes.len()).is_err() {
            return Err(MmioError::TooManyQueues {
                count: max_sizes.len(),
            });
        }
        let queues = max_sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
                    return Err(MmioError::InvalidMaxQueueSize { index, size });
                }
                QueueRegisters::new(size)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            mem,
            device,
            interrupt: Arc::new(MmioInterrupt::new(irq)),
            device_type,
            offered_features,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_features_beyond_64: false,
            queue_select: 0,
            queues,
            status: 0,
            activated: false,
            warned: 0,
        })
    }

    /// Each queue's index and a duplicate of its notification eventfd, for the VMM to
    /// register as ioeventfds at [`queue_notify_address`] with datamatch = the index.
    pub fn queue_events(&self) -> Result<Vec<(u16, EventFd)>, MmioError> {
        (0u16..)
            .zip(&self.queues)
            .map(|(index, queue)| {
                let event = queue.notify.try_clone().map_err(MmioError::EventFd)?;
                Ok((index, event))
            })
            .collect()
    }

    /// The device behind the transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The features offered to the driver.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | STATUS_DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// The InterruptStatus register.
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt.status()
    }

    /// Whether the device is running (the driver set DRIVER_OK and activation succeeded).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn warn(&mut self, mistake: Mistake, message: std::fmt::Arguments<'_>) {
        let bit = 1 << mistake as u32;
        if self.warned & bit == 0 {
            self.warned |= bit;
            log::warn!(
                "virtio-mmio (device type {}): {message} (logged once)",
                self.device_type
            );
        } else {
            log::debug!("virtio-mmio (device type {}): {message}", self.device_type);
        }
    }

    fn selected_queue(&self) -> Option<&QueueRegisters> {
        usize::try_from(self.queue_select)
            .ok()
            .and_then(|index| self.queues.get(index))
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features as u32,
                1 => (self.offered_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size)),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: a length of all ones means "no such region".
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH | REG_QUEUE_RESET => 0,
            REG_CONFIG_GENERATION => self.interrupt.generation(),
            // Write-only registers read as 0.
            REG_DEVICE_FEATURES_SEL
            | REG_DRIVER_FEATURES
            | REG_DRIVER_FEATURES_SEL
            | REG_QUEUE_SEL
            | REG_QUEUE_NUM
            | REG_QUEUE_NOTIFY
            | REG_INTERRUPT_ACK
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH
            | REG_SHM_SEL => 0,
            _ => {
                self.warn(
                    Mistake::UnknownRegister,
                    format_args!("read of unknown register {offset:#x}"),
                );
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.write_status(value),
            REG_SHM_SEL => {}
            _ => self.warn(
                Mistake::UnknownRegister,
                format_args!("write of {value:#x} to unknown or read-only register {offset:#x}"),
            ),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        let status = self.status;
        if status & (STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED) != STATUS_DRIVER {
            self.warn(
                Mistake::FeaturesOutOfState,
                format_args!(
                    "driver features written in status {status:#x}, ignored (only between DRIVER and FEATURES_OK)"
                ),
            );
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32);
            }
            // Nothing is offered there: a set bit makes the features unacceptable.
            _ => self.driver_features_beyond_64 |= value != 0,
        }
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & FEATURE_VERSION_1 != 0
            && self.driver_features & !self.offered_features == 0
            && !self.driver_features_beyond_64
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let status = self.status;
        let Some(queue) = usize::try_from(self.queue_select)
            .ok()
            .and_then(|index| self.queues.get_mut(index))
        else {
            let select = self.queue_select;
            self.warn(
                Mistake::QueueOutOfState,
                format_args!("write to register {offset:#x} of absent queue {select}, ignored"),
            );
            return;
        };
        if offset == REG_QUEUE_READY && value == 0 {
            // Disabling is always allowed (Linux does it after a reset, virtio-drivers while
            // the device runs, before resetting it), and the driver reads 0 back.
            if queue.ready && status & STATUS_DRIVER_OK != 0 && self.activated {
                let index = u16::try_from(self.queue_select).unwrap_or(u16::MAX);
                lock(&self.device).disable_queue(index);
            }
            queue.ready = false;
            return;
        }
        // Enabling is allowed between FEATURES_OK and DRIVER_OK (no queue reset after that);
        // the other registers then, or later while the queue is disabled.
        let configurable = status & STATUS_FEATURES_OK != 0 && status & STATUS_FAILED == 0;
        let allowed = if offset == REG_QUEUE_READY {
            configurable && status & STATUS_DRIVER_OK == 0
        } else {
            configurable && !queue.ready
        };
        if !allowed {
            let ready = queue.ready;
            self.warn(
                Mistake::QueueOutOfState,
                format_args!(
                    "write of {value:#x} to queue register {offset:#x} in status {status:#x} (queue ready: {ready}), ignored"
                ),
            );
            return;
        }
        let low = |reg: &mut u64| *reg = (*reg & !0xffff_ffff) | u64::from(value);
        let high = |reg: &mut u64| *reg = (*reg & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            REG_QUEUE_NUM => queue.size = value,
            REG_QUEUE_READY => queue.ready = value == 1,
            REG_QUEUE_DESC_LOW => low(&mut queue.desc),
            REG_QUEUE_DESC_HIGH => high(&mut queue.desc),
            REG_QUEUE_DRIVER_LOW => low(&mut queue.driver),
            REG_QUEUE_DRIVER_HIGH => high(&mut queue.driver),
            REG_QUEUE_DEVICE_LOW => low(&mut queue.device),
            REG_QUEUE_DEVICE_HIGH => high(&mut queue.device),
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        let Some(queue) = usize::try_from(value)
            .ok()
            .and_then(|index| self.queues.get(index))
        else {
            self.warn(
                Mistake::QueueNotify,
                format_args!("notification for absent queue {value}, ignored"),
            );
            return;
        };
        if let Err(e) = queue.notify.write(1) {
            log::warn!("virtio-mmio: cannot signal queue {value}: {e}");
        }
    }

    fn write_status(&mut self, value: u32) {
        let old = self.status;
        match status_write(old, value, self.features_acceptable()) {
            StatusWrite::Reset => self.reset(),
            StatusWrite::Ignore(why) => self.warn(
                Mistake::Status,
                format_args!(
                    "status write {value:#x} over {old:#x} ignored: {}",
                    why.reason()
                ),
            ),
            StatusWrite::Accept {
                status,
                features_refused,
            } => {
                self.status = status;
                if features_refused {
                    let features = self.driver_features;
                    let offered = self.offered_features;
                    self.warn(
                        Mistake::FeaturesRefused,
                        format_args!(
                            "FEATURES_OK refused: driver features {features:#x} (offered {offered:#x}; VERSION_1 is required)"
                        ),
                    );
                }
                let added = status & !old;
                if added & STATUS_FEATURES_OK != 0 {
                    let features = self.driver_features;
                    lock(&self.device).ack_features(features);
                }
                if added & STATUS_DRIVER_OK != 0 {
                    self.activate();
                }
            }
        }
    }

    fn activate(&mut self) {
        let result = self.build_queues().and_then(|queues| {
            let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
            lock(&self.device)
                .activate(self.mem.clone(), interrupt, queues)
                .map_err(MmioError::from)
        });
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                self.warn(
                    Mistake::Activation,
                    format_args!("cannot start the device, it needs a reset: {e}"),
                );
                if let Err(e) = self.interrupt.set_needs_reset() {
                    log::warn!("virtio-mmio: cannot raise the configuration interrupt: {e}");
                }
            }
        }
    }

    fn build_queues(&self) -> Result<Vec<ActiveQueue>, MmioError> {
        let event_idx = self.driver_features & FEATURE_RING_EVENT_IDX != 0;
        (0u16..)
            .zip(&self.queues)
            .map(|(index, queue)| queue.build(index, &self.mem, event_idx))
            .collect()
    }

    fn reset(&mut self) {
        if !lock(&self.device).reset() {
            log::warn!(
                "virtio-mmio (device type {}): the device cannot reset; it needs a reset",
                self.device_type
            );
            if let Err(e) = self.interrupt.set_needs_reset() {
                log::warn!("virtio-mmio: cannot raise the configuration interrupt: {e}");
            }
            return;
        }
        self.status = 0;
        self.activated = false;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_features_beyond_64 = false;
        self.queue_select = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.reset();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if let Some(config_offset) = offset.checked_sub(CONFIG_SPACE_OFFSET) {
            lock(&self.device).read_config(config_offset, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset % 4 == 0 => {
                *word = self.read_register(offset).to_le_bytes();
            }
            _ => {
                data.fill(0);
                self.warn(
                    Mistake::AccessSize,
                    format_args!(
                        "{}-byte read at register {offset:#x}, registers are 4 bytes",
                        data.len()
                    ),
                );
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some(config_offset) = offset.checked_sub(CONFIG_SPACE_OFFSET) {
            lock(&self.device).write_config(config_offset, data);
            self.interrupt.bump_generation();
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            _ => self.warn(
                Mistake::AccessSize,
                format_args!(
                    "{}-byte write at register {offset:#x} ignored, registers are 4 bytes",
                    data.len()
                ),
            ),
        }
    }
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status())
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

/// Locks the device; a poisoned mutex (a panic during an earlier access) is taken over, as the
/// bus does for its devices.
fn lock<'a>(
    device: &'a Mutex<dyn VirtioDevice + 'static>,
) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use vm_memory::Bytes;

    use super::*;
    use crate::interrupt::tests::CountingLine;
    use crate::test_log;
    use crate::virtio::block::{Block, BlockConfig};
    use crate::virtio::test_utils::{
        guest_memory, readable, writable, DriverQueue, TempImage, AVAIL_RING, DESC_TABLE, MEM_SIZE,
        USED_RING,
    };
    use crate::virtio::{VirtioInterruptKind, STATUS_ACKNOWLEDGE, STATUS_DRIVER, TYPE_BLOCK};

    const BASE: u64 = 0xd000_0000;
    const ACK: u32 = STATUS_ACKNOWLEDGE;
    const DRV: u32 = STATUS_DRIVER;
    const FOK: u32 = STATUS_FEATURES_OK;
    const DOK: u32 = STATUS_DRIVER_OK;
    const FEATURE_PACKED: u64 = 1 << 34;
    const FEATURE_NOTIFICATION_DATA: u64 = 1 << 38;

    /// One queue configuration the fake device was activated with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct SeenQueue {
        ready: bool,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
        event_idx: bool,
    }

    /// A device that records what the transport does to it.
    #[derive(Default)]
    struct FakeDevice {
        max_sizes: Vec<u16>,
        features: u64,
        config: Vec<u8>,
        acked: Vec<u64>,
        config_writes: Vec<(u64, Vec<u8>)>,
        activations: Vec<Vec<SeenQueue>>,
        interrupt: Option<Arc<dyn VirtioInterrupt>>,
        notify: Vec<EventFd>,
        refuse_activation: bool,
        refuse_reset: bool,
        resets: usize,
        disabled: Vec<u16>,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.max_sizes
        }
        fn avail_features(&self) -> u64 {
            self.features
        }
        fn ack_features(&mut self, features: u64) {
            self.acked.push(features);
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = usize::try_from(offset)
                    .ok()
                    .and_then(|o| self.config.get(o + i))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config_writes.push((offset, data.to_vec()));
        }
        fn activate(
            &mut self,
            _mem: GuestMemoryMmap,
            interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<ActiveQueue>,
        ) -> Result<(), ActivateError> {
            if self.refuse_activation {
                return Err(ActivateError::QueueNotReady { index: 0 });
            }
            self.activations.push(
                queues
                    .iter()
                    .map(|q| SeenQueue {
                        ready: q.queue.ready(),
                        size: q.queue.size(),
                        desc: q.queue.desc_table(),
                        avail: q.queue.avail_ring(),
                        used: q.queue.used_ring(),
                        event_idx: q.queue.event_idx_enabled(),
                    })
                    .collect(),
            );
            self.notify = queues.into_iter().map(|q| q.notify).collect();
            self.interrupt = Some(interrupt);
            Ok(())
        }
        fn disable_queue(&mut self, index: u16) {
            self.disabled.push(index);
        }
        fn reset(&mut self) -> bool {
            self.resets += 1;
            if self.refuse_reset {
                return false;
            }
            self.interrupt = None;
            self.notify.clear();
            true
        }
    }

    struct Setup {
        transport: MmioTransport,
        device: Arc<Mutex<FakeDevice>>,
        line: Arc<CountingLine>,
    }

    fn setup(max_sizes: &[u16], features: u64) -> Setup {
        let device = Arc::new(Mutex::new(FakeDevice {
            max_sizes: max_sizes.to_vec(),
            features,
            config: (0u8..16).collect(),
            ..FakeDevice::default()
        }));
        let line = Arc::new(CountingLine::default());
        let transport = MmioTransport::new(guest_memory(), device.clone(), line.clone()).unwrap();
        Setup {
            transport,
            device,
            line,
        }
    }

    fn r32(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut word = [0; 4];
        t.read(BASE, offset, &mut word);
        u32::from_le_bytes(word)
    }

    fn w32(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(BASE, offset, &value.to_le_bytes());
    }

    fn write_features(t: &mut MmioTransport, features: u64) {
        w32(t, REG_DRIVER_FEATURES_SEL, 0);
        w32(t, REG_DRIVER_FEATURES, features as u32);
        w32(t, REG_DRIVER_FEATURES_SEL, 1);
        w32(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    }

    fn read_features(t: &mut MmioTransport) -> u64 {
        w32(t, REG_DEVICE_FEATURES_SEL, 0);
        let low = r32(t, REG_DEVICE_FEATURES);
        w32(t, REG_DEVICE_FEATURES_SEL, 1);
        u64::from(low) | u64::from(r32(t, REG_DEVICE_FEATURES)) << 32
    }

    /// Linux's order: ACKNOWLEDGE, DRIVER, features, FEATURES_OK. Returns the status read
    /// back.
    fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
        w32(t, REG_STATUS, ACK);
        w32(t, REG_STATUS, ACK | DRV);
        write_features(t, features);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        r32(t, REG_STATUS)
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
        w32(t, REG_QUEUE_SEL, index);
        w32(t, REG_QUEUE_NUM, size);
        for (low, value) in [
            (REG_QUEUE_DESC_LOW, desc),
            (REG_QUEUE_DRIVER_LOW, avail),
            (REG_QUEUE_DEVICE_LOW, used),
        ] {
            w32(t, low, value as u32);
            w32(t, low + 4, (value >> 32) as u32);
        }
        w32(t, REG_QUEUE_READY, 1);
    }

    fn valid_queue(t: &mut MmioTransport, index: u32) {
        setup_queue(t, index, 16, DESC_TABLE, AVAIL_RING, USED_RING);
    }

    fn start(t: &mut MmioTransport) -> u32 {
        assert_eq!(negotiate(t, FEATURE_VERSION_1), ACK | DRV | FOK);
        valid_queue(t, 0);
        w32(t, REG_STATUS, ACK | DRV | FOK | DOK);
        r32(t, REG_STATUS)
    }

    #[test]
    fn the_device_identifies_itself_as_virtio_mmio_version_2() {
        let Setup { mut transport, .. } = setup(&[16], 0);
        let t = &mut transport;
        assert_eq!(r32(t, REG_MAGIC), 0x7472_6976);
        assert_eq!(&r32(t, REG_MAGIC).to_le_bytes(), b"virt");
        assert_eq!(r32(t, REG_VERSION), 2);
        assert_eq!(r32(t, REG_DEVICE_ID), 42);
        assert_eq!(r32(t, REG_VENDOR_ID), 0x4c52_5450);
        assert_eq!(&r32(t, REG_VENDOR_ID).to_le_bytes(), b"PTRL");
        assert_eq!(r32(t, REG_STATUS), 0);
        assert_eq!(r32(t, REG_CONFIG_GENERATION), 0);
        assert_eq!(r32(t, REG_SHM_LEN_LOW), u32::MAX, "no shared memory");
        assert_eq!(queue_notify_address(BASE), 0xd000_0050);
        assert_eq!(
            kernel_cmdline_entry(BASE, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }

    #[test]
    fn features_are_offered_with_version_1_and_without_unimplemented_transport_bits() {
        let Setup { mut transport, .. } =
            setup(&[16], 0x3 | FEATURE_PACKED | FEATURE_NOTIFICATION_DATA);
        let t = &mut transport;
        assert_eq!(read_features(t), 0x3 | FEATURE_VERSION_1);
        assert_eq!(t.offered_features(), 0x3 | FEATURE_VERSION_1);
        w32(t, REG_DEVICE_FEATURES_SEL, 2);
        assert_eq!(r32(t, REG_DEVICE_FEATURES), 0);
    }

    #[test]
    fn features_without_version_1_leave_features_ok_clear() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16], 0x3);
        let t = &mut transport;
        // A legacy driver accepting only the device bits.
        assert_eq!(negotiate(t, 0x3), ACK | DRV, "FEATURES_OK reads back clear");
        assert!(device.lock().unwrap().acked.is_empty());
        // DRIVER_OK cannot follow.
        w32(t, REG_STATUS, ACK | DRV | FOK | DOK);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV);
        // With VERSION_1 the same driver gets through.
        write_features(t, 0x3 | FEATURE_VERSION_1);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV | FOK);
        assert_eq!(device.lock().unwrap().acked, [0x3 | FEATURE_VERSION_1]);
    }

    #[test]
    fn features_that_were_not_offered_leave_features_ok_clear() {
        let Setup { mut transport, .. } = setup(&[16], 0x1);
        let t = &mut transport;
        assert_eq!(negotiate(t, FEATURE_VERSION_1 | 0x2), ACK | DRV);
        assert_eq!(negotiate(t, FEATURE_VERSION_1 | FEATURE_PACKED), ACK | DRV);
        // A bit in the third feature page.
        write_features(t, FEATURE_VERSION_1);
        w32(t, REG_DRIVER_FEATURES_SEL, 2);
        w32(t, REG_DRIVER_FEATURES, 1);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV);
        // Only a reset forgets it.
        w32(t, REG_STATUS, 0);
        assert_eq!(negotiate(t, FEATURE_VERSION_1 | 0x1), ACK | DRV | FOK);
    }

    #[test]
    fn driver_features_are_taken_only_between_driver_and_features_ok() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16], 0x1);
        let t = &mut transport;
        write_features(t, FEATURE_VERSION_1 | 0x1); // before DRIVER: ignored
        w32(t, REG_STATUS, ACK | DRV);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV, "nothing was accepted");
        write_features(t, FEATURE_VERSION_1);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        write_features(t, FEATURE_VERSION_1 | 0x1); // after FEATURES_OK: ignored
        assert_eq!(device.lock().unwrap().acked, [FEATURE_VERSION_1]);
        valid_queue(t, 0);
        w32(t, REG_STATUS, 0xf);
        assert_eq!(r32(t, REG_STATUS), 0xf);
    }

    #[test]
    fn virtio_drivers_0_13_acknowledge_driver_in_one_write_starts_the_device() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16], 0);
        let t = &mut transport;
        // virtio-drivers 0.13 `begin_init`: reset, then ACKNOWLEDGE | DRIVER in one write
        // (Firecracker refuses this write).
        w32(t, REG_STATUS, 0);
        w32(t, REG_STATUS, ACK | DRV);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV);
        let offered = read_features(t);
        write_features(t, offered);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV | FOK);
        valid_queue(t, 0);
        w32(t, REG_STATUS, ACK | DRV | FOK | DOK);
        assert_eq!(r32(t, REG_STATUS), 0xf);
        assert!(t.is_activated());
        assert_eq!(device.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn status_writes_in_a_wrong_order_are_ignored_and_logged_once() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16], 0);
        let t = &mut transport;
        let logs = test_log::capture(|| {
            w32(t, REG_STATUS, DRV); // DRIVER before ACKNOWLEDGE
            assert_eq!(r32(t, REG_STATUS), 0);
            w32(t, REG_STATUS, ACK | FOK); // FEATURES_OK before DRIVER
            assert_eq!(r32(t, REG_STATUS), 0);
            w32(t, REG_STATUS, ACK | DRV);
            w32(t, REG_STATUS, ACK | DRV | DOK); // DRIVER_OK before FEATURES_OK
            assert_eq!(r32(t, REG_STATUS), ACK | DRV);
            w32(t, REG_STATUS, ACK); // clearing DRIVER
            assert_eq!(r32(t, REG_STATUS), ACK | DRV);
        });
        let warnings: Vec<_> = logs.iter().filter(|l| l.starts_with("WARN")).collect();
        assert_eq!(warnings.len(), 1, "{logs:?}");
        assert!(warnings[0].contains("out of order"), "{warnings:?}");
        assert!(device.lock().unwrap().activations.is_empty());
        // FAILED is always accepted; then only a reset is.
        w32(t, REG_STATUS, ACK | DRV | STATUS_FAILED);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV | STATUS_FAILED);
        w32(t, REG_STATUS, ACK | DRV | STATUS_FAILED | FOK);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV | STATUS_FAILED);
        w32(t, REG_STATUS, 0);
        assert_eq!(r32(t, REG_STATUS), 0);
    }

    #[test]
    fn driver_ok_hands_the_device_its_checked_queues() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16, 8], FEATURE_RING_EVENT_IDX);
        let t = &mut transport;
        w32(t, REG_QUEUE_SEL, 1);
        assert_eq!((r32(t, REG_QUEUE_NUM_MAX), r32(t, REG_QUEUE_READY)), (8, 0));
        w32(t, REG_QUEUE_SEL, 2);
        assert_eq!(r32(t, REG_QUEUE_NUM_MAX), 0, "no such queue");
        assert_eq!(
            negotiate(t, FEATURE_VERSION_1 | FEATURE_RING_EVENT_IDX),
            ACK | DRV | FOK
        );
        // Queue 1 is left disabled.
        setup_queue(t, 0, 8, 0x1000, 0x2000, 0x3000);
        w32(t, REG_QUEUE_SEL, 0);
        assert_eq!(r32(t, REG_QUEUE_READY), 1);
        w32(t, REG_STATUS, 0xf);
        assert_eq!(r32(t, REG_STATUS), 0xf);
        let dev = device.lock().unwrap();
        assert_eq!(
            dev.activations,
            [vec![
                SeenQueue {
                    ready: true,
                    size: 8,
                    desc: 0x1000,
                    avail: 0x2000,
                    used: 0x3000,
                    event_idx: true,
                },
                SeenQueue {
                    ready: false,
                    size: 8,
                    desc: 0,
                    avail: 0,
                    used: 0,
                    event_idx: false,
                },
            ]]
        );
    }

    #[test]
    fn notifications_reach_the_queue_eventfd_with_or_without_an_ioeventfd() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16, 16], 0);
        let events = transport.queue_events().unwrap();
        assert_eq!(events.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
        let t = &mut transport;
        assert_eq!(negotiate(t, FEATURE_VERSION_1), ACK | DRV | FOK);
        valid_queue(t, 0);
        valid_queue(t, 1);
        w32(t, REG_STATUS, 0xf);
        // No ioeventfd: the write reaches the transport, which signals the eventfd.
        w32(t, REG_QUEUE_NOTIFY, 1);
        let dev = device.lock().unwrap();
        assert_eq!(dev.notify[1].read().unwrap(), 1);
        assert!(dev.notify[0].read().is_err(), "queue 0 was not notified");
        // With an ioeventfd, KVM writes the VMM's duplicate: the device sees the same.
        events[0].1.write(1).unwrap();
        assert_eq!(dev.notify[0].read().unwrap(), 1);
        drop(dev);
        // A notification for a queue that does not exist is ignored.
        w32(t, REG_QUEUE_NOTIFY, 7);
    }

    /// Sets up queue 0 with `setup_queue`'s arguments, sets DRIVER_OK, and checks that the
    /// device was not started and reports DEVICE_NEEDS_RESET with a config interrupt.
    fn assert_queue_refused(size: u32, desc: u64, avail: u64, used: u64) {
        let Setup {
            mut transport,
            device,
            line,
        } = setup(&[16], 0);
        let t = &mut transport;
        assert_eq!(negotiate(t, FEATURE_VERSION_1), ACK | DRV | FOK);
        setup_queue(t, 0, size, desc, avail, used);
        w32(t, REG_STATUS, 0xf);
        assert_eq!(
            r32(t, REG_STATUS),
            0xf | STATUS_DEVICE_NEEDS_RESET,
            "size {size} desc {desc:#x} avail {avail:#x} used {used:#x}"
        );
        assert!(!t.is_activated());
        assert!(device.lock().unwrap().activations.is_empty());
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(line.take(), 1);
        assert_eq!(r32(t, REG_CONFIG_GENERATION), 1);
        // A reset clears the error and a valid setup works.
        w32(t, REG_STATUS, 0);
        assert_eq!((r32(t, REG_STATUS), r32(t, REG_INTERRUPT_STATUS)), (0, 0));
        assert_eq!(start(t), 0xf);
        assert_eq!(device.lock().unwrap().activations.len(), 1);
    }

    #[test]
    fn queue_sizes_that_are_not_a_power_of_two_up_to_the_maximum_are_refused() {
        for size in [0, 3, 100, 32, 1 << 16] {
            assert_queue_refused(size, DESC_TABLE, AVAIL_RING, USED_RING);
        }
    }

    #[test]
    fn misaligned_rings_are_refused() {
        assert_queue_refused(16, DESC_TABLE + 8, AVAIL_RING, USED_RING);
        assert_queue_refused(16, DESC_TABLE, AVAIL_RING + 1, USED_RING);
        assert_queue_refused(16, DESC_TABLE, AVAIL_RING, USED_RING + 2);
    }

    #[test]
    fn rings_outside_guest_memory_are_refused() {
        assert_queue_refused(16, MEM_SIZE - 16 * 8, AVAIL_RING, USED_RING);
        assert_queue_refused(16, DESC_TABLE, MEM_SIZE - 4, USED_RING);
        assert_queue_refused(16, DESC_TABLE, AVAIL_RING, MEM_SIZE - 64);
        assert_queue_refused(16, DESC_TABLE, AVAIL_RING, 1 << 40);
        assert_queue_refused(16, !0xf, AVAIL_RING, USED_RING);
    }

    #[test]
    fn a_device_that_refuses_to_start_needs_a_reset() {
        let Setup {
            mut transport,
            device,
            line,
        } = setup(&[16], 0);
        device.lock().unwrap().refuse_activation = true;
        assert_eq!(start(&mut transport), 0xf | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!((transport.interrupt_status(), line.take()), (INT_CONFIG, 1));
    }

    #[test]
    fn queue_registers_are_taken_only_between_features_ok_and_driver_ok() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16], 0);
        let t = &mut transport;
        w32(t, REG_STATUS, ACK | DRV);
        setup_queue(t, 0, 8, 0x1000, 0x2000, 0x3000); // too early
        assert_eq!(r32(t, REG_QUEUE_READY), 0);
        write_features(t, FEATURE_VERSION_1);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        valid_queue(t, 0);
        w32(t, REG_STATUS, 0xf);
        setup_queue(t, 0, 8, 0x1000, 0x2000, 0x3000); // too late: the queue is live
        assert_eq!(r32(t, REG_QUEUE_READY), 1);
        assert_eq!(device.lock().unwrap().activations[0][0].size, 16);
        assert!(device.lock().unwrap().disabled.is_empty());
        // Write-only queue registers read as zero.
        assert_eq!(r32(t, REG_QUEUE_NUM), 0);
        assert_eq!(r32(t, REG_QUEUE_DESC_LOW), 0);
    }

    #[test]
    fn virtio_drivers_0_13_unsets_a_queue_while_running_and_reads_back_not_ready() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16, 16], 0);
        let t = &mut transport;
        assert_eq!(negotiate(t, FEATURE_VERSION_1), ACK | DRV | FOK);
        valid_queue(t, 0);
        valid_queue(t, 1);
        w32(t, REG_STATUS, 0xf);
        // `VirtIOBlk::drop` -> `MmioTransport::queue_unset` (Modern), with DRIVER_OK set:
        w32(t, REG_QUEUE_SEL, 1);
        w32(t, REG_QUEUE_READY, 0);
        assert_eq!(
            r32(t, REG_QUEUE_READY),
            0,
            "the driver spins until it reads 0"
        );
        let logs = test_log::capture(|| {
            for reg in [
                REG_QUEUE_NUM,
                REG_QUEUE_DESC_LOW,
                REG_QUEUE_DESC_HIGH,
                REG_QUEUE_DRIVER_LOW,
                REG_QUEUE_DRIVER_HIGH,
                REG_QUEUE_DEVICE_LOW,
                REG_QUEUE_DEVICE_HIGH,
            ] {
                w32(t, reg, 0);
            }
        });
        assert!(logs.iter().all(|l| !l.starts_with("WARN")), "{logs:?}");
        assert_eq!(device.lock().unwrap().disabled, [1]);
        w32(t, REG_QUEUE_SEL, 0);
        assert_eq!(r32(t, REG_QUEUE_READY), 1, "queue 0 is untouched");
        // Disabling twice tells the device once; re-enabling after DRIVER_OK is refused.
        w32(t, REG_QUEUE_SEL, 1);
        w32(t, REG_QUEUE_READY, 0);
        w32(t, REG_QUEUE_READY, 1);
        assert_eq!(r32(t, REG_QUEUE_READY), 0);
        assert_eq!(device.lock().unwrap().disabled, [1]);
        // Then `MmioTransport::drop`: status 0.
        w32(t, REG_STATUS, 0);
        assert_eq!(device.lock().unwrap().resets, 1);
        assert_eq!(start(t), 0xf);
    }

    #[test]
    fn config_space_accesses_reach_the_device_and_move_the_generation() {
        let Setup {
            mut transport,
            device,
            line,
        } = setup(&[16], 0);
        let t = &mut transport;
        let mut byte = [0];
        t.read(BASE, CONFIG_SPACE_OFFSET + 5, &mut byte);
        assert_eq!(byte, [5]);
        let mut half = [0; 2];
        t.read(BASE, CONFIG_SPACE_OFFSET + 2, &mut half);
        assert_eq!(half, [2, 3]);
        assert_eq!(
            r32(t, CONFIG_SPACE_OFFSET + 4),
            u32::from_le_bytes([4, 5, 6, 7])
        );
        let mut quad = [0; 8];
        t.read(BASE, CONFIG_SPACE_OFFSET + 8, &mut quad);
        assert_eq!(quad, [8, 9, 10, 11, 12, 13, 14, 15]);
        t.read(BASE, VIRTIO_MMIO_WINDOW - 4, &mut half);
        assert_eq!(half, [0, 0], "past the device's space");

        let generation = r32(t, REG_CONFIG_GENERATION);
        t.write(BASE, CONFIG_SPACE_OFFSET + 3, &[0xaa, 0xbb]);
        assert_eq!(
            device.lock().unwrap().config_writes,
            [(3, vec![0xaa, 0xbb])]
        );
        assert_eq!(r32(t, REG_CONFIG_GENERATION), generation + 1);

        // A device that changes its configuration sends a config interrupt: the generation
        // moves on before the driver hears of it.
        assert_eq!(start(t), 0xf);
        let irq = device.lock().unwrap().interrupt.clone().unwrap();
        irq.trigger(VirtioInterruptKind::Config).unwrap();
        assert_eq!(r32(t, REG_CONFIG_GENERATION), generation + 2);
        assert_eq!((r32(t, REG_INTERRUPT_STATUS), line.take()), (INT_CONFIG, 1));
    }

    #[test]
    fn interrupt_status_is_set_by_the_device_and_cleared_by_the_driver() {
        let Setup {
            mut transport,
            device,
            line,
        } = setup(&[16], 0);
        let t = &mut transport;
        assert_eq!(start(t), 0xf);
        let irq = device.lock().unwrap().interrupt.clone().unwrap();
        irq.trigger(VirtioInterruptKind::Queue).unwrap();
        assert_eq!((r32(t, REG_INTERRUPT_STATUS), line.take()), (INT_VRING, 1));
        irq.trigger(VirtioInterruptKind::Config).unwrap();
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
        w32(t, REG_INTERRUPT_ACK, INT_VRING);
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), INT_CONFIG);
        w32(t, REG_INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), 0);
        // A device in trouble.
        irq.set_needs_reset().unwrap();
        assert_eq!(r32(t, REG_STATUS), 0xf | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), INT_CONFIG);
        // The driver writing the bit back (plus FAILED) does not make it the driver's.
        w32(
            t,
            REG_STATUS,
            0xf | STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED,
        );
        assert_eq!(r32(t, REG_STATUS), 0xff & !0x30);
        w32(t, REG_STATUS, 0);
        assert_eq!(r32(t, REG_STATUS), 0);
    }

    #[test]
    fn reset_returns_the_transport_and_device_to_their_initial_state() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16], 0x1);
        let t = &mut transport;
        assert_eq!(start(t), 0xf);
        let irq = device.lock().unwrap().interrupt.clone().unwrap();
        irq.trigger(VirtioInterruptKind::Queue).unwrap();
        w32(t, REG_QUEUE_NOTIFY, 0);
        let events = t.queue_events().unwrap();
        w32(t, REG_STATUS, 0);
        assert_eq!(device.lock().unwrap().resets, 1);
        assert_eq!(r32(t, REG_STATUS), 0);
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), 0);
        assert!(!t.is_activated());
        w32(t, REG_QUEUE_SEL, 0);
        assert_eq!(r32(t, REG_QUEUE_READY), 0);
        assert!(
            events[0].1.read().is_err(),
            "stale notifications are dropped"
        );
        // The driver must negotiate again: the old features are gone.
        w32(t, REG_STATUS, ACK | DRV);
        w32(t, REG_STATUS, ACK | DRV | FOK);
        assert_eq!(r32(t, REG_STATUS), ACK | DRV);
        // A second initialisation works.
        w32(t, REG_STATUS, 0);
        assert_eq!(start(t), 0xf);
        assert_eq!(device.lock().unwrap().activations.len(), 2);
    }

    #[test]
    fn a_device_that_cannot_reset_reports_needs_reset() {
        let Setup {
            mut transport,
            device,
            line,
        } = setup(&[16], 0);
        let t = &mut transport;
        assert_eq!(start(t), 0xf);
        device.lock().unwrap().refuse_reset = true;
        w32(t, REG_STATUS, 0);
        assert_eq!(r32(t, REG_STATUS), 0xf | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(line.take(), 1);
        device.lock().unwrap().refuse_reset = false;
        w32(t, REG_STATUS, 0);
        assert_eq!(r32(t, REG_STATUS), 0);
    }

    #[test]
    fn odd_accesses_read_zero_change_nothing_and_are_logged_once() {
        let Setup { mut transport, .. } = setup(&[16], 0);
        let t = &mut transport;
        let logs = test_log::capture(|| {
            let mut half = [0xff; 2];
            t.read(BASE, REG_MAGIC, &mut half);
            assert_eq!(half, [0, 0]);
            let mut quad = [0xff; 8];
            t.read(BASE, REG_MAGIC, &mut quad);
            assert_eq!(quad, [0; 8]);
            t.write(BASE, REG_STATUS, &[ACK as u8]);
            let mut word = [0xff; 4];
            t.read(BASE, REG_STATUS + 1, &mut word);
            assert_eq!(word, [0; 4]);
        });
        assert_eq!(r32(t, REG_STATUS), 0, "the 1-byte status write was ignored");
        assert_eq!(
            logs.iter().filter(|l| l.starts_with("WARN")).count(),
            1,
            "{logs:?}"
        );

        let logs = test_log::capture(|| {
            assert_eq!(r32(t, 0x0f0), 0);
            w32(t, 0x0f0, 1);
            w32(t, REG_MAGIC, 1);
            w32(t, REG_QUEUE_RESET, 1);
        });
        assert_eq!(
            logs.iter().filter(|l| l.starts_with("WARN")).count(),
            1,
            "{logs:?}"
        );
        assert_eq!(r32(t, REG_MAGIC), MMIO_MAGIC);
        assert_eq!(r32(t, REG_QUEUE_RESET), 0);
    }

    #[test]
    fn devices_with_impossible_queues_are_refused() {
        for sizes in [vec![0u16], vec![16, 100], vec![u16::MAX]] {
            let device = Arc::new(Mutex::new(FakeDevice {
                max_sizes: sizes.clone(),
                ..FakeDevice::default()
            }));
            let err = MmioTransport::new(guest_memory(), device, Arc::new(CountingLine::default()))
                .unwrap_err();
            assert!(
                matches!(err, MmioError::InvalidMaxQueueSize { .. }),
                "{sizes:?}"
            );
        }
    }

    #[test]
    fn notify_and_interrupt_registers_never_wait_for_the_device() {
        let Setup {
            mut transport,
            device,
            ..
        } = setup(&[16], 0);
        assert_eq!(start(&mut transport), 0xf);
        let irq = device.lock().unwrap().interrupt.clone().unwrap();
        // The event loop holds the device's lock while it runs requests.
        let busy = device.lock().unwrap();
        let (done, finished) = mpsc::channel();
        let vcpu = std::thread::spawn(move || {
            let t = &mut transport;
            w32(t, REG_QUEUE_NOTIFY, 0);
            irq.trigger(VirtioInterruptKind::Queue).unwrap();
            let status = r32(t, REG_INTERRUPT_STATUS);
            w32(t, REG_INTERRUPT_ACK, status);
            let result = (status, r32(t, REG_STATUS), r32(t, REG_CONFIG_GENERATION));
            done.send(result).unwrap();
            transport
        });
        let result = finished.recv_timeout(Duration::from_secs(10));
        assert_eq!(result, Ok((INT_VRING, 0xf, 0)), "the vCPU was blocked");
        assert_eq!(busy.notify[0].read().unwrap(), 1);
        drop(busy);
        vcpu.join().unwrap();
    }

    #[test]
    fn linux_style_setup_drives_a_real_block_device() {
        let image = TempImage::new("mmio", &[0x33; 8192]);
        let block = Arc::new(Mutex::new(
            Block::new(BlockConfig {
                path: image.0.clone(),
                read_only: false,
                id: Some("vda".into()),
            })
            .unwrap(),
        ));
        let mem = guest_memory();
        let line = Arc::new(CountingLine::default());
        let mut transport = MmioTransport::new(mem.clone(), block.clone(), line.clone()).unwrap();
        let t = &mut transport;
        assert_eq!(r32(t, REG_DEVICE_ID), TYPE_BLOCK);
        // Capacity, read as one 64-bit access and as two 32-bit ones.
        let mut capacity = [0; 8];
        t.read(BASE, CONFIG_SPACE_OFFSET, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 16);
        assert_eq!(r32(t, CONFIG_SPACE_OFFSET), 16);
        assert_eq!(r32(t, CONFIG_SPACE_OFFSET + 4), 0);

        // Linux enables only the features it knows; a disabled queue makes the block
        // device refuse to start.
        let features = read_features(t);
        assert_eq!(negotiate(t, features), ACK | DRV | FOK);
        w32(t, REG_STATUS, 0xf);
        assert_eq!(r32(t, REG_STATUS), 0xf | STATUS_DEVICE_NEEDS_RESET);
        w32(t, REG_STATUS, 0);
        line.take();

        let mut driver = DriverQueue::new(&mem, 16);
        assert_eq!(negotiate(t, features), ACK | DRV | FOK);
        w32(t, REG_QUEUE_SEL, 0);
        assert_eq!(r32(t, REG_QUEUE_NUM_MAX), 256);
        assert_eq!(r32(t, REG_QUEUE_READY), 0);
        valid_queue(t, 0);
        w32(t, REG_STATUS, 0xf);
        assert_eq!(r32(t, REG_STATUS), 0xf);
        assert!(block.lock().unwrap().is_active());
        assert_eq!(block.lock().unwrap().acked_features(), features);

        // A read of sector 1; the notification comes through the register (no ioeventfd).
        mem.write_obj(0u32, GuestAddress(0x10000)).unwrap();
        mem.write_obj(1u64, GuestAddress(0x10008)).unwrap();
        driver.add_chain(&[
            readable(0x10000, 16),
            writable(0x20000, 512),
            writable(0x30000, 1),
        ]);
        w32(t, REG_QUEUE_NOTIFY, 0);
        // The event loop's part.
        let events = t.queue_events().unwrap();
        assert_eq!(events[0].1.read().unwrap(), 1);
        block.lock().unwrap().process_queue();
        assert_eq!(driver.used(0), (0, 513));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x30000)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x201ff)).unwrap(), 0x33);
        // The interrupt, as Linux's handler sees it.
        assert_eq!(line.take(), 1);
        let status = r32(t, REG_INTERRUPT_STATUS);
        assert_eq!(status, INT_VRING);
        w32(t, REG_INTERRUPT_ACK, status);
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), 0);

        // The driver lies about the available index: the device asks for a reset.
        driver.set_avail_idx(100);
        block.lock().unwrap().process_queue();
        assert_eq!(r32(t, REG_STATUS), 0xf | STATUS_DEVICE_NEEDS_RESET);
        assert_eq!(r32(t, REG_INTERRUPT_STATUS), INT_CONFIG);
        w32(t, REG_STATUS, 0);
        assert!(!block.lock().unwrap().is_active());
        assert_eq!(r32(t, REG_STATUS), 0);
    }
}
