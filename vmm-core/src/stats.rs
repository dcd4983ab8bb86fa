//! What the VM did, counted while it ran: VM exits by reason (from the vCPU threads), device
//! accesses by bus range (from the buses), disk requests (from each virtio-blk device, on the
//! event loop), and the boot-timer reading. All counters are atomics written where the work
//! happens; this module only reads them.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use petrel_devices::bus::{Bus, BusRangeStats};
use petrel_devices::legacy::boot_timer::BootTime;
use petrel_devices::virtio::block::{BlockStats, BlockStatsSnapshot};
use petrel_devices::virtio::net::{Net, NetStats, Tap};
use petrel_devices::virtio::vsock::{Vsock, VsockStats};
use petrel_vcpu::exit_stats::{ExitStat, ExitStats};

/// Handles on every counter of one VM.
#[derive(Clone)]
pub struct VmStats {
    /// Exits by reason, shared by all vCPU threads.
    pub exits: Arc<ExitStats>,
    /// The port-I/O bus.
    pub pio: Arc<Bus>,
    /// The MMIO bus.
    pub mmio: Arc<Bus>,
    /// The boot-timer reading, once the guest wrote the magic value.
    pub boot_time: Option<Arc<OnceLock<BootTime>>>,
    /// The request counters of each disk, in `--disk` order.
    pub disks: Vec<DiskStats>,
    /// The network interfaces, in `--net` order.
    pub nets: Vec<NetHandle>,
    /// The vsock device, if there is one.
    pub vsock: Option<Arc<Mutex<Vsock>>>,
}

/// A network interface whose frame counters can be read.
#[derive(Clone)]
pub struct NetHandle {
    /// The TAP's name.
    pub tap: String,
    /// The device (its counters live behind its lock, which the event loop holds only while
    /// it moves frames).
    pub device: Arc<Mutex<Net<Tap>>>,
}

/// One network interface's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRow {
    /// The TAP's name.
    pub tap: String,
    /// The counters.
    pub counts: NetStats,
}

/// One disk's request counters, and what names the disk.
#[derive(Debug, Clone)]
pub struct DiskStats {
    /// The disk's id (its virtio-blk serial number).
    pub id: String,
    /// The image's path.
    pub path: PathBuf,
    /// Whether the disk is read-only.
    pub read_only: bool,
    /// The device's live counters.
    pub stats: Arc<BlockStats>,
}

/// One disk's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRow {
    /// The disk's id.
    pub id: String,
    /// The image's path.
    pub path: PathBuf,
    /// Whether the disk is read-only.
    pub read_only: bool,
    /// The counters.
    pub counts: BlockStatsSnapshot,
}

/// Accesses to one device range (or to no device), as a table row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// "pio" or "mmio".
    pub space: &'static str,
    /// The device's name.
    pub name: String,
    /// Reads plus writes.
    pub accesses: u64,
    /// Time spent in the device, in nanoseconds (0 when not measured).
    pub total_ns: u64,
}

/// A consistent-enough copy of every counter, taken at one moment.
#[derive(Debug, Clone)]
pub struct StatsSnapshot {
    /// Exits by reason, in a fixed order.
    pub exits: Vec<ExitStat>,
    /// Accesses by device, then the unclaimed ones.
    pub devices: Vec<DeviceRow>,
    /// Raw per-range numbers of the port-I/O bus.
    pub pio_ranges: Vec<BusRangeStats>,
    /// The boot-timer reading.
    pub boot_time: Option<BootTime>,
    /// Each disk's counters, in `--disk` order.
    pub disks: Vec<DiskRow>,
    /// Each network interface's counters, in `--net` order.
    pub nets: Vec<NetRow>,
    /// The vsock device's counters.
    pub vsock: Option<VsockStats>,
}

impl VmStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let pio_ranges = self.pio.stats();
        let mut devices = Vec::new();
        for (space, bus, ranges) in [
            ("pio", &self.pio, pio_ranges.clone()),
            ("mmio", &self.mmio, self.mmio.stats()),
        ] {
            devices.extend(ranges.iter().map(|r| DeviceRow {
                space,
                name: r.name.to_string(),
                accesses: r.reads + r.writes,
                total_ns: r.total_ns,
            }));
            let unclaimed = bus.unclaimed_reads() + bus.unclaimed_writes();
            devices.push(DeviceRow {
                space,
                name: "(no device)".to_string(),
                accesses: unclaimed,
                total_ns: 0,
            });
        }
        StatsSnapshot {
            exits: self.exits.snapshot(),
            devices,
            pio_ranges,
            boot_time: self.boot_time.as_ref().and_then(|cell| cell.get().copied()),
            disks: self
                .disks
                .iter()
                .map(|disk| DiskRow {
                    id: disk.id.clone(),
                    path: disk.path.clone(),
                    read_only: disk.read_only,
                    counts: disk.stats.snapshot(),
                })
                .collect(),
            nets: self
                .nets
                .iter()
                .map(|net| NetRow {
                    tap: net.tap.clone(),
                    // A poisoned lock still guards valid counters.
                    counts: net
                        .device
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .stats(),
                })
                .collect(),
            vsock: self.vsock.as_ref().map(|vsock| {
                vsock
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .stats()
            }),
        }
    }
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn mean_micros(total_ns: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        micros(total_ns) / count as f64
    }
}

/// Writes one table section: a title, a header, and `(label, count, total ns)` rows with the
/// total and mean in µs.
fn write_section(
    out: &mut String,
    title: &str,
    label: &str,
    width: usize,
    rows: impl Iterator<Item = (String, u64, u64)>,
) {
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "  {label:<width$} {:>12} {:>14} {:>10}",
        "count", "total µs", "mean µs"
    );
    for (name, count, total_ns) in rows {
        let _ = writeln!(
            out,
            "  {name:<width$} {count:>12} {:>14.1} {:>10.2}",
            micros(total_ns),
            mean_micros(total_ns, count)
        );
    }
}

impl StatsSnapshot {
    /// The `--exit-stats` table: exits by reason, then accesses by device, each with count,
    /// total handling time and mean, in µs (rows with a zero count are left out); then, when
    /// the VM has disks, the requests each disk answered (every disk, even one the guest did
    /// not use), with the successful reads and writes under it: host time on the event loop
    /// per request, in µs.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let exits = self
            .exits
            .iter()
            .filter(|e| e.count > 0)
            .map(|e| (e.name.to_string(), e.count, e.total_ns));
        write_section(&mut out, "VM exits by reason:", "reason", 16, exits);
        let devices = self
            .devices
            .iter()
            .filter(|d| d.accesses > 0)
            .map(|d| (format!("{} {}", d.space, d.name), d.accesses, d.total_ns));
        write_section(
            &mut out,
            "Device accesses (port I/O and MMIO exits) by device:",
            "device",
            22,
            devices,
        );
        if !self.disks.is_empty() {
            let mut rows = Vec::new();
            for disk in &self.disks {
                let c = &disk.counts;
                rows.push((format!("disk {}", disk.id), c.requests, c.request_ns_total));
                if c.read_count > 0 {
                    rows.push(("  reads".into(), c.read_count, c.read_agg.sum_ns));
                }
                if c.write_count > 0 {
                    rows.push(("  writes".into(), c.write_count, c.write_agg.sum_ns));
                }
            }
            write_section(
                &mut out,
                "Disk requests by disk (host time on the event loop):",
                "disk",
                22,
                rows.into_iter(),
            );
        }
        out
    }

    /// The counters of all disks added up.
    pub fn block_totals(&self) -> BlockStatsSnapshot {
        self.disks
            .iter()
            .fold(BlockStatsSnapshot::default(), |total, disk| {
                total.merge(disk.counts)
            })
    }

    /// The exit count for one reason name (`io_out`, `mmio_read`, …).
    pub fn exit_count(&self, name: &str) -> u64 {
        self.exits
            .iter()
            .find(|e| e.name == name)
            .map_or(0, |e| e.count)
    }

    /// The counters of the port-I/O range named `name`.
    pub fn pio_range(&self, name: &str) -> Option<&BusRangeStats> {
        self.pio_ranges.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_devices::bus::BusDevice;
    use petrel_vcpu::exit_stats::ExitKind;
    use std::sync::Mutex;

    struct Sink;

    impl BusDevice for Sink {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
    }

    fn stats() -> VmStats {
        let mut pio = Bus::new();
        pio.insert_named(Arc::new(Mutex::new(Sink)), 0x3f8, 8, "COM1")
            .unwrap();
        VmStats {
            exits: Arc::new(ExitStats::new()),
            pio: Arc::new(pio),
            mmio: Arc::new(Bus::new()),
            boot_time: None,
            disks: vec![DiskStats {
                id: "root".into(),
                path: "/images/root.img".into(),
                read_only: false,
                stats: Arc::new(BlockStats::new()),
            }],
            nets: Vec::new(),
            vsock: None,
        }
    }

    #[test]
    fn the_table_counts_exits_and_device_accesses() {
        let stats = stats();
        for _ in 0..3 {
            stats.exits.record(ExitKind::IoOut, 2_000);
            stats.pio.write(0x3f8, b"x").unwrap();
        }
        let mut byte = [0u8];
        let _ = stats.pio.read(0x80, &mut byte);

        let snapshot = stats.snapshot();
        assert_eq!(snapshot.exit_count("io_out"), 3);
        assert_eq!(snapshot.pio_range("COM1").unwrap().writes, 3);
        let table = snapshot.table();
        assert!(table.contains("io_out"), "{table}");
        assert!(
            table.contains("6.0"),
            "total µs of three 2 µs exits:\n{table}"
        );
        assert!(table.contains("pio COM1"), "{table}");
        assert!(table.contains("pio (no device)"), "{table}");
        assert!(
            !table.contains("mmio_read"),
            "zero rows are left out:\n{table}"
        );
    }

    #[test]
    fn disks_are_carried_into_the_snapshot_and_the_table() {
        let stats = stats();
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.disks.len(), 1);
        assert_eq!(snapshot.disks[0].id, "root");
        assert_eq!(snapshot.disks[0].counts, BlockStatsSnapshot::default());
        let table = snapshot.table();
        assert!(table.contains("Disk requests by disk"), "{table}");
        assert!(
            table.contains("disk root"),
            "an unused disk is listed:\n{table}"
        );
        assert!(
            !table.contains("reads"),
            "no read row without reads:\n{table}"
        );

        let mut snapshot = snapshot;
        let counts = |reads: u64, read_ns: u64| BlockStatsSnapshot {
            read_count: reads,
            read_bytes: reads << 20,
            write_count: 1,
            requests: reads + 2,
            request_ns_total: read_ns + 9_000_000,
            read_agg: petrel_devices::virtio::block::LatencyAggregate {
                min_ns: 100_000,
                max_ns: 300_000,
                sum_ns: read_ns,
            },
            ..Default::default()
        };
        snapshot.disks[0].counts = counts(4, 800_000);
        snapshot.disks.push(DiskRow {
            id: "data".into(),
            path: "/images/data.img".into(),
            read_only: true,
            counts: counts(2, 500_000),
        });
        let table = snapshot.table();
        // 4 reads in 800 µs: 200 µs each; 6 requests in 9800 µs.
        let reads = table
            .lines()
            .find(|l| l.trim_start().starts_with("reads"))
            .unwrap();
        assert_eq!(
            reads.split_whitespace().collect::<Vec<_>>(),
            ["reads", "4", "800.0", "200.00"],
            "{table}"
        );
        let root = table.lines().find(|l| l.contains("disk root")).unwrap();
        assert!(root.contains(" 6 ") && root.contains("9800.0"), "{table}");
        assert!(table.contains("disk data"), "{table}");
        let totals = snapshot.block_totals();
        assert_eq!((totals.read_count, totals.write_count), (6, 2));
        assert_eq!(totals.read_bytes, 6 << 20);
        assert_eq!(totals.requests, 10);
        assert_eq!(totals.read_agg.sum_ns, 1_300_000);
    }

    #[test]
    fn without_disks_there_is_no_disk_section() {
        let mut stats = stats();
        stats.disks.clear();
        assert!(!stats.snapshot().table().contains("Disk requests"));
    }
}
