//! Telling the host's input side that the guest has emptied the receive FIFO.

use std::cell::Cell;

use vm_superio::serial::SerialEvents;
use vmm_sys_util::eventfd::EventFd;

use crate::report::ErrorLog;

/// The `vm-superio` event sink of [`SerialDevice`](super::SerialDevice).
///
/// `vm-superio` reports `in_buffer_empty` on every read of the receive register that leaves
/// the FIFO empty, including reads of an already empty FIFO. To signal only when someone is
/// waiting, the notifier is *armed* when input is refused, and the next "empty" event (or an
/// explicit [`DrainNotifier::notify`]) writes the eventfd once and disarms it.
pub(crate) struct DrainNotifier {
    drained: Option<EventFd>,
    armed: Cell<bool>,
    errors: ErrorLog,
}

impl DrainNotifier {
    pub(crate) fn new(drained: Option<EventFd>) -> Self {
        Self {
            drained,
            armed: Cell::new(false),
            errors: ErrorLog::new("serial input-drained notification"),
        }
    }

    /// Asks for a signal the next time the FIFO has room.
    pub(crate) fn arm(&self) {
        self.armed.set(true);
    }

    /// Signals the eventfd if armed.
    pub(crate) fn notify(&self) {
        if !self.armed.replace(false) {
            return;
        }
        if let Some(drained) = &self.drained {
            match drained.write(1) {
                Ok(()) => self.errors.succeeded(),
                Err(e) => self.errors.failed(&e),
            }
        }
    }
}

impl SerialEvents for DrainNotifier {
    fn buffer_read(&self) {}

    fn out_byte(&self) {}

    fn tx_lost_byte(&self) {}

    fn in_buffer_empty(&self) {
        self.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn signals_once_per_arming() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let notifier = DrainNotifier::new(Some(evt.try_clone().unwrap()));
        notifier.in_buffer_empty();
        assert!(evt.read().is_err(), "not armed: no signal");

        notifier.arm();
        notifier.arm();
        notifier.in_buffer_empty();
        notifier.in_buffer_empty();
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn works_without_an_eventfd() {
        let notifier = DrainNotifier::new(None);
        notifier.arm();
        notifier.notify();
        assert!(!notifier.armed.get());
    }
}
