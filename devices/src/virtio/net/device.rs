//! The virtio-net device: features, configuration space, MAC, and the [`VirtioDevice`]
//! implementation.

use std::sync::Arc;

use virtio_bindings::virtio_net as vn;

use super::tap::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use super::{NetError, MAX_TX_CHAIN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::report::ErrorLog;
use crate::virtio::device_queues::DeviceQueues;
use crate::virtio::{
    read_config_bytes, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
    FEATURE_VERSION_1, TYPE_NET,
};
use petrel_memory::GuestMemoryMmap;

const fn bit(n: u32) -> u64 {
    1 << n
}

/// The features the device offers.
pub(super) const AVAIL_FEATURES: u64 = FEATURE_VERSION_1
    | bit(vn::VIRTIO_NET_F_MAC)
    | bit(vn::VIRTIO_NET_F_STATUS)
    | bit(vn::VIRTIO_NET_F_CSUM)
    | bit(vn::VIRTIO_NET_F_GUEST_CSUM)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO4)
    | bit(vn::VIRTIO_NET_F_GUEST_TSO6)
    | bit(vn::VIRTIO_NET_F_GUEST_UFO)
    | bit(vn::VIRTIO_NET_F_HOST_TSO4)
    | bit(vn::VIRTIO_NET_F_HOST_TSO6)
    | bit(vn::VIRTIO_NET_F_HOST_UFO)
    | bit(vn::VIRTIO_NET_F_MRG_RXBUF);

/// Configuration space: `mac` (6 bytes) and `status` (le16). `max_virtqueue_pairs` exists
/// only with `VIRTIO_NET_F_MQ`, which is not offered.
const CONFIG_LEN: usize = 8;

/// The `TUN_F_*` offloads matching the receive features the driver accepted. Segmentation
/// offloads need checksum offload (virtio 1.2 section 5.1.3.1), so without `GUEST_CSUM`
/// nothing is enabled.
pub(super) fn tap_offloads(features: u64) -> u32 {
    if features & bit(vn::VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    for (feature, flag) in [
        (vn::VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
        (vn::VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
        (vn::VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
    ] {
        if features & bit(feature) != 0 {
            flags |= flag;
        }
    }
    flags
}

/// A stable, locally administered, unicast MAC derived from `seed` (64-bit FNV-1a, which,
/// unlike `std`'s hasher, never changes between builds): bit 1 of the first octet set
/// (locally administered), bit 0 clear (unicast).
pub fn generated_mac(seed: &str) -> [u8; 6] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"petrel-net:".iter().chain(seed.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let [a, b, c, d, e, f, ..] = hash.to_be_bytes();
    [(a & 0xfc) | 0x02, b, c, d, e, f]
}

/// Frame counters, since the device was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest sent that reached the backend.
    pub tx_frames: u64,
    /// Bytes of those frames (without header).
    pub tx_bytes: u64,
    /// Transmit chains dropped: malformed, oversized, or refused by the backend.
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames (without header).
    pub rx_bytes: u64,
    /// Frames from the backend dropped: too big for the guest's buffers, or malformed.
    pub rx_dropped: u64,
    /// Receive chains the guest got wrong (completed with used length 0).
    pub rx_bad_chains: u64,
}

/// A virtio-net device in front of a [`NetBackend`] (normally a [`Tap`](super::Tap)).
///
/// Put it behind a transport as an `Arc<Mutex<Net<B>>>`, and register the same `Arc` with the
/// VMM's `event-manager` (it is a `MutEventSubscriber`). See the [module documentation](super).
pub struct Net<B: NetBackend> {
    pub(super) backend: B,
    mac: [u8; 6],
    pub(super) acked_features: u64,
    /// The two queues, their activation and their link to the event loop.
    pub(super) queues: DeviceQueues,
    /// Whether the event loop watches the backend's fd.
    pub(super) backend_watched: bool,
    /// Whether the receive path wants the backend's fd watched (it has buffers to fill).
    pub(super) rx_wants_backend: bool,
    /// A frame read from the backend, waiting for receive buffers: its length in `rx_buf`.
    pub(super) rx_pending: Option<usize>,
    pub(super) rx_buf: Vec<u8>,
    pub(super) tx_buf: Vec<u8>,
    pub(super) stats: NetStats,
    pub(super) backend_errors: ErrorLog,
}

impl<B: NetBackend> Net<B> {
    /// Builds the device around `backend`. Without `mac`, the MAC is
    /// [`generated_mac`]`(backend.name())`. Fails only if its eventfd cannot be created.
    pub fn new(backend: B, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let mac = mac.unwrap_or_else(|| generated_mac(backend.name()));
        let queues = DeviceQueues::new(
            format!("virtio-net {}", backend.name()),
            2,
            &[RX_QUEUE, TX_QUEUE],
            "virtio-net interrupt",
        )
        .map_err(NetError::EventFd)?;
        Ok(Self {
            backend,
            mac,
            acked_features: 0,
            queues,
            backend_watched: false,
            rx_wants_backend: false,
            rx_pending: None,
            // One byte more than the largest frame, to recognise a longer one.
            rx_buf: vec![0; MAX_TX_CHAIN + 1],
            tx_buf: Vec::with_capacity(MAX_TX_CHAIN),
            stats: NetStats::default(),
            backend_errors: ErrorLog::new("virtio-net backend"),
        })
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The features the driver accepted (0 before negotiation and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver has started the device.
    pub fn is_active(&self) -> bool {
        self.queues.is_active()
    }

    /// Frame counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub(super) fn has_feature(&self, feature: u32) -> bool {
        self.acked_features & bit(feature) != 0
    }

    fn apply_offloads(&mut self) {
        let flags = tap_offloads(self.acked_features);
        if let Err(e) = self.backend.set_offload(flags) {
            log::warn!(
                "virtio-net {}: cannot set offloads {flags:#x}: {e}",
                self.backend.name()
            );
        }
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & AVAIL_FEATURES;
        self.apply_offloads();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&(vn::VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only in virtio 1.x (writable only with the legacy interface).
        log::debug!(
            "virtio-net: ignored {}-byte config write at {offset:#x}",
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
        self.rx_pending = None;
        self.rx_wants_backend = true;
        Ok(())
    }

    fn disable_queue(&mut self, index: u16) {
        // The event loop leaves a queue that is not ready alone.
        self.queues.disable_queue(index);
    }

    fn reset(&mut self) -> bool {
        self.queues.reset();
        self.acked_features = 0;
        self.rx_pending = None;
        self.rx_wants_backend = false;
        self.apply_offloads();
        true
    }
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("backend", &self.backend.name())
            .field("mac", &self.mac)
            .field("active", &self.queues.is_active())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::fake::FakeBackend;
    use crate::virtio::test_utils::{guest_memory, DriverQueue, RecordingInterrupt};

    fn f(n: u32) -> u64 {
        bit(n)
    }

    #[test]
    fn type_queues_and_features() {
        let net = Net::new(FakeBackend::new(), None).unwrap();
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes(), [256, 256]);
        let features = net.avail_features();
        for feature in [
            vn::VIRTIO_NET_F_MAC,
            vn::VIRTIO_NET_F_CSUM,
            vn::VIRTIO_NET_F_GUEST_CSUM,
            vn::VIRTIO_NET_F_GUEST_TSO4,
            vn::VIRTIO_NET_F_GUEST_TSO6,
            vn::VIRTIO_NET_F_GUEST_UFO,
            vn::VIRTIO_NET_F_HOST_TSO4,
            vn::VIRTIO_NET_F_HOST_TSO6,
            vn::VIRTIO_NET_F_HOST_UFO,
            vn::VIRTIO_NET_F_MRG_RXBUF,
            vn::VIRTIO_NET_F_STATUS,
        ] {
            assert_ne!(features & f(feature), 0, "feature {feature}");
        }
        assert_ne!(features & FEATURE_VERSION_1, 0);
        for absent in [
            vn::VIRTIO_NET_F_MQ,
            vn::VIRTIO_NET_F_CTRL_VQ,
            vn::VIRTIO_NET_F_GUEST_ECN,
            vn::VIRTIO_NET_F_HOST_ECN,
        ] {
            assert_eq!(features & f(absent), 0, "feature {absent}");
        }
    }

    #[test]
    fn config_space_has_the_mac_and_link_up() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let net = Net::new(FakeBackend::new(), Some(mac)).unwrap();
        assert_eq!(net.mac(), mac);
        let mut data = [0xffu8; 12];
        net.read_config(0, &mut data);
        assert_eq!(data, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 1, 0, 0, 0, 0, 0]);
        let mut status = [0u8; 2];
        net.read_config(6, &mut status);
        assert_eq!(u16::from_le_bytes(status), 1, "VIRTIO_NET_S_LINK_UP");
        net.read_config(u64::MAX, &mut status);
        assert_eq!(status, [0, 0]);
        // The MAC is read-only.
        let mut net = net;
        net.write_config(0, &[0; 6]);
        let mut data = [0u8; 6];
        net.read_config(0, &mut data);
        assert_eq!(data, mac);
    }

    #[test]
    fn generated_macs_are_stable_local_unicast_and_distinct() {
        let net = Net::new(FakeBackend::new(), None).unwrap();
        assert_eq!(net.mac(), generated_mac("fake0"));
        assert_eq!(generated_mac("tap0"), generated_mac("tap0"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let mac = generated_mac(&format!("tap{i}"));
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered: {mac:02x?}");
            assert_eq!(mac[0] & 0x01, 0, "unicast: {mac:02x?}");
            assert!(seen.insert(mac), "collision at tap{i}");
        }
        // The value itself is part of the contract (a guest keeps its MAC across petrel
        // versions): FNV-1a of "petrel-net:tap0".
        assert_eq!(generated_mac("tap0"), [0xca, 0x4d, 0xca, 0x63, 0xb1, 0x27]);
    }

    #[test]
    fn negotiated_receive_offloads_reach_the_backend() {
        let backend = FakeBackend::new();
        let state = backend.state.clone();
        let mut net = Net::new(backend, None).unwrap();
        net.ack_features(
            FEATURE_VERSION_1
                | f(vn::VIRTIO_NET_F_GUEST_CSUM)
                | f(vn::VIRTIO_NET_F_GUEST_TSO4)
                | f(vn::VIRTIO_NET_F_GUEST_UFO)
                | f(vn::VIRTIO_NET_F_HOST_TSO6)
                | f(vn::VIRTIO_NET_F_MQ),
        );
        assert_eq!(
            state.lock().unwrap().offload,
            Some(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_UFO)
        );
        assert_eq!(net.acked_features() & f(vn::VIRTIO_NET_F_MQ), 0);
        // Segmentation without checksum offload is not valid: nothing is enabled.
        net.ack_features(FEATURE_VERSION_1 | f(vn::VIRTIO_NET_F_GUEST_TSO6));
        assert_eq!(state.lock().unwrap().offload, Some(0));
        net.ack_features(
            FEATURE_VERSION_1 | f(vn::VIRTIO_NET_F_GUEST_CSUM) | f(vn::VIRTIO_NET_F_GUEST_TSO6),
        );
        assert_eq!(state.lock().unwrap().offload, Some(TUN_F_CSUM | TUN_F_TSO6));
        // A reset turns them off again.
        assert!(net.reset());
        assert_eq!(state.lock().unwrap().offload, Some(0));
        assert_eq!(net.acked_features(), 0);
    }

    #[test]
    fn activation_needs_two_ready_queues() {
        let mut net = Net::new(FakeBackend::new(), None).unwrap();
        let mem = guest_memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let driver = DriverQueue::new(&mem, 16);
        let queue = |ready| driver.active_queue(ready);
        assert!(matches!(
            net.activate(mem.clone(), irq.clone(), vec![queue(true)]),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            net.activate(mem.clone(), irq.clone(), vec![queue(true), queue(false)]),
            Err(ActivateError::QueueNotReady { index: 1 })
        ));
        assert!(!net.is_active());
        net.activate(mem.clone(), irq.clone(), vec![queue(true), queue(true)])
            .unwrap();
        assert!(net.is_active());
        assert_eq!(net.queues.state_changed.read().unwrap(), 1);
        assert!(matches!(
            net.activate(mem.clone(), irq.clone(), vec![queue(true), queue(true)]),
            Err(ActivateError::AlreadyActive)
        ));
        assert!(net.reset());
        assert!(!net.is_active());
        net.activate(mem, irq, vec![queue(true), queue(true)])
            .unwrap();
    }
}
