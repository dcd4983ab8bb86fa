//! Tier 1: virtio-blk driven by the `virtio-drivers` crate inside petrel's test guest — a
//! driver petrel did not write. The guest finds the disks in the DSDT (or on the command
//! line), and the host checks every byte against the image files.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use petrel_tests::{petrel_bin, require_kvm, test_guest, Petrel, RunOutput, TempDir};

const SECTOR: usize = 512;

/// A disk image of `sectors` sectors with distinct, non-repeating content.
fn make_image(dir: &TempDir, name: &str, sectors: usize, seed: u64) -> PathBuf {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bytes: Vec<u8> = (0..sectors * SECTOR)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// FNV-1a 64, the hash the guest prints.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn disk_arg(path: &Path, extra: &str) -> String {
    format!("path={}{extra}", path.display())
}

fn blk(scenario: &str, disks: &[String], extra_cmdline: &str) -> RunOutput {
    let mut petrel = Petrel::new().kernel(test_guest()).cmdline(&format!(
        "console=ttyS0 petrel.scenario={scenario} {extra_cmdline}"
    ));
    for disk in disks {
        petrel = petrel.args(["--disk", disk]);
    }
    petrel.run()
}

#[test]
fn reads_match_the_host_file_byte_for_byte() {
    require_kvm();
    let dir = TempDir::new("blk-read");
    let sectors = 6000;
    let images: Vec<PathBuf> = (0..2)
        .map(|i| make_image(&dir, &format!("d{i}.img"), sectors, i as u64 + 7))
        .collect();
    let disks = vec![
        disk_arg(&images[0], ",id=first"),
        disk_arg(&images[1], ",readonly=on,id=second"),
    ];
    let run = blk("blk-read", &disks, "");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("VIRTIO count=2"), "{}", run.describe());
    for (dev, image) in images.iter().enumerate() {
        let bytes = std::fs::read(image).unwrap();
        let ro = dev;
        assert!(
            run.stdout
                .contains(&format!("BLK dev={dev} capacity={sectors} ro={ro}")),
            "{}",
            run.describe()
        );
        // The first sector, two sectors straddling 1 MiB, and the last sector.
        for (sector, count) in [(0, 1), (2047, 2), (sectors - 1, 1)] {
            let expected = fnv1a(&bytes[sector * SECTOR..(sector + count) * SECTOR]);
            let line =
                format!("BLK read dev={dev} sector={sector} count={count} fnv={expected:#x}");
            assert!(
                run.stdout.contains(&line),
                "missing '{line}':\n{}",
                run.describe()
            );
        }
    }
}

#[test]
fn writes_and_flush_reach_the_host_file() {
    require_kvm();
    let dir = TempDir::new("blk-write");
    let image = make_image(&dir, "w.img", 4096, 3);
    let before = std::fs::read(&image).unwrap();
    let run = blk(
        "blk-write",
        &[disk_arg(&image, "")],
        "petrel.sector=3000 petrel.pattern=0x5a",
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("BLK write dev=0 sector=3000 status=ok"));
    assert!(run.stdout.contains("BLK flush dev=0 status=ok"));
    let after = std::fs::read(&image).unwrap();
    let written = &after[3000 * SECTOR..3001 * SECTOR];
    assert!(
        written.iter().all(|b| *b == 0x5a),
        "sector 3000 not written"
    );
    assert_eq!(&after[..3000 * SECTOR], &before[..3000 * SECTOR]);
    assert_eq!(&after[3001 * SECTOR..], &before[3001 * SECTOR..]);
}

#[test]
fn a_write_to_a_readonly_disk_fails_and_changes_nothing() {
    require_kvm();
    let dir = TempDir::new("blk-ro");
    let image = make_image(&dir, "ro.img", 2048, 5);
    let before = std::fs::read(&image).unwrap();
    let run = blk(
        "blk-write",
        &[disk_arg(&image, ",readonly=on")],
        "petrel.sector=10 petrel.pattern=0x11",
    );
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("BLK write dev=0 sector=10 status=err"),
        "{}",
        run.describe()
    );
    assert_eq!(
        std::fs::read(&image).unwrap(),
        before,
        "read-only file changed"
    );
}

#[test]
fn eight_disks_each_report_their_own_id() {
    require_kvm();
    let dir = TempDir::new("blk-ids");
    let disks: Vec<String> = (0..8)
        .map(|i| {
            let image = make_image(&dir, &format!("d{i}.img"), 8, i);
            disk_arg(&image, &format!(",id=petrel-disk-{i}"))
        })
        .collect();
    let run = blk("blk-ids", &disks, "");
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("VIRTIO count=8"), "{}", run.describe());
    for i in 0..8 {
        assert!(
            run.stdout
                .contains(&format!("BLK dev={i} id=petrel-disk-{i}")),
            "{}",
            run.describe()
        );
    }
}

#[test]
fn disks_are_also_found_on_the_command_line_when_asked() {
    require_kvm();
    let dir = TempDir::new("blk-cmdline");
    let image = make_image(&dir, "c.img", 8, 9);
    let run = Petrel::new()
        .kernel(test_guest())
        .cmdline("console=ttyS0 petrel.scenario=virtio")
        .args(["--virtio-cmdline", "--disk", &disk_arg(&image, "")])
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout
            .contains("VIRTIO dev base=0xc0000000 irq=5 from=dsdt,cmdline type=2"),
        "{}",
        run.describe()
    );
}

#[test]
fn a_flushed_write_survives_sigkill() {
    require_kvm();
    let dir = TempDir::new("blk-kill");
    let image = make_image(&dir, "k.img", 4096, 11);
    let mut child = Command::new(petrel_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args([
            "--cmdline",
            "console=ttyS0 petrel.scenario=blk-write petrel.sector=1234 petrel.pattern=0xc3",
            "--disk",
            &disk_arg(&image, ""),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let line = lines
            .next()
            .expect("petrel ended before the flush")
            .unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("BLK flush dev=0") {
            assert_eq!(line, "BLK flush dev=0 status=ok", "{seen}");
            break;
        }
    }
    // The guest has seen its flush complete: kill petrel at once, with no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    let after = std::fs::read(&image).unwrap();
    assert!(
        after[1234 * SECTOR..1235 * SECTOR]
            .iter()
            .all(|b| *b == 0xc3),
        "the flushed sector is not in the file:\n{seen}"
    );
}

fn assert_refused(disks: &[String], needle: &str) {
    let mut petrel = Petrel::new().kernel(test_guest());
    for disk in disks {
        petrel = petrel.args(["--disk", disk]);
    }
    let run = petrel.run();
    assert_eq!(run.code, Some(2), "{}", run.describe());
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert!(lines[0].contains(needle), "'{needle}' not in {}", lines[0]);
}

#[test]
fn bad_disks_are_refused_with_one_line() {
    let dir = TempDir::new("blk-bad");
    let good = make_image(&dir, "good.img", 8, 1);
    let odd = dir.join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    assert_refused(&["path=/nonexistent/disk.img".into()], "no such file");
    assert_refused(&[format!("path={}", dir.path().display())], "directory");
    assert_refused(&[disk_arg(&odd, "")], "not a multiple of 512");
    assert_refused(&[disk_arg(&good, ""), disk_arg(&good, "")], "given twice");
    assert_refused(&["readonly=on".into()], "no path=");
    assert_refused(&[disk_arg(&good, ",id=an-id-that-is-far-too-long")], "id");
}

#[test]
fn metrics_and_exit_stats_count_the_disks_requests() {
    require_kvm();
    let dir = TempDir::new("blk-metrics");
    let image = make_image(&dir, "m.img", 4096, 13);
    let metrics_path = dir.join("metrics.json");
    let run = Petrel::new()
        .kernel(test_guest())
        .cmdline("console=ttyS0 petrel.scenario=blk-write petrel.sector=100 petrel.pattern=0x77")
        .args(["--disk", &disk_arg(&image, ",id=counted"), "--exit-stats"])
        .args(["--metrics".into(), metrics_path.clone().into_os_string()])
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("BLK flush dev=0 status=ok"));
    let text = std::fs::read_to_string(&metrics_path).unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&text).unwrap();
    let block = |key: &str| metrics["block"][key].as_u64().unwrap();
    // The guest wrote one sector, flushed, and read it back.
    assert!(block("write_count") >= 1, "{text}");
    assert!(block("flush_count") >= 1, "{text}");
    assert!(block("write_bytes") >= 512, "{text}");
    assert!(block("read_count") >= 1, "{text}");
    assert!(block("read_bytes") >= 512, "{text}");
    assert_eq!(block("write_bytes") % 512, 0, "{text}");
    assert_eq!(block("invalid_reqs_count"), 0, "{text}");
    assert_eq!(block("execute_fails"), 0, "{text}");
    assert!(metrics["block"]["write_agg"]["sum_us"].is_u64(), "{text}");

    let disks = metrics["petrel"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{text}");
    let disk = &disks[0];
    assert_eq!(disk["id"], "counted", "{text}");
    assert_eq!(disk["path"], image.display().to_string(), "{text}");
    assert_eq!(disk["read_only"], false, "{text}");
    assert_eq!(
        disk["write_count"], metrics["block"]["write_count"],
        "{text}"
    );
    let requests = disk["requests"].as_u64().unwrap();
    let counted = block("write_count") + block("flush_count") + block("read_count");
    assert!(requests >= counted, "{text}");
    // A flush is an fdatasync: it takes the host more than a microsecond.
    assert!(disk["request_us_total"].as_u64().unwrap() >= 1, "{text}");

    let row = run
        .stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("disk counted"))
        .unwrap_or_else(|| panic!("no disk row:\n{}", run.describe()));
    let count: u64 = row["disk counted".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        count,
        requests,
        "table and metrics agree:\n{}",
        run.describe()
    );
}
