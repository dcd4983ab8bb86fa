//! What a block device did: request counts, bytes moved, and the host time spent on them.
//!
//! The counters are relaxed atomics, written by the event loop as it completes each request
//! and read by anyone holding the `Arc` (the metrics writer, the `--exit-stats` table) without
//! taking the device's lock: a reader may see a request's count before its bytes, never a
//! torn number. The names are Firecracker's (`BlockDeviceMetrics`) where the meaning is the
//! same; unlike Firecracker's, the values are totals since the device was created, not deltas
//! since the last metrics write.

use std::sync::atomic::{AtomicU64, Ordering};

use super::request::{Answer, Completed};

/// min / max / sum of the host time of one kind of request.
#[derive(Debug)]
struct Latency {
    min_ns: AtomicU64,
    max_ns: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            min_ns: AtomicU64::new(u64::MAX),
            max_ns: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Latency {
    fn record(&self, ns: u64) {
        self.min_ns.fetch_min(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LatencyAggregate {
        let min_ns = self.min_ns.load(Ordering::Relaxed);
        LatencyAggregate {
            // Nothing recorded yet: 0, as Firecracker reports it.
            min_ns: if min_ns == u64::MAX { 0 } else { min_ns },
            max_ns: self.max_ns.load(Ordering::Relaxed),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// Host time spent on one kind of request: Firecracker's `read_agg` / `write_agg`, kept in
/// nanoseconds (the metrics file shows microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyAggregate {
    /// The fastest request (0 when there was none).
    pub min_ns: u64,
    /// The slowest request.
    pub max_ns: u64,
    /// All requests together.
    pub sum_ns: u64,
}

impl LatencyAggregate {
    /// Both aggregates together, as if one device had seen all the requests.
    pub fn merge(self, other: Self) -> Self {
        let min_ns = match (self.min_ns, other.min_ns) {
            (0, min) | (min, 0) => min,
            (a, b) => a.min(b),
        };
        Self {
            min_ns,
            max_ns: self.max_ns.max(other.max_ns),
            sum_ns: self.sum_ns.saturating_add(other.sum_ns),
        }
    }
}

/// The live counters of one block device. Get them with
/// [`Block::stats`](super::Block::stats); read them with [`BlockStats::snapshot`].
#[derive(Debug, Default)]
pub struct BlockStats {
    read_count: AtomicU64,
    write_count: AtomicU64,
    flush_count: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    invalid_reqs_count: AtomicU64,
    execute_fails: AtomicU64,
    requests: AtomicU64,
    request_ns_total: AtomicU64,
    read_agg: Latency,
    write_agg: Latency,
}

/// A copy of a device's counters, taken at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStatsSnapshot {
    /// Reads (`VIRTIO_BLK_T_IN`) that completed with OK.
    pub read_count: u64,
    /// Writes (`VIRTIO_BLK_T_OUT`) that completed with OK.
    pub write_count: u64,
    /// Flushes that completed with OK.
    pub flush_count: u64,
    /// Bytes read from the image by successful reads.
    pub read_bytes: u64,
    /// Bytes written to the image by successful writes.
    pub write_bytes: u64,
    /// Requests the guest got wrong (IOERR or UNSUPP because of what the driver sent, or no
    /// room for a status): the cases of the [hostile-driver list](super#hostile-drivers).
    pub invalid_reqs_count: u64,
    /// Well-formed requests the host failed to execute (an I/O error from the image).
    pub execute_fails: u64,
    /// Every chain the device answered, whatever its type and outcome.
    pub requests: u64,
    /// Host time spent answering those chains (parse, disk I/O, status), in nanoseconds,
    /// measured around each one on the event loop.
    pub request_ns_total: u64,
    /// Host time of the successful reads.
    pub read_agg: LatencyAggregate,
    /// Host time of the successful writes.
    pub write_agg: LatencyAggregate,
}

impl BlockStats {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one answered chain that took `ns` nanoseconds of host time.
    pub(crate) fn record(&self, answer: &Answer, ns: u64) {
        let add = |counter: &AtomicU64, n: u64| {
            counter.fetch_add(n, Ordering::Relaxed);
        };
        add(&self.requests, 1);
        add(&self.request_ns_total, ns);
        match (&answer.completed, &answer.error) {
            (Some(Completed::Read { bytes }), _) => {
                add(&self.read_count, 1);
                add(&self.read_bytes, *bytes);
                self.read_agg.record(ns);
            }
            (Some(Completed::Write { bytes }), _) => {
                add(&self.write_count, 1);
                add(&self.write_bytes, *bytes);
                self.write_agg.record(ns);
            }
            (Some(Completed::Flush), _) => add(&self.flush_count, 1),
            (Some(Completed::Other), _) | (None, None) => {}
            (None, Some(error)) if error.is_guest_error() => add(&self.invalid_reqs_count, 1),
            (None, Some(_)) => add(&self.execute_fails, 1),
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> BlockStatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BlockStatsSnapshot {
            read_count: get(&self.read_count),
            write_count: get(&self.write_count),
            flush_count: get(&self.flush_count),
            read_bytes: get(&self.read_bytes),
            write_bytes: get(&self.write_bytes),
            invalid_reqs_count: get(&self.invalid_reqs_count),
            execute_fails: get(&self.execute_fails),
            requests: get(&self.requests),
            request_ns_total: get(&self.request_ns_total),
            read_agg: self.read_agg.snapshot(),
            write_agg: self.write_agg.snapshot(),
        }
    }
}

impl BlockStatsSnapshot {
    /// The counters of two devices added up (for an all-disks total).
    pub fn merge(self, other: Self) -> Self {
        Self {
            read_count: self.read_count.saturating_add(other.read_count),
            write_count: self.write_count.saturating_add(other.write_count),
            flush_count: self.flush_count.saturating_add(other.flush_count),
            read_bytes: self.read_bytes.saturating_add(other.read_bytes),
            write_bytes: self.write_bytes.saturating_add(other.write_bytes),
            invalid_reqs_count: self
                .invalid_reqs_count
                .saturating_add(other.invalid_reqs_count),
            execute_fails: self.execute_fails.saturating_add(other.execute_fails),
            requests: self.requests.saturating_add(other.requests),
            request_ns_total: self.request_ns_total.saturating_add(other.request_ns_total),
            read_agg: self.read_agg.merge(other.read_agg),
            write_agg: self.write_agg.merge(other.write_agg),
        }
    }

    /// Mean host time per answered chain, in nanoseconds (0 without requests).
    pub fn mean_request_ns(&self) -> u64 {
        self.request_ns_total
            .checked_div(self.requests)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::request::RequestError;

    fn ok(completed: Completed) -> Answer {
        Answer {
            used_len: 1,
            status: Some(0),
            completed: Some(completed),
            error: None,
        }
    }

    fn failed(error: RequestError) -> Answer {
        Answer {
            used_len: 1,
            status: Some(error.status()),
            completed: None,
            error: Some(error),
        }
    }

    #[test]
    fn each_outcome_lands_in_its_counter() {
        let stats = BlockStats::new();
        assert_eq!(stats.snapshot(), BlockStatsSnapshot::default());
        stats.record(&ok(Completed::Read { bytes: 4096 }), 300);
        stats.record(&ok(Completed::Read { bytes: 512 }), 100);
        stats.record(&ok(Completed::Write { bytes: 1024 }), 700);
        stats.record(&ok(Completed::Flush), 5_000);
        stats.record(&ok(Completed::Other), 10);
        stats.record(&failed(RequestError::UnsupportedType(9)), 20);
        stats.record(&failed(RequestError::NoStatus), 30);
        stats.record(&failed(RequestError::Io(std::io::Error::other("gone"))), 40);
        let s = stats.snapshot();
        assert_eq!((s.read_count, s.read_bytes), (2, 4608));
        assert_eq!((s.write_count, s.write_bytes), (1, 1024));
        assert_eq!(s.flush_count, 1);
        assert_eq!(s.invalid_reqs_count, 2);
        assert_eq!(s.execute_fails, 1);
        assert_eq!(s.requests, 8);
        assert_eq!(s.request_ns_total, 6_200);
        assert_eq!(s.mean_request_ns(), 775);
        assert_eq!(
            s.read_agg,
            LatencyAggregate {
                min_ns: 100,
                max_ns: 300,
                sum_ns: 400
            }
        );
        assert_eq!(s.write_agg.sum_ns, 700);
        assert_eq!(BlockStatsSnapshot::default().mean_request_ns(), 0);
    }

    #[test]
    fn snapshots_merge_into_totals() {
        let a = BlockStats::new();
        let b = BlockStats::new();
        a.record(&ok(Completed::Read { bytes: 512 }), 50);
        b.record(&ok(Completed::Read { bytes: 1024 }), 80);
        b.record(&ok(Completed::Write { bytes: 512 }), 90);
        let total = a.snapshot().merge(b.snapshot());
        assert_eq!((total.read_count, total.read_bytes), (2, 1536));
        assert_eq!(total.requests, 3);
        assert_eq!(
            total.read_agg,
            LatencyAggregate {
                min_ns: 50,
                max_ns: 80,
                sum_ns: 130
            }
        );
        // A device with no writes does not pull the minimum down to 0.
        assert_eq!(total.write_agg.min_ns, 90);
    }

    #[test]
    fn counters_are_shared_between_threads() {
        let stats = std::sync::Arc::new(BlockStats::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.record(&ok(Completed::Write { bytes: 512 }), 1);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let s = stats.snapshot();
        assert_eq!(
            (s.write_count, s.write_bytes, s.requests),
            (4000, 2_048_000, 4000)
        );
        assert_eq!((s.write_agg.min_ns, s.write_agg.max_ns), (1, 1));
    }
}
