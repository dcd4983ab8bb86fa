//! Reading Linux's `struct boot_params` (the "zero page") that the VMM passes in rsi.

/// Offset of `e820_entries` (u8).
const E820_ENTRIES: u64 = 0x1e8;
/// Offset of `e820_table` (128 entries of 20 bytes: u64 addr, u64 size, u32 type).
const E820_TABLE: u64 = 0x2d0;
/// Size of `e820_table` in boot_params (E820_MAX_ENTRIES_ZEROPAGE).
pub const E820_MAX: u8 = 128;
/// Offset of `hdr.cmd_line_ptr` (u32, low 32 bits).
const CMD_LINE_PTR: u64 = 0x228;
/// Offset of `ext_cmd_line_ptr` (u32, high 32 bits).
const EXT_CMD_LINE_PTR: u64 = 0x0c8;
/// Size of boot_params.
const BOOT_PARAMS_SIZE: u64 = 4096;
/// The guest maps 0..4 GiB; anything it reads must lie below this.
const MAPPED_END: u64 = 0x1_0000_0000;

#[inline(always)]
fn read_u8(addr: u64) -> u8 {
    // SAFETY: callers check that addr is inside the identity map (0..4 GiB).
    unsafe { (addr as *const u8).read_volatile() }
}

#[inline(always)]
fn read_u32(addr: u64) -> u32 {
    // SAFETY: as read_u8; unaligned reads are fine on x86.
    unsafe { (addr as *const u32).read_unaligned() }
}

#[inline(always)]
fn read_u64(addr: u64) -> u64 {
    // SAFETY: as read_u8; unaligned reads are fine on x86.
    unsafe { (addr as *const u64).read_unaligned() }
}

/// True if the whole boot_params page at `boot_params` lies in the guest's identity map.
pub fn usable(boot_params: u64) -> bool {
    mapped(boot_params, BOOT_PARAMS_SIZE)
}

/// True if `[addr, addr + len)` lies in the guest's identity map.
fn mapped(addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

/// The command line as read from guest memory.
pub struct Cmdline<'a> {
    /// The bytes up to (not including) the NUL, or up to the buffer size.
    pub text: &'a [u8],
    /// Set when something was off (unmapped pointer, no NUL within the buffer).
    pub problem: Option<&'static [u8]>,
}

/// Copies the NUL-terminated command line into `buf` (bounded by its size).
pub fn read_cmdline<'a>(boot_params: u64, buf: &'a mut [u8]) -> Cmdline<'a> {
    if !usable(boot_params) {
        return Cmdline {
            text: &[],
            problem: Some(b"boot_params outside 0..4GiB"),
        };
    }
    let ptr = u64::from(read_u32(boot_params + CMD_LINE_PTR))
        | (u64::from(read_u32(boot_params + EXT_CMD_LINE_PTR)) << 32);
    if ptr == 0 {
        return Cmdline {
            text: &[],
            problem: None,
        };
    }
    let mut len = 0;
    let mut terminated = false;
    for slot in buf.iter_mut() {
        let addr = ptr + len as u64;
        if !mapped(addr, 1) {
            return Cmdline {
                text: &[],
                problem: Some(b"cmdline outside 0..4GiB"),
            };
        }
        let b = read_u8(addr);
        if b == 0 {
            terminated = true;
            break;
        }
        *slot = b;
        len += 1;
    }
    let problem: Option<&'static [u8]> = if terminated {
        None
    } else {
        Some(b"cmdline not terminated within 4096 bytes, truncated")
    };
    Cmdline {
        text: buf.get(..len).unwrap_or(&[]),
        problem,
    }
}

/// One e820 entry.
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type (1 = RAM, 2 = reserved, ...).
    pub kind: u32,
}

/// Number of e820 entries as the VMM wrote it (may exceed E820_MAX if the VMM is wrong).
/// `boot_params` must be `usable`.
pub fn e820_count(boot_params: u64) -> u8 {
    read_u8(boot_params + E820_ENTRIES)
}

/// Entry `i` (must be < E820_MAX).
pub fn e820_entry(boot_params: u64, i: u8) -> E820Entry {
    let e = boot_params + E820_TABLE + u64::from(i) * 20;
    E820Entry {
        addr: read_u64(e),
        size: read_u64(e + 8),
        kind: read_u32(e + 16),
    }
}

/// Offset of `acpi_rsdp_addr` (u64).
const ACPI_RSDP_ADDR: u64 = 0x070;

/// `boot_params.acpi_rsdp_addr` (0 = not given). `boot_params` must be `usable`.
pub fn acpi_rsdp_addr(boot_params: u64) -> u64 {
    read_u64(boot_params + ACPI_RSDP_ADDR)
}

/// The valid e820 entries (none if boot_params is unusable or the count is bad).
fn e820_entries(boot_params: u64) -> impl Iterator<Item = E820Entry> {
    let count = if usable(boot_params) && e820_count(boot_params) <= E820_MAX {
        e820_count(boot_params)
    } else {
        0
    };
    (0..count).map(move |i| e820_entry(boot_params, i))
}

/// End of the highest RAM (type 1) e820 range below 4 GiB (ranges crossing 4 GiB are cut
/// there), and at least 1 MiB: guest-physical data (ACPI tables, ...) is only read below it.
pub fn ram_end_below_4g(boot_params: u64) -> u64 {
    let mut end = 0x10_0000;
    for e in e820_entries(boot_params) {
        if e.kind == 1 && e.addr < MAPPED_END {
            let top = e.addr.saturating_add(e.size).min(MAPPED_END);
            end = end.max(top);
        }
    }
    end
}

/// End of the RAM (type 1) e820 range that contains `addr` (0 if none does).
pub fn ram_range_end(boot_params: u64, addr: u64) -> u64 {
    for e in e820_entries(boot_params) {
        let top = e.addr.saturating_add(e.size);
        if e.kind == 1 && e.addr <= addr && addr < top {
            return top;
        }
    }
    0
}
