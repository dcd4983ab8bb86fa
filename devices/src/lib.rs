//! Device models for an x86-64 KVM virtual machine, and the buses that route the guest's
//! port-I/O and MMIO accesses to them.
//!
//! Nothing here holds a KVM or VMM handle: devices get an [`interrupt::InterruptLine`] to
//! raise interrupts, eventfds to notify the VMM, and their host backend (a `Write` for the
//! console). Any VMM whose vCPU loop hands out `(address, data)` exits can use them:
//!
//! - [`bus`]: [`Bus`], a range map from addresses to [`BusDevice`]s. Build one for port I/O
//!   and one for MMIO before the vCPUs start, then share each as an `Arc<Bus>`; an access
//!   locks only the device it reaches. The module documents the lock order. Each range is
//!   named and counts its reads, writes and access time ([`Bus::stats`]), lock-free.
//! - [`interrupt`]: the [`InterruptLine`] trait (an irqfd `EventFd` already implements it)
//!   and its adapter to `vm-superio`'s `Trigger`.
//! - [`legacy`]: the PC devices Linux expects: a 16550A serial console with buffered output
//!   and input back-pressure, an i8042 controller that passes Linux's probe and resets the
//!   machine, and an "absent" device for ports Linux probes that nothing emulates.
//!
//! - [`virtio`]: virtio 1.x devices behind a virtio-mmio (version 2) transport:
//!   [`virtio::VirtioDevice`], [`virtio::mmio::MmioTransport`] (a [`BusDevice`] for the MMIO
//!   bus), [`virtio::block::Block`], a virtio-blk disk on a raw image whose I/O runs on
//!   the VMM's event loop (`event-manager`), never on a vCPU thread, and
//!   [`virtio::rng::Rng`], an entropy device fed by the host's `getrandom(2)`. The module shows the
//!   wiring; the rust-vmm `virtio-device` crate is not published on crates.io, so the device
//!   trait is petrel's own.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use petrel_devices::bus::Bus;
//! use petrel_devices::legacy::absent::{AbsentDevice, ABSENT_PIO_RANGES};
//! use petrel_devices::legacy::i8042::{I8042Device, I8042_PORT, I8042_PORT_LEN};
//! use petrel_devices::legacy::serial::{SerialDevice, COM1_PORT, SERIAL_PORT_LEN};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! // With KVM this would be an eventfd registered with KVM_IRQFD for COM1_IRQ.
//! let com1_irq = Arc::new(EventFd::new(EFD_NONBLOCK)?);
//! let input_drained = EventFd::new(EFD_NONBLOCK)?;
//! let serial = Arc::new(Mutex::new(SerialDevice::new(
//!     com1_irq,
//!     Box::new(std::io::stdout()),
//!     Some(input_drained.try_clone()?),
//! )));
//! let reset = EventFd::new(EFD_NONBLOCK)?;
//! let i8042 = Arc::new(Mutex::new(I8042Device::new(reset.try_clone()?)));
//!
//! let mut pio = Bus::new();
//! pio.insert(serial.clone(), COM1_PORT.into(), SERIAL_PORT_LEN.into())?;
//! pio.insert(i8042, I8042_PORT.into(), I8042_PORT_LEN.into())?;
//! for &(base, len, _what) in ABSENT_PIO_RANGES {
//!     pio.insert(Arc::new(Mutex::new(AbsentDevice)), base.into(), len.into())?;
//! }
//! let pio = Arc::new(pio); // now hand clones to the vCPU threads
//!
//! // What a vCPU thread does on a port-I/O exit:
//! pio.write(0x3f8, b"!")?;
//! let mut status = [0];
//! pio.read(0x64, &mut status)?;
//! pio.write(0x64, &[0xfe])?; // the guest resets the machine...
//! assert_eq!(reset.read()?, 1); // ...and the VMM's event loop sees it.
//!
//! // What the event loop does with host input:
//! let taken = serial.lock().unwrap().enqueue_input(b"root\n")?;
//! assert_eq!(taken, 5); // if fewer fit, keep the rest until `input_drained` fires
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bus;
pub mod interrupt;
pub mod legacy;
pub mod virtio;

mod report;
#[cfg(test)]
mod test_log;

pub use bus::{Bus, BusDevice, BusError, BusRange, BusRangeStats};
pub use interrupt::InterruptLine;
