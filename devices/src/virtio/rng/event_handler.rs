//! The event-loop side of virtio-rng: watching the queue and filling the driver's buffers
//! with entropy from the host.
//!
//! [`Rng`] is an `event-manager` `MutEventSubscriber`, built like virtio-blk's on the shared
//! `DeviceQueues` lifecycle: it always watches its own state-change eventfd (written on
//! activation and reset) and, while active, the queue's notification eventfd. On a
//! notification it drains the available ring: each chain is answered ([`answer`]), put in
//! the used ring with the number of bytes written, and one queue interrupt is raised for
//! the batch. While draining, the device sets
//! `VRING_USED_F_NO_NOTIFY` and re-checks the ring after clearing it, so no request is missed.
//! A batch stops after one queue's worth of chains; the device then signals its own
//! notification eventfd so other event-loop work runs before it continues.

use std::io;

use event_manager::{EventOps, Events, MutEventSubscriber};
use thiserror::Error;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::device::Rng;
use super::MAX_REQUEST_BYTES;
use crate::report::describe;
use crate::virtio::chain::{log_bad, Chain, QueueFault};
use petrel_memory::GuestMemoryMmap;

/// Why a request or the queue could not be served.
#[derive(Debug, Error)]
enum RngFault {
    /// A fault every device can meet: in the queue itself (it needs a reset) or in a chain.
    #[error(transparent)]
    Queue(#[from] QueueFault),
    /// The chain has no device-writable byte.
    #[error("chain {head} has no device-writable buffer")]
    NothingWritable {
        /// The chain's head.
        head: u16,
    },
    /// The host's `getrandom(2)` failed.
    #[error("getrandom failed")]
    Entropy(#[source] io::Error),
}

/// Fills `len` bytes at `ptr` from `getrandom(2)`, retrying on EINTR and short reads.
fn getrandom_all(mut ptr: *mut u8, mut len: usize) -> io::Result<()> {
    while len > 0 {
        // SAFETY: `ptr` points to `len` writable bytes of guest memory inside a mapped region
        // (a `VolatileSlice` from `get_slices`, alive while its guard is). The kernel writes
        // into it; no Rust reference to that memory exists.
        let done = unsafe { libc::getrandom(ptr.cast(), len, 0) };
        match usize::try_from(done) {
            Ok(0) => return Err(io::Error::other("getrandom returned no bytes")),
            Ok(done) => {
                let done = done.min(len);
                ptr = ptr.wrapping_add(done);
                len -= done;
            }
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// Fills `len` bytes of guest memory at `addr` with entropy, straight from the host kernel.
fn fill(mem: &GuestMemoryMmap, addr: u64, len: u32) -> io::Result<()> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(addr), len) {
        let slice = slice.map_err(io::Error::other)?;
        let guard = slice.ptr_guard_mut();
        getrandom_all(guard.as_ptr(), guard.len())?;
    }
    Ok(())
}

/// Serves one chain: fills its device-writable buffers in order, at most
/// [`MAX_REQUEST_BYTES`] in all, and returns the number of bytes written. On an error nothing
/// is reported as written (the caller completes the chain with length 0).
fn answer(mem: &GuestMemoryMmap, chain: &Chain) -> Result<u32, RngFault> {
    if let Some(error) = chain.error {
        return Err(QueueFault::Chain(error).into());
    }
    // Check every buffer before writing any.
    let mut plan = Vec::new();
    let mut remaining = MAX_REQUEST_BYTES;
    for desc in chain.descriptors.iter().filter(|d| d.writable) {
        let len = desc.len.min(remaining);
        if len == 0 {
            continue;
        }
        if !mem.check_range(GuestAddress(desc.addr), len as usize) {
            return Err(QueueFault::OutsideMemory {
                index: desc.index,
                addr: desc.addr,
                len,
            }
            .into());
        }
        plan.push((desc.addr, len));
        remaining -= len;
    }
    if plan.is_empty() {
        return Err(RngFault::NothingWritable { head: chain.head });
    }
    for &(addr, len) in &plan {
        fill(mem, addr, len).map_err(RngFault::Entropy)?;
    }
    Ok(MAX_REQUEST_BYTES - remaining)
}

impl Rng {
    /// Serves the requests the driver has made available, completes them, and raises the
    /// queue interrupt. Does nothing while the device is inactive, or its queue is broken or
    /// disabled by the driver.
    pub(crate) fn process_queue(&mut self) {
        let Some(active) = self.queues.serviceable(0) else {
            return;
        };
        let mut answered = Vec::new();
        let result = active.drain(&mut answered, |mem, chain| {
            let outcome = answer(mem, chain);
            (*outcome.as_ref().unwrap_or(&0), outcome)
        });
        for outcome in &answered {
            match outcome {
                Ok(bytes) => {
                    self.bytes_served += u64::from(*bytes);
                    self.entropy_errors.succeeded();
                }
                Err(error @ RngFault::Entropy(_)) => self.entropy_errors.failed(&describe(error)),
                Err(error) => {
                    self.bad_requests += 1;
                    log_bad(
                        self.queues.label(),
                        self.bad_requests,
                        &format_args!("{} (completed with 0 bytes)", describe(error)),
                    );
                }
            }
        }
        self.queues.signal_used(0, answered.len());
        if let Err(fault) = result {
            self.queues.break_queues(&fault);
        }
    }
}

impl MutEventSubscriber for Rng {
    fn init(&mut self, ops: &mut EventOps) {
        if self.queues.init(ops) {
            self.process_queue();
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if self.queues.handle_event(events, ops) {
            self.process_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::virtio::chain::{DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::test_utils::{
        guest_memory, readable, run_checked, scribble, writable, Buf, DriverQueue, MemSnapshot,
        RandomChains, RecordingInterrupt, SingleQueueDriver, HIGH_START, MEM_SIZE,
    };
    use crate::virtio::{ActiveQueue, VirtioDevice};

    const DATA: u64 = 0x10000;
    const SIZE: u16 = 16;
    /// What the harness presets guest buffers to, to see what the device wrote.
    const UNTOUCHED: u8 = 0xee;

    /// An entropy device, activated with one 16-entry queue, and the driver.
    struct Harness {
        rng: Rng,
        q: SingleQueueDriver,
    }

    impl Harness {
        fn new() -> Self {
            let mut harness = Self {
                rng: Rng::new().unwrap(),
                q: SingleQueueDriver::new(SIZE),
            };
            harness.activate();
            harness
        }

        fn activate(&mut self) {
            self.q.activate(&mut self.rng);
        }

        fn preset(&self, addr: u64, len: usize) {
            self.q
                .mem
                .write_slice(&vec![UNTOUCHED; len], GuestAddress(addr))
                .unwrap();
        }

        fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut bytes = vec![0; len];
            self.q
                .mem
                .read_slice(&mut bytes, GuestAddress(addr))
                .unwrap();
            bytes
        }

        /// Publishes `bufs` as one chain and returns its used length.
        fn submit(&mut self, bufs: &[Buf]) -> u32 {
            let head = self.q.driver.add_chain(bufs);
            self.complete(head)
        }

        /// Runs the queue and checks that `head` alone was completed; returns its used length.
        fn complete(&mut self, head: u16) -> u32 {
            let device = &mut self.rng;
            self.q.complete(head, || device.process_queue())
        }

        /// Reads 64 random bytes through the queue.
        fn read64(&mut self) -> Vec<u8> {
            self.preset(DATA, 64);
            assert_eq!(self.submit(&[writable(DATA, 64)]), 64);
            self.guest_bytes(DATA, 64)
        }

        fn assert_still_works(&mut self) {
            let bytes = self.read64();
            assert_ne!(bytes, vec![UNTOUCHED; 64]);
            assert_eq!(self.q.irq.counts().2, 0, "no reset needed");
        }
    }

    fn looks_random(bytes: &[u8]) -> bool {
        // 64 random bytes are all zero, or all one value, with negligible probability.
        bytes.iter().any(|&b| b != bytes[0]) && bytes.iter().any(|&b| b != 0)
    }

    #[test]
    fn random_bytes_arrive_and_two_requests_differ() {
        let mut h = Harness::new();
        let first = h.read64();
        let second = h.read64();
        assert!(looks_random(&first), "{first:?}");
        assert!(looks_random(&second), "{second:?}");
        assert_ne!(first, second);
        assert_eq!(h.rng.bytes_served(), 128);
        assert_eq!(h.rng.bad_requests, 0);
    }

    #[test]
    fn writable_buffers_are_filled_in_order_and_readable_ones_left_alone() {
        let mut h = Harness::new();
        h.preset(DATA, 0x3000);
        let used = h.submit(&[
            readable(DATA, 100),
            writable(DATA + 0x1000, 100),
            writable(HIGH_START, 200),
            writable(DATA + 0x2000, 0),
        ]);
        assert_eq!(used, 300);
        assert_eq!(h.guest_bytes(DATA, 100), vec![UNTOUCHED; 100]);
        assert!(looks_random(&h.guest_bytes(DATA + 0x1000, 100)));
        assert_eq!(h.guest_bytes(DATA + 0x1000 + 100, 16), vec![UNTOUCHED; 16]);
        assert!(looks_random(&h.guest_bytes(HIGH_START, 200)));
        assert_eq!(h.guest_bytes(DATA + 0x2000, 16), vec![UNTOUCHED; 16]);
    }

    #[test]
    fn a_request_gets_at_most_the_cap() {
        let mut h = Harness::new();
        let cap = MAX_REQUEST_BYTES as usize;
        // One huge buffer: only the first 64 KiB are written.
        h.preset(DATA, 2 * cap);
        assert_eq!(h.submit(&[writable(DATA, 2 * cap as u32)]), cap as u32);
        assert!(looks_random(&h.guest_bytes(DATA + cap as u64 - 64, 64)));
        assert_eq!(h.guest_bytes(DATA + cap as u64, cap), vec![UNTOUCHED; cap]);
        // A length past the end of memory is fine as long as the part written is inside.
        assert_eq!(h.submit(&[writable(DATA, u32::MAX)]), cap as u32);
        // The cap spans buffers: 60 KiB + the first 4 KiB of the second.
        let (a, b) = (DATA, DATA + 0x4_0000);
        h.preset(a, cap);
        h.preset(b, cap);
        let used = h.submit(&[writable(a, 60 << 10), writable(b, 60 << 10)]);
        assert_eq!(used, cap as u32);
        assert!(looks_random(&h.guest_bytes(b + (4 << 10) - 64, 64)));
        assert_eq!(
            h.guest_bytes(b + (4 << 10), 56 << 10),
            vec![UNTOUCHED; 56 << 10]
        );
        assert_eq!(h.rng.bytes_served(), 3 * cap as u64);
    }

    #[test]
    fn a_readable_only_chain_completes_with_nothing() {
        let mut h = Harness::new();
        h.preset(DATA, 64);
        assert_eq!(h.submit(&[readable(DATA, 64)]), 0);
        assert_eq!(h.submit(&[writable(DATA, 0)]), 0, "zero-length buffer");
        assert_eq!(h.guest_bytes(DATA, 64), vec![UNTOUCHED; 64]);
        assert_eq!(h.rng.bad_requests, 2);
        h.assert_still_works();
    }

    #[test]
    fn buffers_outside_guest_memory_complete_with_nothing() {
        let mut h = Harness::new();
        h.preset(MEM_SIZE - 16, 16);
        // Runs from the end of low RAM into the hole: nothing is written, not even the part
        // that is in memory.
        assert_eq!(h.submit(&[writable(MEM_SIZE - 16, 64)]), 0);
        assert_eq!(h.guest_bytes(MEM_SIZE - 16, 16), vec![UNTOUCHED; 16]);
        // A valid buffer followed by one in the hole: nothing either.
        h.preset(DATA, 64);
        assert_eq!(
            h.submit(&[writable(DATA, 64), writable(MEM_SIZE + 0x1000, 64)]),
            0
        );
        assert_eq!(h.guest_bytes(DATA, 64), vec![UNTOUCHED; 64]);
        // An address that wraps around.
        assert_eq!(h.submit(&[writable(u64::MAX - 7, 64)]), 0);
        assert_eq!(h.rng.bad_requests, 3);
        h.assert_still_works();
    }

    #[test]
    fn broken_chains_complete_with_nothing() {
        let mut h = Harness::new();
        h.preset(DATA, 128);
        // 0 -> 1 -> 0: a loop.
        h.q.driver
            .write_descriptor(0, DATA, 64, DESC_F_NEXT | DESC_F_WRITE, 1);
        h.q.driver
            .write_descriptor(1, DATA + 64, 64, DESC_F_NEXT | DESC_F_WRITE, 0);
        h.q.driver.publish(0);
        assert_eq!(h.complete(0), 0);
        // A next index outside the queue.
        h.q.driver
            .write_descriptor(2, DATA, 64, DESC_F_NEXT | DESC_F_WRITE, SIZE + 5);
        h.q.driver.publish(2);
        assert_eq!(h.complete(2), 0);
        assert_eq!(h.guest_bytes(DATA, 128), vec![UNTOUCHED; 128]);
        assert_eq!(h.rng.bad_requests, 2);
        assert_eq!(h.rng.bytes_served(), 0);
        h.assert_still_works();
    }

    #[test]
    fn queue_errors_need_a_reset() {
        let mut h = Harness::new();
        // The driver claims 17 new buffers in a 16-entry queue.
        h.q.driver.set_avail_idx(SIZE + 1);
        h.rng.process_queue();
        assert_eq!(h.q.driver.used_idx(), 0, "nothing completed");
        assert_eq!(h.q.irq.counts(), (0, 0, 1), "DEVICE_NEEDS_RESET reported");
        h.q.driver.set_avail_idx(0);
        h.rng.process_queue();
        assert_eq!(h.q.irq.counts(), (0, 0, 1), "the queue is left alone");
        assert!(h.rng.reset());
        h.q.irq = Arc::new(RecordingInterrupt::default());
        h.activate();
        h.assert_still_works();

        // A head outside the queue.
        h.q.driver.publish(SIZE + 3);
        h.rng.process_queue();
        assert_eq!(h.q.irq.counts(), (1, 0, 1));
    }

    #[test]
    fn a_full_ring_yields_to_the_event_loop_and_continues() {
        let mut h = Harness::new();
        for _ in 0..SIZE {
            h.q.driver.add_chain(&[writable(DATA, 16)]);
        }
        h.rng.process_queue();
        assert_eq!(h.q.driver.used_idx(), SIZE);
        assert_eq!(h.q.irq.counts(), (1, 0, 0), "one interrupt for the batch");
        assert_eq!(
            h.q.notify.read().unwrap(),
            1,
            "the device asked to run again"
        );
        h.q.completed = SIZE;
        h.assert_still_works();
    }

    #[test]
    fn an_inactive_or_disabled_device_ignores_its_queue() {
        let mut h = Harness::new();
        h.rng.disable_queue(0);
        h.q.driver.add_chain(&[writable(DATA, 16)]);
        h.rng.process_queue();
        assert_eq!(h.q.driver.used_idx(), 0);
        assert!(h.rng.reset());
        h.rng.process_queue();
        assert_eq!((h.q.driver.used_idx(), h.q.irq.counts()), (0, (0, 0, 0)));
    }

    #[test]
    fn the_event_loop_serves_requests() {
        let rng = Arc::new(Mutex::new(Rng::new().unwrap()));
        let mut manager: EventManager<Arc<Mutex<Rng>>> = EventManager::new().unwrap();
        manager.add_subscriber(rng.clone());
        let mem = guest_memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut driver = DriverQueue::new(&mem, SIZE);
        let queue = ActiveQueue {
            queue: driver.device_queue(),
            notify: notify.try_clone().unwrap(),
        };
        rng.lock()
            .unwrap()
            .activate(mem.clone(), irq.clone(), vec![queue])
            .unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        driver.add_chain(&[writable(DATA, 32)]);
        notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(driver.used_idx(), 1);
        assert_eq!(driver.used(0), (0, 32));
        assert_eq!(irq.counts(), (1, 0, 0));
        assert_eq!(rng.lock().unwrap().bytes_served(), 32);
    }

    /// A hostile driver's random chains, batch after batch: the device never panics, never
    /// writes outside the writable buffers a chain names, never reports more bytes than
    /// they hold (nor more than the cap), and after each batch either needs a reset or
    /// still serves a well-formed request.
    #[test]
    fn random_hostile_chains_are_answered_safely() {
        const SEED: u64 = 0x5eed_0003;
        const BATCHES: u64 = 600;
        let mut h = Harness::new();
        let mut rc = RandomChains::new(SEED, (DATA, MEM_SIZE), &[MAX_REQUEST_BYTES]);
        scribble(&h.q.mem, &mut rc.rng, &h.q.driver.ring_ranges());
        for batch in 0..BATCHES {
            let ctx = format!("seed {SEED:#x}, batch {batch}");
            rc.begin(&mut h.q.driver);
            let from = h.q.driver.used_idx();
            let count = 1 + rc.rng.below(6);
            rc.batch(&mut h.q.driver, count, true, |rc, driver| {
                if rc.rng.one_in(3) {
                    let (addr, len) = (rc.addr(), rc.len());
                    let mut bufs = rc.split(addr, len, true);
                    rc.spoil(&mut bufs);
                    rc.buffers(driver, &bufs)
                } else {
                    rc.chain(driver, Some(true))
                }
            });
            let snapshot = MemSnapshot::take(&h.q.mem);
            let rng = &mut h.rng;
            let entries = run_checked(&h.q.driver, &snapshot, from, &ctx, || rng.process_queue());
            for (id, len) in entries {
                assert!(
                    len <= MAX_REQUEST_BYTES,
                    "{ctx}: chain {id} got {len} bytes"
                );
            }
            h.q.recover(&mut h.rng, &ctx);
            h.assert_still_works();
        }
    }
}
