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

/// Halts forever with interrupts off; only the VMM can end the VM now.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: stops the CPU; nothing after this depends on memory state.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Resets the machine through the i8042 (0xFE to port 0x64); if that does not stop the vCPU,
/// halts forever with interrupts off.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    halt_forever()
}

/// Writes 16 bits to an I/O port.
#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    }
}

/// Writes 32 bits to an I/O port.
#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O has no memory effects visible to Rust.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    }
}

/// 8-bit MMIO write (a single `mov`).
#[inline(always)]
pub fn mmio_write8(addr: u64, value: u8) {
    // SAFETY: the caller picks an address in device space inside the identity map.
    unsafe {
        asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) value, options(nostack, preserves_flags))
    }
}

/// 16-bit MMIO write (a single `mov`).
#[inline(always)]
pub fn mmio_write16(addr: u64, value: u16) {
    // SAFETY: the caller picks an address in device space inside the identity map.
    unsafe {
        asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr, v = in(reg) value, options(nostack, preserves_flags))
    }
}

/// Reads the time-stamp counter.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the TSC.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) }
    u64::from(lo) | (u64::from(hi) << 32)
}

/// `pause` (spin-loop hint).
#[inline(always)]
pub fn pause() {
    // SAFETY: a hint; no effects.
    unsafe { asm!("pause", options(nomem, nostack, preserves_flags)) }
}

/// Executes CPUID for `leaf`/`subleaf` and returns eax, ebx, ecx, edx.
pub fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    // SAFETY: cpuid has no memory effects; rbx is saved and restored around it because the
    // compiler may use it.
    unsafe {
        asm!(
            "mov {tmp:r}, rbx",
            "cpuid",
            "xchg {tmp:r}, rbx",
            tmp = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") subleaf => ecx,
            out("edx") edx,
            options(nostack, preserves_flags),
        );
    }
    [eax, ebx, ecx, edx]
}

/// TSC frequency in kHz and where it came from: the hypervisor's timing leaf 0x40000010
/// (KVM/VMware; `0x40000010`), else CPUID 0x15 (crystal ratio; `0x15`), else 0x16 (base MHz;
/// `0x16`). None if no leaf gives it.
pub fn tsc_khz_known() -> Option<(u64, &'static [u8])> {
    let hypervisor = cpuid(1, 0)[2] & (1 << 31) != 0;
    if hypervisor {
        let max_hv = cpuid(0x4000_0000, 0)[0];
        if (0x4000_0010..0x4000_0100).contains(&max_hv) {
            let khz = cpuid(0x4000_0010, 0)[0];
            if khz != 0 {
                return Some((u64::from(khz), b"0x40000010"));
            }
        }
    }
    let max = cpuid(0, 0)[0];
    if max >= 0x15 {
        let [den, num, crystal_hz, _] = cpuid(0x15, 0);
        if den != 0 && num != 0 && crystal_hz != 0 {
            return Some((
                u64::from(crystal_hz) * u64::from(num) / u64::from(den) / 1000,
                b"0x15",
            ));
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0)[0] & 0xffff;
        if mhz != 0 {
            return Some((u64::from(mhz) * 1000, b"0x16"));
        }
    }
    None
}

/// Measures the TSC frequency in kHz against PIT channel 2 (like Linux's pit_calibrate_tsc):
/// mode 0 with a 10 ms count, gate on through port 0x61, then polls OUT2 (port 0x61 bit 5).
/// None if there is no working PIT (OUT2 already high at the start, or no terminal count
/// within 2e9 TSC cycles).
pub fn tsc_khz_pit() -> Option<u64> {
    const PIT_HZ: u64 = 1_193_182;
    const LATCH: u64 = PIT_HZ / 100; // 10 ms
                                     // Gate high (bit 0), speaker off (bit 1).
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0, binary
    outb(0x42, (LATCH & 0xff) as u8);
    outb(0x42, (LATCH >> 8) as u8);
    let start = rdtsc();
    if inb(0x61) & 0x20 != 0 {
        return None;
    }
    loop {
        let now = rdtsc();
        let cycles = now.wrapping_sub(start);
        if inb(0x61) & 0x20 != 0 {
            return Some(cycles * PIT_HZ / (LATCH * 1000));
        }
        if cycles > 2_000_000_000 {
            return None;
        }
    }
}

/// TSC frequency in kHz (see `tsc_khz_known`), else a guess of 3 GHz. Only used for timeouts.
pub fn tsc_khz() -> u64 {
    tsc_khz_known().map_or(3_000_000, |(khz, _)| khz)
}

/// Spins (with `pause`) until `done()` or until about `ms` milliseconds of TSC time passed;
/// returns the final `done()`.
pub fn spin_until(ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let budget = tsc_khz().saturating_mul(ms);
    let start = rdtsc();
    loop {
        if done() {
            return true;
        }
        if rdtsc().wrapping_sub(start) >= budget {
            return done();
        }
        pause();
    }
}
