//! Tier 1: virtio-rng driven by the `virtio-drivers` crate inside petrel's test guest. The
//! guest reads 64 bytes twice from each entropy device and prints them; the host checks that
//! they look random, and that the device exists only with `--rng`.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use petrel_tests::{require_kvm, test_guest, Petrel, RunOutput, TempDir};

fn rng_run(args: &[&str]) -> RunOutput {
    Petrel::new()
        .kernel(test_guest())
        .cmdline("console=ttyS0 petrel.scenario=rng")
        .args(args.iter().copied())
        .run()
}

/// The bytes of each `RNG dev=<dev> bytes=<hex>` line.
fn reads(run: &RunOutput, dev: usize) -> Vec<Vec<u8>> {
    let prefix = format!("RNG dev={dev} bytes=");
    run.lines_starting_with(&prefix)
        .into_iter()
        .map(|l| {
            let hex = &l.trim_end().as_bytes()[prefix.len()..];
            assert_eq!(hex.len() % 2, 0, "{l}");
            hex.chunks(2)
                .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
                .collect()
        })
        .collect()
}

fn assert_two_random_reads(run: &RunOutput) {
    let reads = reads(run, 0);
    assert_eq!(reads.len(), 2, "{}", run.describe());
    for read in &reads {
        assert_eq!(read.len(), 64, "{}", run.describe());
        assert!(
            read.iter().any(|&b| b != 0),
            "all zeros\n{}",
            run.describe()
        );
    }
    assert_ne!(reads[0], reads[1], "{}", run.describe());
    assert!(run.stdout.contains("RNG count=1"), "{}", run.describe());
    assert!(!run.stdout.contains("RNG error"), "{}", run.describe());
}

#[test]
fn the_guest_reads_random_bytes() {
    require_kvm();
    let run = rng_run(&["--rng"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("PETREL-GUEST done scenario=rng"),
        "{}",
        run.describe()
    );
    assert_two_random_reads(&run);
    // Another VM gets other bytes.
    let again = rng_run(&["--rng"]);
    assert_eq!(again.code, Some(0), "{}", again.describe());
    assert_ne!(reads(&run, 0), reads(&again, 0));
}

#[test]
fn without_the_flag_there_is_no_entropy_device() {
    require_kvm();
    let run = rng_run(&[]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("RNG count=0"), "{}", run.describe());
    assert!(reads(&run, 0).is_empty(), "{}", run.describe());
}

#[test]
fn a_disk_and_the_rng_get_their_own_windows_and_irqs() {
    require_kvm();
    let dir = TempDir::new("rng-disk");
    let image = dir.join("d.img");
    std::fs::write(&image, vec![0u8; 64 * 512]).unwrap();
    let disk = format!("path={}", image.display());
    let run = rng_run(&["--disk", &disk, "--rng"]);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("VIRTIO count=2"), "{}", run.describe());
    let devices = run.lines_starting_with("VIRTIO dev base=");
    assert_eq!(devices.len(), 2, "{}", run.describe());
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap()
            .to_owned()
    };
    let types: Vec<String> = devices.iter().map(|l| field(l, "type=")).collect();
    assert_eq!(types, ["2", "4"], "disks first, then the rng");
    assert_ne!(field(devices[0], "base="), field(devices[1], "base="));
    assert_ne!(field(devices[0], "irq="), field(devices[1], "irq="));
    assert_two_random_reads(&run);
}
