//! Tier 1: petrel's own measurements — the boot timer, the exit statistics and the metrics
//! file — agree with what the test guest did.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use petrel_tests::{require_kvm, test_guest, Petrel, TempDir};

fn flood(count: usize) -> Petrel {
    Petrel::new().kernel(test_guest()).cmdline(&format!(
        "console=ttyS0 petrel.scenario=serial-flood petrel.count={count}"
    ))
}

#[test]
fn boot_timer_reports_the_guests_write() {
    require_kvm();
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--boot-timer"])
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let lines: Vec<&str> = run
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("boot-timer: guest ready"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert!(lines[0].contains("after process start"), "{}", lines[0]);
    assert!(lines[0].contains("after the first KVM_RUN"), "{}", lines[0]);

    let quiet = Petrel::new().kernel(test_guest()).run();
    assert!(
        !quiet.stderr.contains("boot-timer"),
        "no report without --boot-timer:\n{}",
        quiet.describe()
    );
}

/// The count in the `--exit-stats` table row that starts with `label`.
fn table_count(stderr: &str, label: &str) -> u64 {
    let row = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row '{label}' in:\n{stderr}"));
    let fields: Vec<&str> = row[label.len()..].split_whitespace().collect();
    fields[0].parse().unwrap()
}

#[test]
fn exit_stats_count_every_serial_write() {
    require_kvm();
    let count = 2000;
    let run = flood(count).args(["--exit-stats"]).run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let io_out = table_count(&run.stderr, "io_out ");
    let com1 = table_count(&run.stderr, "pio COM1");
    // The flood plus the guest's own status lines: at least `count` writes each.
    assert!(io_out >= count as u64, "io_out {io_out} < {count}");
    assert!(com1 >= count as u64, "COM1 {com1} < {count}");
    assert!(io_out >= com1, "every COM1 access was an exit");
    assert!(
        table_count(&run.stderr, "pio i8042") >= 1,
        "the reset write is counted"
    );
}

#[test]
fn metrics_file_holds_the_runs_counts() {
    require_kvm();
    let dir = TempDir::new("metrics");
    let path = dir.join("metrics.json");
    let count = 1500;
    let run = flood(count)
        .args(["--metrics".into(), path.clone().into_os_string()])
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let text = std::fs::read_to_string(&path).unwrap();
    let metrics: serde_json::Value = serde_json::from_str(&text).unwrap();
    let number = |section: &str, key: &str| metrics[section][key].as_u64().unwrap();
    assert!(number("vcpu", "exit_io_out") >= count as u64, "{text}");
    assert!(number("uart", "write_count") >= count as u64, "{text}");
    assert_eq!(number("i8042", "reset_count"), 1, "{text}");
    assert_eq!(number("i8042", "write_count"), 1, "{text}");
    assert!(
        metrics["petrel"]["stop_reason"]
            .as_str()
            .unwrap()
            .contains("i8042 reset"),
        "{text}"
    );
}

#[test]
fn metrics_are_written_on_sigusr1_while_the_guest_runs() {
    require_kvm();
    let dir = TempDir::new("metrics-signal");
    let path = dir.join("metrics.json");
    let mut child = std::process::Command::new(petrel_tests::petrel_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args([
            "--cmdline",
            "console=ttyS0 petrel.scenario=halt",
            "--metrics",
        ])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no metrics file after SIGUSR1");
        // Before petrel installs its handler SIGUSR1 would end it, so wait a little first.
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(child.try_wait().unwrap().is_none(), "petrel still runs");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"exit_io_out\""), "{text}");
    assert!(text.contains("\"stop_reason\": null"), "{text}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
}
