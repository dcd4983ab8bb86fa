//! The virtio-rng device: its features and the [`VirtioDevice`] implementation.

use std::sync::Arc;

use super::{RngError, QUEUE_SIZE};
use crate::report::ErrorLog;
use crate::virtio::device_queues::DeviceQueues;
use crate::virtio::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1, TYPE_RNG,
};
use petrel_memory::GuestMemoryMmap;

/// A virtio-rng device backed by the host's `getrandom(2)`.
///
/// Put it behind a transport as an `Arc<Mutex<Rng>>`, and register the same `Arc` with the
/// VMM's `event-manager` (it is a `MutEventSubscriber`): the event loop then serves its
/// requests. See the [module documentation](super).
pub struct Rng {
    acked_features: u64,
    /// The queue, its activation and its link to the event loop.
    pub(super) queues: DeviceQueues,
    /// Requests the guest got wrong so far (the first is logged at warning level).
    pub(super) bad_requests: u64,
    /// Bytes of entropy given to the guest since the device was created.
    pub(super) bytes_served: u64,
    pub(super) entropy_errors: ErrorLog,
}

impl Rng {
    /// Builds the device. Fails only if its eventfd cannot be created.
    pub fn new() -> Result<Self, RngError> {
        Ok(Self {
            acked_features: 0,
            queues: DeviceQueues::new("virtio-rng".to_string(), 1, &[0], "virtio-rng interrupt")
                .map_err(RngError::EventFd)?,
            bad_requests: 0,
            bytes_served: 0,
            entropy_errors: ErrorLog::new("virtio-rng getrandom"),
        })
    }

    /// The features the driver accepted (0 before negotiation and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver has started the device.
    pub fn is_active(&self) -> bool {
        self.queues.is_active()
    }

    /// Bytes of entropy the device has written into guest memory since it was created.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        FEATURE_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & FEATURE_VERSION_1;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-rng: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.queues.activate(mem, interrupt, queues)
    }

    fn disable_queue(&mut self, index: u16) {
        // `process_queue` leaves a queue that is not ready alone.
        self.queues.disable_queue(index);
    }

    fn reset(&mut self) -> bool {
        self.queues.reset();
        self.acked_features = 0;
        true
    }
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.queues.is_active())
            .field("bytes_served", &self.bytes_served)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{guest_memory, DriverQueue, RecordingInterrupt};

    #[test]
    fn only_version_1_and_no_config_space() {
        let mut rng = Rng::new().unwrap();
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), [256]);
        assert_eq!(rng.avail_features(), FEATURE_VERSION_1);
        rng.ack_features(FEATURE_VERSION_1 | 1 << 29);
        assert_eq!(rng.acked_features(), FEATURE_VERSION_1);
        let mut data = [0xffu8; 8];
        rng.read_config(0, &mut data);
        assert_eq!(data, [0; 8]);
        rng.write_config(0, &[1, 2, 3]);
        rng.read_config(u64::MAX, &mut data);
        assert_eq!(data, [0; 8]);
    }

    #[test]
    fn activation_needs_exactly_one_ready_queue() {
        let mut rng = Rng::new().unwrap();
        let mem = guest_memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let driver = DriverQueue::new(&mem, 16);
        let queue = |ready| driver.active_queue(ready);
        assert!(matches!(
            rng.activate(mem.clone(), irq.clone(), vec![queue(true), queue(true)]),
            Err(ActivateError::QueueCount { got: 2, .. })
        ));
        assert!(matches!(
            rng.activate(mem.clone(), irq.clone(), vec![queue(false)]),
            Err(ActivateError::QueueNotReady { index: 0 })
        ));
        assert!(!rng.is_active());
        rng.activate(mem.clone(), irq.clone(), vec![queue(true)])
            .unwrap();
        assert!(rng.is_active());
        assert_eq!(rng.queues.state_changed.read().unwrap(), 1);
        assert!(matches!(
            rng.activate(mem.clone(), irq.clone(), vec![queue(true)]),
            Err(ActivateError::AlreadyActive)
        ));
        assert!(rng.reset());
        assert!(!rng.is_active());
        assert_eq!(rng.acked_features(), 0);
        rng.activate(mem, irq, vec![queue(true)]).unwrap();
    }
}
