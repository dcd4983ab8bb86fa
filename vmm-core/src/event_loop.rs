//! The event-loop subscribers that run on petrel's main thread: host stdin into the serial
//! console, the events that stop the VM (guest reset or power-off, stop signals, vCPU exits),
//! and metrics requests.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use petrel_devices::legacy::serial::SerialDevice;
use vmm_sys_util::eventfd::EventFd;

use crate::lifecycle::{StopLatch, StopReason};
use crate::metrics::{metrics_json, write_metrics};
use crate::signals::take_stop_signal;
use crate::stats::VmStats;

/// How many stdin bytes are read at a time; the serial FIFO takes 64 at most anyway.
const STDIN_CHUNK: usize = 64;

/// Feeds host stdin to the guest's serial port without ever dropping a byte: when the UART's
/// receive FIFO is full, stdin is no longer polled until the guest drains the FIFO.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
    input_fd: RawFd,
    drained: EventFd,
    pending: Vec<u8>,
    polling_input: bool,
    closed: bool,
}

impl ConsoleInput {
    /// Forwards `input_fd` (normally stdin) to `serial`. `drained` is the eventfd the serial
    /// device signals when the guest empties its receive FIFO.
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input_fd: RawFd, drained: EventFd) -> Self {
        Self {
            serial,
            input_fd,
            drained,
            pending: Vec::with_capacity(STDIN_CHUNK),
            polling_input: false,
            closed: false,
        }
    }

    fn input_events(&self) -> Events {
        Events::new_raw(self.input_fd, EventSet::IN)
    }

    /// Moves pending bytes into the UART; returns whether all of them fit.
    fn flush_pending(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        match serial.enqueue_input(&self.pending) {
            Ok(taken) => {
                self.pending.drain(..taken);
            }
            Err(e) => log::warn!("cannot pass console input to the guest: {e}"),
        }
        self.pending.is_empty()
    }

    fn read_input(&mut self) {
        let mut buf = [0u8; STDIN_CHUNK];
        // SAFETY: reads into a live local buffer of the given length from an fd this
        // subscriber was given; epoll reported it readable, so this does not block.
        let count = unsafe { libc::read(self.input_fd, buf.as_mut_ptr().cast(), buf.len()) };
        match count {
            0 => self.closed = true,
            n if n < 0 => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted
                    && error.kind() != std::io::ErrorKind::WouldBlock
                {
                    log::warn!("console input closed: {error}");
                    self.closed = true;
                }
            }
            n => self.pending.extend_from_slice(&buf[..n as usize]),
        }
    }

    fn set_polling(&mut self, ops: &mut EventOps, poll: bool) {
        if poll == self.polling_input {
            return;
        }
        let result = if poll {
            ops.add(self.input_events())
        } else {
            ops.remove(self.input_events())
        };
        match result {
            Ok(()) => self.polling_input = poll,
            Err(e) => {
                // Regular files and /dev/null cannot be polled: the guest gets no input.
                log::debug!("console input is not pollable, the guest gets none: {e:?}");
                self.closed = true;
            }
        }
    }

    fn update_polling(&mut self, ops: &mut EventOps) {
        let poll = !self.closed && self.pending.is_empty();
        self.set_polling(ops, poll);
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("cannot watch the console FIFO; console input disabled: {e:?}");
            return;
        }
        self.update_polling(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            // EAGAIN just means the counter was already cleared.
            let _ = self.drained.read();
        } else if events.fd() == self.input_fd {
            if events.event_set().contains(EventSet::IN) {
                self.read_input();
            } else {
                self.closed = true;
            }
        }
        self.flush_pending();
        self.update_polling(ops);
    }
}

/// Turns stop events into a [`StopReason`] on the latch: the guest's reset and power-off
/// lines (each an eventfd a device signals), stop signals, and the latch's own wake-up
/// (reported by vCPU threads).
pub struct StopEvents {
    latch: Arc<StopLatch>,
    guest_lines: Vec<(EventFd, StopReason)>,
    signal: Option<&'static EventFd>,
}

impl StopEvents {
    /// Watches each of `guest_lines` (an eventfd and the stop it means) and, if given, the
    /// stop-signal eventfd.
    pub fn new(
        latch: Arc<StopLatch>,
        guest_lines: Vec<(EventFd, StopReason)>,
        signal: Option<&'static EventFd>,
    ) -> Self {
        Self {
            latch,
            guest_lines,
            signal,
        }
    }
}

impl MutEventSubscriber for StopEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![self.latch.as_raw_fd()];
        fds.extend(self.guest_lines.iter().map(|(event, _)| event.as_raw_fd()));
        fds.extend(self.signal.map(|s| s.as_raw_fd()));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.latch.report(StopReason::VmmError(format!(
                    "cannot watch stop events: {e:?}"
                )));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if let Some((event, reason)) = self
            .guest_lines
            .iter()
            .find(|(event, _)| event.as_raw_fd() == fd)
        {
            // EAGAIN just means the counter was already cleared.
            let _ = event.read();
            self.latch.report(reason.clone());
        } else if self.signal.is_some_and(|s| s.as_raw_fd() == fd) {
            if let Some(signal) = take_stop_signal() {
                self.latch.report(StopReason::Signal(signal));
            }
        } else if fd == self.latch.as_raw_fd() {
            self.latch.acknowledge();
        }
    }
}

/// Writes the metrics file whenever SIGUSR1 arrives.
pub struct MetricsRequests {
    event: &'static EventFd,
    stats: VmStats,
    path: PathBuf,
}

impl MetricsRequests {
    /// Answers requests signalled on `event` by writing `stats` to `path`.
    pub fn new(event: &'static EventFd, stats: VmStats, path: PathBuf) -> Self {
        Self { event, stats, path }
    }
}

impl MutEventSubscriber for MetricsRequests {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.event, EventSet::IN)) {
            log::warn!("cannot watch for metrics requests: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // EAGAIN just means the counter was already cleared.
        let _ = self.event.read();
        let value = metrics_json(&self.stats.snapshot(), None);
        match write_metrics(&self.path, &value) {
            Ok(()) => log::info!("metrics written to {}", self.path.display()),
            Err(e) => log::warn!("{e}"),
        }
    }
}
