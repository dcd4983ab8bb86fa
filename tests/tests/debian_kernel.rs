//! Tier 2: Debian's cloud kernel, as a bzImage and as an ELF vmlinux, accepts petrel's boot
//! structures: it prints its `Linux version` banner and its `Command line:`. The VM is stopped
//! once both lines appear. Assets come from scripts/fetch-guest-assets.sh.
//!
//! On VMX/SVM hardware both lines appear within milliseconds. Under PVM (software nested
//! virtualization, as on petrel's CI machines) guest kernel code runs through KVM's instruction
//! emulator: the ELF vmlinux prints them after about 13 s, and the bzImage first spends about
//! 75 s in its own decompressor (LZ4, ~53 MB at ~0.7 MB/s emulated), so its limit is longer.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use petrel_tests::{require_asset, require_kvm, Petrel};

fn boot_to_banner(kernel: &str, limit: Duration) {
    require_kvm();
    let kernel = require_asset(kernel);
    let cmdline = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 petrel.marker=tier2";
    let run = Petrel::new()
        .kernel(&kernel)
        .cmdline(cmdline)
        .args(["--memory", "256"])
        .timeout(limit)
        .run_until(&["Linux version", "Command line:"]);
    let command_line = run
        .stdout
        .lines()
        .find(|l| l.contains("Command line:"))
        .expect("run_until saw the Command line: line");
    assert!(
        command_line.contains("petrel.marker=tier2"),
        "the kernel saw another command line: {command_line}"
    );
    assert_eq!(run.code, Some(128 + libc::SIGTERM), "{}", run.describe());
}

#[test]
fn debian_bzimage_prints_its_banner() {
    boot_to_banner("debian-cloud.bzImage", Duration::from_secs(180));
}

#[test]
fn debian_vmlinux_elf_prints_its_banner() {
    boot_to_banner("debian-cloud.vmlinux", Duration::from_secs(60));
}
