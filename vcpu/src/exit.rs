//! What to do with each KVM exit: a plain function over [`VcpuExit`], tested with fake exits.
//!
//! Port and MMIO accesses go to a [`VcpuExitHandler`] the VMM supplies; the vCPU itself knows
//! no device. Everything else either continues or stops the vCPU with a [`VcpuStopReason`].

use std::fmt;

use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::VcpuExit;

use crate::registers::RegisterDump;

/// Exit name used in [`VcpuFailure::exit`] for `KVM_EXIT_INTERNAL_ERROR`.
pub const EXIT_INTERNAL_ERROR: &str = "KVM_EXIT_INTERNAL_ERROR";
/// Exit name used in [`VcpuFailure::exit`] for `KVM_EXIT_FAIL_ENTRY`.
pub const EXIT_FAIL_ENTRY: &str = "KVM_EXIT_FAIL_ENTRY";
/// Exit name used in [`VcpuFailure::exit`] for `KVM_EXIT_SYSTEM_EVENT` of an unexpected type.
pub const EXIT_SYSTEM_EVENT: &str = "KVM_EXIT_SYSTEM_EVENT";
/// Exit name used in [`VcpuFailure::exit`] for `KVM_EXIT_UNKNOWN`.
pub const EXIT_UNKNOWN: &str = "KVM_EXIT_UNKNOWN";
/// Name used in [`VcpuFailure::exit`] when the `KVM_RUN` ioctl itself fails.
pub const KVM_RUN_FAILED: &str = "KVM_RUN";
/// Name used in [`VcpuFailure::exit`] when the exit handler panicked.
pub const HANDLER_PANICKED: &str = "exit handler panic";

/// Receives the guest's port and MMIO accesses. Called on the vCPU's own thread, possibly by
/// several vCPUs at once, so implementations synchronise internally.
///
/// `data.len()` is the access size (1, 2 or 4 for ports; up to 8 for MMIO). For string port
/// instructions (`rep insb`/`outsb` …) KVM batches several elements into one exit and `data`
/// holds all of them, back to back.
pub trait VcpuExitHandler: Send + Sync {
    /// The guest read `data.len()` bytes from I/O port `port`; fill all of `data` (its
    /// previous content is unspecified).
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// The guest wrote `data` to I/O port `port`.
    fn pio_write(&self, port: u16, data: &[u8]);
    /// The guest read `data.len()` bytes at guest-physical `addr` outside RAM; fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// The guest wrote `data` at guest-physical `addr` outside RAM.
    fn mmio_write(&self, addr: u64, data: &[u8]);
}

/// Why a vCPU thread stopped running its guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStopReason {
    /// The guest executed `hlt` and KVM returned it to user space (only without the in-kernel
    /// irqchip; with it, KVM waits for an interrupt itself).
    Halted,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`); a PC resets here.
    TripleFault,
    /// The guest asked for a reset (`KVM_SYSTEM_EVENT_RESET`, e.g. PSCI or ACPI reset).
    SystemReset,
    /// The guest asked to power off (`KVM_SYSTEM_EVENT_SHUTDOWN`).
    SystemShutdown,
    /// The guest reported a crash (`KVM_SYSTEM_EVENT_CRASH`, e.g. pvpanic-style).
    SystemCrash,
    /// The VMM asked the vCPU to stop ([`crate::thread::VcpuHandle::request_stop`]).
    Requested,
    /// KVM could not go on, or the exit was one petrel does not expect.
    Failed(VcpuFailure),
}

impl fmt::Display for VcpuStopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VcpuStopReason::Halted => f.write_str("guest halted"),
            VcpuStopReason::TripleFault => f.write_str("guest triple fault"),
            VcpuStopReason::SystemReset => f.write_str("guest requested reset"),
            VcpuStopReason::SystemShutdown => f.write_str("guest requested power off"),
            VcpuStopReason::SystemCrash => f.write_str("guest reported a crash"),
            VcpuStopReason::Requested => f.write_str("stop requested"),
            VcpuStopReason::Failed(failure) => write!(f, "vcpu failed: {failure}"),
        }
    }
}

/// A vCPU stop that is an error: which exit, what KVM said, and where the guest was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuFailure {
    /// The exit (e.g. `KVM_EXIT_INTERNAL_ERROR`, `KVM_EXIT_FAIL_ENTRY`), or `KVM_RUN` if the
    /// ioctl itself failed.
    pub exit: String,
    /// Details: the suberror and data, the hardware failure reason, the errno…
    pub detail: String,
    /// The registers at the stop, captured by the run loop when KVM lets it read them.
    pub registers: Option<RegisterDump>,
}

impl VcpuFailure {
    /// A failure without registers (the run loop adds them).
    pub fn new(exit: impl Into<String>, detail: impl Into<String>) -> Self {
        VcpuFailure {
            exit: exit.into(),
            detail: detail.into(),
            registers: None,
        }
    }
}

impl fmt::Display for VcpuFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.exit)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        if let Some(regs) = &self.registers {
            write!(f, " [{regs}]")?;
        }
        Ok(())
    }
}

/// What the run loop does after an exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// Leave the run loop for this reason.
    Stop(VcpuStopReason),
}

fn fail(exit: &str, detail: impl Into<String>) -> ExitAction {
    ExitAction::Stop(VcpuStopReason::Failed(VcpuFailure::new(exit, detail)))
}

/// Decides what one exit means. Port and MMIO accesses are passed to `handler`; stops are
/// returned, never panicked on.
///
/// `KVM_EXIT_INTERNAL_ERROR` carries its details in `kvm_run`, which [`VcpuExit`] does not
/// expose, so this returns a failure with an empty detail that the run loop fills in
/// (see [`describe_internal_error`]).
pub fn handle_exit(exit: VcpuExit<'_>, handler: &dyn VcpuExitHandler) -> ExitAction {
    handle_exit_with_pio_size(exit, handler, 0)
}

/// Like [`handle_exit`], for a port-I/O exit whose element size (`kvm_run.io.size`) is known.
///
/// A string instruction (`rep insb`/`rep outsw` …) exits once with `count` elements in one
/// buffer; each element is a separate access to the same port, so the handler gets them one
/// at a time. A `pio_size` of 0 passes the buffer whole.
pub fn handle_exit_with_pio_size(
    exit: VcpuExit<'_>,
    handler: &dyn VcpuExitHandler,
    pio_size: usize,
) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if pio_size == 0 || data.len() <= pio_size {
                handler.pio_read(port, data);
            } else {
                for element in data.chunks_mut(pio_size) {
                    handler.pio_read(port, element);
                }
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if pio_size == 0 || data.len() <= pio_size {
                handler.pio_write(port, data);
            } else {
                for element in data.chunks(pio_size) {
                    handler.pio_write(port, element);
                }
            }
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            handler.mmio_read(addr, data);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            handler.mmio_write(addr, data);
            ExitAction::Continue
        }
        // A signal interrupted the guest; the run loop looks at its requests next.
        VcpuExit::Intr => ExitAction::Continue,
        VcpuExit::Hlt => ExitAction::Stop(VcpuStopReason::Halted),
        VcpuExit::Shutdown => ExitAction::Stop(VcpuStopReason::TripleFault),
        VcpuExit::SystemEvent(kind, data) => match kind {
            KVM_SYSTEM_EVENT_RESET => ExitAction::Stop(VcpuStopReason::SystemReset),
            KVM_SYSTEM_EVENT_SHUTDOWN => ExitAction::Stop(VcpuStopReason::SystemShutdown),
            KVM_SYSTEM_EVENT_CRASH => ExitAction::Stop(VcpuStopReason::SystemCrash),
            other => fail(
                EXIT_SYSTEM_EVENT,
                format!("unexpected event type {other} data {}", hex_list(data)),
            ),
        },
        VcpuExit::FailEntry(reason, cpu) => fail(
            EXIT_FAIL_ENTRY,
            format!("hardware_entry_failure_reason {reason:#x} on host cpu {cpu}"),
        ),
        VcpuExit::InternalError => fail(EXIT_INTERNAL_ERROR, ""),
        VcpuExit::Unknown => fail(EXIT_UNKNOWN, ""),
        VcpuExit::MemoryFault { flags, gpa, size } => fail(
            "KVM_EXIT_MEMORY_FAULT",
            format!("gpa {gpa:#x} size {size:#x} flags {flags:#x}"),
        ),
        VcpuExit::Unsupported(reason) => fail(
            "unsupported exit",
            format!("exit reason {reason} is unknown to kvm-ioctls"),
        ),
        other => fail(
            unexpected_exit_name(&other),
            "petrel does not expect this exit",
        ),
    }
}

/// Names the exits petrel never asks for (it enables no capability that produces them).
fn unexpected_exit_name(exit: &VcpuExit<'_>) -> &'static str {
    match exit {
        VcpuExit::Exception => "KVM_EXIT_EXCEPTION",
        VcpuExit::Hypercall(_) => "KVM_EXIT_HYPERCALL",
        VcpuExit::Debug(_) => "KVM_EXIT_DEBUG",
        VcpuExit::IrqWindowOpen => "KVM_EXIT_IRQ_WINDOW_OPEN",
        VcpuExit::SetTpr => "KVM_EXIT_SET_TPR",
        VcpuExit::TprAccess => "KVM_EXIT_TPR_ACCESS",
        VcpuExit::Nmi => "KVM_EXIT_NMI",
        VcpuExit::IoapicEoi(_) => "KVM_EXIT_IOAPIC_EOI",
        VcpuExit::Hyperv => "KVM_EXIT_HYPERV",
        VcpuExit::X86Rdmsr(_) => "KVM_EXIT_X86_RDMSR",
        VcpuExit::X86Wrmsr(_) => "KVM_EXIT_X86_WRMSR",
        VcpuExit::Watchdog => "KVM_EXIT_WATCHDOG",
        _ => "unexpected exit",
    }
}

fn hex_list(data: &[u64]) -> String {
    let items: Vec<String> = data.iter().map(|d| format!("{d:#x}")).collect();
    format!("[{}]", items.join(", "))
}

/// Describes `KVM_EXIT_INTERNAL_ERROR` from `kvm_run.internal`: the suberror by name and the
/// `ndata` data words (`data` must already be cut to `ndata`, at most 16). For emulation
/// failures that carry the instruction bytes, the bytes are shown instead of the raw words.
pub fn describe_internal_error(suberror: u32, data: &[u64]) -> String {
    let name = match suberror {
        KVM_INTERNAL_ERROR_EMULATION => "instruction emulation failed",
        KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected hardware exit reason",
        _ => "unknown suberror",
    };
    let mut text = format!("suberror {suberror} ({name})");
    let mut rest = data;
    // emulation_failure layout: data[0] = flags, then insn_size (u8) and 15 instruction bytes.
    if suberror == KVM_INTERNAL_ERROR_EMULATION
        && data.len() >= 3
        && data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
    {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&data[1].to_le_bytes());
        bytes[8..].copy_from_slice(&data[2].to_le_bytes());
        let size = usize::from(bytes[0]).min(15);
        let insn: Vec<String> = bytes[1..=size].iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!(", instruction bytes [{}]", insn.join(" ")));
        rest = &data[3..];
    }
    if !rest.is_empty() {
        text.push_str(&format!(", data {}", hex_list(rest)));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Access {
        PioRead(u16, usize),
        PioWrite(u16, Vec<u8>),
        MmioRead(u64, usize),
        MmioWrite(u64, Vec<u8>),
    }

    /// Records every access and answers reads with 0xa5.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Access>>);

    impl Recorder {
        fn take(&self) -> Vec<Access> {
            std::mem::take(&mut *self.0.lock().expect("lock"))
        }
    }

    impl VcpuExitHandler for Recorder {
        fn pio_read(&self, port: u16, data: &mut [u8]) {
            data.fill(0xa5);
            self.0
                .lock()
                .expect("lock")
                .push(Access::PioRead(port, data.len()));
        }
        fn pio_write(&self, port: u16, data: &[u8]) {
            self.0
                .lock()
                .expect("lock")
                .push(Access::PioWrite(port, data.to_vec()));
        }
        fn mmio_read(&self, addr: u64, data: &mut [u8]) {
            data.fill(0xa5);
            self.0
                .lock()
                .expect("lock")
                .push(Access::MmioRead(addr, data.len()));
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) {
            self.0
                .lock()
                .expect("lock")
                .push(Access::MmioWrite(addr, data.to_vec()));
        }
    }

    fn failure(action: ExitAction) -> VcpuFailure {
        match action {
            ExitAction::Stop(VcpuStopReason::Failed(f)) => f,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn port_io_goes_to_the_handler() {
        let rec = Recorder::default();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, b"h"), &rec),
            ExitAction::Continue
        );
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x60, &mut data), &rec),
            ExitAction::Continue
        );
        assert_eq!(data, [0xa5, 0xa5], "read data reaches the guest buffer");
        assert_eq!(
            rec.take(),
            [
                Access::PioWrite(0x3f8, vec![b'h']),
                Access::PioRead(0x60, 2)
            ]
        );
    }

    #[test]
    fn mmio_goes_to_the_handler() {
        let rec = Recorder::default();
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut data), &rec),
            ExitAction::Continue
        );
        assert_eq!(data, [0xa5; 4]);
        assert_eq!(
            handle_exit(
                VcpuExit::MmioWrite(0xd000_0010, &[1, 2, 3, 4, 5, 6, 7, 8]),
                &rec
            ),
            ExitAction::Continue
        );
        assert_eq!(
            rec.take(),
            [
                Access::MmioRead(0xd000_0000, 4),
                Access::MmioWrite(0xd000_0010, vec![1, 2, 3, 4, 5, 6, 7, 8])
            ]
        );
    }

    #[test]
    fn guest_stops_map_to_reasons() {
        let rec = Recorder::default();
        let stop = |exit| match handle_exit(exit, &rec) {
            ExitAction::Stop(reason) => reason,
            ExitAction::Continue => panic!("expected a stop"),
        };
        assert_eq!(stop(VcpuExit::Hlt), VcpuStopReason::Halted);
        assert_eq!(stop(VcpuExit::Shutdown), VcpuStopReason::TripleFault);
        assert_eq!(
            stop(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])),
            VcpuStopReason::SystemReset
        );
        assert_eq!(
            stop(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[0])),
            VcpuStopReason::SystemShutdown
        );
        assert_eq!(
            stop(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[])),
            VcpuStopReason::SystemCrash
        );
        assert!(rec.take().is_empty(), "no device access for stops");
    }

    #[test]
    fn interrupted_run_continues() {
        assert_eq!(
            handle_exit(VcpuExit::Intr, &Recorder::default()),
            ExitAction::Continue
        );
    }

    #[test]
    fn unexpected_system_event_fails_with_its_type() {
        let f = failure(handle_exit(
            VcpuExit::SystemEvent(5, &[0x10, 0x20]),
            &Recorder::default(),
        ));
        assert_eq!(f.exit, EXIT_SYSTEM_EVENT);
        assert_eq!(f.detail, "unexpected event type 5 data [0x10, 0x20]");
    }

    #[test]
    fn fail_entry_reports_reason_and_cpu() {
        let f = failure(handle_exit(
            VcpuExit::FailEntry(0x80000021, 3),
            &Recorder::default(),
        ));
        assert_eq!(f.exit, EXIT_FAIL_ENTRY);
        assert_eq!(
            f.detail,
            "hardware_entry_failure_reason 0x80000021 on host cpu 3"
        );
        assert_eq!(f.registers, None);
    }

    #[test]
    fn internal_error_fails_for_the_run_loop_to_describe() {
        let f = failure(handle_exit(VcpuExit::InternalError, &Recorder::default()));
        assert_eq!(f.exit, EXIT_INTERNAL_ERROR);
    }

    #[test]
    fn unexpected_exits_fail_with_their_name() {
        let rec = Recorder::default();
        let cases: Vec<(VcpuExit<'_>, &str)> = vec![
            (VcpuExit::Unknown, EXIT_UNKNOWN),
            (VcpuExit::Exception, "KVM_EXIT_EXCEPTION"),
            (VcpuExit::IrqWindowOpen, "KVM_EXIT_IRQ_WINDOW_OPEN"),
            (VcpuExit::Nmi, "KVM_EXIT_NMI"),
            (VcpuExit::IoapicEoi(0x30), "KVM_EXIT_IOAPIC_EOI"),
            (VcpuExit::S390Sieic, "unexpected exit"),
            (VcpuExit::Unsupported(99), "unsupported exit"),
            (
                VcpuExit::MemoryFault {
                    flags: 0,
                    gpa: 0x1000,
                    size: 0x1000,
                },
                "KVM_EXIT_MEMORY_FAULT",
            ),
        ];
        for (exit, name) in cases {
            assert_eq!(failure(handle_exit(exit, &rec)).exit, name);
        }
        let f = failure(handle_exit(VcpuExit::Unsupported(99), &rec));
        assert!(f.detail.contains("99"), "{}", f.detail);
    }

    #[test]
    fn internal_error_description_decodes_instruction_bytes() {
        // flags = instruction bytes present; insn_size 4, bytes 66 0f ef c0 (pxor xmm0, xmm0).
        let insn = u64::from_le_bytes([4, 0x66, 0x0f, 0xef, 0xc0, 0, 0, 0]);
        let text = describe_internal_error(KVM_INTERNAL_ERROR_EMULATION, &[1, insn, 0, 0xdead]);
        assert_eq!(
            text,
            "suberror 1 (instruction emulation failed), instruction bytes [66 0f ef c0], \
             data [0xdead]"
        );
    }

    #[test]
    fn internal_error_description_shows_raw_data_otherwise() {
        assert_eq!(
            describe_internal_error(KVM_INTERNAL_ERROR_EMULATION, &[]),
            "suberror 1 (instruction emulation failed)"
        );
        assert_eq!(
            describe_internal_error(KVM_INTERNAL_ERROR_DELIVERY_EV, &[0x8000_0b0e, 0x31]),
            "suberror 3 (event delivery failed), data [0x80000b0e, 0x31]"
        );
        assert_eq!(
            describe_internal_error(42, &[]),
            "suberror 42 (unknown suberror)"
        );
        // A bogus instruction size cannot read past the 15 bytes.
        let text = describe_internal_error(KVM_INTERNAL_ERROR_EMULATION, &[1, 0xff, u64::MAX]);
        assert!(text.contains("instruction bytes"), "{text}");
    }

    #[test]
    fn failure_display_is_one_line() {
        let mut f = VcpuFailure::new(
            EXIT_INTERNAL_ERROR,
            "suberror 1 (instruction emulation failed)",
        );
        assert_eq!(
            f.to_string(),
            "KVM_EXIT_INTERNAL_ERROR: suberror 1 (instruction emulation failed)"
        );
        f.registers = Some(RegisterDump {
            rip: 0x1000,
            ..Default::default()
        });
        let text = VcpuStopReason::Failed(f).to_string();
        assert!(
            text.starts_with("vcpu failed: KVM_EXIT_INTERNAL_ERROR: suberror 1"),
            "{text}"
        );
        assert!(text.contains("[rip=0x1000 "), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(VcpuFailure::new("KVM_RUN", "").to_string(), "KVM_RUN");
    }
}
