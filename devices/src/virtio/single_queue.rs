//! The lifecycle every single-queue virtio device shares (virtio-blk, virtio-rng).
//!
//! [`SingleQueue`] holds the queue the driver activated, checks activation, follows the driver's
//! disable and reset, and keeps the event loop in step: it writes its state-change eventfd on
//! activation and reset, and on that event starts (or stops) watching the current queue's
//! notification eventfd. A device keeps one `SingleQueue` and only adds what is its own: how
//! a request is answered.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::report::ErrorLog;
use crate::virtio::{ActivateError, ActiveQueue, VirtioInterrupt, VirtioInterruptKind};
use petrel_memory::GuestMemoryMmap;

/// The queue of an activated device, with what the device needs to serve it.
pub(crate) struct QueueState {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
    pub(crate) queue: Queue,
    pub(crate) notify: EventFd,
    /// The queue hit an error only a reset clears; it is not used until then.
    pub(crate) broken: bool,
}

/// A single-queue device's activation state and its link to the event loop.
pub(crate) struct SingleQueue {
    /// Names the device in log lines, e.g. `virtio-blk /path/disk.img`.
    label: String,
    /// Written on activation and reset so the event loop re-reads the device's state.
    pub(crate) state_changed: EventFd,
    pub(crate) active: Option<QueueState>,
    /// How many times the device was activated, so the event loop can tell a new queue
    /// eventfd from the one it watches.
    activations: u64,
    /// The queue eventfd the event loop watches, and the activation it belongs to.
    watched: Option<(u64, EventFd)>,
    pub(crate) interrupt_errors: ErrorLog,
}

impl SingleQueue {
    /// An inactive device named `label` in logs; `interrupt_what` names its interrupt in
    /// the error log.
    pub(crate) fn new(label: String, interrupt_what: &'static str) -> std::io::Result<Self> {
        Ok(Self {
            label,
            state_changed: EventFd::new(EFD_NONBLOCK)?,
            active: None,
            activations: 0,
            watched: None,
            interrupt_errors: ErrorLog::new(interrupt_what),
        })
    }

    /// Whether the driver has started the device.
    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Takes the one queue the driver set up; refuses a second activation, another number of
    /// queues, or a queue that is not ready.
    pub(crate) fn activate(
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
        self.state_changed
            .write(1)
            .map_err(ActivateError::EventLoop)?;
        self.activations += 1;
        self.active = Some(QueueState {
            mem,
            interrupt,
            queue,
            notify,
            broken: false,
        });
        Ok(())
    }

    /// The driver disabled queue `index`: it is left alone from now on.
    pub(crate) fn disable_queue(&mut self, index: u16) {
        if let Some(active) = self.active.as_mut().filter(|_| index == 0) {
            active.queue.set_ready(false);
        }
    }

    /// Drops the active queue and tells the event loop.
    pub(crate) fn reset(&mut self) {
        if self.active.take().is_some() {
            if let Err(e) = self.state_changed.write(1) {
                // The event loop may keep watching the old eventfd; it ignores it while the
                // device is inactive.
                log::warn!(
                    "{}: cannot tell the event loop about the reset: {e}",
                    self.label
                );
            }
        }
    }

    /// The queue to serve now: none while the device is inactive, or its queue is broken or
    /// disabled by the driver.
    pub(crate) fn serviceable(&mut self) -> Option<&mut QueueState> {
        self.active
            .as_mut()
            .filter(|active| !active.broken && active.queue.ready())
    }

    /// After a batch that put `answered` chains in the used ring: raises the queue interrupt
    /// if there were any and the driver wants it.
    pub(crate) fn signal_used(&mut self, answered: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        // Without event-index suppression this always says yes.
        if answered > 0 && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            match active.interrupt.trigger(VirtioInterruptKind::Queue) {
                Ok(()) => self.interrupt_errors.succeeded(),
                Err(e) => self.interrupt_errors.failed(&e),
            }
        }
    }

    /// Marks the queue broken and reports DEVICE_NEEDS_RESET; the caller logged why.
    pub(crate) fn needs_reset(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.broken = true;
            if let Err(e) = active.interrupt.set_needs_reset() {
                self.interrupt_errors.failed(&e);
            }
        }
    }

    /// Registers the state-change eventfd with the event loop; false if that failed (the
    /// device cannot work then, and the failure is logged).
    pub(crate) fn init(&mut self, ops: &mut EventOps) -> bool {
        if let Err(e) = ops.add(Events::new(&self.state_changed, EventSet::IN)) {
            log::error!(
                "{}: cannot watch the device's eventfd, the device will not work: {e:?}",
                self.label
            );
            return false;
        }
        self.sync_watch(ops);
        true
    }

    /// Handles an event-loop event; returns whether the device should now serve its queue.
    pub(crate) fn handle_event(&mut self, events: Events, ops: &mut EventOps) -> bool {
        let fd = events.fd();
        if fd == self.state_changed.as_raw_fd() {
            // EAGAIN only means the counter was already read.
            let _ = self.state_changed.read();
            self.sync_watch(ops);
        } else if let Some((_, event)) = self.watched.as_ref().filter(|(_, e)| e.as_raw_fd() == fd)
        {
            let _ = event.read();
        } else {
            log::debug!(
                "{}: event on fd {fd} it does not watch, dropped",
                self.label
            );
            let _ = ops.remove(events);
            return false;
        }
        true
    }

    /// Watches the current queue eventfd, and only it.
    fn sync_watch(&mut self, ops: &mut EventOps) {
        let current = self.active.as_ref().map(|_| self.activations);
        if self.watched.as_ref().map(|(activation, _)| *activation) == current {
            return;
        }
        if let Some((_, old)) = self.watched.take() {
            if let Err(e) = ops.remove(Events::new(&old, EventSet::IN)) {
                log::debug!(
                    "{}: cannot stop watching the old queue eventfd: {e:?}",
                    self.label
                );
            }
        }
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let watched = active
            .notify
            .try_clone()
            .map_err(|e| format!("{e}"))
            .and_then(|event| {
                ops.add(Events::new(&event, EventSet::IN))
                    .map(|()| event)
                    .map_err(|e| format!("{e:?}"))
            });
        match watched {
            Ok(event) => self.watched = Some((self.activations, event)),
            Err(e) => {
                log::error!(
                    "{}: cannot watch the queue ({e}); the device needs a reset",
                    self.label
                );
                self.needs_reset();
            }
        }
    }
}
