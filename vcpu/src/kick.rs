//! Kicking a vCPU thread out of `KVM_RUN`.
//!
//! A vCPU blocked in `KVM_RUN` (an AP waiting for SIPI, a guest idling in `hlt` with the
//! in-kernel irqchip) only returns when a signal is pending for its thread. So the kick is a
//! real-time signal sent to that thread with `pthread_kill`. Its handler does one thing: it
//! sets `kvm_run.immediate_exit` of the vCPU running on that thread, found through a
//! thread-local pointer. That closes the race where the signal lands just *before* the thread
//! enters `KVM_RUN`: the handler has already run, nothing is pending any more, but
//! `immediate_exit` makes the next `KVM_RUN` return `EINTR` at once.
//!
//! The handler is installed once per process, with `SA_RESTART` so that ordinary system calls
//! made on the vCPU thread (e.g. by device code writing to a console) are restarted instead of
//! failing with `EINTR`; `KVM_RUN` itself is never restarted (it returns `EINTR` directly).

use std::cell::Cell;
use std::io;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::OnceLock;

use kvm_ioctls::VcpuFd;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::SIGRTMIN;

use crate::vcpu::Vcpu;

/// The kick signal is `SIGRTMIN() + KICK_SIGNAL_OFFSET`. A process embedding petrel-vcpu must
/// not use that signal for anything else.
pub const KICK_SIGNAL_OFFSET: c_int = 0;

/// The signal number used to kick vCPU threads.
pub fn kick_signal() -> c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

/// Errors from the kick machinery.
#[derive(Debug, thiserror::Error)]
pub enum KickError {
    /// `sigaction` failed.
    #[error("cannot install the vcpu kick signal handler")]
    Install(#[source] io::Error),
    /// `pthread_sigmask` failed on the vCPU thread.
    #[error("cannot unblock the vcpu kick signal")]
    Unblock(#[source] io::Error),
    /// `pthread_kill` failed.
    #[error("cannot signal the vcpu thread")]
    Send(#[source] io::Error),
}

thread_local! {
    /// Points at `kvm_run.immediate_exit` of the vCPU this thread runs, or is null.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn handle_kick(_signal: c_int, _info: *mut siginfo_t, _context: *mut c_void) {
    // `try_with` on a const-initialised, destructor-free thread local is a plain TLS read:
    // async-signal-safe, and it cannot panic even while the thread is being torn down.
    let _ = IMMEDIATE_EXIT.try_with(|target| {
        let immediate_exit = target.get();
        if !immediate_exit.is_null() {
            // SAFETY: a non-null pointer is only stored by `ArmedVcpu`, which points it at the
            // `immediate_exit` byte of the kvm_run mapping of the vCPU it owns, and nulls it
            // before that vCPU (and its mapping) is dropped. The handler runs on the same
            // thread, so the mapping is alive here. A volatile byte store cannot tear.
            unsafe { ptr::write_volatile(immediate_exit, 1) };
        }
    });
    compiler_fence(Ordering::SeqCst);
}

/// Installs the kick handler for the process; later calls return the first call's result.
pub(crate) fn install_kick_handler() -> Result<(), KickError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    (*INSTALLED.get_or_init(install))
        .map_err(|errno| KickError::Install(io::Error::from_raw_os_error(errno)))
}

/// Installs the handler; the error is the errno.
fn install() -> Result<(), i32> {
    let signal = kick_signal();
    // SAFETY: `sigaction` is plain data; all-zero is a valid starting value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handle_kick as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `sa_mask` is a valid sigset_t owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: zeroed `sigaction` is valid plain data for the kernel to fill.
    let mut previous: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to valid `sigaction` values, and the handler only does
    // async-signal-safe work (a thread-local read and a byte store).
    if unsafe { libc::sigaction(signal, &action, &mut previous) } != 0 {
        return Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    if previous.sa_sigaction != libc::SIG_DFL && previous.sa_sigaction != libc::SIG_IGN {
        log::warn!("vcpu kick signal {signal} had another handler; petrel replaced it");
    }
    Ok(())
}

/// Sends the kick signal to a thread.
pub(crate) fn kick_thread(thread: libc::pthread_t) -> Result<(), KickError> {
    // SAFETY: the caller passes the pthread_t of a thread it has not joined yet (the handle
    // still owns its JoinHandle), so the id is valid; the signal has a handler installed.
    let ret = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if ret != 0 {
        return Err(KickError::Send(io::Error::from_raw_os_error(ret)));
    }
    Ok(())
}

fn unblock_kick_signal() -> Result<(), KickError> {
    // SAFETY: zeroed sigset_t is valid storage for sigemptyset to initialise.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal number is a valid real-time signal.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, ptr::null_mut()) };
    if ret != 0 {
        return Err(KickError::Unblock(io::Error::from_raw_os_error(ret)));
    }
    Ok(())
}

/// A vCPU that the kick signal can reach on the current thread. Owns the vCPU so the
/// thread-local pointer is cleared before the kvm_run mapping goes away; not `Send`, because
/// the pointer lives in this thread's TLS.
pub(crate) struct ArmedVcpu {
    vcpu: Vcpu,
    _not_send: PhantomData<*const ()>,
}

impl ArmedVcpu {
    /// Unblocks the kick signal on this thread and points the handler at `vcpu`.
    pub(crate) fn new(mut vcpu: Vcpu) -> Result<Self, KickError> {
        unblock_kick_signal()?;
        let run = vcpu.fd_mut().get_kvm_run();
        let immediate_exit: *mut u8 = ptr::addr_of_mut!(run.immediate_exit);
        IMMEDIATE_EXIT.with(|target| target.set(immediate_exit));
        Ok(ArmedVcpu {
            vcpu,
            _not_send: PhantomData,
        })
    }

    pub(crate) fn fd_mut(&mut self) -> &mut VcpuFd {
        self.vcpu.fd_mut()
    }
}

impl Drop for ArmedVcpu {
    fn drop(&mut self) {
        // Runs before `self.vcpu` is dropped, so the handler never sees a dangling pointer.
        let _ = IMMEDIATE_EXIT.try_with(|target| target.set(ptr::null_mut()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_signal_is_a_real_time_signal() {
        let signal = kick_signal();
        assert!(signal >= SIGRTMIN() && signal <= vmm_sys_util::signal::SIGRTMAX());
    }

    #[test]
    fn installing_twice_is_fine() {
        install_kick_handler().expect("first install");
        install_kick_handler().expect("second install");
    }

    #[test]
    fn handler_sets_the_armed_byte_and_ignores_unarmed_threads() {
        install_kick_handler().expect("install");
        let handle = std::thread::spawn(|| {
            unblock_kick_signal().expect("unblock");
            let mut byte = 0u8;
            IMMEDIATE_EXIT.with(|t| t.set(&mut byte));
            // SAFETY: the handler is installed and the signal is unblocked on this thread;
            // `raise` delivers it synchronously before returning.
            unsafe { libc::raise(kick_signal()) };
            IMMEDIATE_EXIT.with(|t| t.set(ptr::null_mut()));
            // SAFETY: as above; with a null pointer the handler does nothing.
            unsafe { libc::raise(kick_signal()) };
            // SAFETY: reading our own local after the handler (same thread) wrote it.
            unsafe { ptr::read_volatile(&byte) }
        });
        assert_eq!(handle.join().expect("thread"), 1);
    }
}
