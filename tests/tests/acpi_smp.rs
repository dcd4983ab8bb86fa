//! Tier 1: the test guest reads petrel's ACPI tables itself, starts every AP through
//! INIT-SIPI-SIPI, and powers off and resets through the FADT's registers.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use petrel_tests::{require_kvm, test_guest, Petrel, RunOutput};

fn scenario(name: &str, cpus: u32) -> RunOutput {
    Petrel::new()
        .kernel(test_guest())
        .cmdline(&format!("console=ttyS0 petrel.scenario={name}"))
        .args(["--cpus", &cpus.to_string(), "--log-level", "info"])
        .run()
}

fn check_tables(cpus: u32) {
    require_kvm();
    let run = scenario("acpi", cpus);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(!run.stdout.contains("ACPI error"), "{}", run.describe());
    assert!(
        run.stdout.contains("ACPI rsdp=0xe0000 from=bootparams"),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("ACPI rsdp=0xe0000 from=scan"));
    assert!(run.stdout.contains("checksum=ok ext_checksum=ok"));
    let tables: BTreeSet<&str> = run
        .lines_starting_with("ACPI table=")
        .iter()
        .map(|line| {
            assert!(line.ends_with("checksum=ok"), "bad table: {line}");
            line.trim_start_matches("ACPI table=")
                .split_whitespace()
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        tables,
        ["APIC", "DSDT", "FACP", "XSDT"].into_iter().collect(),
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("hw_reduced=1"), "{}", run.describe());
    assert!(run.stdout.contains("ACPI dsdt s5 slp_typ=5"));
    assert!(run.stdout.contains("ioapics=1 overrides=1 nmis=1"));
    assert_eq!(
        run.lines_starting_with("ACPI cpus="),
        vec![format!("ACPI cpus={cpus}").as_str()],
        "{}",
        run.describe()
    );
}

#[test]
fn acpi_tables_describe_1_cpu() {
    check_tables(1);
}

#[test]
fn acpi_tables_describe_4_cpus() {
    check_tables(4);
}

#[test]
fn acpi_tables_describe_64_cpus() {
    check_tables(64);
}

fn check_smp(cpus: u32) {
    require_kvm();
    let run = scenario("smp", cpus);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let ids: BTreeSet<u32> = run
        .lines_starting_with("AP up apic_id=")
        .iter()
        .map(|l| l.trim_start_matches("AP up apic_id=").parse().unwrap())
        .collect();
    let aps = run.lines_starting_with("AP up apic_id=").len();
    assert_eq!(
        aps,
        cpus as usize - 1,
        "one line per AP:\n{}",
        run.describe()
    );
    assert_eq!(ids.len(), aps, "APIC ids are distinct:\n{}", run.describe());
    assert!(!ids.contains(&0), "the BSP has id 0");
    assert_eq!(
        run.lines_starting_with("SMP cpus="),
        vec![format!("SMP cpus={cpus} started={cpus}").as_str()],
        "{}",
        run.describe()
    );
}

#[test]
fn smp_starts_1_cpu() {
    check_smp(1);
}

#[test]
fn smp_starts_2_cpus() {
    check_smp(2);
}

#[test]
fn smp_starts_4_cpus() {
    check_smp(4);
}

#[test]
fn smp_starts_16_cpus() {
    check_smp(16);
}

#[test]
fn smp_starts_64_cpus() {
    check_smp(64);
}

#[test]
fn power_off_through_the_fadt_exits_zero() {
    require_kvm();
    let run = scenario("poweroff", 2);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("POWEROFF via=sleep-control port=0x600"));
    assert!(
        !run.stdout.contains("POWEROFF failed"),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains("guest powered off"),
        "{}",
        run.describe()
    );
}

#[test]
fn reset_through_the_fadt_exits_zero_and_reads_differently() {
    require_kvm();
    let run = scenario("acpi-reset", 2);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(!run.stdout.contains("RESET failed"), "{}", run.describe());
    assert!(
        run.stderr
            .contains("guest reset the machine (ACPI reset register)"),
        "{}",
        run.describe()
    );
    let i8042 = scenario("hello", 1);
    assert!(
        i8042
            .stderr
            .contains("guest reset the machine (i8042 reset)"),
        "{}",
        i8042.describe()
    );
}
