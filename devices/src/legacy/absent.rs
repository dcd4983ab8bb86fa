//! Ports where a PC has hardware that petrel does not emulate.
//!
//! Linux probes these early in boot. On a PC without the hardware they float: reads return
//! all ones and writes vanish, which is exactly what [`AbsentDevice`] does, quietly. Putting
//! it on the bus for [`ABSENT_PIO_RANGES`] keeps those expected probes out of the VMM's
//! "unclaimed port" log, so that what remains there is worth looking at.

use crate::bus::BusDevice;

/// A device that is not there: reads return `0xff` bytes, writes are ignored, nothing is
/// logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AbsentDevice;

impl BusDevice for AbsentDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
}

/// Port ranges `(base, len, what)` that Linux pokes at during boot and that nothing in petrel
/// owns. Put an [`AbsentDevice`] at each.
///
/// What Linux concludes from all ones:
/// - COM2-COM4: the 8250 driver's scratch/IER test fails: no UART there.
/// - 0x70-0x71 (CMOS RTC): `rtc_cmos` reports the RTC "not accessible"; the wall clock comes
///   from kvmclock instead. (Kernels without kvmclock that spin on the RTC's update-in-progress
///   bit would hang here; give such guests an RTC.)
/// - 0x80 (POST code) and 0xed: written by `io_delay`; never read.
/// - 0x81-0x8f (DMA page registers): the i8237 DMA controller probe reads 0x87 and finds none.
/// - 0xcf8-0xcff (PCI configuration mechanisms 1 and 2, and the 0xcf9 reset register): no PCI
///   host bridge.
///
/// Not listed, because KVM's in-kernel irqchip and PIT handle them without leaving the kernel:
/// the PICs (0x20-0x21, 0xa0-0xa1), the PIT (0x40-0x43), port 0x61 and the ELCR (0x4d0-0x4d1).
/// Not listed either: ports that petrel's own devices claim (COM1 at 0x3f8, the i8042 at
/// 0x60-0x64).
pub const ABSENT_PIO_RANGES: &[(u16, u16, &str)] = &[
    (0x2f8, 8, "COM2"),
    (0x3e8, 8, "COM3"),
    (0x2e8, 8, "COM4"),
    (0x70, 2, "CMOS RTC"),
    (0x80, 1, "POST code"),
    (0x81, 15, "DMA page registers"),
    (0xed, 1, "io_delay port"),
    (0xcf8, 8, "PCI configuration"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusRange};
    use crate::legacy::i8042::{I8042_PORT, I8042_PORT_LEN};
    use crate::legacy::serial::{COM1_PORT, SERIAL_PORT_LEN};
    use crate::test_log;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reads_are_all_ones_and_writes_vanish() {
        let mut dev = AbsentDevice;
        for len in [1, 2, 4, 8] {
            let mut data = vec![0u8; len];
            dev.read(0xcf8, 0, &mut data);
            assert!(data.iter().all(|&b| b == 0xff), "{len}: {data:?}");
        }
        let records = test_log::capture(|| {
            dev.write(0xcf8, 4, &[1, 2, 3, 4]);
            let mut data = [0u8; 4];
            dev.read(0xcf8, 4, &mut data);
            assert_eq!(data, [0xff; 4]);
        });
        assert!(records.is_empty());
    }

    #[test]
    fn the_ranges_fit_on_one_bus_with_com1_and_the_i8042() {
        let mut bus = Bus::new();
        bus.insert(
            Arc::new(Mutex::new(AbsentDevice)),
            u64::from(COM1_PORT),
            u64::from(SERIAL_PORT_LEN),
        )
        .unwrap();
        bus.insert(
            Arc::new(Mutex::new(AbsentDevice)),
            u64::from(I8042_PORT),
            u64::from(I8042_PORT_LEN),
        )
        .unwrap();
        for &(base, len, what) in ABSENT_PIO_RANGES {
            bus.insert(Arc::new(Mutex::new(AbsentDevice)), base.into(), len.into())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }

    #[test]
    fn kernel_owned_ports_are_not_claimed() {
        let kernel_owned = [(0x20, 2), (0xa0, 2), (0x40, 4), (0x61, 1), (0x4d0, 2)];
        for &(base, len, what) in ABSENT_PIO_RANGES {
            let absent = BusRange {
                base: base.into(),
                len: len.into(),
            };
            for (kbase, klen) in kernel_owned {
                let owned = BusRange {
                    base: kbase,
                    len: klen,
                };
                assert!(!absent.overlaps(&owned), "{what} overlaps {owned}");
            }
        }
    }
}
