//! The virtio-vsock device: configuration, host socket, statistics and the [`VirtioDevice`]
//! implementation.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{Connection, Key};
use super::packet::HDR_LEN;
use super::unix::{bind_listener, BoundSocket, ConnectLine};
use super::{
    VsockConfig, VsockError, FIRST_HOST_PORT, GRACE_PERIOD, MAX_GUEST_CID, MAX_PKT_LEN,
    MIN_GUEST_CID, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use crate::virtio::device_queues::DeviceQueues;
use crate::virtio::{
    read_config_bytes, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
    FEATURE_VERSION_1, TYPE_VSOCK,
};
use petrel_memory::GuestMemoryMmap;

/// Inner-epoll token of the listening socket.
pub(super) const TOKEN_LISTENER: u64 = 1;
/// Inner-epoll token of the grace-period timer.
pub(super) const TOKEN_TIMER: u64 = 2;
/// Connection tokens start here.
pub(super) const FIRST_CONN_TOKEN: u64 = 16;

/// Counters, since the device was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockStats {
    /// Host-initiated connections the guest accepted.
    pub host_connections: u64,
    /// Guest-initiated connections that reached a host listener.
    pub guest_connections: u64,
    /// Host connections closed because of a bad `CONNECT` line.
    pub bad_connect_lines: u64,
    /// Guest requests refused because nobody listened on `<uds_path>_<port>` (or too many
    /// connections).
    pub refused_guest_connections: u64,
    /// Payload bytes from the guest written to host streams.
    pub guest_to_host_bytes: u64,
    /// Payload bytes from host streams delivered to the guest.
    pub host_to_guest_bytes: u64,
    /// Transmit packets dropped: malformed chains or headers, or a wrong source CID.
    pub tx_dropped: u64,
    /// `OP_RST`s sent because of bad guest input: packets for no connection, wrong
    /// destination, type or operation, and protocol violations.
    pub bad_packet_resets: u64,
    /// Receive chains the guest got wrong (completed with used length 0).
    pub rx_bad_chains: u64,
    /// Packets delivered to the guest (any operation).
    pub rx_packets: u64,
    /// Packets taken from the guest's transmit queue (any outcome).
    pub tx_packets: u64,
}

/// A host program connected to the listening socket that has not finished its `CONNECT`
/// line.
#[derive(Debug)]
pub(super) struct PendingHost {
    pub(super) stream: UnixStream,
    pub(super) line: ConnectLine,
}

/// A control packet waiting for a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Control {
    /// The CID the packet comes from: the host's, or the one a refused packet was sent to.
    pub(super) src_cid: u64,
    pub(super) key: Key,
    pub(super) op: u16,
    pub(super) flags: u32,
}

/// A virtio-vsock device with Firecracker's hybrid Unix-socket host side.
///
/// Put it behind a transport as an `Arc<Mutex<Vsock>>`, and register the same `Arc` with the
/// VMM's `event-manager` (it is a `MutEventSubscriber`). Dropping it removes the socket file.
/// See the [module documentation](super).
pub struct Vsock {
    pub(super) guest_cid: u64,
    pub(super) uds_path: PathBuf,
    pub(super) listener: UnixListener,
    bound: BoundSocket,
    acked_features: u64,
    /// The three queues, their activation and their link to the event loop (which watches
    /// the receive and transmit queues' eventfds, not the event queue's).
    pub(super) queues: DeviceQueues,
    /// The device's own epoll instance: the listener, the timer and every host stream. The
    /// event loop watches only its fd.
    pub(super) epoll: Epoll,
    pub(super) timer: TimerFd,
    /// The deadline the timer is set for.
    pub(super) timer_armed: Option<Instant>,
    pub(super) listener_watched: bool,
    pub(super) conns: HashMap<u64, Connection>,
    pub(super) by_key: HashMap<Key, u64>,
    pub(super) pending: HashMap<u64, PendingHost>,
    pub(super) next_token: u64,
    pub(super) next_host_port: u32,
    /// Control packets waiting for receive buffers.
    pub(super) control: VecDeque<Control>,
    /// Connections whose host stream may have data for the guest, in turn.
    pub(super) data_ready: VecDeque<u64>,
    /// The receive queue had no usable buffer; wait for the driver's notification.
    pub(super) rx_starved: bool,
    /// The transmit queue was left alone because the control backlog is long.
    pub(super) tx_paused: bool,
    /// One packet: header and the largest payload.
    pub(super) pkt_buf: Vec<u8>,
    /// [`GRACE_PERIOD`](super::GRACE_PERIOD); shorter in tests.
    pub(super) grace: std::time::Duration,
    pub(super) stats: VsockStats,
}

impl Vsock {
    /// Builds the device and starts listening on `config.uds_path` (see the
    /// [module documentation](super) for what happens to an existing file there).
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        let VsockConfig {
            guest_cid,
            uds_path,
        } = config;
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let queues = DeviceQueues::new(
            format!("virtio-vsock {}", uds_path.display()),
            3,
            &[RX_QUEUE, TX_QUEUE],
            "virtio-vsock interrupt",
        )
        .map_err(|e| VsockError::Resource("eventfd", e))?;
        let epoll = Epoll::new().map_err(|e| VsockError::Resource("epoll instance", e))?;
        let timer =
            TimerFd::new().map_err(|e| VsockError::Resource("timer", std::io::Error::from(e)))?;
        epoll
            .ctl(
                ControlOperation::Add,
                timer.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_TIMER),
            )
            .map_err(|e| VsockError::Resource("timer", e))?;
        let (listener, bound) = bind_listener(&uds_path)?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            bound,
            acked_features: 0,
            queues,
            epoll,
            timer,
            timer_armed: None,
            listener_watched: false,
            conns: HashMap::new(),
            by_key: HashMap::new(),
            pending: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            next_host_port: FIRST_HOST_PORT,
            control: VecDeque::new(),
            data_ready: VecDeque::new(),
            rx_starved: false,
            tx_paused: false,
            pkt_buf: vec![0; HDR_LEN + MAX_PKT_LEN as usize],
            grace: GRACE_PERIOD,
            stats: VsockStats::default(),
        })
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The socket host programs connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The features the driver accepted (0 before negotiation and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver has started the device.
    pub fn is_active(&self) -> bool {
        self.queues.is_active()
    }

    /// Open connections (host programs still sending `CONNECT` not included).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Counters.
    pub fn stats(&self) -> VsockStats {
        self.stats
    }

    /// Closes every connection and pending host program, forgets queued packets, and stops
    /// listening (until the next activation).
    pub(super) fn close_everything(&mut self) {
        for (_, conn) in self.conns.drain() {
            if conn.registered.is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
        for (_, pending) in self.pending.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                pending.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.by_key.clear();
        self.control.clear();
        self.data_ready.clear();
        self.rx_starved = false;
        self.tx_paused = false;
        self.set_listener_watch(false);
    }

    /// Starts or stops watching the listening socket.
    pub(super) fn set_listener_watch(&mut self, want: bool) {
        if want == self.listener_watched {
            return;
        }
        let result = if want {
            self.epoll.ctl(
                ControlOperation::Add,
                self.listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
        } else {
            self.epoll.ctl(
                ControlOperation::Delete,
                self.listener.as_raw_fd(),
                EpollEvent::default(),
            )
        };
        match result {
            Ok(()) => self.listener_watched = want,
            Err(e) => log::warn!(
                "virtio-vsock {}: cannot {} the listening socket: {e}",
                self.uds_path.display(),
                if want { "watch" } else { "stop watching" }
            ),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & FEATURE_VERSION_1;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-vsock: ignored {}-byte config write at {offset:#x} (guest_cid is read-only)",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.queues.activate(mem, interrupt, queues)?;
        self.set_listener_watch(true);
        Ok(())
    }

    fn disable_queue(&mut self, index: u16) {
        // The event loop leaves a queue that is not ready alone (and never uses the event
        // queue).
        self.queues.disable_queue(index);
    }

    fn reset(&mut self) -> bool {
        // The guest's sockets are gone with its driver: every host stream is closed.
        self.close_everything();
        self.acked_features = 0;
        self.queues.reset();
        true
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.bound.remove();
    }
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.uds_path)
            .field("active", &self.queues.is_active())
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::virtio::test_utils::{guest_memory, DriverQueue, RecordingInterrupt};
    use crate::virtio::vsock::fake::TempDir;
    use crate::virtio::vsock::HOST_CID;

    fn config(dir: &TempDir, cid: u64) -> VsockConfig {
        VsockConfig {
            guest_cid: cid,
            uds_path: dir.0.join("v.sock"),
        }
    }

    #[test]
    fn type_queues_features_and_config_space() {
        let dir = TempDir::new();
        let mut vsock = Vsock::new(config(&dir, 0xFEDC_BA98)).unwrap();
        assert_eq!(vsock.device_type(), 19);
        assert_eq!(vsock.queue_max_sizes(), [256, 256, 256]);
        assert_eq!(vsock.avail_features(), FEATURE_VERSION_1);
        vsock.ack_features(FEATURE_VERSION_1 | 1 << 29 | 1);
        assert_eq!(vsock.acked_features(), FEATURE_VERSION_1);
        let mut data = [0xffu8; 12];
        vsock.read_config(0, &mut data);
        assert_eq!(data, [0x98, 0xba, 0xdc, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut high = [0u8; 4];
        vsock.read_config(4, &mut high);
        assert_eq!(high, [0, 0, 0, 0]);
        vsock.read_config(2, &mut high);
        assert_eq!(high, [0xdc, 0xfe, 0, 0]);
        vsock.read_config(u64::MAX, &mut high);
        assert_eq!(high, [0; 4]);
        // guest_cid is read-only.
        vsock.write_config(0, &[9; 8]);
        vsock.read_config(0, &mut data[..8]);
        assert_eq!(
            u64::from_le_bytes(data[..8].try_into().unwrap()),
            0xFEDC_BA98
        );
        assert_eq!(vsock.guest_cid(), 0xFEDC_BA98);
        assert_eq!(vsock.uds_path(), dir.0.join("v.sock"));
        assert_eq!(vsock.stats(), VsockStats::default());
    }

    #[test]
    fn reserved_and_oversized_cids_are_refused() {
        let dir = TempDir::new();
        for cid in [0, 1, HOST_CID, 0xFFFF_FFFF, u64::MAX] {
            assert!(
                matches!(Vsock::new(config(&dir, cid)), Err(VsockError::InvalidCid(c)) if c == cid),
                "{cid}"
            );
        }
        assert!(!dir.0.join("v.sock").exists(), "nothing bound");
        Vsock::new(config(&dir, 3)).unwrap();
        Vsock::new(config(&dir, 0xFFFF_FFFE)).unwrap();
    }

    #[test]
    fn the_socket_file_is_created_replaced_when_stale_and_removed_on_drop() {
        let dir = TempDir::new();
        let path = dir.0.join("v.sock");
        let vsock = Vsock::new(config(&dir, 3)).unwrap();
        assert!(path.exists());
        // Someone listens: a second device refuses the path.
        assert!(matches!(
            Vsock::new(config(&dir, 4)),
            Err(VsockError::InUse(_))
        ));
        drop(vsock);
        assert!(!path.exists(), "removed on drop");

        // A stale socket (its listener gone without removing it) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let vsock = Vsock::new(config(&dir, 3)).unwrap();
        UnixStream::connect(&path).expect("the new listener answers");
        drop(vsock);

        // Anything other than a socket is left alone.
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(
            Vsock::new(config(&dir, 3)),
            Err(VsockError::NotASocket(_))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        std::fs::remove_file(&path).unwrap();

        // A file put in place of the device's socket is not removed on drop.
        let vsock = Vsock::new(config(&dir, 3)).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        drop(vsock);
        assert_eq!(std::fs::read(&path).unwrap(), b"someone else's");

        // A directory that does not exist is an error, not a panic.
        let missing = VsockConfig {
            guest_cid: 3,
            uds_path: dir.0.join("no/such/dir/v.sock"),
        };
        assert!(matches!(Vsock::new(missing), Err(VsockError::Bind(..))));
    }

    #[test]
    fn activation_needs_three_ready_queues() {
        let dir = TempDir::new();
        let mut vsock = Vsock::new(config(&dir, 3)).unwrap();
        let mem = guest_memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let driver = DriverQueue::new(&mem, 16);
        let queue = |ready| driver.active_queue(ready);
        assert!(matches!(
            vsock.activate(mem.clone(), irq.clone(), vec![queue(true), queue(true)]),
            Err(ActivateError::QueueCount {
                expected: 3,
                got: 2
            })
        ));
        assert!(matches!(
            vsock.activate(
                mem.clone(),
                irq.clone(),
                vec![queue(true), queue(true), queue(false)]
            ),
            Err(ActivateError::QueueNotReady { index: 2 })
        ));
        assert!(!vsock.is_active());
        assert!(!vsock.listener_watched);
        vsock
            .activate(
                mem.clone(),
                irq.clone(),
                vec![queue(true), queue(true), queue(true)],
            )
            .unwrap();
        assert!(vsock.is_active());
        assert!(
            vsock.listener_watched,
            "host connections accepted while active"
        );
        assert_eq!(vsock.queues.state_changed.read().unwrap(), 1);
        assert!(matches!(
            vsock.activate(
                mem.clone(),
                irq.clone(),
                vec![queue(true), queue(true), queue(true)]
            ),
            Err(ActivateError::AlreadyActive)
        ));
        assert!(vsock.reset());
        assert!(!vsock.is_active());
        assert!(!vsock.listener_watched);
        assert_eq!(vsock.acked_features(), 0);
        vsock
            .activate(mem, irq, vec![queue(true), queue(true), queue(true)])
            .unwrap();
    }
}
