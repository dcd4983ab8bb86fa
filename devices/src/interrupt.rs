//! How devices raise interrupts without knowing about KVM.
//!
//! A device holds an `Arc<dyn InterruptLine>` and calls [`InterruptLine::trigger`]. The VMM
//! decides what that means: with KVM's in-kernel irqchip it is usually a write to an irqfd
//! (an [`EventFd`] registered with `KVM_IRQFD`), for which this module already provides an
//! implementation. Tests use a plain `EventFd` or a counter.
//!
//! [`InterruptTrigger`] adapts a line to `vm_superio::Trigger`, the interface the
//! `vm-superio` device models expect.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line a device can raise.
pub trait InterruptLine: Send + Sync {
    /// Raises the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

/// An eventfd is an interrupt line: triggering adds one to its counter. Register it with
/// `KVM_IRQFD` and each trigger injects the GSI it was registered for.
impl InterruptLine for EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Lets a `vm-superio` device model raise an [`InterruptLine`].
#[derive(Clone)]
pub struct InterruptTrigger(Arc<dyn InterruptLine>);

impl InterruptTrigger {
    /// Wraps `line`.
    pub fn new(line: Arc<dyn InterruptLine>) -> Self {
        Self(line)
    }

    /// The wrapped line.
    pub fn line(&self) -> &Arc<dyn InterruptLine> {
        &self.0
    }
}

impl From<Arc<dyn InterruptLine>> for InterruptTrigger {
    fn from(line: Arc<dyn InterruptLine>) -> Self {
        Self(line)
    }
}

impl vm_superio::Trigger for InterruptTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

impl std::fmt::Debug for InterruptTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InterruptTrigger")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use vm_superio::Trigger;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// An interrupt line that counts its triggers, or fails if asked to.
    #[derive(Default)]
    pub(crate) struct CountingLine {
        pub(crate) count: AtomicUsize,
        pub(crate) fail: AtomicBool,
    }

    impl CountingLine {
        pub(crate) fn count(&self) -> usize {
            self.count.load(Ordering::SeqCst)
        }

        /// Returns the number of triggers so far and resets it.
        pub(crate) fn take(&self) -> usize {
            self.count.swap(0, Ordering::SeqCst)
        }
    }

    impl InterruptLine for CountingLine {
        fn trigger(&self) -> io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(io::Error::other("interrupt line is down"));
            }
            self.count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn an_eventfd_counts_triggers() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        InterruptLine::trigger(&evt).unwrap();
        InterruptLine::trigger(&evt).unwrap();
        assert_eq!(evt.read().unwrap(), 2);
    }

    #[test]
    fn the_superio_adapter_forwards_to_the_line() {
        let line = Arc::new(CountingLine::default());
        let trigger = InterruptTrigger::new(line.clone());
        trigger.trigger().unwrap();
        trigger.clone().trigger().unwrap();
        assert_eq!(line.count(), 2);

        line.fail.store(true, Ordering::SeqCst);
        assert!(trigger.trigger().is_err());
        assert_eq!(line.count(), 2);
    }
}
