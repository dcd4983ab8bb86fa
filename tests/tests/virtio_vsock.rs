//! virtio-vsock end to end, with Firecracker's Unix-socket model on the host side: the test
//! guest (virtio-drivers' vsock driver, 1 KiB receive buffer per connection) echoes streams
//! far larger than one credit window in both directions.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use petrel_tests::netns::NetNs;
use petrel_tests::{field, line_starting, require_kvm, test_guest, Petrel, TempDir};

/// More than the 256 KiB of credit petrel gives the guest, and far more than the 1 KiB the
/// guest gives petrel.
const BYTES: usize = 300_000;
const GUEST_CID: u32 = 3;

/// Byte i of a test stream.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A host program listening on `PATH_<port>`: echoes one connection, returns what it got.
fn echo_listener(path: PathBuf) -> std::thread::JoinHandle<Vec<u8>> {
    let listener = UnixListener::bind(&path).expect("bind the host listener");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the guest connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    stream.write_all(&buf[..n]).expect("echo");
                }
                Err(e) => panic!("host listener read: {e}"),
            }
        }
        got
    })
}

/// Connects to petrel's socket and asks for the guest's `port`; returns the stream and
/// petrel's answer line.
fn connect(socket: &Path, port: u32) -> (UnixStream, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to petrel's socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("send CONNECT");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => answer.push(byte[0]),
            Err(e) => panic!("reading petrel's answer to CONNECT {port}: {e}"),
        }
    }
    (stream, String::from_utf8_lossy(&answer).into_owned())
}

#[test]
fn echo_in_both_directions_beyond_one_credit_window() {
    require_kvm();
    let dir = TempDir::new("vsock-echo");
    let socket = dir.join("v.sock");
    let host_side = echo_listener(PathBuf::from(format!("{}_5000", socket.display())));
    // Like every guest-scenario test that talks to the host, in a network namespace of its
    // own (path-named Unix sockets work across namespaces).
    let ns = NetNs::new();
    let mut running = Petrel::new()
        .in_netns(&ns)
        .kernel(test_guest())
        .args([
            "--vsock",
            &format!("cid={GUEST_CID},socket={}", socket.display()),
        ])
        .cmdline(&format!(
            "petrel.scenario=vsock-echo petrel.bytes={BYTES} petrel.port=5000 petrel.listen=6000"
        ))
        .spawn();

    // Guest → host: the guest connects to CID 2 port 5000, i.e. our listener.
    running.expect(&["VSOCK connect", "VSOCK listening port=6000"]);
    let stdout = running.stdout().to_string();
    assert_eq!(
        field(line_starting(&stdout, "VSOCK cid="), "cid"),
        GUEST_CID.to_string()
    );
    let connect_line = line_starting(&stdout, "VSOCK connect");
    assert_eq!(field(connect_line, "sent"), BYTES.to_string(), "{stdout}");
    assert_eq!(field(connect_line, "echoed"), BYTES.to_string(), "{stdout}");
    assert_eq!(field(connect_line, "ok"), "1", "{stdout}");
    let received = host_side.join().expect("host listener");
    assert!(
        received == pattern(BYTES),
        "the host got {} bytes, not the guest's pattern",
        received.len()
    );

    // Host → guest: nobody listens on 7777, and junk is not a request.
    let (mut refused, answer) = connect(&socket, 7777);
    assert_eq!(answer, "", "petrel answered a connection to a closed port");
    assert_eq!(refused.read(&mut [0u8; 16]).expect("EOF"), 0);
    let mut junk = UnixStream::connect(&socket).expect("connect");
    junk.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    junk.write_all(b"HELLO there\n").expect("send junk");
    assert_eq!(junk.read(&mut [0u8; 16]).expect("petrel closes"), 0);

    // Host → guest: the guest's listener on 6000 echoes what we send.
    let (stream, answer) = connect(&socket, 6000);
    let hostport: u32 = answer
        .strip_prefix("OK ")
        .and_then(|rest| rest.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("answer to CONNECT 6000: {answer:?}"));
    assert!(hostport > 1023, "host port {hostport}");
    let mut writer = stream.try_clone().expect("clone");
    let sender = std::thread::spawn(move || {
        writer
            .write_all(&pattern(BYTES))
            .expect("send to the guest");
        writer
    });
    let mut echoed = vec![0u8; BYTES];
    (&stream).read_exact(&mut echoed).expect("read the echo");
    assert!(echoed == pattern(BYTES), "the guest's echo differs");
    let writer = sender.join().expect("sender");
    writer
        .shutdown(std::net::Shutdown::Write)
        .expect("shut down");
    // The guest sees the shutdown, finishes, and petrel closes our end.
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest).expect("EOF");
    assert!(
        rest.is_empty(),
        "{} unexpected bytes after the echo",
        rest.len()
    );

    let run = running.wait();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let accepted = line_starting(&run.stdout, "VSOCK accepted");
    assert_eq!(field(accepted, "port"), "6000");
    assert_eq!(
        field(accepted, "echoed"),
        BYTES.to_string(),
        "{}",
        run.describe()
    );
    assert!(!socket.exists(), "petrel removes its socket when it exits");
}

/// A socket left by a VMM that died is replaced; one another process listens on is not.
#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    require_kvm();
    let dir = TempDir::new("vsock-stale");
    let socket = dir.join("v.sock");
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists(), "the stale socket file stays behind");
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--vsock", &format!("cid=3,socket={}", socket.display())])
        .cmdline("petrel.scenario=virtio")
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert!(run.stdout.contains("type=19"), "{}", run.describe());

    let live = UnixListener::bind(&socket).expect("bind");
    let run = Petrel::new()
        .kernel(test_guest())
        .args(["--vsock", &format!("cid=3,socket={}", socket.display())])
        .run();
    assert_ne!(run.code, Some(0), "{}", run.describe());
    assert_eq!(run.stderr_lines().len(), 1, "{}", run.describe());
    assert!(
        run.stderr.contains(&socket.display().to_string()),
        "{}",
        run.describe()
    );
    drop(live);
}
