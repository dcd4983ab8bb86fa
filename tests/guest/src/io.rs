//! Port I/O, MMIO and machine reset.

use core::arch::asm;

/// Writes one byte to an I/O port.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes bytes to an I/O port with one `rep outsb`.
#[inline(always)]
pub fn outsb(port: u16, data: &[u8]) {
    // SAFETY: reads data.len() bytes from a valid slice; DF is clear (SysV ABI).
    unsafe {
        asm!("rep outsb", in("dx") port, inout("rsi") data.as_ptr() => _, inout("rcx") data.len() => _,
             options(nostack, preserves_flags, readonly));
    }
}

/// Reads one byte from an I/O port.
#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Reads 32 bits from an I/O port.
#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    }
    v
}

/// 32-bit MMIO read (a single `mov`).
#[inline(always)]
pub fn mmio_read32(addr: u64) -> u32 {
    let v: u32;
    // SAFETY: the caller picks an address inside the guest's identity map (0..4 GiB); reading
    // device/unbacked space has no effect on Rust-visible memory.
    unsafe {
        asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) v, options(nostack, preserves_flags, readonly))
    }
    v
}

/// 32-bit MMIO write (a single `mov`).
#[inline(always)]
pub fn mmio_write32(addr: u64, value: u32) {
    // SAFETY: the caller picks an address in device/unbacked space inside the identity map.
    unsafe {
        asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
    }
}

/// Resets the machine through the i8042 (0xFE to port 0x64); if that does not stop the vCPU,
/// halts forever with interrupts off.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    loop {
        // SAFETY: stops the CPU; nothing after this depends on memory state.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}
