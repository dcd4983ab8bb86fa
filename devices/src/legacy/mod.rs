//! The legacy PC devices a Linux guest expects on the port-I/O bus.
//!
//! - [`serial`]: a 16550A UART for the console (COM1 at 0x3f8, IRQ 4).
//! - [`i8042`]: the PS/2 controller at 0x60/0x64, which Linux probes and uses for `reboot=k`.
//! - [`absent`]: a device that is not there, for ports Linux probes that nothing emulates.
//! - [`boot_timer`]: the port (0x440) the guest writes 123 to when it is ready; the VMM logs
//!   how long the boot took.
//! - [`acpi_pm`]: the hardware-reduced ACPI sleep control, sleep status and reset registers
//!   (0x600-0x602), through which the guest powers off (S5) and resets.
//!
//! Port map petrel uses (ports handled inside KVM are not on the bus):
//!
//! | ports          | owner                                    |
//! |----------------|------------------------------------------|
//! | 0x20-0x21, 0xa0-0xa1, 0x4d0-0x4d1 | KVM in-kernel PIC / ELCR |
//! | 0x40-0x43, 0x61 | KVM in-kernel PIT                       |
//! | 0x60-0x64      | [`i8042::I8042Device`]                   |
//! | 0x3f8-0x3ff    | [`serial::SerialDevice`] (COM1)          |
//! | 0x440          | [`boot_timer::BootTimerDevice`]          |
//! | 0x600-0x603    | [`acpi_pm::AcpiPmDevice`]                |
//! | [`absent::ABSENT_PIO_RANGES`] | [`absent::AbsentDevice`]  |
//!
//! Their registers are one byte wide: a wider access is split into byte accesses at
//! consecutive offsets, as on an ISA bus.

pub mod absent;
pub mod acpi_pm;
pub mod boot_timer;
pub mod i8042;
pub mod serial;

/// The offset of each byte of an access starting at `offset` (`None` past `u64::MAX`), for
/// devices whose registers are one byte wide.
pub(crate) fn byte_offsets(offset: u64) -> impl Iterator<Item = Option<u64>> {
    (0u64..).map(move |i| offset.checked_add(i))
}
