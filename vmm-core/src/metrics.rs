//! The `--metrics` JSON file, written at exit and whenever petrel gets SIGUSR1.
//!
//! Field names follow Firecracker's metrics where the meaning is the same (`vcpu.exit_io_out`,
//! `uart.write_count`, `i8042.reset_count`, `block.read_count`, …), so existing dashboards can
//! read them; what Firecracker has no name for lives under `petrel`. Like Firecracker's
//! `block`, ours adds up all disks; `petrel.disks` has each disk on its own. Unlike
//! Firecracker's, every count is a total since the VM started, not a delta since the last
//! write of the file.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use petrel_devices::virtio::block::{BlockStatsSnapshot, LatencyAggregate};

use crate::lifecycle::{ResetSource, StopReason};
use crate::stats::StatsSnapshot;

/// Errors writing the metrics file.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The file could not be written.
    #[error("cannot write metrics to {path}")]
    Write {
        /// The metrics path.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Firecracker's `LatencyAggregateMetrics`: min / max / sum in µs.
fn latency_json(latency: &LatencyAggregate) -> Value {
    json!({
        "min_us": latency.min_ns / 1000,
        "max_us": latency.max_ns / 1000,
        "sum_us": latency.sum_ns / 1000,
    })
}

/// The counters Firecracker's `BlockDeviceMetrics` has under the same names.
fn block_json(counts: &BlockStatsSnapshot) -> serde_json::Map<String, Value> {
    let value = json!({
        "read_count": counts.read_count,
        "write_count": counts.write_count,
        "flush_count": counts.flush_count,
        "read_bytes": counts.read_bytes,
        "write_bytes": counts.write_bytes,
        "invalid_reqs_count": counts.invalid_reqs_count,
        "execute_fails": counts.execute_fails,
        "read_agg": latency_json(&counts.read_agg),
        "write_agg": latency_json(&counts.write_agg),
    });
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// One entry of `petrel.disks`: what names the disk, its Firecracker-named counters, and the
/// host time of all its requests.
fn disk_json(disk: &crate::stats::DiskRow) -> Value {
    let mut entry = serde_json::Map::new();
    entry.insert("id".into(), json!(disk.id));
    entry.insert("path".into(), json!(disk.path.display().to_string()));
    entry.insert("read_only".into(), json!(disk.read_only));
    entry.extend(block_json(&disk.counts));
    entry.insert("requests".into(), json!(disk.counts.requests));
    entry.insert(
        "request_us_total".into(),
        json!(disk.counts.request_ns_total / 1000),
    );
    Value::Object(entry)
}

/// The metrics document for `snapshot`, with the stop reason once the VM has stopped.
pub fn metrics_json(snapshot: &StatsSnapshot, stop: Option<&StopReason>) -> Value {
    let utc_timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let exit = |name: &str| snapshot.exit_count(name);
    let range = |name: &str| snapshot.pio_range(name);
    let failures = exit("fail_entry") + exit("internal_error") + exit("other");
    let reset_count = u64::from(matches!(
        stop,
        Some(StopReason::GuestReset(ResetSource::I8042))
    ));
    json!({
        "utc_timestamp_ms": utc_timestamp_ms,
        "vcpu": {
            "exit_io_in": exit("io_in"),
            "exit_io_out": exit("io_out"),
            "exit_mmio_read": exit("mmio_read"),
            "exit_mmio_write": exit("mmio_write"),
            "failures": failures,
        },
        "uart": {
            "read_count": range("COM1").map_or(0, |r| r.reads),
            "write_count": range("COM1").map_or(0, |r| r.writes),
        },
        "i8042": {
            "read_count": range("i8042").map_or(0, |r| r.reads),
            "write_count": range("i8042").map_or(0, |r| r.writes),
            "reset_count": reset_count,
        },
        "block": block_json(&snapshot.block_totals()),
        "petrel": {
            "boot_time_us": snapshot.boot_time.map(|b| b.since_process_start.as_micros() as u64),
            "boot_time_since_first_run_us": snapshot
                .boot_time
                .and_then(|b| b.since_first_run)
                .map(|d| d.as_micros() as u64),
            "exits": snapshot.exits.iter().map(|e| json!({
                "reason": e.name,
                "count": e.count,
                "total_us": e.total_ns / 1000,
            })).collect::<Vec<_>>(),
            "devices": snapshot.devices.iter().map(|d| json!({
                "space": d.space,
                "device": d.name,
                "accesses": d.accesses,
                "total_us": d.total_ns / 1000,
            })).collect::<Vec<_>>(),
            "disks": snapshot.disks.iter().map(disk_json).collect::<Vec<_>>(),
            "stop_reason": stop.map(|s| s.to_string()),
        },
    })
}

/// Writes `value` to `path` atomically: a reader never sees half a file.
pub fn write_metrics(path: &Path, value: &Value) -> Result<(), MetricsError> {
    let error = |source| MetricsError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let text = serde_json::to_string_pretty(value).map_err(|e| error(e.into()))?;
    fs::write(&temporary, text + "\n").map_err(error)?;
    fs::rename(&temporary, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{DeviceRow, DiskRow};
    use petrel_vcpu::exit_stats::ExitStat;

    fn snapshot() -> StatsSnapshot {
        StatsSnapshot {
            exits: vec![
                ExitStat {
                    name: "io_out",
                    count: 12,
                    total_ns: 24_000,
                },
                ExitStat {
                    name: "mmio_read",
                    count: 2,
                    total_ns: 1_000,
                },
            ],
            devices: vec![DeviceRow {
                space: "pio",
                name: "COM1".into(),
                accesses: 12,
                total_ns: 20_000,
            }],
            pio_ranges: Vec::new(),
            boot_time: None,
            disks: Vec::new(),
        }
    }

    #[test]
    fn firecracker_names_carry_the_counts() {
        let value = metrics_json(
            &snapshot(),
            Some(&StopReason::GuestReset(ResetSource::I8042)),
        );
        assert_eq!(value["vcpu"]["exit_io_out"], 12);
        assert_eq!(value["vcpu"]["exit_mmio_read"], 2);
        assert_eq!(value["vcpu"]["exit_io_in"], 0);
        assert_eq!(value["i8042"]["reset_count"], 1);
        assert_eq!(value["petrel"]["exits"][0]["total_us"], 24);
        assert_eq!(value["petrel"]["devices"][0]["device"], "COM1");
        assert!(value["petrel"]["stop_reason"]
            .as_str()
            .unwrap()
            .contains("i8042"));
    }

    #[test]
    fn disks_are_added_up_under_block_and_listed_under_petrel() {
        let mut snapshot = snapshot();
        let value = metrics_json(&snapshot, None);
        assert_eq!(value["block"]["read_count"], 0, "present without disks");
        assert_eq!(value["block"]["read_agg"]["min_us"], 0);
        assert_eq!(value["petrel"]["disks"].as_array().unwrap().len(), 0);

        let counts = |n: u64| BlockStatsSnapshot {
            read_count: n,
            write_count: 2 * n,
            flush_count: 1,
            read_bytes: n * 4096,
            write_bytes: n * 512,
            invalid_reqs_count: n,
            execute_fails: 1,
            requests: 4 * n + 2,
            request_ns_total: n * 1_000_000,
            read_agg: LatencyAggregate {
                min_ns: n * 1000,
                max_ns: n * 9000,
                sum_ns: n * 20_000,
            },
            write_agg: LatencyAggregate::default(),
        };
        for (id, n) in [("a", 1), ("b", 3)] {
            snapshot.disks.push(DiskRow {
                id: id.into(),
                path: format!("/img/{id}.img").into(),
                read_only: id == "b",
                counts: counts(n),
            });
        }
        let value = metrics_json(&snapshot, None);
        let block = &value["block"];
        assert_eq!(block["read_count"], 4);
        assert_eq!(block["write_count"], 8);
        assert_eq!(block["flush_count"], 2);
        assert_eq!(block["read_bytes"], 16384);
        assert_eq!(block["write_bytes"], 2048);
        assert_eq!(block["invalid_reqs_count"], 4);
        assert_eq!(block["execute_fails"], 2);
        assert_eq!(block["read_agg"]["min_us"], 1);
        assert_eq!(block["read_agg"]["max_us"], 27);
        assert_eq!(block["read_agg"]["sum_us"], 80);
        let disks = value["petrel"]["disks"].as_array().unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[1]["id"], "b");
        assert_eq!(disks[1]["path"], "/img/b.img");
        assert_eq!(disks[1]["read_only"], true);
        assert_eq!(disks[1]["read_count"], 3);
        assert_eq!(disks[1]["requests"], 14);
        assert_eq!(disks[1]["request_us_total"], 3000);
        assert_eq!(disks[0]["write_agg"]["sum_us"], 0);
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("petrel-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.json");
        write_metrics(&path, &json!({"a": 1})).unwrap();
        write_metrics(&path, &json!({"a": 2})).unwrap();
        let read: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(read["a"], 2);
        assert!(!dir.join("metrics.json.tmp").exists());
        assert!(write_metrics(&dir.join("missing/metrics.json"), &json!({})).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
