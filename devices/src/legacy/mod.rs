//! The legacy PC devices a Linux guest expects on the port-I/O bus.
//!
//! - [`serial`]: a 16550A UART for the console (COM1 at 0x3f8, IRQ 4).
//! - [`i8042`]: the PS/2 controller at 0x60/0x64, which Linux probes and uses for `reboot=k`.
//! - [`absent`]: a device that is not there, for ports Linux probes that nothing emulates.
//!
//! Port map petrel uses (ports handled inside KVM are not on the bus):
//!
//! | ports          | owner                                    |
//! |----------------|------------------------------------------|
//! | 0x20-0x21, 0xa0-0xa1, 0x4d0-0x4d1 | KVM in-kernel PIC / ELCR |
//! | 0x40-0x43, 0x61 | KVM in-kernel PIT                       |
//! | 0x60-0x64      | [`i8042::I8042Device`]                   |
//! | 0x3f8-0x3ff    | [`serial::SerialDevice`] (COM1)          |
//! | [`absent::ABSENT_PIO_RANGES`] | [`absent::AbsentDevice`]  |
//!
//! All three are byte-register devices: a wider access is split into byte accesses at
//! consecutive offsets, as on an ISA bus.

pub mod absent;
pub mod i8042;
pub mod serial;

/// The offset of each byte of an access starting at `offset` (`None` past `u64::MAX`), for
/// devices whose registers are one byte wide.
pub(crate) fn byte_offsets(offset: u64) -> impl Iterator<Item = Option<u64>> {
    (0u64..).map(move |i| offset.checked_add(i))
}
