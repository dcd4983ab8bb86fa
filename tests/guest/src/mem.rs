//! The C memory functions the compiler may call, written with `rep movsq`/`rep movsb` and
//! `rep stosq`/`rep stosb` (which KVM's emulator runs) instead of compiler_builtins'
//! SSE-capable versions.

use core::arch::asm;

/// C `memcpy`.
///
/// # Safety
/// Standard C contract: `n` bytes at `src` readable, at `dst` writable, no overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memcpy's contract; DF is clear (SysV ABI). `rep movsq` then
    // `rep movsb` copies the same n bytes forward: under PVM every iteration of a rep string
    // instruction is emulated, so moving 8 bytes per iteration is ~8x faster for big copies.
    unsafe {
        if n >= BULK {
            asm!("rep movsq", "mov rcx, {rest}", "rep movsb",
                 rest = in(reg) n % 8,
                 inout("rcx") n / 8 => _, inout("rdi") dst => _, inout("rsi") src => _,
                 options(nostack, preserves_flags));
        } else {
            asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
                 options(nostack, preserves_flags));
        }
    }
    dst
}

/// From this many bytes on, memcpy/memset work in 8-byte steps (one emulated iteration per 8
/// bytes instead of per byte).
const BULK: usize = 32;

/// C `memmove`.
///
/// # Safety
/// Standard C contract: `n` bytes at `src` readable, at `dst` writable; regions may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if n == 0 {
        return dst;
    }
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dst is below src or the regions don't overlap.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: backward copy (DF=1) from the last byte; DF is cleared again before returning.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 options(nostack));
        }
        dst
    }
}

/// C `memset`.
///
/// # Safety
/// Standard C contract: `n` bytes at `dst` writable.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller upholds memset's contract; DF is clear (SysV ABI). `rep stosq` with
    // the byte in all 8 lanes, then `rep stosb` for the rest, writes the same n bytes.
    unsafe {
        if n >= BULK {
            let q = u64::from(c as u8) * 0x0101_0101_0101_0101;
            asm!("rep stosq", "mov rcx, {rest}", "rep stosb",
                 rest = in(reg) n % 8,
                 inout("rcx") n / 8 => _, inout("rdi") dst => _, in("rax") q,
                 options(nostack, preserves_flags));
        } else {
            asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8,
                 options(nostack, preserves_flags));
        }
    }
    dst
}

/// C `memcmp`.
///
/// # Safety
/// Standard C contract: `n` bytes readable at both pointers.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, within both buffers by the caller's contract. Volatile keeps LLVM from
        // turning this loop back into a memcmp call.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return x as i32 - y as i32;
        }
        i += 1;
    }
    0
}

/// C `bcmp`.
///
/// # Safety
/// Standard C contract: `n` bytes readable at both pointers.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Unwinding never happens (panic = "abort"); some links still ask for the symbol.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}
