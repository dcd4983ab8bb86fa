//! Raw mode for an interactive console: while the guest owns the terminal, keystrokes
//! (including Ctrl-C) go to the guest unprocessed. The saved settings are restored when the
//! guard drops, and by the panic hook, so every exit path gives the terminal back.

use std::io;
use std::sync::Mutex;

/// The terminal settings to restore, shared with the panic hook.
static SAVED: Mutex<Option<(i32, libc::termios)>> = Mutex::new(None);

/// Puts a terminal in raw mode until dropped.
pub struct RawTerminal {
    _private: (),
}

impl RawTerminal {
    /// Switches `fd` to raw mode if it is a terminal; returns `Ok(None)` if it is not.
    pub fn enable(fd: i32) -> io::Result<Option<RawTerminal>> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain old data; an all-zero value is valid and tcgetattr fills it.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `original` is a live termios for tcgetattr to write.
        if unsafe { libc::tcgetattr(fd, &mut original) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = original;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
        raw.c_iflag &= !(libc::IXON | libc::ICRNL);
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, original));
        // SAFETY: `raw` is a valid termios derived from the terminal's own settings.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawTerminal { _private: () }))
    }
}

/// Restores the saved terminal settings, if any. Safe to call more than once.
pub fn restore_terminal() {
    let saved = match SAVED.try_lock() {
        Ok(mut saved) => saved.take(),
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().take(),
        Err(std::sync::TryLockError::WouldBlock) => None,
    };
    if let Some((fd, original)) = saved {
        // SAFETY: `original` is the termios read from this fd by tcgetattr.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &original) };
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_terminal_is_left_alone() {
        let (read, write) = {
            let mut fds = [0i32; 2];
            // SAFETY: pipe writes two fds into the array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            (fds[0], fds[1])
        };
        assert!(RawTerminal::enable(read).unwrap().is_none());
        // SAFETY: closing the fds this test created.
        unsafe {
            libc::close(read);
            libc::close(write);
        }
    }
}
