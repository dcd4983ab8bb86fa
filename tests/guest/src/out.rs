//! Output on COM1 (0x3f8): raw bytes written to the THR, no LSR polling (the VMM's UART never
//! holds the guest back, and polling would double the number of I/O exits).
//!
//! Strings go out with one `rep outsb`: the VMM still sees one 1-byte port write per byte, but
//! KVM's emulator runs one instruction instead of two per byte (~2x faster under PVM).

use crate::io::{outb, outsb};

const COM1: u16 = 0x3f8;

/// Writes one byte.
#[inline(always)]
pub fn byte(b: u8) {
    outb(COM1, b);
}

/// Writes bytes as they are.
pub fn put(s: &[u8]) {
    outsb(COM1, s);
}

/// Writes bytes, then "\n".
pub fn line(s: &[u8]) {
    put(s);
    nl();
}

/// Writes "\n".
pub fn nl() {
    byte(b'\n');
}

/// Writes printable ASCII (0x20..=0x7e) as is and any other byte as `\xNN`, so guest-controlled
/// text can never break the line protocol.
pub fn put_escaped(s: &[u8]) {
    for &b in s {
        if (0x20..=0x7e).contains(&b) {
            byte(b);
        } else {
            byte(b'\\');
            byte(b'x');
            byte(HEX[(b >> 4) as usize & 15]);
            byte(HEX[b as usize & 15]);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `0x` and lowercase hex digits without leading zeros ("0x0" for zero).
pub fn put_hex(v: u64) {
    let mut buf = [0u8; 18];
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = HEX[(v & 15) as usize];
        v >>= 4;
        if v == 0 || i == 2 {
            break;
        }
    }
    i -= 1;
    buf[i] = b'x';
    i -= 1;
    buf[i] = b'0';
    put(&buf[i..]);
}

/// Writes a decimal number.
pub fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    put(&buf[i..]);
}
