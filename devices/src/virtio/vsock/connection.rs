//! One stream between a guest socket and a host Unix stream: its state, its flow-control
//! counters, and the guest data waiting for the host to read it.
//!
//! The counters follow virtio 1.2 section 5.10.6.3. All are `u32` and wrap, as on the wire.
//! Guest → host: `rx_cnt` bytes of payload accepted from the guest, `fwd_cnt` of them
//! written to the host stream; the difference sits in `out` and never exceeds
//! [`CONN_BUF_ALLOC`], the buffer space the device advertises. Host → guest: `tx_cnt` bytes
//! sent, and the guest's own `buf_alloc`/`fwd_cnt` from its last packet; the device sends only
//! while `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)` is positive.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::unix::send;
use super::{CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD};

/// A connection's address: the host-side port and the guest-side port (the guest's CID is
/// fixed per device, the host's is 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub(super) host_port: u32,
    pub(super) guest_port: u32,
}

/// How far the handshake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    /// Host-initiated: the device sent (or queued) `OP_REQUEST` and waits for the guest.
    Connecting,
    /// Both sides agreed; data flows.
    Established,
}

/// A rule of the protocol the guest broke; the connection is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Violation {
    /// The guest sent more than the buffer space the device advertised.
    #[error("the guest sent {len} bytes with only {free} bytes of credit")]
    BeyondCredit {
        /// Payload length.
        len: u32,
        /// Credit the guest had.
        free: u32,
    },
    /// The guest claims to have consumed bytes the device never sent.
    #[error("the guest's fwd_cnt {fwd_cnt} is ahead of the {tx_cnt} bytes sent")]
    FwdCntAhead {
        /// The guest's claim.
        fwd_cnt: u32,
        /// What the device sent.
        tx_cnt: u32,
    },
}

/// One connection.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) key: Key,
    pub(super) stream: UnixStream,
    pub(super) state: ConnState,
    /// Bytes waiting to be written to the host stream. The first `preamble` are the device's
    /// own (`OK <port>\n`), the rest guest payload.
    out: VecDeque<u8>,
    preamble: usize,
    /// Guest payload accepted (wrapping).
    rx_cnt: u32,
    /// Guest payload written to the host stream (wrapping).
    pub(super) fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub(super) last_fwd_sent: u32,
    /// Payload sent to the guest (wrapping).
    pub(super) tx_cnt: u32,
    pub(super) peer_buf_alloc: u32,
    pub(super) peer_fwd_cnt: u32,
    /// A CREDIT_REQUEST went out and no credit arrived since.
    pub(super) credit_requested: bool,
    /// A CREDIT_UPDATE waits in the control backlog.
    pub(super) credit_update_queued: bool,
    /// The host stream reached end of file (the host will send nothing more).
    pub(super) host_eof: bool,
    /// The host closed its end entirely (it will not read either).
    pub(super) host_gone: bool,
    /// Epoll reported a hangup: at end of file, the host has closed both directions.
    pub(super) hup_seen: bool,
    /// The guest will receive nothing more (`SHUTDOWN_RCV`).
    pub(super) guest_shut_rcv: bool,
    /// The guest will send nothing more (`SHUTDOWN_SEND`).
    pub(super) guest_shut_send: bool,
    /// The device shut down the write side of the host stream.
    pub(super) write_shut: bool,
    /// When the device gives up waiting (for a RESPONSE, an RST, or a flush) and resets.
    pub(super) deadline: Option<Instant>,
    /// The events the inner epoll watches on the stream, if registered.
    pub(super) registered: Option<EventSet>,
    /// Waiting in the device's queue of streams to read.
    pub(super) data_queued: bool,
}

impl Connection {
    pub(super) fn new(key: Key, stream: UnixStream, state: ConnState) -> Self {
        Self {
            key,
            stream,
            state,
            out: VecDeque::new(),
            preamble: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            credit_requested: false,
            credit_update_queued: false,
            host_eof: false,
            host_gone: false,
            hup_seen: false,
            guest_shut_rcv: false,
            guest_shut_send: false,
            write_shut: false,
            deadline: None,
            registered: None,
            data_queued: false,
        }
    }

    /// How many payload bytes the guest can take now.
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the credit fields of a guest packet. `fwd_cnt` may only move forward, and not
    /// past what the device sent.
    pub(super) fn update_peer_credit(
        &mut self,
        buf_alloc: u32,
        fwd_cnt: u32,
    ) -> Result<(), Violation> {
        let advance = fwd_cnt.wrapping_sub(self.peer_fwd_cnt);
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        if advance > in_flight {
            return Err(Violation::FwdCntAhead {
                fwd_cnt,
                tx_cnt: self.tx_cnt,
            });
        }
        let before = self.peer_credit();
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
        if self.peer_credit() > before {
            self.credit_requested = false;
        }
        Ok(())
    }

    /// Guest payload the host has not read yet.
    pub(super) fn buffered(&self) -> u32 {
        self.rx_cnt.wrapping_sub(self.fwd_cnt)
    }

    /// Forwards guest payload to the host stream: straight away if nothing waits, the rest
    /// into `out`. Fails on a credit violation (nothing is forwarded) or a stream error.
    pub(super) fn forward(&mut self, data: &[u8]) -> Result<Result<(), io::Error>, Violation> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let free = CONN_BUF_ALLOC - self.buffered().min(CONN_BUF_ALLOC);
        if len > free {
            return Err(Violation::BeyondCredit { len, free });
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        let mut rest = data;
        if self.out.is_empty() {
            match send_all(&self.stream, rest) {
                Ok(done) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(done as u32);
                    rest = &rest[done..];
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        self.out.extend(rest);
        Ok(Ok(()))
    }

    /// Queues the device's own bytes (the `OK` line) for the host, in front of any payload.
    pub(super) fn push_preamble(&mut self, bytes: &[u8]) {
        debug_assert!(self.out.is_empty());
        self.out.extend(bytes);
        self.preamble += bytes.len();
    }

    /// Writes what waits in `out` until the stream is full or `out` is empty.
    pub(super) fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let (front, _) = self.out.as_slices();
            let front_len = front.len();
            let done = send_all(&self.stream, front)?;
            if done == 0 {
                break;
            }
            self.out.drain(..done);
            let own = done.min(self.preamble);
            self.preamble -= own;
            self.fwd_cnt = self.fwd_cnt.wrapping_add((done - own) as u32);
            if done < front_len {
                break;
            }
        }
        Ok(())
    }

    /// Whether bytes wait for the host to read them.
    pub(super) fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Drops what waits for the host (it will never read it).
    pub(super) fn discard_output(&mut self) {
        self.out.clear();
        self.preamble = 0;
    }

    /// Whether the guest, from what the device last told it, may be about to run out of
    /// credit although the host has read more since.
    pub(super) fn needs_credit_update(&self) -> bool {
        let believed_used = self.rx_cnt.wrapping_sub(self.last_fwd_sent);
        let believed_free = CONN_BUF_ALLOC.saturating_sub(believed_used);
        believed_free < CREDIT_UPDATE_THRESHOLD && self.fwd_cnt != self.last_fwd_sent
    }

    /// Whether host data may still go to the guest.
    pub(super) fn can_read(&self) -> bool {
        self.state == ConnState::Established && !self.host_eof && !self.guest_shut_rcv
    }

    /// The events the inner epoll should watch on the stream, or `None` to leave it out.
    pub(super) fn interest(&self) -> Option<EventSet> {
        let mut set = EventSet::empty();
        if self.can_read() && !self.data_queued && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if self.has_output() && !self.host_gone {
            set |= EventSet::OUT;
        }
        if !set.is_empty() {
            return Some(set);
        }
        // After a half close by the host, stay registered with no events: epoll still reports
        // EPOLLHUP when the host closes its end completely.
        let watch_hangup = self.state == ConnState::Established
            && self.host_eof
            && !self.host_gone
            && !(self.guest_shut_send && self.guest_shut_rcv);
        watch_hangup.then_some(set)
    }
}

/// Writes as much of `buf` as the stream takes now; 0 when it is full.
fn send_all(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match send(stream, &buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let key = Key {
            host_port: 1,
            guest_port: 2,
        };
        (Connection::new(key, ours, ConnState::Established), theirs)
    }

    #[test]
    fn peer_credit_follows_the_guest_counters_and_wraps() {
        let (mut conn, _host) = pair();
        assert_eq!(conn.peer_credit(), 0);
        conn.update_peer_credit(1024, 0).unwrap();
        assert_eq!(conn.peer_credit(), 1024);
        conn.tx_cnt = 1000;
        assert_eq!(conn.peer_credit(), 24);
        conn.credit_requested = true;
        conn.update_peer_credit(1024, 600).unwrap();
        assert_eq!(conn.peer_credit(), 624);
        assert!(!conn.credit_requested, "more credit ends the request");
        // A smaller buffer than what is in flight means no credit, not an underflow.
        conn.update_peer_credit(100, 600).unwrap();
        assert_eq!(conn.peer_credit(), 0);
        // Counters near the wrap.
        conn.tx_cnt = 10;
        conn.peer_fwd_cnt = u32::MAX - 5;
        conn.update_peer_credit(64, 2).unwrap();
        assert_eq!(conn.peer_credit(), 56);
    }

    #[test]
    fn fwd_cnt_may_not_pass_what_was_sent_or_go_back() {
        let (mut conn, _host) = pair();
        conn.tx_cnt = 500;
        conn.update_peer_credit(1024, 200).unwrap();
        assert_eq!(
            conn.update_peer_credit(1024, 501),
            Err(Violation::FwdCntAhead {
                fwd_cnt: 501,
                tx_cnt: 500
            })
        );
        // Going back is "advancing" by almost 2^32: also refused.
        assert!(conn.update_peer_credit(1024, 199).is_err());
        assert_eq!(conn.peer_fwd_cnt, 200, "a refused update changes nothing");
        conn.update_peer_credit(1024, 500).unwrap();
        assert_eq!(conn.peer_credit(), 1024);
    }

    #[test]
    fn payload_beyond_the_advertised_buffer_is_refused() {
        let (mut conn, mut host) = pair();
        // The host reads nothing: everything past the socket buffer waits in `out`.
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0u32;
        while sent + chunk.len() as u32 <= CONN_BUF_ALLOC {
            conn.forward(&chunk).unwrap().unwrap();
            sent += chunk.len() as u32;
        }
        assert_eq!(sent, CONN_BUF_ALLOC);
        let buffered = conn.buffered();
        assert!(buffered > 0 && conn.has_output());
        let free = CONN_BUF_ALLOC - buffered;
        assert_eq!(
            conn.forward(&vec![0; free as usize + 1]).unwrap_err(),
            Violation::BeyondCredit {
                len: free + 1,
                free
            }
        );
        // The host reads; a flush moves fwd_cnt on and credit comes back.
        let mut got = vec![0u8; sent as usize];
        host.read_exact(&mut got[..(sent - buffered) as usize])
            .unwrap();
        conn.flush().unwrap();
        host.read_exact(&mut got[(sent - buffered) as usize..])
            .unwrap();
        conn.flush().unwrap();
        assert!(!conn.has_output());
        assert_eq!(conn.fwd_cnt, sent);
        assert_eq!(conn.buffered(), 0);
        assert!(got.iter().all(|&b| b == 7));
    }

    #[test]
    fn the_preamble_does_not_count_as_forwarded() {
        let (mut conn, mut host) = pair();
        conn.push_preamble(b"OK 1073741824\n");
        conn.flush().unwrap();
        assert_eq!(conn.fwd_cnt, 0);
        conn.forward(b"abc").unwrap().unwrap();
        assert_eq!(conn.fwd_cnt, 3);
        let mut got = [0u8; 17];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"OK 1073741824\nabc");
    }

    #[test]
    fn credit_updates_are_due_when_the_guest_thinks_it_is_nearly_full() {
        let (mut conn, _host) = pair();
        conn.rx_cnt = CONN_BUF_ALLOC - CREDIT_UPDATE_THRESHOLD;
        conn.fwd_cnt = conn.rx_cnt;
        assert!(!conn.needs_credit_update(), "exactly at the threshold");
        conn.rx_cnt += 1;
        conn.fwd_cnt += 1;
        assert!(conn.needs_credit_update());
        conn.last_fwd_sent = conn.fwd_cnt;
        assert!(!conn.needs_credit_update(), "the guest knows already");
    }

    #[test]
    fn interest_follows_the_state() {
        let (mut conn, _host) = pair();
        assert_eq!(conn.interest(), None, "no credit, nothing to write");
        conn.update_peer_credit(10, 0).unwrap();
        assert_eq!(conn.interest(), Some(EventSet::IN));
        conn.data_queued = true;
        assert_eq!(conn.interest(), None);
        conn.data_queued = false;
        conn.host_eof = true;
        assert_eq!(
            conn.interest(),
            Some(EventSet::empty()),
            "watching for hangup"
        );
        conn.host_gone = true;
        assert_eq!(conn.interest(), None);
        conn.state = ConnState::Connecting;
        conn.host_eof = false;
        conn.host_gone = false;
        assert_eq!(conn.interest(), None, "no reading before the handshake");
    }
}
