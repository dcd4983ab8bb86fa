//! Network namespaces for network tests: every TAP, address and packet of a test lives in a
//! namespace the test creates, so nothing touches the machine's real interfaces. The
//! namespace is deleted when the [`NetNs`] is dropped, which also happens when the test
//! panics.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Prefix of every namespace the tests create: `petrel-t<pid>-<n>`.
const PREFIX: &str = "petrel-t";

/// A network namespace created with `ip netns add`, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a fresh namespace with its loopback up. Namespaces left behind by test
    /// processes that no longer exist (killed before they could clean up) are deleted first.
    pub fn new() -> Self {
        remove_stale_namespaces();
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        run_ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <namespace> ARGS...`, panicking with its stderr if it fails; returns its
    /// stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// Like [`ip`](Self::ip), but returns whether it succeeded instead of panicking.
    pub fn ip_succeeds(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    /// Creates a persistent TAP `name` with address `cidr` (e.g. `10.0.2.1/24`), up.
    pub fn add_tap(&self, name: &str, cidr: &str) {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        self.ip(&["addr", "add", cidr, "dev", name]);
        self.ip(&["link", "set", name, "up"]);
    }

    /// The MAC address of interface `name`.
    pub fn mac_of(&self, name: &str) -> String {
        let out = self.ip(&["-br", "link", "show", "dev", name]);
        out.split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no MAC in `ip -br link show dev {name}`: {out}"))
            .to_string()
    }

    /// Starts `f` on a new thread that has entered this namespace (sockets it opens live
    /// there).
    pub fn spawn_inside<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace fd we hold; it changes only this thread's namespace.
            let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns {path}: {}", io::Error::last_os_error());
            f()
        })
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also deletes its TAPs and addresses.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

/// A raw `AF_PACKET` socket bound to one interface: sends and receives whole Ethernet
/// frames. Open it on a thread inside the namespace ([`NetNs::run_inside`]).
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Opens a socket that sees every frame on interface `name` (both directions).
    pub fn open(name: &str) -> io::Result<Self> {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: the name is a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = index as i32;
        // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sends one frame (starting with its Ethernet header) out of the interface, towards
    /// whatever is attached to it (for a TAP: the VMM).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let ret = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives the next frame seen on the interface, or `None` when nothing arrives before
    /// `deadline`.
    pub fn recv_until(&self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pollfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            if ready == 0 {
                continue;
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(error);
            }
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The ethertype of the test frames (IEEE 802 local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88B5;

/// A test frame as the guest's `net-*` scenarios send and expect them: Ethernet header,
/// `PETREL`, `seq` as big-endian u32, then filler byte i = (seq + i) mod 256, `payload_len`
/// bytes after the Ethernet header in all.
pub fn test_frame(dst: [u8; 6], src: [u8; 6], seq: u32, payload_len: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload_len);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    let mut payload = b"PETREL".to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    let filler = payload_len.saturating_sub(payload.len());
    payload.extend((0..filler).map(|i| (seq as usize + i) as u8));
    payload.truncate(payload_len);
    frame.extend_from_slice(&payload);
    frame
}

/// How long network tests wait for frames that should come.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);
