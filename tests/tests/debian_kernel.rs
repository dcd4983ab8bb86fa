//! Tier 2: Debian's cloud kernel, as a bzImage and as an ELF vmlinux, accepts petrel's boot
//! structures: it prints its `Linux version` banner and its `Command line:`. The VM is stopped
//! once both lines appear. Assets come from scripts/fetch-guest-assets.sh.
//!
//! Under PVM (software nested virtualization, as on petrel's CI machines) the first line takes
//! about 13 s; on VMX/SVM hardware it takes milliseconds.

use std::time::Duration;

use petrel_tests::{require_asset, require_kvm, Petrel};

/// Features KVM's instruction emulator cannot run on PVM hosts; hiding them costs nothing on
/// hardware and lets the same test run everywhere.
const EMULATOR_SAFE_FEATURES: &str = "-cx16,-xsave,-avx512f,-pcid,-rdtscp,-popcnt,-bmi1,-bmi2";

fn boot_to_banner(kernel: &str) {
    require_kvm();
    let kernel = require_asset(kernel);
    let cmdline = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 petrel.marker=tier2";
    let run = Petrel::new()
        .kernel(&kernel)
        .cmdline(cmdline)
        .args(["--memory", "256", "--cpu-features", EMULATOR_SAFE_FEATURES])
        .timeout(Duration::from_secs(60))
        .run_until(&["Linux version", "Command line:"]);
    let command_line = run
        .stdout
        .lines()
        .find(|l| l.contains("Command line:"))
        .unwrap();
    assert!(
        command_line.contains("petrel.marker=tier2"),
        "the kernel saw another command line: {command_line}"
    );
    assert_eq!(run.code, Some(128 + libc::SIGTERM), "{}", run.describe());
}

#[test]
fn debian_bzimage_prints_its_banner() {
    boot_to_banner("debian-cloud.bzImage");
}

#[test]
fn debian_vmlinux_elf_prints_its_banner() {
    boot_to_banner("debian-cloud.vmlinux");
}
