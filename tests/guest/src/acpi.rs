//! Finding and parsing the ACPI tables the VMM wrote (ACPI 6.x): RSDP, XSDT (or RSDT), FADT,
//! DSDT (only the `\_S5` package) and MADT.
//!
//! Everything here reads guest memory that the VMM filled in, so nothing is trusted: every
//! address must lie below the end of RAM (from e820, at most 4 GiB, and never 0), every table
//! length is bounded to 64 KiB, and anything odd prints `ACPI error <what>` and is skipped.

use crate::bootparams;
use crate::out::{line, nl, put, put_dec, put_escaped, put_hex};

/// Longest table the guest reads.
const MAX_TABLE_LEN: u64 = 64 * 1024;
/// Size of the standard table header.
const HEADER_LEN: u64 = 36;
/// Where the RSDP scan looks (on 16-byte boundaries).
const SCAN_START: u64 = 0xE_0000;
const SCAN_END: u64 = 0x10_0000;
/// "RSD PTR " as a little-endian u64.
const RSDP_SIG: u64 = u64::from_le_bytes(*b"RSD PTR ");

/// Bounded reads of guest-physical memory (identity-mapped) below `limit`.
#[derive(Clone, Copy)]
pub struct Mem {
    limit: u64,
}

impl Mem {
    /// Reads are allowed below the end of RAM from e820 (at least 1 MiB, at most 4 GiB).
    pub fn new(boot_params: u64) -> Mem {
        Mem {
            limit: bootparams::ram_end_below_4g(boot_params),
        }
    }

    /// True if `[addr, addr + len)` may be read (address 0 never may).
    pub fn ok(&self, addr: u64, len: u64) -> bool {
        addr != 0 && addr.checked_add(len).is_some_and(|end| end <= self.limit)
    }

    /// One byte; the caller checked `ok`.
    pub fn u8(&self, addr: u64) -> u8 {
        // SAFETY: addr is non-zero and inside guest RAM below 4 GiB (identity-mapped).
        unsafe { (addr as *const u8).read_volatile() }
    }

    /// Little-endian u16; the caller checked `ok`.
    pub fn u16(&self, addr: u64) -> u16 {
        // SAFETY: as u8; unaligned reads are fine on x86.
        unsafe { (addr as *const u16).read_unaligned() }
    }

    /// Little-endian u32; the caller checked `ok`.
    pub fn u32(&self, addr: u64) -> u32 {
        // SAFETY: as u8.
        unsafe { (addr as *const u32).read_unaligned() }
    }

    /// Little-endian u64; the caller checked `ok`.
    pub fn u64(&self, addr: u64) -> u64 {
        // SAFETY: as u8.
        unsafe { (addr as *const u64).read_unaligned() }
    }

    /// Byte sum (mod 256) of `[addr, addr + len)`; the caller checked `ok`.
    fn sum(&self, addr: u64, len: u64) -> u8 {
        let mut s: u8 = 0;
        for a in addr..addr + len {
            s = s.wrapping_add(self.u8(a));
        }
        s
    }

    /// 4-byte signature at `addr`; the caller checked `ok`.
    fn sig(&self, addr: u64) -> [u8; 4] {
        self.u32(addr).to_le_bytes()
    }
}

/// `ACPI error <what>` (always printed, also by the quiet callers).
fn error(what: &[u8]) {
    put(b"ACPI error ");
    line(what);
}

/// `ACPI error <what>0x<addr>`.
fn error_at(what: &[u8], addr: u64) {
    put(b"ACPI error ");
    put(what);
    put_hex(addr);
    nl();
}

fn kv_hex(key: &[u8], v: u64) {
    put(b" ");
    put(key);
    put(b"=");
    put_hex(v);
}

fn kv_dec(key: &[u8], v: u64) {
    put(b" ");
    put(key);
    put(b"=");
    put_dec(v);
}

fn ok_bad(ok: bool) -> &'static [u8] {
    if ok {
        b"ok"
    } else {
        b"bad"
    }
}

// ---------------------------------------------------------------------------------------------
// RSDP

/// A Root System Description Pointer whose signature matched.
struct Rsdp {
    addr: u64,
    revision: u8,
    rsdt: u32,
    /// Only for revision >= 2.
    xsdt: u64,
    length: u32,
    checksum_ok: bool,
    /// Over all 36 bytes; true for revision < 2 (no extended part).
    ext_checksum_ok: bool,
}

/// The RSDP at `addr`, if it is readable and starts with "RSD PTR ".
fn rsdp_at(mem: &Mem, addr: u64) -> Option<Rsdp> {
    if !mem.ok(addr, 20) || mem.u64(addr) != RSDP_SIG {
        return None;
    }
    let revision = mem.u8(addr + 15);
    let mut r = Rsdp {
        addr,
        revision,
        rsdt: mem.u32(addr + 16),
        xsdt: 0,
        length: 20,
        checksum_ok: mem.sum(addr, 20) == 0,
        ext_checksum_ok: true,
    };
    if revision >= 2 {
        if !mem.ok(addr, 36) {
            error_at(b"rsdp extended part outside RAM at ", addr);
            return Some(r);
        }
        r.length = mem.u32(addr + 20);
        r.xsdt = mem.u64(addr + 24);
        r.ext_checksum_ok = mem.sum(addr, 36) == 0;
    }
    Some(r)
}

/// Scans 0xE0000..0x100000 on 16-byte boundaries for "RSD PTR " with a good 20-byte checksum.
fn rsdp_scan(mem: &Mem) -> Option<u64> {
    if !mem.ok(SCAN_START, SCAN_END - SCAN_START) {
        error(b"rsdp scan area 0xe0000..0x100000 outside RAM");
        return None;
    }
    let mut a = SCAN_START;
    while a < SCAN_END {
        if mem.u64(a) == RSDP_SIG {
            if mem.sum(a, 20) == 0 {
                return Some(a);
            }
            error_at(b"rsdp scan: bad checksum, skipped at ", a);
        }
        a += 16;
    }
    None
}

fn print_rsdp_source(addr: u64, from: &[u8]) {
    put(b"ACPI rsdp=");
    put_hex(addr);
    put(b" from=");
    line(from);
}

// ---------------------------------------------------------------------------------------------
// Tables

/// A table whose header was readable and whose length is sane.
#[derive(Clone, Copy)]
pub struct Table {
    pub addr: u64,
    pub sig: [u8; 4],
    pub len: u64,
    pub rev: u8,
    pub checksum_ok: bool,
}

/// `ACPI table=<SIG> addr=0x.. len=<dec> rev=<dec> checksum=ok|bad`.
fn print_table(t: &Table) {
    put(b"ACPI table=");
    put_escaped(&t.sig);
    kv_hex(b"addr", t.addr);
    kv_dec(b"len", t.len);
    kv_dec(b"rev", u64::from(t.rev));
    put(b" checksum=");
    line(ok_bad(t.checksum_ok));
}

/// Reads the header of the table at `addr` (`what` names it in errors) and checks its
/// checksum. Prints the table line when `verbose` or when the checksum is bad.
pub fn table_at(mem: &Mem, addr: u64, what: &[u8], verbose: bool) -> Option<Table> {
    if !mem.ok(addr, HEADER_LEN) {
        put(b"ACPI error ");
        put(what);
        put(b" addr=");
        put_hex(addr);
        line(b" outside RAM");
        return None;
    }
    let sig = mem.sig(addr);
    let len = u64::from(mem.u32(addr + 4));
    if !(HEADER_LEN..=MAX_TABLE_LEN).contains(&len) || !mem.ok(addr, len) {
        put(b"ACPI error table=");
        put_escaped(&sig);
        kv_hex(b"addr", addr);
        kv_dec(b"len", len);
        line(b" bad length");
        return None;
    }
    let t = Table {
        addr,
        sig,
        len,
        rev: mem.u8(addr + 8),
        checksum_ok: mem.sum(addr, len) == 0,
    };
    if verbose || !t.checksum_ok {
        print_table(&t);
    }
    Some(t)
}

/// What `discover` found.
pub struct Acpi {
    pub mem: Mem,
    /// The first FACP table listed in the XSDT.
    pub fadt: Option<Table>,
    /// The first APIC table (MADT) listed in the XSDT.
    pub madt: Option<Table>,
}

/// Finds the RSDP (boot_params.acpi_rsdp_addr, else the 0xE0000 scan; with `verbose` both are
/// tried and printed), follows the XSDT (RSDT for revision < 2) and records the FADT and MADT.
/// Errors are always printed; with `verbose` also the rsdp and table lines.
pub fn discover(boot_params: u64, verbose: bool) -> Option<Acpi> {
    let mem = Mem::new(boot_params);
    let mut chosen = None;
    let from_bp = if bootparams::usable(boot_params) {
        bootparams::acpi_rsdp_addr(boot_params)
    } else {
        0
    };
    if from_bp == 0 {
        error(b"bootparams acpi_rsdp_addr=0x0");
    } else if let Some(r) = rsdp_at(&mem, from_bp) {
        if verbose {
            print_rsdp_source(from_bp, b"bootparams");
        }
        chosen = Some(r);
    } else {
        error_at(b"no rsdp at bootparams acpi_rsdp_addr=", from_bp);
    }
    if verbose || chosen.is_none() {
        match rsdp_scan(&mem) {
            Some(a) => {
                if verbose {
                    print_rsdp_source(a, b"scan");
                }
                if chosen.is_none() {
                    chosen = rsdp_at(&mem, a);
                }
            }
            None => error(b"no rsdp found by scan of 0xe0000..0x100000"),
        }
    }
    let rsdp = chosen?;
    if verbose || !rsdp.checksum_ok || !rsdp.ext_checksum_ok {
        put(b"ACPI rsdp");
        kv_hex(b"addr", rsdp.addr);
        kv_dec(b"rev", u64::from(rsdp.revision));
        put(b" oem=");
        put_escaped(&mem.u64(rsdp.addr + 9).to_le_bytes()[..6]);
        kv_hex(b"rsdt", u64::from(rsdp.rsdt));
        kv_hex(b"xsdt", rsdp.xsdt);
        kv_dec(b"length", u64::from(rsdp.length));
        put(b" checksum=");
        put(ok_bad(rsdp.checksum_ok));
        put(b" ext_checksum=");
        line(ok_bad(rsdp.ext_checksum_ok));
    }

    let (root_addr, entry_size, root_sig): (u64, u64, &[u8; 4]) =
        if rsdp.revision >= 2 && rsdp.xsdt != 0 {
            (rsdp.xsdt, 8, b"XSDT")
        } else {
            (u64::from(rsdp.rsdt), 4, b"RSDT")
        };
    let root = table_at(&mem, root_addr, root_sig, verbose)?;
    if &root.sig != root_sig {
        put(b"ACPI error root table signature=");
        put_escaped(&root.sig);
        put(b" expected ");
        line(root_sig);
        return None;
    }
    let body = root.len - HEADER_LEN;
    if !body.is_multiple_of(entry_size) {
        put(b"ACPI error ");
        put(root_sig);
        kv_dec(b"len", root.len);
        line(b" not header + whole entries");
    }
    let mut acpi = Acpi {
        mem,
        fadt: None,
        madt: None,
    };
    for i in 0..body / entry_size {
        let at = root.addr + HEADER_LEN + i * entry_size;
        let addr = if entry_size == 8 {
            mem.u64(at)
        } else {
            u64::from(mem.u32(at))
        };
        let Some(t) = table_at(&mem, addr, b"root table entry", verbose) else {
            continue;
        };
        if &t.sig == b"FACP" && acpi.fadt.is_none() {
            acpi.fadt = Some(t);
        } else if &t.sig == b"APIC" && acpi.madt.is_none() {
            acpi.madt = Some(t);
        }
    }
    if acpi.fadt.is_none() {
        error(b"no FACP table");
    }
    if acpi.madt.is_none() {
        error(b"no APIC table");
    }
    Some(acpi)
}

// ---------------------------------------------------------------------------------------------
// FADT

/// Generic Address Structure (12 bytes).
#[derive(Clone, Copy)]
pub struct Gas {
    /// 0 = system memory, 1 = system I/O, ...
    pub space: u8,
    pub bit_width: u8,
    pub bit_offset: u8,
    /// 0 = undefined (use bit_width), 1 = byte, 2 = word, 3 = dword, 4 = qword.
    pub access_size: u8,
    pub addr: u64,
}

impl Gas {
    fn read(mem: &Mem, at: u64) -> Gas {
        Gas {
            space: mem.u8(at),
            bit_width: mem.u8(at + 1),
            bit_offset: mem.u8(at + 2),
            access_size: mem.u8(at + 3),
            addr: mem.u64(at + 4),
        }
    }

    /// Access size code (1 = byte, 2 = word, 3 = dword, 4 = qword): access_size, or derived
    /// from bit_width when access_size is 0 (undefined). None if neither gives a valid size.
    pub fn access(&self) -> Option<u8> {
        match self.access_size {
            1..=4 => Some(self.access_size),
            0 => {
                // A loop over opaque values rather than a `match` on 8 | 16 | 32 | 64: LLVM
                // lowers that switch with tzcnt, which build.sh rejects.
                let mut i = 0;
                while i < 4 {
                    if core::hint::black_box([8u8, 16, 32, 64])[i] == self.bit_width {
                        return Some(i as u8 + 1);
                    }
                    i += 1;
                }
                None
            }
            _ => None,
        }
    }

    fn print(&self, what: &[u8]) {
        put(b"ACPI fadt ");
        put(what);
        kv_dec(b"space", u64::from(self.space));
        kv_dec(b"bit_width", u64::from(self.bit_width));
        kv_dec(b"bit_offset", u64::from(self.bit_offset));
        kv_dec(b"access_size", u64::from(self.access_size));
        kv_hex(b"addr", self.addr);
    }
}

/// The FADT fields the guest uses. Fields beyond the table's length are None / 0.
pub struct Fadt {
    /// Offset 112.
    pub flags: Option<u32>,
    /// DSDT (offset 40, u32).
    pub dsdt32: u64,
    /// X_DSDT (offset 140, u64).
    pub x_dsdt: u64,
    /// RESET_REG (offset 116) and RESET_VALUE (offset 128).
    pub reset: Option<(Gas, u8)>,
    /// SLEEP_CONTROL_REG (offset 244).
    pub sleep_control: Option<Gas>,
    /// SLEEP_STATUS_REG (offset 256).
    pub sleep_status: Option<Gas>,
}

/// FADT flag bit 20: HW_REDUCED_ACPI.
pub const FADT_HW_REDUCED: u32 = 1 << 20;

impl Fadt {
    /// The DSDT to use: X_DSDT, or DSDT when X_DSDT is 0.
    pub fn dsdt(&self) -> u64 {
        if self.x_dsdt != 0 {
            self.x_dsdt
        } else {
            self.dsdt32
        }
    }
}

/// Reads the FADT fields that fit in `t.len`; short tables print `ACPI error`.
pub fn fadt(mem: &Mem, t: &Table) -> Fadt {
    let has = |end: u64| t.len >= end;
    let a = t.addr;
    let f = Fadt {
        flags: has(116).then(|| mem.u32(a + 112)),
        dsdt32: if has(44) {
            u64::from(mem.u32(a + 40))
        } else {
            0
        },
        x_dsdt: if has(148) { mem.u64(a + 140) } else { 0 },
        reset: has(129).then(|| (Gas::read(mem, a + 116), mem.u8(a + 128))),
        sleep_control: has(256).then(|| Gas::read(mem, a + 244)),
        sleep_status: has(268).then(|| Gas::read(mem, a + 256)),
    };
    if !has(268) {
        put(b"ACPI error fadt");
        kv_dec(b"len", t.len);
        line(b" too short for the sleep registers (need 268)");
    }
    f
}

/// The `acpi` scenario's FADT lines.
fn print_fadt(f: &Fadt) {
    match f.flags {
        Some(flags) => {
            put(b"ACPI fadt flags=");
            put_hex(u64::from(flags));
            put(b" hw_reduced=");
            put_dec(u64::from(flags & FADT_HW_REDUCED != 0));
            nl();
        }
        None => error(b"fadt too short for flags"),
    }
    put(b"ACPI fadt");
    kv_hex(b"dsdt", f.dsdt32);
    kv_hex(b"x_dsdt", f.x_dsdt);
    nl();
    if let Some(g) = f.sleep_control {
        g.print(b"sleep_control");
        nl();
    }
    if let Some(g) = f.sleep_status {
        g.print(b"sleep_status");
        nl();
    }
    match f.reset {
        Some((g, value)) => {
            g.print(b"reset");
            kv_hex(b"value", u64::from(value));
            nl();
        }
        None => error(b"fadt too short for the reset register"),
    }
}

// ---------------------------------------------------------------------------------------------
// DSDT: \_S5

/// Reads the DSDT at `addr` (its table line with `verbose`) and returns the first element of its
/// `\_S5` package (the S5 SLP_TYP), or None (with an `ACPI error`) if it cannot be found simply.
pub fn dsdt_s5(mem: &Mem, addr: u64, verbose: bool) -> Option<u8> {
    let t = table_at(mem, addr, b"dsdt", verbose)?;
    if &t.sig != b"DSDT" {
        put(b"ACPI error dsdt signature=");
        put_escaped(&t.sig);
        nl();
        return None;
    }
    let end = t.addr + t.len;
    let s5 = u32::from_le_bytes(*b"_S5_");
    let mut p = t.addr + HEADER_LEN;
    while p + 4 <= end {
        // NameOp (0x08), optionally the root prefix '\' (0x5c), then "_S5_".
        if mem.u32(p) == s5 {
            let name_op = p > t.addr + HEADER_LEN
                && (mem.u8(p - 1) == 0x08
                    || (mem.u8(p - 1) == 0x5c
                        && p > t.addr + HEADER_LEN + 1
                        && mem.u8(p - 2) == 0x08));
            if name_op {
                if let Some(v) = s5_package(mem, p + 4, end) {
                    return Some(v);
                }
            }
        }
        p += 1;
    }
    error(b"dsdt no \\_S5 package");
    None
}

/// Parses `Package (n) { SLP_TYP, ... }` at `p` (the PackageOp) and returns SLP_TYP.
fn s5_package(mem: &Mem, p: u64, end: u64) -> Option<u8> {
    if p + 3 > end || mem.u8(p) != 0x12 {
        error(b"dsdt \\_S5 is not a package");
        return None;
    }
    // PkgLength: bits 7:6 of the lead byte = number of following bytes.
    let extra = u64::from(mem.u8(p + 1) >> 6);
    let elem = p + 2 + extra + 1; // skip PackageOp, PkgLength, NumElements
    if elem >= end || mem.u8(p + 2 + extra) == 0 {
        error(b"dsdt \\_S5 package empty or truncated");
        return None;
    }
    let op = mem.u8(elem);
    let size = match op {
        0x0a => 1,
        0x0b => 2,
        0x0c => 4,
        _ => 0,
    };
    if elem + 1 + size > end {
        error(b"dsdt \\_S5 package truncated");
        return None;
    }
    let value = match op {
        0x00 => 0,
        0x01 => 1,
        0xff => u64::MAX,
        0x0a => u64::from(mem.u8(elem + 1)),
        0x0b => u64::from(mem.u16(elem + 1)),
        0x0c => u64::from(mem.u32(elem + 1)),
        _ => {
            error(b"dsdt \\_S5 first element is not an integer");
            return None;
        }
    };
    if value > 7 {
        put(b"ACPI error dsdt \\_S5 slp_typ=");
        put_hex(value);
        line(b" does not fit 3 bits");
        return None;
    }
    Some(value as u8)
}

// ---------------------------------------------------------------------------------------------
// MADT

/// One MADT entry.
pub enum MadtEntry {
    /// Type 0, Processor Local APIC.
    Lapic { uid: u8, apic_id: u8, flags: u32 },
    /// Type 1, I/O APIC.
    IoApic { id: u8, addr: u32, gsi_base: u32 },
    /// Type 2, Interrupt Source Override.
    Override {
        bus: u8,
        irq: u8,
        gsi: u32,
        flags: u16,
    },
    /// Type 4, Local APIC NMI.
    Nmi { uid: u8, flags: u16, lint: u8 },
    /// Type 9, Processor Local x2APIC.
    X2apic { apic_id: u32, uid: u32, flags: u32 },
    /// Type 10, Local x2APIC NMI.
    X2apicNmi { uid: u32, flags: u16, lint: u8 },
    /// Any other type (valid ACPI, not used here).
    Other { kind: u8, len: u8 },
}

/// Calls `f` for each well-formed MADT entry. Corrupt entries print `ACPI error madt ...`: a
/// too-short entry of a known type is skipped; a length < 2 or past the table end stops the walk.
pub fn madt_walk(mem: &Mem, t: &Table, f: &mut dyn FnMut(MadtEntry)) {
    let end = t.addr + t.len;
    let mut p = t.addr + 44;
    if p > end {
        error(b"madt shorter than 44 bytes");
        return;
    }
    while p < end {
        if p + 2 > end {
            error_at(b"madt entry header past the table end at ", p);
            return;
        }
        let kind = mem.u8(p);
        let len = mem.u8(p + 1);
        if len < 2 || p + u64::from(len) > end {
            put(b"ACPI error madt entry");
            kv_dec(b"type", u64::from(kind));
            kv_dec(b"len", u64::from(len));
            kv_hex(b"at", p);
            line(b" bad length, rest of the MADT skipped");
            return;
        }
        let need = match kind {
            0 => 8,
            1 => 12,
            2 => 10,
            4 => 6,
            9 => 16,
            10 => 12,
            _ => 2,
        };
        if len < need {
            put(b"ACPI error madt entry");
            kv_dec(b"type", u64::from(kind));
            kv_dec(b"len", u64::from(len));
            line(b" too short, skipped");
        } else {
            f(match kind {
                0 => MadtEntry::Lapic {
                    uid: mem.u8(p + 2),
                    apic_id: mem.u8(p + 3),
                    flags: mem.u32(p + 4),
                },
                1 => MadtEntry::IoApic {
                    id: mem.u8(p + 2),
                    addr: mem.u32(p + 4),
                    gsi_base: mem.u32(p + 8),
                },
                2 => MadtEntry::Override {
                    bus: mem.u8(p + 2),
                    irq: mem.u8(p + 3),
                    gsi: mem.u32(p + 4),
                    flags: mem.u16(p + 8),
                },
                4 => MadtEntry::Nmi {
                    uid: mem.u8(p + 2),
                    flags: mem.u16(p + 3),
                    lint: mem.u8(p + 5),
                },
                9 => MadtEntry::X2apic {
                    apic_id: mem.u32(p + 4),
                    flags: mem.u32(p + 8),
                    uid: mem.u32(p + 12),
                },
                10 => MadtEntry::X2apicNmi {
                    flags: mem.u16(p + 2),
                    uid: mem.u32(p + 4),
                    lint: mem.u8(p + 8),
                },
                _ => MadtEntry::Other { kind, len },
            });
        }
        p += u64::from(len);
    }
}

/// The `acpi` scenario's MADT lines; returns the number of enabled CPUs.
fn print_madt(mem: &Mem, t: &Table) -> u64 {
    put(b"ACPI madt");
    if t.len >= 44 {
        kv_hex(b"lapic_addr", u64::from(mem.u32(t.addr + 36)));
        kv_hex(b"flags", u64::from(mem.u32(t.addr + 40)));
    }
    nl();
    let (mut lapics, mut x2apics, mut ioapics, mut overrides, mut nmis) = (0, 0, 0, 0, 0);
    madt_walk(mem, t, &mut |e| match e {
        MadtEntry::Lapic {
            uid,
            apic_id,
            flags,
        } => {
            put(b"ACPI madt lapic");
            kv_dec(b"uid", u64::from(uid));
            kv_dec(b"apic_id", u64::from(apic_id));
            kv_hex(b"flags", u64::from(flags));
            nl();
            lapics += u64::from(flags & 1);
        }
        MadtEntry::IoApic { id, addr, gsi_base } => {
            put(b"ACPI madt ioapic");
            kv_dec(b"id", u64::from(id));
            kv_hex(b"addr", u64::from(addr));
            kv_dec(b"gsi_base", u64::from(gsi_base));
            nl();
            ioapics += 1;
        }
        MadtEntry::Override {
            bus,
            irq,
            gsi,
            flags,
        } => {
            put(b"ACPI madt override");
            kv_dec(b"bus", u64::from(bus));
            kv_dec(b"irq", u64::from(irq));
            kv_dec(b"gsi", u64::from(gsi));
            kv_hex(b"flags", u64::from(flags));
            nl();
            overrides += 1;
        }
        MadtEntry::Nmi { uid, flags, lint } => {
            put(b"ACPI madt nmi");
            kv_hex(b"uid", u64::from(uid));
            kv_hex(b"flags", u64::from(flags));
            kv_dec(b"lint", u64::from(lint));
            nl();
            nmis += 1;
        }
        MadtEntry::X2apic {
            apic_id,
            uid,
            flags,
        } => {
            put(b"ACPI madt x2apic");
            kv_dec(b"uid", u64::from(uid));
            kv_dec(b"apic_id", u64::from(apic_id));
            kv_hex(b"flags", u64::from(flags));
            nl();
            x2apics += u64::from(flags & 1);
        }
        MadtEntry::X2apicNmi { uid, flags, lint } => {
            put(b"ACPI madt x2apic-nmi");
            kv_hex(b"uid", u64::from(uid));
            kv_hex(b"flags", u64::from(flags));
            kv_dec(b"lint", u64::from(lint));
            nl();
            nmis += 1;
        }
        MadtEntry::Other { kind, len } => {
            put(b"ACPI madt entry");
            kv_dec(b"type", u64::from(kind));
            kv_dec(b"len", u64::from(len));
            nl();
        }
    });
    put(b"ACPI madt");
    kv_dec(b"lapics", lapics);
    kv_dec(b"x2apics", x2apics);
    kv_dec(b"ioapics", ioapics);
    kv_dec(b"overrides", overrides);
    kv_dec(b"nmis", nmis);
    nl();
    lapics + x2apics
}

/// The `acpi` scenario: everything above, printed.
pub fn report(boot_params: u64) {
    let Some(acpi) = discover(boot_params, true) else {
        return;
    };
    let mem = acpi.mem;
    if let Some(t) = acpi.fadt {
        let f = fadt(&mem, &t);
        print_fadt(&f);
        let dsdt = f.dsdt();
        if dsdt == 0 {
            error(b"fadt has no dsdt");
        } else if let Some(typ) = dsdt_s5(&mem, dsdt, true) {
            put(b"ACPI dsdt s5 slp_typ=");
            put_dec(u64::from(typ));
            nl();
        }
    }
    if let Some(t) = acpi.madt {
        let cpus = print_madt(&mem, &t);
        put(b"ACPI cpus=");
        put_dec(cpus);
        nl();
    }
}
