//! The power management registers of a hardware-reduced ACPI machine: sleep control, sleep
//! status and reset, three byte-wide ports at [`ACPI_PM_PORT`] (0x600).
//!
//! The FADT points the guest at them (petrel-boot's `acpi` module writes it); there is no
//! PM1 event/control block, PM timer or GPE block to emulate. What a guest does with them:
//!
//! | port | register | guest writes | device |
//! |------|----------|--------------|--------|
//! | 0x600 | sleep control | `(SLP_TYP << 2) \| SLP_EN` to enter a sleep state | SLP_EN with SLP_TYP = [`S5_SLEEP_TYPE`] (soft off) writes the `power_off` eventfd; other sleep types are not supported: logged once each, ignored |
//! | 0x601 | sleep status | 1s to clear WAK_STS (bit 7) | nothing to clear: the machine never wakes, WAK_STS stays 0 |
//! | 0x602 | reset | [`ACPI_RESET_VALUE`] to reset | writes the `reset` eventfd; other values are ignored |
//! | 0x603 | reserved | — | ignored |
//!
//! Every register reads 0. After requesting S5, Linux polls the sleep status register for
//! WAK_STS, which never comes: the VMM stops the VM when it sees the eventfd, and until then
//! the vCPU just spins on that read.
//!
//! Registers are one byte wide; a wider access is split into byte accesses at consecutive
//! offsets, as on an ISA bus.

use std::fmt;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::legacy::byte_offsets;
use crate::report::ErrorLog;

/// First port of the device (the sleep control register).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Ports the device occupies: sleep control, sleep status, reset, one reserved.
pub const ACPI_PM_PORT_LEN: u16 = 4;
/// Sleep control register (FADT `SLEEP_CONTROL_REG`).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = ACPI_PM_PORT;
/// Sleep status register (FADT `SLEEP_STATUS_REG`).
pub const ACPI_SLEEP_STATUS_PORT: u16 = ACPI_PM_PORT + 1;
/// Reset register (FADT `RESET_REG`).
pub const ACPI_RESET_PORT: u16 = ACPI_PM_PORT + 2;
/// The value that resets the machine when written to [`ACPI_RESET_PORT`] (FADT
/// `RESET_VALUE`).
pub const ACPI_RESET_VALUE: u8 = 0x01;
/// SLP_TYP of S5 (soft off), as in the DSDT's `\_S5` package.
pub const S5_SLEEP_TYPE: u8 = 5;
/// SLP_EN: bit 5 of the sleep control register; writing it enters the sleep state.
pub const SLEEP_ENABLE: u8 = 1 << 5;
/// Position of SLP_TYP (bits 4:2) in the sleep control register.
pub const SLEEP_TYPE_SHIFT: u8 = 2;
/// WAK_STS: bit 7 of the sleep status register.
pub const WAKE_STATUS: u8 = 1 << 7;

const SLEEP_TYPE_MASK: u8 = 0b111;

const SLEEP_CONTROL: u64 = 0;
const SLEEP_STATUS: u64 = 1;
const RESET: u64 = 2;

/// The sleep control, sleep status and reset registers.
pub struct AcpiPmDevice {
    power_off: EventFd,
    reset: EventFd,
    /// Bit `n` is set once an unsupported SLP_TYP `n` has been logged.
    warned_sleep_types: u8,
    power_off_errors: ErrorLog,
    reset_errors: ErrorLog,
}

impl AcpiPmDevice {
    /// A device that writes `power_off` when the guest enters S5 and `reset` when it writes
    /// [`ACPI_RESET_VALUE`] to the reset register.
    pub fn new(power_off: EventFd, reset: EventFd) -> Self {
        Self {
            power_off,
            reset,
            warned_sleep_types: 0,
            power_off_errors: ErrorLog::new("acpi power-off notification"),
            reset_errors: ErrorLog::new("acpi reset notification"),
        }
    }

    fn write_sleep_control(&mut self, value: u8) {
        if value & SLEEP_ENABLE == 0 {
            log::debug!("acpi: sleep control write {value:#04x} without SLP_EN ignored");
            return;
        }
        let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
        if sleep_type == S5_SLEEP_TYPE {
            log::debug!("acpi: guest entered S5 (power off)");
            match self.power_off.write(1) {
                Ok(()) => self.power_off_errors.succeeded(),
                Err(e) => self.power_off_errors.failed(&e),
            }
            return;
        }
        let bit = 1u8 << sleep_type;
        if self.warned_sleep_types & bit == 0 {
            self.warned_sleep_types |= bit;
            log::warn!(
                "acpi: guest asked for sleep type {sleep_type}, which petrel does not support \
                 (only S5, type {S5_SLEEP_TYPE}); ignored"
            );
        }
    }

    fn write_reset(&mut self, value: u8) {
        if value != ACPI_RESET_VALUE {
            log::debug!("acpi: reset register write {value:#04x} ignored");
            return;
        }
        log::debug!("acpi: guest reset the machine");
        match self.reset.write(1) {
            Ok(()) => self.reset_errors.succeeded(),
            Err(e) => self.reset_errors.failed(&e),
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep control and reset are write-only, WAK_STS is never set, 0x603 is reserved.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (register, &value) in byte_offsets(offset).zip(data) {
            match register {
                Some(SLEEP_CONTROL) => self.write_sleep_control(value),
                // Write-1-to-clear WAK_STS, which is never set: nothing changes.
                Some(SLEEP_STATUS) => {}
                Some(RESET) => self.write_reset(value),
                _ => {}
            }
        }
    }
}

impl fmt::Debug for AcpiPmDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcpiPmDevice")
            .field("warned_sleep_types", &self.warned_sleep_types)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::test_log;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    struct Fixture {
        dev: AcpiPmDevice,
        power_off: EventFd,
        reset: EventFd,
    }

    impl Fixture {
        fn new() -> Self {
            let power_off = EventFd::new(EFD_NONBLOCK).unwrap();
            let reset = EventFd::new(EFD_NONBLOCK).unwrap();
            let dev = AcpiPmDevice::new(power_off.try_clone().unwrap(), reset.try_clone().unwrap());
            Self {
                dev,
                power_off,
                reset,
            }
        }

        fn outb(&mut self, port: u16, value: u8) {
            self.dev.write(
                u64::from(ACPI_PM_PORT),
                u64::from(port - ACPI_PM_PORT),
                &[value],
            );
        }

        fn inb(&mut self, port: u16) -> u8 {
            let mut data = [0xaa];
            self.dev.read(
                u64::from(ACPI_PM_PORT),
                u64::from(port - ACPI_PM_PORT),
                &mut data,
            );
            data[0]
        }

        /// How many times each eventfd was written since the last call.
        fn signals(&self) -> (u64, u64) {
            (
                self.power_off.read().unwrap_or(0),
                self.reset.read().unwrap_or(0),
            )
        }
    }

    #[test]
    fn constants_match_the_fixed_port_map() {
        assert_eq!(ACPI_SLEEP_CONTROL_PORT, 0x600);
        assert_eq!(ACPI_SLEEP_STATUS_PORT, 0x601);
        assert_eq!(ACPI_RESET_PORT, 0x602);
        assert_eq!(ACPI_PM_PORT_LEN, 4);
        // What Linux writes for S5: (5 << 2) | SLP_EN.
        assert_eq!((S5_SLEEP_TYPE << SLEEP_TYPE_SHIFT) | SLEEP_ENABLE, 0x34);
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut f = Fixture::new();
        f.outb(ACPI_SLEEP_CONTROL_PORT, 0x34);
        assert_eq!(f.signals(), (1, 0));
        // Linux then clears WAK_STS and polls for it; it never comes.
        f.outb(ACPI_SLEEP_STATUS_PORT, WAKE_STATUS);
        assert_eq!(f.inb(ACPI_SLEEP_STATUS_PORT), 0);
        assert_eq!(f.signals(), (0, 0));
    }

    #[test]
    fn s5_without_slp_en_does_nothing() {
        let mut f = Fixture::new();
        let records = test_log::capture(|| f.outb(ACPI_SLEEP_CONTROL_PORT, 0x14));
        assert_eq!(f.signals(), (0, 0));
        assert!(
            records.iter().all(|r| !r.starts_with("WARN")),
            "{records:?}"
        );
    }

    #[test]
    fn other_sleep_types_are_logged_once_each_and_ignored() {
        let mut f = Fixture::new();
        let records = test_log::capture(|| {
            for _ in 0..3 {
                f.outb(ACPI_SLEEP_CONTROL_PORT, (3 << 2) | SLEEP_ENABLE);
            }
            f.outb(ACPI_SLEEP_CONTROL_PORT, (1 << 2) | SLEEP_ENABLE);
            f.outb(ACPI_SLEEP_CONTROL_PORT, SLEEP_ENABLE); // type 0 (S0)
            f.outb(ACPI_SLEEP_CONTROL_PORT, (1 << 2) | SLEEP_ENABLE);
        });
        let warnings: Vec<&String> = records.iter().filter(|r| r.starts_with("WARN")).collect();
        assert_eq!(warnings.len(), 3, "{records:?}");
        assert!(warnings[0].contains("sleep type 3"), "{}", warnings[0]);
        assert!(warnings[1].contains("sleep type 1"), "{}", warnings[1]);
        assert!(warnings[2].contains("sleep type 0"), "{}", warnings[2]);
        assert_eq!(f.signals(), (0, 0));
        // S5 still works afterwards.
        f.outb(ACPI_SLEEP_CONTROL_PORT, 0x34);
        assert_eq!(f.signals(), (1, 0));
    }

    #[test]
    fn the_reset_value_resets_and_nothing_else_does() {
        let mut f = Fixture::new();
        f.outb(ACPI_RESET_PORT, ACPI_RESET_VALUE);
        assert_eq!(f.signals(), (0, 1));
        for value in [0x00, 0x02, 0x06, 0x0e, 0xfe, 0xff] {
            f.outb(ACPI_RESET_PORT, value);
        }
        assert_eq!(f.signals(), (0, 0));
    }

    #[test]
    fn every_register_reads_zero() {
        let mut f = Fixture::new();
        for port in ACPI_PM_PORT..ACPI_PM_PORT + ACPI_PM_PORT_LEN {
            assert_eq!(f.inb(port), 0, "{port:#x}");
        }
        f.outb(ACPI_SLEEP_CONTROL_PORT, 0x14);
        f.outb(ACPI_RESET_PORT, 0x06);
        f.outb(ACPI_SLEEP_STATUS_PORT, 0xff);
        for port in ACPI_PM_PORT..ACPI_PM_PORT + ACPI_PM_PORT_LEN {
            assert_eq!(f.inb(port), 0, "{port:#x}");
        }
        let mut wide = [0xaa; 4];
        f.dev.read(0x600, 0, &mut wide);
        assert_eq!(wide, [0; 4]);
    }

    #[test]
    fn every_byte_value_at_every_offset_is_handled() {
        let mut f = Fixture::new();
        let mut expected_power_off = 0;
        test_log::capture(|| {
            for offset in 0..8u64 {
                for value in 0..=u8::MAX {
                    f.dev.write(0x600, offset, &[value]);
                    let mut back = [0xaa];
                    f.dev.read(0x600, offset, &mut back);
                    assert_eq!(back, [0]);
                    if offset == 0 && value & 0x3c == 0x34 {
                        expected_power_off += 1;
                    }
                }
            }
        });
        // SLP_EN with SLP_TYP 5, whatever the reserved bits: 16 of 256 values.
        assert_eq!(expected_power_off, 16);
        assert_eq!(f.signals(), (16, 1));
        for offset in [u64::MAX, u64::MAX - 1] {
            f.dev.write(0x600, offset, &[0x34, 0x01, 0x34]);
            let mut back = [0xaa; 3];
            f.dev.read(0x600, offset, &mut back);
            assert_eq!(back, [0; 3]);
        }
        assert_eq!(f.signals(), (0, 0));
    }

    #[test]
    fn wide_accesses_reach_consecutive_registers() {
        let mut f = Fixture::new();
        // A 4-byte write at 0x600: S5, clear WAK_STS, reset, reserved.
        f.dev.write(0x600, 0, &[0x34, 0x80, 0x01, 0xff]);
        assert_eq!(f.signals(), (1, 1));
        // A 2-byte write at offset 1 reaches the reset register with its second byte.
        f.dev.write(0x600, 1, &[0x00, 0x01]);
        assert_eq!(f.signals(), (0, 1));
        // Offset 3 is reserved; a write there touches nothing.
        f.dev.write(0x600, 3, &[0x34]);
        f.dev.write(0x600, 3, &[0x01, 0x34, 0x01]);
        assert_eq!(f.signals(), (0, 0));
    }

    #[test]
    fn on_a_bus_at_0x600() {
        let f = Fixture::new();
        let (power_off, reset) = (f.power_off, f.reset);
        let mut bus = Bus::new();
        bus.insert(
            Arc::new(Mutex::new(f.dev)),
            ACPI_PM_PORT.into(),
            ACPI_PM_PORT_LEN.into(),
        )
        .unwrap();
        bus.write(ACPI_SLEEP_CONTROL_PORT.into(), &[0x34]).unwrap();
        assert_eq!(power_off.read().unwrap(), 1);
        bus.write(ACPI_RESET_PORT.into(), &[ACPI_RESET_VALUE])
            .unwrap();
        assert_eq!(reset.read().unwrap(), 1);
        let mut status = [0xff];
        bus.read(ACPI_SLEEP_STATUS_PORT.into(), &mut status)
            .unwrap();
        assert_eq!(status, [0]);
        // A 2-byte access at 0x603 runs past the device and is refused by the bus.
        assert!(bus.write(0x603, &[0x34, 0x01]).is_err());
        assert!(bus.write(0x604, &[0x01]).is_err());
    }

    #[test]
    fn a_failing_eventfd_is_logged_not_fatal() {
        // A counter at its maximum makes the non-blocking write fail with EAGAIN.
        let power_off = EventFd::new(EFD_NONBLOCK).unwrap();
        power_off.write(u64::MAX - 1).unwrap();
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        reset.write(u64::MAX - 1).unwrap();
        let mut dev = AcpiPmDevice::new(power_off, reset);
        let records = test_log::capture(|| {
            dev.write(0x600, 0, &[0x34]);
            dev.write(0x600, 0, &[0x34]);
            dev.write(0x600, 2, &[0x01]);
        });
        let warnings: Vec<&String> = records.iter().filter(|r| r.starts_with("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{records:?}");
        assert!(warnings[0].contains("acpi power-off notification failed"));
        assert!(warnings[1].contains("acpi reset notification failed"));
    }
}
