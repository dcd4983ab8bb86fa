//! The virtio-net scenarios (`net-arp`, `net-rx`, `net-bench-tx`), driving the first network
//! device through virtio-drivers' `VirtIONetRaw` in polling mode (no interrupts).
//!
//! `VirtIONetRaw` rather than `VirtIONet`: its `send` spins without a timeout until the device
//! completes the frame, and it keeps one frame in flight. Here every transmit is submitted with
//! `transmit_begin` and reaped with `poll_transmit`/`transmit_complete` (up to a queue's worth
//! in flight), receive buffers live in one heap block and every wait has a TSC timeout.
//!
//! Test frames (PHASE3): Ethernet header (dst, src = the device MAC, ethertype 0x88B5), then
//! `PETREL`, the sequence number as u32 big-endian, then filler byte i = (seq + i) & 0xff.
//! Frames whose seq agree modulo 256 have the same filler, so the guest builds at most 256
//! frame buffers once (the filler copied from a ramp, 8 bytes per emulated iteration) and
//! afterwards only rewrites the 4 seq bytes: a frame costs the guest a few hundred
//! instructions however long it is.

use crate::clock::{Clock, Timer};
use crate::cmdline::{parse_ipv4, Args};
use crate::out::{byte, line, nl, put, put_dec, put_escaped};
use crate::pattern::{ramp, same};
use crate::virtio::{self, error_name, mmio_error_name, GuestHal, DEVICE_NET};
use crate::vparse::parse_number;
use alloc::vec;
use alloc::vec::Vec;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::MmioTransport;

/// Entries per virtqueue (the device offers 256; 64 keeps the driver's per-queue arrays small).
const QUEUE: usize = 64;
type Raw = VirtIONetRaw<GuestHal, MmioTransport<'static>, QUEUE>;

/// Bytes per receive buffer: the 12-byte virtio_net_hdr_v1 plus a 1514-byte frame fit
/// (virtio-drivers does not negotiate MRG_RXBUF or the GUEST_* offloads, so the device never
/// sends more than the MTU-sized frame in one buffer).
const RX_BUF: usize = 2048;
/// Bytes per transmit frame slot (header + 14 + 1500 = 1526, rounded up).
const TX_STRIDE: usize = 1536;
/// Pattern frame buffers (seq modulo 256).
const PATTERN_SLOTS: usize = 256;

const ETH_HDR: usize = 14;
const ETHERTYPE_TEST: u16 = 0x88b5;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const MAGIC: &[u8; 6] = b"PETREL";
/// `PETREL` + the 4-byte seq.
const PREFIX: usize = 10;
const BROADCAST: [u8; 6] = [0xff; 6];
/// Smallest Ethernet frame without FCS: the ARP request is padded to it.
const MIN_FRAME: usize = 60;

/// Default and limits of the arguments.
const MAX_COUNT: u64 = 10_000_000;
const MIN_BYTES: u64 = PREFIX as u64;
const MAX_BYTES: u64 = 1500;

/// Waits (milliseconds).
const ARP_TIMEOUT_MS: u64 = 5000;
const ARP_RESEND_MS: u64 = 1000;
const TX_TIMEOUT_MS: u64 = 5000;
const RX_IDLE_MS: u64 = 10_000;

/// A `petrel.*` number (decimal or 0x hex) in `min..=max`, or the default; None after
/// `ERROR bad petrel.<name>=<value> (want <min>..=<max>)`.
pub fn number_arg(
    name: &[u8],
    raw: Option<&[u8]>,
    default: u64,
    min: u64,
    max: u64,
) -> Option<u64> {
    let Some(s) = raw else { return Some(default) };
    match parse_number(s) {
        Some(v) if (min..=max).contains(&v) => Some(v),
        _ => {
            put(b"ERROR bad petrel.");
            put(name);
            put(b"=");
            put_escaped(s);
            put(b" (want ");
            put_dec(min);
            put(b"..=");
            put_dec(max);
            line(b")");
            None
        }
    }
}

/// A `petrel.*` IPv4 address, or the default; None after `ERROR bad petrel.<name>=<value>
/// (want A.B.C.D)`.
fn ipv4_arg(name: &[u8], raw: Option<&[u8]>, default: [u8; 4]) -> Option<[u8; 4]> {
    let Some(s) = raw else { return Some(default) };
    match parse_ipv4(s) {
        Some(ip) => Some(ip),
        None => {
            put(b"ERROR bad petrel.");
            put(name);
            put(b"=");
            put_escaped(s);
            line(b" (want A.B.C.D)");
            None
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_mac(mac: &[u8; 6]) {
    for (i, &b) in mac.iter().enumerate() {
        if i > 0 {
            byte(b':');
        }
        byte(HEX[usize::from(b >> 4)]);
        byte(HEX[usize::from(b & 15)]);
    }
}

fn put_ip(ip: &[u8; 4]) {
    for (i, &b) in ip.iter().enumerate() {
        if i > 0 {
            byte(b'.');
        }
        put_dec(u64::from(b));
    }
}

fn net_error(what: &[u8], e: virtio_drivers::Error) {
    put(b"NET error ");
    put(what);
    put(b"=");
    line(error_name(e));
}

/// The first network device, its receive buffers and transmit frame slots.
struct Dev {
    net: Raw,
    mac: [u8; 6],
    /// Length of the virtio_net_hdr that precedes every frame (12 with VERSION_1).
    hdr: usize,
    /// `QUEUE` receive buffers of `RX_BUF` bytes, all posted.
    rx: Vec<u8>,
    /// Receive token (descriptor head) → receive buffer index.
    rx_slot: [u16; QUEUE],
    /// Transmit frame slots of `TX_STRIDE` bytes: header, then the frame.
    tx: Vec<u8>,
    /// Frame length (with header) per slot; 0 = not built yet.
    tx_len: Vec<u16>,
    /// Whether the slot's frame is with the device.
    tx_busy: Vec<bool>,
    /// Transmit token → slot.
    tx_slot: [u16; QUEUE],
    in_flight: usize,
}

impl Dev {
    /// Discovery, then the first network device with `slots` transmit slots: prints `NET mac=..`
    /// or `NET error ...` (None).
    fn open(boot_params: u64, cmdline: &[u8], slots: usize) -> Option<Dev> {
        let found = virtio::discover(boot_params, cmdline);
        let Some(f) = found.iter().find(|f| f.device_id == DEVICE_NET) else {
            line(b"NET error no net device");
            return None;
        };
        let t = match f.transport() {
            Ok(t) => t,
            Err(e) => {
                put(b"NET error init=");
                line(mmio_error_name(&e));
                return None;
            }
        };
        let net = match Raw::new(t) {
            Ok(n) => n,
            Err(e) => {
                net_error(b"init", e);
                return None;
            }
        };
        let mut scratch = [0u8; 32];
        let hdr = match net.fill_buffer_header(&mut scratch) {
            Ok(h) => h,
            Err(e) => {
                net_error(b"init", e);
                return None;
            }
        };
        let mac = net.mac_address();
        put(b"NET mac=");
        put_mac(&mac);
        nl();
        Some(Dev {
            net,
            mac,
            hdr,
            rx: Vec::new(),
            rx_slot: [0; QUEUE],
            tx: vec![0; slots * TX_STRIDE],
            tx_len: vec![0; slots],
            tx_busy: vec![false; slots],
            tx_slot: [0; QUEUE],
            in_flight: 0,
        })
    }

    /// Posts all receive buffers.
    fn post_rx(&mut self) -> Result<(), virtio_drivers::Error> {
        self.rx = vec![0; QUEUE * RX_BUF];
        for slot in 0..QUEUE {
            let buf = &mut self.rx[slot * RX_BUF..(slot + 1) * RX_BUF];
            // SAFETY: self.rx is allocated once and never touched again while the buffer is
            // posted (it is read only after poll_receive/receive_complete hand it back).
            let token = unsafe { self.net.receive_begin(buf)? };
            self.rx_slot[usize::from(token) % QUEUE] = slot as u16;
        }
        Ok(())
    }

    /// Takes one received frame (if any), hands it to `f` and posts the buffer again.
    /// Ok(false) when nothing was there.
    fn recv(&mut self, f: &mut impl FnMut(&[u8])) -> Result<bool, virtio_drivers::Error> {
        let Some(token) = self.net.poll_receive() else {
            return Ok(false);
        };
        let slot = usize::from(self.rx_slot[usize::from(token) % QUEUE]);
        let buf = &mut self.rx[slot * RX_BUF..(slot + 1) * RX_BUF];
        // SAFETY: `buf` is the buffer posted with this token.
        let r = unsafe { self.net.receive_complete(token, buf) };
        if let Ok((hdr, len)) = r {
            let end = (hdr + len).min(RX_BUF);
            f(&buf[hdr.min(end)..end]);
        }
        // SAFETY: as in post_rx.
        let t = unsafe { self.net.receive_begin(buf)? };
        self.rx_slot[usize::from(t) % QUEUE] = slot as u16;
        r.map(|_| true)
    }

    /// Completes every transmission the device has finished.
    fn reap(&mut self) -> Result<(), virtio_drivers::Error> {
        while let Some(token) = self.net.poll_transmit() {
            let slot = usize::from(self.tx_slot[usize::from(token) % QUEUE]);
            let buf = &self.tx[slot * TX_STRIDE..][..usize::from(self.tx_len[slot])];
            // SAFETY: `buf` is the buffer submitted with this token.
            unsafe { self.net.transmit_complete(token, buf)? };
            self.tx_busy[slot] = false;
            self.in_flight -= 1;
        }
        Ok(())
    }

    /// Waits (reaping) until `done(self)` or the timeout; false on timeout.
    fn wait_tx(
        &mut self,
        clock: &Clock,
        done: impl Fn(&Dev) -> bool,
    ) -> Result<bool, virtio_drivers::Error> {
        let t = clock.timer(TX_TIMEOUT_MS);
        loop {
            self.reap()?;
            if done(self) {
                return Ok(true);
            }
            if t.expired() {
                return Ok(false);
            }
            crate::io::pause();
        }
    }

    /// Submits slot `slot` (built, not busy) once the queue has room. Ok(false) on timeout.
    fn submit(&mut self, clock: &Clock, slot: usize) -> Result<bool, virtio_drivers::Error> {
        if (self.in_flight >= QUEUE || self.tx_busy[slot])
            && !self.wait_tx(clock, |d| d.in_flight < QUEUE && !d.tx_busy[slot])?
        {
            return Ok(false);
        }
        let buf = &self.tx[slot * TX_STRIDE..][..usize::from(self.tx_len[slot])];
        // SAFETY: the slot is not touched until reap() completes it (tx_busy).
        let token = unsafe { self.net.transmit_begin(buf)? };
        self.tx_slot[usize::from(token) % QUEUE] = slot as u16;
        self.tx_busy[slot] = true;
        self.in_flight += 1;
        Ok(true)
    }

    /// The frame bytes of slot `slot` (after the virtio header).
    fn frame_mut(&mut self, slot: usize, len: usize) -> &mut [u8] {
        let at = slot * TX_STRIDE + self.hdr;
        self.tx_len[slot] = (self.hdr + len) as u16;
        &mut self.tx[at..at + len]
    }
}

fn eth_header(frame: &mut [u8], dst: &[u8; 6], src: &[u8; 6], ethertype: u16) {
    frame[0..6].copy_from_slice(dst);
    frame[6..12].copy_from_slice(src);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Sends `count` test frames of `bytes` payload bytes to `dst` through slots 0..256, keeping up
/// to a queue's worth in flight, and waits until the device has completed them all. Returns the
/// number of frames completed, or None after a `NET error` line.
fn send_pattern(
    dev: &mut Dev,
    clock: &Clock,
    dst: &[u8; 6],
    count: u64,
    bytes: usize,
) -> Option<u64> {
    let ramp = ramp(256, MAX_BYTES as usize);
    let len = ETH_HDR + bytes;
    let src = dev.mac;
    let mut built = [false; PATTERN_SLOTS];
    for seq in 0..count {
        let slot = (seq % PATTERN_SLOTS as u64) as usize;
        // Wait for the slot before rewriting its seq (it may still be with the device).
        if dev.tx_busy[slot] {
            match dev.wait_tx(clock, |d| !d.tx_busy[slot]) {
                Ok(true) => {}
                Ok(false) => return tx_timeout(dev, seq),
                Err(e) => return send_error(e),
            }
        }
        let frame = dev.frame_mut(slot, len);
        if !built[slot] {
            eth_header(frame, dst, &src, ETHERTYPE_TEST);
            frame[ETH_HDR..ETH_HDR + 6].copy_from_slice(MAGIC);
            frame[ETH_HDR + PREFIX..].copy_from_slice(&ramp[slot..slot + bytes - PREFIX]);
            built[slot] = true;
        }
        frame[ETH_HDR + 6..ETH_HDR + PREFIX].copy_from_slice(&(seq as u32).to_be_bytes());
        match dev.submit(clock, slot) {
            Ok(true) => {}
            Ok(false) => return tx_timeout(dev, seq),
            Err(e) => return send_error(e),
        }
        // Reap whatever is done so the queue rarely fills.
        if let Err(e) = dev.reap() {
            return send_error(e);
        }
    }
    match dev.wait_tx(clock, |d| d.in_flight == 0) {
        Ok(true) => Some(count),
        Ok(false) => tx_timeout(dev, count),
        Err(e) => send_error(e),
    }
}

fn tx_timeout(dev: &Dev, submitted: u64) -> Option<u64> {
    put(b"NET error tx=timeout submitted=");
    put_dec(submitted);
    put(b" in-flight=");
    put_dec(dev.in_flight as u64);
    nl();
    None
}

fn send_error(e: virtio_drivers::Error) -> Option<u64> {
    net_error(b"tx", e);
    None
}

fn sent_line(prefix: &[u8], frames: u64, len: usize) {
    put(prefix);
    put_dec(frames);
    put(b" bytes=");
    put_dec(frames * len as u64);
}

/// `net-arp`: ARP for `petrel.peer` (default 10.0.2.1) as `petrel.ip` (default 10.0.2.2), then
/// `petrel.count` (default 16) test frames of `petrel.bytes` (default 100) payload bytes to the
/// peer's MAC.
pub fn arp(boot_params: u64, cmdline: &[u8], args: &Args) {
    let Some(count) = number_arg(b"count", args.count, 16, 0, MAX_COUNT) else {
        return;
    };
    let Some(bytes) = number_arg(b"bytes", args.bytes, 100, MIN_BYTES, MAX_BYTES) else {
        return;
    };
    let Some(ip) = ipv4_arg(b"ip", args.ip, [10, 0, 2, 2]) else {
        return;
    };
    let Some(peer) = ipv4_arg(b"peer", args.peer, [10, 0, 2, 1]) else {
        return;
    };
    let clock = Clock::new();
    // Slots 0..=255: pattern frames (only as many as needed); the last one: the ARP request.
    let pattern_slots = (count.min(PATTERN_SLOTS as u64)) as usize;
    let arp_slot = pattern_slots;
    let Some(mut dev) = Dev::open(boot_params, cmdline, pattern_slots + 1) else {
        return;
    };
    if let Err(e) = dev.post_rx() {
        net_error(b"rx", e);
        return;
    }

    // who-has peer tell ip, broadcast, from the device MAC.
    let mac = dev.mac;
    let req = dev.frame_mut(arp_slot, MIN_FRAME);
    eth_header(req, &BROADCAST, &mac, ETHERTYPE_ARP);
    let arp = &mut req[ETH_HDR..];
    arp[0..2].copy_from_slice(&1u16.to_be_bytes()); // htype Ethernet
    arp[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes()); // ptype IPv4
    arp[4] = 6; // hlen
    arp[5] = 4; // plen
    arp[6..8].copy_from_slice(&1u16.to_be_bytes()); // oper request
    arp[8..14].copy_from_slice(&mac); // sha
    arp[14..18].copy_from_slice(&ip); // spa
    arp[18..24].fill(0); // tha
    arp[24..28].copy_from_slice(&peer); // tpa

    let total = clock.timer(ARP_TIMEOUT_MS);
    let mut resend = clock.timer(ARP_RESEND_MS);
    let mut first = true;
    let mut reply: Option<[u8; 6]> = None;
    while reply.is_none() {
        if first || resend.expired() {
            first = false;
            resend.restart();
            // The previous request must be complete before the slot is submitted again.
            if !dev.tx_busy[arp_slot] {
                if let Err(e) = dev.submit(&clock, arp_slot) {
                    net_error(b"tx", e);
                    return;
                }
            }
        }
        if let Err(e) = dev.reap() {
            net_error(b"tx", e);
            return;
        }
        let got = dev.recv(&mut |f: &[u8]| {
            if let Some(m) = arp_reply_from(f, &peer, &ip) {
                reply = Some(m);
            }
        });
        let idle = match got {
            Ok(got) => !got,
            Err(e) => {
                net_error(b"rx", e);
                return;
            }
        };
        if reply.is_some() || total.expired() {
            break;
        }
        if idle {
            crate::io::pause();
        }
    }
    let Some(peer_mac) = reply else {
        line(b"NET error arp=timeout");
        return;
    };
    put(b"NET arp-reply peer=");
    put_ip(&peer);
    put(b" mac=");
    put_mac(&peer_mac);
    nl();
    // The ARP request must be complete before its slot memory can be forgotten.
    let _ = dev.wait_tx(&clock, |d| d.in_flight == 0);

    let bytes = bytes as usize;
    if let Some(n) = send_pattern(&mut dev, &clock, &peer_mac, count, bytes) {
        sent_line(b"NET sent frames=", n, ETH_HDR + bytes);
        nl();
    }
}

/// The sender's hardware address if `f` is an ARP reply from `peer` to `ip`.
fn arp_reply_from(f: &[u8], peer: &[u8; 4], ip: &[u8; 4]) -> Option<[u8; 6]> {
    if f.len() < ETH_HDR + 28 || f[12..14] != ETHERTYPE_ARP.to_be_bytes() {
        return None;
    }
    let a = &f[ETH_HDR..];
    let ok = a[0..2] == 1u16.to_be_bytes()
        && a[2..4] == ETHERTYPE_IPV4.to_be_bytes()
        && a[4] == 6
        && a[5] == 4
        && a[6..8] == 2u16.to_be_bytes()
        && a[14..18] == peer[..]
        && a[24..28] == ip[..];
    if !ok {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&a[8..14]);
    Some(m)
}

/// Whether `f` (ethertype 0x88B5) carries a well-formed test payload.
fn test_frame_ok(f: &[u8], ramp: &[u8]) -> bool {
    if f.len() < ETH_HDR + PREFIX || &f[ETH_HDR..ETH_HDR + 6] != MAGIC {
        return false;
    }
    let seq = u32::from_be_bytes([f[20], f[21], f[22], f[23]]);
    let s = (seq & 0xff) as usize;
    // The ramp holds 256 + 1500 bytes: compare in pieces of 1280 (a multiple of 256, so every
    // piece starts at the same ramp offset).
    for piece in f[ETH_HDR + PREFIX..].chunks(1280) {
        if !same(piece, &ramp[s..s + piece.len()]) {
            return false;
        }
    }
    true
}

/// `net-rx`: posts the receive buffers, prints `NET ready`, then counts test frames (ethertype
/// 0x88B5) until `petrel.count` (default 64) good ones arrived or none for ~10 s.
pub fn rx(boot_params: u64, cmdline: &[u8], args: &Args) {
    let Some(count) = number_arg(b"count", args.count, 64, 0, MAX_COUNT) else {
        return;
    };
    let clock = Clock::new();
    let Some(mut dev) = Dev::open(boot_params, cmdline, 0) else {
        return;
    };
    if let Err(e) = dev.post_rx() {
        net_error(b"rx", e);
        return;
    }
    line(b"NET ready");
    let ramp = ramp(256, MAX_BYTES as usize);
    let (mut frames, mut bad, mut good, mut total) = (0u64, 0u64, 0u64, 0u64);
    let (mut first, mut last) = (0u64, 0u64);
    let mut idle: Timer = clock.timer(RX_IDLE_MS);
    let mut seen = 0u64;
    while good < count {
        let got = dev.recv(&mut |f: &[u8]| {
            if f.len() < ETH_HDR || f[12..14] != ETHERTYPE_TEST.to_be_bytes() {
                return;
            }
            let now = crate::io::rdtsc();
            if frames == 0 {
                first = now;
            }
            last = now;
            frames += 1;
            total += f.len() as u64;
            if test_frame_ok(f, &ramp) {
                good += 1;
            } else {
                bad += 1;
            }
        });
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                net_error(b"rx", e);
                break;
            }
        };
        // Only test frames count as activity (IPv6 router solicitations etc. do not).
        if frames != seen {
            seen = frames;
            idle.restart();
        } else if idle.expired() {
            break;
        }
        if !got {
            crate::io::pause();
        }
    }
    put(b"NET received frames=");
    put_dec(frames);
    put(b" bad=");
    put_dec(bad);
    put(b" bytes=");
    put_dec(total);
    put(b" us=");
    put_dec(clock.us(last.wrapping_sub(first)));
    nl();
}

/// `net-bench-tx`: `petrel.count` (default 10000) broadcast test frames of `petrel.bytes`
/// (default 1500) payload bytes, timed from the first submission to the last completion.
pub fn bench_tx(boot_params: u64, cmdline: &[u8], args: &Args) {
    let Some(count) = number_arg(b"count", args.count, 10_000, 0, MAX_COUNT) else {
        return;
    };
    let Some(bytes) = number_arg(b"bytes", args.bytes, 1500, MIN_BYTES, MAX_BYTES) else {
        return;
    };
    let clock = Clock::new();
    let slots = (count.min(PATTERN_SLOTS as u64)) as usize;
    let Some(mut dev) = Dev::open(boot_params, cmdline, slots) else {
        return;
    };
    let bytes = bytes as usize;
    let start = crate::io::rdtsc();
    if let Some(n) = send_pattern(&mut dev, &clock, &BROADCAST, count, bytes) {
        let us = clock.us(crate::io::rdtsc().wrapping_sub(start));
        sent_line(b"NET tx-bench frames=", n, ETH_HDR + bytes);
        put(b" us=");
        put_dec(us);
        nl();
    }
}
