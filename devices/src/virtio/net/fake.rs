//! An in-memory [`NetBackend`] for unit tests.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::NetBackend;

/// What the fake backend holds, shared with the test.
#[derive(Debug, Default)]
pub(super) struct FakeState {
    /// Frames waiting for the guest.
    pub(super) rx: VecDeque<Vec<u8>>,
    /// Frames the guest sent.
    pub(super) tx: Vec<Vec<u8>>,
    /// The last offload flags set.
    pub(super) offload: Option<u32>,
    /// How many times the device tried to read.
    pub(super) reads: usize,
}

/// A backend whose fd (an eventfd) is readable exactly while frames wait in `rx`.
pub(super) struct FakeBackend {
    pub(super) state: Arc<Mutex<FakeState>>,
    ready: EventFd,
}

impl FakeBackend {
    pub(super) fn new() -> Self {
        Self {
            state: Arc::default(),
            ready: EventFd::new(EFD_NONBLOCK).unwrap(),
        }
    }

    /// A handle that queues frames for the guest.
    pub(super) fn injector(&self) -> Injector {
        Injector {
            state: self.state.clone(),
            ready: self.ready.try_clone().unwrap(),
        }
    }
}

/// Queues frames for the guest from the test.
pub(super) struct Injector {
    pub(super) state: Arc<Mutex<FakeState>>,
    ready: EventFd,
}

impl Injector {
    pub(super) fn inject(&self, frame: Vec<u8>) {
        self.state.lock().unwrap().rx.push_back(frame);
        self.ready.write(1).unwrap();
    }
}

impl NetBackend for FakeBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut state = self.state.lock().unwrap();
        state.reads += 1;
        let frame = state.rx.pop_front();
        if state.rx.is_empty() {
            let _ = self.ready.read();
        }
        let frame = frame.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, parts: &[&[u8]]) -> io::Result<usize> {
        let frame = parts.concat();
        let n = frame.len();
        self.state.lock().unwrap().tx.push(frame);
        Ok(n)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.state.lock().unwrap().offload = Some(flags);
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    fn name(&self) -> &str {
        "fake0"
    }
}
