//! The virtio-blk scenarios (`blk-read`, `blk-write`, `blk-ids`, `blk-bench`), driving the
//! devices through virtio-drivers' `VirtIOBlk` in polling mode (no interrupts).

use crate::cmdline::Args;
use crate::heap::{self, Region};
use crate::io::{rdtsc, tsc_khz_known, tsc_khz_pit};
use crate::out::{line, nl, put, put_dec, put_hex};
use crate::virtio::{self, error_name, mmio_error_name, GuestHal, DEVICE_BLOCK};
use crate::vparse::{fnv1a64, parse_number};
use alloc::vec::Vec;
use core::ptr::addr_of_mut;
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::mmio::MmioTransport;

type Blk = VirtIOBlk<GuestHal, MmioTransport<'static>>;

/// Size of one benchmark request.
const BENCH_REQ: usize = 1 << 20;
/// Default and largest `petrel.mib` for `blk-bench`.
const BENCH_DEFAULT_MIB: u64 = 16;
const BENCH_MAX_MIB: u64 = 65536;

/// The benchmark's request buffer. In .noinit: never zeroed (the device writes it, or the guest
/// fills it before writing it out).
#[link_section = ".noinit.bench"]
static mut BENCH_BUF: Region<BENCH_REQ> = Region([0; BENCH_REQ]);

/// One initialised block device: `n` counts block devices from 0 in base-address order.
struct Disk {
    n: usize,
    blk: Blk,
}

/// Discovers the devices and initialises every block device (`BLK error dev=<n> init=<what>`
/// for failures).
fn disks(boot_params: u64, cmdline: &[u8]) -> Vec<Disk> {
    let found = virtio::discover(boot_params, cmdline);
    let mut disks = Vec::new();
    let mut n = 0;
    for f in found.iter().filter(|f| f.device_id == DEVICE_BLOCK) {
        let this = n;
        n += 1;
        let t = match f.transport() {
            Ok(t) => t,
            Err(e) => {
                init_error(this, mmio_error_name(&e));
                continue;
            }
        };
        match Blk::new(t) {
            Ok(blk) => disks.push(Disk { n: this, blk }),
            Err(e) => init_error(this, error_name(e)),
        }
    }
    if n == 0 {
        line(b"BLK error no block devices");
    }
    disks
}

fn init_error(n: usize, what: &[u8]) {
    put(b"BLK error dev=");
    put_dec(n as u64);
    put(b" init=");
    line(what);
}

fn put_dev(n: usize) {
    put(b"BLK dev=");
    put_dec(n as u64);
}

/// ` id=<text>`: the GET_ID string (bytes outside 0x21..=0x7e as `\xNN`, so a space cannot
/// split the field), or `-` if the request failed.
fn put_id(blk: &mut Blk) {
    let mut id = [0u8; 20];
    put(b" id=");
    match blk.device_id(&mut id) {
        Ok(len) => {
            for &b in &id[..len] {
                if (0x21..=0x7e).contains(&b) && b != b'\\' {
                    crate::out::byte(b);
                } else {
                    put(b"\\x");
                    let hex = b"0123456789abcdef";
                    crate::out::byte(hex[usize::from(b >> 4)]);
                    crate::out::byte(hex[usize::from(b & 15)]);
                }
            }
        }
        Err(_) => put(b"-"),
    }
}

/// `blk-ids`: `BLK dev=<n> id=<id>` per block device.
pub fn ids(boot_params: u64, cmdline: &[u8]) {
    for mut d in disks(boot_params, cmdline) {
        put_dev(d.n);
        put_id(&mut d.blk);
        nl();
    }
}

/// Reads `count` sectors at `sector` into `buf` and prints `BLK read dev=<n> sector=<s>
/// count=<c> fnv=0x<hex>` (or `status=err error=<what>`). Returns the data on success.
fn read_report<'a>(d: &mut Disk, sector: u64, count: usize, buf: &'a mut [u8]) -> Option<&'a [u8]> {
    let data = &mut buf[..count * SECTOR_SIZE];
    let r = d.blk.read_blocks(sector as usize, data);
    put(b"BLK read dev=");
    put_dec(d.n as u64);
    put(b" sector=");
    put_dec(sector);
    put(b" count=");
    put_dec(count as u64);
    match r {
        Ok(()) => {
            put(b" fnv=");
            put_hex(fnv1a64(data));
            nl();
            Some(data)
        }
        Err(e) => {
            put(b" status=err error=");
            line(error_name(e));
            None
        }
    }
}

/// `blk-read`: per block device its capacity, read-only flag and id, then reads of sector 0
/// (plus a hexdump of its first 16 bytes), sectors 2047+2048 (one 1024-byte request straddling
/// 1 MiB) and the last sector.
pub fn read(boot_params: u64, cmdline: &[u8]) {
    let mut buf = [0u8; 2 * SECTOR_SIZE];
    for mut d in disks(boot_params, cmdline) {
        let cap = d.blk.capacity();
        put_dev(d.n);
        put(b" capacity=");
        put_dec(cap);
        put(b" ro=");
        put_dec(u64::from(d.blk.readonly()));
        put_id(&mut d.blk);
        nl();
        if cap == 0 {
            continue;
        }
        if let Some(data) = read_report(&mut d, 0, 1, &mut buf) {
            put(b"BLK hexdump dev=");
            put_dec(d.n as u64);
            put(b" sector=0 bytes=");
            let hex = b"0123456789abcdef";
            for &b in &data[..16] {
                crate::out::byte(hex[usize::from(b >> 4)]);
                crate::out::byte(hex[usize::from(b & 15)]);
            }
            nl();
        }
        if cap >= 2049 {
            read_report(&mut d, 2047, 2, &mut buf);
        } else {
            put(b"BLK skip dev=");
            put_dec(d.n as u64);
            line(b" sector=2047 count=2 (capacity below 2049 sectors)");
        }
        read_report(&mut d, cap - 1, 1, &mut buf);
    }
}

/// A `petrel.*` number (decimal or 0x hex) or the default; None (after `ERROR bad ...`) if bad.
fn number_arg(name: &[u8], raw: Option<&[u8]>, default: u64, max: u64) -> Option<u64> {
    let Some(s) = raw else { return Some(default) };
    match parse_number(s) {
        Some(v) if v <= max => Some(v),
        _ => {
            put(b"ERROR bad petrel.");
            put(name);
            put(b"=");
            crate::out::put_escaped(s);
            put(b" (want 0..=");
            put_dec(max);
            line(b")");
            None
        }
    }
}

fn ok_err<T>(r: &Result<T, virtio_drivers::Error>) {
    match r {
        Ok(_) => line(b" status=ok"),
        Err(e) => {
            put(b" status=err error=");
            line(error_name(*e));
        }
    }
}

/// `blk-write`: one sector of `petrel.pattern` (default 0xa5) at `petrel.sector` (default 0) on
/// disk 0, a flush, and a read-back: `BLK write dev=0 sector=<s> status=ok|err[ error=<what>]`,
/// `BLK flush dev=0 status=ok|err[ error=<what>]`, `BLK readback dev=0 sector=<s> matches=0|1`.
pub fn write(boot_params: u64, cmdline: &[u8], args: &Args) {
    let Some(sector) = number_arg(b"sector", args.sector, 0, u64::MAX) else {
        return;
    };
    let Some(pattern) = number_arg(b"pattern", args.pattern, 0xa5, 255) else {
        return;
    };
    let mut disks = disks(boot_params, cmdline);
    let Some(d) = disks.iter_mut().find(|d| d.n == 0) else {
        line(b"BLK error dev=0 not available");
        return;
    };
    let buf = [pattern as u8; SECTOR_SIZE];
    let r = d.blk.write_blocks(sector as usize, &buf);
    put(b"BLK write dev=0 sector=");
    put_dec(sector);
    ok_err(&r);
    let r = d.blk.flush();
    put(b"BLK flush dev=0");
    ok_err(&r);
    let mut back = [0u8; SECTOR_SIZE];
    put(b"BLK readback dev=0 sector=");
    put_dec(sector);
    match d.blk.read_blocks(sector as usize, &mut back) {
        Ok(()) => {
            put(b" matches=");
            put_dec(u64::from(back == buf));
            nl();
        }
        Err(e) => {
            put(b" status=err error=");
            line(error_name(e));
        }
    }
}

/// `<int>.<2 digits>` MB/s (10^6 bytes per second) for `bytes` in `cycles` at `khz`, or `-`.
fn put_mbps(bytes: u64, cycles: u64, khz: Option<u64>) {
    // MB/s = bytes / (cycles / (khz * 1000)) / 1e6 = bytes * khz / cycles / 1000; in
    // hundredths: bytes * khz / cycles / 10. bytes <= 2^36 and khz < 2^24 keep it in u64.
    match khz.and_then(|k| bytes.checked_mul(k)) {
        Some(p) if cycles > 0 => {
            let centi = p / cycles / 10;
            put_dec(centi / 100);
            put(b".");
            let frac = centi % 100;
            if frac < 10 {
                put(b"0");
            }
            put_dec(frac);
        }
        _ => put(b"-"),
    }
}

fn bench_line(what: &[u8], mib: u64, cycles: u64, khz: Option<u64>) {
    put(b"BLK bench ");
    put(what);
    put(b" mib=");
    put_dec(mib);
    put(b" cycles=");
    put_dec(cycles);
    put(b" mbps=");
    put_mbps(mib * BENCH_REQ as u64, cycles, khz);
    nl();
}

/// `blk-bench`: `petrel.mib` (default 16) sequential 1 MiB reads from sector 0 of disk 0, then
/// as many 1 MiB writes of the byte `petrel.pattern` (default 0xa5) over the same range, each
/// request waited for before the next (queue depth 1), timed with rdtsc; then one flush.
pub fn bench(boot_params: u64, cmdline: &[u8], args: &Args) {
    let Some(mut mib) = number_arg(b"mib", args.mib, BENCH_DEFAULT_MIB, BENCH_MAX_MIB) else {
        return;
    };
    let Some(pattern) = number_arg(b"pattern", args.pattern, 0xa5, 255) else {
        return;
    };
    let mut disks = disks(boot_params, cmdline);
    let Some(d) = disks.iter_mut().find(|d| d.n == 0) else {
        line(b"BLK error dev=0 not available");
        return;
    };
    let per_req = (BENCH_REQ / SECTOR_SIZE) as u64;
    let cap_mib = d.blk.capacity() / per_req;
    if mib > cap_mib {
        put(b"BLK bench dev=0 capacity=");
        put_dec(d.blk.capacity());
        put(b" holds only mib=");
        put_dec(cap_mib);
        put(b", asked mib=");
        put_dec(mib);
        nl();
        mib = cap_mib;
    }
    let (khz, source) = match tsc_khz_known() {
        Some((k, s)) => (Some(k), s),
        None => match tsc_khz_pit() {
            Some(k) => (Some(k), &b"pit"[..]),
            None => (None, &b"-"[..]),
        },
    };
    put(b"BLK bench dev=0 request=");
    put_dec(BENCH_REQ as u64);
    put(b" tsc_khz=");
    match khz {
        Some(k) => put_dec(k),
        None => put(b"-"),
    }
    put(b" tsc_from=");
    line(source);
    // SAFETY: the only reference to BENCH_BUF; the guest is single-threaded.
    let buf = unsafe { &mut (*addr_of_mut!(BENCH_BUF)).0 };

    let start = rdtsc();
    for i in 0..mib {
        if let Err(e) = d.blk.read_blocks((i * per_req) as usize, buf) {
            bench_error(b"read", i, e);
            return;
        }
    }
    bench_line(b"read", mib, rdtsc().wrapping_sub(start), khz);

    // SAFETY: buf is BENCH_REQ writable bytes, page-aligned.
    unsafe { heap::fill_qwords(buf.as_mut_ptr(), BENCH_REQ, pattern as u8) };
    let start = rdtsc();
    for i in 0..mib {
        if let Err(e) = d.blk.write_blocks((i * per_req) as usize, buf) {
            bench_error(b"write", i, e);
            return;
        }
    }
    bench_line(b"write", mib, rdtsc().wrapping_sub(start), khz);

    let start = rdtsc();
    let r = d.blk.flush();
    put(b"BLK bench flush cycles=");
    put_dec(rdtsc().wrapping_sub(start));
    ok_err(&r);
}

fn bench_error(what: &[u8], i: u64, e: virtio_drivers::Error) {
    put(b"BLK bench ");
    put(what);
    put(b" error at mib=");
    put_dec(i);
    put(b" error=");
    line(error_name(e));
}
