//! The `petrel` binary's command-line surface: help, version and argument errors. (Having an
//! integration test here also makes `cargo test --workspace` build the binary that the
//! end-to-end tests in tests/ run.)

use std::process::Command;

fn petrel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(args)
        .output()
        .expect("run petrel")
}

#[test]
fn help_lists_every_run_flag() {
    let out = petrel(&["run", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--memory",
        "--cpu-features",
        "--console",
        "--log-level",
    ] {
        assert!(help.contains(flag), "{flag} missing from help:\n{help}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = petrel(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn missing_kernel_flag_is_one_line_with_status_2() {
    let out = petrel(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--kernel"), "{stderr}");
}

#[test]
fn no_subcommand_shows_usage_with_status_2() {
    let out = petrel(&[]);
    assert_eq!(out.status.code(), Some(2));
}
