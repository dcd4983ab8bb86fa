//! The host side of the hybrid model: the Unix sockets the device listens on and connects to,
//! and the `CONNECT <port>` line a host program sends first.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::VsockError;

/// The longest `CONNECT <port>\n` line accepted, newline included.
pub(super) const CONNECT_LINE_MAX: usize = 32;

/// A `sockaddr_un` for `path`, and its length; `None` if the path does not fit (107 bytes and
/// a NUL) or contains a NUL.
fn sockaddr(path: &Path) -> Option<(libc::sockaddr_un, libc::socklen_t)> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Some((addr, libc::socklen_t::try_from(len).ok()?))
}

/// Connects to the Unix stream socket at `path` without blocking: the connection is made at
/// once or refused (`ECONNREFUSED`, `ENOENT`, or `EAGAIN` when the listener's backlog is
/// full). The stream returned is non-blocking.
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let (addr, len) = sockaddr(path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a Unix socket",
        )
    })?;
    // SAFETY: plain socket(2) call; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own; nothing else refers to it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers the family and the NUL-terminated
    // path inside it; the kernel only reads it.
    let done = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Writes `buf` to `stream` without raising `SIGPIPE` if the peer has gone (the error is
/// `EPIPE` instead).
pub(super) fn send(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid slice of `buf.len()` bytes the kernel only reads; the fd is
    // open for as long as `stream` is borrowed.
    let done = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(done).map_err(|_| io::Error::last_os_error())
}

/// Whether the peer of `stream` has closed both directions (`POLLHUP`), asked without
/// waiting. A peer that only shut down its write side is still there.
pub(super) fn peer_closed(stream: &UnixStream) -> bool {
    let mut fds = [libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call; the fd is
    // open while `stream` is borrowed; timeout 0 means poll(2) does not block.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    ready > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// The socket file the device bound, to recognise it when removing it.
#[derive(Debug)]
pub(super) struct BoundSocket {
    pub(super) path: PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundSocket {
    /// Removes the socket file if it is still the one the device bound.
    pub(super) fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("virtio-vsock: cannot remove {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

/// Binds a non-blocking listening socket at `path`. A socket file nobody listens on (left
/// over from an earlier run) is replaced; a live socket or any other file is an error.
pub(super) fn bind_listener(path: &Path) -> Result<(UnixListener, BoundSocket), VsockError> {
    if sockaddr(path).is_none() {
        return Err(VsockError::PathTooLong(path.to_path_buf()));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(VsockError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => match connect_nonblocking(path) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                log::info!(
                    "virtio-vsock: replacing the stale socket {}",
                    path.display()
                );
                std::fs::remove_file(path).map_err(|e| VsockError::Bind(path.to_path_buf(), e))?;
            }
            Ok(_) => return Err(VsockError::InUse(path.to_path_buf())),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                return Err(VsockError::InUse(path.to_path_buf()));
            }
            Err(e) => return Err(VsockError::Bind(path.to_path_buf(), e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(VsockError::Bind(path.to_path_buf(), e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| VsockError::Bind(path.to_path_buf(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| VsockError::Bind(path.to_path_buf(), e))?;
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| VsockError::Bind(path.to_path_buf(), e))?;
    let bound = BoundSocket {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, bound))
}

/// The path a guest connection to host port `port` goes to: `<uds_path>_<port>`.
pub(super) fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut name = uds_path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// What a host program has sent of its `CONNECT <port>\n` line so far.
#[derive(Debug, Default)]
pub(super) struct ConnectLine {
    bytes: Vec<u8>,
}

/// The outcome of one more byte of a `CONNECT` line.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LineState {
    /// The line goes on.
    Incomplete,
    /// A complete, valid line naming this guest port.
    Port(u32),
    /// Junk, too long, or a port out of range: the host connection is closed.
    Bad,
}

impl ConnectLine {
    /// Adds one byte the host sent.
    pub(super) fn push(&mut self, byte: u8) -> LineState {
        self.bytes.push(byte);
        if byte == b'\n' {
            return parse_connect(&self.bytes).map_or(LineState::Bad, LineState::Port);
        }
        if self.bytes.len() >= CONNECT_LINE_MAX {
            LineState::Bad
        } else {
            LineState::Incomplete
        }
    }
}

/// Parses `CONNECT <port>\n`: the word, one space, 1 to 10 decimal digits (a `u32`), newline.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?.strip_suffix(b"\n")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(line: &[u8]) -> Vec<LineState> {
        let mut state = ConnectLine::default();
        line.iter().map(|&b| state.push(b)).collect()
    }

    fn last(line: &[u8]) -> LineState {
        feed(line).pop().unwrap()
    }

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(last(b"CONNECT 52\n"), LineState::Port(52));
        assert_eq!(last(b"CONNECT 0\n"), LineState::Port(0));
        assert_eq!(last(b"CONNECT 4294967295\n"), LineState::Port(u32::MAX));
        let states = feed(b"CONNECT 7\n");
        assert!(states[..states.len() - 1]
            .iter()
            .all(|s| *s == LineState::Incomplete));
        for bad in [
            &b"CONNECT 4294967296\n"[..],
            b"CONNECT 99999999999\n",
            b"CONNECT \n",
            b"CONNECT -1\n",
            b"CONNECT 1 2\n",
            b"connect 5\n",
            b"CONNECT  5\n",
            b"CONNECT 5 \n",
            b"CONNECT 0x10\n",
            b"HELLO\n",
            b"\n",
        ] {
            assert_eq!(
                last(bad),
                LineState::Bad,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Too long without a newline: refused at the limit, not later.
        let long = [b'C'; CONNECT_LINE_MAX];
        let states = feed(&long);
        assert_eq!(states[CONNECT_LINE_MAX - 2], LineState::Incomplete);
        assert_eq!(states[CONNECT_LINE_MAX - 1], LineState::Bad);
    }

    #[test]
    fn a_full_close_is_told_from_a_half_close() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        assert!(!peer_closed(&ours));
        theirs.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(!peer_closed(&ours), "half closed");
        drop(theirs);
        assert!(peer_closed(&ours));
    }

    #[test]
    fn port_paths_append_the_port() {
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 5000),
            PathBuf::from("/run/v.sock_5000")
        );
    }

    #[test]
    fn paths_too_long_for_a_socket_are_refused() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        assert!(matches!(
            bind_listener(&long),
            Err(VsockError::PathTooLong(_))
        ));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
