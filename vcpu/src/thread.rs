//! One thread per vCPU, driven through a [`VcpuHandle`].
//!
//! The thread is a small state machine:
//!
//! ```text
//!            pause()              request_stop() / guest stop / failure
//!   Running ─────────► Paused ─────────────────────────────────────────► Exited
//!      ▲    ◄─────────    │                                                ▲
//!      │     resume()     └────────────── request_stop() ──────────────────┘
//!      └─────────────────────────── (guest stop or failure) ───────────────┘
//! ```
//!
//! Requests are written into a mutex-protected control block and the thread is kicked
//! (see [`crate::kick`]) so a vCPU blocked in `KVM_RUN` notices at once. The thread looks at
//! the control block before every guest entry. It reports its stop reason exactly once, to
//! the `on_exit` callback, and returns it from [`VcpuHandle::join`].

use std::any::Any;
use std::os::unix::thread::JoinHandleExt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use kvm_bindings::{KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_UNKNOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::exit::{
    describe_internal_error, handle_exit_with_pio_size, ExitAction, VcpuExitHandler, VcpuFailure,
    VcpuStopReason, HANDLER_PANICKED, KVM_RUN_FAILED,
};
use crate::exit_stats::{duration_ns, ExitKind, ExitStats};
use crate::kick::{install_kick_handler, kick_thread, ArmedVcpu};
use crate::registers::RegisterDump;
use crate::vcpu::{Vcpu, VcpuError};

/// Called once when a vCPU thread stops, with the vCPU index and the reason.
pub type OnVcpuExit = Box<dyn FnOnce(u32, VcpuStopReason) + Send>;

/// Where a vCPU thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuState {
    /// Running the guest (or about to).
    Running,
    /// Parked between exits, waiting for `resume` or `request_stop`.
    Paused,
    /// The thread left its run loop and will not run the guest again.
    Exited,
}

/// What the VMM asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Run,
    Pause,
    Stop,
}

/// The state shared by a handle and its thread.
#[derive(Debug)]
struct Control {
    requested: Request,
    state: VcpuState,
}

impl Control {
    /// Asks for a pause unless a stop is already asked for. Returns whether anything changed.
    fn request_pause(&mut self) -> bool {
        if self.requested == Request::Run {
            self.requested = Request::Pause;
            return true;
        }
        false
    }

    /// Cancels a pause request; a stop request stays.
    fn request_resume(&mut self) -> bool {
        if self.requested == Request::Pause {
            self.requested = Request::Run;
            return true;
        }
        false
    }

    /// Stop wins over everything and cannot be undone.
    fn request_stop(&mut self) {
        self.requested = Request::Stop;
    }
}

#[derive(Debug)]
struct Shared {
    control: Mutex<Control>,
    changed: Condvar,
}

impl Shared {
    fn new() -> Self {
        Shared {
            control: Mutex::new(Control {
                requested: Request::Run,
                state: VcpuState::Running,
            }),
            changed: Condvar::new(),
        }
    }

    /// Locks the control block. No code panics while holding it, but a poisoned lock is
    /// recovered rather than propagated: the data is two enums and always consistent.
    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, Control>) -> MutexGuard<'a, Control> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the vCPU thread before each guest entry: parks while a pause is requested,
    /// and returns `Some` when the thread must stop.
    fn before_entry(&self, index: u32) -> Option<VcpuStopReason> {
        let mut control = self.lock();
        loop {
            match control.requested {
                Request::Run => {
                    if control.state != VcpuState::Running {
                        control.state = VcpuState::Running;
                        log::debug!("vcpu {index} resumed");
                        self.changed.notify_all();
                    }
                    return None;
                }
                Request::Pause => {
                    if control.state != VcpuState::Paused {
                        control.state = VcpuState::Paused;
                        log::debug!("vcpu {index} paused");
                        self.changed.notify_all();
                    }
                    control = self.wait(control);
                }
                Request::Stop => return Some(VcpuStopReason::Requested),
            }
        }
    }

    fn set_exited(&self) {
        self.lock().state = VcpuState::Exited;
        self.changed.notify_all();
    }
}

/// Controls one running vCPU thread. Dropping the handle detaches the thread (it keeps
/// running); call [`request_stop`](Self::request_stop) and [`join`](Self::join) to end it.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u32,
    shared: Arc<Shared>,
    thread: JoinHandle<VcpuStopReason>,
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Where the thread is now.
    pub fn state(&self) -> VcpuState {
        self.shared.lock().state
    }

    /// Asks the vCPU to stop and kicks it out of `KVM_RUN`. Returns at once; the thread
    /// reports [`VcpuStopReason::Requested`] (unless it already stopped for another reason).
    pub fn request_stop(&self) {
        self.shared.lock().request_stop();
        self.shared.changed.notify_all();
        self.kick();
    }

    /// Asks the vCPU to pause and waits until it is parked between exits (or has exited).
    /// Returns the state it reached: `Paused`, `Exited`, or `Running` if another caller
    /// resumed it meanwhile. A vCPU busy in its exit handler is waited for, so this must not
    /// be called from the vCPU's own exit handler.
    pub fn pause(&self) -> VcpuState {
        if self.shared.lock().request_pause() {
            self.kick();
        }
        let mut control = self.shared.lock();
        while control.state == VcpuState::Running && control.requested != Request::Run {
            control = self.shared.wait(control);
        }
        control.state
    }

    /// Lets a paused vCPU run again. Does nothing if it is not paused or is stopping.
    pub fn resume(&self) {
        if self.shared.lock().request_resume() {
            self.shared.changed.notify_all();
        }
    }

    /// Waits for the thread to end and returns why it stopped.
    pub fn join(self) -> Result<VcpuStopReason, VcpuError> {
        let index = self.index;
        self.thread
            .join()
            .map_err(|_| VcpuError::ThreadPanicked { index })
    }

    fn kick(&self) {
        // Fails only if the thread already ended, which is fine.
        if let Err(e) = kick_thread(self.thread.as_pthread_t()) {
            log::debug!("vcpu {} kick: {e}", self.index);
        }
    }
}

/// Starts a thread named `vcpu<index>` that runs `vcpu` until the guest stops it, it fails,
/// or the handle asks it to stop. Port and MMIO exits go to `handler`; `on_exit` is called
/// once, on the vCPU thread, with the stop reason.
///
/// Every exit is counted in `stats`, with the time spent handling it (from `KVM_RUN`
/// returning until the exit was dealt with, including the `handler` call); the thread also
/// marks the first `KVM_RUN` there ([`ExitStats::mark_first_run`]). Pass one `ExitStats` to
/// all vCPUs of a VM.
pub fn spawn_vcpu(
    vcpu: Vcpu,
    handler: Arc<dyn VcpuExitHandler>,
    stats: Arc<ExitStats>,
    on_exit: OnVcpuExit,
) -> Result<VcpuHandle, VcpuError> {
    install_kick_handler()?;
    let index = vcpu.index();
    let shared = Arc::new(Shared::new());
    let thread_shared = shared.clone();
    let thread = thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || vcpu_thread(vcpu, handler, &stats, on_exit, &thread_shared))
        .map_err(VcpuError::Spawn)?;
    Ok(VcpuHandle {
        index,
        shared,
        thread,
    })
}

fn vcpu_thread(
    vcpu: Vcpu,
    handler: Arc<dyn VcpuExitHandler>,
    stats: &ExitStats,
    on_exit: OnVcpuExit,
    shared: &Shared,
) -> VcpuStopReason {
    let index = vcpu.index();
    let run = panic::catch_unwind(AssertUnwindSafe(|| {
        run_loop(vcpu, &*handler, stats, shared, index)
    }));
    let reason = run.unwrap_or_else(|payload| {
        VcpuStopReason::Failed(VcpuFailure::new(HANDLER_PANICKED, panic_message(&*payload)))
    });
    shared.set_exited();
    // The VMM reports failures to the user; this is the vCPU's own trace.
    log::info!("vcpu {index} stopped: {reason}");
    on_exit(index, reason.clone());
    reason
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

fn run_loop(
    vcpu: Vcpu,
    handler: &dyn VcpuExitHandler,
    stats: &ExitStats,
    shared: &Shared,
    index: u32,
) -> VcpuStopReason {
    let mut vcpu = match ArmedVcpu::new(vcpu) {
        Ok(vcpu) => vcpu,
        Err(e) => return VcpuStopReason::Failed(VcpuFailure::new("vcpu kick", e.to_string())),
    };
    let mut entered = false;
    loop {
        if let Some(reason) = shared.before_entry(index) {
            if log::log_enabled!(log::Level::Debug) {
                if let Some(registers) = RegisterDump::capture(vcpu.fd_mut()) {
                    log::debug!("vcpu {index} leaves the guest at [{registers}]");
                }
            }
            return reason;
        }
        if !entered {
            stats.mark_first_run();
            entered = true;
        }
        if let Some(reason) = run_once(vcpu.fd_mut(), handler, stats) {
            return reason;
        }
    }
}

/// Enters the guest once, handles the exit and counts it in `stats`. `None` means "go round
/// again".
fn run_once(
    fd: &mut VcpuFd,
    handler: &dyn VcpuExitHandler,
    stats: &ExitStats,
) -> Option<VcpuStopReason> {
    let run: *const kvm_bindings::kvm_run = fd.get_kvm_run();
    let result = fd.run();
    // Handling time starts when KVM_RUN returns; the guest's own time is not counted.
    let start = Instant::now();
    let (kind, action) = match result {
        Ok(exit) => {
            let kind = ExitKind::of(&exit);
            let pio_size = match exit {
                VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {
                    // SAFETY: `run` points at this vCPU's kvm_run mapping, which lives as long
                    // as `fd`; for an I/O exit KVM filled in the `io` member of the union, and
                    // `size` is a plain byte read without creating a reference, apart from the
                    // data bytes `exit` borrows.
                    usize::from(unsafe {
                        std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read_volatile()
                    })
                }
                _ => 0,
            };
            (kind, handle_exit_with_pio_size(exit, handler, pio_size))
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            // Kicked (or interrupted by another signal): clear the kick and let the caller
            // look at its requests.
            fd.set_kvm_immediate_exit(0);
            stats.record(ExitKind::Intr, duration_ns(start.elapsed()));
            return None;
        }
        Err(e) => {
            let mut failure = VcpuFailure::new(KVM_RUN_FAILED, e.to_string());
            failure.registers = RegisterDump::capture(fd);
            return Some(VcpuStopReason::Failed(failure));
        }
    };
    // Failures are counted before the register capture below, which is not exit handling.
    stats.record(kind, duration_ns(start.elapsed()));
    match action {
        ExitAction::Continue => None,
        ExitAction::Stop(VcpuStopReason::Failed(mut failure)) => {
            describe_from_kvm_run(fd, &mut failure);
            failure.registers = RegisterDump::capture(fd);
            Some(VcpuStopReason::Failed(failure))
        }
        ExitAction::Stop(reason) => Some(reason),
    }
}

/// Fills in the details [`handle_exit`] cannot see because `VcpuExit` does not carry them.
fn describe_from_kvm_run(fd: &mut VcpuFd, failure: &mut VcpuFailure) {
    let run = fd.get_kvm_run();
    match run.exit_reason {
        KVM_EXIT_INTERNAL_ERROR => {
            // SAFETY: the exit reason says `internal` is the union member KVM filled in; it is
            // plain integers, so any bit pattern is a valid value.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            let ndata = (internal.ndata as usize).min(internal.data.len());
            failure.detail = describe_internal_error(internal.suberror, &internal.data[..ndata]);
        }
        KVM_EXIT_UNKNOWN => {
            // SAFETY: for KVM_EXIT_UNKNOWN KVM fills in `hw`, a single integer.
            let hw = unsafe { run.__bindgen_anon_1.hw };
            failure.detail = format!("hardware_exit_reason {:#x}", hw.hardware_exit_reason);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_wins_over_pause_and_resume() {
        let mut control = Control {
            requested: Request::Run,
            state: VcpuState::Running,
        };
        assert!(control.request_pause());
        assert!(!control.request_pause(), "already pausing");
        control.request_stop();
        assert!(!control.request_resume(), "resume cannot undo a stop");
        assert!(!control.request_pause(), "pause cannot undo a stop");
        assert_eq!(control.requested, Request::Stop);
    }

    #[test]
    fn resume_only_undoes_a_pause() {
        let mut control = Control {
            requested: Request::Run,
            state: VcpuState::Running,
        };
        assert!(!control.request_resume());
        assert!(control.request_pause());
        assert!(control.request_resume());
        assert_eq!(control.requested, Request::Run);
    }

    #[test]
    fn before_entry_parks_until_resumed_and_reports_states() {
        let shared = Arc::new(Shared::new());
        assert_eq!(shared.before_entry(0), None);
        shared.lock().request_pause();
        let thread_shared = shared.clone();
        let parked = thread::spawn(move || thread_shared.before_entry(0));
        // Wait (without a deadline: the test harness has one) until the thread parks.
        let mut control = shared.lock();
        while control.state != VcpuState::Paused {
            control = shared.wait(control);
        }
        control.request_resume();
        drop(control);
        shared.changed.notify_all();
        assert_eq!(parked.join().expect("thread"), None);
        assert_eq!(shared.lock().state, VcpuState::Running);
    }

    #[test]
    fn before_entry_stops_a_paused_thread() {
        let shared = Arc::new(Shared::new());
        shared.lock().request_pause();
        let thread_shared = shared.clone();
        let parked = thread::spawn(move || thread_shared.before_entry(3));
        let mut control = shared.lock();
        while control.state != VcpuState::Paused {
            control = shared.wait(control);
        }
        control.request_stop();
        drop(control);
        shared.changed.notify_all();
        assert_eq!(
            parked.join().expect("thread"),
            Some(VcpuStopReason::Requested)
        );
    }

    #[test]
    fn panic_messages_are_extracted() {
        let payload: Box<dyn Any + Send> = Box::new("boom");
        assert_eq!(panic_message(&*payload), "boom");
        let payload: Box<dyn Any + Send> = Box::new(String::from("bang"));
        assert_eq!(panic_message(&*payload), "bang");
        let payload: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(&*payload), "unknown panic payload");
    }
}
