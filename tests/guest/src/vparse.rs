//! Pure parsing for virtio-mmio discovery: Linux's `virtio_mmio.device=` command-line syntax, a
//! bounded scan of the DSDT's AML for `LNRO0005` devices, number parsing and FNV-1a.
//!
//! Nothing here touches hardware, allocates or uses anything but `core`, so a host-side harness
//! can `include!` this file and test it (see README.md). Every read is bounded by the slice.

/// A virtio-mmio device window as a kernel would learn it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MmioDev {
    /// Physical base address of the register window.
    pub base: u64,
    /// Size of the window in bytes.
    pub size: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// Value of an ASCII digit in `radix` (2..=16).
fn digit(b: u8, radix: u64) -> Option<u64> {
    let v = match b {
        b'0'..=b'9' => u64::from(b - b'0'),
        b'a'..=b'f' => u64::from(b - b'a') + 10,
        b'A'..=b'F' => u64::from(b - b'A') + 10,
        _ => return None,
    };
    if v < radix {
        Some(v)
    } else {
        None
    }
}

/// Parses the longest prefix of `s` that is a number in C's "base 0" syntax (`0x`/`0X` hex,
/// a leading `0` octal, else decimal), like the kernel's `simple_strtoull(s, &end, 0)`.
/// Returns the value and the number of bytes used; None if there is no digit or it overflows.
pub fn parse_c_number(s: &[u8]) -> Option<(u64, usize)> {
    let (radix, mut i) = if s.len() >= 3
        && s[0] == b'0'
        && (s[1] == b'x' || s[1] == b'X')
        && digit(s[2], 16).is_some()
    {
        (16, 2)
    } else if s.len() >= 2 && s[0] == b'0' && digit(s[1], 8).is_some() {
        (8, 1)
    } else {
        (10, 0)
    };
    let start = i;
    let mut v: u64 = 0;
    while i < s.len() {
        let Some(d) = digit(s[i], radix) else { break };
        v = v.checked_mul(radix)?.checked_add(d)?;
        i += 1;
    }
    if i == start {
        return None;
    }
    Some((v, i))
}

/// A whole token as an unsigned number: decimal or `0x` hex (also `0`-prefixed octal).
/// None if anything follows the number.
pub fn parse_number(s: &[u8]) -> Option<u64> {
    let (v, n) = parse_c_number(s)?;
    if n == s.len() {
        Some(v)
    } else {
        None
    }
}

/// The kernel's `memparse`: a number (base 0) with an optional K/M/G/T/P/E suffix (either case).
pub fn memparse(s: &[u8]) -> Option<(u64, usize)> {
    let (v, mut n) = parse_c_number(s)?;
    let shift = match s.get(n) {
        Some(b'k' | b'K') => 10,
        Some(b'm' | b'M') => 20,
        Some(b'g' | b'G') => 30,
        Some(b't' | b'T') => 40,
        Some(b'p' | b'P') => 50,
        Some(b'e' | b'E') => 60,
        _ => 0,
    };
    if shift == 0 {
        return Some((v, n));
    }
    n += 1;
    if v > (u64::MAX >> shift) {
        return None;
    }
    Some((v << shift, n))
}

/// Unsigned decimal digits at the start of `s`; None if none or overflow.
fn parse_decimal_prefix(s: &[u8]) -> Option<(u64, usize)> {
    let mut i = 0;
    let mut v: u64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add(u64::from(s[i] - b'0'))?;
        i += 1;
    }
    if i == 0 {
        None
    } else {
        Some((v, i))
    }
}

// ---------------------------------------------------------------------------------------------
// Command line

/// Parses the value of one `virtio_mmio.device=` parameter with Linux's syntax
/// `<size>@<base>:<irq>[:<id>]` (drivers/virtio/virtio_mmio.c): size through `memparse` (K/M/G
/// suffixes, `0x` hex allowed), base as C's `%lli` (`0x` hex, `0` octal or decimal), irq decimal
/// and not 0, an optional `:<id>` (decimal, may be negative; ignored), nothing after that.
/// None if the value does not match or the size is 0.
pub fn parse_virtio_mmio_device(v: &[u8]) -> Option<MmioDev> {
    let (size, mut i) = memparse(v)?;
    if size == 0 || v.get(i) != Some(&b'@') {
        return None;
    }
    i += 1;
    let (base, n) = parse_c_number(&v[i..])?;
    i += n;
    if v.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let (irq, n) = parse_decimal_prefix(&v[i..])?;
    i += n;
    if irq == 0 || irq > u64::from(u32::MAX) {
        return None;
    }
    if i < v.len() {
        // Optional ":<id>".
        if v[i] != b':' {
            return None;
        }
        i += 1;
        if v.get(i) == Some(&b'-') {
            i += 1;
        }
        let (_, n) = parse_decimal_prefix(&v[i..])?;
        i += n;
        if i != v.len() {
            return None;
        }
    }
    Some(MmioDev {
        base,
        size,
        irq: irq as u32,
    })
}

/// The key of a virtio-mmio device on the kernel command line.
pub const CMDLINE_KEY: &[u8] = b"virtio_mmio.device=";

// ---------------------------------------------------------------------------------------------
// DSDT

/// What the DSDT scan found for one `LNRO0005` device.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DsdtDev {
    /// Offset of the device's DeviceOp (0x5B 0x82) in the table.
    pub offset: usize,
    /// Memory32Fixed base and length, if the `_CRS` buffer has one.
    pub mem: Option<(u32, u32)>,
    /// First interrupt of the first Extended Interrupt (or legacy IRQ) descriptor.
    pub irq: Option<u32>,
    /// True if the device has a `Name(_CRS, Buffer...)` at all.
    pub has_crs: bool,
}

/// The `_HID` string the kernel's virtio-mmio ACPI driver matches.
pub const LNRO0005: &[u8] = b"LNRO0005";
/// ACPI table header length: the AML starts after it.
const HEADER_LEN: usize = 36;

fn u16_at(aml: &[u8], at: usize) -> Option<u16> {
    let b = aml.get(at..at.checked_add(2)?)?;
    Some(u16::from(b[0]) | (u16::from(b[1]) << 8))
}

fn u32_at(aml: &[u8], at: usize) -> Option<u32> {
    let b = aml.get(at..at.checked_add(4)?)?;
    Some(
        u32::from(b[0])
            | (u32::from(b[1]) << 8)
            | (u32::from(b[2]) << 16)
            | (u32::from(b[3]) << 24),
    )
}

/// Decodes an AML PkgLength at `at`: (the length, which counts the PkgLength bytes themselves,
/// and the number of PkgLength bytes).
pub fn pkg_length(aml: &[u8], at: usize) -> Option<(usize, usize)> {
    let lead = *aml.get(at)?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    if lead & 0x30 != 0 {
        return None; // bits 5:4 must be 0 when bytes follow
    }
    let mut len = usize::from(lead & 0x0f);
    let mut k = 0;
    while k < follow {
        let b = *aml.get(at + 1 + k)?;
        len |= usize::from(b) << (4 + 8 * k);
        k += 1;
    }
    Some((len, 1 + follow))
}

/// Length of the AML NameString at `at` (root/parent prefixes, then a NameSeg, a dual or multi
/// name path, or the null name).
fn name_string_len(aml: &[u8], at: usize) -> Option<usize> {
    let mut i = at;
    while matches!(aml.get(i), Some(b'\\' | b'^')) {
        i += 1;
    }
    let n = match *aml.get(i)? {
        0x00 => 1,
        0x2e => 1 + 8,
        0x2f => 2 + 4 * usize::from(*aml.get(i + 1)?),
        _ => 4,
    };
    if i + n > aml.len() {
        return None;
    }
    Some(i + n - at)
}

/// If a DeviceOp with a sane PkgLength starts at `at` and ends by `limit`: (start of its
/// TermList after the name, end of the device).
fn device_at(aml: &[u8], at: usize, limit: usize) -> Option<(usize, usize)> {
    if aml.get(at) != Some(&0x5b) || aml.get(at + 1) != Some(&0x82) {
        return None;
    }
    let (len, n) = pkg_length(aml, at + 2)?;
    let end = at.checked_add(2)?.checked_add(len)?;
    if len < n + 4 || end > limit {
        return None;
    }
    let name = name_string_len(aml, at + 2 + n)?;
    let body = at + 2 + n + name;
    if body > end {
        return None;
    }
    Some((body, end))
}

/// True if `NameOp <seg>` starts at `at` (NameOp 0x08, then the 4-byte NameSeg).
fn name_op(aml: &[u8], at: usize, seg: &[u8; 4]) -> bool {
    aml.get(at) == Some(&0x08) && aml.get(at + 1..at + 5) == Some(&seg[..])
}

/// An AML integer constant at `at`: (value, bytes used).
fn aml_integer(aml: &[u8], at: usize) -> Option<(u64, usize)> {
    Some(match *aml.get(at)? {
        0x00 => (0, 1),
        0x01 => (1, 1),
        0x0a => (u64::from(*aml.get(at + 1)?), 2),
        0x0b => (u64::from(u16_at(aml, at + 1)?), 3),
        0x0c => (u64::from(u32_at(aml, at + 1)?), 5),
        0x0e => (
            u64::from(u32_at(aml, at + 1)?) | (u64::from(u32_at(aml, at + 5)?) << 32),
            9,
        ),
        _ => return None,
    })
}

/// Lowest set bit of a legacy IRQ mask (a loop: LLVM would use tzcnt for trailing_zeros).
fn lowest_bit(mask: u16) -> Option<u32> {
    let mut i = 0;
    while i < 16 {
        if core::hint::black_box(mask) >> i & 1 != 0 {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Walks the resource descriptors of a `_CRS` buffer in `aml[start..end]` and fills in the first
/// Memory32Fixed (large item 0x86) and the first interrupt: Extended Interrupt (large item 0x89)
/// or a legacy IRQ descriptor (small item type 4). Stops at the End Tag or a malformed item.
fn parse_resources(aml: &[u8], start: usize, end: usize, dev: &mut DsdtDev) {
    let mut q = start;
    while q < end {
        let tag = aml[q];
        if tag & 0x80 != 0 {
            // Large item: tag, u16 length, data.
            let Some(len) = u16_at(aml, q + 1) else {
                return;
            };
            let body = q + 3;
            let next = body + usize::from(len);
            if next > end {
                return;
            }
            if tag == 0x86 && len >= 9 && dev.mem.is_none() {
                // Memory32Fixed: information byte (bit 0 = read/write), base u32, length u32.
                if let (Some(b), Some(l)) = (u32_at(aml, body + 1), u32_at(aml, body + 5)) {
                    dev.mem = Some((b, l));
                }
            } else if tag == 0x89 && len >= 6 && dev.irq.is_none() && aml[body + 1] >= 1 {
                // Extended Interrupt: flags, count, count × u32.
                dev.irq = u32_at(aml, body + 2);
            }
            q = next;
        } else {
            // Small item: type in bits 6:3, length in bits 2:0.
            let kind = (tag >> 3) & 0x0f;
            let len = usize::from(tag & 7);
            if kind == 0x0f {
                return; // End Tag
            }
            let body = q + 1;
            let next = body + len;
            if next > end {
                return;
            }
            if kind == 4 && len >= 2 && dev.irq.is_none() {
                if let Some(mask) = u16_at(aml, body) {
                    dev.irq = lowest_bit(mask);
                }
            }
            q = next;
        }
    }
}

/// Looks at the objects of the device whose TermList is `aml[body..end]`: a `_HID` string equal
/// to "LNRO0005" and a `Name(_CRS, Buffer(...){...})`. Nested devices are skipped.
fn examine_device(aml: &[u8], offset: usize, body: usize, end: usize) -> Option<DsdtDev> {
    let mut dev = DsdtDev {
        offset,
        mem: None,
        irq: None,
        has_crs: false,
    };
    let mut hid = false;
    let mut p = body;
    while p < end {
        if let Some((_, nested_end)) = device_at(aml, p, end) {
            p = nested_end;
            continue;
        }
        if name_op(aml, p, b"_HID") {
            // StringPrefix 0x0D, the ASCII text, NUL.
            let s = p + 5;
            if aml.get(s) == Some(&0x0d)
                && s + 1 + LNRO0005.len() < end
                && &aml[s + 1..s + 1 + LNRO0005.len()] == LNRO0005
                && aml[s + 1 + LNRO0005.len()] == 0
            {
                hid = true;
            }
        } else if name_op(aml, p, b"_CRS") && aml.get(p + 5) == Some(&0x11) && !dev.has_crs {
            // BufferOp, PkgLength, BufferSize (an integer), the bytes.
            if let Some((len, n)) = pkg_length(aml, p + 6) {
                let buf_end = p + 6 + len;
                if len >= n && buf_end <= end {
                    if let Some((_, m)) = aml_integer(aml, p + 6 + n) {
                        let data = p + 6 + n + m;
                        if data <= buf_end {
                            dev.has_crs = true;
                            parse_resources(aml, data, buf_end, &mut dev);
                            p = buf_end;
                            continue;
                        }
                    }
                }
            }
        }
        p += 1;
    }
    if hid {
        Some(dev)
    } else {
        None
    }
}

/// Scans a whole DSDT (`table`, header included; only `table[36..]` is AML) for devices whose
/// `_HID` is the string "LNRO0005", in table order. Calls `found` for each.
///
/// A simplification of real AML parsing: every byte offset is tried as the start of a
/// DeviceOp (0x5B 0x82) with a PkgLength that fits the table, and each device's own TermList is
/// scanned byte by byte for `Name(_HID, "LNRO0005")` and `Name(_CRS, Buffer)` (nested devices'
/// ranges are skipped). Byte patterns inside other data could in theory match; `_HID`/`_CRS`
/// given as methods, or a `_CRS` built at run time, are not understood.
pub fn scan_dsdt(table: &[u8], found: &mut dyn FnMut(DsdtDev)) {
    let len = table.len();
    let mut i = HEADER_LEN;
    while i + 1 < len {
        if table[i] == 0x5b && table[i + 1] == 0x82 {
            if let Some((body, end)) = device_at(table, i, len) {
                if let Some(d) = examine_device(table, i, body, end) {
                    found(d);
                }
            }
        }
        i += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Hash

/// FNV-1a, 64-bit.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
