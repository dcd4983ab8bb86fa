//! The event-loop side of virtio-vsock: the transmit and receive queues, the host streams,
//! and the connection state machine between them.
//!
//! [`Vsock`] is an `event-manager` `MutEventSubscriber`. It registers three fds with the
//! event loop: its state-change eventfd (always) and, while active, the receive and transmit
//! queues' notification eventfds, both through its `DeviceQueues`, and its own epoll
//! instance (always). The listening socket, the
//! grace-period timer and every host stream live in the device's own epoll instance, so
//! connections come and go without touching the event loop's registrations (and a closed
//! stream can never leave a stale entry there). The event queue's eventfd is not watched: the
//! device never uses that queue.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use thiserror::Error;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent};

use super::connection::{ConnState, Connection, Key, Violation};
use super::device::{Control, PendingHost, Vsock, TOKEN_LISTENER, TOKEN_TIMER};
use super::packet::{
    op_name, Header, HDR_LEN, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::unix::{connect_nonblocking, peer_closed, port_path, LineState};
use super::{
    CONN_BUF_ALLOC, FIRST_HOST_PORT, HOST_CID, MAX_CONNECTIONS, MAX_PKT_LEN, RX_QUEUE, TX_QUEUE,
};
use crate::report::describe;
use crate::virtio::chain::{log_bad, next_chain, scatter, writable_buffers, Chain, QueueFault};
use crate::virtio::device_queues::{QueueEvent, QueueRef};
use petrel_memory::GuestMemoryMmap;

/// While this many control packets wait, the device takes no transmit chains and accepts no
/// host connections.
pub(super) const BACKLOG_PAUSE: usize = 128;
/// The hard limit of the control backlog (never reached: see the pause).
const BACKLOG_MAX: usize = BACKLOG_PAUSE + 4 * MAX_CONNECTIONS;
/// Packets delivered per receive-queue run; the device then signals itself to continue.
const RX_BUDGET: usize = 256;
/// Host connections accepted per event-loop turn.
const ACCEPT_BUDGET: usize = 16;

/// Why a chain or a queue could not be served.
#[derive(Debug, Error)]
enum VsockFault {
    /// A fault every device can meet: in a queue itself (it needs a reset) or in a chain
    /// (a buffer going the wrong way: writable on transmit, readable on receive).
    #[error(transparent)]
    Queue(#[from] QueueFault),
    /// The chain cannot hold a header.
    #[error("chain of {len} bytes is shorter than a packet header")]
    TooShort {
        /// Its length.
        len: u64,
    },
    /// The header's payload length is larger than a packet may be.
    #[error("payload length {len} is larger than {MAX_PKT_LEN}")]
    TooLong {
        /// The length claimed.
        len: u32,
    },
    /// The header's payload length is larger than the chain.
    #[error("payload length {len} but the chain holds {held} bytes after the header")]
    LenBeyondChain {
        /// The length claimed.
        len: u32,
        /// What the chain holds.
        held: u64,
    },
}

/// Copies `out.len()` bytes of the chain's buffers, starting `skip` bytes in.
fn gather(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    mut skip: u64,
    out: &mut [u8],
) -> Result<(), VsockFault> {
    let mut done = 0usize;
    for desc in &chain.descriptors {
        if done == out.len() {
            break;
        }
        let len = u64::from(desc.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(out.len() - done);
        let outside = QueueFault::OutsideMemory {
            index: desc.index,
            addr: desc.addr,
            len: desc.len,
        };
        let addr = desc.addr.checked_add(skip).ok_or(outside)?;
        mem.read_slice(&mut out[done..done + n], GuestAddress(addr))
            .map_err(|_| QueueFault::OutsideMemory {
                index: desc.index,
                addr: desc.addr,
                len: desc.len,
            })?;
        done += n;
        skip = 0;
    }
    Ok(())
}

/// Reads a transmit packet: its header (returned) and payload (into `payload`). On an error
/// the header is returned too when it could be read.
fn read_tx(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    payload: &mut Vec<u8>,
) -> Result<Header, (VsockFault, Option<Header>)> {
    if let Some(error) = chain.error {
        return Err((QueueFault::Chain(error).into(), None));
    }
    let mut total = 0u64;
    for desc in &chain.descriptors {
        if desc.writable {
            return Err((QueueFault::Direction { index: desc.index }.into(), None));
        }
        total += u64::from(desc.len);
    }
    if total < HDR_LEN as u64 {
        return Err((VsockFault::TooShort { len: total }, None));
    }
    let mut raw = [0u8; HDR_LEN];
    gather(mem, chain, 0, &mut raw).map_err(|fault| (fault, None))?;
    let header = Header::from_bytes(&raw);
    if header.len > MAX_PKT_LEN {
        return Err((VsockFault::TooLong { len: header.len }, Some(header)));
    }
    let held = total - HDR_LEN as u64;
    if u64::from(header.len) > held {
        return Err((
            VsockFault::LenBeyondChain {
                len: header.len,
                held,
            },
            Some(header),
        ));
    }
    payload.clear();
    payload.resize(header.len as usize, 0);
    gather(mem, chain, HDR_LEN as u64, payload).map_err(|fault| (fault, Some(header)))?;
    Ok(header)
}

/// The writable buffers of a receive chain, checked, and their total size.
fn rx_buffers(mem: &GuestMemoryMmap, chain: &Chain) -> Result<(Vec<(u64, u32)>, u64), VsockFault> {
    let (buffers, total) = writable_buffers(mem, chain)?;
    if total < HDR_LEN as u64 {
        return Err(VsockFault::TooShort { len: total });
    }
    Ok((buffers, total))
}

/// A receive chain ready to be filled.
struct RxChain {
    /// The available-ring position it came from (to give it back).
    start: u16,
    head: u16,
    buffers: Vec<(u64, u32)>,
    capacity: u64,
}

/// What the receive queue sends next.
#[derive(Clone, Copy)]
enum RxWork {
    Control(Control),
    Data(u64),
}

impl Vsock {
    /// Marks the queues broken after a queue fault, and drops every connection.
    fn break_queues(&mut self, fault: &VsockFault) {
        self.queues.break_queues(fault);
        self.close_everything();
    }

    // ---------------------------------------------------------------- transmit queue

    /// Takes the guest's packets from the transmit queue (one queue's worth per call) and acts
    /// on them. Stops early while the control backlog is long.
    pub(super) fn process_tx(&mut self) {
        let Some(mut active) = self.queues.take_serviceable(TX_QUEUE) else {
            return;
        };
        let tx = active.queue(TX_QUEUE);
        let mut payload = std::mem::take(&mut self.pkt_buf);
        let mut completed = 0usize;
        let budget = usize::from(tx.queue.size());
        self.tx_paused = false;
        let result = (|| -> Result<(), VsockFault> {
            loop {
                tx.queue
                    .disable_notification(tx.mem)
                    .map_err(QueueFault::UsedRing)?;
                loop {
                    if self.control.len() >= BACKLOG_PAUSE {
                        // Resumed when the receive queue drained the backlog.
                        self.tx_paused = true;
                        return Ok(());
                    }
                    let Some(chain) = next_chain(tx.queue, tx.mem)? else {
                        break;
                    };
                    let outcome = read_tx(tx.mem, &chain, &mut payload);
                    tx.queue
                        .add_used(tx.mem, chain.head, 0)
                        .map_err(QueueFault::UsedRing)?;
                    completed += 1;
                    self.stats.tx_packets += 1;
                    match outcome {
                        Ok(header) => self.handle_packet(header, &payload),
                        Err((fault, header)) => self.drop_packet(&fault, header),
                    }
                    if completed >= budget {
                        tx.queue
                            .enable_notification(tx.mem)
                            .map_err(QueueFault::UsedRing)?;
                        // Come back after the rest of the event loop had a turn.
                        let _ = tx.notify.write(1);
                        return Ok(());
                    }
                }
                if !tx
                    .queue
                    .enable_notification(tx.mem)
                    .map_err(QueueFault::UsedRing)?
                {
                    return Ok(());
                }
            }
        })();
        self.queues.put_back(active);
        self.queues.signal_used(TX_QUEUE, completed);
        self.pkt_buf = payload;
        if let Err(fault) = result {
            self.break_queues(&fault);
        }
    }

    /// A malformed transmit packet: dropped, and its connection reset if the header names one.
    fn drop_packet(&mut self, fault: &VsockFault, header: Option<Header>) {
        self.stats.tx_dropped += 1;
        log_bad(
            self.queues.label(),
            self.stats.tx_dropped + self.stats.bad_packet_resets,
            &format!("transmit packet dropped: {}", describe(fault)),
        );
        let Some(header) = header.filter(|h| h.src_cid == self.guest_cid && h.dst_cid == HOST_CID)
        else {
            return;
        };
        let key = Key {
            host_port: header.dst_port,
            guest_port: header.src_port,
        };
        if let Some(&id) = self.by_key.get(&key) {
            self.stats.bad_packet_resets += 1;
            self.close(id, true);
        }
    }

    /// Queues a control packet for the guest.
    fn push_control(&mut self, key: Key, op: u16, flags: u32) {
        self.push_control_from(HOST_CID, key, op, flags);
    }

    fn push_control_from(&mut self, src_cid: u64, key: Key, op: u16, flags: u32) {
        if self.control.len() >= BACKLOG_MAX {
            log::warn!(
                "virtio-vsock: control backlog full, {} for port {} dropped",
                op_name(op),
                key.guest_port
            );
            return;
        }
        self.control.push_back(Control {
            src_cid,
            key,
            op,
            flags,
        });
    }

    /// Answers a bad packet with `OP_RST` (never an `OP_RST` with another).
    fn refuse(&mut self, header: &Header, why: &str) {
        self.stats.bad_packet_resets += 1;
        log_bad(
            self.queues.label(),
            self.stats.tx_dropped + self.stats.bad_packet_resets,
            &format!(
                "{} from port {} to {}:{}: {why}",
                op_name(header.op),
                header.src_port,
                header.dst_cid,
                header.dst_port
            ),
        );
        if header.op != OP_RST {
            let key = Key {
                host_port: header.dst_port,
                guest_port: header.src_port,
            };
            self.push_control_from(header.dst_cid, key, OP_RST, 0);
        }
    }

    /// The guest broke the protocol on connection `id`: reset it.
    fn violation(&mut self, id: u64, why: &str) {
        self.stats.bad_packet_resets += 1;
        log_bad(
            self.queues.label(),
            self.stats.tx_dropped + self.stats.bad_packet_resets,
            &format!("connection reset: {why}"),
        );
        self.close(id, true);
    }

    /// Acts on one well-formed packet from the guest.
    fn handle_packet(&mut self, header: Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid {
            self.stats.tx_dropped += 1;
            log_bad(
                self.queues.label(),
                self.stats.tx_dropped + self.stats.bad_packet_resets,
                &format!("packet from CID {} dropped", header.src_cid),
            );
            return;
        }
        if header.dst_cid != HOST_CID {
            self.refuse(&header, "destination is not the host");
            return;
        }
        if header.type_ != TYPE_STREAM {
            self.refuse(&header, "not a stream socket");
            return;
        }
        let key = Key {
            host_port: header.dst_port,
            guest_port: header.src_port,
        };
        let Some(&id) = self.by_key.get(&key) else {
            match header.op {
                OP_REQUEST => self.guest_connect(key, &header),
                OP_RST => {}
                // Usually not a hostile guest: its packet crossed the close of the connection
                // (our RST or its own). Answer with RST, as the virtio-vsock specification asks,
                // without a warning.
                _ => {
                    log::debug!(
                        "{}: {} from port {} to {}:{} for no connection, answered with RST",
                        self.queues.label(),
                        op_name(header.op),
                        header.src_port,
                        header.dst_cid,
                        header.dst_port
                    );
                    self.stats.bad_packet_resets += 1;
                    self.push_control_from(header.dst_cid, key, OP_RST, 0);
                }
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Err(v) = conn.update_peer_credit(header.buf_alloc, header.fwd_cnt) {
            self.violation(id, &v.to_string());
            return;
        }
        match header.op {
            OP_RESPONSE if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Established;
                conn.deadline = None;
                self.stats.host_connections += 1;
                conn.push_preamble(format!("OK {}\n", key.host_port).as_bytes());
                self.flush(id);
            }
            OP_RST => {
                // The guest ends the connection (or refuses it): close at once, no answer.
                self.close(id, false);
                return;
            }
            OP_SHUTDOWN => {
                if conn.state == ConnState::Connecting {
                    self.violation(id, "SHUTDOWN before the handshake");
                    return;
                }
                conn.guest_shut_rcv |= header.flags & SHUTDOWN_RCV != 0;
                conn.guest_shut_send |= header.flags & SHUTDOWN_SEND != 0;
                if conn.guest_shut_send && conn.has_output() && conn.deadline.is_none() {
                    // Give the host a while to read what the guest sent last.
                    conn.deadline = Some(Instant::now() + self.grace);
                }
            }
            OP_RW => {
                if conn.state != ConnState::Established || conn.guest_shut_send {
                    let why = if conn.guest_shut_send {
                        "RW after SHUTDOWN_SEND"
                    } else {
                        "RW before the handshake"
                    };
                    self.violation(id, why);
                    return;
                }
                let before = conn.fwd_cnt;
                match conn.forward(payload) {
                    Err(v @ Violation::BeyondCredit { .. })
                    | Err(v @ Violation::FwdCntAhead { .. }) => {
                        self.violation(id, &v.to_string());
                        return;
                    }
                    Ok(Err(e)) => {
                        log::debug!(
                            "virtio-vsock: host stream of port {} failed: {e}; resetting",
                            key.host_port
                        );
                        self.close(id, true);
                        return;
                    }
                    Ok(Ok(())) => {
                        self.stats.guest_to_host_bytes +=
                            u64::from(conn.fwd_cnt.wrapping_sub(before));
                        self.maybe_credit_update(id);
                    }
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.push_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_REQUEST => {
                self.violation(id, "REQUEST for an open connection");
                return;
            }
            OP_RESPONSE => {
                self.violation(id, "unexpected RESPONSE");
                return;
            }
            op => {
                self.violation(id, &format!("unknown operation {op}"));
                return;
            }
        }
        self.settle(id);
    }

    /// A guest `OP_REQUEST` to host port `key.host_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: Key, header: &Header) {
        if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS {
            self.stats.refused_guest_connections += 1;
            log::warn!("virtio-vsock: too many connections, guest request refused");
            self.push_control(key, OP_RST, 0);
            return;
        }
        let path = port_path(&self.uds_path, key.host_port);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                self.stats.refused_guest_connections += 1;
                log::debug!(
                    "virtio-vsock: guest connection to {} refused: {e}",
                    path.display()
                );
                self.push_control(key, OP_RST, 0);
                return;
            }
        };
        let mut conn = Connection::new(key, stream, ConnState::Established);
        if let Err(v) = conn.update_peer_credit(header.buf_alloc, header.fwd_cnt) {
            self.refuse(header, &v.to_string());
            return;
        }
        let id = self.new_token();
        self.conns.insert(id, conn);
        self.by_key.insert(key, id);
        self.stats.guest_connections += 1;
        self.push_control(key, OP_RESPONSE, 0);
        self.update_interest(id);
    }

    fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    /// Queues a credit update for connection `id` if the guest may be starving.
    fn maybe_credit_update(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.needs_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            let key = conn.key;
            self.push_control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Writes what waits for the host on connection `id`; resets it on a stream error.
    fn flush(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let before = conn.fwd_cnt;
        match conn.flush() {
            Ok(()) => {
                self.stats.guest_to_host_bytes += u64::from(conn.fwd_cnt.wrapping_sub(before));
                self.maybe_credit_update(id);
            }
            Err(e) => {
                log::debug!(
                    "virtio-vsock: host stream of port {} failed: {e}; resetting",
                    conn.key.host_port
                );
                self.close(id, true);
            }
        }
    }

    /// Closes connection `id`'s host stream and forgets it; with `rst`, tells the guest.
    pub(super) fn close(&mut self, id: u64, rst: bool) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if self.by_key.get(&conn.key) == Some(&id) {
            self.by_key.remove(&conn.key);
        }
        if conn.registered.is_some() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                conn.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        if rst {
            self.push_control(conn.key, OP_RST, 0);
        }
    }

    /// After anything happened on connection `id`: finishes a shutdown whose conditions are
    /// met, and watches the stream for what the connection now waits for.
    fn settle(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.guest_shut_send && !conn.has_output() && !conn.write_shut && !conn.host_gone {
            // The guest will send nothing more and the host has it all: it reads end of file.
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.write_shut = true;
        }
        let guest_asked = conn.guest_shut_rcv || conn.guest_shut_send;
        let to_guest_done = conn.host_eof || conn.guest_shut_rcv;
        let to_host_done = (conn.guest_shut_send && !conn.has_output()) || conn.host_gone;
        if guest_asked && to_guest_done && to_host_done {
            // Both directions are finished and the guest has said so: end it.
            self.close(id, true);
            return;
        }
        self.update_interest(id);
    }

    /// Brings the inner epoll's registration of connection `id` in line with what it waits
    /// for.
    fn update_interest(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let want = conn.interest();
        if want == conn.registered {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let result = match (conn.registered, want) {
            (None, Some(set)) => {
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(set, id))
            }
            (Some(_), Some(set)) => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(set, id))
            }
            (Some(_), None) => self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, None) => Ok(()),
        };
        match result {
            Ok(()) => conn.registered = want,
            Err(e) => {
                log::warn!("virtio-vsock: cannot watch a host stream ({e}); resetting it");
                conn.registered = Some(EventSet::empty());
                self.close(id, true);
            }
        }
    }

    // ---------------------------------------------------------------- receive queue

    /// Takes the next usable receive chain; bad chains met on the way complete with used
    /// length 0. `None` when the driver has posted nothing usable.
    fn next_rx_chain(
        &mut self,
        rx: &mut QueueRef<'_>,
        used: &mut usize,
    ) -> Result<Option<RxChain>, VsockFault> {
        loop {
            let start = rx.queue.next_avail();
            let Some(chain) = next_chain(rx.queue, rx.mem)? else {
                return Ok(None);
            };
            match rx_buffers(rx.mem, &chain) {
                Ok((buffers, capacity)) => {
                    return Ok(Some(RxChain {
                        start,
                        head: chain.head,
                        buffers,
                        capacity,
                    }))
                }
                Err(fault) => {
                    self.stats.rx_bad_chains += 1;
                    log_bad(
                        self.queues.label(),
                        self.stats.rx_bad_chains,
                        &format!("receive chain: {}", describe(&fault)),
                    );
                    rx.queue
                        .add_used(rx.mem, chain.head, 0)
                        .map_err(QueueFault::UsedRing)?;
                    *used += 1;
                }
            }
        }
    }

    /// The header of a packet to the guest on `key`, with the connection's credit.
    fn header_for(&mut self, src_cid: u64, key: Key, op: u16) -> Header {
        let mut header = Header {
            src_cid,
            dst_cid: self.guest_cid,
            src_port: key.host_port,
            dst_port: key.guest_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: 0,
        };
        if let Some(conn) = self.by_key.get(&key).and_then(|id| self.conns.get_mut(id)) {
            header.fwd_cnt = conn.fwd_cnt;
            conn.last_fwd_sent = conn.fwd_cnt;
            if op == OP_CREDIT_UPDATE {
                conn.credit_update_queued = false;
            }
        }
        header
    }

    /// Delivers control packets, then host data, into the receive queue while both last.
    pub(super) fn process_rx(&mut self) {
        if self.control.is_empty() && self.data_ready.is_empty() {
            return;
        }
        let Some(mut active) = self.queues.take_serviceable(RX_QUEUE) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.pkt_buf);
        // The transmit path leaves it at its last payload's length.
        buf.resize(HDR_LEN + MAX_PKT_LEN as usize, 0);
        let mut used = 0usize;
        let result = self.fill_rx(&mut active.queue(RX_QUEUE), &mut buf, &mut used);
        self.queues.put_back(active);
        self.queues.signal_used(RX_QUEUE, used);
        self.pkt_buf = buf;
        if let Err(fault) = result {
            self.break_queues(&fault);
        }
    }

    fn fill_rx(
        &mut self,
        rx: &mut QueueRef<'_>,
        buf: &mut [u8],
        used: &mut usize,
    ) -> Result<(), VsockFault> {
        let mut delivered = 0usize;
        while delivered < RX_BUDGET {
            let work = match (self.control.front(), self.data_ready.front()) {
                (Some(control), _) => RxWork::Control(*control),
                (None, Some(&id)) => RxWork::Data(id),
                (None, None) => return Ok(()),
            };
            let mut credit = 0;
            if let RxWork::Data(id) = work {
                match self.conns.get_mut(&id) {
                    Some(conn) if conn.can_read() && conn.peer_credit() > 0 => {
                        credit = conn.peer_credit();
                    }
                    Some(conn) => {
                        self.data_ready.pop_front();
                        conn.data_queued = false;
                        if conn.can_read() && !conn.credit_requested {
                            // Out of credit: ask, and wait for the guest's answer.
                            conn.credit_requested = true;
                            let key = conn.key;
                            self.push_control(key, OP_CREDIT_REQUEST, 0);
                        }
                        self.update_interest(id);
                        continue;
                    }
                    None => {
                        self.data_ready.pop_front();
                        continue;
                    }
                }
            }
            let Some(chain) = self.next_rx_chain(rx, used)? else {
                self.rx_starved = true;
                return Ok(());
            };
            match work {
                RxWork::Control(control) => {
                    let mut header = self.header_for(control.src_cid, control.key, control.op);
                    header.flags = control.flags;
                    scatter(rx.mem, &chain.buffers, &header.to_bytes(), 0)?;
                    rx.queue
                        .add_used(rx.mem, chain.head, HDR_LEN as u32)
                        .map_err(QueueFault::UsedRing)?;
                    self.control.pop_front();
                }
                RxWork::Data(id) => {
                    let room = chain.capacity - HDR_LEN as u64;
                    let max = u64::from(credit.min(MAX_PKT_LEN)).min(room) as usize;
                    if max == 0 {
                        // A chain that holds only a header cannot carry data.
                        rx.queue.set_next_avail(chain.start);
                        self.rx_starved = true;
                        return Ok(());
                    }
                    let Some(conn) = self.conns.get_mut(&id) else {
                        rx.queue.set_next_avail(chain.start);
                        continue;
                    };
                    let read = (&conn.stream).read(&mut buf[HDR_LEN..HDR_LEN + max]);
                    let n = match read {
                        Ok(0) => {
                            rx.queue.set_next_avail(chain.start);
                            self.data_ready.pop_front();
                            conn.data_queued = false;
                            self.host_eof(id);
                            continue;
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                            rx.queue.set_next_avail(chain.start);
                            continue;
                        }
                        Err(e) => {
                            rx.queue.set_next_avail(chain.start);
                            self.data_ready.pop_front();
                            conn.data_queued = false;
                            if e.kind() == io::ErrorKind::WouldBlock {
                                self.update_interest(id);
                            } else {
                                log::debug!(
                                    "virtio-vsock: host stream of port {} failed: {e}; resetting",
                                    conn.key.host_port
                                );
                                self.close(id, true);
                            }
                            continue;
                        }
                    };
                    let key = conn.key;
                    conn.tx_cnt = conn.tx_cnt.wrapping_add(n as u32);
                    let mut header = self.header_for(HOST_CID, key, OP_RW);
                    header.len = n as u32;
                    buf[..HDR_LEN].copy_from_slice(&header.to_bytes());
                    scatter(rx.mem, &chain.buffers, &buf[..HDR_LEN + n], 0)?;
                    rx.queue
                        .add_used(rx.mem, chain.head, (HDR_LEN + n) as u32)
                        .map_err(QueueFault::UsedRing)?;
                    self.stats.host_to_guest_bytes += n as u64;
                    // Others' turn; this stream stays in the queue until it runs dry.
                    self.data_ready.pop_front();
                    self.data_ready.push_back(id);
                }
            }
            *used += 1;
            delivered += 1;
            self.stats.rx_packets += 1;
        }
        // Come back after the rest of the event loop had a turn.
        let _ = rx.notify.write(1);
        Ok(())
    }

    /// The host stream of connection `id` reached end of file.
    fn host_eof(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.host_eof = true;
        let key = conn.key;
        if conn.hup_seen || peer_closed(&conn.stream) {
            self.host_gone(id);
        } else {
            // Only the host's write side is shut: the guest may still send.
            self.push_control(key, OP_SHUTDOWN, SHUTDOWN_SEND);
            self.settle(id);
        }
    }

    /// The host closed connection `id` entirely: tell the guest, and give it a while to
    /// answer with `OP_RST`.
    fn host_gone(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.host_gone {
            return;
        }
        conn.host_eof = true;
        conn.host_gone = true;
        conn.discard_output();
        conn.deadline = Some(Instant::now() + self.grace);
        let key = conn.key;
        self.push_control(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
        self.settle(id);
    }

    // ---------------------------------------------------------------- host side

    /// Handles what the device's own epoll instance reports.
    pub(super) fn process_backend(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("virtio-vsock: epoll_wait failed: {e}");
                }
                return;
            }
        };
        let mut timer_fired = false;
        for event in &events[..count] {
            match event.data() {
                TOKEN_LISTENER => self.accept_hosts(),
                TOKEN_TIMER => timer_fired = true,
                token if self.pending.contains_key(&token) => self.read_connect_line(token),
                token => self.stream_event(token, event.event_set()),
            }
        }
        if timer_fired {
            // Disarming resets the timer's count, so it stops being readable.
            if let Err(e) = self.timer.clear() {
                log::warn!("virtio-vsock: cannot disarm the timer: {e}");
            }
            self.timer_armed = None;
            self.expire_deadlines();
        }
        // A full batch may leave more events; the epoll fd stays readable for them.
    }

    /// Accepts host programs waiting on the listening socket.
    fn accept_hosts(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            if !self.may_accept() {
                return;
            }
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("virtio-vsock: accept failed: {e}");
                    return;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("virtio-vsock: cannot make a host stream non-blocking: {e}");
                continue;
            }
            let token = self.new_token();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            ) {
                log::warn!("virtio-vsock: cannot watch a host stream: {e}");
                continue;
            }
            self.pending.insert(
                token,
                PendingHost {
                    stream,
                    line: Default::default(),
                },
            );
        }
    }

    /// Whether a new host connection may be accepted now.
    fn may_accept(&self) -> bool {
        self.queues.is_active()
            && !self.queues.is_broken()
            && self.conns.len() + self.pending.len() < MAX_CONNECTIONS
            && self.control.len() < BACKLOG_PAUSE
    }

    /// Reads what a host program sent of its `CONNECT` line, one byte at a time (what follows
    /// the line is the stream's first data and stays in the socket).
    fn read_connect_line(&mut self, token: u64) {
        let Some(pending) = self.pending.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match (&pending.stream).read(&mut byte) {
                Ok(0) => break,
                Ok(_) => match pending.line.push(byte[0]) {
                    LineState::Incomplete => {}
                    LineState::Port(port) => {
                        self.start_host_connection(token, port);
                        return;
                    }
                    LineState::Bad => {
                        self.stats.bad_connect_lines += 1;
                        log::warn!("virtio-vsock: a host program sent a bad CONNECT line; closed");
                        break;
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if let Some(pending) = self.pending.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                pending.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    /// A free host port for a host-initiated connection, counting up from 2^30.
    fn allocate_host_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_host_port;
            self.next_host_port = port.checked_add(1).unwrap_or(FIRST_HOST_PORT);
            if !self.by_key.keys().any(|k| k.host_port == port) {
                return Some(port);
            }
        }
        None
    }

    /// A host program asked for guest port `port`: ask the guest.
    fn start_host_connection(&mut self, token: u64, port: u32) {
        let Some(pending) = self.pending.remove(&token) else {
            return;
        };
        let Some(host_port) = self.allocate_host_port() else {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                pending.stream.as_raw_fd(),
                EpollEvent::default(),
            );
            return;
        };
        let key = Key {
            host_port,
            guest_port: port,
        };
        let mut conn = Connection::new(key, pending.stream, ConnState::Connecting);
        // Still registered under `token`, for the CONNECT line.
        conn.registered = Some(EventSet::IN);
        conn.deadline = Some(Instant::now() + self.grace);
        self.conns.insert(token, conn);
        self.by_key.insert(key, token);
        self.push_control(key, OP_REQUEST, 0);
        self.update_interest(token);
    }

    /// Something happened on connection `id`'s host stream.
    fn stream_event(&mut self, id: u64, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let hangup = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if set.contains(EventSet::HANG_UP) {
            conn.hup_seen = true;
        }
        if conn.has_output() && (hangup || set.contains(EventSet::OUT)) {
            self.flush(id);
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if (hangup || set.contains(EventSet::IN)) && conn.can_read() {
            if !conn.data_queued {
                conn.data_queued = true;
                self.data_ready.push_back(id);
            }
        } else if hangup && conn.host_eof {
            self.host_gone(id);
            return;
        }
        self.settle(id);
    }

    /// Resets connections whose deadline passed.
    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        let expired: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            log::debug!("virtio-vsock: connection {id} timed out; resetting");
            self.close(id, true);
        }
    }

    /// Sets the timer for the earliest deadline.
    fn arm_timer(&mut self) {
        let next = self.conns.values().filter_map(|c| c.deadline).min();
        if next == self.timer_armed {
            return;
        }
        let result = match next {
            Some(at) => {
                let delay = at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.reset(delay, None)
            }
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_armed = next,
            Err(e) => log::warn!("virtio-vsock: cannot set the timer: {e}"),
        }
    }

    /// The end of every event-loop turn: deliver what is queued, resume a paused transmit
    /// queue, and bring the listener and the timer up to date.
    pub(super) fn finish_turn(&mut self) {
        self.process_rx();
        if self.tx_paused && self.control.len() < BACKLOG_PAUSE {
            self.process_tx();
            self.process_rx();
        }
        let want = self.may_accept();
        self.set_listener_watch(want);
        self.arm_timer();
    }

    /// The device was activated or reset, or the event loop just started: take what the
    /// transmit queue holds. If the new queues could not be watched they are broken, and
    /// every connection goes.
    fn state_changed(&mut self) {
        if self.queues.is_broken() {
            self.close_everything();
        }
        self.process_tx();
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if !self.queues.init(ops) {
            return;
        }
        if let Err(e) = ops.add(Events::new(&self.epoll, EventSet::IN)) {
            log::error!(
                "{}: cannot watch the device's epoll fd, the device will not work: {e:?}",
                self.queues.label()
            );
            return;
        }
        self.state_changed();
        self.finish_turn();
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.queues.classify_event(events, ops) {
            QueueEvent::StateChanged => self.state_changed(),
            QueueEvent::Queue(RX_QUEUE) => self.rx_starved = false,
            QueueEvent::Queue(_) => self.process_tx(),
            QueueEvent::Other(fd) if fd == self.epoll.as_raw_fd() => self.process_backend(),
            QueueEvent::Other(_) => {
                self.queues.drop_event(events, ops);
                return;
            }
        }
        self.finish_turn();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;
    use crate::virtio::test_utils::{
        readable, scribble, writable, MemSnapshot, RandomChains, TestRng, MEM_SIZE,
    };
    use crate::virtio::vsock::fake::{
        pattern, Harness, Received, GUEST_CID, RX_BUF, SCRATCH, SIZE,
    };
    use crate::virtio::vsock::packet::OP_RW;
    use crate::virtio::vsock::FIRST_HOST_PORT;
    use crate::virtio::VirtioDevice;

    fn ops(received: &[Received]) -> Vec<u16> {
        received.iter().map(|r| r.header.op).collect()
    }

    /// A host program connects to guest port `guest_port` and the guest accepts.
    fn open_from_host(h: &mut Harness, guest_port: u32) -> (UnixStream, u32) {
        let mut stream = h.host_connect(guest_port);
        h.post_rx(1);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_REQUEST]);
        let request = got[0].header;
        assert_eq!(
            (
                request.src_cid,
                request.dst_cid,
                request.dst_port,
                request.type_
            ),
            (HOST_CID, GUEST_CID, guest_port, TYPE_STREAM)
        );
        assert_eq!((request.buf_alloc, request.fwd_cnt), (CONN_BUF_ALLOC, 0));
        h.send(h.header(OP_RESPONSE, guest_port, request.src_port), &[]);
        let want = format!("OK {}\n", request.src_port);
        let mut line = vec![0; want.len()];
        stream.read_exact(&mut line).unwrap();
        assert_eq!(String::from_utf8(line).unwrap(), want);
        (stream, request.src_port)
    }

    /// A listener at `<uds_path>_<port>`.
    fn host_listen(h: &Harness, port: u32) -> UnixListener {
        let mut name = h.uds_path().into_os_string();
        name.push(format!("_{port}"));
        UnixListener::bind(name).unwrap()
    }

    /// The guest connects from `guest_port` to host port `host_port`, where the host listens.
    fn open_from_guest(
        h: &mut Harness,
        listener: &UnixListener,
        guest_port: u32,
        host_port: u32,
    ) -> UnixStream {
        h.send(h.header(OP_REQUEST, guest_port, host_port), &[]);
        h.post_rx(1);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RESPONSE]);
        let response = got[0].header;
        assert_eq!(
            (
                response.src_cid,
                response.src_port,
                response.dst_cid,
                response.dst_port
            ),
            (HOST_CID, host_port, GUEST_CID, guest_port)
        );
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream
    }

    /// Reads from `stream` until end of file, without blocking the device.
    fn read_to_eof(h: &mut Harness, stream: &mut UnixStream) -> Vec<u8> {
        stream.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            match stream.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => h.pump(),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no end of file");
    }

    /// Asserts the device still serves a guest connection after whatever came before.
    fn assert_still_works(h: &mut Harness) {
        let listener = host_listen(h, 7777);
        let mut stream = open_from_guest(h, &listener, 9999, 7777);
        h.send_rw(9999, 7777, 0, b"still here");
        let mut got = [0u8; 10];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"still here");
        assert_eq!(h.irq.counts().2, 0, "no reset needed");
    }

    #[test]
    fn a_host_connection_is_offered_to_the_guest_and_carries_data() {
        let mut h = Harness::new();
        // The CONNECT line may arrive in pieces.
        let mut stream = UnixStream::connect(h.uds_path()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"CONN").unwrap();
        h.pump();
        stream.write_all(b"ECT 5").unwrap();
        h.pump();
        h.post_rx(4);
        assert!(
            h.recv().is_empty(),
            "no request before the line is complete"
        );
        stream.write_all(b"2\n").unwrap();
        h.pump();
        let got = h.recv();
        assert_eq!(ops(&got), [OP_REQUEST]);
        let request = got[0].header;
        assert_eq!(request.src_port, FIRST_HOST_PORT);
        assert_eq!(request.dst_port, 52);
        h.send(h.header(OP_RESPONSE, 52, FIRST_HOST_PORT), &[]);
        let mut line = [0u8; 14];
        stream.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");

        // Host → guest.
        stream.write_all(b"hello guest").unwrap();
        h.pump();
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RW]);
        assert_eq!(got[0].payload, b"hello guest");
        assert_eq!(
            (got[0].header.src_port, got[0].header.dst_port),
            (FIRST_HOST_PORT, 52)
        );
        // Guest → host.
        h.send_rw(52, FIRST_HOST_PORT, 11, b"hello host");
        let mut got = [0u8; 10];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello host");

        let stats = h.dev().stats();
        assert_eq!(stats.host_connections, 1);
        assert_eq!(stats.guest_to_host_bytes, 10);
        assert_eq!(stats.host_to_guest_bytes, 11);
        assert_eq!(h.dev().connections(), 1);

        // The next host connection gets the next port.
        let _second = h.host_connect(53);
        h.post_rx(1);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_REQUEST]);
        assert_eq!(got[0].header.src_port, FIRST_HOST_PORT + 1);
        assert!(h.irq.counts().0 > 0, "queue interrupts raised");
    }

    #[test]
    fn data_after_the_connect_line_is_kept_for_the_guest() {
        let mut h = Harness::new();
        let mut stream = UnixStream::connect(h.uds_path()).unwrap();
        stream.write_all(b"CONNECT 80\nearly bytes").unwrap();
        h.pump();
        h.post_rx(4);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_REQUEST]);
        h.send(h.header(OP_RESPONSE, 80, got[0].header.src_port), &[]);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RW]);
        assert_eq!(got[0].payload, b"early bytes");
    }

    #[test]
    fn a_guest_refusal_closes_the_host_stream() {
        let mut h = Harness::new();
        let mut stream = h.host_connect(52);
        h.post_rx(1);
        let request = h.recv()[0].header;
        h.send(h.header(OP_RST, 52, request.src_port), &[]);
        let mut buf = [0u8; 16];
        assert_eq!(stream.read(&mut buf).unwrap(), 0, "end of file, no OK line");
        assert_eq!(h.dev().connections(), 0);
        assert_eq!(h.dev().stats().host_connections, 0);
    }

    #[test]
    fn a_host_that_leaves_before_the_guest_answers_gets_the_guest_reset() {
        let mut h = Harness::new();
        let stream = h.host_connect(52);
        h.post_rx(2);
        let request = h.recv()[0].header;
        drop(stream);
        h.pump();
        h.send(h.header(OP_RESPONSE, 52, request.src_port), &[]);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RST]);
        assert_eq!(got[0].header.src_port, request.src_port);
        assert_eq!(h.dev().connections(), 0);
        assert_still_works(&mut h);
    }

    #[test]
    fn a_guest_that_never_answers_is_reset_after_the_grace_period() {
        let mut h = Harness::new();
        let mut stream = h.host_connect(52);
        h.post_rx(2);
        assert_eq!(ops(&h.recv()), [OP_REQUEST]);
        h.pump_for(250);
        assert_eq!(ops(&h.recv()), [OP_RST]);
        let mut buf = [0u8; 4];
        assert_eq!(stream.read(&mut buf).unwrap(), 0);
        assert_eq!(h.dev().connections(), 0);
    }

    #[test]
    fn bad_connect_lines_close_the_host_stream() {
        let mut h = Harness::new();
        for bad in [
            &b"CONNECT abc\n"[..],
            b"CONNECT 4294967296\n",
            &[b'x'; 40][..],
        ] {
            let mut stream = UnixStream::connect(h.uds_path()).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            stream.write_all(bad).unwrap();
            h.pump();
            let mut buf = [0u8; 4];
            // End of file, or a reset when the device left bytes unread.
            match stream.read(&mut buf) {
                Ok(n) => assert_eq!(n, 0),
                Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
            }
        }
        // A host that gives up half-way is forgotten too.
        let mut stream = UnixStream::connect(h.uds_path()).unwrap();
        stream.write_all(b"CONNE").unwrap();
        drop(stream);
        h.pump();
        assert_eq!(h.dev().stats().bad_connect_lines, 3);
        assert!(h.dev().pending.is_empty());
        h.post_rx(2);
        assert!(h.recv().is_empty(), "nothing reached the guest");
        assert_still_works(&mut h);
    }

    #[test]
    fn a_guest_connection_reaches_the_host_listener() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        h.send_rw(1234, 5000, 0, b"ping");
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        stream.write_all(b"pong!").unwrap();
        h.pump();
        h.post_rx(1);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RW]);
        assert_eq!(got[0].payload, b"pong!");
        assert_eq!(got[0].header.fwd_cnt, 4, "bytes the host took");
        assert_eq!(got[0].header.buf_alloc, CONN_BUF_ALLOC);

        // Nobody listens on 6000.
        h.send(h.header(OP_REQUEST, 1235, 6000), &[]);
        h.post_rx(1);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RST]);
        assert_eq!(
            (got[0].header.src_port, got[0].header.dst_port),
            (6000, 1235)
        );
        let stats = h.dev().stats();
        assert_eq!(
            (stats.guest_connections, stats.refused_guest_connections),
            (1, 1)
        );
    }

    #[test]
    fn host_data_waits_for_guest_credit() {
        let mut h = Harness::new();
        h.buf_alloc = 1024;
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        let total = 10_000;
        stream.write_all(&pattern(0, total)).unwrap();
        h.pump();
        let mut received = Vec::new();
        let mut credit_requests = 0;
        for _ in 0..100 {
            h.post_rx(8);
            let mut consumed = false;
            for packet in h.recv() {
                match packet.header.op {
                    OP_RW => {
                        received.extend_from_slice(&packet.payload);
                        assert!(received.len() <= total);
                    }
                    OP_CREDIT_REQUEST => {
                        credit_requests += 1;
                        // Never more in flight than the guest's buffer.
                        let dev = h.dev();
                        let conn = dev.conns.values().next().unwrap();
                        assert_eq!(conn.tx_cnt as usize, received.len());
                        assert!(conn.tx_cnt.wrapping_sub(conn.peer_fwd_cnt) <= 1024);
                        consumed = true;
                    }
                    op => panic!("unexpected op {op}"),
                }
            }
            if consumed {
                // The guest application read everything it got.
                let mut update = h.header(OP_CREDIT_UPDATE, 1234, 5000);
                update.fwd_cnt = received.len() as u32;
                h.send(update, &[]);
            }
            if received.len() == total {
                break;
            }
        }
        assert_eq!(received, pattern(0, total));
        assert_eq!(credit_requests, total / 1024);
        assert_eq!(h.dev().stats().host_to_guest_bytes, total as u64);
    }

    #[test]
    fn guest_data_beyond_the_device_buffer_flows_with_credit_updates() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        stream.set_nonblocking(true).unwrap();
        let total = 3 * CONN_BUF_ALLOC as usize;
        let chunk = 16 * 1024;
        let (mut sent, mut dev_fwd_cnt, mut updates) = (0usize, 0u32, 0);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            let credit = CONN_BUF_ALLOC as usize - (sent - dev_fwd_cnt as usize);
            if sent < total && credit >= chunk {
                h.send_rw(1234, 5000, 0, &pattern(sent, chunk));
                sent += chunk;
                continue;
            }
            // The host reads a little, slower than the guest writes.
            match stream.read(&mut buf[..32 * 1024]) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            h.pump();
            h.post_rx(4);
            for packet in h.recv() {
                assert_eq!(packet.header.op, OP_CREDIT_UPDATE);
                assert!(packet.header.fwd_cnt >= dev_fwd_cnt);
                dev_fwd_cnt = packet.header.fwd_cnt;
                updates += 1;
            }
            if got.len() == total {
                break;
            }
        }
        assert_eq!(got.len(), total);
        assert!(got == pattern(0, total), "bytes differ");
        assert!(updates >= 2, "{updates} credit updates");
        assert_eq!(h.dev().stats().guest_to_host_bytes, total as u64);
        assert_eq!(h.dev().stats().bad_packet_resets, 0);
    }

    #[test]
    fn guest_data_beyond_its_credit_resets_the_connection() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        // The host reads nothing. The guest uses all the credit it has (the host's socket
        // buffer takes part of it, which is credit too), then sends one byte more.
        let chunk = MAX_PKT_LEN as usize;
        let free = |h: &Harness| CONN_BUF_ALLOC - h.dev().conns.values().next().unwrap().buffered();
        let mut sent = 0;
        while free(&h) as usize >= chunk {
            h.send_rw(1234, 5000, 0, &pattern(sent, chunk));
            sent += chunk;
        }
        let rest = free(&h) as usize;
        h.send_rw(1234, 5000, 0, &pattern(sent, rest));
        sent += rest;
        h.post_rx(8);
        assert!(
            h.recv().iter().all(|r| r.header.op == OP_CREDIT_UPDATE),
            "{sent} bytes are within credit"
        );
        assert_eq!(free(&h), 0);
        h.send_rw(1234, 5000, 0, &[0; 1]);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RST]);
        assert_eq!(h.dev().stats().bad_packet_resets, 1);
        assert_eq!(h.dev().connections(), 0);
        // The host gets what reached its socket, then end of file.
        let data = read_to_eof(&mut h, &mut stream);
        assert!(data.len() < sent);
        assert!(data == pattern(0, data.len()));
        assert_still_works(&mut h);
    }

    #[test]
    fn a_fwd_cnt_beyond_what_was_sent_resets_the_connection() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        stream.write_all(&[1; 100]).unwrap();
        h.pump();
        h.post_rx(2);
        assert_eq!(h.recv()[0].payload.len(), 100);
        let mut update = h.header(OP_CREDIT_UPDATE, 1234, 5000);
        update.fwd_cnt = 100;
        h.send(update, &[]);
        assert!(h.recv().is_empty(), "100 is what was sent: fine");
        update.fwd_cnt = 101;
        h.send(update, &[]);
        assert_eq!(ops(&h.recv()), [OP_RST]);
        assert_eq!(read_to_eof(&mut h, &mut stream), b"");
        assert_eq!(h.dev().stats().bad_packet_resets, 1);
        assert_still_works(&mut h);
    }

    #[test]
    fn a_host_close_is_a_shutdown_then_a_reset() {
        let mut h = Harness::new();
        let (mut stream, port) = open_from_host(&mut h, 52);
        stream.write_all(b"bye").unwrap();
        drop(stream);
        h.pump();
        h.post_rx(4);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RW, OP_SHUTDOWN]);
        assert_eq!(got[0].payload, b"bye");
        assert_eq!(got[1].header.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
        // The guest answers with RST: the connection is gone, no RST back.
        h.send(h.header(OP_RST, 52, port), &[]);
        assert_eq!(h.dev().connections(), 0);
        h.pump_for(250);
        assert!(h.recv().is_empty());

        // Another one where the guest does not answer: the device resets it.
        let (stream, port) = open_from_host(&mut h, 53);
        drop(stream);
        h.pump();
        let got = h.recv();
        assert_eq!(ops(&got), [OP_SHUTDOWN]);
        assert_eq!(got[0].header.src_port, port);
        assert_eq!(h.dev().connections(), 1);
        h.pump_for(250);
        assert_eq!(ops(&h.recv()), [OP_RST]);
        assert_eq!(h.dev().connections(), 0);
    }

    #[test]
    fn a_host_half_close_lets_the_guest_answer() {
        let mut h = Harness::new();
        let (mut stream, port) = open_from_host(&mut h, 52);
        stream.write_all(b"question").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        h.pump();
        h.post_rx(4);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RW, OP_SHUTDOWN]);
        assert_eq!(got[1].header.flags, SHUTDOWN_SEND, "the host still reads");
        h.send_rw(52, port, 8, b"answer");
        let mut answer = [0u8; 6];
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"answer");
        // The guest closes: the host reads end of file and the guest gets its RST.
        let mut shutdown = h.header(OP_SHUTDOWN, 52, port);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        h.send(shutdown, &[]);
        assert_eq!(read_to_eof(&mut h, &mut stream), b"");
        assert_eq!(ops(&h.recv()), [OP_RST]);
        assert_eq!(h.dev().connections(), 0);
    }

    #[test]
    fn a_host_half_close_then_full_close_is_noticed() {
        let mut h = Harness::new();
        let (stream, port) = open_from_host(&mut h, 52);
        stream.shutdown(Shutdown::Write).unwrap();
        h.pump();
        h.post_rx(4);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_SHUTDOWN]);
        assert_eq!(got[0].header.flags, SHUTDOWN_SEND);
        drop(stream);
        h.pump();
        let got = h.recv();
        assert_eq!(ops(&got), [OP_SHUTDOWN]);
        assert_eq!(got[0].header.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
        h.send(h.header(OP_RST, 52, port), &[]);
        assert_eq!(h.dev().connections(), 0);
    }

    #[test]
    fn a_guest_close_flushes_then_resets() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        let chunk = MAX_PKT_LEN as usize;
        for i in 0..4 {
            h.send_rw(1234, 5000, 0, &pattern(i * chunk, chunk));
        }
        assert!(
            h.dev().conns.values().next().unwrap().has_output(),
            "the host socket is full and data waits in the device"
        );
        let mut shutdown = h.header(OP_SHUTDOWN, 1234, 5000);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        h.send(shutdown, &[]);
        h.post_rx(4);
        assert!(
            h.recv().iter().all(|r| r.header.op == OP_CREDIT_UPDATE),
            "no reset while data waits for the host"
        );
        assert_eq!(h.dev().connections(), 1);
        let data = read_to_eof(&mut h, &mut stream);
        assert!(data == pattern(0, 4 * chunk), "{} bytes", data.len());
        assert_eq!(ops(&h.recv()), [OP_RST]);
        assert_eq!(h.dev().connections(), 0);
    }

    #[test]
    fn a_guest_send_shutdown_gives_the_host_end_of_file() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        h.send_rw(1234, 5000, 0, b"last words");
        let mut shutdown = h.header(OP_SHUTDOWN, 1234, 5000);
        shutdown.flags = SHUTDOWN_SEND;
        h.send(shutdown, &[]);
        assert_eq!(read_to_eof(&mut h, &mut stream), b"last words");
        // The host can still answer.
        stream.set_nonblocking(false).unwrap();
        stream.write_all(b"reply").unwrap();
        h.pump();
        h.post_rx(2);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RW]);
        assert_eq!(got[0].payload, b"reply");
        // Data after SHUTDOWN_SEND is a violation.
        h.send_rw(1234, 5000, 10, b"more");
        assert_eq!(ops(&h.recv()), [OP_RST]);
        assert_eq!(h.dev().connections(), 0);
    }

    #[test]
    fn a_guest_reset_closes_the_host_stream() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        h.send(h.header(OP_RST, 1234, 5000), &[]);
        assert_eq!(read_to_eof(&mut h, &mut stream), b"");
        h.post_rx(1);
        assert!(h.recv().is_empty(), "no answer to an RST");
        assert_eq!(h.dev().connections(), 0);
    }

    #[test]
    fn malformed_transmit_chains_are_dropped() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        let header = |h: &Harness, len: u32| {
            let mut hdr = h.header(OP_RW, 1234, 5000);
            hdr.len = len;
            hdr.to_bytes()
        };
        let put = |h: &Harness, addr: u64, bytes: &[u8]| {
            h.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        };
        // Shorter than a header.
        put(&h, SCRATCH, &[0; 44]);
        h.send_chain(&[readable(SCRATCH, 43)]);
        // A writable descriptor.
        h.send_chain(&[readable(SCRATCH, 44), writable(SCRATCH + 0x100, 8)]);
        // Outside guest memory, and wrapping around.
        h.send_chain(&[readable(MEM_SIZE - 20, 44)]);
        h.send_chain(&[readable(u64::MAX - 10, 44)]);
        // A loop.
        h.tx.write_descriptor(100, SCRATCH, 44, crate::virtio::chain::DESC_F_NEXT, 101);
        h.tx.write_descriptor(101, SCRATCH, 44, crate::virtio::chain::DESC_F_NEXT, 100);
        h.tx.publish(100);
        h.notify_tx();
        assert_eq!(h.dev().stats().tx_dropped, 5);
        assert_eq!(
            h.dev().connections(),
            1,
            "no header was readable: nothing reset"
        );

        // A header whose length lies: bigger than the chain, and bigger than a packet. The
        // connection it names is reset (its stream would have a hole).
        put(&h, SCRATCH, &header(&h, 100));
        h.send_chain(&[readable(SCRATCH, 44 + 99)]);
        h.post_rx(2);
        assert_eq!(ops(&h.recv()), [OP_RST]);
        assert_eq!(read_to_eof(&mut h, &mut stream), b"");
        put(&h, SCRATCH, &header(&h, MAX_PKT_LEN + 1));
        h.send_chain(&[readable(SCRATCH, 44 + MAX_PKT_LEN + 1)]);
        assert_eq!(h.dev().stats().tx_dropped, 7);
        assert!(h.recv().is_empty());
        assert_eq!(h.irq.counts().2, 0);
        assert_still_works(&mut h);
    }

    #[test]
    fn bad_headers_are_dropped_or_refused() {
        let mut h = Harness::new();
        h.post_rx(8);
        // Not from the guest's CID: dropped without a word.
        let mut spoofed = h.header(OP_REQUEST, 1, 5000);
        spoofed.src_cid = 7;
        h.send(spoofed, &[]);
        assert!(h.recv().is_empty());
        assert_eq!(h.dev().stats().tx_dropped, 1);
        // To another CID: RST from that CID.
        let mut elsewhere = h.header(OP_REQUEST, 1, 5000);
        elsewhere.dst_cid = 9;
        h.send(elsewhere, &[]);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RST]);
        assert_eq!((got[0].header.src_cid, got[0].header.dst_port), (9, 1));
        // Not a stream, an unknown op, RW for no connection: RST.
        let mut seqpacket = h.header(OP_REQUEST, 2, 5000);
        seqpacket.type_ = 2;
        h.send(seqpacket, &[]);
        h.send(h.header(99, 3, 5000), &[]);
        h.send_rw(4, 5000, 0, b"nobody");
        h.send(h.header(OP_CREDIT_REQUEST, 5, 5000), &[]);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RST; 4]);
        assert_eq!(
            got.iter().map(|r| r.header.dst_port).collect::<Vec<_>>(),
            [2, 3, 4, 5]
        );
        // An RST for no connection gets no answer.
        h.send(h.header(OP_RST, 6, 5000), &[]);
        assert!(h.recv().is_empty());
        let stats = h.dev().stats();
        assert_eq!((stats.tx_dropped, stats.bad_packet_resets), (1, 5));
        assert_still_works(&mut h);
    }

    #[test]
    fn protocol_violations_on_a_connection_reset_it() {
        let mut h = Harness::new();
        // RW before the guest accepted a host connection.
        let mut stream = h.host_connect(52);
        h.post_rx(8);
        let request = h.recv()[0].header;
        h.send_rw(52, request.src_port, 0, b"early");
        assert_eq!(ops(&h.recv()), [OP_RST]);
        assert_eq!(read_to_eof(&mut h, &mut stream), b"");
        // A second REQUEST and an unexpected RESPONSE on an open connection, an unknown op.
        let listener = host_listen(&h, 5000);
        for op in [OP_REQUEST, OP_RESPONSE, 42] {
            let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
            h.post_rx(1);
            h.send(h.header(op, 1234, 5000), &[]);
            assert_eq!(ops(&h.recv()), [OP_RST], "op {op}");
            assert_eq!(read_to_eof(&mut h, &mut stream), b"");
        }
        assert_eq!(h.dev().stats().bad_packet_resets, 4);
        assert_still_works(&mut h);
    }

    #[test]
    fn bad_receive_chains_complete_empty() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        h.send(h.header(OP_REQUEST, 1234, 5000), &[]);
        let readable_head = h.post_rx_chain(&[readable(SCRATCH, 4096)]);
        let short_head = h.post_rx_chain(&[writable(SCRATCH, 20), writable(SCRATCH + 64, 20)]);
        let outside_head = h.post_rx_chain(&[writable(MEM_SIZE - 10, 4096)]);
        h.pump();
        let used = h.rx.take_used();
        assert_eq!(
            used,
            [(readable_head, 0), (short_head, 0), (outside_head, 0)]
        );
        assert_eq!(h.dev().stats().rx_bad_chains, 3);
        // The RESPONSE waited; a good chain (header split over two buffers) takes it.
        let head = h.post_rx_chain(&[writable(SCRATCH, 10), writable(SCRATCH + 0x100, 34)]);
        h.pump();
        assert_eq!(h.rx.take_used(), [(head, 44)]);
        let mut raw = [0u8; 44];
        h.mem
            .read_slice(&mut raw[..10], GuestAddress(SCRATCH))
            .unwrap();
        h.mem
            .read_slice(&mut raw[10..], GuestAddress(SCRATCH + 0x100))
            .unwrap();
        assert_eq!(Header::from_bytes(&raw).op, OP_RESPONSE);
        let (_stream, _) = listener.accept().unwrap();
        assert_eq!(h.irq.counts().2, 0);
    }

    #[test]
    fn without_receive_buffers_streams_are_not_read() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        // Data waits in the host socket; `pump` fails if the device spins meanwhile.
        stream.write_all(&pattern(0, 3000)).unwrap();
        h.pump();
        h.pump_for(30);
        assert!(h.dev().rx_starved);
        assert_eq!(h.dev().stats().host_to_guest_bytes, 0);
        // The guest posts buffers: the data arrives.
        h.post_rx(1);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_RW]);
        assert_eq!(got[0].payload, pattern(0, 3000));
        // A host that closes while no buffers are posted does not make it spin either.
        drop(stream);
        h.pump_for(30);
        h.post_rx(2);
        let got = h.recv();
        assert_eq!(ops(&got), [OP_SHUTDOWN]);
        assert_eq!(got[0].header.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
        assert!(RX_BUF as usize >= 3000 + HDR_LEN);
    }

    #[test]
    fn a_long_control_backlog_pauses_the_transmit_queue() {
        let mut h = Harness::new();
        // Packets for no connection, each answered with an RST, and no receive buffer.
        let count = BACKLOG_PAUSE + 20;
        for port in 0..count as u32 {
            h.queue_packet(h.header(OP_RW, port, 5000), &[]);
        }
        h.notify_tx();
        assert_eq!(
            usize::from(h.tx.used_idx()),
            BACKLOG_PAUSE,
            "the rest waits"
        );
        assert_eq!(h.dev().control.len(), BACKLOG_PAUSE);
        // Receive buffers drain the backlog and the transmit queue resumes.
        let mut answered = 0;
        while answered < count {
            h.post_rx(32);
            let got = h.recv();
            assert!(got.iter().all(|r| r.header.op == OP_RST));
            answered += got.len();
        }
        assert_eq!(answered, count);
        assert_eq!(usize::from(h.tx.used_idx()), count);
        assert!(usize::from(SIZE) > count);
    }

    #[test]
    fn queue_errors_need_a_reset_and_close_every_stream() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut stream = open_from_guest(&mut h, &listener, 1234, 5000);
        h.tx.set_avail_idx(h.tx.used_idx().wrapping_add(SIZE + 1));
        h.notify_tx();
        assert_eq!(h.irq.counts().2, 1, "DEVICE_NEEDS_RESET reported");
        assert_eq!(read_to_eof(&mut h, &mut stream), b"");
        assert_eq!(h.dev().connections(), 0);
        // A host connection is not accepted until the driver resets the device.
        let mut late = UnixStream::connect(h.uds_path()).unwrap();
        late.write_all(b"CONNECT 1\n").unwrap();
        h.pump();
        assert!(h.dev().pending.is_empty() && h.dev().connections() == 0);
    }

    #[test]
    fn a_device_reset_closes_every_stream() {
        let mut h = Harness::new();
        let listener = host_listen(&h, 5000);
        let mut from_guest = open_from_guest(&mut h, &listener, 1234, 5000);
        let (mut from_host, _) = open_from_host(&mut h, 52);
        assert!(h.dev().reset());
        h.pump();
        assert_eq!(read_to_eof(&mut h, &mut from_guest), b"");
        assert_eq!(read_to_eof(&mut h, &mut from_host), b"");
        assert!(!h.dev().is_active());
    }

    /// A random packet header: mostly from the guest to the host, on the connection `conn`
    /// (guest port, host port) half the time, with random operations (unknown ones too),
    /// types, flags and credit; its `len` is set by the caller.
    fn random_header(rng: &mut TestRng, conn: Option<(u32, u32)>) -> Header {
        let r = rng.next_u64();
        let (src_port, dst_port) = match conn {
            Some(key) if rng.one_in(2) => key,
            _ => (
                rng.pick(&[1234, 1, r as u32]),
                rng.pick(&[5000, 6000, (r >> 32) as u32]),
            ),
        };
        let src_cid = if rng.one_in(10) {
            rng.pick(&[0, HOST_CID, 7, u64::MAX, r])
        } else {
            GUEST_CID
        };
        let dst_cid = if rng.one_in(10) {
            rng.pick(&[0, 1, GUEST_CID, u64::from(u32::MAX), r])
        } else {
            HOST_CID
        };
        let type_ = if rng.one_in(10) {
            rng.pick(&[0, 2, r as u16])
        } else {
            TYPE_STREAM
        };
        let op = if rng.one_in(8) {
            rng.pick(&[0, 8, 42, (r >> 16) as u16])
        } else {
            rng.pick(&[
                OP_REQUEST,
                OP_RESPONSE,
                OP_RST,
                OP_SHUTDOWN,
                OP_RW,
                OP_RW,
                OP_RW,
                OP_CREDIT_UPDATE,
                OP_CREDIT_REQUEST,
            ])
        };
        Header {
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            len: 0,
            type_,
            op,
            flags: rng.pick(&[0, 0, SHUTDOWN_RCV, SHUTDOWN_SEND, 3, r as u32]),
            buf_alloc: rng.pick(&[1 << 20, 1 << 20, 1 << 20, 0, u32::MAX, (r >> 8) as u32]),
            fwd_cnt: rng.pick(&[0, 0, 0, u32::MAX, (r >> 24) as u32]),
        }
    }

    /// Whether `got` (what the host read from a stream) is the concatenation of some of
    /// `sent` (what the guest sent on it, in order: a payload, or `None` with its length for
    /// a packet whose buffers the test spoiled, which may carry any bytes), from the
    /// `from`th on; the last one may be cut short by a reset.
    fn sent_in_order(got: &[u8], sent: &[(Option<Vec<u8>>, usize)], from: usize) -> bool {
        if got.is_empty() {
            return true;
        }
        sent[from..].iter().enumerate().any(|(k, (payload, len))| {
            let len = *len;
            let fits = match payload {
                Some(payload) => got.starts_with(payload) || payload.starts_with(got),
                None => true,
            };
            len > 0 && fits && (got.len() <= len || sent_in_order(&got[len..], sent, from + k + 1))
        })
    }

    /// A hostile driver, batch after batch, on fresh rings each time: random transmit
    /// chains, packets with random headers (operations, types, CIDs, ports, credit, lying
    /// lengths) mixed with well-formed ones, some on a live connection, random receive
    /// chains, and host data. The device never panics or spins, never writes outside a
    /// receive chain's writable buffers, never reports more bytes than they hold (nor a
    /// packet shorter than a header), forwards to the host only bytes the guest sent, in
    /// order, and after each batch either needs a reset or still opens a connection and
    /// carries data.
    #[test]
    fn random_hostile_packets_are_handled_safely() {
        const SEED: u64 = 0x5eed_0002;
        const BATCHES: u64 = 1500;
        // Random buffers start below 0x4_0000 and the device writes at most a packet.
        const TX_PACKETS: (u64, u64) = (0x8_0000, 0xf_0000);
        let hdr = HDR_LEN as u32;
        let limits = [hdr, hdr + MAX_PKT_LEN, MAX_PKT_LEN, RX_BUF];
        let mut rc = RandomChains::new(SEED, (SCRATCH, 0x4_0000), &limits);
        let mut h = Harness::new();
        h.quick = true;
        scribble(&h.mem, &mut rc.rng, &[Harness::rings()]);
        let listener = host_listen(&h, 5000);
        listener.set_nonblocking(true).unwrap();
        let check_listener = host_listen(&h, 7777);
        check_listener.set_nonblocking(true).unwrap();
        let (mut resets, mut forwarded) = (0, 0);
        for batch in 0..BATCHES {
            let ctx = format!("seed {SEED:#x}, batch {batch}");
            h.reactivate();
            // Host streams the device connected to in the last batch.
            while listener.accept().is_ok() {}
            let mut conn = rc
                .rng
                .one_in(2)
                .then(|| (open_from_guest(&mut h, &listener, 1234, 5000), (1234, 5000)));
            if let Some((stream, _)) = &mut conn {
                stream.set_nonblocking(true).unwrap();
                if rc.rng.one_in(2) {
                    let len = 1 + rc.rng.below(9000) as usize;
                    stream.write_all(&rc.rng.bytes(len)).unwrap();
                }
            }
            let key = conn.as_ref().map(|(_, key)| *key);
            rc.begin(&mut h.rx);
            rc.begin(&mut h.tx);
            let (rx_from, tx_from) = (h.rx.used_idx(), h.tx.used_idx());

            // Transmit chains; packets in memory of their own, which no receive chain
            // reaches (the device may fill receive chains before it reads the packets).
            let mut sent_rw = Vec::new();
            let mut bump = TX_PACKETS.0;
            let count = 1 + rc.rng.below(8);
            let mem = h.mem.clone();
            rc.batch(&mut h.tx, count, true, |rc, tx| {
                if rc.rng.one_in(4) {
                    return rc.chain(tx, Some(false));
                }
                let mut header = random_header(&mut rc.rng, key);
                let len = if header.op != OP_RW && !rc.rng.one_in(8) {
                    0
                } else if rc.rng.one_in(8) {
                    rc.rng.pick(&[4096, MAX_PKT_LEN, MAX_PKT_LEN + 1, 70_000])
                } else {
                    rc.rng.below(300) as u32
                };
                let payload = rc.rng.bytes(len as usize);
                let lie = rc.rng.next_u32();
                header.len = if rc.rng.one_in(4) {
                    rc.rng.pick(&[
                        len + 1,
                        len.saturating_sub(1),
                        lie,
                        MAX_PKT_LEN + 1,
                        u32::MAX,
                    ])
                } else {
                    len
                };
                let mut bytes = header.to_bytes().to_vec();
                bytes.extend_from_slice(&payload);
                if bump + bytes.len() as u64 > TX_PACKETS.1 {
                    return None;
                }
                mem.write_slice(&bytes, GuestAddress(bump)).unwrap();
                let mut bufs = rc.split(bump, bytes.len() as u32, false);
                bump += bytes.len() as u64;
                let spoiled = rc.spoil(&mut bufs);
                // The payload is what the header says, if the chain holds it (a spoiled
                // buffer may hold other bytes).
                if Some((header.src_port, header.dst_port)) == key
                    && header.op == OP_RW
                    && header.len <= len
                {
                    let payload = &payload[..header.len as usize];
                    sent_rw.push(((!spoiled).then(|| payload.to_vec()), payload.len()));
                }
                rc.buffers(tx, &bufs)
            });
            // Receive chains; not into stale slots: they would name the harness's own chains.
            let count = rc.rng.below(5);
            let lens = [20, 43, 44, 45, 100, RX_BUF];
            rc.batch(&mut h.rx, count, false, |rc, rx| {
                rc.receive_chain(rx, &lens)
            });

            let snapshot = MemSnapshot::take(&h.mem);
            h.notify_tx();
            h.notify_rx();
            let (tx_used, _) = h.tx.check_used_since(tx_from, &ctx);
            assert!(
                tx_used.iter().all(|&(_, len)| len == 0),
                "{ctx}: {tx_used:?}"
            );
            let (rx_used, allowed) = h.rx.check_used_since(rx_from, &ctx);
            for &(id, len) in &rx_used {
                assert!(
                    len == 0 || (hdr..=hdr + MAX_PKT_LEN).contains(&len),
                    "{ctx}: receive chain {id} completed with {len} bytes"
                );
            }
            snapshot.assert_no_stray_write(&h.mem, &allowed, &[Harness::rings()], &ctx);
            h.rx.used_seen = h.rx.used_idx();
            h.tx.used_seen = h.tx.used_idx();
            // What reached the host on the live connection.
            if let Some((stream, _)) = &mut conn {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                let mut idle = 0;
                while idle < 2 {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            idle = 0;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            idle += 1;
                            h.pump();
                        }
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                        Err(e) => panic!("{ctx}: {e}"),
                    }
                }
                assert!(
                    sent_in_order(&got, &sent_rw, 0),
                    "{ctx}: the host read {} bytes the guest did not send in that order",
                    got.len()
                );
                forwarded += got.len();
            }

            // A well-formed connection still opens and carries data, after whatever the
            // batch left in the receive queue (or after a reset).
            let guest_port = 9000 + batch as u32;
            let mut fresh = false;
            let mut responded = false;
            while !responded {
                if h.irq.counts().2 > 0 {
                    assert!(!fresh, "{ctx}: a reset was needed on fresh queues");
                    fresh = true;
                    resets += 1;
                    h.reactivate();
                }
                // Connections of an attempt a reset ended.
                while check_listener.accept().is_ok() {}
                h.send(h.header(OP_REQUEST, guest_port, 7777), &[]);
                for _ in 0..32 {
                    h.post_rx(4);
                    let mut foreign = Vec::new();
                    let got = h.recv_or(|id, len| foreign.push((id, len)));
                    for (id, len) in foreign {
                        let capacity = h.rx.writable_of(u32::from(id)).1;
                        assert!(u64::from(len) <= capacity, "{ctx}: chain {id}: {len} bytes");
                    }
                    // The RESPONSE went to a well-formed chain, or to one the batch left
                    // (then the device holds the connection and nothing waits to be sent).
                    let key = Key {
                        host_port: 7777,
                        guest_port,
                    };
                    let left = {
                        let dev = h.dev();
                        dev.by_key.contains_key(&key) && dev.control.is_empty()
                    };
                    responded |= left
                        || got.iter().any(|r| {
                            r.header.op == OP_RESPONSE
                                && (r.header.src_port, r.header.dst_port) == (7777, guest_port)
                        });
                    if responded || h.irq.counts().2 > 0 {
                        break;
                    }
                }
                assert!(responded || h.irq.counts().2 > 0, "{ctx}: no RESPONSE");
            }
            let (mut stream, _) = check_listener.accept().unwrap();
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            h.send_rw(guest_port, 7777, 0, b"still here");
            let mut got = [0u8; 10];
            stream.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"still here", "{ctx}");
            assert_eq!(h.irq.counts().2, 0, "{ctx}: no reset needed");
        }
        // The reset path and the data path were exercised.
        assert!(
            resets > 0 && forwarded > 0,
            "resets {resets}, {forwarded} bytes"
        );
    }
}
