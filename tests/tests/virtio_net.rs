//! virtio-net end to end: petrel's test guest drives the device with virtio-drivers' net
//! driver over a TAP. Every test creates its own network namespace (the TAP, its address and
//! every frame stay inside it) and deletes it when it ends, even on failure.

use std::time::Instant;

use petrel_tests::netns::{parse_mac, test_frame, NetNs, PacketSocket, FRAME_WAIT, TEST_ETHERTYPE};
use petrel_tests::{field, line_starting, require_kvm, test_guest, Petrel, TempDir};

const TAP: &str = "ptap0";
const HOST_IP: &str = "10.0.2.1";
const GUEST_IP: &str = "10.0.2.2";

fn namespace_with_tap() -> NetNs {
    let ns = NetNs::new();
    ns.add_tap(TAP, &format!("{HOST_IP}/24"));
    ns
}

/// The guest asks for the TAP's address with ARP and gets the host kernel's reply; the
/// frames it sends afterwards reach the TAP intact and in order, from its MAC.
#[test]
fn guest_arp_gets_the_kernels_reply_and_its_frames_reach_the_host() {
    require_kvm();
    let ns = namespace_with_tap();
    let tap_mac = ns.mac_of(TAP);
    const FRAMES: u32 = 16;
    const PAYLOAD: usize = 300;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let capture = ns.spawn_inside(move || {
        let socket = PacketSocket::open(TAP).expect("packet socket on the TAP");
        ready_tx.send(()).expect("the test thread waits");
        let deadline = Instant::now() + FRAME_WAIT;
        let mut frames = Vec::new();
        while frames.len() < FRAMES as usize {
            match socket.recv_until(deadline).expect("receive") {
                Some(frame) if frame.get(12..14) == Some(&TEST_ETHERTYPE.to_be_bytes()[..]) => {
                    frames.push(frame)
                }
                Some(_) => {}
                None => break,
            }
        }
        frames
    });
    ready_rx.recv().expect("capture started");
    let dir = TempDir::new("net-arp");
    let metrics = dir.join("metrics.json");
    let run = Petrel::new()
        .in_netns(&ns)
        .kernel(test_guest())
        .args(["--net", &format!("tap={TAP}")])
        .args([std::ffi::OsStr::new("--metrics"), metrics.as_os_str()])
        .cmdline(&format!(
            "petrel.scenario=net-arp petrel.ip={GUEST_IP} petrel.peer={HOST_IP} petrel.count={FRAMES} petrel.bytes={PAYLOAD}"
        ))
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let guest_mac_text = field(line_starting(&run.stdout, "NET mac="), "mac");
    let guest_mac = parse_mac(guest_mac_text).expect("a MAC");
    assert_eq!(guest_mac[0] & 3, 2, "generated MAC is local and unicast");
    let reply = line_starting(&run.stdout, "NET arp-reply");
    assert_eq!(field(reply, "peer"), HOST_IP, "{}", run.describe());
    assert_eq!(
        field(reply, "mac"),
        tap_mac,
        "the reply came from the TAP's kernel side"
    );
    let sent = line_starting(&run.stdout, "NET sent");
    assert_eq!(field(sent, "frames"), FRAMES.to_string());

    // petrel's own counters agree: the ARP request and the test frames went out.
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metrics).expect("metrics file"))
            .expect("metrics JSON");
    let tx = metrics["net"]["tx_packets_count"]
        .as_u64()
        .expect("tx_packets_count");
    assert!(tx > u64::from(FRAMES), "tx_packets_count {tx}");
    assert_eq!(metrics["net"]["tx_fails"], 0);
    assert!(
        metrics["net"]["rx_packets_count"].as_u64() >= Some(1),
        "the ARP reply"
    );
    assert_eq!(metrics["petrel"]["nets"][0]["tap"], TAP);

    let frames = capture.join().expect("capture thread");
    assert_eq!(frames.len(), FRAMES as usize, "frames the TAP saw");
    let tap_mac = parse_mac(&tap_mac).expect("TAP MAC");
    for (seq, frame) in frames.iter().enumerate() {
        let expected = test_frame(tap_mac, guest_mac, seq as u32, PAYLOAD);
        assert_eq!(frame.len(), expected.len(), "frame {seq} length");
        assert!(
            frame == &expected,
            "frame {seq} differs from the guest's pattern"
        );
    }
}

/// Frames sent into the TAP reach the guest intact, at the MAC given with `mac=`.
#[test]
fn host_frames_reach_the_guest_at_the_configured_mac() {
    require_kvm();
    let ns = namespace_with_tap();
    let tap_mac = parse_mac(&ns.mac_of(TAP)).expect("TAP MAC");
    const MAC: &str = "02:5e:11:00:00:42";
    const FRAMES: u32 = 64;
    const PAYLOAD: usize = 1000;
    let mut running = Petrel::new()
        .in_netns(&ns)
        .kernel(test_guest())
        .args(["--net", &format!("tap={TAP},mac={MAC}")])
        .cmdline(&format!("petrel.scenario=net-rx petrel.count={FRAMES}"))
        .spawn();
    running.expect(&["NET ready"]);
    assert_eq!(
        field(line_starting(running.stdout(), "NET mac="), "mac"),
        MAC
    );
    let guest_mac = parse_mac(MAC).expect("MAC");
    ns.spawn_inside(move || {
        let socket = PacketSocket::open(TAP).expect("packet socket on the TAP");
        for seq in 0..FRAMES {
            // Something the guest must ignore between the frames it counts.
            if seq % 16 == 0 {
                let mut other = test_frame(guest_mac, tap_mac, seq, 60);
                other[12..14].copy_from_slice(&0x88b6u16.to_be_bytes());
                socket.send(&other).expect("send another ethertype");
            }
            let frame = test_frame(guest_mac, tap_mac, seq, PAYLOAD);
            socket.send(&frame).expect("send a test frame");
        }
    })
    .join()
    .expect("sender thread");
    let run = running.wait();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let received = line_starting(&run.stdout, "NET received");
    assert_eq!(
        field(received, "frames"),
        FRAMES.to_string(),
        "{}",
        run.describe()
    );
    assert_eq!(field(received, "bad"), "0", "{}", run.describe());
    let bytes = (FRAMES as usize * (14 + PAYLOAD)).to_string();
    assert_eq!(field(received, "bytes"), bytes, "{}", run.describe());
}

/// Without an existing TAP, petrel (which has CAP_NET_ADMIN here) creates one for the VM's
/// lifetime; the guest sees the device, and the TAP is gone after the VM exits.
#[test]
fn petrel_creates_a_missing_tap_for_the_vms_lifetime() {
    require_kvm();
    let ns = NetNs::new();
    assert!(!ns.ip_succeeds(&["link", "show", "dev", "pnew0"]));
    let run = Petrel::new()
        .in_netns(&ns)
        .kernel(test_guest())
        .args(["--net", "tap=pnew0", "--net", "tap=pnew1"])
        .cmdline("petrel.scenario=virtio")
        .run();
    assert_eq!(run.code, Some(0), "{}", run.describe());
    assert_eq!(
        run.lines_starting_with("VIRTIO dev ")
            .iter()
            .filter(|line| line.ends_with("type=1"))
            .count(),
        2,
        "{}",
        run.describe()
    );
    assert!(
        !ns.ip_succeeds(&["link", "show", "dev", "pnew0"]),
        "a TAP petrel created outlived it"
    );
}

/// An interface that is not a TAP is refused with one clear line, before the guest runs.
#[test]
fn an_interface_that_is_not_a_tap_is_refused() {
    require_kvm();
    let ns = NetNs::new();
    let run = Petrel::new()
        .in_netns(&ns)
        .kernel(test_guest())
        .args(["--net", "tap=lo"])
        .run();
    assert_ne!(run.code, Some(0), "{}", run.describe());
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", run.describe());
    assert!(
        lines[0].contains("TAP \"lo\"") || lines[0].contains("\"lo\""),
        "{}",
        run.describe()
    );
    assert!(
        !run.stdout.contains("PETREL-GUEST"),
        "the guest must not start"
    );
}
