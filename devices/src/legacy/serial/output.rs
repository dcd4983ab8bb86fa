//! The host side of the serial console output: a buffer between the guest's one-byte port
//! writes and the host writer.
//!
//! The guest sends one byte per port write, and `vm-superio` calls `write_all` and `flush`
//! for each. Passing every byte to the host as its own `write(2)` would cost a system call per
//! character (10,000 of them for 10 KB of boot log). [`ConsoleOutput`] collects bytes instead
//! and writes them out
//!
//! - at a newline,
//! - when 4 KiB are waiting,
//! - when the oldest waiting byte is 10 ms old (checked on the next byte),
//! - when [`SerialDevice`](super::SerialDevice) sees the guest stop writing (see there), and
//! - on [`ConsoleOutput::flush_pending`] and on drop.
//!
//! Host write errors never reach the guest: they are logged once per run of failures and the
//! bytes are dropped and counted. If the host writer is non-blocking and full, bytes wait (up
//! to 64 KiB, then the oldest are dropped) and are retried later.

use std::io::{self, ErrorKind, Write};
use std::time::{Duration, Instant};

use crate::report::ErrorLog;

/// Bytes waiting that cause a write to the host.
pub(crate) const FLUSH_THRESHOLD: usize = 4096;
/// Most bytes kept while the host writer would block.
pub(crate) const MAX_PENDING: usize = 64 * 1024;
/// Oldest age of a waiting byte before the next byte pushes everything out.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis(10);

/// Buffered guest output on its way to a host writer.
pub(crate) struct ConsoleOutput {
    host: Box<dyn Write + Send>,
    pending: Vec<u8>,
    /// When the oldest pending byte arrived (or when a blocked write was last tried).
    oldest: Option<Instant>,
    errors: ErrorLog,
    lost: u64,
}

impl ConsoleOutput {
    pub(crate) fn new(host: Box<dyn Write + Send>) -> Self {
        Self {
            host,
            pending: Vec::with_capacity(FLUSH_THRESHOLD),
            oldest: None,
            errors: ErrorLog::new("serial console output"),
            lost: 0,
        }
    }

    /// Whether bytes are waiting to be written to the host.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// How many bytes of guest output were dropped because the host writer failed.
    pub(crate) fn lost_bytes(&self) -> u64 {
        self.lost
    }

    /// Takes guest output; writes it to the host if a flush condition holds.
    fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let now = Instant::now();
        let oldest = *self.oldest.get_or_insert(now);
        self.pending.extend_from_slice(data);
        if data.contains(&b'\n')
            || self.pending.len() >= FLUSH_THRESHOLD
            || now.duration_since(oldest) >= MAX_DELAY
        {
            self.flush_pending();
        }
    }

    /// Writes every waiting byte to the host and flushes the host writer (so a `Stdout` does
    /// not keep an unfinished line). Never fails: errors are logged and the bytes dropped.
    pub(crate) fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut written = 0;
        let mut blocked = false;
        let mut failed = false;
        while written < self.pending.len() {
            match self.host.write(&self.pending[written..]) {
                Ok(0) => {
                    self.drop_after_error(written, &io::Error::from(ErrorKind::WriteZero));
                    written = self.pending.len();
                    failed = true;
                }
                Ok(count) => written += count,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => blocked = true,
                Err(e) => {
                    self.drop_after_error(written, &e);
                    written = self.pending.len();
                    failed = true;
                }
            }
            if blocked {
                break;
            }
        }
        self.pending.drain(..written);

        if !failed {
            match self.host.flush() {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => blocked = true,
                Err(e) => {
                    self.errors.failed(&e);
                    failed = true;
                }
            }
        }

        if blocked {
            // Try again on a later flush condition, not on every byte.
            self.oldest = Some(Instant::now());
            let excess = self.pending.len().saturating_sub(MAX_PENDING);
            if excess > 0 {
                self.pending.drain(..excess);
                self.count_lost(excess);
                self.errors.failed(&format_args!(
                    "the host is not reading; dropped {excess} bytes"
                ));
            }
        } else {
            self.oldest = None;
            if !failed {
                self.errors.succeeded();
            }
        }
    }

    fn drop_after_error(&mut self, written: usize, error: &io::Error) {
        self.count_lost(self.pending.len() - written);
        self.errors.failed(error);
    }

    fn count_lost(&mut self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.lost = self.lost.saturating_add(bytes);
    }
}

/// What `vm-superio` writes to. `flush` does nothing on purpose: `vm-superio` calls it after
/// every byte, and [`SerialDevice`](super::SerialDevice) decides when output goes out.
impl Write for ConsoleOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.push(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOutput {
    fn drop(&mut self) {
        self.flush_pending();
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::io::{self, ErrorKind, Write};
    use std::sync::{Arc, Mutex};

    /// What a [`HostWriter`] does with the next write.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Behaviour {
        Accept,
        /// Accept at most this many bytes per call.
        Short(usize),
        Fail(ErrorKind),
    }

    #[derive(Debug)]
    pub(crate) struct HostState {
        pub(crate) data: Vec<u8>,
        pub(crate) writes: usize,
        pub(crate) flushes: usize,
        pub(crate) behaviour: Behaviour,
    }

    /// A host writer that records what reaches it and how many calls it took.
    #[derive(Debug, Clone)]
    pub(crate) struct HostWriter(pub(crate) Arc<Mutex<HostState>>);

    impl HostWriter {
        pub(crate) fn new() -> Self {
            Self(Arc::new(Mutex::new(HostState {
                data: Vec::new(),
                writes: 0,
                flushes: 0,
                behaviour: Behaviour::Accept,
            })))
        }

        pub(crate) fn data(&self) -> Vec<u8> {
            self.0.lock().unwrap().data.clone()
        }

        pub(crate) fn writes(&self) -> usize {
            self.0.lock().unwrap().writes
        }

        pub(crate) fn set(&self, behaviour: Behaviour) {
            self.0.lock().unwrap().behaviour = behaviour;
        }
    }

    impl Write for HostWriter {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let mut state = self.0.lock().unwrap();
            state.writes += 1;
            match state.behaviour {
                Behaviour::Accept => {
                    state.data.extend_from_slice(data);
                    Ok(data.len())
                }
                Behaviour::Short(max) => {
                    let count = data.len().min(max);
                    state.data.extend_from_slice(&data[..count]);
                    Ok(count)
                }
                Behaviour::Fail(kind) => Err(io::Error::from(kind)),
            }
        }

        fn flush(&mut self) -> io::Result<()> {
            self.0.lock().unwrap().flushes += 1;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Behaviour, HostWriter};
    use super::*;
    use crate::test_log;

    fn output() -> (ConsoleOutput, HostWriter) {
        let host = HostWriter::new();
        (ConsoleOutput::new(Box::new(host.clone())), host)
    }

    #[test]
    fn a_newline_pushes_the_line_out_in_one_write() {
        let (mut out, host) = output();
        for &byte in b"hello" {
            out.write_all(&[byte]).unwrap();
            out.flush().unwrap();
        }
        // Unless the test thread stalled for 10 ms, nothing has been written yet.
        out.write_all(b"\n").unwrap();
        assert_eq!(host.data(), b"hello\n");
        assert!(host.writes() <= 2, "{} writes", host.writes());
        assert!(!out.has_pending());
    }

    #[test]
    fn a_full_buffer_is_written_without_a_newline() {
        let (mut out, host) = output();
        for _ in 0..FLUSH_THRESHOLD {
            out.write_all(b"x").unwrap();
        }
        assert_eq!(host.data().len(), FLUSH_THRESHOLD);
        assert!(!out.has_pending());
    }

    #[test]
    fn old_bytes_go_out_with_the_next_byte() {
        let (mut out, host) = output();
        out.write_all(b"a").unwrap();
        std::thread::sleep(MAX_DELAY + Duration::from_millis(2));
        out.write_all(b"b").unwrap();
        assert_eq!(host.data(), b"ab");
    }

    #[test]
    fn short_writes_are_completed_in_order() {
        let (mut out, host) = output();
        host.set(Behaviour::Short(3));
        out.write_all(b"0123456789\n").unwrap();
        assert_eq!(host.data(), b"0123456789\n");
        assert_eq!(host.writes(), 4);
    }

    #[test]
    fn explicit_flush_and_drop_write_everything_out() {
        let (mut out, host) = output();
        out.write_all(b"login: ").unwrap();
        out.flush_pending();
        assert_eq!(host.data(), b"login: ");
        assert_eq!(host.0.lock().unwrap().flushes, 1);
        out.write_all(b"root").unwrap();
        drop(out);
        assert_eq!(host.data(), b"login: root");
    }

    #[test]
    fn a_broken_host_is_logged_once_and_its_bytes_are_counted() {
        let (mut out, host) = output();
        host.set(Behaviour::Fail(ErrorKind::BrokenPipe));
        let records = test_log::capture(|| {
            for _ in 0..100 {
                out.write_all(b"line\n").unwrap();
            }
        });
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].starts_with("WARN serial console output failed"));
        assert_eq!(out.lost_bytes(), 500);
        assert!(!out.has_pending());

        host.set(Behaviour::Accept);
        let records = test_log::capture(|| out.write_all(b"back\n").unwrap());
        assert_eq!(host.data(), b"back\n");
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].contains("works again (99 more failures"));
    }

    #[test]
    fn a_blocked_host_keeps_bytes_for_later_up_to_a_limit() {
        let (mut out, host) = output();
        host.set(Behaviour::Fail(ErrorKind::WouldBlock));
        out.write_all(b"kept\n").unwrap();
        assert!(out.has_pending());
        assert_eq!(out.lost_bytes(), 0);

        host.set(Behaviour::Accept);
        out.flush_pending();
        assert_eq!(host.data(), b"kept\n");

        host.set(Behaviour::Fail(ErrorKind::WouldBlock));
        let records = test_log::capture(|| {
            let chunk = vec![b'z'; FLUSH_THRESHOLD];
            for _ in 0..(MAX_PENDING / FLUSH_THRESHOLD + 2) {
                out.write_all(&chunk).unwrap();
            }
        });
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].contains("the host is not reading"));
        assert_eq!(out.pending.len(), MAX_PENDING);
        assert_eq!(out.lost_bytes(), 2 * FLUSH_THRESHOLD as u64);
    }

    #[test]
    fn interrupted_writes_are_retried() {
        struct Flaky(HostWriter, bool);
        impl Write for Flaky {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    Err(io::Error::from(ErrorKind::Interrupted))
                } else {
                    self.0.write(data)
                }
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let host = HostWriter::new();
        let mut out = ConsoleOutput::new(Box::new(Flaky(host.clone(), false)));
        out.write_all(b"eintr\n").unwrap();
        assert_eq!(host.data(), b"eintr\n");
        assert_eq!(out.lost_bytes(), 0);
    }
}
