//! All of petrel's virtio device kinds in one VM, inside a network namespace of the test's
//! own: each gets its own window and interrupt line, the guest finds all of them, and a
//! scenario on one device works beside the others.

use petrel_tests::netns::NetNs;
use petrel_tests::{field, require_kvm, test_guest, Petrel, TempDir};

fn machine(ns: &NetNs, dir: &TempDir) -> Petrel {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk image");
    Petrel::new()
        .in_netns(ns)
        .kernel(test_guest())
        .args(["--disk", &format!("path={}", disk.display())])
        .args(["--net", "tap=ptap0", "--net", "tap=ptap1"])
        .args([
            "--vsock",
            &format!("cid=7,socket={}", dir.join("v.sock").display()),
        ])
        .args(["--rng"])
}

#[test]
fn every_device_kind_in_one_vm() {
    require_kvm();
    let ns = NetNs::new();
    ns.add_tap("ptap0", "10.0.2.1/24");
    let dir = TempDir::new("virtio-together");

    let run = machine(&ns, &dir).cmdline("petrel.scenario=virtio").run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let devices = run.lines_starting_with("VIRTIO dev ");
    let mut types: Vec<&str> = devices.iter().map(|l| field(l, "type")).collect();
    types.sort_unstable();
    assert_eq!(types, ["1", "1", "19", "2", "4"], "{}", run.describe());
    let mut irqs: Vec<&str> = devices.iter().map(|l| field(l, "irq")).collect();
    irqs.sort_unstable();
    irqs.dedup();
    assert_eq!(
        irqs.len(),
        5,
        "one interrupt line each:\n{}",
        run.describe()
    );

    // The entropy device works beside the others (and the scenario ignores them).
    let run = machine(&ns, &dir).cmdline("petrel.scenario=rng").run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(
        run.lines_starting_with("RNG dev=0 bytes=").len(),
        2,
        "{}",
        run.describe()
    );
    assert!(run.stdout.contains("RNG count=1"), "{}", run.describe());
    assert!(!run.stdout.contains("error"), "{}", run.describe());

    // So does the network card on the TAP with an address.
    let run = machine(&ns, &dir)
        .cmdline("petrel.scenario=net-arp petrel.ip=10.0.2.2 petrel.peer=10.0.2.1 petrel.count=1")
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(
        run.stdout.contains("NET arp-reply peer=10.0.2.1"),
        "{}",
        run.describe()
    );
}
