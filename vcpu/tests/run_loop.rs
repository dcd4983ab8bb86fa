//! The vCPU thread against real KVM: exits reach the handler, stops are reported, and the
//! handle stops a vCPU that would otherwise never leave KVM_RUN. Needs /dev/kvm.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::{exit_channel, stats, Access, Recorder, TestVm, PATIENCE};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use petrel_vcpu::cpuid::{build_cpuid, KVM_SIGNATURE};
use petrel_vcpu::{spawn_vcpu, ExitKind, Vcpu, VcpuExitHandler, VcpuState, VcpuStopReason};

const CODE: u64 = 0x1000;

#[test]
fn port_and_mmio_exits_reach_the_handler_then_hlt_stops() {
    // RAM is [0, 0x4000): 0x5000 is MMIO.
    let mut vm = TestVm::with_ram(false, 0x4000);
    #[rustfmt::skip]
    let code = [
        0xb0, 0x42,             // mov al, 0x42
        0xba, 0xf8, 0x03,       // mov dx, 0x3f8
        0xee,                   // out dx, al
        0xec,                   // in al, dx        (handler answers 0x99)
        0xe6, 0x80,             // out 0x80, al     (0x99 proves the read reached the guest)
        0xa2, 0x00, 0x50,       // mov [0x5000], al
        0xa0, 0x00, 0x50,       // mov al, [0x5000] (handler answers 0x77)
        0xe6, 0x81,             // out 0x81, al
        0xf4,                   // hlt
    ];
    vm.ram.write(CODE, &code);
    let vcpu = vm.real_mode_vcpu(0, CODE);
    let (recorder, _events) = Recorder::new(0x99, 0x77);
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(vcpu, recorder.clone(), stats(), on_exit).expect("spawn");

    let (index, reason) = exits.recv_timeout(PATIENCE).expect("vcpu stops on hlt");
    assert_eq!((index, reason.clone()), (0, VcpuStopReason::Halted));
    assert_eq!(handle.join().expect("join"), reason);
    assert_eq!(
        recorder.accesses(),
        [
            Access::PioWrite(0x3f8, vec![0x42]),
            Access::PioRead(0x3f8, 1),
            Access::PioWrite(0x80, vec![0x99]),
            Access::MmioWrite(0x5000, vec![0x99]),
            Access::MmioRead(0x5000, 1),
            Access::PioWrite(0x81, vec![0x77]),
        ]
    );
}

/// Real-mode code that writes to port 0x80 and then spins on `jmp $` forever.
const SPIN: [u8; 4] = [0xe6, 0x80, 0xeb, 0xfe]; // out 0x80, al; jmp $

#[test]
fn request_stop_ends_a_guest_spinning_in_kvm_run() {
    let mut vm = TestVm::new(false);
    vm.ram.write(CODE, &SPIN);
    let vcpu = vm.real_mode_vcpu(0, CODE);
    let (recorder, events) = Recorder::new(0, 0);
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(vcpu, recorder, stats(), on_exit).expect("spawn");

    // Once the `out` was seen, the guest is in its endless loop inside KVM_RUN.
    let first = events
        .recv_timeout(PATIENCE)
        .expect("guest reaches the loop");
    assert_eq!(first, Access::PioWrite(0x80, vec![0]));
    assert_eq!(handle.state(), VcpuState::Running);

    handle.request_stop();
    let (index, reason) = exits
        .recv_timeout(PATIENCE)
        .expect("vcpu stops after the kick");
    assert_eq!((index, &reason), (0, &VcpuStopReason::Requested));
    assert_eq!(handle.state(), VcpuState::Exited);
    assert_eq!(handle.join().expect("join"), VcpuStopReason::Requested);
}

#[test]
fn request_stop_ends_an_ap_waiting_for_sipi() {
    let vm = TestVm::new(true);
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    // The BSP exists but never runs, so nobody sends the AP an INIT/SIPI.
    let _bsp = Vcpu::new(&vm.vm, 0).expect("bsp");
    let mut ap = Vcpu::new(&vm.vm, 1).expect("ap");
    ap.configure(&supported, 2, &[], None)
        .expect("configure ap");
    let (recorder, _events) = Recorder::new(0, 0);
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(ap, recorder.clone(), stats(), on_exit).expect("spawn");
    assert_eq!(handle.index(), 1);

    // Give the thread time to block in KVM_RUN (not required for correctness: a stop
    // requested before that must work too).
    std::thread::sleep(std::time::Duration::from_millis(100));
    handle.request_stop();
    let (index, reason) = exits
        .recv_timeout(PATIENCE)
        .expect("ap stops after the kick");
    assert_eq!((index, reason), (1, VcpuStopReason::Requested));
    assert_eq!(handle.join().expect("join"), VcpuStopReason::Requested);
    assert!(
        recorder.accesses().is_empty(),
        "the AP never ran guest code"
    );
}

#[test]
fn stop_requested_before_the_thread_runs_is_not_lost() {
    // Many quick spawn/stop pairs: the stop lands at every point of the thread's start-up.
    let mut vm = TestVm::new(false);
    vm.ram.write(CODE, &SPIN);
    for i in 0..20 {
        let vcpu = vm.real_mode_vcpu(i, CODE);
        let (recorder, _events) = Recorder::new(0, 0);
        let (on_exit, exits) = exit_channel();
        let handle = spawn_vcpu(vcpu, recorder, stats(), on_exit).expect("spawn");
        handle.request_stop();
        let (_, reason) = exits.recv_timeout(PATIENCE).expect("vcpu stops");
        assert_eq!(reason, VcpuStopReason::Requested, "round {i}");
        handle.join().expect("join");
    }
}

/// Counts port writes; tells the test about the first one.
struct Counter {
    writes: AtomicU64,
    first: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
}

impl VcpuExitHandler for Counter {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, _port: u16, _data: &[u8]) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = self.first.lock().expect("lock").take() {
            let _ = tx.send(());
        }
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
}

#[test]
fn pause_parks_the_vcpu_and_resume_lets_it_run_again() {
    let mut vm = TestVm::new(false);
    vm.ram.write(CODE, &[0xe6, 0x80, 0xeb, 0xfc]); // 1: out 0x80, al; jmp 1b
    let vcpu = vm.real_mode_vcpu(0, CODE);
    let (tx, first) = std::sync::mpsc::channel();
    let counter = Arc::new(Counter {
        writes: AtomicU64::new(0),
        first: std::sync::Mutex::new(Some(tx)),
    });
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(vcpu, counter.clone(), stats(), on_exit).expect("spawn");
    first.recv_timeout(PATIENCE).expect("guest runs");

    assert_eq!(handle.pause(), VcpuState::Paused);
    assert_eq!(handle.state(), VcpuState::Paused);
    let paused_at = counter.writes.load(Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        counter.writes.load(Ordering::SeqCst),
        paused_at,
        "no exits while paused"
    );
    assert_eq!(
        handle.pause(),
        VcpuState::Paused,
        "pausing twice is harmless"
    );

    handle.resume();
    let deadline = Instant::now() + PATIENCE;
    while counter.writes.load(Ordering::SeqCst) <= paused_at {
        assert!(
            Instant::now() < deadline,
            "guest did not run again after resume"
        );
        std::thread::yield_now();
    }
    assert_eq!(handle.state(), VcpuState::Running);

    // A paused vCPU can be stopped too.
    assert_eq!(handle.pause(), VcpuState::Paused);
    handle.request_stop();
    let (_, reason) = exits.recv_timeout(PATIENCE).expect("vcpu stops");
    assert_eq!(reason, VcpuStopReason::Requested);
    assert_eq!(
        handle.pause(),
        VcpuState::Exited,
        "pausing an exited vcpu returns at once"
    );
    handle.resume();
    assert_eq!(handle.join().expect("join"), VcpuStopReason::Requested);
}

#[test]
fn triple_fault_is_reported() {
    let mut vm = TestVm::with_ram(false, 0x4000);
    vm.ram.write(CODE, &[0x0f, 0x0b]); // ud2, with no usable IDT
    let vcpu = vm.real_mode_vcpu(0, CODE);
    let mut sregs = vcpu.fd().get_sregs().expect("sregs");
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    vcpu.fd().set_sregs(&sregs).expect("set sregs");
    let (recorder, _events) = Recorder::new(0, 0);
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(vcpu, recorder, stats(), on_exit).expect("spawn");
    let (_, reason) = exits.recv_timeout(PATIENCE).expect("vcpu stops");
    assert_eq!(reason, VcpuStopReason::TripleFault);
    handle.join().expect("join");
}

#[test]
fn guest_sees_its_apic_id_and_the_kvm_signature() {
    let mut vm = TestVm::with_ram(false, 0x4000);
    #[rustfmt::skip]
    let code = [
        0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x0f, 0xa2,                         // cpuid
        0x66, 0xc1, 0xeb, 0x18,             // shr ebx, 24
        0x88, 0xd8,                         // mov al, bl
        0xe6, 0x80,                         // out 0x80, al
        0x66, 0xb8, 0x00, 0x00, 0x00, 0x40, // mov eax, 0x40000000
        0x0f, 0xa2,                         // cpuid
        0x66, 0x89, 0xd8,                   // mov eax, ebx
        0x66, 0xe7, 0x81,                   // out 0x81, eax
        0x66, 0x89, 0xc8,                   // mov eax, ecx
        0x66, 0xe7, 0x81,                   // out 0x81, eax
        0x66, 0x89, 0xd0,                   // mov eax, edx
        0x66, 0xe7, 0x81,                   // out 0x81, eax
        0xf4,                               // hlt
    ];
    vm.ram.write(CODE, &code);
    let supported = vm
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    let cpuid = build_cpuid(&supported, 2, 4, &[]).expect("build cpuid");
    // vCPU id 2 (KVM's vcpu id is independent of the APIC id we advertise).
    let vcpu = vm.real_mode_vcpu(2, CODE);
    vcpu.fd().set_cpuid2(&cpuid).expect("set cpuid");
    let (recorder, _events) = Recorder::new(0, 0);
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(vcpu, recorder.clone(), stats(), on_exit).expect("spawn");
    let (_, reason) = exits.recv_timeout(PATIENCE).expect("vcpu stops");
    assert_eq!(reason, VcpuStopReason::Halted);
    handle.join().expect("join");

    let accesses = recorder.accesses();
    assert_eq!(accesses[0], Access::PioWrite(0x80, vec![2]), "apic id");
    let signature: Vec<u8> = accesses[1..]
        .iter()
        .flat_map(|a| match a {
            Access::PioWrite(0x81, data) => data.clone(),
            other => panic!("unexpected access {other:?}"),
        })
        .collect();
    assert_eq!(signature, KVM_SIGNATURE);
}

/// Answers reads with 0 and takes at least a millisecond over each write to port 0x81.
struct SlowPort81;

impl VcpuExitHandler for SlowPort81 {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn pio_write(&self, port: u16, _data: &[u8]) {
        if port == 0x81 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
}

#[test]
fn exits_are_counted_by_kind_with_their_handling_time() {
    // RAM is [0, 0x4000): 0x5000 is MMIO.
    let mut vm = TestVm::with_ram(false, 0x4000);
    #[rustfmt::skip]
    let code = [
        0xe6, 0x80,             // out 0x80, al
        0xe6, 0x80,             // out 0x80, al
        0xe6, 0x80,             // out 0x80, al
        0xe6, 0x81,             // out 0x81, al   (the handler sleeps 1 ms)
        0xe6, 0x81,             // out 0x81, al
        0xe4, 0x60,             // in al, 0x60
        0xa2, 0x00, 0x50,       // mov [0x5000], al
        0xf4,                   // hlt
    ];
    vm.ram.write(CODE, &code);
    let vcpu = vm.real_mode_vcpu(0, CODE);
    let stats = stats();
    assert_eq!(stats.first_run(), None);
    let before = Instant::now();
    let (on_exit, exits) = exit_channel();
    let handle = spawn_vcpu(vcpu, Arc::new(SlowPort81), stats.clone(), on_exit).expect("spawn");
    let (_, reason) = exits.recv_timeout(PATIENCE).expect("vcpu stops on hlt");
    assert_eq!(reason, VcpuStopReason::Halted);
    handle.join().expect("join");

    let io_out = stats.get(ExitKind::IoOut);
    assert_eq!(io_out.count, 5, "{io_out:?}");
    assert!(
        io_out.total_ns >= 2_000_000,
        "the two slow writes are in the handling time: {io_out:?}"
    );
    assert_eq!(stats.get(ExitKind::IoIn).count, 1);
    assert_eq!(stats.get(ExitKind::MmioWrite).count, 1);
    assert_eq!(stats.get(ExitKind::MmioRead).count, 0);
    assert_eq!(stats.get(ExitKind::Hlt).count, 1);
    assert_eq!(stats.total_exits(), 8, "{:?}", stats.snapshot());
    let first_run = stats.first_run().expect("first KVM_RUN recorded");
    assert!(first_run >= before && first_run <= Instant::now());
}
