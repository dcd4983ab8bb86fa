//! Always-on VM-exit statistics: a count and the total handling time per exit reason, and
//! the moment of the first `KVM_RUN`.
//!
//! One [`ExitStats`] is shared (as an `Arc`) by every vCPU thread of a VM. The run loop
//! calls [`ExitStats::record`] once per exit with the time the VMM spent handling it: the
//! time from `KVM_RUN` returning to the exit being dealt with (the [`crate::VcpuExitHandler`]
//! call for port and MMIO exits), not the time the guest ran. Recording is two relaxed atomic
//! additions and takes no lock.
//!
//! To keep vCPUs from fighting over one cache line, the counters are split into
//! [`SHARDS`] cache-line-aligned shards; each thread that records picks one shard once (round
//! robin) and keeps it. [`ExitStats::snapshot`] adds the shards up. A snapshot taken while
//! vCPUs run is not one atomic picture (a count may already include an exit whose time is
//! not in the total yet), which is fine for statistics.
//!
//! ```
//! use std::time::Duration;
//! use petrel_vcpu::exit_stats::{ExitKind, ExitStats};
//!
//! let stats = ExitStats::new();
//! stats.record(ExitKind::IoOut, 1_500);
//! stats.record(ExitKind::IoOut, 2_500);
//! let io_out = stats.get(ExitKind::IoOut);
//! assert_eq!((io_out.name, io_out.count, io_out.total_ns), ("io_out", 2, 4_000));
//! assert_eq!(io_out.mean(), Some(Duration::from_nanos(2_000)));
//! ```

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;

/// How many independent copies of the counters an [`ExitStats`] keeps.
pub const SHARDS: usize = 8;

/// The exit reasons petrel counts separately. Everything else is [`ExitKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitKind {
    /// `KVM_EXIT_IO`, a port read (`in`, `ins`).
    IoIn,
    /// `KVM_EXIT_IO`, a port write (`out`, `outs`).
    IoOut,
    /// `KVM_EXIT_MMIO`, a read.
    MmioRead,
    /// `KVM_EXIT_MMIO`, a write.
    MmioWrite,
    /// `KVM_EXIT_INTR` or `KVM_RUN` returning `EINTR`/`EAGAIN`: a signal (normally the VMM's
    /// kick) took the vCPU out of the guest.
    Intr,
    /// `KVM_EXIT_HLT` (only without the in-kernel irqchip).
    Hlt,
    /// `KVM_EXIT_SHUTDOWN`: a triple fault.
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT`: reset, power-off, crash.
    SystemEvent,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry,
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError,
    /// Any other exit.
    Other,
}

impl ExitKind {
    /// Every kind, in the order [`ExitStats::snapshot`] reports them.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Intr,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::FailEntry,
        ExitKind::InternalError,
        ExitKind::Other,
    ];

    /// The number of kinds.
    pub const COUNT: usize = Self::ALL.len();

    /// A short snake_case name, usable as a table row or a JSON key (`io_out`, `mmio_read`…).
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io_in",
            ExitKind::IoOut => "io_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Intr => "intr",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::InternalError => "internal_error",
            ExitKind::Other => "other",
        }
    }

    /// The kind of a KVM exit.
    pub fn of(exit: &VcpuExit<'_>) -> ExitKind {
        match exit {
            VcpuExit::IoIn(..) => ExitKind::IoIn,
            VcpuExit::IoOut(..) => ExitKind::IoOut,
            VcpuExit::MmioRead(..) => ExitKind::MmioRead,
            VcpuExit::MmioWrite(..) => ExitKind::MmioWrite,
            VcpuExit::Intr => ExitKind::Intr,
            VcpuExit::Hlt => ExitKind::Hlt,
            VcpuExit::Shutdown => ExitKind::Shutdown,
            VcpuExit::SystemEvent(..) => ExitKind::SystemEvent,
            VcpuExit::FailEntry(..) => ExitKind::FailEntry,
            VcpuExit::InternalError => ExitKind::InternalError,
            _ => ExitKind::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The totals for one exit kind, as [`ExitStats::snapshot`] returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStat {
    /// [`ExitKind::name`] of the kind.
    pub name: &'static str,
    /// How many exits of this kind there were.
    pub count: u64,
    /// The total handling time of those exits, in nanoseconds.
    pub total_ns: u64,
}

impl ExitStat {
    /// The mean handling time, or `None` when there were no exits.
    pub fn mean(&self) -> Option<Duration> {
        (self.count != 0).then(|| Duration::from_nanos(self.total_ns / self.count))
    }
}

/// One kind's counters.
#[derive(Debug, Default)]
struct Counter {
    count: AtomicU64,
    total_ns: AtomicU64,
}

/// A full set of counters on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Shard([Counter; ExitKind::COUNT]);

/// Exit counts and handling times for all vCPUs of a VM, plus the time of the first
/// `KVM_RUN`. `Send + Sync`: share it as an `Arc`.
#[derive(Debug)]
pub struct ExitStats {
    shards: [Shard; SHARDS],
    first_run: Arc<OnceLock<Instant>>,
}

impl Default for ExitStats {
    fn default() -> Self {
        Self::new()
    }
}

thread_local! {
    /// The shard this thread records into; `usize::MAX` until it first records.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Hands out shards to threads, round robin.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn this_threads_shard() -> usize {
    SHARD
        .try_with(|shard| {
            if shard.get() == usize::MAX {
                shard.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            shard.get()
        })
        // Only while the thread's locals are being destroyed: any shard is correct.
        .unwrap_or(0)
}

/// A duration in nanoseconds, saturating (at 584 years).
pub fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl ExitStats {
    /// All counters at zero, no `KVM_RUN` yet.
    pub fn new() -> Self {
        Self::with_first_run(Arc::new(OnceLock::new()))
    }

    /// Like [`new`](Self::new), but the first `KVM_RUN` is recorded in `cell`, which the VMM
    /// may already have handed to something else (a boot timer device, say).
    pub fn with_first_run(cell: Arc<OnceLock<Instant>>) -> Self {
        ExitStats {
            shards: Default::default(),
            first_run: cell,
        }
    }

    /// Counts one exit of `kind` that took `nanos` to handle. Lock-free: two relaxed atomic
    /// additions on this thread's shard.
    pub fn record(&self, kind: ExitKind, nanos: u64) {
        let counter = &self.shards[this_threads_shard()].0[kind.index()];
        counter.count.fetch_add(1, Ordering::Relaxed);
        counter.total_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The totals for one kind.
    pub fn get(&self, kind: ExitKind) -> ExitStat {
        let (count, total_ns) = self.shards.iter().fold((0u64, 0u64), |(c, t), shard| {
            let counter = &shard.0[kind.index()];
            (
                c.wrapping_add(counter.count.load(Ordering::Relaxed)),
                t.wrapping_add(counter.total_ns.load(Ordering::Relaxed)),
            )
        });
        ExitStat {
            name: kind.name(),
            count,
            total_ns,
        }
    }

    /// The totals for every kind, in [`ExitKind::ALL`] order, including kinds with no exits.
    pub fn snapshot(&self) -> Vec<ExitStat> {
        ExitKind::ALL.iter().map(|&kind| self.get(kind)).collect()
    }

    /// The number of exits of all kinds.
    pub fn total_exits(&self) -> u64 {
        ExitKind::ALL
            .iter()
            .map(|&kind| self.get(kind).count)
            .fold(0, u64::wrapping_add)
    }

    /// Records now as the first `KVM_RUN`, unless one was recorded already. The run loop calls
    /// this just before a vCPU thread enters the guest for the first time.
    pub fn mark_first_run(&self) {
        self.first_run.get_or_init(Instant::now);
    }

    /// When the first vCPU first entered `KVM_RUN`, if one has.
    pub fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    /// The cell holding the first `KVM_RUN` instant, to share with code that must not depend
    /// on this crate (petrel's boot timer device takes an `Arc<OnceLock<Instant>>`).
    pub fn first_run_cell(&self) -> Arc<OnceLock<Instant>> {
        self.first_run.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_add_up_per_kind() {
        let stats = ExitStats::new();
        stats.record(ExitKind::IoOut, 100);
        stats.record(ExitKind::IoOut, 300);
        stats.record(ExitKind::MmioRead, 7);
        assert_eq!(
            stats.get(ExitKind::IoOut),
            ExitStat {
                name: "io_out",
                count: 2,
                total_ns: 400
            }
        );
        assert_eq!(stats.get(ExitKind::MmioRead).count, 1);
        assert_eq!(stats.get(ExitKind::IoIn).count, 0);
        assert_eq!(stats.total_exits(), 3);
    }

    #[test]
    fn snapshot_lists_every_kind_in_order() {
        let stats = ExitStats::new();
        stats.record(ExitKind::Other, 5);
        let snapshot = stats.snapshot();
        let names: Vec<_> = snapshot.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "io_in",
                "io_out",
                "mmio_read",
                "mmio_write",
                "intr",
                "hlt",
                "shutdown",
                "system_event",
                "fail_entry",
                "internal_error",
                "other"
            ]
        );
        let counted: Vec<_> = snapshot.iter().filter(|s| s.count > 0).collect();
        assert_eq!(counted.len(), 1);
        assert_eq!((counted[0].name, counted[0].total_ns), ("other", 5));
    }

    #[test]
    fn records_from_many_threads_are_all_counted() {
        let stats = Arc::new(ExitStats::new());
        let threads: Vec<_> = (0..SHARDS as u64 + 3)
            .map(|i| {
                let stats = stats.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.record(ExitKind::IoIn, i);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let io_in = stats.get(ExitKind::IoIn);
        let n = SHARDS as u64 + 3;
        assert_eq!(io_in.count, n * 1000);
        assert_eq!(io_in.total_ns, 1000 * n * (n - 1) / 2);
    }

    #[test]
    fn mean_is_none_without_exits() {
        let stat = ExitStat {
            name: "io_in",
            count: 0,
            total_ns: 0,
        };
        assert_eq!(stat.mean(), None);
        let stat = ExitStat {
            count: 3,
            total_ns: 3_003,
            ..stat
        };
        assert_eq!(stat.mean(), Some(Duration::from_nanos(1_001)));
    }

    #[test]
    fn first_run_is_kept_once_and_shared_with_the_cell() {
        let cell = Arc::new(OnceLock::new());
        let stats = ExitStats::with_first_run(cell.clone());
        assert_eq!(stats.first_run(), None);
        let before = Instant::now();
        stats.mark_first_run();
        let first = stats.first_run().unwrap();
        assert!(first >= before);
        std::thread::sleep(Duration::from_millis(2));
        stats.mark_first_run();
        assert_eq!(stats.first_run(), Some(first), "later runs do not move it");
        assert_eq!(cell.get().copied(), Some(first));
        assert!(Arc::ptr_eq(&stats.first_run_cell(), &cell));
    }

    #[test]
    fn kinds_of_exits() {
        let mut buf = [0u8; 1];
        assert_eq!(
            ExitKind::of(&VcpuExit::IoIn(0x60, &mut buf)),
            ExitKind::IoIn
        );
        assert_eq!(ExitKind::of(&VcpuExit::IoOut(0x3f8, b"x")), ExitKind::IoOut);
        assert_eq!(
            ExitKind::of(&VcpuExit::MmioRead(0x1000, &mut buf)),
            ExitKind::MmioRead
        );
        assert_eq!(
            ExitKind::of(&VcpuExit::MmioWrite(0x1000, b"x")),
            ExitKind::MmioWrite
        );
        assert_eq!(ExitKind::of(&VcpuExit::Intr), ExitKind::Intr);
        assert_eq!(ExitKind::of(&VcpuExit::Hlt), ExitKind::Hlt);
        assert_eq!(ExitKind::of(&VcpuExit::Shutdown), ExitKind::Shutdown);
        assert_eq!(
            ExitKind::of(&VcpuExit::SystemEvent(1, &[])),
            ExitKind::SystemEvent
        );
        assert_eq!(
            ExitKind::of(&VcpuExit::FailEntry(0, 0)),
            ExitKind::FailEntry
        );
        assert_eq!(
            ExitKind::of(&VcpuExit::InternalError),
            ExitKind::InternalError
        );
        assert_eq!(ExitKind::of(&VcpuExit::Nmi), ExitKind::Other);
        assert_eq!(ExitKind::of(&VcpuExit::Unknown), ExitKind::Other);
        for (i, kind) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i, "ALL is in declaration order");
        }
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(duration_ns(Duration::from_micros(3)), 3_000);
        assert_eq!(duration_ns(Duration::MAX), u64::MAX);
    }

    #[test]
    fn stats_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ExitStats>();
    }
}
