//! Builds petrel's freestanding test guest (tests/guest) with its own cargo invocation and
//! flags, and tells the tests where the ELF is through `PETREL_TEST_GUEST`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let guest_dir = manifest_dir.join("guest");
    for watched in [
        "src",
        "Cargo.toml",
        "build.rs",
        "link.ld",
        "build.sh",
        ".cargo/config.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            guest_dir.join(watched).display()
        );
    }

    // The guest has its own workspace, target directory and flags; none of this build's
    // settings may leak into it.
    let mut command = Command::new("bash");
    command
        .arg(guest_dir.join("build.sh"))
        .current_dir(&guest_dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let leaks = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS"
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTDOC"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if leaks {
            command.env_remove(&key);
        }
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        command.env("PETREL_GUEST_CARGO", cargo);
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(e) => panic!("cannot run tests/guest/build.sh: {e}"),
    };
    if !output.status.success() {
        panic!(
            "building the test guest failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim().to_string();
    if path.is_empty() || !std::path::Path::new(&path).is_file() {
        panic!("tests/guest/build.sh did not print the guest's path (got '{path}')");
    }
    println!("cargo:rustc-env=PETREL_TEST_GUEST={path}");
}
