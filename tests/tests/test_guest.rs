//! Tier 1: petrel boots its own freestanding test guest and checks what the guest reports.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use petrel_tests::{require_kvm, test_guest, Petrel, RunOutput};

fn scenario(name: &str) -> Petrel {
    Petrel::new()
        .kernel(test_guest())
        .cmdline(&format!("console=ttyS0 petrel.scenario={name}"))
}

fn assert_clean_run(run: &RunOutput, name: &str) {
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("PETREL-GUEST start"),
        "{}",
        run.describe()
    );
    assert!(
        run.stdout
            .contains(&format!("PETREL-GUEST done scenario={name}")),
        "{}",
        run.describe()
    );
    assert!(
        !run.stdout.contains("EXCEPTION"),
        "guest took an exception:\n{}",
        run.describe()
    );
}

#[test]
fn hello_guest_prints_and_exits_zero() {
    require_kvm();
    let run = scenario("hello").run();
    assert_clean_run(&run, "hello");
    assert!(run.stdout.contains("HELLO from the petrel test guest"));
    assert!(
        run.stderr_lines().is_empty(),
        "a clean run logs nothing at the default level:\n{}",
        run.describe()
    );
}

#[test]
fn default_scenario_is_hello_with_the_default_cmdline() {
    require_kvm();
    let run = Petrel::new().kernel(test_guest()).run();
    assert_clean_run(&run, "hello");
}

#[test]
fn cmdline_reaches_the_guest_exactly() {
    require_kvm();
    let cmdline = "console=ttyS0 petrel.scenario=cmdline quiet a=b  spaced=\"x y\" last";
    let run = Petrel::new().kernel(test_guest()).cmdline(cmdline).run();
    assert_clean_run(&run, "cmdline");
    let lines = run.lines_starting_with("CMDLINE ");
    assert_eq!(
        lines,
        vec![format!("CMDLINE {cmdline}").as_str()],
        "{}",
        run.describe()
    );
}

#[test]
fn serial_flood_arrives_complete_and_in_order() {
    require_kvm();
    let count = 10_000;
    let run = Petrel::new()
        .kernel(test_guest())
        .cmdline(&format!(
            "console=ttyS0 petrel.scenario=serial-flood petrel.count={count}"
        ))
        .run();
    assert_clean_run(&run, "serial-flood");
    let begin = format!("FLOOD begin count={count}\n");
    let start = run.stdout.find(&begin).expect("flood start marker") + begin.len();
    let end = run.stdout[start..]
        .find("\nFLOOD end")
        .expect("flood end marker")
        + start;
    let payload = &run.stdout.as_bytes()[start..end];
    let alphabet = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let expected: Vec<u8> = (0..count)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                alphabet[i % 36]
            }
        })
        .collect();
    assert_eq!(payload.len(), expected.len(), "byte count differs");
    assert!(
        payload == expected.as_slice(),
        "flood bytes differ from the pattern"
    );
}

#[test]
fn absent_ports_and_mmio_read_as_all_ones() {
    require_kvm();
    let run = scenario("probes").run();
    assert_clean_run(&run, "probes");
    // COM1 is present: its line status register says the transmitter is empty.
    assert!(
        run.stdout
            .contains("PROBE pio port=0x3fd width=1 value=0x60"),
        "{}",
        run.describe()
    );
    let absent: Vec<&str> = run
        .lines_starting_with("PROBE ")
        .into_iter()
        .filter(|l| !l.starts_with("PROBE mmio-write") && !l.contains("port=0x3fd"))
        .collect();
    // COM2-4 status, PCI config data/address, POST, an unassigned port, two MMIO reads and
    // a read-back after a write.
    assert_eq!(absent.len(), 10, "{}", run.describe());
    for probe in absent {
        let value = probe.rsplit("value=").next().unwrap();
        let width: u32 = probe
            .split("width=")
            .nth(1)
            .and_then(|w| w.split_whitespace().next())
            .and_then(|w| w.parse().ok())
            .unwrap();
        let all_ones = format!("{:#x}", (1u64 << (8 * width)) - 1);
        assert_eq!(value, all_ones, "probe not absent: {probe}");
    }
    assert!(
        run.stderr_lines().is_empty(),
        "absent probes must not flood the log:\n{}",
        run.describe()
    );
}

#[test]
fn triple_fault_is_reported_and_exits_zero_as_a_reset() {
    require_kvm();
    let run = scenario("triple-fault").run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("TRIPLE-FAULT now"),
        "{}",
        run.describe()
    );
    assert!(
        !run.stdout.contains("PETREL-GUEST done"),
        "the guest must not survive its triple fault:\n{}",
        run.describe()
    );
    let report: Vec<&str> = run
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("triple fault"))
        .collect();
    assert_eq!(report.len(), 1, "{}", run.describe());
}

#[test]
fn unknown_scenario_is_reported_by_the_guest() {
    require_kvm();
    let run = scenario("no-such-thing").run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("ERROR unknown scenario=no-such-thing"));
}

#[test]
fn more_vcpus_boot_and_stop_cleanly() {
    require_kvm();
    let run = scenario("hello").args(["--cpus", "4"]).run();
    assert_clean_run(&run, "hello");
}

/// Reads one register of one CPUID leaf from the guest's `cpuid` report.
fn cpuid_register(run: &RunOutput, leaf: &str, register: &str) -> u64 {
    let line = run
        .lines_starting_with(&format!("CPUID leaf={leaf} "))
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no CPUID line for {leaf}:\n{}", run.describe()));
    let value = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{register}=")))
        .unwrap();
    u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap()
}

#[test]
fn cpu_features_hide_cpuid_bits_from_the_guest() {
    require_kvm();
    const CX16: u64 = 1 << 13;
    let plain = scenario("cpuid").run();
    assert_clean_run(&plain, "cpuid");
    assert_ne!(
        cpuid_register(&plain, "0x1", "ecx") & CX16,
        0,
        "host has cx16"
    );
    // The hypervisor leaf carries KVM's signature.
    assert_eq!(cpuid_register(&plain, "0x40000000", "ebx"), 0x4b4d_564b);

    let hidden = scenario("cpuid").args(["--cpu-features", "-cx16"]).run();
    assert_clean_run(&hidden, "cpuid");
    assert_eq!(
        cpuid_register(&hidden, "0x1", "ecx") & CX16,
        0,
        "{}",
        hidden.describe()
    );

    let restored = scenario("cpuid")
        .args(["--cpu-features", "-cx16,+cx16"])
        .run();
    assert_ne!(cpuid_register(&restored, "0x1", "ecx") & CX16, 0);
}

#[test]
fn the_boot_vcpu_enters_long_mode_as_the_boot_protocol_says() {
    require_kvm();
    let run = scenario("bootstate").run();
    assert_clean_run(&run, "bootstate");
    let field = |name: &str| -> u64 {
        let value = run
            .lines_starting_with("BOOTSTATE")
            .iter()
            .flat_map(|l| l.split_whitespace())
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}:\n{}", run.describe()));
        u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap()
    };
    assert_eq!(field("rsi"), 0x7000, "rsi points at the zero page");
    assert_eq!(field("cs"), 0x08);
    assert_eq!(field("ds"), 0x10);
    assert_eq!(field("cr0") & 0x8000_0001, 0x8000_0001, "PE and PG");
    assert_ne!(field("cr4") & (1 << 5), 0, "PAE");
    assert_eq!(field("efer") & 0x500, 0x500, "LME and LMA");
    assert_eq!(field("gdt_base"), 0x500);
}
