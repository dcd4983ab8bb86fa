//! Bad input from the user: each case ends with a non-zero exit and exactly one clear line
//! on stderr, with no panic and no hang.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::fs;

use petrel_tests::{require_kvm, test_guest, Petrel, RunOutput, TempDir};

/// Asserts the run failed with `code` and one error line containing every `needle`.
fn assert_one_line_error(run: &RunOutput, code: i32, needles: &[&str]) {
    assert_eq!(run.code, Some(code), "{}", run.describe());
    let lines = run.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line:\n{}",
        run.describe()
    );
    let line = lines[0];
    assert!(line.starts_with("petrel: error: "), "{}", run.describe());
    assert!(!line.contains("panicked"), "{}", run.describe());
    for needle in needles {
        assert!(line.contains(needle), "missing '{needle}' in: {line}");
    }
}

#[test]
fn missing_kernel() {
    let run = Petrel::new().kernel("/nonexistent/vmlinux").run();
    assert_one_line_error(&run, 2, &["/nonexistent/vmlinux", "no such file"]);
}

#[test]
fn directory_as_kernel() {
    let dir = TempDir::new("dir-kernel");
    let run = Petrel::new().kernel(dir.path()).run();
    assert_one_line_error(&run, 2, &["is a directory"]);
}

#[test]
fn text_file_as_kernel() {
    require_kvm();
    let dir = TempDir::new("text-kernel");
    let path = dir.join("notes.txt");
    fs::write(&path, "this is not a kernel, just some text\n".repeat(100)).unwrap();
    let run = Petrel::new().kernel(&path).run();
    assert_one_line_error(&run, 1, &["not a kernel"]);
}

#[test]
fn truncated_elf() {
    require_kvm();
    let dir = TempDir::new("truncated-elf");
    let guest = fs::read(test_guest()).unwrap();
    for keep in [32, 100, guest.len() / 2] {
        let path = dir.join(&format!("guest-{keep}.elf"));
        fs::write(&path, &guest[..keep]).unwrap();
        let run = Petrel::new().kernel(&path).run();
        assert_one_line_error(&run, 1, &["truncated"]);
    }
}

/// A bzImage header that promises more protected-mode code than the file holds.
fn truncated_bzimage() -> Vec<u8> {
    let setup_sects = 4u8;
    let mut image = vec![0u8; 2048];
    image[0x1f1] = setup_sects;
    image[0x1f4..0x1f8].copy_from_slice(&(0x10_0000u32 / 16).to_le_bytes()); // syssize: 1 MiB
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes()); // kernel_alignment
    image[0x234] = 1; // relocatable
    image[0x236..0x238].copy_from_slice(&0x3u16.to_le_bytes()); // xloadflags: 64-bit entry
    image[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
    image.extend_from_slice(&[0x90; 4096]);
    image
}

#[test]
fn truncated_bzimage_is_refused() {
    require_kvm();
    let dir = TempDir::new("truncated-bz");
    let path = dir.join("bzImage");
    fs::write(&path, truncated_bzimage()).unwrap();
    let run = Petrel::new().kernel(&path).run();
    assert_one_line_error(&run, 1, &["truncated"]);
}

#[test]
fn initrd_larger_than_ram() {
    require_kvm();
    let dir = TempDir::new("big-initrd");
    let path = dir.join("initrd.img");
    let file = fs::File::create(&path).unwrap();
    file.set_len(64 << 20).unwrap();
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--memory", "32", "--initrd"])
        .args([&path])
        .run();
    assert_one_line_error(&run, 1, &["initrd"]);
}

#[test]
fn zero_memory() {
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--memory", "0"])
        .run();
    assert_one_line_error(&run, 2, &["--memory"]);
}

#[test]
fn absurd_memory() {
    for size in ["999999G", "99999999999999999999", "18014398509481983G"] {
        let run = Petrel::new()
            .kernel(test_guest())
            .args(["--memory", size])
            .run();
        assert_one_line_error(&run, 2, &["memory"]);
    }
}

#[test]
fn zero_cpus() {
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--cpus", "0"])
        .run();
    assert_one_line_error(&run, 2, &["--cpus"]);
}

#[test]
fn too_many_cpus_names_the_limit() {
    require_kvm();
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--cpus", "100000"])
        .run();
    assert_one_line_error(&run, 1, &["--cpus 100000", "at most"]);
    // 254 is the xAPIC limit (KVM allows more on any current host).
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--cpus", "255"])
        .run();
    assert_one_line_error(&run, 1, &["--cpus 255", "at most 254"]);
}

#[test]
fn over_long_cmdline() {
    require_kvm();
    let cmdline = format!("console=ttyS0 {}", "x".repeat(4096));
    let run = Petrel::new().kernel(test_guest()).cmdline(&cmdline).run();
    assert_one_line_error(&run, 1, &["command line"]);
}

#[test]
fn unwritable_console_file() {
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--console", "file=/nonexistent/dir/console.log"])
        .run();
    assert_one_line_error(&run, 1, &["console file", "/nonexistent/dir/console.log"]);
}

#[test]
fn unknown_cpu_feature() {
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--cpu-features", "-cx16,-warp-drive"])
        .run();
    assert_one_line_error(&run, 2, &["warp-drive"]);
}

#[test]
fn malformed_flags_give_one_line() {
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--memory", "lots"])
        .run();
    assert_one_line_error(&run, 2, &["lots"]);
}

#[test]
fn malformed_net_and_vsock_values_give_one_line() {
    let cases: [(&[&str], &[&str]); 8] = [
        (&["--net", "tap0"], &["--net", "key=value"]),
        (&["--net", "tap=a,ip=1.2.3.4"], &["unknown option 'ip'"]),
        (&["--net", "tap=a,mac=01:00:5e:00:00:01"], &["multicast"]),
        (&["--net", "tap=a/b"], &["invalid TAP name"]),
        (
            &["--net", "tap=a", "--net", "tap=a"],
            &["TAP 'a' is given to two"],
        ),
        (&["--vsock", "cid=2,socket=/tmp/v.sock"], &["CID '2'"]),
        (&["--vsock", "cid=3"], &["needs cid= and socket="]),
        (
            &["--vsock", "cid=3,socket=/nonexistent-dir/v.sock"],
            &["/nonexistent-dir", "does not exist"],
        ),
    ];
    for (args, needles) in cases {
        let run = Petrel::new()
            .kernel(test_guest())
            .args(args.iter().copied())
            .run();
        assert_one_line_error(&run, 2, needles);
    }
}

#[test]
fn vsock_socket_path_that_is_a_regular_file_is_not_replaced() {
    let dir = TempDir::new("vsock-file");
    let path = dir.join("precious.txt");
    fs::write(&path, "keep me").unwrap();
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--vsock", &format!("cid=3,socket={}", path.display())])
        .run();
    assert_one_line_error(&run, 2, &["not a socket"]);
    assert_eq!(fs::read_to_string(&path).unwrap(), "keep me");
}
