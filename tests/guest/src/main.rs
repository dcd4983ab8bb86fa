//! petrel's freestanding x86-64 test guest.
//!
//! petrel loads this ELF as a "kernel" through the Linux x86-64 64-bit boot protocol. The guest
//! reads `petrel.scenario=NAME` from its command line, runs that scenario and reports on COM1
//! with a line protocol that petrel's end-to-end tests parse (see README.md). Then it resets the
//! machine through the i8042 (port 0x64 ← 0xFE).
//!
//! Everything here is written so that KVM's instruction emulator can run it (under PVM every
//! guest instruction is emulated): no SSE, no popcnt/BMI, no core::fmt.
#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod blk;
mod bootparams;
mod clock;
mod cmdline;
mod heap;
mod io;
mod mem;
mod net;
mod out;
mod pattern;
mod power;
mod rng;
mod scenarios;
mod smp;
mod virtio;
mod vparse;
mod vsock;

use core::arch::global_asm;

global_asm!(include_str!("start.s"));

/// Port and byte of the boot-timer write (Firecracker's magic value).
const BOOT_TIMER_PORT: u16 = 0x440;
const BOOT_TIMER_MAGIC: u8 = 123;

/// Lives in .noinit: read_cmdline writes every byte it hands out, so it needs no zeroing.
#[link_section = ".noinit.cmdline"]
static mut CMDLINE_BUF: [u8; cmdline::MAX_CMDLINE] = [0; cmdline::MAX_CMDLINE];

/// Rust entry point, called by `_start` on the guest's own stack with the boot_params address.
#[no_mangle]
pub extern "C" fn petrel_guest_main(boot_params: u64) -> ! {
    out::line(b"PETREL-GUEST start");
    // Boot timer: the VMM (--boot-timer) measures the time to this write.
    io::outb(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC);
    // SAFETY: the only reference to CMDLINE_BUF ever made; the guest is single-threaded.
    // (A static, not a stack array: zeroing a 4 KiB local would cost 4096 emulated iterations.)
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(CMDLINE_BUF) };
    let cmd = bootparams::read_cmdline(boot_params, buf);
    let args = cmdline::Args::parse(cmd.text);
    let name = args.scenario.unwrap_or(b"hello");
    if let Some(problem) = cmd.problem {
        out::put(b"WARN ");
        out::line(problem);
    }
    scenarios::run(name, boot_params, cmd.text, &args);
    finish(name)
}

/// Prints the `done` line and resets the machine.
pub fn finish(name: &[u8]) -> ! {
    out::put(b"PETREL-GUEST done scenario=");
    out::put_escaped(name);
    out::nl();
    io::reset()
}

/// Called by the exception stubs in start.s with the vector, error code and faulting rip.
#[no_mangle]
pub extern "C" fn petrel_guest_exception(vector: u64, error: u64, rip: u64) -> ! {
    out::put(b"EXCEPTION vector=");
    out::put_dec(vector);
    out::put(b" error=");
    out::put_hex(error);
    out::put(b" rip=");
    out::put_hex(rip);
    out::nl();
    io::reset()
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Deliberately no formatting: core::fmt is precompiled with SSE.
    out::line(b"PANIC");
    io::reset()
}
