//! SIGTERM and SIGINT ask the VM to stop cleanly: the handler only records the signal and
//! wakes the event loop through an eventfd, which is all an async-signal-safe handler may do.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

/// Errors from installing the stop-signal handlers.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The eventfd could not be created.
    #[error("cannot create the signal eventfd")]
    EventFd(#[source] io::Error),
    /// The handler could not be installed.
    #[error("cannot install a handler for signal {signal}")]
    Register {
        /// The signal.
        signal: c_int,
        /// The OS error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
}

/// The signals that stop the VM.
pub const STOP_SIGNALS: [c_int; 2] = [libc::SIGTERM, libc::SIGINT];

/// The signal that asks for a metrics file now.
pub const METRICS_SIGNAL: c_int = libc::SIGUSR1;

static METRICS_EVENT: OnceLock<EventFd> = OnceLock::new();
static METRICS_EVENT_FD: AtomicI32 = AtomicI32::new(-1);

static STOP_EVENT: OnceLock<EventFd> = OnceLock::new();
static STOP_EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static RECEIVED_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: c_int, _info: *mut siginfo_t, _context: *mut c_void) {
    RECEIVED_SIGNAL.store(signal, Ordering::SeqCst);
    let fd = STOP_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `fd` is the eventfd kept open for the life of
        // the process in STOP_EVENT, and the buffer is a live 8-byte local.
        unsafe {
            libc::write(fd, (&one as *const u64).cast(), std::mem::size_of::<u64>());
        }
    }
}

extern "C" fn on_metrics_signal(_signal: c_int, _info: *mut siginfo_t, _context: *mut c_void) {
    let fd = METRICS_EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: as in on_stop_signal: an async-signal-safe write of a live local to the
        // eventfd kept open in METRICS_EVENT.
        unsafe {
            libc::write(fd, (&one as *const u64).cast(), std::mem::size_of::<u64>());
        }
    }
}

/// Installs the SIGUSR1 handler (once per process) and returns the eventfd it signals.
pub fn install_metrics_signal_handler() -> Result<&'static EventFd, SignalError> {
    if let Some(event) = METRICS_EVENT.get() {
        return Ok(event);
    }
    let event = EventFd::new(EFD_NONBLOCK).map_err(SignalError::EventFd)?;
    let event = METRICS_EVENT.get_or_init(|| event);
    METRICS_EVENT_FD.store(event.as_raw_fd(), Ordering::SeqCst);
    register_signal_handler(METRICS_SIGNAL, on_metrics_signal).map_err(|source| {
        SignalError::Register {
            signal: METRICS_SIGNAL,
            source,
        }
    })?;
    Ok(event)
}

/// Installs the SIGTERM/SIGINT handlers (once per process) and returns the eventfd they
/// signal.
pub fn install_stop_signal_handlers() -> Result<&'static EventFd, SignalError> {
    if let Some(event) = STOP_EVENT.get() {
        return Ok(event);
    }
    let event = EventFd::new(EFD_NONBLOCK).map_err(SignalError::EventFd)?;
    let event = STOP_EVENT.get_or_init(|| event);
    STOP_EVENT_FD.store(event.as_raw_fd(), Ordering::SeqCst);
    for signal in STOP_SIGNALS {
        register_signal_handler(signal, on_stop_signal)
            .map_err(|source| SignalError::Register { signal, source })?;
    }
    Ok(event)
}

/// The last stop signal received, if any, clearing the eventfd.
pub fn take_stop_signal() -> Option<c_int> {
    if let Some(event) = STOP_EVENT.get() {
        // EAGAIN means nothing was pending.
        let _ = event.read();
    }
    match RECEIVED_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_signal_wakes_its_eventfd() {
        let event = install_metrics_signal_handler().unwrap();
        // SAFETY: raising a signal whose handler is installed above.
        unsafe { libc::raise(METRICS_SIGNAL) };
        assert_eq!(event.read().unwrap(), 1);
    }

    #[test]
    fn a_stop_signal_is_recorded_and_wakes_the_eventfd() {
        let event = install_stop_signal_handlers().unwrap();
        // SAFETY: raising a signal whose handler is installed above; the handler only touches
        // atomics and the eventfd.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(event.read().unwrap(), 1);
        assert_eq!(take_stop_signal(), Some(libc::SIGTERM));
        assert_eq!(take_stop_signal(), None);
    }
}
