//! The event-loop side of virtio-net: moving frames between the queues and the backend.
//!
//! [`Net`] is an `event-manager` `MutEventSubscriber`. Through its `DeviceQueues` it always
//! watches its state-change eventfd and, while active, both queue eventfds; itself, it
//! watches the backend's fd only while the receive path has somewhere to put a frame. A notification of the transmit queue sends every
//! available chain; one of the receive queue (the driver posted buffers) resumes receiving.

use std::io;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use thiserror::Error;
use virtio_bindings::virtio_net as vn;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::device::Net;
use super::tap::NetBackend;
use super::{MAX_TX_CHAIN, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::report::describe;
use crate::virtio::chain::{
    log_bad, next_available_head, next_chain, scatter, writable_buffers, Chain, QueueFault,
};
use crate::virtio::device_queues::QueueEvent;
use petrel_memory::GuestMemoryMmap;

/// An Ethernet header: the shortest frame worth sending.
const ETH_HDR_LEN: usize = 14;
/// Frames received per event-loop turn; the backend's fd stays readable for the rest.
const RX_BUDGET: usize = 64;
/// `VIRTIO_NET_HDR_GSO_ECN`, a flag on `gso_type` (needs `HOST_ECN`, not offered).
const GSO_ECN: u8 = vn::VIRTIO_NET_HDR_GSO_ECN as u8;

/// Why a chain or a queue could not be served.
#[derive(Debug, Error)]
enum NetFault {
    /// A fault every device can meet: in a queue itself (it needs a reset) or in a chain
    /// (a buffer going the wrong way: writable on transmit, readable on receive).
    #[error(transparent)]
    Queue(#[from] QueueFault),
    /// A transmit chain is longer than a header and the largest frame.
    #[error("transmit chain of {len} bytes is longer than {MAX_TX_CHAIN}")]
    TooLong {
        /// Its length.
        len: u64,
    },
    /// A transmit chain is shorter than a header and an Ethernet header.
    #[error("transmit chain of {len} bytes is too short for a frame")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// A receive chain cannot hold any frame: it has no writable byte, or, without
    /// `MRG_RXBUF`, fewer than a header and an Ethernet header.
    #[error("receive chain {head} has {len} writable bytes, too few for any frame")]
    TooSmall {
        /// Its head.
        head: u16,
        /// Its writable bytes.
        len: u64,
    },
    /// The guest's vnet header is malformed.
    #[error("malformed vnet header: {0}")]
    Header(&'static str),
    /// The backend refused the frame.
    #[error("the backend refused the frame")]
    Backend(#[source] io::Error),
}

/// Whether the driver has made a chain available, without taking it.
fn has_available(queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool, NetFault> {
    let start = queue.next_avail();
    let found = next_available_head(queue, mem)
        .map_err(QueueFault::AvailRing)?
        .is_some();
    queue.set_next_avail(start);
    Ok(found)
}

/// Checks the header the guest put in front of a frame of `frame_len` bytes, against the
/// features it accepted (virtio 1.2 section 5.1.6.2).
fn check_tx_header(hdr: &[u8], frame_len: usize, features: u64) -> Result<(), NetFault> {
    let has = |f: u32| features & (1 << f) != 0;
    let flags = hdr[0];
    let gso_type = hdr[1];
    let hdr_len = usize::from(u16::from_le_bytes([hdr[2], hdr[3]]));
    let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
    let csum_start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
    let csum_offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    let needs_csum = flags & vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0;
    if flags & !(vn::VIRTIO_NET_HDR_F_NEEDS_CSUM as u8) != 0 {
        return Err(NetFault::Header("flags other than NEEDS_CSUM"));
    }
    if needs_csum {
        if !has(vn::VIRTIO_NET_F_CSUM) {
            return Err(NetFault::Header("checksum offload was not negotiated"));
        }
        if csum_start + csum_offset + 2 > frame_len {
            return Err(NetFault::Header("checksum offsets past the frame"));
        }
    }
    if gso_type & GSO_ECN != 0 {
        return Err(NetFault::Header("ECN was not negotiated"));
    }
    let feature = match u32::from(gso_type) {
        vn::VIRTIO_NET_HDR_GSO_NONE => return Ok(()),
        vn::VIRTIO_NET_HDR_GSO_TCPV4 => vn::VIRTIO_NET_F_HOST_TSO4,
        vn::VIRTIO_NET_HDR_GSO_TCPV6 => vn::VIRTIO_NET_F_HOST_TSO6,
        vn::VIRTIO_NET_HDR_GSO_UDP => vn::VIRTIO_NET_F_HOST_UFO,
        _ => return Err(NetFault::Header("unknown gso_type")),
    };
    if !has(feature) {
        return Err(NetFault::Header("segmentation offload was not negotiated"));
    }
    if !needs_csum {
        return Err(NetFault::Header("segmentation offload without NEEDS_CSUM"));
    }
    if gso_size == 0 {
        return Err(NetFault::Header("segmentation offload with gso_size 0"));
    }
    if hdr_len > frame_len {
        return Err(NetFault::Header("hdr_len past the frame"));
    }
    Ok(())
}

/// Copies a transmit chain (header and frame) into `buf` and checks it.
fn gather_tx(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    features: u64,
    buf: &mut Vec<u8>,
) -> Result<(), NetFault> {
    if let Some(error) = chain.error {
        return Err(QueueFault::Chain(error).into());
    }
    let mut total: u64 = 0;
    for desc in &chain.descriptors {
        if desc.writable {
            return Err(QueueFault::Direction { index: desc.index }.into());
        }
        total += u64::from(desc.len);
        if total > MAX_TX_CHAIN as u64 {
            return Err(NetFault::TooLong { len: total });
        }
    }
    buf.clear();
    for desc in chain.descriptors.iter().filter(|d| d.len > 0) {
        let start = buf.len();
        buf.resize(start + desc.len as usize, 0);
        mem.read_slice(&mut buf[start..], GuestAddress(desc.addr))
            .map_err(|_| QueueFault::OutsideMemory {
                index: desc.index,
                addr: desc.addr,
                len: desc.len,
            })?;
    }
    if buf.len() < VNET_HDR_LEN + ETH_HDR_LEN {
        return Err(NetFault::TooShort { len: buf.len() });
    }
    check_tx_header(&buf[..VNET_HDR_LEN], buf.len() - VNET_HDR_LEN, features)
}

/// The writable buffers of a receive chain, checked, and their total size.
fn rx_buffers(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    mergeable: bool,
) -> Result<(Vec<(u64, u32)>, u64), NetFault> {
    let (buffers, total) = writable_buffers(mem, chain)?;
    // Without mergeable buffers one chain holds a whole frame: one that cannot hold the
    // smallest would otherwise sit at the head of the queue for ever, and every frame behind
    // it would be dropped.
    let smallest = if mergeable {
        1
    } else {
        (VNET_HDR_LEN + ETH_HDR_LEN) as u64
    };
    if total < smallest {
        return Err(NetFault::TooSmall {
            head: chain.head,
            len: total,
        });
    }
    Ok((buffers, total))
}

/// What happened to a received frame.
enum Delivery {
    /// In the guest's buffers.
    Delivered,
    /// It cannot fit; it is gone.
    Dropped,
    /// It could fit once the driver posts more buffers; it stays pending.
    NeedBuffers,
}

/// Puts the frame `frame` (header first) in the receive queue: one chain, or with
/// `mergeable` as many as needed. Bad chains met on the way complete with used length 0
/// (their faults go to `bad_chains`); `used` tells whether anything went to the used ring.
fn deliver(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    frame: &mut [u8],
    mergeable: bool,
    bad_chains: &mut Vec<NetFault>,
    used: &mut bool,
) -> Result<Delivery, NetFault> {
    let mut start = queue.next_avail();
    let mut chains: Vec<(u16, Vec<(u64, u32)>)> = Vec::new();
    let mut capacity = 0u64;
    let needed = frame.len() as u64;
    loop {
        let Some(chain) = next_chain(queue, mem)? else {
            let full = chains.len() >= usize::from(queue.size());
            queue.set_next_avail(start);
            return Ok(if full {
                Delivery::Dropped
            } else {
                Delivery::NeedBuffers
            });
        };
        let (buffers, size) = match rx_buffers(mem, &chain, mergeable) {
            Ok(found) => found,
            Err(fault) => {
                bad_chains.push(fault);
                // Chains already taken for this frame complete empty with the bad one: the
                // used entries of one frame must be consecutive.
                for (head, _) in &chains {
                    queue
                        .add_used(mem, *head, 0)
                        .map_err(QueueFault::UsedRing)?;
                }
                queue
                    .add_used(mem, chain.head, 0)
                    .map_err(QueueFault::UsedRing)?;
                *used = true;
                if chains.is_empty() {
                    start = queue.next_avail();
                    continue;
                }
                return Ok(Delivery::Dropped);
            }
        };
        chains.push((chain.head, buffers));
        capacity += size;
        if capacity >= needed {
            break;
        }
        if !mergeable {
            // One chain must hold the whole frame; it stays for a smaller one.
            queue.set_next_avail(start);
            return Ok(Delivery::Dropped);
        }
    }
    let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    frame[10..12].copy_from_slice(&count.to_le_bytes());
    let mut rest: &[u8] = frame;
    for (head, buffers) in &chains {
        let written = scatter(mem, buffers, rest, *head)?;
        rest = &rest[written..];
        queue
            .add_used(mem, *head, written as u32)
            .map_err(QueueFault::UsedRing)?;
    }
    *used = true;
    Ok(Delivery::Delivered)
}

impl<B: NetBackend> Net<B> {
    /// Marks the queues broken after a queue fault.
    fn break_queues(&mut self, fault: &NetFault) {
        self.queues.break_queues(fault);
        self.rx_wants_backend = false;
    }

    /// Sends every chain of the transmit queue to the backend (one queue's worth per call).
    pub(crate) fn process_tx(&mut self) {
        let Some(tx) = self.queues.serviceable(TX_QUEUE) else {
            return;
        };
        let features = self.acked_features;
        let (backend, tx_buf) = (&mut self.backend, &mut self.tx_buf);
        let mut sent = Vec::new();
        let result = tx.drain(&mut sent, |mem, chain| {
            let outcome = gather_tx(mem, chain, features, tx_buf)
                .and_then(|()| {
                    backend
                        .write_frame(&[tx_buf.as_slice()])
                        .map_err(NetFault::Backend)
                })
                .map(|_| tx_buf.len() - VNET_HDR_LEN);
            // The device writes nothing into a transmit chain.
            (0, outcome)
        });
        for outcome in &sent {
            match outcome {
                Ok(len) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += *len as u64;
                    self.backend_errors.succeeded();
                }
                Err(NetFault::Backend(e)) => {
                    self.stats.tx_dropped += 1;
                    self.backend_errors.failed(e);
                }
                Err(fault) => {
                    self.stats.tx_dropped += 1;
                    log_bad(self.queues.label(), self.stats.tx_dropped, &describe(fault));
                }
            }
        }
        self.queues.signal_used(TX_QUEUE, sent.len());
        if let Err(fault) = result {
            self.break_queues(&fault.into());
        }
    }

    /// Moves frames from the backend into the receive queue while both have some. Stops
    /// watching the backend when the receive queue runs out of buffers.
    pub(crate) fn process_rx(&mut self) {
        let mergeable = self.has_feature(vn::VIRTIO_NET_F_MRG_RXBUF);
        let Some(rx) = self.queues.serviceable(RX_QUEUE) else {
            self.rx_wants_backend = false;
            return;
        };
        let mut bad_chains = Vec::new();
        let mut used = false;
        let result = (|| -> Result<(), NetFault> {
            for _ in 0..RX_BUDGET {
                let len = match self.rx_pending {
                    Some(len) => len,
                    None => {
                        if !has_available(rx.queue, rx.mem)? {
                            // Wait for the driver's next notification of the receive queue.
                            self.rx_wants_backend = false;
                            return Ok(());
                        }
                        match self.backend.read_frame(&mut self.rx_buf) {
                            Ok(len)
                                if !(VNET_HDR_LEN + ETH_HDR_LEN..=MAX_TX_CHAIN).contains(&len) =>
                            {
                                self.stats.rx_dropped += 1;
                                continue;
                            }
                            Ok(len) => {
                                self.backend_errors.succeeded();
                                len
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.rx_wants_backend = true;
                                return Ok(());
                            }
                            Err(e) => {
                                // Retried on the next receive-queue notification, not in a loop.
                                self.backend_errors.failed(&e);
                                self.rx_wants_backend = false;
                                return Ok(());
                            }
                        }
                    }
                };
                self.rx_pending = Some(len);
                let frame = &mut self.rx_buf[..len];
                match deliver(
                    rx.mem,
                    rx.queue,
                    frame,
                    mergeable,
                    &mut bad_chains,
                    &mut used,
                )? {
                    Delivery::Delivered => {
                        self.stats.rx_frames += 1;
                        self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                    }
                    Delivery::Dropped => {
                        self.stats.rx_dropped += 1;
                        log::debug!("virtio-net: dropped a {len}-byte frame that does not fit");
                    }
                    Delivery::NeedBuffers => {
                        self.rx_wants_backend = false;
                        return Ok(());
                    }
                }
                self.rx_pending = None;
            }
            // The backend's fd stays readable; the event loop comes back.
            self.rx_wants_backend = true;
            Ok(())
        })();
        for fault in &bad_chains {
            self.stats.rx_bad_chains += 1;
            log_bad(
                self.queues.label(),
                self.stats.rx_bad_chains,
                &describe(fault),
            );
        }
        if used {
            self.queues.signal_used(RX_QUEUE, 1);
        }
        if let Err(fault) = result {
            self.break_queues(&fault);
        }
    }

    /// Watches the backend's fd exactly when the receive path wants frames.
    fn sync_backend_watch(&mut self, ops: &mut EventOps) {
        let want = self.rx_wants_backend && self.queues.is_serviceable(RX_QUEUE);
        if want == self.backend_watched {
            return;
        }
        let events = Events::new_raw(self.backend.raw_fd(), EventSet::IN);
        let result = if want {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.backend_watched = want,
            Err(e) => log::warn!(
                "virtio-net {}: cannot {} the backend: {e:?}",
                self.backend.name(),
                if want { "watch" } else { "stop watching" }
            ),
        }
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        if !self.queues.init(ops) {
            return;
        }
        self.process_tx();
        self.process_rx();
        self.sync_backend_watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.queues.classify_event(events, ops) {
            QueueEvent::StateChanged => {
                self.process_tx();
                self.process_rx();
            }
            QueueEvent::Queue(RX_QUEUE) => {
                self.rx_wants_backend = true;
                self.process_rx();
            }
            QueueEvent::Queue(_) => self.process_tx(),
            QueueEvent::Other(fd) if self.backend_watched && fd == self.backend.raw_fd() => {
                self.process_rx();
            }
            QueueEvent::Other(_) => {
                self.queues.drop_event(events, ops);
                return;
            }
        }
        self.sync_backend_watch(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::Bytes;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::virtio::chain::{DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::net::device::AVAIL_FEATURES;
    use crate::virtio::net::fake::{FakeBackend, Injector};
    use crate::virtio::net::{MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE};
    use crate::virtio::test_utils::{
        guest_memory, overlaps, readable, scribble, writable, DriverQueue, MemSnapshot,
        RandomChains, RecordingInterrupt, TestRng, HIGH_START, MEM_SIZE,
    };
    use crate::virtio::{ActiveQueue, VirtioDevice, FEATURE_VERSION_1};

    const DATA: u64 = 0x10000;
    const SIZE: u16 = 16;
    const UNTOUCHED: u8 = 0xee;

    fn f(n: u32) -> u64 {
        1 << n
    }

    /// A header (as bytes) with the given fields, `num_buffers` 0.
    fn header(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, csum: (u16, u16)) -> Vec<u8> {
        let mut h = vec![flags, gso_type];
        for v in [hdr_len, gso_size, csum.0, csum.1, 0] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    /// A frame of `len` bytes after a plain header, with a recognisable pattern.
    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = header(0, 0, 0, 0, (0, 0));
        f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
        f
    }

    /// A network device over a fake backend, with only one queue live (the two queues'
    /// rings share the test driver's addresses, so the other one is disabled).
    struct Harness {
        net: Net<FakeBackend>,
        fake: Injector,
        mem: GuestMemoryMmap,
        driver: DriverQueue,
        irq: Arc<RecordingInterrupt>,
        completed: u16,
    }

    impl Harness {
        fn new(features: u64, live: u16) -> Self {
            let mem = guest_memory();
            let backend = FakeBackend::new();
            let fake = backend.injector();
            let mut net = Net::new(backend, None).unwrap();
            net.ack_features(features);
            let driver = DriverQueue::new(&mem, SIZE);
            let irq = Arc::new(RecordingInterrupt::default());
            let queues = (0..2)
                .map(|_| ActiveQueue {
                    queue: driver.device_queue(),
                    notify: EventFd::new(EFD_NONBLOCK).unwrap(),
                })
                .collect();
            net.activate(mem.clone(), irq.clone(), queues).unwrap();
            net.disable_queue(if live == RX_QUEUE { TX_QUEUE } else { RX_QUEUE });
            Self {
                net,
                fake,
                mem,
                driver,
                irq,
                completed: 0,
            }
        }

        fn put(&self, addr: u64, bytes: &[u8]) {
            self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        }

        fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut bytes = vec![0; len];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            bytes
        }

        fn sent(&self) -> Vec<Vec<u8>> {
            std::mem::take(&mut self.fake.state.lock().unwrap().tx)
        }

        /// Sends `bufs` as one transmit chain; checks it completed with used length 0.
        fn transmit(&mut self, bufs: &[crate::virtio::test_utils::Buf]) {
            let head = self.driver.add_chain(bufs);
            self.net.process_tx();
            assert_eq!(self.driver.used_idx(), self.completed + 1, "one completion");
            assert_eq!(self.driver.used(self.completed), (u32::from(head), 0));
            self.completed += 1;
        }

        /// Sends a valid frame and checks it arrives.
        fn assert_tx_works(&mut self) {
            let good = frame(100, 7);
            self.put(DATA, &good);
            self.transmit(&[readable(DATA, good.len() as u32)]);
            assert_eq!(self.sent(), [good]);
        }
    }

    #[test]
    fn a_transmitted_frame_arrives_byte_exact() {
        let mut h = Harness::new(FEATURE_VERSION_1, TX_QUEUE);
        let sent = frame(1500, 1);
        // Header alone, then the frame split over two buffers in two RAM regions.
        h.put(DATA, &sent[..12]);
        h.put(DATA + 0x1000, &sent[12..700]);
        h.put(HIGH_START, &sent[700..]);
        h.transmit(&[
            readable(DATA, 12),
            readable(DATA + 0x1000, 688),
            readable(HIGH_START, 812),
        ]);
        assert_eq!(h.sent(), [sent]);
        assert_eq!(h.irq.counts(), (1, 0, 0));
        let stats = h.net.stats();
        assert_eq!(
            (stats.tx_frames, stats.tx_bytes, stats.tx_dropped),
            (1, 1500, 0)
        );
    }

    #[test]
    fn oversized_transmit_chains_are_dropped() {
        let mut h = Harness::new(FEATURE_VERSION_1, TX_QUEUE);
        // Exactly the limit goes through...
        let big = frame(MAX_FRAME_LEN, 3);
        h.put(DATA, &big);
        h.transmit(&[
            readable(DATA, 40_000),
            readable(DATA + 40_000, (big.len() - 40_000) as u32),
        ]);
        assert_eq!(h.sent(), [big]);
        // ...one byte more does not, nor a chain whose lengths add up past u32.
        h.transmit(&[readable(DATA, 40_000), readable(DATA + 40_000, 25_563)]);
        h.transmit(&[readable(DATA, u32::MAX), readable(DATA, u32::MAX)]);
        assert!(h.sent().is_empty());
        assert_eq!(h.net.stats().tx_dropped, 2);
        h.assert_tx_works();
    }

    #[test]
    fn transmit_chains_with_writable_or_outside_buffers_complete_empty() {
        let mut h = Harness::new(FEATURE_VERSION_1, TX_QUEUE);
        let good = frame(100, 9);
        h.put(DATA, &good);
        h.transmit(&[readable(DATA, 12), writable(DATA + 12, 100)]);
        // A buffer that runs from the end of low RAM into the hole, one in the hole, one
        // that wraps.
        h.transmit(&[readable(DATA, 12), readable(MEM_SIZE - 16, 100)]);
        h.transmit(&[readable(MEM_SIZE + 0x1000, 112)]);
        h.transmit(&[readable(u64::MAX - 7, 112)]);
        // A loop, and a chain too short to hold a frame.
        h.driver.write_descriptor(0, DATA, 64, DESC_F_NEXT, 1);
        h.driver.write_descriptor(1, DATA, 64, DESC_F_NEXT, 0);
        h.driver.publish(0);
        h.net.process_tx();
        assert_eq!(h.driver.used(h.completed), (0, 0));
        h.completed += 1;
        h.transmit(&[readable(DATA, 20)]);
        assert!(h.sent().is_empty());
        assert_eq!(h.net.stats().tx_dropped, 6);
        assert_eq!(h.irq.counts().2, 0, "no reset needed");
        h.assert_tx_works();
    }

    #[test]
    fn malformed_vnet_headers_are_dropped() {
        let offloads = FEATURE_VERSION_1
            | f(vn::VIRTIO_NET_F_CSUM)
            | f(vn::VIRTIO_NET_F_HOST_TSO4)
            | f(vn::VIRTIO_NET_F_HOST_UFO);
        let mut h = Harness::new(offloads, TX_QUEUE);
        let payload = vec![0x5a; 200];
        let send = |h: &mut Harness, hdr: Vec<u8>| {
            let mut bytes = hdr;
            bytes.extend_from_slice(&payload);
            h.put(DATA, &bytes);
            h.transmit(&[readable(DATA, bytes.len() as u32)]);
            bytes
        };
        let csum = 1u8; // NEEDS_CSUM
        let tcp4 = vn::VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        let bad = [
            header(2, 0, 0, 0, (0, 0)),    // DATA_VALID is device-to-driver only
            header(0x80, 0, 0, 0, (0, 0)), // unknown flag
            header(0, 9, 0, 0, (0, 0)),    // unknown gso_type
            header(csum, tcp4 | 0x80, 54, 1448, (34, 16)), // ECN not negotiated
            header(csum, vn::VIRTIO_NET_HDR_GSO_TCPV6 as u8, 54, 1448, (34, 16)), // not negotiated
            header(csum, tcp4, 201, 1448, (34, 16)), // hdr_len past the frame
            header(csum, tcp4, 54, 0, (34, 16)), // gso_size 0
            header(0, tcp4, 54, 1448, (0, 0)), // GSO without NEEDS_CSUM
            header(csum, 0, 0, 0, (190, 9)), // checksum past the frame
        ];
        for hdr in bad {
            send(&mut h, hdr);
        }
        assert!(h.sent().is_empty());
        assert_eq!(h.net.stats().tx_dropped, 9);
        // Well-formed offload requests go through as they are.
        let ok = send(&mut h, header(csum, tcp4, 54, 1448, (34, 16)));
        let ok2 = send(&mut h, header(csum, 0, 0, 0, (34, 6)));
        assert_eq!(h.sent(), [ok, ok2]);
        // Without CSUM negotiated, NEEDS_CSUM is refused.
        let mut h = Harness::new(FEATURE_VERSION_1, TX_QUEUE);
        let mut bytes = header(csum, 0, 0, 0, (34, 6));
        bytes.extend_from_slice(&payload);
        h.put(DATA, &bytes);
        h.transmit(&[readable(DATA, bytes.len() as u32)]);
        assert!(h.sent().is_empty());
        h.assert_tx_works();
    }

    #[test]
    fn a_full_transmit_ring_yields_and_continues() {
        let mut h = Harness::new(FEATURE_VERSION_1, TX_QUEUE);
        let good = frame(60, 1);
        h.put(DATA, &good);
        for _ in 0..SIZE {
            h.driver.add_chain(&[readable(DATA, good.len() as u32)]);
        }
        h.net.process_tx();
        assert_eq!(h.driver.used_idx(), SIZE);
        assert_eq!(h.sent().len(), usize::from(SIZE));
        assert_eq!(h.irq.counts(), (1, 0, 0), "one interrupt for the batch");
        let active = h.net.queues.active.as_ref().unwrap();
        let tx_notify = &active.queues[usize::from(TX_QUEUE)].notify;
        assert_eq!(
            tx_notify.read().unwrap(),
            1,
            "the device asked to run again"
        );
    }

    #[test]
    fn a_received_frame_arrives_byte_exact() {
        let mut h = Harness::new(FEATURE_VERSION_1, RX_QUEUE);
        h.put(DATA, &[UNTOUCHED; 0x2000]);
        let head = h
            .driver
            .add_chain(&[writable(DATA, 1000), writable(DATA + 0x1000, 1000)]);
        let sent = frame(1400, 5);
        h.fake.inject(sent.clone());
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 1);
        assert_eq!(h.driver.used(0), (u32::from(head), 1412));
        let mut want = sent;
        want[10] = 1; // num_buffers
        let mut got = h.guest_bytes(DATA, 1000);
        got.extend(h.guest_bytes(DATA + 0x1000, 412));
        assert_eq!(got, want);
        assert_eq!(h.guest_bytes(DATA + 0x1000 + 412, 16), [UNTOUCHED; 16]);
        assert_eq!(h.irq.counts(), (1, 0, 0));
        let stats = h.net.stats();
        assert_eq!(
            (stats.rx_frames, stats.rx_bytes, stats.rx_dropped),
            (1, 1400, 0)
        );
        // The ring is empty now: the device stops asking for frames.
        assert!(!h.net.rx_wants_backend);
    }

    #[test]
    fn mergeable_buffers_spread_a_frame_over_chains() {
        let mut h = Harness::new(FEATURE_VERSION_1 | f(vn::VIRTIO_NET_F_MRG_RXBUF), RX_QUEUE);
        let heads: Vec<u16> = (0..4)
            .map(|i| h.driver.add_chain(&[writable(DATA + i * 0x1000, 500)]))
            .collect();
        let sent = frame(1200, 2);
        h.fake.inject(sent.clone());
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 3);
        assert_eq!(h.driver.used(0), (u32::from(heads[0]), 500));
        assert_eq!(h.driver.used(1), (u32::from(heads[1]), 500));
        assert_eq!(h.driver.used(2), (u32::from(heads[2]), 212));
        let mut got = h.guest_bytes(DATA, 500);
        got.extend(h.guest_bytes(DATA + 0x1000, 500));
        got.extend(h.guest_bytes(DATA + 0x2000, 212));
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        let mut want = sent;
        want[10] = 3;
        assert_eq!(got, want);
        // The fourth chain takes the next frame.
        h.fake.inject(frame(100, 3));
        h.net.process_rx();
        assert_eq!(h.driver.used(3), (u32::from(heads[3]), 112));
        assert_eq!(h.guest_bytes(DATA + 0x3000 + 10, 2), [1, 0]);
    }

    #[test]
    fn a_frame_waits_for_enough_mergeable_buffers() {
        let mut h = Harness::new(FEATURE_VERSION_1 | f(vn::VIRTIO_NET_F_MRG_RXBUF), RX_QUEUE);
        h.driver.add_chain(&[writable(DATA, 500)]);
        h.fake.inject(frame(800, 4));
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 0, "not delivered truncated");
        assert!(h.net.rx_pending.is_some() && !h.net.rx_wants_backend);
        h.driver.add_chain(&[writable(DATA + 0x1000, 500)]);
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 2);
        assert_eq!((h.driver.used(0).1, h.driver.used(1).1), (500, 312));
        assert_eq!(h.net.stats().rx_frames, 1);
    }

    #[test]
    fn a_frame_too_big_for_the_buffer_is_dropped_not_truncated() {
        let mut h = Harness::new(FEATURE_VERSION_1, RX_QUEUE);
        h.put(DATA, &[UNTOUCHED; 0x1000]);
        let head = h.driver.add_chain(&[writable(DATA, 1000)]);
        h.fake.inject(frame(1500, 1));
        let small = frame(200, 8);
        h.fake.inject(small.clone());
        h.net.process_rx();
        // The big frame is gone; the buffer took the small one.
        assert_eq!(h.driver.used_idx(), 1);
        assert_eq!(h.driver.used(0), (u32::from(head), 212));
        let mut want = small;
        want[10] = 1;
        assert_eq!(h.guest_bytes(DATA, 212), want);
        let stats = h.net.stats();
        assert_eq!((stats.rx_frames, stats.rx_dropped), (1, 1));
    }

    #[test]
    fn bad_receive_chains_complete_empty_and_the_frame_goes_on() {
        let mut h = Harness::new(FEATURE_VERSION_1, RX_QUEUE);
        h.put(DATA, &[UNTOUCHED; 0x1000]);
        let bad1 = h.driver.add_chain(&[readable(DATA, 2000)]);
        let bad2 = h.driver.add_chain(&[writable(MEM_SIZE - 100, 2000)]);
        h.driver
            .write_descriptor(5, DATA, 2000, DESC_F_NEXT | DESC_F_WRITE, 5);
        h.driver.publish(5);
        let good = h.driver.add_chain(&[writable(DATA + 0x2000, 2000)]);
        let sent = frame(300, 6);
        h.fake.inject(sent.clone());
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 4);
        assert_eq!(h.driver.used(0), (u32::from(bad1), 0));
        assert_eq!(h.driver.used(1), (u32::from(bad2), 0));
        assert_eq!(h.driver.used(2), (5, 0));
        assert_eq!(h.driver.used(3), (u32::from(good), 312));
        assert_eq!(h.guest_bytes(DATA, 16), [UNTOUCHED; 16]);
        assert_eq!(h.guest_bytes(DATA + 0x2000 + 12, 300), sent[12..]);
        assert_eq!(h.net.stats().rx_bad_chains, 3);
        assert_eq!(h.irq.counts(), (1, 0, 0));
    }

    #[test]
    fn a_receive_chain_too_small_for_any_frame_does_not_hold_the_queue_up() {
        let mut h = Harness::new(FEATURE_VERSION_1, RX_QUEUE);
        h.put(DATA, &[UNTOUCHED; 0x100]);
        // 25 bytes: one short of a header and an Ethernet header.
        let tiny = h.driver.add_chain(&[writable(DATA, 25)]);
        let good = h.driver.add_chain(&[writable(DATA + 0x2000, 2000)]);
        let sent = frame(60, 9);
        h.fake.inject(sent.clone());
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 2);
        assert_eq!(h.driver.used(0), (u32::from(tiny), 0));
        assert_eq!(h.driver.used(1), (u32::from(good), 72));
        assert_eq!(h.guest_bytes(DATA, 25), [UNTOUCHED; 25]);
        assert_eq!(h.guest_bytes(DATA + 0x2000 + 12, 60), sent[12..]);
        assert_eq!(h.net.stats().rx_bad_chains, 1);
        assert_eq!(h.net.stats().rx_dropped, 0);
        // With mergeable buffers a small chain is a fine first piece of a frame.
        let mut h = Harness::new(
            FEATURE_VERSION_1 | (1 << vn::VIRTIO_NET_F_MRG_RXBUF),
            RX_QUEUE,
        );
        h.driver.add_chain(&[writable(DATA, 25)]);
        h.driver.add_chain(&[writable(DATA + 0x2000, 2000)]);
        h.fake.inject(frame(60, 9));
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 2);
        assert_eq!((h.driver.used(0).1, h.driver.used(1).1), (25, 47));
        assert_eq!(h.net.stats().rx_bad_chains, 0);
    }

    #[test]
    fn runt_and_oversized_frames_from_the_backend_are_dropped() {
        let mut h = Harness::new(FEATURE_VERSION_1, RX_QUEUE);
        h.driver.add_chain(&[writable(DATA, 2000)]);
        h.fake.inject(vec![0; 5]);
        h.fake.inject(frame(MAX_FRAME_LEN + 1, 1));
        h.fake.inject(frame(60, 1));
        h.net.process_rx();
        assert_eq!(h.driver.used_idx(), 1);
        assert_eq!(h.driver.used(0).1, 72);
        assert_eq!(h.net.stats().rx_dropped, 2);
    }

    #[test]
    fn queue_errors_need_a_reset() {
        let mut h = Harness::new(FEATURE_VERSION_1, TX_QUEUE);
        h.driver.set_avail_idx(SIZE + 1);
        h.net.process_tx();
        assert_eq!(h.irq.counts(), (0, 0, 1));
        h.net.process_tx();
        assert_eq!(h.irq.counts(), (0, 0, 1), "the queue is left alone");
        let mut h = Harness::new(FEATURE_VERSION_1, RX_QUEUE);
        h.driver.publish(SIZE + 3);
        h.fake.inject(frame(60, 1));
        h.net.process_rx();
        assert_eq!(h.irq.counts(), (0, 0, 1));
        assert!(!h.net.rx_wants_backend);
    }

    /// The event loop watches the backend only while the guest has posted receive buffers.
    #[test]
    fn without_receive_buffers_the_backend_is_not_polled() {
        let backend = FakeBackend::new();
        let fake = backend.injector();
        let net = Arc::new(Mutex::new(Net::new(backend, None).unwrap()));
        let mut manager: EventManager<Arc<Mutex<Net<FakeBackend>>>> = EventManager::new().unwrap();
        manager.add_subscriber(net.clone());
        let mem = guest_memory();
        let mut driver = DriverQueue::new(&mem, SIZE);
        let rx_notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let queues = vec![
            ActiveQueue {
                queue: driver.device_queue(),
                notify: rx_notify.try_clone().unwrap(),
            },
            ActiveQueue {
                queue: driver.device_queue(),
                notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            },
        ];
        {
            let mut net = net.lock().unwrap();
            net.ack_features(FEATURE_VERSION_1);
            let irq = Arc::new(RecordingInterrupt::default());
            net.activate(mem.clone(), irq, queues).unwrap();
            net.disable_queue(TX_QUEUE);
        }
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1, "activation");
        // A frame waits, the backend fd is readable, but there is no buffer: nothing runs.
        fake.inject(frame(60, 1));
        for _ in 0..3 {
            assert_eq!(manager.run_with_timeout(20).unwrap(), 0);
        }
        assert_eq!(
            fake.state.lock().unwrap().reads,
            0,
            "the backend was not polled"
        );
        // The driver posts a buffer and notifies: the frame is delivered.
        driver.add_chain(&[writable(DATA, 2000)]);
        rx_notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(driver.used_idx(), 1);
        assert_eq!(driver.used(0).1, 72);
        // With a buffer posted, a new frame is picked up when the backend becomes readable.
        driver.add_chain(&[writable(DATA + 0x1000, 2000)]);
        rx_notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert!(net.lock().unwrap().backend_watched);
        fake.inject(frame(80, 2));
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(driver.used_idx(), 2);
        assert_eq!(driver.used(1).1, 92);
        // Out of buffers again: the backend is no longer watched.
        assert!(!net.lock().unwrap().backend_watched);
        fake.inject(frame(60, 3));
        assert_eq!(manager.run_with_timeout(20).unwrap(), 0);
        assert_eq!(fake.state.lock().unwrap().rx.len(), 1);
    }

    /// The bytes of a transmit chain's readable buffers, as the device gathers them, if
    /// the chain is whole, in guest memory and not longer than a transmit chain may be.
    fn readable_bytes(driver: &DriverQueue, head: u32) -> Option<Vec<u8>> {
        let chain = driver.chain(u16::try_from(head).ok()?);
        if chain.error.is_some() {
            return None;
        }
        let total: u64 = chain.descriptors.iter().map(|d| u64::from(d.len)).sum();
        if total > MAX_TX_CHAIN as u64 {
            return None;
        }
        let mut bytes = Vec::new();
        for desc in chain.descriptors.iter().filter(|d| !d.writable) {
            let mut part = vec![0; desc.len as usize];
            driver
                .mem
                .read_slice(&mut part, GuestAddress(desc.addr))
                .ok()?;
            bytes.extend(part);
        }
        Some(bytes)
    }

    /// Asserts the frames the device put in receive chains (used entries `entries`, in
    /// order) are injected frames, in the order they were injected (some may have been
    /// dropped): each takes one chain, or with `mergeable` consecutive chains whose lengths
    /// add up to it, and unless its buffers overlap another chain's (they may have been
    /// overwritten since), it reads back byte-exact, with `num_buffers` set.
    fn assert_delivered(
        rx: &DriverQueue,
        entries: &[(u32, u32)],
        mergeable: bool,
        injected: &[Vec<u8>],
        ctx: &str,
    ) {
        // The ranges each entry's bytes went to.
        let written: Vec<Vec<(u64, u64)>> = entries
            .iter()
            .map(|&(id, len)| {
                let mut left = u64::from(len);
                let mut ranges = Vec::new();
                for (start, end) in rx.writable_of(id).0 {
                    let n = (end - start).min(left);
                    if n > 0 {
                        ranges.push((start, start + n));
                    }
                    left -= n;
                }
                ranges
            })
            .collect();
        let alone = |i: usize| {
            written[i].iter().enumerate().all(|(a, &range)| {
                written.iter().enumerate().all(|(j, others)| {
                    others
                        .iter()
                        .enumerate()
                        .all(|(b, &other)| (i, a) == (j, b) || !overlaps(range, other))
                })
            })
        };
        let read = |i: usize| {
            let mut bytes = Vec::new();
            for &(start, end) in &written[i] {
                let mut part = vec![0; (end - start) as usize];
                rx.mem.read_slice(&mut part, GuestAddress(start)).unwrap();
                bytes.extend(part);
            }
            bytes
        };
        let (mut i, mut next) = (0, 0);
        while i < entries.len() {
            if entries[i].1 == 0 {
                i += 1;
                continue;
            }
            // The chains a frame of `len` bytes would take from entry `i` on.
            let span = |len: usize| {
                let mut total = 0;
                for (n, &(_, used)) in entries[i..].iter().enumerate() {
                    if used == 0 || (n > 0 && !mergeable) {
                        return None;
                    }
                    total += used as usize;
                    if total >= len {
                        return (total == len).then_some(n + 1);
                    }
                }
                None
            };
            let found = injected[next..].iter().enumerate().find_map(|(k, want)| {
                let count = span(want.len())?;
                if (i..i + count).all(alone) {
                    let got: Vec<u8> = (i..i + count).flat_map(read).collect();
                    let same = got[..10] == want[..10] && got[12..] == want[12..];
                    if !same || got[10..12] != (count as u16).to_le_bytes() {
                        return None;
                    }
                }
                Some((k, count))
            });
            let Some((k, count)) = found else {
                panic!(
                    "{ctx}: used entries {:?} hold no injected frame (or not in order)",
                    &entries[i..]
                );
            };
            next += k + 1;
            i += count;
        }
    }

    /// A random vnet header and frame (random bytes) of a random length.
    fn random_tx_packet(rng: &mut TestRng) -> (Vec<u8>, bool) {
        let frame_len = match rng.below(10) {
            0 => rng.pick(&[0, 1, 13, 14]),
            1 => rng.pick(&[MAX_FRAME_LEN, MAX_FRAME_LEN + 1]),
            2 => rng.below(70_000) as usize,
            _ => 14 + rng.below(1500) as usize,
        };
        let r = rng.next_u64();
        let flags = rng.pick(&[0, 0, 0, 1, 1, 2, 0x80, r as u8]);
        let gso_type = rng.pick(&[0, 0, 0, 1, 3, 4, 5, 0x81, (r >> 8) as u8]);
        let hdr_len = rng.pick(&[
            0,
            54,
            frame_len as u16,
            frame_len as u16 + 1,
            (r >> 16) as u16,
        ]);
        let gso_size = rng.pick(&[0, 1448, (r >> 32) as u16]);
        let csum_start = rng.below(frame_len as u64 + 4) as u16;
        let csum_offset = rng.pick(&[6, 16, (r >> 48) as u16]);
        let mut bytes = header(
            flags,
            gso_type,
            hdr_len,
            gso_size,
            (csum_start, csum_offset),
        );
        bytes[10..12].copy_from_slice(&(rng.next_u64() as u16).to_le_bytes());
        bytes.extend(rng.bytes(frame_len));
        // Headers asking for nothing are always valid.
        let plain = flags == 0 && gso_type == 0 && (14..=MAX_FRAME_LEN).contains(&frame_len);
        (bytes, plain)
    }

    /// A hostile driver, batch after batch, on both queues of rings of random sizes, with
    /// random features: random chains, transmit packets with random vnet headers and frame
    /// lengths (some buffers spoiled), random receive chains, and frames of random lengths
    /// from the backend. The device never panics, never writes outside a receive chain's
    /// writable buffers, never reports more bytes than they hold, sends exactly the bytes
    /// of the transmit chains it accepts (and every well-formed one), delivers injected
    /// frames byte-exact and in order, and after each batch either needs a reset or still
    /// moves a well-formed frame each way.
    #[test]
    fn random_hostile_traffic_is_handled_safely() {
        const SEED: u64 = 0x5eed_0001;
        const BATCHES: u64 = 1500;
        const RX_BASE: u64 = 0x1000;
        const TX_BASE: u64 = 0x4000;
        const GOOD_TX: u64 = 0xf4000;
        const GOOD_RX: u64 = 0xd0000;
        let limits = [
            VNET_HDR_LEN as u32,
            26,
            MAX_TX_CHAIN as u32,
            MAX_FRAME_LEN as u32,
        ];
        let mut rc = RandomChains::new(SEED, (DATA, MEM_SIZE), &limits);
        let mem = guest_memory();
        let backend = FakeBackend::new();
        let fake = backend.injector();
        let mut net = Net::new(backend, None).unwrap();
        let activate = |net: &mut Net<FakeBackend>, size: u16, irq: &Arc<RecordingInterrupt>| {
            let rx = DriverQueue::at(&mem, size, RX_BASE);
            let tx = DriverQueue::at(&mem, size, TX_BASE);
            let queues = vec![rx.active_queue(true), tx.active_queue(true)];
            net.activate(mem.clone(), irq.clone(), queues).unwrap();
            (rx, tx)
        };
        let run_rx = |net: &mut Net<FakeBackend>| {
            // As a receive-queue notification does.
            net.rx_wants_backend = true;
            net.process_rx();
        };
        let mut resets = 0;
        let rings = [(RX_BASE, TX_BASE), (TX_BASE, TX_BASE + 0x3000)];
        scribble(&mem, &mut rc.rng, &rings);
        for batch in 0..BATCHES {
            let ctx = format!("seed {SEED:#x}, batch {batch}");
            let size = 1u16 << (1 + rc.rng.below(8));
            let features = FEATURE_VERSION_1 | (rc.rng.next_u64() & AVAIL_FEATURES);
            let mergeable = features & f(vn::VIRTIO_NET_F_MRG_RXBUF) != 0;
            net.reset();
            {
                let mut state = fake.state.lock().unwrap();
                state.rx.clear();
                state.tx.clear();
            }
            net.ack_features(features);
            let mut irq = Arc::new(RecordingInterrupt::default());
            let (mut rx, mut tx) = activate(&mut net, size, &irq);
            rc.begin(&mut rx);
            rc.begin(&mut tx);

            // Transmit chains, their packets in memory of their own.
            let mut must_send = Vec::new();
            let mut bump = DATA;
            let count = 1 + rc.rng.below(6);
            rc.batch(&mut tx, count, true, |rc, tx| {
                if rc.rng.one_in(3) {
                    return rc.chain(tx, Some(false));
                }
                let (bytes, plain) = random_tx_packet(&mut rc.rng);
                mem.write_slice(&bytes, GuestAddress(bump)).unwrap();
                let mut bufs = rc.split(bump, bytes.len() as u32, false);
                bump += bytes.len() as u64;
                let spoiled = rc.spoil(&mut bufs);
                let head = rc.buffers(tx, &bufs);
                if plain && !spoiled {
                    must_send.extend(head.map(|head| (head, bytes)));
                }
                head
            });
            // Receive chains, and frames from the backend.
            let count = rc.rng.below(u64::from(size / 4).max(1) + 1);
            let lens = [1, 11, 12, 25, 26, 100, 1526, 4096, 65562];
            rc.batch(&mut rx, count, true, |rc, rx| rc.receive_chain(rx, &lens));
            let mut injected = Vec::new();
            for _ in 0..rc.rng.below(5) {
                let len = match rc.rng.below(6) {
                    0 => rc.rng.pick(&[0, 5, 25, 26, MAX_TX_CHAIN, MAX_TX_CHAIN + 1]),
                    1 => rc.rng.below(70_000) as usize,
                    _ => 26 + rc.rng.below(1500) as usize,
                };
                let frame = rc.rng.bytes(len);
                fake.inject(frame.clone());
                injected.push(frame);
            }

            let snapshot = MemSnapshot::take(&mem);
            // Transmit first, and check it before the receive path writes anything.
            net.process_tx();
            net.process_tx();
            let (tx_used, _) = tx.check_used_since(0, &ctx);
            assert!(
                tx_used.iter().all(|&(_, len)| len == 0),
                "{ctx}: {tx_used:?}"
            );
            let sent = std::mem::take(&mut fake.state.lock().unwrap().tx);
            let mut matched = 0;
            for &(id, _) in &tx_used {
                if matched < sent.len() && readable_bytes(&tx, id).as_ref() == Some(&sent[matched])
                {
                    matched += 1;
                }
            }
            assert_eq!(
                matched,
                sent.len(),
                "{ctx}: a sent frame is not what a used transmit chain holds"
            );
            if irq.counts().2 == 0 {
                for (head, bytes) in &must_send {
                    assert!(
                        sent.contains(bytes),
                        "{ctx}: the well-formed transmit chain {head} was not sent"
                    );
                }
            }
            run_rx(&mut net);
            run_rx(&mut net);
            let (rx_used, allowed) = rx.check_used_since(0, &ctx);
            let ignored = [rings[0], rings[1]];
            snapshot.assert_no_stray_write(&mem, &allowed, &ignored, &ctx);
            // Before the test writes guest memory again.
            assert_delivered(&rx, &rx_used, mergeable, &injected, &ctx);
            let mut checked = rx.used_idx();
            // After a reset (reported in the batch, or when the device gets to what the
            // batch left in the receive queue), the driver sets the device up again.
            let mut fresh = false;
            loop {
                if irq.counts().2 > 0 {
                    assert!(!fresh, "{ctx}: a reset was needed on fresh queues");
                    resets += 1;
                    fresh = true;
                    let (rx_used, _) = rx.check_used_since(checked, &ctx);
                    assert_delivered(&rx, &rx_used, mergeable, &injected, &ctx);
                    assert!(net.reset(), "{ctx}");
                    fake.state.lock().unwrap().rx.clear();
                    injected.clear();
                    net.ack_features(features);
                    irq = Arc::new(RecordingInterrupt::default());
                    (rx, tx) = activate(&mut net, size, &irq);
                    checked = 0;
                }
                // A well-formed frame goes out...
                let good = frame(100, batch as u8);
                mem.write_slice(&good, GuestAddress(GOOD_TX)).unwrap();
                let from = tx.used_idx();
                let head = tx.add_chain(&[readable(GOOD_TX, good.len() as u32)]);
                net.process_tx();
                assert_eq!(tx.used_idx(), from.wrapping_add(1), "{ctx}");
                assert_eq!(tx.used(from), (u32::from(head), 0), "{ctx}");
                let sent = std::mem::take(&mut fake.state.lock().unwrap().tx);
                assert_eq!(sent, [good], "{ctx}");
                // ...and one comes in, after whatever the driver left in the receive queue.
                let from = rx.used_idx();
                let head = u32::from(rx.add_chain(&[writable(GOOD_RX, 0x11000)]));
                let good_in = frame(60, batch as u8);
                let mut arrived = false;
                for _ in 0..usize::from(size) + 8 {
                    fake.inject(good_in.clone());
                    injected.push(good_in.clone());
                    run_rx(&mut net);
                    let n = rx.used_idx();
                    let got = |i: u16| rx.used(i).0 == head && rx.used(i).1 > 0;
                    if irq.counts().2 > 0 || (from..n).any(got) {
                        arrived = true;
                        break;
                    }
                }
                if irq.counts().2 > 0 {
                    continue;
                }
                let (rx_used, _) = rx.check_used_since(checked, &ctx);
                assert_delivered(&rx, &rx_used, mergeable, &injected, &ctx);
                if !arrived {
                    // Only a receive chain too small for this frame (but not for every
                    // frame), left by the random batch, may hold the queue up: without
                    // mergeable buffers, the device keeps it for a smaller frame.
                    let next = net.queues.active.as_ref().unwrap().queues[usize::from(RX_QUEUE)]
                        .queue
                        .next_avail();
                    let stuck = rx.avail_entry(next);
                    let capacity = rx.writable_of(u32::from(stuck)).1;
                    assert!(
                        !mergeable && capacity < good_in.len() as u64,
                        "{ctx}: the well-formed receive chain never got a frame (the queue waits \
                         at chain {stuck} of {capacity} bytes)"
                    );
                }
                break;
            }
        }
        // Both directions and the reset path were exercised.
        let stats = net.stats();
        assert!(
            resets > 0 && stats.tx_frames > BATCHES && stats.rx_frames > BATCHES,
            "resets {resets}, {stats:?}"
        );
    }
}
