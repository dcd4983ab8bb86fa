//! The virtio-vsock scenarios (`vsock-echo`, `vsock-bench`), driving the first socket device
//! in polling mode (no interrupts): `vsock-echo` through virtio-drivers'
//! `VsockConnectionManager`, `vsock-bench` through `VirtIOSocket` itself (see `bench`).
//!
//! Stream pattern (PHASE3): byte i of a stream is `i % 251`. The guest sends slices of one
//! prebuilt ramp (no per-byte work) and checks echoed data 8 bytes at a time.
//!
//! Credit: the manager's `send` fails with `InsufficientBufferSpaceInPeer` (and asks the peer
//! for credit once) when the peer's advertised buffer is used up. The guest keeps its own
//! estimate of the peer's free space from the `buf_alloc`/`fwd_cnt` of every event of the
//! connection, sends at most that much (or a full chunk when the estimate is 0, which makes the
//! manager send a credit request), and polls on failure. Received data is drained with `recv`
//! and followed by `update_credit` so the host keeps sending.
//!
//! Every wait has a TSC timeout. One wait cannot have one: virtio-drivers sends every packet
//! with `add_notify_wait_pop`, which spins until the device has consumed it.

use crate::clock::{Clock, Timer};
use crate::cmdline::Args;
use crate::io::rdtsc;
use crate::net::number_arg;
use crate::out::{line, nl, put, put_dec};
use crate::pattern::{ramp, vsock_matches, VSOCK_PERIOD};
use crate::virtio::{self, error_name, mmio_error_name, GuestHal, DEVICE_VSOCK};
use virtio_drivers::device::socket::{
    ConnectionInfo, DisconnectReason, SocketError, VirtIOSocket, VsockAddr, VsockConnectionManager,
    VsockEvent, VsockEventType,
};
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::Error;

type Drv<const RX: usize> = VirtIOSocket<GuestHal, MmioTransport<'static>, RX>;
type Mgr<const RX: usize> = VsockConnectionManager<GuestHal, MmioTransport<'static>, RX>;

/// The host's CID.
const HOST_CID: u64 = 2;

/// `vsock-echo`: virtio-drivers' default receive buffers (512 bytes, header included) and
/// default per-connection buffer (1024 bytes), so 64 KiB crosses many credit windows.
const ECHO_RX: usize = 512;
/// Bytes per packet the echo test sends.
const ECHO_CHUNK: usize = 4096;
/// Receive buffer of the echo test: the per-connection buffer (1024) is never bigger.
const ECHO_BUF: usize = 1024;
/// `vsock-bench`: 64 KiB of data per receive buffer (plus the 44-byte header), a 256 KiB
/// per-connection buffer, credit updates after every 64 KiB consumed, 64 KiB packets out.
const BENCH_RX: usize = 65536 + 44;
const BENCH_CAPACITY: u32 = 256 << 10;
const BENCH_CHUNK: usize = 65536;
const BENCH_CREDIT_EVERY: u64 = 64 << 10;

/// Local ports of the guest's outgoing connections.
const ECHO_LOCAL_PORT: u32 = 49152;
const BENCH_LOCAL_PORT: u32 = 49153;

const MAX_BYTES: u64 = 1 << 30;
const MAX_PORT: u64 = 0xffff_fffe;

/// Most events handled before a shutdown (the receive queue holds 8).
const QUEUE_DRAIN: usize = 16;

/// Waits (milliseconds).
const CONNECT_MS: u64 = 5000;
const ACCEPT_MS: u64 = 10_000;
const STALL_MS: u64 = 10_000;
const CLOSE_MS: u64 = 5000;

/// A short name for a virtio-drivers error, with the socket errors spelled out.
fn err_name(e: Error) -> &'static [u8] {
    match e {
        Error::SocketDeviceError(s) => match s {
            SocketError::ConnectionExists => b"connection-exists",
            SocketError::NotConnected => b"not-connected",
            SocketError::PeerSocketShutdown => b"peer-shutdown",
            SocketError::BufferTooShort => b"buffer-too-short",
            SocketError::OutputBufferTooShort(_) => b"output-buffer-too-short",
            SocketError::BufferTooLong(..) => b"buffer-too-long",
            SocketError::UnknownOperation(_) => b"unknown-operation",
            SocketError::InvalidOperation => b"invalid-operation",
            SocketError::InvalidNumber => b"invalid-number",
            SocketError::UnexpectedDataInPacket => b"unexpected-data",
            SocketError::InsufficientBufferSpaceInPeer => b"insufficient-peer-buffer",
            SocketError::RecycledWrongBuffer => b"recycled-wrong-buffer",
        },
        e => error_name(e),
    }
}

fn is_not_connected(e: &Error) -> bool {
    matches!(e, Error::SocketDeviceError(SocketError::NotConnected))
}

/// `VSOCK error <what> port=<p> <key>=<value>...`-style lines.
fn error_line(what: &[u8], port: u32, detail: &[u8]) {
    put(b"VSOCK error ");
    put(what);
    put(b" port=");
    put_dec(u64::from(port));
    put(b" ");
    line(detail);
}

fn error_with(what: &[u8], port: u32, e: Error) {
    put(b"VSOCK error ");
    put(what);
    put(b" port=");
    put_dec(u64::from(port));
    put(b" error=");
    line(err_name(e));
}

/// Reports `e` like [`error_with`] and drops the connection without the close handshake.
fn abort<const RX: usize>(mgr: &mut Mgr<RX>, c: &Conn, what: &[u8], port: u32, e: Error) {
    error_with(what, port, e);
    let _ = mgr.force_close(c.peer, c.port);
}

/// Discovery, then the first socket device: prints `VSOCK cid=N` or `VSOCK error ...` (None).
fn open<const RX: usize>(boot_params: u64, cmdline: &[u8]) -> Option<Drv<RX>> {
    let found = virtio::discover(boot_params, cmdline);
    let Some(f) = found.iter().find(|f| f.device_id == DEVICE_VSOCK) else {
        line(b"VSOCK error no vsock device");
        return None;
    };
    let t = match f.transport() {
        Ok(t) => t,
        Err(e) => {
            put(b"VSOCK error init=");
            line(mmio_error_name(&e));
            return None;
        }
    };
    let driver = match Drv::<RX>::new(t) {
        Ok(d) => d,
        Err(e) => {
            put(b"VSOCK error init=");
            line(err_name(e));
            return None;
        }
    };
    put(b"VSOCK cid=");
    put_dec(driver.guest_cid());
    nl();
    Some(driver)
}

/// What the guest knows about its one connection.
struct Conn {
    /// The host's address (for a listening connection: known once the request arrived).
    peer: VsockAddr,
    /// The guest's port.
    port: u32,
    /// Waiting for a connection request to `port`.
    listening: bool,
    /// The port the scenario's lines name: the host's for an outgoing connection, the guest's
    /// for an accepted one.
    line_port: u32,
    established: bool,
    closed: Option<DisconnectReason>,
    /// The peer's buffer as of its last event, and what the guest has sent.
    peer_alloc: u32,
    peer_fwd: u32,
    tx_cnt: u32,
}

impl Conn {
    fn to(port: u32, local: u32) -> Conn {
        Conn {
            peer: VsockAddr {
                cid: HOST_CID,
                port,
            },
            port: local,
            listening: false,
            line_port: port,
            established: false,
            closed: None,
            peer_alloc: 0,
            peer_fwd: 0,
            tx_cnt: 0,
        }
    }

    fn listen(port: u32) -> Conn {
        Conn {
            listening: true,
            line_port: port,
            ..Conn::to(0, port)
        }
    }

    /// The peer's free buffer space as far as the guest knows (0 if the numbers make no sense).
    fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd);
        self.peer_alloc.saturating_sub(in_flight)
    }
}

/// Handles at most one event. Ok(true) if there was one.
fn pump<const RX: usize>(mgr: &mut Mgr<RX>, c: &mut Conn) -> Result<bool, Error> {
    let Some(ev) = mgr.poll()? else {
        return Ok(false);
    };
    if c.listening {
        if ev.destination.port == c.port && ev.event_type == VsockEventType::ConnectionRequest {
            // The manager has accepted it (the port is listened on).
            c.listening = false;
            c.peer = ev.source;
            c.established = true;
            c.peer_alloc = ev.buffer_status.buffer_allocation;
            c.peer_fwd = ev.buffer_status.forward_count;
        }
        return Ok(true);
    }
    if ev.source != c.peer || ev.destination.port != c.port {
        return Ok(true);
    }
    c.peer_alloc = ev.buffer_status.buffer_allocation;
    c.peer_fwd = ev.buffer_status.forward_count;
    match ev.event_type {
        VsockEventType::Connected => c.established = true,
        VsockEventType::Disconnected { reason } => c.closed = Some(reason),
        _ => {}
    }
    Ok(true)
}

/// Sends up to `max` bytes of `data`, at most what the peer has room for as far as the guest
/// knows. Ok(0) if the peer has no room (the manager then asks it for credit).
fn send_some<const RX: usize>(
    mgr: &mut Mgr<RX>,
    c: &mut Conn,
    data: &[u8],
    max: usize,
) -> Result<usize, Error> {
    let mut n = data.len().min(max);
    let free = c.peer_free() as usize;
    if free > 0 {
        n = n.min(free);
    }
    if n == 0 {
        return Ok(0);
    }
    match mgr.send(c.peer, c.port, &data[..n]) {
        Ok(()) => {
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            Ok(n)
        }
        Err(Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Waits until `c` is established (or refused / timed out, with a `VSOCK error` line).
fn wait_established<const RX: usize>(
    mgr: &mut Mgr<RX>,
    c: &mut Conn,
    clock: &Clock,
    what: &[u8],
    ms: u64,
) -> bool {
    let t = clock.timer(ms);
    loop {
        match pump(mgr, c) {
            Ok(_) => {}
            Err(e) => {
                error_with(what, c.line_port, e);
                return false;
            }
        }
        if c.established {
            return true;
        }
        if c.closed.is_some() {
            error_line(what, c.line_port, b"refused");
            return false;
        }
        if t.expired() {
            error_line(what, c.line_port, b"timeout");
            return false;
        }
    }
}

/// Connects to the host's `port` from `local`: Some(connection) once established.
fn connect<const RX: usize>(
    mgr: &mut Mgr<RX>,
    clock: &Clock,
    port: u32,
    local: u32,
) -> Option<Conn> {
    let mut c = Conn::to(port, local);
    if let Err(e) = mgr.connect(c.peer, c.port) {
        error_with(b"connect", port, e);
        return None;
    }
    wait_established(mgr, &mut c, clock, b"connect", CONNECT_MS).then_some(c)
}

/// Listens on `port`, prints `VSOCK listening port=<port>` and waits for the host to connect.
fn accept<const RX: usize>(mgr: &mut Mgr<RX>, clock: &Clock, port: u32) -> Option<Conn> {
    mgr.listen(port);
    put(b"VSOCK listening port=");
    put_dec(u64::from(port));
    nl();
    let mut c = Conn::listen(port);
    let ok = wait_established(mgr, &mut c, clock, b"accept", ACCEPT_MS);
    mgr.unlisten(port);
    ok.then_some(c)
}

/// Shuts the connection down and waits for the peer's reset/shutdown; false (after a
/// `VSOCK error` line, and a reset of the connection) on timeout.
fn close<const RX: usize>(mgr: &mut Mgr<RX>, c: &mut Conn, clock: &Clock, what: &[u8]) -> bool {
    if c.closed.is_none() {
        // Handle what is already queued first (e.g. a credit request, which the manager
        // answers): answered after the shutdown, it would reach a connection the device has
        // already closed.
        for _ in 0..QUEUE_DRAIN {
            if !matches!(pump(mgr, c), Ok(true)) {
                break;
            }
        }
        match mgr.shutdown(c.peer, c.port) {
            Ok(()) => {}
            Err(e) if is_not_connected(&e) => return true,
            Err(e) => {
                error_with(what, c.line_port, e);
                let _ = mgr.force_close(c.peer, c.port);
                return false;
            }
        }
    }
    let t = clock.timer(CLOSE_MS);
    while c.closed.is_none() {
        // Late data or errors do not matter any more.
        let _ = pump(mgr, c);
        if t.expired() {
            error_line(what, c.line_port, b"disconnect=timeout");
            let _ = mgr.force_close(c.peer, c.port);
            return false;
        }
    }
    // The manager keeps a connection whose buffer still holds data: drop it.
    let _ = mgr.force_close(c.peer, c.port);
    true
}

/// `vsock-echo`: `petrel.bytes` (default 65536) of the pattern to the host's `petrel.port`
/// (default 5000), checking the echo as it arrives; then listens on `petrel.listen` (default
/// 6000) and echoes one host connection until the host closes it.
pub fn echo(boot_params: u64, cmdline: &[u8], args: &Args) {
    let Some(bytes) = number_arg(b"bytes", args.bytes, 65536, 0, MAX_BYTES) else {
        return;
    };
    let Some(port) = number_arg(b"port", args.port, 5000, 0, MAX_PORT) else {
        return;
    };
    let Some(listen) = number_arg(b"listen", args.listen, 6000, 0, MAX_PORT) else {
        return;
    };
    let (port, listen) = (port as u32, listen as u32);
    let clock = Clock::new();
    let Some(mut mgr) = open::<ECHO_RX>(boot_params, cmdline).map(VsockConnectionManager::new)
    else {
        return;
    };
    let ramp = ramp(VSOCK_PERIOD, ECHO_CHUNK.max(ECHO_BUF));
    echo_out(&mut mgr, &clock, &ramp, port, bytes);
    echo_in(&mut mgr, &clock, listen);
}

/// Part 1 of `vsock-echo`: `VSOCK connect port=P sent=N echoed=N ok=0|1`.
fn echo_out(mgr: &mut Mgr<ECHO_RX>, clock: &Clock, ramp: &[u8], port: u32, bytes: u64) {
    let Some(mut c) = connect(mgr, clock, port, ECHO_LOCAL_PORT) else {
        return;
    };
    let mut buf = [0u8; ECHO_BUF];
    let (mut sent, mut echoed, mut ok) = (0u64, 0u64, true);
    let mut idle: Timer = clock.timer(STALL_MS);
    loop {
        let mut progress = false;
        if sent < bytes {
            let off = (sent % VSOCK_PERIOD as u64) as usize;
            let want = (bytes - sent).min(ECHO_CHUNK as u64) as usize;
            match send_some(mgr, &mut c, &ramp[off..off + want], ECHO_CHUNK) {
                Ok(n) => {
                    sent += n as u64;
                    progress |= n > 0;
                }
                Err(e) => {
                    abort(mgr, &c, b"connect", port, e);
                    return;
                }
            }
        }
        match pump(mgr, &mut c) {
            Ok(got) => progress |= got,
            Err(e) => {
                abort(mgr, &c, b"connect", port, e);
                return;
            }
        }
        let mut gone = false;
        match mgr.recv(c.peer, c.port, &mut buf) {
            Ok(0) => {}
            Ok(n) => {
                ok &= vsock_matches(ramp, echoed, &buf[..n]);
                echoed += n as u64;
                progress = true;
                // Tell the host the buffer has room again (ignored if the connection is gone).
                let _ = mgr.update_credit(c.peer, c.port);
            }
            Err(e) if is_not_connected(&e) => gone = true,
            Err(e) => {
                abort(mgr, &c, b"connect", port, e);
                return;
            }
        }
        if echoed >= bytes && sent >= bytes {
            break;
        }
        if gone || (c.closed.is_some() && !progress) {
            put(b"VSOCK error connect port=");
            put_dec(u64::from(port));
            put(b" closed sent=");
            put_dec(sent);
            put(b" echoed=");
            put_dec(echoed);
            nl();
            return;
        }
        if progress {
            idle.restart();
        } else if idle.expired() {
            put(b"VSOCK error connect port=");
            put_dec(u64::from(port));
            put(b" stalled sent=");
            put_dec(sent);
            put(b" echoed=");
            put_dec(echoed);
            nl();
            let _ = mgr.force_close(c.peer, c.port);
            return;
        }
    }
    close(mgr, &mut c, clock, b"connect");
    put(b"VSOCK connect port=");
    put_dec(u64::from(port));
    put(b" sent=");
    put_dec(sent);
    put(b" echoed=");
    put_dec(echoed);
    put(b" ok=");
    put_dec(u64::from(ok && echoed == sent && sent == bytes));
    nl();
}

/// Part 2 of `vsock-echo`: `VSOCK listening port=Q`, then, once the host has closed the
/// connection, `VSOCK accepted port=Q echoed=N`.
fn echo_in(mgr: &mut Mgr<ECHO_RX>, clock: &Clock, listen: u32) {
    let Some(mut c) = accept(mgr, clock, listen) else {
        return;
    };
    let mut buf = [0u8; ECHO_BUF];
    let (mut pending, mut echoed) = (0usize, 0u64);
    let mut idle: Timer = clock.timer(STALL_MS);
    let mut gone = false;
    while !gone {
        let mut progress = false;
        if pending > 0 {
            match send_some(mgr, &mut c, &buf[..pending], ECHO_BUF) {
                Ok(n) => {
                    buf.copy_within(n..pending, 0);
                    pending -= n;
                    echoed += n as u64;
                    progress |= n > 0;
                }
                // The host closed and the manager already dropped the connection.
                Err(e) if is_not_connected(&e) => gone = true,
                Err(e) => {
                    abort(mgr, &c, b"accepted", listen, e);
                    return;
                }
            }
        } else {
            match mgr.recv(c.peer, c.port, &mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    pending = n;
                    progress = true;
                    let _ = mgr.update_credit(c.peer, c.port);
                }
                Err(e) if is_not_connected(&e) => gone = true,
                Err(e) => {
                    abort(mgr, &c, b"accepted", listen, e);
                    return;
                }
            }
        }
        match pump(mgr, &mut c) {
            Ok(got) => progress |= got,
            Err(e) => {
                abort(mgr, &c, b"accepted", listen, e);
                return;
            }
        }
        if progress {
            idle.restart();
        } else if idle.expired() {
            put(b"VSOCK error accepted port=");
            put_dec(u64::from(listen));
            put(b" stalled echoed=");
            put_dec(echoed);
            nl();
            let _ = mgr.force_close(c.peer, c.port);
            return;
        }
    }
    put(b"VSOCK accepted port=");
    put_dec(u64::from(listen));
    put(b" echoed=");
    put_dec(echoed);
    nl();
}

/// `vsock-bench`: `petrel.bytes` (default 4 MiB) of the pattern to the host's `petrel.port`
/// (default 5000), timed; then listens on `petrel.listen` (default 6000) and counts what the
/// host sends until it closes, timed from the first to the last byte.
///
/// Unlike `vsock-echo` this drives `VirtIOSocket` without the connection manager: the manager
/// copies every received byte twice (receive buffer → connection ring → caller), which under
/// PVM costs far more than the device's work; here received data is only counted where it
/// lies in the receive buffer.
pub fn bench(boot_params: u64, cmdline: &[u8], args: &Args) {
    let Some(bytes) = number_arg(b"bytes", args.bytes, 4 << 20, 0, MAX_BYTES) else {
        return;
    };
    let Some(port) = number_arg(b"port", args.port, 5000, 0, MAX_PORT) else {
        return;
    };
    let Some(listen) = number_arg(b"listen", args.listen, 6000, 0, MAX_PORT) else {
        return;
    };
    let (port, listen) = (port as u32, listen as u32);
    let clock = Clock::new();
    let Some(mut d) = open::<BENCH_RX>(boot_params, cmdline) else {
        return;
    };
    let ramp = ramp(VSOCK_PERIOD, BENCH_CHUNK);
    bench_out(&mut d, &clock, &ramp, port, bytes);
    bench_in(&mut d, &clock, listen);
}

/// One connection driven at the `VirtIOSocket` level.
struct Link {
    info: ConnectionInfo,
    /// The guest's CID.
    cid: u64,
    /// Credit estimate and state, as in `Conn`.
    peer_alloc: u32,
    peer_fwd: u32,
    tx_cnt: u32,
    established: bool,
    closed: Option<DisconnectReason>,
}

impl Link {
    fn new(cid: u64, peer: VsockAddr, local: u32) -> Link {
        let mut info = ConnectionInfo::new(peer, local);
        info.buf_alloc = BENCH_CAPACITY;
        Link {
            info,
            cid,
            peer_alloc: 0,
            peer_fwd: 0,
            tx_cnt: 0,
            established: false,
            closed: None,
        }
    }

    fn peer_free(&self) -> u32 {
        self.peer_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd))
    }
}

/// The next event, its data left where it lies (only its length is reported).
fn next_event(d: &mut Drv<BENCH_RX>) -> Result<Option<VsockEvent>, Error> {
    d.poll(|ev, _data| Ok(Some(ev)))
}

/// Handles one event (if any) for `l`: connection requests for anything else are refused,
/// credit requests answered, received data counted as consumed. Returns the number of data
/// bytes received, or None if there was no event.
fn link_pump(d: &mut Drv<BENCH_RX>, l: &mut Link) -> Result<Option<u64>, Error> {
    let Some(ev) = next_event(d)? else {
        return Ok(None);
    };
    if !ev.matches_connection(&l.info, l.cid) {
        if ev.event_type == VsockEventType::ConnectionRequest {
            d.force_close(&ConnectionInfo::new(ev.source, ev.destination.port))?;
        }
        return Ok(Some(0));
    }
    l.info.update_for_event(&ev);
    l.peer_alloc = ev.buffer_status.buffer_allocation;
    l.peer_fwd = ev.buffer_status.forward_count;
    match ev.event_type {
        VsockEventType::Connected => l.established = true,
        VsockEventType::Disconnected { reason } => {
            if l.closed.is_none() && reason == DisconnectReason::Shutdown {
                // The device waits for the guest's reset.
                d.force_close(&l.info)?;
            }
            l.closed = Some(reason);
        }
        VsockEventType::Received { length } => {
            l.info.done_forwarding(length);
            return Ok(Some(length as u64));
        }
        VsockEventType::CreditRequest => d.credit_update(&l.info)?,
        _ => {}
    }
    Ok(Some(0))
}

/// Part 1 of `vsock-bench`: `VSOCK bench-tx port=P bytes=N us=T` (first send to last send).
fn bench_out(d: &mut Drv<BENCH_RX>, clock: &Clock, ramp: &[u8], port: u32, bytes: u64) {
    let peer = VsockAddr {
        cid: HOST_CID,
        port,
    };
    let mut l = Link::new(d.guest_cid(), peer, BENCH_LOCAL_PORT);
    if let Err(e) = d.connect(&l.info) {
        error_with(b"connect", port, e);
        return;
    }
    let t = clock.timer(CONNECT_MS);
    while !l.established {
        if let Err(e) = link_pump(d, &mut l) {
            error_with(b"connect", port, e);
            return;
        }
        if l.closed.is_some() {
            error_line(b"connect", port, b"refused");
            return;
        }
        if t.expired() {
            error_line(b"connect", port, b"timeout");
            let _ = d.force_close(&l.info);
            return;
        }
    }
    let mut sent = 0u64;
    let mut idle: Timer = clock.timer(STALL_MS);
    let start = rdtsc();
    while sent < bytes {
        let off = (sent % VSOCK_PERIOD as u64) as usize;
        let mut n = (bytes - sent).min(BENCH_CHUNK as u64) as usize;
        let free = l.peer_free() as usize;
        if free > 0 {
            n = n.min(free);
        }
        // A send beyond the credit fails without sending (and asks the host for credit once).
        let n = match d.send(&ramp[off..off + n], &mut l.info) {
            Ok(()) => {
                l.tx_cnt = l.tx_cnt.wrapping_add(n as u32);
                n
            }
            Err(Error::SocketDeviceError(SocketError::InsufficientBufferSpaceInPeer)) => 0,
            Err(e) => {
                error_with(b"bench-tx", port, e);
                let _ = d.force_close(&l.info);
                return;
            }
        };
        sent += n as u64;
        let got = match link_pump(d, &mut l) {
            Ok(got) => got.is_some(),
            Err(e) => {
                error_with(b"bench-tx", port, e);
                let _ = d.force_close(&l.info);
                return;
            }
        };
        if l.closed.is_some() && sent < bytes {
            put(b"VSOCK error bench-tx port=");
            put_dec(u64::from(port));
            put(b" closed sent=");
            put_dec(sent);
            nl();
            return;
        }
        if n > 0 || got {
            idle.restart();
        } else if idle.expired() {
            put(b"VSOCK error bench-tx port=");
            put_dec(u64::from(port));
            put(b" stalled sent=");
            put_dec(sent);
            nl();
            let _ = d.force_close(&l.info);
            return;
        }
    }
    let us = clock.us(rdtsc().wrapping_sub(start));
    // Shut down and wait for the device's reset.
    if l.closed.is_none() {
        if let Err(e) = d.shutdown(&l.info) {
            error_with(b"bench-tx", port, e);
        }
        let t = clock.timer(CLOSE_MS);
        while l.closed.is_none() {
            let _ = link_pump(d, &mut l);
            if t.expired() {
                error_line(b"bench-tx", port, b"disconnect=timeout");
                let _ = d.force_close(&l.info);
                break;
            }
        }
    }
    put(b"VSOCK bench-tx port=");
    put_dec(u64::from(port));
    put(b" bytes=");
    put_dec(sent);
    put(b" us=");
    put_dec(us);
    nl();
}

/// Part 2 of `vsock-bench`: `VSOCK listening port=Q`, then `VSOCK bench-rx port=Q bytes=N
/// us=T` once the host has closed the connection.
fn bench_in(d: &mut Drv<BENCH_RX>, clock: &Clock, listen: u32) {
    put(b"VSOCK listening port=");
    put_dec(u64::from(listen));
    nl();
    let cid = d.guest_cid();
    // Wait for the host's request and accept it (other requests are refused).
    let t = clock.timer(ACCEPT_MS);
    let mut l = loop {
        let ev = match next_event(d) {
            Ok(ev) => ev,
            Err(e) => {
                error_with(b"accept", listen, e);
                return;
            }
        };
        if let Some(ev) = ev {
            if ev.event_type == VsockEventType::ConnectionRequest {
                let for_us = ev.destination.cid == cid && ev.destination.port == listen;
                let mut l = Link::new(cid, ev.source, ev.destination.port);
                if !for_us {
                    let _ = d.force_close(&l.info);
                    continue;
                }
                l.info.update_for_event(&ev);
                if let Err(e) = d.accept(&l.info) {
                    error_with(b"accept", listen, e);
                    return;
                }
                l.established = true;
                break l;
            }
        }
        if t.expired() {
            error_line(b"accept", listen, b"timeout");
            return;
        }
    };
    let (mut got_bytes, mut unreported) = (0u64, 0u64);
    let (mut first, mut last) = (0u64, 0u64);
    let mut idle: Timer = clock.timer(STALL_MS);
    while l.closed.is_none() {
        match link_pump(d, &mut l) {
            Ok(Some(n)) => {
                if n > 0 {
                    let now = rdtsc();
                    if got_bytes == 0 {
                        first = now;
                    }
                    last = now;
                    got_bytes += n;
                    unreported += n;
                    if unreported >= BENCH_CREDIT_EVERY {
                        unreported = 0;
                        if let Err(e) = d.credit_update(&l.info) {
                            error_with(b"bench-rx", listen, e);
                            let _ = d.force_close(&l.info);
                            return;
                        }
                    }
                }
                idle.restart();
            }
            Ok(None) => {
                if idle.expired() {
                    put(b"VSOCK error bench-rx port=");
                    put_dec(u64::from(listen));
                    put(b" stalled bytes=");
                    put_dec(got_bytes);
                    nl();
                    let _ = d.force_close(&l.info);
                    return;
                }
            }
            Err(e) => {
                error_with(b"bench-rx", listen, e);
                let _ = d.force_close(&l.info);
                return;
            }
        }
    }
    put(b"VSOCK bench-rx port=");
    put_dec(u64::from(listen));
    put(b" bytes=");
    put_dec(got_bytes);
    put(b" us=");
    put_dec(clock.us(last.wrapping_sub(first)));
    nl();
}
