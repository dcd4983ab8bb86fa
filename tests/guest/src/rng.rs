//! The `rng` scenario: reads from every virtio-rng device through virtio-drivers' `VirtIORng`
//! in polling mode (no interrupts).

use crate::out::{byte, line, nl, put, put_dec};
use crate::virtio::{self, error_name, mmio_error_name, GuestHal, DEVICE_RNG};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::MmioTransport;

/// Bytes per read.
const READ_BYTES: usize = 64;
/// Reads per device.
const READS: usize = 2;

fn put_dev(n: u64) {
    put(b"RNG dev=");
    put_dec(n);
}

/// `rng`: discovery, then per entropy device (`n` counts them from 0 in base-address order)
/// two 64-byte reads, each `RNG dev=<n> bytes=<hex>` (or `RNG error dev=<n> read=<what>`,
/// or `RNG error dev=<n> init=<what>`), then `RNG count=<number of entropy devices>`.
pub fn run(boot_params: u64, cmdline: &[u8]) {
    let found = virtio::discover(boot_params, cmdline);
    let mut n = 0u64;
    for f in found.iter().filter(|f| f.device_id == DEVICE_RNG) {
        let this = n;
        n += 1;
        let mut rng = match f.transport() {
            Ok(t) => match VirtIORng::<GuestHal, MmioTransport<'static>>::new(t) {
                Ok(rng) => rng,
                Err(e) => {
                    init_error(this, error_name(e));
                    continue;
                }
            },
            Err(e) => {
                init_error(this, mmio_error_name(&e));
                continue;
            }
        };
        for _ in 0..READS {
            let mut buf = [0u8; READ_BYTES];
            match rng.request_entropy(&mut buf) {
                Ok(len) => {
                    put_dev(this);
                    put(b" bytes=");
                    let hex = b"0123456789abcdef";
                    for &b in &buf[..len.min(READ_BYTES)] {
                        byte(hex[usize::from(b >> 4)]);
                        byte(hex[usize::from(b & 15)]);
                    }
                    nl();
                }
                Err(e) => {
                    put(b"RNG error dev=");
                    put_dec(this);
                    put(b" read=");
                    line(error_name(e));
                }
            }
        }
    }
    put(b"RNG count=");
    put_dec(n);
    nl();
}

fn init_error(n: u64, what: &[u8]) {
    put(b"RNG error dev=");
    put_dec(n);
    put(b" init=");
    line(what);
}
