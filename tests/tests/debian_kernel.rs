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
    boot_to_banner("debian-cloud.bzImage", Duration::from_secs(240));
}

#[test]
fn debian_vmlinux_elf_prints_its_banner() {
    boot_to_banner("debian-cloud.vmlinux", Duration::from_secs(60));
}

/// Boots the ELF vmlinux with `cpus` vCPUs until it has parsed the MADT, and checks that it
/// listed every table petrel wrote without an ACPI error or checksum warning.
///
/// `noxsave`: on PVM hosts KVM re-adds XSAVE to the guest's CPUID even when petrel hides it
/// (petrel warns about that), and the emulator cannot run `xrstor`, so the kernel is told on
/// its own command line not to use XSAVE.
fn boot_to_smp_configuration(cpus: u32) {
    require_kvm();
    let kernel = require_asset("debian-cloud.vmlinux");
    let run = Petrel::new()
        .kernel(&kernel)
        .cmdline("console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 noxsave")
        .args(["--memory", "256", "--cpus", &cpus.to_string()])
        .timeout(Duration::from_secs(90))
        .run_until(&["smpboot: Allowing"]);
    for table in ["RSDP", "XSDT", "FACP", "DSDT", "APIC"] {
        assert!(
            run.stdout.contains(&format!("ACPI: {table} 0x")),
            "the kernel did not list {table}:\n{}",
            run.describe()
        );
    }
    for bad in [
        "ACPI Error",
        "ACPI BIOS Error",
        "ACPI Warning",
        "Incorrect checksum",
    ] {
        assert!(!run.stdout.contains(bad), "'{bad}' in:\n{}", run.describe());
    }
    assert!(
        run.stdout
            .contains(&format!("smpboot: Allowing {cpus} CPUs, 0 hotplug CPUs")),
        "{}",
        run.describe()
    );
}

#[test]
fn debian_kernel_sees_1_cpu_through_acpi() {
    boot_to_smp_configuration(1);
}

#[test]
fn debian_kernel_sees_4_cpus_through_acpi() {
    boot_to_smp_configuration(4);
}
