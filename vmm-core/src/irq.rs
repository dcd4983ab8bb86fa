//! Interrupt lines for devices: an eventfd registered with KVM as an irqfd, so that a device
//! raises its interrupt with one write and never sees the VM.

use std::io;

use petrel_devices::interrupt::InterruptLine;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::kvm_vm::KvmVm;

/// Errors from setting up an interrupt line.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// The eventfd could not be created.
    #[error("cannot create an eventfd for IRQ {gsi}")]
    EventFd {
        /// The interrupt line.
        gsi: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// KVM refused the irqfd.
    #[error("cannot register an irqfd for IRQ {gsi}")]
    Register {
        /// The interrupt line.
        gsi: u32,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// An edge-triggered interrupt line backed by a KVM irqfd.
#[derive(Debug)]
pub struct IrqfdLine {
    gsi: u32,
    event: EventFd,
}

impl IrqfdLine {
    /// Creates an eventfd and registers it with KVM for interrupt `gsi`.
    pub fn register(vm: &KvmVm, gsi: u32) -> Result<Self, IrqError> {
        let event =
            EventFd::new(EFD_NONBLOCK).map_err(|source| IrqError::EventFd { gsi, source })?;
        vm.fd()
            .register_irqfd(&event, gsi)
            .map_err(|source| IrqError::Register { gsi, source })?;
        Ok(Self { gsi, event })
    }

    /// The interrupt line number.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl InterruptLine for IrqfdLine {
    fn trigger(&self) -> io::Result<()> {
        self.event.write(1)
    }
}
