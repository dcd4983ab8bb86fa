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
use petrel_devices::virtio::net::NetStats;
use petrel_devices::virtio::vsock::VsockStats;

use crate::lifecycle::{ResetSource, StopReason};
#[cfg(test)]
use crate::stats::NetRow;
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

/// The counters Firecracker's `NetDeviceMetrics` has under the same names (`tx_fails` counts
/// every transmit chain petrel dropped; `rx_fails` every frame or receive chain it dropped).
fn net_json(counts: &NetStats) -> Value {
    json!({
        "rx_bytes_count": counts.rx_bytes,
        "rx_packets_count": counts.rx_frames,
        "rx_fails": counts.rx_dropped + counts.rx_bad_chains,
        "tx_bytes_count": counts.tx_bytes,
        "tx_packets_count": counts.tx_frames,
        "tx_fails": counts.tx_dropped,
    })
}

/// The counters Firecracker's `VsockDeviceMetrics` has under the same names ("rx" is towards
/// the guest, "tx" from it), and petrel's own under `petrel.vsock`.
fn vsock_json(counts: &VsockStats) -> Value {
    json!({
        "conns_added": counts.host_connections + counts.guest_connections,
        "rx_bytes_count": counts.host_to_guest_bytes,
        "tx_bytes_count": counts.guest_to_host_bytes,
        "rx_packets_count": counts.rx_packets,
        "tx_packets_count": counts.tx_packets,
    })
}

fn vsock_petrel_json(counts: &VsockStats) -> Value {
    json!({
        "host_connections": counts.host_connections,
        "guest_connections": counts.guest_connections,
        "bad_connect_lines": counts.bad_connect_lines,
        "refused_guest_connections": counts.refused_guest_connections,
        "tx_dropped": counts.tx_dropped,
        "bad_packet_resets": counts.bad_packet_resets,
        "rx_bad_chains": counts.rx_bad_chains,
    })
}

fn add_net_stats(a: NetStats, b: &NetStats) -> NetStats {
    NetStats {
        tx_frames: a.tx_frames + b.tx_frames,
        tx_bytes: a.tx_bytes + b.tx_bytes,
        tx_dropped: a.tx_dropped + b.tx_dropped,
        rx_frames: a.rx_frames + b.rx_frames,
        rx_bytes: a.rx_bytes + b.rx_bytes,
        rx_dropped: a.rx_dropped + b.rx_dropped,
        rx_bad_chains: a.rx_bad_chains + b.rx_bad_chains,
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
        "net": net_json(&snapshot.nets.iter().fold(NetStats::default(), |total, net| {
            add_net_stats(total, &net.counts)
        })),
        "vsock": vsock_json(&snapshot.vsock.unwrap_or_default()),
        "petrel": {
            "vsock": snapshot.vsock.as_ref().map(vsock_petrel_json),
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
            "nets": snapshot.nets.iter().map(|net| json!({
                "tap": net.tap,
                "counts": net_json(&net.counts),
            })).collect::<Vec<_>>(),
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
            nets: Vec::new(),
            vsock: None,
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
    fn vsock_counters_use_firecrackers_names() {
        let mut snapshot = snapshot();
        let value = metrics_json(&snapshot, None);
        assert_eq!(value["vsock"]["rx_bytes_count"], 0);
        assert!(value["petrel"]["vsock"].is_null(), "no vsock device");
        snapshot.vsock = Some(VsockStats {
            host_connections: 2,
            guest_connections: 1,
            guest_to_host_bytes: 70,
            host_to_guest_bytes: 30,
            bad_packet_resets: 4,
            ..VsockStats::default()
        });
        let value = metrics_json(&snapshot, None);
        assert_eq!(value["vsock"]["conns_added"], 3);
        assert_eq!(value["vsock"]["tx_bytes_count"], 70);
        assert_eq!(value["vsock"]["rx_bytes_count"], 30);
        assert_eq!(value["petrel"]["vsock"]["bad_packet_resets"], 4);
    }

    #[test]
    fn interfaces_are_added_up_under_net_and_listed_under_petrel() {
        let mut snapshot = snapshot();
        assert_eq!(metrics_json(&snapshot, None)["net"]["tx_packets_count"], 0);
        let counts = NetStats {
            tx_frames: 3,
            tx_bytes: 300,
            tx_dropped: 1,
            rx_frames: 5,
            rx_bytes: 500,
            rx_dropped: 2,
            rx_bad_chains: 1,
        };
        for tap in ["tap0", "tap1"] {
            snapshot.nets.push(NetRow {
                tap: tap.into(),
                counts,
            });
        }
        let value = metrics_json(&snapshot, None);
        assert_eq!(value["net"]["tx_packets_count"], 6);
        assert_eq!(value["net"]["tx_bytes_count"], 600);
        assert_eq!(value["net"]["tx_fails"], 2);
        assert_eq!(value["net"]["rx_packets_count"], 10);
        assert_eq!(value["net"]["rx_fails"], 6);
        assert_eq!(value["petrel"]["nets"][1]["tap"], "tap1");
        assert_eq!(value["petrel"]["nets"][1]["counts"]["rx_bytes_count"], 500);
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
