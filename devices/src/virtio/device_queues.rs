//! The queue lifecycle every petrel virtio device shares (virtio-blk, virtio-net, virtio-rng,
//! virtio-vsock).
//!
//! [`DeviceQueues`] holds the queues the driver activated, checks activation (the number of
//! queues the device has, every one ready), follows the driver's disable and reset, and keeps
//! the event loop in step: it writes its state-change eventfd on activation and reset, and on
//! that event starts (or stops) watching the notification eventfds of the current
//! activation's queues — those the device asked for (virtio-vsock, say, never uses its event
//! queue, so it does not watch it). It raises the queue interrupt after a batch and reports
//! `DEVICE_NEEDS_RESET` when a queue breaks.
//!
//! A device keeps one `DeviceQueues` and only adds what is its own: how a request is answered,
//! and any fd of its own it watches (virtio-net's TAP, virtio-vsock's epoll instance).
//! [`DeviceQueues::classify_event`] tells it which event it got: a state change, a
//! notification of queue `i`, or an fd the lifecycle does not own, which the device checks
//! against its own fds (and otherwise hands to [`DeviceQueues::drop_event`]). Devices with no
//! fd of their own use [`DeviceQueues::handle_event`].
//!
//! Virtio-blk and virtio-rng are the one-queue case.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::report::{describe, ErrorLog};
use crate::virtio::chain::{next_chain, Chain, QueueFault};
use crate::virtio::{ActivateError, ActiveQueue, VirtioInterrupt, VirtioInterruptKind};
use petrel_memory::GuestMemoryMmap;

/// The queues of an activated device, with what the device needs to serve them.
pub(crate) struct ActiveQueues {
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
    /// One per queue, in the device's queue order.
    pub(crate) queues: Vec<ActiveQueue>,
    /// The queues hit an error only a reset clears; they are not used until then.
    pub(crate) broken: bool,
}

impl ActiveQueues {
    /// Queue `index` with the guest memory it lives in. Panics if the device has no such
    /// queue (the index is one of the device's own constants).
    pub(crate) fn queue(&mut self, index: u16) -> QueueRef<'_> {
        let ActiveQueue { queue, notify } = &mut self.queues[usize::from(index)];
        QueueRef {
            mem: &self.mem,
            queue,
            notify,
        }
    }
}

/// One queue of an activated device, borrowed to serve it.
pub(crate) struct QueueRef<'a> {
    pub(crate) mem: &'a GuestMemoryMmap,
    pub(crate) queue: &'a mut Queue,
    /// The queue's notification eventfd. A device that stops after a batch writes it to
    /// come back once the rest of the event loop had a turn.
    pub(crate) notify: &'a EventFd,
}

impl QueueRef<'_> {
    /// Serves the chains the driver made available: `serve` answers each and returns its used
    /// length and what the device wants to remember of it (pushed to `answered` once the
    /// chain is in the used ring). While draining, the device sets `VRING_USED_F_NO_NOTIFY`
    /// and re-checks the ring after clearing it, so no chain is missed. A batch stops after
    /// one queue's worth of chains; the queue's eventfd is then written, so the device comes
    /// back after the rest of the event loop had a turn. An error breaks the queue.
    pub(crate) fn drain<T>(
        self,
        answered: &mut Vec<T>,
        mut serve: impl FnMut(&GuestMemoryMmap, &Chain) -> (u32, T),
    ) -> Result<(), QueueFault> {
        let QueueRef { mem, queue, notify } = self;
        let budget = usize::from(queue.size());
        let mut completed = 0;
        loop {
            queue
                .disable_notification(mem)
                .map_err(QueueFault::UsedRing)?;
            while let Some(chain) = next_chain(queue, mem)? {
                let (used_len, answer) = serve(mem, &chain);
                queue
                    .add_used(mem, chain.head, used_len)
                    .map_err(QueueFault::UsedRing)?;
                answered.push(answer);
                completed += 1;
                if completed >= budget {
                    queue
                        .enable_notification(mem)
                        .map_err(QueueFault::UsedRing)?;
                    // A failed write means the counter is saturated, i.e. already signalled.
                    let _ = notify.write(1);
                    return Ok(());
                }
            }
            if !queue
                .enable_notification(mem)
                .map_err(QueueFault::UsedRing)?
            {
                return Ok(());
            }
        }
    }
}

/// What an event-loop event was, for the device that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueEvent {
    /// The device was activated or reset; the watched queue eventfds are already up to date.
    StateChanged,
    /// The driver notified queue `index` (the eventfd is already read).
    Queue(u16),
    /// An fd the lifecycle does not own: the device's own, or a stale one.
    Other(RawFd),
}

/// A device's queues, their activation and their link to the event loop.
pub(crate) struct DeviceQueues {
    /// Names the device in log lines, e.g. `virtio-blk /path/disk.img`.
    label: String,
    /// How many queues the device has.
    count: usize,
    /// The queues whose eventfds the event loop watches while the device is active.
    watch: &'static [u16],
    /// Written on activation and reset so the event loop re-reads the device's state.
    pub(crate) state_changed: EventFd,
    pub(crate) active: Option<ActiveQueues>,
    /// How many times the device was activated, so the event loop can tell new queue
    /// eventfds from the ones it watches.
    activations: u64,
    /// The queue eventfds the event loop watches (queue index, eventfd), and the activation
    /// they belong to.
    watched: Option<(u64, Vec<(u16, EventFd)>)>,
    pub(crate) interrupt_errors: ErrorLog,
}

impl DeviceQueues {
    /// An inactive device of `count` queues, named `label` in logs; the event loop will
    /// watch the queues in `watch`. `interrupt_what` names its interrupt in the error log.
    pub(crate) fn new(
        label: String,
        count: usize,
        watch: &'static [u16],
        interrupt_what: &'static str,
    ) -> std::io::Result<Self> {
        debug_assert!(watch.iter().all(|&index| usize::from(index) < count));
        Ok(Self {
            label,
            count,
            watch,
            state_changed: EventFd::new(EFD_NONBLOCK)?,
            active: None,
            activations: 0,
            watched: None,
            interrupt_errors: ErrorLog::new(interrupt_what),
        })
    }

    /// The device's name in log lines.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Whether the driver has started the device.
    pub(crate) fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Whether the device is active with broken queues (it waits for a reset).
    pub(crate) fn is_broken(&self) -> bool {
        self.active.as_ref().is_some_and(|active| active.broken)
    }

    /// Takes the queues the driver set up; refuses a second activation, another number of
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
        if queues.len() != self.count {
            return Err(ActivateError::QueueCount {
                expected: self.count,
                got: queues.len(),
            });
        }
        if let Some(index) = queues.iter().position(|q| !q.queue.ready()) {
            return Err(ActivateError::QueueNotReady {
                index: u16::try_from(index).unwrap_or(u16::MAX),
            });
        }
        self.state_changed
            .write(1)
            .map_err(ActivateError::EventLoop)?;
        self.activations += 1;
        self.active = Some(ActiveQueues {
            mem,
            interrupt,
            queues,
            broken: false,
        });
        Ok(())
    }

    /// The driver disabled queue `index`: it is left alone from now on.
    pub(crate) fn disable_queue(&mut self, index: u16) {
        if let Some(entry) = self
            .active
            .as_mut()
            .and_then(|active| active.queues.get_mut(usize::from(index)))
        {
            entry.queue.set_ready(false);
        }
    }

    /// Drops the active queues and tells the event loop.
    pub(crate) fn reset(&mut self) {
        if self.active.take().is_some() {
            if let Err(e) = self.state_changed.write(1) {
                // The event loop may keep watching the old eventfds; it ignores them while
                // the device is inactive.
                log::warn!(
                    "{}: cannot tell the event loop about the reset: {e}",
                    self.label
                );
            }
        }
    }

    /// Whether queue `index` can be served now: the device is active, its queues are not
    /// broken, and the driver has not disabled that queue.
    pub(crate) fn is_serviceable(&self, index: u16) -> bool {
        self.active.as_ref().is_some_and(|active| {
            !active.broken
                && active
                    .queues
                    .get(usize::from(index))
                    .is_some_and(|entry| entry.queue.ready())
        })
    }

    /// Queue `index` to serve now: none while the device is inactive, or its queues are
    /// broken, or the driver disabled that queue.
    pub(crate) fn serviceable(&mut self, index: u16) -> Option<QueueRef<'_>> {
        if !self.is_serviceable(index) {
            return None;
        }
        self.active.as_mut().map(|active| active.queue(index))
    }

    /// Like [`serviceable`](Self::serviceable), but takes the active queues out of the
    /// lifecycle, for a device whose queue work calls its own `&mut self` methods. The device
    /// is inactive to its own code meanwhile; it must give them back with
    /// [`put_back`](Self::put_back).
    pub(crate) fn take_serviceable(&mut self, index: u16) -> Option<ActiveQueues> {
        if !self.is_serviceable(index) {
            return None;
        }
        self.active.take()
    }

    /// Returns the queues [`take_serviceable`](Self::take_serviceable) took.
    pub(crate) fn put_back(&mut self, active: ActiveQueues) {
        debug_assert!(self.active.is_none());
        self.active = Some(active);
    }

    /// After a batch that put `answered` chains in the used ring of queue `index`: raises the
    /// queue interrupt if there were any and the driver wants it.
    pub(crate) fn signal_used(&mut self, index: u16, answered: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if answered == 0 {
            return;
        }
        let queue = active.queue(index);
        // Without event-index suppression this always says yes.
        if queue.queue.needs_notification(queue.mem).unwrap_or(true) {
            match active.interrupt.trigger(VirtioInterruptKind::Queue) {
                Ok(()) => self.interrupt_errors.succeeded(),
                Err(e) => self.interrupt_errors.failed(&e),
            }
        }
    }

    /// `fault` broke the queues: logs it, marks them broken and reports DEVICE_NEEDS_RESET.
    pub(crate) fn break_queues(&mut self, fault: &dyn std::error::Error) {
        if self.active.is_some() {
            log::warn!(
                "{}: {}; the device needs a reset",
                self.label,
                describe(fault)
            );
        }
        self.needs_reset();
    }

    /// Marks the queues broken and reports DEVICE_NEEDS_RESET; the caller logged why.
    pub(crate) fn needs_reset(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.broken = true;
            if let Err(e) = active.interrupt.set_needs_reset() {
                self.interrupt_errors.failed(&e);
            }
        }
    }

    /// Registers the state-change eventfd with the event loop, and the queue eventfds if
    /// the device is already active; false if the state-change eventfd could not be
    /// registered (the device cannot work then, and the failure is logged).
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

    /// Says what an event-loop event is. A state change (re-)syncs the watched queue
    /// eventfds; a queue notification is read. An fd the lifecycle does not own is left to
    /// the device.
    pub(crate) fn classify_event(&mut self, events: Events, ops: &mut EventOps) -> QueueEvent {
        let fd = events.fd();
        if fd == self.state_changed.as_raw_fd() {
            // EAGAIN only means the counter was already read.
            let _ = self.state_changed.read();
            self.sync_watch(ops);
            return QueueEvent::StateChanged;
        }
        let queue = self
            .watched
            .iter()
            .flat_map(|(_, watched)| watched)
            .find(|(_, event)| event.as_raw_fd() == fd);
        match queue {
            Some((index, event)) => {
                let _ = event.read();
                QueueEvent::Queue(*index)
            }
            None => QueueEvent::Other(fd),
        }
    }

    /// Stops watching an fd nobody owns (it belonged to an earlier activation).
    pub(crate) fn drop_event(&self, events: Events, ops: &mut EventOps) {
        log::debug!(
            "{}: event on fd {} it does not watch, dropped",
            self.label,
            events.fd()
        );
        let _ = ops.remove(events);
    }

    /// Handles an event for a device with no fd of its own; returns whether the device
    /// should now serve its queues.
    pub(crate) fn handle_event(&mut self, events: Events, ops: &mut EventOps) -> bool {
        match self.classify_event(events, ops) {
            QueueEvent::StateChanged | QueueEvent::Queue(_) => true,
            QueueEvent::Other(_) => {
                self.drop_event(events, ops);
                false
            }
        }
    }

    /// Watches the current activation's queue eventfds (those the device asked for), and
    /// only them. If one cannot be watched, the device needs a reset.
    fn sync_watch(&mut self, ops: &mut EventOps) {
        let current = self.active.as_ref().map(|_| self.activations);
        if self.watched.as_ref().map(|(activation, _)| *activation) == current {
            return;
        }
        if let Some((_, old)) = self.watched.take() {
            self.unwatch(old, ops);
        }
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let mut watched = Vec::with_capacity(self.watch.len());
        for &index in self.watch {
            let event = active.queues[usize::from(index)]
                .notify
                .try_clone()
                .map_err(|e| format!("{e}"))
                .and_then(|event| {
                    ops.add(Events::new(&event, EventSet::IN))
                        .map(|()| event)
                        .map_err(|e| format!("{e:?}"))
                });
            match event {
                Ok(event) => watched.push((index, event)),
                Err(e) => {
                    log::error!(
                        "{}: cannot watch queue {index} ({e}); the device needs a reset",
                        self.label
                    );
                    self.unwatch(watched, ops);
                    self.needs_reset();
                    return;
                }
            }
        }
        self.watched = Some((self.activations, watched));
    }

    /// Stops watching queue eventfds.
    fn unwatch(&self, watched: Vec<(u16, EventFd)>, ops: &mut EventOps) {
        for (index, event) in watched {
            if let Err(e) = ops.remove(Events::new(&event, EventSet::IN)) {
                log::debug!(
                    "{}: cannot stop watching queue {index}'s old eventfd: {e:?}",
                    self.label
                );
            }
        }
    }
}
