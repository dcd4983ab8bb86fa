//! The virtio-rng device: its features and the [`VirtioDevice`] implementation.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{RngError, QUEUE_SIZE};
use crate::report::ErrorLog;
use crate::virtio::{
    ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, FEATURE_VERSION_1, TYPE_RNG,
};
use petrel_memory::GuestMemoryMmap;

/// The state of an activated device, used by the event loop.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
    pub(super) queue: Queue,
    pub(super) notify: EventFd,
    /// The queue hit an error only a reset clears; it is not used until then.
    pub(super) broken: bool,
}

/// A virtio-rng device backed by the host's `getrandom(2)`.
///
/// Put it behind a transport as an `Arc<Mutex<Rng>>`, and register the same `Arc` with the
/// VMM's `event-manager` (it is a `MutEventSubscriber`): the event loop then serves its
/// requests. See the [module documentation](super).
pub struct Rng {
    acked_features: u64,
    /// Written on activation and reset so the event loop re-reads the device's state.
    pub(super) state_changed: EventFd,
    pub(super) active: Option<Active>,
    /// How many times the device was activated, so the event loop can tell a new queue
    /// eventfd from the one it watches.
    pub(super) activations: u64,
    /// The queue eventfd the event loop watches, and the activation it belongs to.
    pub(super) watched: Option<(u64, EventFd)>,
    /// Requests the guest got wrong so far (the first is logged at warning level).
    pub(super) bad_requests: u64,
    /// Bytes of entropy given to the guest since the device was created.
    pub(super) bytes_served: u64,
    pub(super) entropy_errors: ErrorLog,
    pub(super) interrupt_errors: ErrorLog,
}

impl Rng {
    /// Builds the device. Fails only if its eventfd cannot be created.
    pub fn new() -> Result<Self, RngError> {
        Ok(Self {
            acked_features: 0,
            state_changed: EventFd::new(EFD_NONBLOCK).map_err(RngError::EventFd)?,
            active: None,
            activations: 0,
            watched: None,
            bad_requests: 0,
            bytes_served: 0,
            entropy_errors: ErrorLog::new("virtio-rng getrandom"),
            interrupt_errors: ErrorLog::new("virtio-rng interrupt"),
        })
    }

    /// The features the driver accepted (0 before negotiation and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver has started the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Bytes of entropy the device has written into guest memory since it was created.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served
    }

    fn signal_state_change(&self) -> std::io::Result<()> {
        self.state_changed.write(1)
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
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let count = queues.len();
        let Some(ActiveQueue { queue, notify }) = queues.into_iter().next().filter(|_| count == 1)
        else {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: count,
            });
        };
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady { index: 0 });
        }
        self.signal_state_change()
            .map_err(ActivateError::EventLoop)?;
        self.activations += 1;
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
            notify,
            broken: false,
        });
        Ok(())
    }

    fn disable_queue(&mut self, index: u16) {
        if let Some(active) = self.active.as_mut().filter(|_| index == 0) {
            // `process_queue` leaves a queue that is not ready alone.
            active.queue.set_ready(false);
        }
    }

    fn reset(&mut self) -> bool {
        let was_active = self.active.take().is_some();
        self.acked_features = 0;
        if was_active {
            if let Err(e) = self.signal_state_change() {
                // The event loop may keep watching the old eventfd; it ignores it while the
                // device is inactive.
                log::warn!("virtio-rng: cannot tell the event loop about the reset: {e}");
            }
        }
        true
    }
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
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
        let queue = |ready| {
            let mut queue = driver.device_queue();
            queue.set_ready(ready);
            ActiveQueue {
                queue,
                notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            }
        };
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
        assert_eq!(rng.state_changed.read().unwrap(), 1);
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
