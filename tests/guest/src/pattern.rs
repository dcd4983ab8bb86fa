//! Test patterns shared by the network scenarios, built so that per-byte work stays small
//! (under PVM every guest instruction is emulated): a "ramp" buffer whose every window is a
//! valid piece of the pattern, copied or compared 8 bytes at a time.

use alloc::vec::Vec;

/// The vsock stream pattern repeats every 251 bytes: byte i = i % 251.
pub const VSOCK_PERIOD: usize = 251;

/// `period + len` bytes with byte j = j % period (period <= 256): for any stream offset `o`,
/// `ramp[o % period..][..n]` (n <= len) is the pattern at `o`.
pub fn ramp(period: usize, len: usize) -> Vec<u8> {
    let total = period + len;
    let mut v = alloc::vec![0u8; total];
    for (j, b) in v.iter_mut().take(period).enumerate() {
        *b = j as u8;
    }
    // Doubling copies of whole periods (memcpy moves 8 bytes per emulated iteration).
    let mut have = period;
    while have < total {
        let n = have.min(total - have);
        let (done, rest) = v.split_at_mut(have);
        rest[..n].copy_from_slice(&done[..n]);
        have += n;
    }
    v
}

/// `a == b`, comparing 8 bytes per step.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n = a.len() = b.len(); unaligned reads of plain bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_unaligned(a.as_ptr().add(i) as *const u64),
                core::ptr::read_unaligned(b.as_ptr().add(i) as *const u64),
            )
        };
        if x != y {
            return false;
        }
        i += 8;
    }
    while i < n {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Whether `data` is the vsock pattern at stream offset `offset` (`ramp` from
/// `ramp(VSOCK_PERIOD, len)`; `data` is checked in pieces of at most `len` bytes).
pub fn vsock_matches(ramp: &[u8], offset: u64, data: &[u8]) -> bool {
    let len = ramp.len() - VSOCK_PERIOD;
    let mut off = offset;
    for piece in data.chunks(len.max(1)) {
        let s = (off % VSOCK_PERIOD as u64) as usize;
        if !same(piece, &ramp[s..s + piece.len()]) {
            return false;
        }
        off += piece.len() as u64;
    }
    true
}
