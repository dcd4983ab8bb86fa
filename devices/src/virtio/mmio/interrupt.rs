//! The transport's side of a device interrupt: the InterruptStatus register, the device's
//! "needs reset" flag and the configuration generation, shared lock-free between the
//! transport (vCPU threads) and the device (the event loop).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use crate::interrupt::InterruptLine;
use crate::virtio::{VirtioInterrupt, VirtioInterruptKind};

/// InterruptStatus bit: the device used buffers in a queue.
pub const INT_VRING: u32 = VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the configuration space (or the device status) changed.
pub const INT_CONFIG: u32 = VIRTIO_MMIO_INT_CONFIG;

/// The interrupt state of one virtio-mmio device. The device holds it as an
/// `Arc<dyn VirtioInterrupt>`; the transport reads and acknowledges it.
pub(crate) struct MmioInterrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    generation: AtomicU32,
    line: Arc<dyn InterruptLine>,
}

impl MmioInterrupt {
    pub(crate) fn new(line: Arc<dyn InterruptLine>) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            line,
        }
    }

    /// The InterruptStatus register.
    pub(crate) fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver wrote `bits` to InterruptACK.
    pub(crate) fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Whether the device reported that it needs a reset.
    pub(crate) fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The ConfigGeneration register.
    pub(crate) fn generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The configuration space changed (or may have).
    pub(crate) fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Device reset: no pending interrupt, no error. The generation keeps counting.
    pub(crate) fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: VirtioInterruptKind) -> io::Result<()> {
        let bit = match kind {
            VirtioInterruptKind::Queue => INT_VRING,
            VirtioInterruptKind::Config => {
                self.bump_generation();
                INT_CONFIG
            }
        };
        // The bit is visible before the interrupt arrives.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.line.trigger()
    }

    fn set_needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(VirtioInterruptKind::Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::tests::CountingLine;

    #[test]
    fn triggers_set_status_bits_raise_the_line_and_acks_clear_them() {
        let line = Arc::new(CountingLine::default());
        let irq = MmioInterrupt::new(line.clone());
        irq.trigger(VirtioInterruptKind::Queue).unwrap();
        assert_eq!(
            (irq.status(), line.take(), irq.generation()),
            (INT_VRING, 1, 0)
        );
        irq.trigger(VirtioInterruptKind::Config).unwrap();
        assert_eq!(
            (irq.status(), line.take(), irq.generation()),
            (INT_VRING | INT_CONFIG, 1, 1)
        );
        irq.acknowledge(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        irq.acknowledge(INT_CONFIG | 0xf0);
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn needs_reset_is_a_config_interrupt_that_lasts_until_reset() {
        let line = Arc::new(CountingLine::default());
        let irq = MmioInterrupt::new(line.clone());
        irq.set_needs_reset().unwrap();
        assert!(irq.needs_reset());
        assert_eq!((irq.status(), line.take()), (INT_CONFIG, 1));
        irq.acknowledge(INT_CONFIG);
        assert!(irq.needs_reset(), "acknowledging does not clear the error");
        irq.reset();
        assert!(!irq.needs_reset());
        assert_eq!(irq.generation(), 1, "the generation survives a reset");
    }

    #[test]
    fn a_failing_line_is_reported_but_the_status_is_set() {
        let line = Arc::new(CountingLine::default());
        line.fail.store(true, Ordering::SeqCst);
        let irq = MmioInterrupt::new(line);
        assert!(irq.trigger(VirtioInterruptKind::Queue).is_err());
        assert_eq!(irq.status(), INT_VRING);
    }
}
