//! Why a VM stopped, how that maps to petrel's exit status, and the one-shot stop latch the
//! vCPU threads, devices and signal handlers report into.

use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use petrel_vcpu::exit::{VcpuFailure, VcpuStopReason};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Exit status: the guest stopped the VM itself (reset, power-off, triple fault).
pub const EXIT_GUEST_STOPPED: i32 = 0;
/// Exit status: petrel failed while setting up or running the VM.
pub const EXIT_VMM_ERROR: i32 = 1;
/// Exit status: the command line or configuration is invalid.
pub const EXIT_BAD_CONFIG: i32 = 2;
/// Exit status: a vCPU stopped on an error it cannot continue from, or the guest reported a crash.
pub const EXIT_GUEST_FAILED: i32 = 3;
/// Exit status offset for a stop asked for by a signal (128 + the signal number).
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// Errors from the stop latch.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The eventfd that wakes the event loop could not be created.
    #[error("cannot create the stop eventfd")]
    EventFd(#[source] std::io::Error),
}

/// How the guest asked for a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetSource {
    /// The i8042 controller's pulse-reset command.
    I8042,
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM reported a system reset event.
    SystemEvent,
    /// The ACPI reset register described in the FADT.
    AcpiResetRegister,
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// The guest reset the machine.
    GuestReset(ResetSource),
    /// The guest powered the machine off.
    GuestPowerOff,
    /// A vCPU halted with nothing to wake it (only without an in-kernel irqchip).
    GuestHalted,
    /// The guest reported a crash.
    GuestCrash,
    /// A vCPU stopped on an error.
    VcpuFailed {
        /// Which vCPU.
        vcpu: u32,
        /// What KVM reported.
        failure: VcpuFailure,
    },
    /// The host asked petrel to stop with this signal.
    Signal(i32),
    /// petrel itself failed while the VM ran.
    VmmError(String),
}

impl StopReason {
    /// Maps what a vCPU thread reported to a VM stop reason. `Requested` means the VMM itself
    /// stopped the vCPU, which is not a reason of its own.
    pub fn from_vcpu(vcpu: u32, reason: VcpuStopReason) -> Option<StopReason> {
        Some(match reason {
            VcpuStopReason::Halted => StopReason::GuestHalted,
            VcpuStopReason::TripleFault => StopReason::GuestReset(ResetSource::TripleFault),
            VcpuStopReason::SystemReset => StopReason::GuestReset(ResetSource::SystemEvent),
            VcpuStopReason::SystemShutdown => StopReason::GuestPowerOff,
            VcpuStopReason::SystemCrash => StopReason::GuestCrash,
            VcpuStopReason::Requested => return None,
            VcpuStopReason::Failed(failure) => StopReason::VcpuFailed { vcpu, failure },
        })
    }

    /// The process exit status for this stop.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::GuestReset(_) | StopReason::GuestPowerOff | StopReason::GuestHalted => {
                EXIT_GUEST_STOPPED
            }
            StopReason::GuestCrash | StopReason::VcpuFailed { .. } => EXIT_GUEST_FAILED,
            StopReason::Signal(signal) => EXIT_SIGNAL_BASE + signal,
            StopReason::VmmError(_) => EXIT_VMM_ERROR,
        }
    }

    /// Whether this stop is an error worth reporting at error level.
    pub fn is_failure(&self) -> bool {
        self.exit_code() != EXIT_GUEST_STOPPED && !matches!(self, StopReason::Signal(_))
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::GuestReset(ResetSource::I8042) => {
                f.write_str("guest reset the machine (i8042 reset)")
            }
            StopReason::GuestReset(ResetSource::TripleFault) => {
                f.write_str("guest triple fault (KVM_EXIT_SHUTDOWN), treated as a reset")
            }
            StopReason::GuestReset(ResetSource::SystemEvent) => {
                f.write_str("guest reset the machine (system event)")
            }
            StopReason::GuestReset(ResetSource::AcpiResetRegister) => {
                f.write_str("guest reset the machine (ACPI reset register)")
            }
            StopReason::GuestPowerOff => f.write_str("guest powered off"),
            StopReason::GuestHalted => f.write_str("guest halted"),
            StopReason::GuestCrash => f.write_str("guest reported a crash"),
            StopReason::VcpuFailed { vcpu, failure } => write!(f, "vCPU {vcpu} failed: {failure}"),
            StopReason::Signal(signal) => write!(f, "stopped by signal {signal}"),
            StopReason::VmmError(message) => write!(f, "{message}"),
        }
    }
}

/// A one-shot latch: the first reported reason wins, and reporting wakes the event loop
/// through an eventfd.
#[derive(Debug)]
pub struct StopLatch {
    reason: Mutex<Option<StopReason>>,
    wake: EventFd,
}

impl StopLatch {
    /// A latch with no reason yet.
    pub fn new() -> Result<Self, LifecycleError> {
        Ok(Self {
            reason: Mutex::new(None),
            wake: EventFd::new(EFD_NONBLOCK).map_err(LifecycleError::EventFd)?,
        })
    }

    /// Records `reason` unless one was recorded already, and wakes the event loop.
    pub fn report(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            log::debug!("stop requested: {reason}");
            *slot = Some(reason);
        }
        drop(slot);
        if let Err(e) = self.wake.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The eventfd that becomes readable once a reason is reported.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// Clears the eventfd after the event loop saw it.
    pub fn acknowledge(&self) {
        // EAGAIN just means another wake-up already consumed it.
        let _ = self.wake.read();
    }
}

impl AsRawFd for StopLatch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.wake.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_the_documented_ones() {
        assert_eq!(StopReason::GuestReset(ResetSource::I8042).exit_code(), 0);
        assert_eq!(
            StopReason::GuestReset(ResetSource::TripleFault).exit_code(),
            0
        );
        assert_eq!(StopReason::GuestPowerOff.exit_code(), 0);
        assert_eq!(StopReason::VmmError("x".into()).exit_code(), 1);
        assert_eq!(StopReason::GuestCrash.exit_code(), 3);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(StopReason::Signal(libc::SIGINT).exit_code(), 130);
    }

    #[test]
    fn vcpu_reasons_map_to_vm_reasons() {
        assert_eq!(
            StopReason::from_vcpu(0, VcpuStopReason::TripleFault),
            Some(StopReason::GuestReset(ResetSource::TripleFault))
        );
        assert_eq!(
            StopReason::from_vcpu(1, VcpuStopReason::SystemShutdown),
            Some(StopReason::GuestPowerOff)
        );
        assert_eq!(StopReason::from_vcpu(2, VcpuStopReason::Requested), None);
    }

    #[test]
    fn the_first_reason_wins_and_wakes_the_loop() {
        let latch = StopLatch::new().unwrap();
        assert_eq!(latch.reason(), None);
        latch.report(StopReason::GuestReset(ResetSource::I8042));
        latch.report(StopReason::Signal(libc::SIGTERM));
        assert_eq!(
            latch.reason(),
            Some(StopReason::GuestReset(ResetSource::I8042))
        );
        assert_eq!(latch.wake_fd().read().unwrap(), 2);
    }

    #[test]
    fn triple_fault_and_i8042_reset_read_differently() {
        let fault = StopReason::GuestReset(ResetSource::TripleFault).to_string();
        let reset = StopReason::GuestReset(ResetSource::I8042).to_string();
        assert!(fault.contains("triple fault"));
        assert!(reset.contains("i8042"));
    }
}
