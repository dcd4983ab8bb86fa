//! The host side of a network device: the [`NetBackend`] trait and a TAP implementation.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

use thiserror::Error;

/// `TUNSETIFF`, `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETOFFLOAD`, `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNGETIFF`, `_IOR('T', 210, unsigned int)`: fills a `struct ifreq` with the interface's
/// name and `IFF_*` flags.
#[cfg(test)]
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `TUNSETVNETHDRSZ`, `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `IFF_TAP`: an Ethernet (layer 2) device.
const IFF_TAP: libc::c_short = 0x0002;
/// `IFF_NO_PI`: no packet-information prefix.
const IFF_NO_PI: libc::c_short = 0x1000;
/// `IFF_VNET_HDR`: each frame is preceded by a virtio-net header.
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `IFNAMSIZ`: interface names are at most 15 bytes plus a NUL.
const IFNAMSIZ: usize = 16;
/// Size of `struct ifreq` on 64-bit Linux.
const IFREQ_SIZE: usize = 40;

/// `TUN_F_CSUM`: the device may send packets with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the device may send TCPv4 segmentation-offload packets.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the device may send TCPv6 segmentation-offload packets.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_UFO`: the device may send UDP fragmentation-offload packets.
pub const TUN_F_UFO: u32 = 0x10;

/// Where a network device's frames go and come from. Every frame, in both directions, starts
/// with the 12-byte `virtio_net_hdr_v1`.
pub trait NetBackend: Send {
    /// Reads one frame (with its header) into `buf`, without blocking. Returns its length,
    /// or an error of kind `WouldBlock` when no frame is waiting. A frame longer than `buf`
    /// may be truncated; `buf` should hold a header and a 64 KiB packet.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame made of the concatenation of `parts` (header first). Returns the
    /// bytes written.
    fn write_frame(&mut self, parts: &[&[u8]]) -> io::Result<usize>;

    /// Tells the backend which offloads the guest accepts on receive (`TUN_F_*` flags).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;

    /// The fd the event loop watches for readability (frames waiting for the guest).
    fn raw_fd(&self) -> RawFd;

    /// A name for logs and the generated MAC (the TAP's interface name).
    fn name(&self) -> &str;
}

/// Why a TAP could not be opened.
#[derive(Debug, Error)]
pub enum TapError {
    /// The interface name is empty, too long, or has characters Linux refuses.
    #[error("invalid TAP name {0:?} (1 to 15 bytes, no '/', whitespace or NUL)")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// There is no such interface and petrel may not create one.
    #[error("no TAP named {0:?}, and no right to create one (needs CAP_NET_ADMIN)")]
    NoSuchDevice(String),
    /// The interface exists but petrel may not attach to it.
    #[error("no permission to attach to TAP {0:?} (owned by another user or group?)")]
    PermissionDenied(String),
    /// The interface exists but is not a TAP (or has other flags).
    #[error("{0:?} exists but is not a TAP device with vnet headers")]
    NotATap(String),
    /// The interface is already attached to another process (and is not multi-queue).
    #[error("TAP {0:?} is busy")]
    Busy(String),
    /// Another `ioctl` failed.
    #[error("{op} on TAP {name:?} failed")]
    Ioctl {
        /// The request.
        op: &'static str,
        /// The interface name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// A TAP interface opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte vnet header,
/// and `O_NONBLOCK`. A TAP that petrel created disappears when it is dropped; one that
/// existed (made persistent with `ip tuntap add`) stays.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Whether Linux accepts `name` as a network interface name: 1 to 15 bytes, not `.` or
/// `..`, no `/`, `:`, whitespace or NUL.
pub fn is_valid_tap_name(name: &str) -> bool {
    !(name.is_empty()
        || name.len() >= IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace()))
}

fn check_name(name: &str) -> Result<CString, TapError> {
    if !is_valid_tap_name(name) {
        return Err(TapError::InvalidName(name.to_owned()));
    }
    CString::new(name).map_err(|_| TapError::InvalidName(name.to_owned()))
}

impl Tap {
    /// Attaches to the TAP interface `name`, creating it if it does not exist and petrel has
    /// `CAP_NET_ADMIN`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let cname = check_name(name)?;
        // SAFETY: the path is a NUL-terminated string; `open` has no other preconditions.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut ifreq = [0u8; IFREQ_SIZE];
        ifreq[..name.len()].copy_from_slice(cname.as_bytes());
        let flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        ifreq[IFNAMSIZ..IFNAMSIZ + 2].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifreq` is that large and
        // lives across the call.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
        if ret < 0 {
            let error = io::Error::last_os_error();
            let exists = Path::new("/sys/class/net").join(name).exists();
            return Err(match error.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) if exists => {
                    TapError::PermissionDenied(name.to_owned())
                }
                Some(libc::EPERM) | Some(libc::EACCES) => TapError::NoSuchDevice(name.to_owned()),
                Some(libc::EINVAL) if exists => TapError::NotATap(name.to_owned()),
                Some(libc::EBUSY) => TapError::Busy(name.to_owned()),
                _ => TapError::Ioctl {
                    op: "TUNSETIFF",
                    name: name.to_owned(),
                    source: error,
                },
            });
        }
        let tap = Self {
            file,
            name: name.to_owned(),
        };
        let hdr_len = super::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` from the pointer, which lives across the call.
        let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        tap.offload(0)
            .map_err(|_| tap.ioctl_error("TUNSETOFFLOAD"))?;
        Ok(tap)
    }

    fn ioctl_error(&self, op: &'static str) -> TapError {
        TapError::Ioctl {
            op,
            name: self.name.clone(),
            source: io::Error::last_os_error(),
        }
    }

    fn offload(&self, flags: u32) -> io::Result<()> {
        // TUNSETOFFLOAD takes its argument by value.
        // SAFETY: plain ioctl on an fd this struct owns; no memory is passed.
        let ret = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the call.
            let ret =
                unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            match usize::try_from(ret) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
    }

    fn write_frame(&mut self, parts: &[&[u8]]) -> io::Result<usize> {
        let iovecs: Vec<libc::iovec> = parts
            .iter()
            .map(|part| libc::iovec {
                iov_base: part.as_ptr().cast_mut().cast(),
                iov_len: part.len(),
            })
            .collect();
        let count = libc::c_int::try_from(iovecs.len()).map_err(io::Error::other)?;
        loop {
            // SAFETY: each iovec points to a slice in `parts`, alive for the call; the
            // kernel only reads them.
            let ret = unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
            match usize::try_from(ret) {
                Ok(n) => return Ok(n),
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.offload(flags)
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn unique_name() -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        format!(
            "ptl{}t{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        )
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "a/b", "sixteen-chars-xx", "a b", "x:1", ".."] {
            assert!(
                matches!(Tap::open(name), Err(TapError::InvalidName(_))),
                "{name:?}"
            );
        }
    }

    /// Whether an interface `name` exists in this thread's network namespace.
    fn interface_exists(name: &str) -> bool {
        let name = CString::new(name).unwrap();
        // SAFETY: the name is a NUL-terminated string.
        unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
    }

    /// Creates a real TAP inside a network namespace of its own (the test thread unshares
    /// one, which disappears with the thread), so the host's interfaces are never touched.
    /// It needs /dev/net/tun and CAP_NET_ADMIN, which petrel's test machines have; it fails
    /// loudly rather than skipping if they are missing.
    #[test]
    fn a_tap_is_created_configured_and_removed() {
        assert!(
            Path::new("/dev/net/tun").exists(),
            "/dev/net/tun is missing: load the tun module"
        );
        std::thread::spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread to a new namespace.
            let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                ret,
                0,
                "unshare(CLONE_NEWNET) needs CAP_SYS_ADMIN: {}",
                io::Error::last_os_error()
            );
            let name = unique_name();
            assert!(!interface_exists(&name));
            let mut tap = Tap::open(&name).unwrap();
            assert!(interface_exists(&name), "the TAP was created");
            assert_eq!(tap.name(), name);
            let mut ifreq = [0u8; IFREQ_SIZE];
            // SAFETY: TUNGETIFF fills one `struct ifreq`; `ifreq` is that large and lives
            // across the call.
            let ret = unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNGETIFF, ifreq.as_mut_ptr()) };
            assert_eq!(ret, 0, "TUNGETIFF: {}", io::Error::last_os_error());
            let flags = libc::c_short::from_ne_bytes([ifreq[IFNAMSIZ], ifreq[IFNAMSIZ + 1]]);
            let want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            assert_eq!(flags & want, want, "tun flags {flags:#x}");
            // The interface is down and nobody sends: reading does not block.
            let mut buf = [0u8; 2048];
            assert_eq!(
                tap.read_frame(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO)
                .unwrap();
            tap.set_offload(0).unwrap();
            assert!(tap.set_offload(0x8000_0000).is_err(), "unknown offload bit");
            // A second open of the same single-queue TAP is refused, with a clear error.
            assert!(matches!(Tap::open(&name), Err(TapError::Busy(_))));
            drop(tap);
            assert!(
                !interface_exists(&name),
                "a TAP petrel created goes away with it"
            );
        })
        .join()
        .unwrap();
    }
}
