//! Tier 1: the e820 map the test guest reads matches the RAM petrel was given, including
//! sizes that split around the 32-bit MMIO hole (2 GiB to 4 GiB).

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use petrel_tests::{require_kvm, test_guest, Petrel};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const HOLE_START: u64 = 2 * GIB;
const HOLE_END: u64 = 4 * GIB;

#[derive(Debug, PartialEq, Eq)]
struct E820 {
    addr: u64,
    size: u64,
    kind: u32,
}

fn parse_hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).unwrap()
}

fn report(memory: &str) -> (Vec<E820>, u64) {
    let run = Petrel::new()
        .kernel(test_guest())
        .cmdline("console=ttyS0 petrel.scenario=e820")
        .args(["--memory", memory])
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let mut entries = Vec::new();
    for line in run.lines_starting_with("E820 addr=") {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap()
        };
        entries.push(E820 {
            addr: parse_hex(field("addr=")),
            size: parse_hex(field("size=")),
            kind: field("type=").parse().unwrap(),
        });
    }
    let count: usize = run.lines_starting_with("E820 count=")[0]
        .trim_start_matches("E820 count=")
        .parse()
        .unwrap();
    assert_eq!(count, entries.len(), "{}", run.describe());
    let ram: u64 = run.lines_starting_with("MEM ram_bytes=")[0]
        .trim_start_matches("MEM ram_bytes=")
        .parse()
        .unwrap();
    (entries, ram)
}

/// Checks the map against what petrel promises: usable RAM from 0 to the EBDA, reserved up
/// to 1 MiB, RAM from 1 MiB up to the hole, and the rest above 4 GiB.
fn check(memory: &str, ram_bytes: u64) {
    require_kvm();
    let (entries, reported_ram) = report(memory);
    let ram: Vec<&E820> = entries.iter().filter(|e| e.kind == 1).collect();
    let low_end = ram_bytes.min(HOLE_START);
    assert_eq!(ram[0].addr, 0, "{entries:?}");
    assert_eq!(
        ram[1],
        &E820 {
            addr: MIB,
            size: low_end - MIB,
            kind: 1
        },
        "{entries:?}"
    );
    if ram_bytes > HOLE_START {
        assert_eq!(ram.len(), 3, "{entries:?}");
        assert_eq!(
            ram[2],
            &E820 {
                addr: HOLE_END,
                size: ram_bytes - HOLE_START,
                kind: 1
            },
            "{entries:?}"
        );
    } else {
        assert_eq!(ram.len(), 2, "{entries:?}");
    }
    // Nothing usable inside the hole, and no two entries overlap.
    for e in &entries {
        assert!(
            e.addr + e.size <= HOLE_START || e.addr >= HOLE_END,
            "{e:?} in the hole"
        );
    }
    let mut sorted: Vec<&E820> = entries.iter().collect();
    sorted.sort_by_key(|e| e.addr);
    for pair in sorted.windows(2) {
        assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{entries:?}");
    }
    // All RAM is described except the reserved EBDA/BIOS area below 1 MiB.
    let reserved_low = MIB - ram[0].size;
    assert_eq!(reported_ram + reserved_low, ram_bytes, "{entries:?}");
}

#[test]
fn e820_matches_32_mib() {
    check("32", 32 * MIB);
}

#[test]
fn e820_matches_128_mib() {
    check("128M", 128 * MIB);
}

#[test]
fn e820_splits_3_gib_around_the_hole() {
    check("3G", 3 * GIB);
}

#[test]
fn e820_splits_6_gib_around_the_hole() {
    check("6G", 6 * GIB);
}
