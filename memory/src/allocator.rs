//! Handing out device resources: MMIO ranges and legacy IRQ lines.

use thiserror::Error;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::layout::{DEVICE_MMIO_END, DEVICE_MMIO_START};

/// First IRQ line given to devices (0-4 are the PIT, keyboard, cascade and serial ports).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// Last IRQ line given to devices (the IOAPIC has 24 pins).
pub const LAST_DEVICE_IRQ: u32 = 23;

/// Why a resource could not be allocated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocatorError {
    /// The underlying allocator could not be set up.
    #[error("cannot set up the {what} allocator")]
    Setup {
        /// Which allocator.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: vm_allocator::Error,
    },
    /// An MMIO size of zero was requested.
    #[error("mmio size is zero")]
    ZeroSize,
    /// The alignment is not a power of two.
    #[error("mmio alignment {align:#x} is not a power of two")]
    BadAlignment {
        /// The requested alignment.
        align: u64,
    },
    /// No free MMIO range of this size and alignment is left.
    #[error("no free mmio range of {size:#x} bytes aligned to {align:#x}")]
    MmioExhausted {
        /// The requested size.
        size: u64,
        /// The requested alignment.
        align: u64,
    },
    /// Every device IRQ line is taken.
    #[error("all device irqs ({FIRST_DEVICE_IRQ}..={LAST_DEVICE_IRQ}) are in use")]
    IrqExhausted,
    /// The MMIO allocator failed in an unexpected way.
    #[error("mmio allocation failed")]
    Mmio(#[source] vm_allocator::Error),
}

/// Allocates device MMIO ranges from `[DEVICE_MMIO_START, DEVICE_MMIO_END)` and IRQ lines from
/// `FIRST_DEVICE_IRQ..=LAST_DEVICE_IRQ`.
#[derive(Debug, Clone)]
pub struct ResourceAllocator {
    mmio: AddressAllocator,
    irqs: IdAllocator,
}

impl ResourceAllocator {
    /// Creates an allocator with the whole MMIO window and all device IRQs free.
    pub fn new() -> Result<Self, AllocatorError> {
        let mmio = AddressAllocator::new(DEVICE_MMIO_START, DEVICE_MMIO_END - DEVICE_MMIO_START)
            .map_err(|source| AllocatorError::Setup {
                what: "mmio",
                source,
            })?;
        let irqs = IdAllocator::new(FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ).map_err(|source| {
            AllocatorError::Setup {
                what: "irq",
                source,
            }
        })?;
        Ok(ResourceAllocator { mmio, irqs })
    }

    /// Reserves `size` bytes of MMIO space aligned to `align` (a power of two) and returns the
    /// guest address of the first byte. Ranges are handed out from the bottom of the window up.
    pub fn allocate_mmio(&mut self, size: u64, align: u64) -> Result<u64, AllocatorError> {
        if size == 0 {
            return Err(AllocatorError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(AllocatorError::BadAlignment { align });
        }
        match self.mmio.allocate(size, align, AllocPolicy::FirstMatch) {
            Ok(range) => Ok(range.start()),
            Err(
                vm_allocator::Error::ResourceNotAvailable
                | vm_allocator::Error::Overflow
                | vm_allocator::Error::InvalidSize(_),
            ) => Err(AllocatorError::MmioExhausted { size, align }),
            Err(e) => Err(AllocatorError::Mmio(e)),
        }
    }

    /// Reserves the next free device IRQ line.
    pub fn allocate_irq(&mut self) -> Result<u32, AllocatorError> {
        self.irqs
            .allocate_id()
            .map_err(|_| AllocatorError::IrqExhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{KIB, MIB};

    #[test]
    fn mmio_ranges_are_aligned_disjoint_and_inside_the_window() {
        let mut a = ResourceAllocator::new().unwrap();
        let mut got = Vec::new();
        for (size, align) in [
            (0x200, 4 * KIB),
            (4 * KIB, 4 * KIB),
            (0x1000, 2 * MIB),
            (1, 1),
        ] {
            let start = a.allocate_mmio(size, align).unwrap();
            assert_eq!(start % align, 0);
            assert!(start >= DEVICE_MMIO_START && start + size <= DEVICE_MMIO_END);
            got.push((start, start + size));
        }
        assert_eq!(got[0].0, DEVICE_MMIO_START);
        got.sort();
        assert!(got.windows(2).all(|w| w[0].1 <= w[1].0));
    }

    #[test]
    fn whole_window_can_be_taken_once() {
        let mut a = ResourceAllocator::new().unwrap();
        let size = DEVICE_MMIO_END - DEVICE_MMIO_START;
        assert_eq!(a.allocate_mmio(size, 4 * KIB).unwrap(), DEVICE_MMIO_START);
        assert_eq!(
            a.allocate_mmio(4 * KIB, 4 * KIB),
            Err(AllocatorError::MmioExhausted {
                size: 4 * KIB,
                align: 4 * KIB
            })
        );
    }

    #[test]
    fn oversized_and_bad_requests_are_errors() {
        let mut a = ResourceAllocator::new().unwrap();
        assert!(matches!(
            a.allocate_mmio(DEVICE_MMIO_END - DEVICE_MMIO_START + 1, 1),
            Err(AllocatorError::MmioExhausted { .. })
        ));
        assert!(matches!(
            a.allocate_mmio(u64::MAX, 1),
            Err(AllocatorError::MmioExhausted { .. })
        ));
        assert_eq!(a.allocate_mmio(0, 4096), Err(AllocatorError::ZeroSize));
        assert_eq!(
            a.allocate_mmio(4096, 3),
            Err(AllocatorError::BadAlignment { align: 3 })
        );
        assert_eq!(
            a.allocate_mmio(4096, 0),
            Err(AllocatorError::BadAlignment { align: 0 })
        );
        // Failed requests did not consume anything.
        assert_eq!(a.allocate_mmio(4096, 4096).unwrap(), DEVICE_MMIO_START);
    }

    #[test]
    fn irqs_run_from_first_to_last_then_error() {
        let mut a = ResourceAllocator::new().unwrap();
        let irqs: Vec<u32> = (FIRST_DEVICE_IRQ..=LAST_DEVICE_IRQ)
            .map(|_| a.allocate_irq().unwrap())
            .collect();
        assert_eq!(
            irqs,
            (FIRST_DEVICE_IRQ..=LAST_DEVICE_IRQ).collect::<Vec<_>>()
        );
        assert_eq!(a.allocate_irq(), Err(AllocatorError::IrqExhausted));
        assert_eq!(a.allocate_irq(), Err(AllocatorError::IrqExhausted));
    }
}
