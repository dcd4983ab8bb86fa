//! The event-loop side of virtio-blk: watching the queue and running its requests.
//!
//! [`Block`] is an `event-manager` `MutEventSubscriber`. Through its `DeviceQueues` it always
//! watches its own state-change eventfd, which it writes when the driver activates or resets
//! it; on that event it starts (or stops) watching the queue's notification eventfd, which
//! the transport created and the VMM registered as an ioeventfd. On a notification it drains the available
//! ring: each chain is answered (`request::answer`), put in the used ring, and one queue
//! interrupt is raised for the batch. Event-index suppression is not offered; while draining,
//! the device sets `VRING_USED_F_NO_NOTIFY` so the driver does not notify it needlessly, and
//! re-checks the ring after clearing it, so no request is missed.
//!
//! Each chain's answer (parse, disk I/O, status byte) is timed with the monotonic clock and
//! counted in the device's [`BlockStats`](super::BlockStats).
//!
//! A batch stops after one queue's worth of chains: the device then signals its own
//! notification eventfd and returns, so other event-loop work runs before it continues.
//!
//! Errors in the queue itself (an available index that runs more than a queue's worth ahead,
//! a head outside the table, a used ring that cannot be written) cannot be answered per
//! request: the device reports DEVICE_NEEDS_RESET through the transport and leaves the queue
//! alone until the driver resets it.

use std::time::Instant;

use event_manager::{EventOps, Events, MutEventSubscriber};

use super::device::Block;
use super::request::answer;
use crate::report::describe;
use crate::virtio::chain::log_bad;

impl Block {
    /// Runs the requests the driver has made available, completes them, and raises the
    /// queue interrupt. Does nothing while the device is inactive, or its queue is broken or
    /// disabled by the driver.
    pub(crate) fn process_queue(&mut self) {
        let Some(active) = self.queues.serviceable(0) else {
            return;
        };
        let (disk, id, stats) = (&self.disk, &self.id_bytes, &self.stats);
        let mut answered = Vec::new();
        let result = active.drain(&mut answered, |mem, chain| {
            let started = Instant::now();
            let answer = answer(mem, chain, disk, id);
            let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            stats.record(&answer, ns);
            (answer.used_len, answer)
        });
        for answer in &answered {
            if let Some(error) = &answer.error {
                if error.is_guest_error() {
                    self.bad_requests += 1;
                    let status = answer.status.map_or("none".into(), |s| s.to_string());
                    log_bad(
                        self.queues.label(),
                        self.bad_requests,
                        &format_args!("{} (status {status})", describe(error)),
                    );
                } else {
                    self.io_errors.failed(&describe(error));
                }
            } else {
                self.io_errors.succeeded();
            }
        }
        self.queues.signal_used(0, answered.len());
        if let Err(fault) = result {
            self.queues.break_queues(&fault);
        }
    }
}

impl MutEventSubscriber for Block {
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
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_SCSI_CMD, VIRTIO_BLK_T_WRITE_ZEROES,
    };
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::virtio::block::request::{STATUS_IOERR, STATUS_OK, STATUS_UNSUPP};
    use crate::virtio::block::BlockConfig;
    use crate::virtio::chain::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
    use crate::virtio::test_utils::{
        guest_memory, readable, run_checked, scribble, writable, Buf, DriverQueue, MemSnapshot,
        RandomChains, RecordingInterrupt, SingleQueueDriver, TempImage, HIGH_START, MEM_SIZE,
        USED_RING,
    };
    use crate::virtio::{ActiveQueue, VirtioDevice};

    const HEADER: u64 = 0x10000;
    const DATA: u64 = 0x20000;
    const STATUS: u64 = 0x60000;
    const SIZE: u16 = 16;
    const DISK_SECTORS: u64 = 64;
    /// What the harness presets the status byte to, to see whether the device wrote it.
    const UNTOUCHED: u8 = 0xee;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// A block device on a 32 KiB image, activated with one 16-entry queue, and the driver.
    struct Harness {
        image: TempImage,
        block: Block,
        q: SingleQueueDriver,
    }

    impl Harness {
        fn new(read_only: bool) -> Self {
            let image = TempImage::new("handler", &pattern(DISK_SECTORS as usize * 512));
            let block = Block::new(BlockConfig {
                path: image.0.clone(),
                read_only,
                id: Some("disk0".into()),
            })
            .unwrap();
            let mut harness = Self {
                image,
                block,
                q: SingleQueueDriver::new(SIZE),
            };
            harness.activate();
            harness
        }

        /// Starts the device on freshly initialised rings, as a driver does after a reset.
        fn activate(&mut self) {
            self.q.activate(&mut self.block);
        }

        fn header(&self, request_type: u32, sector: u64) {
            self.q
                .mem
                .write_obj(request_type, GuestAddress(HEADER))
                .unwrap();
            self.q
                .mem
                .write_obj(0u32, GuestAddress(HEADER + 4))
                .unwrap();
            self.q
                .mem
                .write_obj(sector, GuestAddress(HEADER + 8))
                .unwrap();
        }

        fn status(&self) -> u8 {
            self.q.mem.read_obj(GuestAddress(STATUS)).unwrap()
        }

        fn guest_bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut bytes = vec![0; len];
            self.q
                .mem
                .read_slice(&mut bytes, GuestAddress(addr))
                .unwrap();
            bytes
        }

        /// Publishes `bufs` as one chain, runs the queue, checks that exactly that chain was
        /// completed, and returns its used length.
        fn submit(&mut self, bufs: &[Buf]) -> u32 {
            self.q
                .mem
                .write_obj(UNTOUCHED, GuestAddress(STATUS))
                .unwrap();
            let head = self.q.driver.add_chain(bufs);
            self.complete(head)
        }

        /// Runs the queue and checks that `head` was completed; returns its used length.
        fn complete(&mut self, head: u16) -> u32 {
            let device = &mut self.block;
            self.q.complete(head, || device.process_queue())
        }

        fn read(&mut self, sector: u64, len: u32) -> (u8, u32) {
            self.header(VIRTIO_BLK_T_IN, sector);
            let used = self.submit(&[
                readable(HEADER, 16),
                writable(DATA, len),
                writable(STATUS, 1),
            ]);
            (self.status(), used)
        }

        fn write(&mut self, sector: u64, data: &[u8]) -> (u8, u32) {
            self.q.mem.write_slice(data, GuestAddress(DATA)).unwrap();
            self.header(VIRTIO_BLK_T_OUT, sector);
            let used = self.submit(&[
                readable(HEADER, 16),
                readable(DATA, data.len() as u32),
                writable(STATUS, 1),
            ]);
            (self.status(), used)
        }

        fn simple(&mut self, request_type: u32) -> (u8, u32) {
            self.header(request_type, 0);
            let used = self.submit(&[readable(HEADER, 16), writable(STATUS, 1)]);
            (self.status(), used)
        }

        fn ranges(&mut self, request_type: u32, ranges: &[(u64, u32, u32)]) -> (u8, u32) {
            for (i, &(sector, sectors, flags)) in ranges.iter().enumerate() {
                let addr = DATA + 16 * i as u64;
                self.q.mem.write_obj(sector, GuestAddress(addr)).unwrap();
                self.q
                    .mem
                    .write_obj(sectors, GuestAddress(addr + 8))
                    .unwrap();
                self.q
                    .mem
                    .write_obj(flags, GuestAddress(addr + 12))
                    .unwrap();
            }
            self.header(request_type, 0);
            let used = self.submit(&[
                readable(HEADER, 16),
                readable(DATA, 16 * ranges.len() as u32),
                writable(STATUS, 1),
            ]);
            (self.status(), used)
        }

        /// The next valid request still works: a two-sector read returns the image's bytes.
        fn assert_still_works(&mut self) {
            assert!(self.block.is_active());
            self.q
                .mem
                .write_slice(&[0u8; 1024], GuestAddress(DATA))
                .unwrap();
            assert_eq!(self.read(1, 1024), (STATUS_OK, 1025));
            assert_eq!(
                self.guest_bytes(DATA, 1024),
                self.image.contents()[512..1536]
            );
        }
    }

    #[test]
    fn reads_writes_flushes_and_get_id_complete_with_ok() {
        let mut h = Harness::new(false);
        assert_eq!(h.read(0, 4096), (STATUS_OK, 4097));
        assert_eq!(h.guest_bytes(DATA, 4096), pattern(4096));

        let data = vec![0x42; 1536];
        assert_eq!(h.write(10, &data), (STATUS_OK, 1));
        assert_eq!(h.image.contents()[5120..6656], data[..]);
        assert_eq!(h.simple(VIRTIO_BLK_T_FLUSH), (STATUS_OK, 1));

        h.header(VIRTIO_BLK_T_GET_ID, 0);
        h.q.mem
            .write_slice(&[0xff; 32], GuestAddress(DATA))
            .unwrap();
        let used = h.submit(&[
            readable(HEADER, 16),
            writable(DATA, 32),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_OK, 21));
        let mut id = b"disk0".to_vec();
        id.resize(20, 0);
        assert_eq!(h.guest_bytes(DATA, 32), [&id[..], &[0xff; 12]].concat());
        // A shorter buffer gets a prefix.
        let used = h.submit(&[readable(HEADER, 16), writable(DATA, 3), writable(STATUS, 1)]);
        assert_eq!((h.status(), used), (STATUS_OK, 4));

        assert_eq!(h.q.irq.counts(), (5, 0, 0));
        assert_eq!(h.block.bad_requests, 0);
    }

    #[test]
    fn the_statistics_count_each_request_by_outcome() {
        let mut h = Harness::new(false);
        let stats = h.block.stats();
        assert_eq!(stats.snapshot().requests, 0);
        assert_eq!(h.read(0, 4096), (STATUS_OK, 4097));
        assert_eq!(h.read(8, 512), (STATUS_OK, 513));
        assert_eq!(h.write(10, &[0x42; 1536]), (STATUS_OK, 1));
        assert_eq!(h.simple(VIRTIO_BLK_T_FLUSH), (STATUS_OK, 1));
        h.header(VIRTIO_BLK_T_GET_ID, 0);
        let used = h.submit(&[
            readable(HEADER, 16),
            writable(DATA, 20),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_OK, 21));
        // Two the guest got wrong: an unknown type, and a read past the end.
        assert_eq!(h.simple(0xdead_beef), (STATUS_UNSUPP, 1));
        assert_eq!(h.read(DISK_SECTORS, 512), (STATUS_IOERR, 1));
        // And a write to a range that is refused does not count as a write.
        assert_eq!(h.write(DISK_SECTORS - 1, &[1; 1024]), (STATUS_IOERR, 1));

        let s = stats.snapshot();
        assert_eq!((s.read_count, s.read_bytes), (2, 4608));
        assert_eq!((s.write_count, s.write_bytes), (1, 1536));
        assert_eq!(s.flush_count, 1);
        assert_eq!(s.invalid_reqs_count, 3);
        assert_eq!(s.execute_fails, 0);
        assert_eq!(s.requests, 8);
        assert!(s.request_ns_total > 0);
        assert!(s.read_agg.min_ns > 0 && s.read_agg.min_ns <= s.read_agg.max_ns);
        assert!(s.read_agg.sum_ns + s.write_agg.sum_ns <= s.request_ns_total);
        assert_eq!(s.write_agg.min_ns, s.write_agg.max_ns, "one write");

        // The counters belong to the device, not to one activation.
        assert!(h.block.reset());
        h.activate();
        assert_eq!(h.read(1, 1024), (STATUS_OK, 1025));
        let after = h.block.stats().snapshot();
        assert_eq!((after.read_count, after.requests), (3, 9));
        assert_eq!(stats.snapshot(), after, "one set of counters");
    }

    #[test]
    fn a_host_io_error_counts_as_an_execute_failure() {
        let mut h = Harness::new(false);
        // The image shrinks under the device: the read hits the end of the file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&h.image.0)
            .unwrap()
            .set_len(512)
            .unwrap();
        assert_eq!(h.read(8, 512), (STATUS_IOERR, 1));
        let s = h.block.stats().snapshot();
        assert_eq!((s.execute_fails, s.invalid_reqs_count), (1, 0));
        assert_eq!((s.read_count, s.read_bytes, s.requests), (0, 0, 1));
        assert_eq!(
            s.read_agg,
            Default::default(),
            "failed reads are not timed as reads"
        );
    }

    #[test]
    fn a_flushed_write_is_in_the_host_file() {
        let mut h = Harness::new(false);
        let data: Vec<u8> = (0..2048).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(h.write(20, &data), (STATUS_OK, 1));
        assert_eq!(h.simple(VIRTIO_BLK_T_FLUSH), (STATUS_OK, 1));
        // The guest saw the flush complete: a fresh handle on the host file has the data.
        let file = File::open(&h.image.0).unwrap();
        let mut on_disk = vec![0; 2048];
        file.read_exact_at(&mut on_disk, 20 * 512).unwrap();
        assert_eq!(on_disk, data);
        assert_eq!(file.metadata().unwrap().len(), DISK_SECTORS * 512);
    }

    #[test]
    fn discard_and_write_zeroes_leave_zeroes_in_the_file() {
        let mut h = Harness::new(false);
        assert_eq!(
            h.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[(8, 8, 0), (32, 2, 1)]),
            (STATUS_OK, 1)
        );
        let contents = h.image.contents();
        assert!(contents[4096..8192].iter().all(|&b| b == 0));
        assert!(contents[16384..17408].iter().all(|&b| b == 0));
        assert_eq!(contents[..4096], pattern(4096)[..]);
        assert_eq!(
            h.ranges(VIRTIO_BLK_T_DISCARD, &[(40, 8, 0)]),
            (STATUS_OK, 1)
        );
        assert_eq!(h.image.contents().len(), DISK_SECTORS as usize * 512);
        // Flags the spec reserves, and unmap on a discard, are unsupported.
        assert_eq!(
            h.ranges(VIRTIO_BLK_T_DISCARD, &[(40, 8, 1)]),
            (STATUS_UNSUPP, 1)
        );
        assert_eq!(
            h.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 4)]),
            (STATUS_UNSUPP, 1)
        );
        // Past the end.
        assert_eq!(
            h.ranges(VIRTIO_BLK_T_DISCARD, &[(60, 8, 0)]),
            (STATUS_IOERR, 1)
        );
        h.assert_still_works();
    }

    #[test]
    fn a_data_buffer_outside_guest_memory_gets_ioerr() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_IN, 0);
        // Running off the end of low RAM into the hole.
        let used = h.submit(&[
            readable(HEADER, 16),
            writable(MEM_SIZE - 512, 1024),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        // Entirely in the hole between the regions, and far beyond memory.
        for addr in [MEM_SIZE + 0x1000, HIGH_START - 512, u64::MAX - 511] {
            let used = h.submit(&[
                readable(HEADER, 16),
                writable(addr, 512),
                writable(STATUS, 1),
            ]);
            assert_eq!((h.status(), used), (STATUS_IOERR, 1), "{addr:#x}");
        }
        // The data of a write, too: nothing reaches the file.
        h.header(VIRTIO_BLK_T_OUT, 0);
        let used = h.submit(&[
            readable(HEADER, 16),
            readable(MEM_SIZE, 512),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        assert_eq!(h.image.contents(), pattern(DISK_SECTORS as usize * 512));
        h.assert_still_works();
    }

    #[test]
    fn a_header_outside_guest_memory_gets_ioerr() {
        let mut h = Harness::new(false);
        let used = h.submit(&[
            readable(MEM_SIZE - 8, 16),
            writable(DATA, 512),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        h.assert_still_works();
    }

    #[test]
    fn a_status_buffer_outside_guest_memory_is_completed_without_a_status() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_IN, 0);
        let used = h.submit(&[
            readable(HEADER, 16),
            writable(DATA, 512),
            writable(MEM_SIZE, 1),
        ]);
        assert_eq!((h.status(), used), (UNTOUCHED, 0));
        h.assert_still_works();
    }

    #[test]
    fn a_looping_chain_gets_ioerr_in_its_last_descriptor() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_IN, 0);
        h.q.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        // header -> data -> status -> header -> ...
        h.q.driver.write_descriptor(0, HEADER, 16, DESC_F_NEXT, 1);
        h.q.driver
            .write_descriptor(1, DATA, 512, DESC_F_NEXT | DESC_F_WRITE, 2);
        h.q.driver
            .write_descriptor(2, STATUS, 1, DESC_F_NEXT | DESC_F_WRITE, 0);
        h.q.driver.publish(0);
        let used = h.complete(0);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        h.assert_still_works();
    }

    #[test]
    fn a_chain_of_more_descriptors_than_the_queue_holds_gets_ioerr() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_IN, 0);
        h.q.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        // All 16 descriptors in one chain (header, 14 data buffers, status), and then the
        // last one links back to the first: the driver claims a 17th descriptor.
        h.q.driver.write_descriptor(0, HEADER, 16, DESC_F_NEXT, 1);
        for i in 1..15u16 {
            let addr = DATA + 512 * u64::from(i - 1);
            h.q.driver
                .write_descriptor(i, addr, 512, DESC_F_NEXT | DESC_F_WRITE, i + 1);
        }
        h.q.driver
            .write_descriptor(15, STATUS, 1, DESC_F_NEXT | DESC_F_WRITE, 0);
        h.q.driver.publish(0);
        let used = h.complete(0);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        h.assert_still_works();
    }

    #[test]
    fn a_link_outside_the_queue_and_indirect_tables_get_ioerr() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_IN, 0);
        h.q.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        h.q.driver
            .write_descriptor(3, STATUS, 1, DESC_F_NEXT | DESC_F_WRITE, 200);
        h.q.driver.publish(3);
        assert_eq!(h.complete(3), 1);
        assert_eq!(h.status(), STATUS_IOERR);

        // Indirect descriptors were not offered.
        h.q.mem.write_obj(UNTOUCHED, GuestAddress(STATUS)).unwrap();
        h.q.driver.write_descriptor(4, HEADER, 16, DESC_F_NEXT, 5);
        h.q.driver
            .write_descriptor(5, 0x50000, 48, DESC_F_NEXT | DESC_F_INDIRECT, 6);
        h.q.driver.write_descriptor(6, STATUS, 1, DESC_F_WRITE, 0);
        h.q.driver.publish(4);
        // The walk stops at the indirect descriptor; the last one read is the header,
        // which is not writable: no status can be given.
        assert_eq!(h.complete(4), 0);
        assert_eq!(h.status(), UNTOUCHED);
        h.assert_still_works();
    }

    #[test]
    fn zero_lengths_get_ioerr() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_IN, 0);
        let used = h.submit(&[readable(HEADER, 16), writable(DATA, 0), writable(STATUS, 1)]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        // A read of no data at all.
        let used = h.submit(&[readable(HEADER, 16), writable(STATUS, 1)]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        // A zero-length header.
        let used = h.submit(&[
            readable(HEADER, 0),
            writable(DATA, 512),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        // A zero-length status buffer: nowhere to answer.
        let used = h.submit(&[
            readable(HEADER, 16),
            writable(DATA, 512),
            writable(STATUS, 0),
        ]);
        assert_eq!((h.status(), used), (UNTOUCHED, 0));
        h.assert_still_works();
    }

    #[test]
    fn huge_and_partial_lengths_get_ioerr() {
        let mut h = Harness::new(false);
        for len in [u32::MAX, u32::MAX - 511, 0x8000_0000, 100, 513] {
            h.header(VIRTIO_BLK_T_IN, 0);
            let used = h.submit(&[
                readable(HEADER, 16),
                writable(DATA, len),
                writable(STATUS, 1),
            ]);
            assert_eq!((h.status(), used), (STATUS_IOERR, 1), "{len:#x}");
        }
        // A huge header descriptor.
        let used = h.submit(&[readable(HEADER, u32::MAX), writable(STATUS, 1)]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        h.assert_still_works();
    }

    #[test]
    fn wrong_direction_flags_get_ioerr() {
        let mut h = Harness::new(false);
        // A read into a device-readable buffer.
        h.header(VIRTIO_BLK_T_IN, 0);
        let used = h.submit(&[
            readable(HEADER, 16),
            readable(DATA, 512),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        // A write from a device-writable buffer: the file is not touched.
        h.header(VIRTIO_BLK_T_OUT, 0);
        let used = h.submit(&[
            readable(HEADER, 16),
            writable(DATA, 512),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        // A device-writable header.
        h.header(VIRTIO_BLK_T_IN, 0);
        let used = h.submit(&[
            writable(HEADER, 16),
            writable(DATA, 512),
            writable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (STATUS_IOERR, 1));
        // A device-readable status byte: nowhere to answer.
        let used = h.submit(&[
            readable(HEADER, 16),
            writable(DATA, 512),
            readable(STATUS, 1),
        ]);
        assert_eq!((h.status(), used), (UNTOUCHED, 0));
        assert_eq!(h.image.contents(), pattern(DISK_SECTORS as usize * 512));
        h.assert_still_works();
    }

    #[test]
    fn sectors_past_the_end_of_the_disk_get_ioerr() {
        let mut h = Harness::new(false);
        assert_eq!(h.read(DISK_SECTORS - 1, 1024), (STATUS_IOERR, 1));
        assert_eq!(h.read(DISK_SECTORS, 512), (STATUS_IOERR, 1));
        assert_eq!(h.read(u64::MAX, 512), (STATUS_IOERR, 1));
        assert_eq!(h.read(u64::MAX / 512 + 1, 512), (STATUS_IOERR, 1));
        assert_eq!(h.write(DISK_SECTORS - 1, &[1; 1024]), (STATUS_IOERR, 1));
        assert_eq!(
            h.image.contents().len(),
            DISK_SECTORS as usize * 512,
            "not extended"
        );
        // The last sector itself is fine.
        assert_eq!(h.read(DISK_SECTORS - 1, 512), (STATUS_OK, 513));
        h.assert_still_works();
    }

    #[test]
    fn writes_to_a_read_only_disk_get_ioerr() {
        let mut h = Harness::new(true);
        assert_eq!(h.write(0, &[0x11; 512]), (STATUS_IOERR, 1));
        assert_eq!(
            h.ranges(VIRTIO_BLK_T_DISCARD, &[(0, 8, 0)]),
            (STATUS_IOERR, 1)
        );
        assert_eq!(
            h.ranges(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0)]),
            (STATUS_IOERR, 1)
        );
        assert_eq!(h.image.contents(), pattern(DISK_SECTORS as usize * 512));
        // Reading and flushing a read-only disk are fine.
        assert_eq!(h.simple(VIRTIO_BLK_T_FLUSH), (STATUS_OK, 1));
        h.assert_still_works();
    }

    #[test]
    fn unknown_request_types_get_unsupp() {
        let mut h = Harness::new(false);
        for request_type in [VIRTIO_BLK_T_SCSI_CMD, 3, 0xdead_beef] {
            assert_eq!(h.simple(request_type), (STATUS_UNSUPP, 1), "{request_type}");
        }
        h.assert_still_works();
        assert_eq!(h.block.bad_requests, 3);
    }

    #[test]
    fn an_available_index_beyond_the_queue_needs_a_reset() {
        let mut h = Harness::new(false);
        // The driver claims 17 new buffers in a 16-entry queue.
        h.q.driver.set_avail_idx(SIZE + 1);
        h.block.process_queue();
        assert_eq!(h.q.driver.used_idx(), 0, "nothing completed");
        assert_eq!(h.q.irq.counts(), (0, 0, 1), "DEVICE_NEEDS_RESET reported");
        // The device leaves the queue alone until it is reset...
        h.q.driver.set_avail_idx(0);
        h.block.process_queue();
        assert_eq!(h.q.irq.counts(), (0, 0, 1));
        // ...and works again after it.
        assert!(h.block.reset());
        h.activate();
        h.assert_still_works();
    }

    #[test]
    fn a_head_outside_the_queue_needs_a_reset() {
        let mut h = Harness::new(false);
        assert_eq!(h.read(0, 512), (STATUS_OK, 513));
        h.q.driver.publish(SIZE + 3);
        h.block.process_queue();
        assert_eq!(h.q.driver.used_idx(), 1, "only the first request completed");
        assert_eq!(h.q.irq.counts(), (1, 0, 1));
        assert!(h.block.reset());
        h.activate();
        h.assert_still_works();
    }

    #[test]
    fn a_batch_raises_one_interrupt_and_leaves_notifications_enabled() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_IN, 2);
        for i in 0..3u64 {
            h.q.driver.add_chain(&[
                readable(HEADER, 16),
                writable(DATA + 0x1000 * i, 512),
                writable(STATUS + i, 1),
            ]);
        }
        h.block.process_queue();
        assert_eq!(h.q.driver.used_idx(), 3);
        for i in 0..3u16 {
            assert_eq!(h.q.driver.used(i), (3 * u32::from(i), 513));
        }
        assert_eq!(h.q.irq.counts(), (1, 0, 0));
        assert_eq!(
            h.q.driver.used_flags(),
            0,
            "VRING_USED_F_NO_NOTIFY cleared again"
        );
        assert_eq!(
            h.q.notify.read().ok(),
            None,
            "no self-kick for a partial ring"
        );
        // Nothing new: no completion, no interrupt.
        h.block.process_queue();
        assert_eq!((h.q.driver.used_idx(), h.q.irq.counts()), (3, (1, 0, 0)));
    }

    #[test]
    fn a_full_ring_yields_to_the_event_loop_and_continues() {
        let mut h = Harness::new(false);
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        for _ in 0..SIZE {
            h.q.driver
                .add_chain(&[readable(HEADER, 16), writable(STATUS, 1)]);
        }
        h.block.process_queue();
        assert_eq!(h.q.driver.used_idx(), SIZE);
        assert_eq!(
            h.q.notify.read().unwrap(),
            1,
            "the device asked to run again"
        );
        h.q.completed = SIZE;
        h.assert_still_works();
    }

    #[test]
    fn an_inactive_device_ignores_its_queue() {
        let mut h = Harness::new(false);
        assert!(h.block.reset());
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        h.q.driver
            .add_chain(&[readable(HEADER, 16), writable(STATUS, 1)]);
        h.block.process_queue();
        assert_eq!(h.q.driver.used_idx(), 0);
        assert_eq!(h.q.irq.counts(), (0, 0, 0));
    }

    #[test]
    fn a_queue_the_driver_disabled_is_left_alone() {
        let mut h = Harness::new(false);
        h.block.disable_queue(1); // no such queue: nothing happens
        h.assert_still_works();
        h.block.disable_queue(0);
        h.header(VIRTIO_BLK_T_FLUSH, 0);
        h.q.driver
            .add_chain(&[readable(HEADER, 16), writable(STATUS, 1)]);
        h.block.process_queue();
        assert_eq!(h.q.driver.used_idx(), h.q.completed, "nothing completed");
        assert_eq!(h.q.irq.counts().2, 0, "not an error");
        assert!(h.block.reset());
        h.activate();
        h.assert_still_works();
    }

    #[test]
    fn the_event_loop_runs_requests_and_follows_activation_and_reset() {
        let image = TempImage::new("event-loop", &pattern(8192));
        let block = Arc::new(Mutex::new(
            Block::new(BlockConfig {
                path: image.0.clone(),
                read_only: false,
                id: None,
            })
            .unwrap(),
        ));
        let mut manager: EventManager<Arc<Mutex<Block>>> = EventManager::new().unwrap();
        manager.add_subscriber(block.clone());
        let mem = guest_memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let header = |request_type: u32| {
            mem.write_obj(request_type, GuestAddress(HEADER)).unwrap();
            mem.write_obj(0u64, GuestAddress(HEADER + 8)).unwrap();
        };
        let flush = [readable(HEADER, 16), writable(STATUS, 1)];
        header(VIRTIO_BLK_T_FLUSH);
        let activate = |driver: &DriverQueue| {
            let queue = ActiveQueue {
                queue: driver.device_queue(),
                notify: notify.try_clone().unwrap(),
            };
            block
                .lock()
                .unwrap()
                .activate(mem.clone(), irq.clone(), vec![queue])
                .unwrap();
        };

        // A request the driver made before DRIVER_OK is served when the device starts.
        let mut driver = DriverQueue::new(&mem, SIZE);
        driver.add_chain(&flush);
        activate(&driver);
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(driver.used_idx(), 1);

        // A notification, as KVM's ioeventfd would deliver it.
        driver.add_chain(&flush);
        notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(driver.used_idx(), 2);
        assert_eq!(irq.counts(), (2, 0, 0));

        // After a reset the queue eventfd is no longer watched.
        assert!(block.lock().unwrap().reset());
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        driver.add_chain(&flush);
        notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(50).unwrap(), 0);
        assert_eq!(driver.used_idx(), 2);
        notify.read().unwrap();

        // Started again on new rings, it works.
        let mut driver = DriverQueue::new(&mem, SIZE);
        activate(&driver);
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        driver.add_chain(&flush);
        notify.write(1).unwrap();
        assert_eq!(manager.run_with_timeout(1000).unwrap(), 1);
        assert_eq!(driver.used_idx(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), STATUS_OK);
        assert_eq!(irq.counts(), (3, 0, 0));
        // The rings are where the driver put them.
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED_RING + 2)).unwrap(), 1);
    }

    /// A hostile driver's random requests, batch after batch: random chains, and request
    /// chains with random headers (types, sectors), data and status buffers, some spoiled.
    /// The device never panics, never writes outside the writable buffers a chain names,
    /// never reports more bytes than they hold, and after each batch either needs a reset or
    /// still reads the image correctly.
    #[test]
    fn random_hostile_requests_are_answered_safely() {
        const SEED: u64 = 0x5eed_0004;
        const BATCHES: u64 = 600;
        let types = [
            VIRTIO_BLK_T_IN,
            VIRTIO_BLK_T_OUT,
            VIRTIO_BLK_T_FLUSH,
            VIRTIO_BLK_T_GET_ID,
            VIRTIO_BLK_T_DISCARD,
            VIRTIO_BLK_T_WRITE_ZEROES,
            VIRTIO_BLK_T_SCSI_CMD,
        ];
        let mut h = Harness::new(false);
        let limits = [16, 512, 513, 16 * 1024, (1 << 20) + 1, 17];
        let mut rc = RandomChains::new(SEED, (HEADER, MEM_SIZE), &limits);
        scribble(&h.q.mem, &mut rc.rng, &h.q.driver.ring_ranges());
        for batch in 0..BATCHES {
            let ctx = format!("seed {SEED:#x}, batch {batch}");
            rc.begin(&mut h.q.driver);
            let from = h.q.driver.used_idx();
            let count = 1 + rc.rng.below(6);
            let mem = h.q.mem.clone();
            rc.batch(&mut h.q.driver, count, true, |rc, driver| {
                if rc.rng.one_in(3) {
                    rc.chain(driver, None)
                } else {
                    // A third are well-formed requests, the rest have random values.
                    let clean = rc.rng.one_in(3);
                    let request_type = if clean {
                        rc.rng.pick(&types[..6])
                    } else if rc.rng.one_in(8) {
                        rc.rng.next_u32()
                    } else {
                        rc.rng.pick(&types)
                    };
                    let sector = match rc.rng.below(if clean { 1 } else { 6 }) {
                        0 => rc.rng.below(DISK_SECTORS - 8),
                        1 => u64::MAX - rc.rng.below(2),
                        2 => u64::MAX / 512,
                        3 => DISK_SECTORS - rc.rng.below(2),
                        _ => rc.rng.next_u64(),
                    };
                    let data_len = if clean || rc.rng.one_in(2) {
                        512 * rc.rng.below(8) as u32
                    } else {
                        rc.len()
                    };
                    let addr = |rc: &mut RandomChains, len: u32| {
                        if clean {
                            rc.data_addr(u64::from(len))
                        } else {
                            rc.addr()
                        }
                    };
                    let header_addr = addr(rc, 16);
                    let data_addr = addr(rc, data_len);
                    let status_addr = addr(rc, 1);
                    let mut header = [0u8; 16];
                    header[..4].copy_from_slice(&request_type.to_le_bytes());
                    header[8..].copy_from_slice(&sector.to_le_bytes());
                    let _ = mem.write_slice(&header, GuestAddress(header_addr));
                    let mut bufs = vec![readable(header_addr, 16)];
                    if !clean && rc.rng.one_in(4) {
                        bufs[0].len = rc.len();
                    }
                    let device_writes =
                        request_type == VIRTIO_BLK_T_IN || request_type == VIRTIO_BLK_T_GET_ID;
                    if data_len > 0 || !clean {
                        bufs.extend(rc.split(data_addr, data_len, device_writes));
                    }
                    let status_len = if !clean && rc.rng.one_in(4) {
                        rc.len()
                    } else {
                        1
                    };
                    bufs.push(writable(status_addr, status_len));
                    if clean {
                        bufs.retain(|b| b.len > 0);
                    } else {
                        rc.spoil(&mut bufs);
                    }
                    rc.buffers(driver, &bufs)
                }
            });
            let snapshot = MemSnapshot::take(&h.q.mem);
            let block = &mut h.block;
            run_checked(&h.q.driver, &snapshot, from, &ctx, || block.process_queue());
            h.q.recover(&mut h.block, &ctx);
            h.assert_still_works();
        }
    }
}
