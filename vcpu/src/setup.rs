//! Puts a vCPU into the state a 64-bit Linux boot expects: boot MSRs, FPU, LAPIC LVTs, and
//! (for the boot vCPU) long-mode segment and control registers plus the entry registers.
//!
//! The values are computed by pure functions ([`gdt_entry_to_segment`], [`boot_msr_entries`],
//! [`long_mode_sregs`], [`entry_regs`], [`set_lvt_delivery_mode`]) and written by thin
//! `setup_*` wrappers over the vCPU ioctls.

use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;

/// `IA32_SYSENTER_CS`.
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// `IA32_SYSENTER_ESP`.
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// `IA32_SYSENTER_EIP`.
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// `IA32_MISC_ENABLE`.
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// `IA32_MTRR_DEF_TYPE`.
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// `STAR` (SYSCALL segment selectors).
pub const MSR_STAR: u32 = 0xc000_0081;
/// `LSTAR` (64-bit SYSCALL target).
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// `CSTAR` (compatibility-mode SYSCALL target).
pub const MSR_CSTAR: u32 = 0xc000_0083;
/// `SFMASK` (SYSCALL RFLAGS mask).
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// `KERNEL_GS_BASE` (SWAPGS).
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// `IA32_MISC_ENABLE` bit 0: fast-string operations (`rep movs`/`stos`) enabled.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// `IA32_MTRR_DEF_TYPE`: MTRRs enabled (bit 11), default memory type write-back (6).
pub const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// CR0 protection enable.
pub const X86_CR0_PE: u64 = 1;
/// CR0 paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4 physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Offset of the local APIC's LVT LINT0 register.
pub const APIC_LVT_LINT0: usize = 0x350;
/// Offset of the local APIC's LVT LINT1 register.
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode NMI.
pub const APIC_DELIVERY_NMI: u32 = 0b100;
/// LVT delivery mode ExtINT (the legacy PIC's output).
pub const APIC_DELIVERY_EXTINT: u32 = 0b111;

/// x87 control word after `FNINIT`.
pub const FPU_FCW: u16 = 0x37f;
/// MXCSR after reset: all SSE exceptions masked.
pub const FPU_MXCSR: u32 = 0x1f80;

/// Where and how the boot vCPU starts: the result of loading a kernel, as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EntryState {
    /// 64-bit entry point (RIP).
    pub rip: u64,
    /// RSI: the boot_params (zero page) address for the Linux 64-bit boot protocol.
    pub rsi: u64,
    /// Initial stack pointer (also put in RBP).
    pub rsp: u64,
    /// CR3: guest-physical address of the PML4.
    pub page_table_root: u64,
    /// Guest-physical address of the GDT.
    pub gdt_base: u64,
    /// The GDT's entries: null, code, data, TSS (selectors 0x0, 0x8, 0x10, 0x18).
    pub gdt_entries: [u64; 4],
    /// Guest-physical address of the IDT.
    pub idt_base: u64,
    /// IDT limit (size in bytes - 1).
    pub idt_limit: u16,
}

/// Errors from setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A GDT entry of the [`EntryState`] cannot be used for its role.
    #[error("gdt {role} entry {entry:#018x} is not {expected}")]
    BadGdtEntry {
        /// "code", "data" or "tss".
        role: &'static str,
        /// The entry.
        entry: u64,
        /// What it should be.
        expected: &'static str,
    },
    /// A vCPU ioctl failed.
    #[error("cannot {what}")]
    Ioctl {
        /// What was being done, e.g. "set sregs".
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM took only some of the boot MSRs.
    #[error("kvm refused msr {msr:#x} ({written} of {total} boot msrs written)")]
    MsrRefused {
        /// The first MSR not written.
        msr: u32,
        /// How many were written.
        written: usize,
        /// How many were given.
        total: usize,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SetupError {
    move |source| SetupError::Ioctl { what, source }
}

/// Converts a GDT descriptor to the segment register KVM loads for selector `table_index * 8`.
/// A descriptor that is not present comes out `unusable`.
pub fn gdt_entry_to_segment(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The MSRs every vCPU gets at boot: SYSENTER/SYSCALL MSRs zeroed, fast strings on, and MTRRs
/// enabled with write-back as the default type.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
}

fn check_segment(
    seg: &kvm_segment,
    entry: u64,
    role: &'static str,
    expected: &'static str,
    ok: bool,
) -> Result<(), SetupError> {
    if seg.present == 1 && ok {
        Ok(())
    } else {
        Err(SetupError::BadGdtEntry {
            role,
            entry,
            expected,
        })
    }
}

/// Long-mode system registers for the boot vCPU: `base` (what KVM reported) with the GDT/IDT,
/// flat segments from `entry.gdt_entries`, paging on (CR0.PE|PG, CR4.PAE, EFER.LME|LMA) and
/// CR3 pointing at `entry.page_table_root`.
pub fn long_mode_sregs(base: &kvm_sregs, entry: &EntryState) -> Result<kvm_sregs, SetupError> {
    let [_, code, data, tss] = entry.gdt_entries;
    let cs = gdt_entry_to_segment(code, 1);
    check_segment(&cs, code, "code", "a present 64-bit code segment", {
        cs.s == 1 && cs.type_ & 0x8 != 0 && cs.l == 1 && cs.db == 0
    })?;
    let ds = gdt_entry_to_segment(data, 2);
    check_segment(&ds, data, "data", "a present writable data segment", {
        ds.s == 1 && ds.type_ & 0xa == 0x2
    })?;
    let tr = gdt_entry_to_segment(tss, 3);
    // KVM needs a busy TSS (type 11) in TR.
    check_segment(
        &tr,
        tss,
        "tss",
        "a present busy tss",
        tr.s == 0 && tr.type_ == 0xb,
    )?;

    let mut sregs = *base;
    sregs.gdt.base = entry.gdt_base;
    sregs.gdt.limit = (std::mem::size_of_val(&entry.gdt_entries) - 1) as u16;
    sregs.idt.base = entry.idt_base;
    sregs.idt.limit = entry.idt_limit;
    sregs.cs = cs;
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = tr;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.cr3 = entry.page_table_root;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(sregs)
}

/// General registers for the boot vCPU: RIP, RSI, RSP (and RBP) from `entry`, RFLAGS with only
/// the reserved bit 1 set, everything else zero.
pub fn entry_regs(entry: &EntryState) -> kvm_regs {
    kvm_regs {
        rip: entry.rip,
        rsi: entry.rsi,
        rsp: entry.rsp,
        rbp: entry.rsp,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Reads the 32-bit local APIC register at `offset` from a `kvm_lapic_state`. Offsets past the
/// 1 KiB page read as 0.
pub fn lapic_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let Some(bytes) = lapic.regs.get(offset..offset + 4) else {
        return 0;
    };
    u32::from_le_bytes([
        bytes[0] as u8,
        bytes[1] as u8,
        bytes[2] as u8,
        bytes[3] as u8,
    ])
}

fn set_lapic_register(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    if let Some(bytes) = lapic.regs.get_mut(offset..offset + 4) {
        for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
}

/// Sets the delivery mode (bits 10:8) of the LVT register at `offset`, keeping its other bits.
pub fn set_lvt_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let value = lapic_register(lapic, offset);
    set_lapic_register(lapic, offset, (value & !0x700) | ((mode & 0x7) << 8));
}

/// Writes the boot MSRs ([`boot_msr_entries`]).
pub fn setup_msrs(fd: &VcpuFd) -> Result<(), SetupError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| SetupError::MsrRefused {
        msr: entries[0].index,
        written: 0,
        total: entries.len(),
    })?;
    let written = fd.set_msrs(&msrs).map_err(ioctl("set boot msrs"))?;
    if written != entries.len() {
        return Err(SetupError::MsrRefused {
            msr: entries.get(written).map_or(0, |e| e.index),
            written,
            total: entries.len(),
        });
    }
    Ok(())
}

/// Sets the FPU to its post-`FNINIT` state with SSE exceptions masked.
///
/// x86 KVM ignores `kvm_fpu.mxcsr` in `KVM_SET_FPU` (and reports 0 from `KVM_GET_FPU`); a new
/// vCPU's MXCSR is already 0x1f80, which is what the guest needs. It is passed anyway so the
/// intent is stated in one place.
pub fn setup_fpu(fd: &VcpuFd) -> Result<(), SetupError> {
    let fpu = kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    };
    fd.set_fpu(&fpu).map_err(ioctl("set fpu"))
}

/// Wires the LAPIC's LINT0 to ExtINT (the legacy PIC) and LINT1 to NMI, as a PC does.
/// Needs the in-kernel irqchip (`VmFd::create_irq_chip`) to exist.
pub fn setup_lapic(fd: &VcpuFd) -> Result<(), SetupError> {
    let mut lapic = fd.get_lapic().map_err(ioctl("get lapic"))?;
    set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT0, APIC_DELIVERY_EXTINT);
    set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT1, APIC_DELIVERY_NMI);
    fd.set_lapic(&lapic).map_err(ioctl("set lapic"))
}

/// Puts the vCPU in 64-bit long mode ([`long_mode_sregs`]) at the entry point ([`entry_regs`]).
pub fn setup_long_mode_entry(fd: &VcpuFd, entry: &EntryState) -> Result<(), SetupError> {
    let base = fd.get_sregs().map_err(ioctl("get sregs"))?;
    let sregs = long_mode_sregs(&base, entry)?;
    fd.set_sregs(&sregs).map_err(ioctl("set sregs"))?;
    fd.set_regs(&entry_regs(entry)).map_err(ioctl("set regs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// petrel-boot's GDT: null, code64, data, tss.
    const GDT: [u64; 4] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x008f_8b00_0000_ffff,
    ];

    fn entry_state() -> EntryState {
        EntryState {
            rip: 0x100_0000,
            rsi: 0x7000,
            rsp: 0x8ff0,
            page_table_root: 0x9000,
            gdt_base: 0x500,
            gdt_entries: GDT,
            idt_base: 0x520,
            idt_limit: 7,
        }
    }

    #[test]
    fn code64_entry_becomes_a_long_mode_cs() {
        let cs = gdt_entry_to_segment(GDT[1], 1);
        assert_eq!(cs.selector, 0x8);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!(cs.type_, 0xb, "execute/read, accessed");
        assert_eq!(
            (cs.present, cs.dpl, cs.s, cs.l, cs.db, cs.g, cs.avl),
            (1, 0, 1, 1, 0, 1, 0)
        );
        assert_eq!(cs.unusable, 0);
    }

    #[test]
    fn data_entry_becomes_a_flat_writable_segment() {
        let ds = gdt_entry_to_segment(GDT[2], 2);
        assert_eq!(ds.selector, 0x10);
        assert_eq!((ds.base, ds.limit), (0, 0xffff_ffff));
        assert_eq!(ds.type_, 0x3, "read/write, accessed");
        assert_eq!((ds.present, ds.s, ds.l, ds.db, ds.g), (1, 1, 0, 1, 1));
    }

    #[test]
    fn tss_entry_becomes_a_busy_system_segment() {
        let tr = gdt_entry_to_segment(GDT[3], 3);
        assert_eq!(tr.selector, 0x18);
        assert_eq!((tr.type_, tr.s, tr.present, tr.g), (0xb, 0, 1, 1));
        assert_eq!(tr.limit, 0xffff_ffff);
    }

    /// Builds a descriptor from its fields (access byte = P|DPL|S|type, flags = G|DB|L|AVL).
    fn descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
        let (base, limit) = (u64::from(base), u64::from(limit));
        (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (u64::from(access) << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (u64::from(flags & 0xf) << 52)
            | ((base >> 24) << 56)
    }

    #[test]
    fn descriptor_helper_matches_petrel_gdt() {
        assert_eq!(descriptor(0, 0xfffff, 0x9b, 0xa), GDT[1]);
        assert_eq!(descriptor(0, 0xfffff, 0x93, 0xc), GDT[2]);
    }

    #[test]
    fn base_and_byte_granular_limit_are_reassembled() {
        // Present, DPL 3, data r/w; G=0, D/B=1, AVL=1.
        let seg = gdt_entry_to_segment(descriptor(0x1234_5678, 0x5bcdb, 0xf3, 0x5), 5);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0x5bcdb);
        assert_eq!((seg.g, seg.db, seg.avl, seg.l), (0, 1, 1, 0));
        assert_eq!((seg.dpl, seg.present, seg.s, seg.type_), (3, 1, 1, 3));
        assert_eq!(seg.selector, 40);
    }

    #[test]
    fn page_granular_limit_is_scaled() {
        let seg = gdt_entry_to_segment(descriptor(0, 0x1, 0x93, 0x8), 2);
        assert_eq!(seg.limit, 0x1fff);
    }

    #[test]
    fn null_entry_is_unusable() {
        let seg = gdt_entry_to_segment(0, 0);
        assert_eq!((seg.present, seg.unusable, seg.selector), (0, 1, 0));
    }

    #[test]
    fn boot_msrs_are_the_expected_set() {
        let msrs = boot_msr_entries();
        let get = |index| {
            msrs.iter()
                .find(|m| m.index == index)
                .map(|m| m.data)
                .unwrap_or_else(|| panic!("msr {index:#x} missing"))
        };
        for zero in [
            MSR_IA32_SYSENTER_CS,
            MSR_IA32_SYSENTER_ESP,
            MSR_IA32_SYSENTER_EIP,
            MSR_STAR,
            MSR_LSTAR,
            MSR_CSTAR,
            MSR_KERNEL_GS_BASE,
            MSR_SYSCALL_MASK,
        ] {
            assert_eq!(get(zero), 0, "msr {zero:#x}");
        }
        assert_eq!(get(MSR_IA32_MISC_ENABLE) & 1, 1, "fast strings");
        assert_eq!(get(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(msrs.len(), 10);
    }

    #[test]
    fn long_mode_sregs_from_entry_state() {
        let base = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        let s = long_mode_sregs(&base, &entry_state()).expect("valid entry");
        assert_eq!(s.cr0, 0x6000_0010 | X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0x520, 7));
        assert_eq!((s.cs.selector, s.cs.l), (0x8, 1));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, 0x10);
        }
        assert_eq!(s.tr.selector, 0x18);
    }

    #[test]
    fn unusable_gdt_entries_are_refused() {
        let mut entry = entry_state();
        entry.gdt_entries[1] = 0x00cf_9b00_0000_ffff; // 32-bit code (L=0, D=1)
        let err = long_mode_sregs(&kvm_sregs::default(), &entry).expect_err("32-bit cs");
        assert!(
            matches!(err, SetupError::BadGdtEntry { role: "code", .. }),
            "{err}"
        );

        let mut entry = entry_state();
        entry.gdt_entries[2] = 0x00cf_1300_0000_ffff; // not present
        assert!(matches!(
            long_mode_sregs(&kvm_sregs::default(), &entry),
            Err(SetupError::BadGdtEntry { role: "data", .. })
        ));

        let mut entry = entry_state();
        entry.gdt_entries[3] = 0x008f_8900_0000_ffff; // available, not busy
        assert!(matches!(
            long_mode_sregs(&kvm_sregs::default(), &entry),
            Err(SetupError::BadGdtEntry { role: "tss", .. })
        ));
    }

    #[test]
    fn entry_regs_set_rip_rsi_rsp_and_rflags() {
        let r = entry_regs(&entry_state());
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rbp, r.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 0x8ff0, 2)
        );
        assert_eq!((r.rax, r.rdi), (0, 0));
    }

    #[test]
    fn lvt_delivery_mode_keeps_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_register(&mut lapic, APIC_LVT_LINT0, 0x0001_0700 | 0x31);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT0, APIC_DELIVERY_NMI);
        assert_eq!(lapic_register(&lapic, APIC_LVT_LINT0), 0x0001_0431);
        set_lvt_delivery_mode(&mut lapic, APIC_LVT_LINT1, APIC_DELIVERY_EXTINT);
        assert_eq!(lapic_register(&lapic, APIC_LVT_LINT1), 0x700);
        assert_eq!(lapic_register(&lapic, 0x3ff), 0, "out of range reads 0");
        set_lvt_delivery_mode(&mut lapic, 0x3fe, APIC_DELIVERY_NMI); // ignored, no panic
    }
}
