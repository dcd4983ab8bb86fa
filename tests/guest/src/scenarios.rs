//! The scenarios, chosen by `petrel.scenario=NAME` (default `hello`).

use crate::bootparams::{self, E820_MAX};
use crate::cmdline::{parse_dec, Args};
use crate::io::{cpuid, inb, inl, mmio_read32, mmio_write32, outb};
use crate::out::{line, nl, put, put_dec, put_escaped, put_hex};
use core::arch::asm;

/// Runs scenario `name`; returns when it is done (the caller prints `done` and resets).
pub fn run(name: &[u8], boot_params: u64, cmdline: &[u8], args: &Args) {
    match name {
        b"hello" => line(b"HELLO from the petrel test guest"),
        b"halt" => {
            // Sleeps in KVM_RUN until the VMM stops the VM from outside.
            line(b"HALT now");
            crate::io::halt_forever();
        }
        b"cmdline" => {
            put(b"CMDLINE ");
            put_escaped(cmdline);
            nl();
        }
        b"e820" => e820(boot_params),
        b"probes" => probes(),
        b"serial-flood" => serial_flood(args),
        b"triple-fault" => triple_fault(),
        b"exception" => exception(),
        b"bootstate" => bootstate(),
        b"cpuid" => cpuid_report(),
        b"acpi" => crate::acpi::report(boot_params),
        b"smp" => crate::smp::run(boot_params),
        b"poweroff" => crate::power::poweroff(boot_params),
        b"acpi-reset" => crate::power::acpi_reset(boot_params),
        b"virtio" => crate::virtio::report(boot_params, cmdline),
        b"tsc" => tsc_report(),
        b"blk-read" => crate::blk::read(boot_params, cmdline),
        b"blk-write" => crate::blk::write(boot_params, cmdline, args),
        b"blk-ids" => crate::blk::ids(boot_params, cmdline),
        b"blk-bench" => crate::blk::bench(boot_params, cmdline, args),
        b"rng" => crate::rng::run(boot_params, cmdline),
        b"net-arp" => crate::net::arp(boot_params, cmdline, args),
        b"net-rx" => crate::net::rx(boot_params, cmdline, args),
        b"net-bench-tx" => crate::net::bench_tx(boot_params, cmdline, args),
        b"vsock-echo" => crate::vsock::echo(boot_params, cmdline, args),
        b"vsock-bench" => crate::vsock::bench(boot_params, cmdline, args),
        _ => {
            put(b"ERROR unknown scenario=");
            put_escaped(name);
            nl();
        }
    }
}

fn e820(boot_params: u64) {
    if !bootparams::usable(boot_params) {
        put(b"E820 bad boot_params=");
        put_hex(boot_params);
        nl();
        return;
    }
    let count = bootparams::e820_count(boot_params);
    if count > E820_MAX {
        put(b"E820 bad count=");
        put_dec(u64::from(count));
        nl();
        return;
    }
    put(b"E820 count=");
    put_dec(u64::from(count));
    nl();
    let mut ram: u64 = 0;
    for i in 0..count {
        let e = bootparams::e820_entry(boot_params, i);
        put(b"E820 addr=");
        put_hex(e.addr);
        put(b" size=");
        put_hex(e.size);
        put(b" type=");
        put_dec(u64::from(e.kind));
        nl();
        if e.kind == 1 {
            ram = ram.wrapping_add(e.size);
        }
    }
    put(b"MEM ram_bytes=");
    put_dec(ram);
    nl();
}

fn probe_pio(port: u16, width: u8, value: u32) {
    put(b"PROBE pio port=");
    put_hex(u64::from(port));
    put(b" width=");
    put_dec(u64::from(width));
    put(b" value=");
    put_hex(u64::from(value));
    nl();
}

fn probe_mmio(what: &[u8], addr: u64, value: u32) {
    put(what);
    put(b" addr=");
    put_hex(addr);
    put(b" width=4 value=");
    put_hex(u64::from(value));
    nl();
}

/// Port and MMIO reads of addresses with no (or a known) device. Widths are in bytes.
fn probes() {
    for port in [0x3fd_u16, 0x2fd, 0x3e8, 0x2e8] {
        probe_pio(port, 1, u32::from(inb(port)));
    }
    for port in [0xcfc_u16, 0xcf8] {
        probe_pio(port, 4, inl(port));
    }
    outb(0x80, 0x80);
    probe_pio(0x80, 1, u32::from(inb(0x80)));
    probe_pio(0x510, 1, u32::from(inb(0x510)));
    const A: u64 = 0xd000_0000;
    const B: u64 = 0xfe00_0000;
    probe_mmio(b"PROBE mmio", A, mmio_read32(A));
    probe_mmio(b"PROBE mmio", B, mmio_read32(B));
    const PATTERN: u32 = 0x1234_5678;
    mmio_write32(A, PATTERN);
    probe_mmio(b"PROBE mmio-write", A, PATTERN);
    probe_mmio(b"PROBE mmio", A, mmio_read32(A));
}

const FLOOD_DEFAULT: u64 = 10_000;
const FLOOD_MAX: u64 = 10_000_000;
const FLOOD_ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// The flood pattern repeats every lcm(36, 64) = 576 bytes.
const FLOOD_PERIOD: usize = 576;
/// One period of the pattern, computed at compile time.
static FLOOD_PATTERN: [u8; FLOOD_PERIOD] = {
    let mut p = [0u8; FLOOD_PERIOD];
    let mut i = 0;
    while i < FLOOD_PERIOD {
        p[i] = if i % 64 == 63 {
            b'\n'
        } else {
            FLOOD_ALPHABET[i % 36]
        };
        i += 1;
    }
    p
};

/// `FLOOD begin count=N`, N pattern bytes, `\nFLOOD end`.
fn serial_flood(args: &Args) {
    let n = match args.count {
        None => FLOOD_DEFAULT,
        Some(s) => match parse_dec(s) {
            Some(n) if n <= FLOOD_MAX => n,
            _ => {
                put(b"ERROR bad petrel.count=");
                put_escaped(s);
                put(b" (want 0..=10000000)");
                nl();
                return;
            }
        },
    };
    put(b"FLOOD begin count=");
    put_dec(n);
    nl();
    let mut left = n;
    while left > 0 {
        let chunk = if left < FLOOD_PERIOD as u64 {
            left as usize
        } else {
            FLOOD_PERIOD
        };
        crate::io::outsb(0x3f8, &FLOOD_PATTERN[..chunk]);
        left -= chunk as u64;
    }
    nl();
    line(b"FLOOD end");
}

/// Loads an empty IDT and divides by zero: #DE cannot be delivered → #GP → #DF → shutdown.
fn triple_fault() {
    line(b"TRIPLE-FAULT now");
    let idtr = [0u16; 5]; // limit 0, base 0
                          // SAFETY: deliberately destroys the machine; if it survives, we continue and report it.
    unsafe {
        asm!(
            "lidt [{p}]",
            "xor edx, edx",
            "xor eax, eax",
            "xor ecx, ecx",
            "div ecx",
            p = in(reg) idtr.as_ptr(),
            out("eax") _, out("ecx") _, out("edx") _,
            options(nostack),
        );
    }
    line(b"ERROR triple fault did not happen");
}

/// `ud2` with the guest's IDT in place: prints `EXCEPTION vector=6 ...` and resets.
fn exception() {
    line(b"EXCEPTION now");
    // SAFETY: raises #UD, handled by the guest's exception handler (which never returns).
    unsafe { asm!("ud2", options(nomem, nostack)) }
    line(b"ERROR exception did not happen");
}

extern "C" {
    static entry_rsi: u64;
    static entry_rsp: u64;
    static entry_rflags: u64;
    static entry_cr0: u64;
    static entry_cr3: u64;
    static entry_cr4: u64;
    static entry_efer: u64;
    static entry_cs: u16;
    static entry_ds: u16;
    static entry_ss: u16;
    static entry_gdtr: [u16; 5];
}

fn kv(key: &[u8], v: u64) {
    put(b" ");
    put(key);
    put(b"=");
    put_hex(v);
}

/// The CPU state the VMM handed over at entry (recorded by start.s).
fn bootstate() {
    // SAFETY: plain reads of statics written once by start.s before Rust ran.
    let (rsi, rsp, rflags, cr0, cr3, cr4, efer, cs, ds, ss, gdtr) = unsafe {
        (
            entry_rsi,
            entry_rsp,
            entry_rflags,
            entry_cr0,
            entry_cr3,
            entry_cr4,
            entry_efer,
            entry_cs,
            entry_ds,
            entry_ss,
            entry_gdtr,
        )
    };
    let gdt_base = u64::from(gdtr[1])
        | (u64::from(gdtr[2]) << 16)
        | (u64::from(gdtr[3]) << 32)
        | (u64::from(gdtr[4]) << 48);
    put(b"BOOTSTATE");
    kv(b"rsi", rsi);
    kv(b"rsp", rsp);
    kv(b"rflags", rflags);
    kv(b"cs", u64::from(cs));
    kv(b"ds", u64::from(ds));
    kv(b"ss", u64::from(ss));
    nl();
    put(b"BOOTSTATE");
    kv(b"cr0", cr0);
    kv(b"cr3", cr3);
    kv(b"cr4", cr4);
    kv(b"efer", efer);
    kv(b"gdt_base", gdt_base);
    kv(b"gdt_limit", u64::from(gdtr[0]));
    nl();
}

/// The CPUID leaves petrel edits: one line per leaf, `CPUID leaf=0x.. sub=0x.. eax=.. ...`.
fn cpuid_report() {
    let max_basic = cpuid(0, 0)[0];
    for (leaf, subleaf) in [
        (1, 0),
        (7, 0),
        (0xb, 0),
        (0xb, 1),
        (0xd, 0),
        (0x4000_0000, 0),
    ] {
        if leaf < 0x4000_0000 && leaf > max_basic {
            continue;
        }
        let [eax, ebx, ecx, edx] = cpuid(leaf, subleaf);
        put(b"CPUID");
        kv(b"leaf", u64::from(leaf));
        kv(b"sub", u64::from(subleaf));
        kv(b"eax", u64::from(eax));
        kv(b"ebx", u64::from(ebx));
        kv(b"ecx", u64::from(ecx));
        kv(b"edx", u64::from(edx));
        nl();
    }
}

/// `TSC cpuid khz=<dec>|- from=<leaf>|-` and `TSC pit khz=<dec>|-`: the TSC frequency from
/// CPUID (0x40000010, 0x15, 0x16) and as measured against PIT channel 2.
fn tsc_report() {
    put(b"TSC cpuid khz=");
    match crate::io::tsc_khz_known() {
        Some((khz, from)) => {
            put_dec(khz);
            put(b" from=");
            put(from);
        }
        None => put(b"- from=-"),
    }
    nl();
    put(b"TSC pit khz=");
    match crate::io::tsc_khz_pit() {
        Some(khz) => put_dec(khz),
        None => put(b"-"),
    }
    nl();
}
