//! Tier 1: how petrel stops. Stop signals end the VM cleanly with the documented status,
//! even while the vCPU is blocked in KVM_RUN, and a terminal on stdin is in raw mode while the
//! guest runs and restored afterwards.

// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use petrel_tests::{petrel_bin, require_kvm, test_guest, Petrel};

/// A guest that halts with interrupts off: its vCPU sleeps in KVM_RUN until petrel kicks it.
fn halted_guest() -> Petrel {
    Petrel::new()
        .kernel(test_guest())
        .cmdline("console=ttyS0 petrel.scenario=halt")
}

#[test]
fn sigterm_stops_a_halted_guest_with_status_143() {
    require_kvm();
    let run = halted_guest()
        .args(["--cpus", "2"])
        .run_until(&["HALT now"]);
    assert_eq!(run.code, Some(128 + libc::SIGTERM), "{}", run.describe());
    assert!(!run.stderr.contains("panicked"), "{}", run.describe());
}

#[test]
fn sigint_stops_a_halted_guest_with_status_130() {
    require_kvm();
    let mut child = Command::new(petrel_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args(["--cmdline", "console=ttyS0 petrel.scenario=halt"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_output(&mut child, "HALT now");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
}

/// Reads the child's stdout until `marker` shows up (bounded by the tier-1 timeout).
fn wait_for_output(child: &mut std::process::Child, marker: &str) {
    use std::io::Read;
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + petrel_tests::TIER1_TIMEOUT;
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        assert!(Instant::now() < deadline, "no '{marker}' in time");
        let n = stdout.read(&mut buf).unwrap();
        assert!(n > 0, "petrel closed stdout before '{marker}'");
        seen.extend_from_slice(&buf[..n]);
    }
    // Keep draining so petrel never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
}

fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("petrel did not stop within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens a pseudo-terminal pair.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds; the name and termios/winsize pointers may be null.
    let ret = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(ret, 0, "openpty failed");
    // SAFETY: openpty returned two fresh fds that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn local_flags(fd: &OwnedFd) -> libc::tcflag_t {
    // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut termios) }, 0);
    termios.c_lflag
}

#[test]
fn a_terminal_is_raw_while_the_guest_runs_and_restored_after() {
    require_kvm();
    let (master, slave) = open_pty();
    let cooked = local_flags(&slave);
    assert_ne!(
        cooked & libc::ICANON,
        0,
        "a new pty starts in canonical mode"
    );

    let mut child = Command::new(petrel_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .args(["--cmdline", "console=ttyS0 petrel.scenario=halt"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Read the guest's output from the master side until it halts.
    let mut seen = Vec::new();
    let deadline = Instant::now() + petrel_tests::TIER1_TIMEOUT;
    while !String::from_utf8_lossy(&seen).contains("HALT now") {
        assert!(Instant::now() < deadline, "guest output did not arrive");
        let mut buf = [0u8; 256];
        // SAFETY: reading into a live buffer from the pty master we own.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n > 0, "pty closed");
        seen.extend_from_slice(&buf[..n as usize]);
    }
    let raw = local_flags(&slave);
    assert_eq!(
        raw & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw while attached"
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert_eq!(local_flags(&slave), cooked, "terminal settings restored");
}

#[test]
fn a_terminal_is_restored_after_a_guest_reset_too() {
    require_kvm();
    let (_master, slave) = open_pty();
    let cooked = local_flags(&slave);
    let status = Command::new(petrel_bin())
        .args(["run", "--kernel"])
        .arg(test_guest())
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(local_flags(&slave), cooked);
}
