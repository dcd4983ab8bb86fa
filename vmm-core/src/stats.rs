//! What the VM did, counted while it ran: VM exits by reason (from the vCPU threads), device
//! accesses by bus range (from the buses), and the boot-timer reading. All counters are
//! atomics written on the exit path; this module only reads them.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use petrel_devices::bus::{Bus, BusRangeStats};
use petrel_devices::legacy::boot_timer::BootTime;
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

impl StatsSnapshot {
    /// The `--exit-stats` table: exits by reason, then accesses by device, each with count,
    /// total handling time and mean, in µs. Rows with a zero count are left out.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "VM exits by reason:");
        let _ = writeln!(
            out,
            "  {:<16} {:>12} {:>14} {:>10}",
            "reason", "count", "total µs", "mean µs"
        );
        for exit in self.exits.iter().filter(|e| e.count > 0) {
            let _ = writeln!(
                out,
                "  {:<16} {:>12} {:>14.1} {:>10.2}",
                exit.name,
                exit.count,
                micros(exit.total_ns),
                mean_micros(exit.total_ns, exit.count)
            );
        }
        let _ = writeln!(out, "Device accesses (port I/O and MMIO exits) by device:");
        let _ = writeln!(
            out,
            "  {:<22} {:>12} {:>14} {:>10}",
            "device", "count", "total µs", "mean µs"
        );
        for row in self.devices.iter().filter(|d| d.accesses > 0) {
            let _ = writeln!(
                out,
                "  {:<22} {:>12} {:>14.1} {:>10.2}",
                format!("{} {}", row.space, row.name),
                row.accesses,
                micros(row.total_ns),
                mean_micros(row.total_ns, row.accesses)
            );
        }
        out
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
}
