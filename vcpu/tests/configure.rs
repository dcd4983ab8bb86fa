//! Vcpu::configure and build_cpuid against real KVM. Needs /dev/kvm.

mod common;

use common::{exit_channel, stats, Access, Recorder, TestVm, PATIENCE};
use kvm_bindings::{kvm_msr_entry, Msrs, KVM_MAX_CPUID_ENTRIES};
use petrel_vcpu::cpuid::{build_cpuid, HYPERVISOR_LEAF, KVM_SIGNATURE};
use petrel_vcpu::setup::{
    lapic_register, APIC_DELIVERY_EXTINT, APIC_DELIVERY_NMI, APIC_LVT_LINT0, APIC_LVT_LINT1,
    EFER_LMA, EFER_LME, MSR_IA32_MISC_ENABLE, MSR_MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED,
    X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE,
};
use petrel_vcpu::{parse_cpu_features, spawn_vcpu, EntryState, Vcpu, VcpuStopReason};

const GDT_START: u64 = 0x500;
const IDT_START: u64 = 0x520;
const PML4_START: u64 = 0x9000;
const PDPTE_START: u64 = 0xa000;
const PDE_START: u64 = 0xb000;
const CODE: u64 = 0x1000;

fn entry_state() -> EntryState {
    EntryState {
        rip: CODE,
        rsi: 0x7000,
        rsp: 0x8ff0,
        page_table_root: PML4_START,
        gdt_base: GDT_START,
        gdt_entries: [
            0,
            0x00af_9b00_0000_ffff,
            0x00cf_9300_0000_ffff,
            0x008f_8b00_0000_ffff,
        ],
        idt_base: IDT_START,
        idt_limit: 7,
    }
}

#[test]
fn boot_vcpu_is_configured_for_long_mode() {
    let vm = TestVm::new(true);
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    let mut vcpu = Vcpu::new(&vm.vm, 0).expect("vcpu");
    vcpu.configure(&supported, 1, &[], Some(&entry_state()))
        .expect("configure");
    let fd = vcpu.fd();

    let sregs = fd.get_sregs().expect("sregs");
    assert_eq!(
        sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
        X86_CR0_PE | X86_CR0_PG
    );
    assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
    assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    assert_eq!(sregs.cr3, PML4_START);
    assert_eq!(
        (sregs.cs.l, sregs.cs.selector, sregs.cs.present),
        (1, 0x8, 1)
    );
    assert_eq!(
        (sregs.ds.selector, sregs.ss.selector, sregs.tr.selector),
        (0x10, 0x10, 0x18)
    );
    assert_eq!((sregs.gdt.base, sregs.gdt.limit), (GDT_START, 31));
    assert_eq!((sregs.idt.base, sregs.idt.limit), (IDT_START, 7));

    let regs = fd.get_regs().expect("regs");
    assert_eq!(
        (regs.rip, regs.rsi, regs.rsp, regs.rflags),
        (CODE, 0x7000, 0x8ff0, 2)
    );

    let lapic = fd.get_lapic().expect("lapic");
    assert_eq!(
        (lapic_register(&lapic, APIC_LVT_LINT0) >> 8) & 7,
        APIC_DELIVERY_EXTINT
    );
    assert_eq!(
        (lapic_register(&lapic, APIC_LVT_LINT1) >> 8) & 7,
        APIC_DELIVERY_NMI
    );

    assert_eq!(fd.get_fpu().expect("fpu").fcw, 0x37f);
    // KVM_GET_FPU does not report MXCSR; the XSAVE image does (bytes 24..28).
    let xsave = fd.get_xsave().expect("xsave");
    assert_eq!(xsave.region[6], 0x1f80, "mxcsr");

    let mut msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            ..Default::default()
        },
    ])
    .expect("msrs");
    assert_eq!(fd.get_msrs(&mut msrs).expect("get msrs"), 2);
    assert_eq!(msrs.as_slice()[0].data, MTRR_DEF_TYPE_WB_ENABLED);
    assert_eq!(msrs.as_slice()[1].data & 1, 1, "fast strings");
}

#[test]
fn application_processor_keeps_its_reset_state() {
    let vm = TestVm::new(true);
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    let _bsp = Vcpu::new(&vm.vm, 0).expect("bsp");
    let mut ap = Vcpu::new(&vm.vm, 1).expect("ap");
    let before = ap.fd().get_regs().expect("regs");
    ap.configure(&supported, 2, &[], None).expect("configure");
    assert_eq!(ap.fd().get_regs().expect("regs").rip, before.rip);
    assert_eq!(ap.fd().get_sregs().expect("sregs").cr0 & X86_CR0_PG, 0);
    let lapic = ap.fd().get_lapic().expect("lapic");
    assert_eq!(
        (lapic_register(&lapic, APIC_LVT_LINT1) >> 8) & 7,
        APIC_DELIVERY_NMI
    );
}

#[test]
fn configure_without_irqchip_fails_cleanly() {
    let vm = TestVm::new(false);
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    let mut vcpu = Vcpu::new(&vm.vm, 0).expect("vcpu");
    let err = vcpu
        .configure(&supported, 1, &[], None)
        .expect_err("no lapic without irqchip");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err).expect("source")
    );
    assert!(chain.contains("lapic"), "{chain}");
}

#[test]
fn cpuid_from_kvm_is_accepted_and_read_back() {
    let vm = TestVm::new(true);
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    let changes = parse_cpu_features("-cx16").expect("list");
    let cpuid = build_cpuid(&supported, 3, 4, &changes).expect("build");
    let vcpu = Vcpu::new(&vm.vm, 3).expect("vcpu");
    vcpu.fd().set_cpuid2(&cpuid).expect("kvm accepts the cpuid");

    let back = vcpu
        .fd()
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .expect("get cpuid");
    let leaf = |function: u32| {
        *back
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == 0)
            .unwrap_or_else(|| panic!("leaf {function:#x} missing"))
    };
    let leaf1 = leaf(1);
    assert_eq!(leaf1.ebx >> 24, 3, "apic id");
    assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit");
    assert_eq!(leaf1.ecx & (1 << 13), 0, "cx16 hidden");
    let hv = leaf(HYPERVISOR_LEAF);
    let mut signature = Vec::new();
    for word in [hv.ebx, hv.ecx, hv.edx] {
        signature.extend_from_slice(&word.to_le_bytes());
    }
    assert_eq!(signature, KVM_SIGNATURE);
}

#[test]
fn configured_boot_vcpu_runs_64_bit_code() {
    let mut vm = TestVm::new(true);
    let entry = entry_state();
    for (i, descriptor) in entry.gdt_entries.iter().enumerate() {
        vm.ram.write_u64(GDT_START + 8 * i as u64, *descriptor);
    }
    // Identity-map the first 2 MiB with one large page.
    vm.ram.write_u64(PML4_START, PDPTE_START | 0x3);
    vm.ram.write_u64(PDPTE_START, PDE_START | 0x3);
    vm.ram.write_u64(PDE_START, 0x83);
    #[rustfmt::skip]
    vm.ram.write(CODE, &[
        0x48, 0x89, 0xf0,       // mov rax, rsi
        0xe6, 0x80,             // out 0x80, al   (0x00: low byte of rsi = 0x7000)
        0x88, 0xe0,             // mov al, ah
        0xe6, 0x80,             // out 0x80, al   (0x70)
        0xeb, 0xfe,             // jmp $
    ]);
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    let mut vcpu = Vcpu::new(&vm.vm, 0).expect("vcpu");
    vcpu.configure(&supported, 1, &[], Some(&entry))
        .expect("configure");

    let (recorder, events) = Recorder::new(0, 0);
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(vcpu, recorder, stats(), on_exit).expect("spawn");
    let first = events.recv_timeout(PATIENCE);
    let second = events.recv_timeout(PATIENCE);
    handle.request_stop();
    let (_, reason) = exits.recv_timeout(PATIENCE).expect("vcpu stops");
    assert_eq!(
        first,
        Ok(Access::PioWrite(0x80, vec![0x00])),
        "stop reason {reason}"
    );
    assert_eq!(second, Ok(Access::PioWrite(0x80, vec![0x70])));
    assert_eq!(reason, VcpuStopReason::Requested);
    handle.join().expect("join");
}
