//! The `smp` scenario: starts every AP that the MADT lists with INIT-SIPI-SIPI through the local
//! APIC. The APs run the real-mode trampoline in smp.s (copied to [`TRAMPOLINE_BASE`]), reach
//! 64-bit mode on the guest's own page tables, each print `AP up apic_id=<n>` and halt.

use crate::acpi::{self, MadtEntry};
use crate::bootparams;
use crate::io::{mmio_read32, mmio_write32, pause, spin_until};
use crate::out::{line, nl, put, put_dec, put_hex};
use core::arch::{asm, global_asm};
use core::sync::atomic::{fence, AtomicU32, Ordering};

global_asm!(include_str!("smp.s"), options(att_syntax));

/// Local APIC registers (xAPIC MMIO; mapped uncached by start.s).
const LAPIC: u64 = 0xFEE0_0000;
const LAPIC_ID: u64 = LAPIC + 0x20;
const LAPIC_SVR: u64 = LAPIC + 0xF0;
const ICR_LOW: u64 = LAPIC + 0x300;
const ICR_HIGH: u64 = LAPIC + 0x310;
/// ICR delivery status (send pending).
const ICR_BUSY: u32 = 1 << 12;
/// INIT, level assert.
const ICR_INIT: u32 = 0x4500;
/// Start-up IPI, level assert; the low byte is the vector (start page >> 12).
const ICR_SIPI: u32 = 0x4600;
/// Where the trampoline is copied (must match smp.s): a free RAM page below 1 MiB. petrel's
/// boot data sits at 0x500 (GDT), 0x7000 (zero page), 0x8000 (boot stack), 0x9000-0xbfff (page
/// tables) and 0x20000 (command line); the guest no longer needs any of them at this point.
pub const TRAMPOLINE_BASE: u64 = 0x1_0000;
/// Per-AP stack (must match the `shl 14` in smp.s).
const AP_STACK_SIZE: u64 = 16 * 1024;
/// At most this many CPUs (xAPIC ids 0..=254) are started.
const MAX_CPUS: usize = 255;
/// Polls of the ICR busy bit before giving up.
const ICR_SPINS: u32 = 100_000;
/// How long the BSP waits for the APs (TSC time).
const AP_WAIT_MS: u64 = 2_000;

/// Serializes COM1 output between CPUs (xchg / plain store).
static PRINT_LOCK: AtomicU32 = AtomicU32::new(0);
/// APs that printed their line.
static STARTED: AtomicU32 = AtomicU32::new(0);

extern "C" {
    static trampoline_start: u8;
    static trampoline_end: u8;
    static mut ap_stack_base: u64;
    static mut ap_next: u32;
    static mut ap_stack_count: u32;
    static __image_end: u8;
}

fn lock() {
    while PRINT_LOCK.swap(1, Ordering::Acquire) != 0 {
        while PRINT_LOCK.load(Ordering::Relaxed) != 0 {
            pause();
        }
    }
}

fn unlock() {
    PRINT_LOCK.store(0, Ordering::Release);
}

/// This CPU's local APIC id (xAPIC ID register bits 31:24).
fn lapic_id() -> u32 {
    mmio_read32(LAPIC_ID) >> 24
}

/// Called by `ap_entry64` (smp.s) on the AP's own stack.
#[no_mangle]
pub extern "C" fn petrel_guest_ap_main() -> ! {
    let id = lapic_id();
    lock();
    put(b"AP up apic_id=");
    put_dec(u64::from(id));
    nl();
    STARTED.fetch_add(1, Ordering::Release);
    unlock();
    loop {
        // SAFETY: parks this AP for good.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) }
    }
}

/// Waits (bounded) until the ICR is idle, then sends `low` to APIC id `dest`.
fn send_ipi(dest: u32, low: u32) -> bool {
    let mut spins = 0;
    while mmio_read32(ICR_LOW) & ICR_BUSY != 0 {
        spins += 1;
        if spins == ICR_SPINS {
            lock();
            put(b"SMP error icr busy apic_id=");
            put_dec(u64::from(dest));
            nl();
            unlock();
            return false;
        }
        pause();
    }
    mmio_write32(ICR_HIGH, dest << 24);
    mmio_write32(ICR_LOW, low);
    true
}

/// The `smp` scenario.
pub fn run(boot_params: u64) {
    let Some(acpi) = acpi::discover(boot_params, false) else {
        line(b"SMP error no ACPI tables");
        return;
    };
    let Some(madt) = acpi.madt else {
        line(b"SMP error no MADT");
        return;
    };
    let mut ids = [0u32; MAX_CPUS];
    let mut n_ids = 0;
    let mut cpus: u64 = 0;
    acpi::madt_walk(&acpi.mem, &madt, &mut |e| {
        let id = match e {
            MadtEntry::Lapic { apic_id, flags, .. } if flags & 1 != 0 => u32::from(apic_id),
            MadtEntry::X2apic { apic_id, flags, .. } if flags & 1 != 0 => apic_id,
            _ => return,
        };
        cpus += 1;
        if n_ids < MAX_CPUS {
            ids[n_ids] = id;
            n_ids += 1;
        }
    });
    if cpus > MAX_CPUS as u64 {
        put(b"SMP error madt lists ");
        put_dec(cpus);
        line(b" cpus, only the first 255 are started");
    }
    let bsp = lapic_id();
    put(b"SMP bsp apic_id=");
    put_dec(u64::from(bsp));
    put(b" trampoline=");
    put_hex(TRAMPOLINE_BASE);
    nl();
    let aps = ids[..n_ids].iter().filter(|&&id| id != bsp).count() as u64;

    // Per-AP stacks: RAM right after the image.
    let base = (core::ptr::addr_of!(__image_end) as u64 + 0xfff) & !0xfff;
    let room = bootparams::ram_range_end(boot_params, base).saturating_sub(base) / AP_STACK_SIZE;
    let stacks = aps.min(room);
    if stacks < aps {
        put(b"SMP error stacks for only ");
        put_dec(stacks);
        line(b" APs fit in RAM after the image");
    }

    // The trampoline page (only the symbols' addresses are used).
    let (t_start, t_end) = (
        core::ptr::addr_of!(trampoline_start),
        core::ptr::addr_of!(trampoline_end),
    );
    let t_len = t_end as usize - t_start as usize;
    if t_len > 4096
        || bootparams::ram_range_end(boot_params, TRAMPOLINE_BASE) < TRAMPOLINE_BASE + 4096
    {
        line(b"SMP error trampoline page 0x10000 is not RAM");
        return;
    }
    // SAFETY: TRAMPOLINE_BASE is a RAM page (checked) that nothing else uses now; the source
    // is the trampoline's bytes in the image.
    unsafe {
        core::ptr::copy_nonoverlapping(t_start, TRAMPOLINE_BASE as *mut u8, t_len);
        core::ptr::addr_of_mut!(ap_stack_base).write_volatile(base);
        core::ptr::addr_of_mut!(ap_next).write_volatile(0);
        core::ptr::addr_of_mut!(ap_stack_count).write_volatile(stacks as u32);
    }
    fence(Ordering::SeqCst);

    // Software-enable the local APIC (spurious vector 0xff; interrupts stay off).
    mmio_write32(LAPIC_SVR, mmio_read32(LAPIC_SVR) | 0x1ff);

    let mut sent: u32 = 0;
    for &id in &ids[..n_ids] {
        if id == bsp {
            continue;
        }
        if id > 254 {
            // APs may be printing already.
            lock();
            put(b"SMP error apic_id=");
            put_dec(u64::from(id));
            line(b" needs x2APIC mode, not started");
            unlock();
            continue;
        }
        let vector = (TRAMPOLINE_BASE >> 12) as u32;
        if send_ipi(id, ICR_INIT)
            && send_ipi(id, ICR_SIPI | vector)
            && send_ipi(id, ICR_SIPI | vector)
        {
            sent += 1;
        }
    }
    let want = sent.min(stacks as u32);
    spin_until(AP_WAIT_MS, || STARTED.load(Ordering::Acquire) >= want);

    lock();
    put(b"SMP cpus=");
    put_dec(cpus);
    put(b" started=");
    put_dec(u64::from(STARTED.load(Ordering::Acquire)) + 1);
    nl();
    unlock();
}
