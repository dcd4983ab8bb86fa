//! A snapshot of the registers that explain where a vCPU was when it stopped.

use std::fmt;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// The registers worth showing when a vCPU fails: enough to find the faulting code and tell
/// the CPU mode, on one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterDump {
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Frame pointer.
    pub rbp: u64,
    /// Flags.
    pub rflags: u64,
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// Code segment selector.
    pub cs: u16,
    /// Code segment base (non-zero in real mode).
    pub cs_base: u64,
    /// CR0 (mode bits).
    pub cr0: u64,
    /// CR2 (last page-fault address).
    pub cr2: u64,
    /// CR3 (page table root).
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER (long mode bits).
    pub efer: u64,
}

impl RegisterDump {
    /// Picks the interesting registers out of KVM's register structures.
    pub fn from_kvm(regs: &kvm_regs, sregs: &kvm_sregs) -> Self {
        RegisterDump {
            rip: regs.rip,
            rsp: regs.rsp,
            rbp: regs.rbp,
            rflags: regs.rflags,
            rax: regs.rax,
            rbx: regs.rbx,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rsi: regs.rsi,
            rdi: regs.rdi,
            cs: sregs.cs.selector,
            cs_base: sregs.cs.base,
            cr0: sregs.cr0,
            cr2: sregs.cr2,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        }
    }

    /// Reads the registers of a stopped vCPU; `None` if KVM refuses (the failure is logged).
    pub fn capture(fd: &VcpuFd) -> Option<Self> {
        let regs = fd.get_regs();
        let sregs = fd.get_sregs();
        match (regs, sregs) {
            (Ok(regs), Ok(sregs)) => Some(Self::from_kvm(&regs, &sregs)),
            (Err(e), _) | (_, Err(e)) => {
                log::warn!("cannot read registers of a stopped vcpu: {e}");
                None
            }
        }
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rip={:#x} rsp={:#x} rbp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             rsi={:#x} rdi={:#x} cs={:#x}",
            self.rip,
            self.rsp,
            self.rbp,
            self.rflags,
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.cs
        )?;
        if self.cs_base != 0 {
            write!(f, "@{:#x}", self.cs_base)?;
        }
        write!(
            f,
            " cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_fields_from_kvm_structures() {
        let regs = kvm_regs {
            rip: 0x1000,
            rsp: 0x8ff0,
            rax: 7,
            rdi: 9,
            rflags: 0x246,
            ..Default::default()
        };
        let mut sregs = kvm_sregs {
            cr0: 0x8000_0011,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            ..Default::default()
        };
        sregs.cs.selector = 0x8;
        let dump = RegisterDump::from_kvm(&regs, &sregs);
        assert_eq!(
            (dump.rip, dump.rsp, dump.rax, dump.rdi),
            (0x1000, 0x8ff0, 7, 9)
        );
        assert_eq!(
            (dump.cs, dump.cr0, dump.cr3, dump.efer),
            (0x8, 0x8000_0011, 0x9000, 0x500)
        );
    }

    #[test]
    fn display_is_one_compact_line() {
        let dump = RegisterDump {
            rip: 0xffff_ffff_8100_0000,
            cs: 0x10,
            cr0: 0x8000_0011,
            efer: 0x500,
            ..Default::default()
        };
        let text = dump.to_string();
        assert!(!text.contains('\n'));
        assert!(
            text.starts_with("rip=0xffffffff81000000 rsp=0x0 "),
            "{text}"
        );
        assert!(text.contains(" cs=0x10 cr0=0x80000011 "), "{text}");
        assert!(text.ends_with(" efer=0x500"), "{text}");
        let real_mode = RegisterDump {
            cs: 0xf000,
            cs_base: 0xf_0000,
            ..Default::default()
        };
        assert!(real_mode.to_string().contains(" cs=0xf000@0xf0000 "));
    }
}
