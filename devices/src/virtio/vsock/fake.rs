//! A fake virtio-vsock driver for unit tests: three split queues in plain guest memory, the
//! device behind a real `EventManager`, and a temporary directory for the Unix sockets.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{Header, HDR_LEN, OP_RW, TYPE_STREAM};
use super::{Vsock, VsockConfig, HOST_CID};
use crate::virtio::test_utils::{guest_memory, Buf, DriverQueue, RecordingInterrupt};
use crate::virtio::{ActiveQueue, VirtioDevice, FEATURE_VERSION_1};
use petrel_memory::GuestMemoryMmap;

/// The guest's CID in tests.
pub(super) const GUEST_CID: u64 = 3;
/// Size of the test queues.
pub(super) const SIZE: u16 = 256;
/// Receive buffers: 64 slots of 4 KiB.
const RX_AREA: u64 = 0x4_0000;
pub(super) const RX_BUF: u32 = 4096;
const RX_SLOTS: u64 = 64;
/// Transmit packets: 7 slots big enough for a header and the largest payload.
const TX_AREA: u64 = 0x8_0000;
const TX_SLOT: u64 = 0x1_1000;
const TX_SLOTS: u64 = 7;
/// Free memory tests may use for hand-made chains.
pub(super) const SCRATCH: u64 = 0x2_0000;

/// The driver's side of one split queue at `base` (table), `base + 0x1000` (available ring)
/// and `base + 0x2000` (used ring), remembering which used entries the test has seen.
pub(super) struct FakeQueue {
    driver: DriverQueue,
    pub(super) used_seen: u16,
}

impl FakeQueue {
    fn new(mem: &GuestMemoryMmap, base: u64) -> Self {
        Self {
            driver: DriverQueue::at(mem, SIZE, base),
            used_seen: 0,
        }
    }

    /// Used entries not seen yet: (descriptor id, length).
    pub(super) fn take_used(&mut self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        while self.used_seen != self.driver.used_idx() {
            let (id, len) = self.driver.used(self.used_seen);
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

impl std::ops::Deref for FakeQueue {
    type Target = DriverQueue;

    fn deref(&self) -> &DriverQueue {
        &self.driver
    }
}

impl std::ops::DerefMut for FakeQueue {
    fn deref_mut(&mut self) -> &mut DriverQueue {
        &mut self.driver
    }
}

/// A packet the guest received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Received {
    pub(super) header: Header,
    pub(super) payload: Vec<u8>,
}

/// A temporary directory, removed with its contents on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "petrel-vsock-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The device, its event loop and a fake driver.
pub(super) struct Harness {
    pub(super) dev: Arc<Mutex<Vsock>>,
    manager: EventManager<Arc<Mutex<Vsock>>>,
    pub(super) mem: GuestMemoryMmap,
    pub(super) irq: Arc<RecordingInterrupt>,
    pub(super) rx: FakeQueue,
    pub(super) tx: FakeQueue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    /// Receive chain head → buffer address.
    rx_posted: HashMap<u16, u64>,
    rx_slot: u64,
    tx_slot: u64,
    /// The guest's `buf_alloc` in the packets it sends.
    pub(super) buf_alloc: u32,
    pub(super) dir: TempDir,
    /// Whether [`Self::pump`] polls without waiting (for tests that need no timers).
    pub(super) quick: bool,
}

impl Harness {
    pub(super) fn new() -> Self {
        let dir = TempDir::new();
        let vsock = Vsock::new(VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: dir.0.join("v.sock"),
        })
        .unwrap();
        let dev = Arc::new(Mutex::new(vsock));
        let mut manager: EventManager<Arc<Mutex<Vsock>>> = EventManager::new().unwrap();
        manager.add_subscriber(dev.clone());
        let mem = guest_memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let (rx, tx, rx_notify, tx_notify) = Self::start(&dev, &mem, &irq);
        let mut harness = Self {
            dev,
            manager,
            mem,
            irq,
            rx,
            tx,
            rx_notify,
            tx_notify,
            rx_posted: HashMap::new(),
            rx_slot: 0,
            tx_slot: 0,
            buf_alloc: 1 << 20,
            dir,
            quick: false,
        };
        harness.pump();
        harness
    }

    /// Activates the device on fresh (zeroed) rings: (receive queue, transmit queue, and
    /// their notification eventfds).
    fn start(
        dev: &Mutex<Vsock>,
        mem: &GuestMemoryMmap,
        irq: &Arc<RecordingInterrupt>,
    ) -> (FakeQueue, FakeQueue, EventFd, EventFd) {
        let rx = FakeQueue::new(mem, 0x1_0000);
        let tx = FakeQueue::new(mem, 0x1_4000);
        let event = FakeQueue::new(mem, 0x1_8000);
        let rx_notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let tx_notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut vsock = dev.lock().unwrap();
        vsock.grace = std::time::Duration::from_millis(100);
        vsock.ack_features(FEATURE_VERSION_1);
        let queues = vec![
            ActiveQueue {
                queue: rx.device_queue(),
                notify: rx_notify.try_clone().unwrap(),
            },
            ActiveQueue {
                queue: tx.device_queue(),
                notify: tx_notify.try_clone().unwrap(),
            },
            ActiveQueue {
                queue: event.device_queue(),
                notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            },
        ];
        vsock.activate(mem.clone(), irq.clone(), queues).unwrap();
        (rx, tx, rx_notify, tx_notify)
    }

    /// The driver resets the device and sets it up again on fresh rings, with a fresh
    /// interrupt recorder.
    pub(super) fn reactivate(&mut self) {
        assert!(self.dev().reset());
        self.pump();
        self.irq = Arc::new(RecordingInterrupt::default());
        (self.rx, self.tx, self.rx_notify, self.tx_notify) =
            Self::start(&self.dev, &self.mem, &self.irq);
        self.rx_posted.clear();
        self.pump();
    }

    /// The ranges `[start, end)` of the three queues' rings.
    pub(super) fn rings() -> (u64, u64) {
        (0x1_0000, 0x1_b000)
    }

    pub(super) fn dev(&self) -> MutexGuard<'_, Vsock> {
        self.dev.lock().unwrap()
    }

    pub(super) fn uds_path(&self) -> PathBuf {
        self.dir.0.join("v.sock")
    }

    /// Runs the event loop until nothing happens for a few milliseconds. A device that keeps
    /// the loop busy (a busy loop) fails the test.
    pub(super) fn pump(&mut self) {
        let timeout = if self.quick { 0 } else { 5 };
        for _ in 0..2000 {
            if self.manager.run_with_timeout(timeout).unwrap() == 0 {
                return;
            }
        }
        panic!("the event loop never went quiet: busy loop");
    }

    /// Runs the event loop for about `ms` milliseconds (for timers).
    pub(super) fn pump_for(&mut self, ms: u64) {
        let end = std::time::Instant::now() + std::time::Duration::from_millis(ms);
        while std::time::Instant::now() < end {
            self.manager.run_with_timeout(5).unwrap();
        }
        self.pump();
    }

    /// Posts `count` receive buffers of [`RX_BUF`] bytes and notifies the device.
    pub(super) fn post_rx(&mut self, count: usize) {
        for _ in 0..count {
            let addr = RX_AREA + (self.rx_slot % RX_SLOTS) * u64::from(RX_BUF);
            self.rx_slot += 1;
            let head = self
                .rx
                .add_chain(&[crate::virtio::test_utils::writable(addr, RX_BUF)]);
            self.rx_posted.insert(head, addr);
        }
        self.rx_notify.write(1).unwrap();
        self.pump();
    }

    /// Posts a hand-made receive chain (not tracked by [`Self::recv`]).
    pub(super) fn post_rx_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.rx.add_chain(bufs);
        self.rx_notify.write(1).unwrap();
        head
    }

    /// The packets the device put in the receive queue since the last call.
    pub(super) fn recv(&mut self) -> Vec<Received> {
        self.recv_or(|head, _| panic!("chain {head} is not a posted receive chain"))
    }

    /// Like [`Self::recv`], but used entries of chains the harness did not post go to
    /// `other` (head, length).
    pub(super) fn recv_or(&mut self, mut other: impl FnMut(u16, u32)) -> Vec<Received> {
        let mut out = Vec::new();
        for (head, len) in self.rx.take_used() {
            let Some(addr) = self.rx_posted.remove(&head) else {
                other(head, len);
                continue;
            };
            assert!(len as usize >= HDR_LEN, "used length {len}");
            let mut raw = [0u8; HDR_LEN];
            self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
            let header = Header::from_bytes(&raw);
            let mut payload = vec![0u8; len as usize - HDR_LEN];
            self.mem
                .read_slice(&mut payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            assert_eq!(header.len as usize, payload.len(), "{header:?}");
            out.push(Received { header, payload });
        }
        out
    }

    /// A header from the guest (CID 3) to the host (CID 2).
    pub(super) fn header(&self, op: u16, guest_port: u32, host_port: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: guest_port,
            dst_port: host_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: self.buf_alloc,
            fwd_cnt: 0,
        }
    }

    /// Puts a packet in the transmit queue without notifying.
    pub(super) fn queue_packet(&mut self, header: Header, payload: &[u8]) {
        let addr = TX_AREA + (self.tx_slot % TX_SLOTS) * TX_SLOT;
        self.tx_slot += 1;
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
        self.tx.add_chain(&[crate::virtio::test_utils::readable(
            addr,
            bytes.len() as u32,
        )]);
    }

    /// Sends a packet and runs the device.
    pub(super) fn send(&mut self, header: Header, payload: &[u8]) {
        self.queue_packet(header, payload);
        self.notify_tx();
    }

    /// Sends a hand-made transmit chain and runs the device.
    pub(super) fn send_chain(&mut self, bufs: &[Buf]) {
        self.tx.add_chain(bufs);
        self.notify_tx();
    }

    pub(super) fn notify_rx(&mut self) {
        self.rx_notify.write(1).unwrap();
        self.pump();
    }

    pub(super) fn notify_tx(&mut self) {
        self.tx_notify.write(1).unwrap();
        self.pump();
    }

    /// Sends `data` on a connection as RW packets.
    pub(super) fn send_rw(&mut self, guest_port: u32, host_port: u32, fwd_cnt: u32, data: &[u8]) {
        let mut header = self.header(OP_RW, guest_port, host_port);
        header.len = data.len() as u32;
        header.fwd_cnt = fwd_cnt;
        self.send(header, data);
    }

    /// Connects a host program to the device's socket and sends `CONNECT <port>`.
    pub(super) fn host_connect(&mut self, port: u32) -> UnixStream {
        use std::io::Write;
        let mut stream = UnixStream::connect(self.uds_path()).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        writeln!(stream, "CONNECT {port}").unwrap();
        self.pump();
        stream
    }
}

/// Byte `i` of the test pattern.
pub(super) fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len).map(|i| (i % 251) as u8).collect()
}
