//! Helpers for the tests that need /dev/kvm. They fail (never skip) when KVM is missing.

#![allow(dead_code)]

use std::ptr::NonNull;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use petrel_vcpu::{ExitStats, OnVcpuExit, Vcpu, VcpuExitHandler, VcpuStopReason};

/// How long a test waits for something the guest or a vCPU thread must do. Generous: the
/// assertion is that it happens at all, not how fast.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Guest RAM size of the test VMs.
pub const RAM_SIZE: usize = 2 << 20;

/// Opens /dev/kvm, panicking with a clear message if it is missing.
pub fn kvm() -> Kvm {
    Kvm::new().unwrap_or_else(|e| panic!("this test needs /dev/kvm, which cannot be opened: {e}"))
}

/// Anonymous guest RAM, unmapped on drop.
pub struct GuestRam {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is plain memory owned by this value; tests only write it before the
// vCPUs run.
unsafe impl Send for GuestRam {}

impl GuestRam {
    pub fn new(size: usize) -> Self {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap guest ram");
        GuestRam {
            ptr: NonNull::new(addr.cast()).expect("non-null mapping"),
            size,
        }
    }

    /// Copies `bytes` to guest-physical `addr`.
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        let addr = addr as usize;
        assert!(addr + bytes.len() <= self.size, "write past guest ram");
        // SAFETY: the range was just checked to lie inside the mapping, which we own.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(addr), bytes.len())
        };
    }

    pub fn write_u64(&mut self, addr: u64, value: u64) {
        self.write(addr, &value.to_le_bytes());
    }

    /// Registers the mapping as memory slot 0 at guest-physical 0.
    pub fn register(&self, vm: &VmFd) {
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: self.size as u64,
            userspace_addr: self.ptr.as_ptr() as u64,
        };
        // SAFETY: the mapping outlives the VM in every test (the VM is dropped first).
        unsafe { vm.set_user_memory_region(region) }.expect("set memory region");
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size) };
    }
}

/// A VM; `ram` is declared last so it is unmapped after the VM is gone.
pub struct TestVm {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub ram: GuestRam,
}

impl TestVm {
    /// A VM with [`RAM_SIZE`] of guest RAM at 0 and, if asked, the in-kernel irqchip.
    pub fn new(irqchip: bool) -> Self {
        Self::with_ram(irqchip, RAM_SIZE)
    }

    /// A VM with `ram_size` bytes of guest RAM at 0; everything above is MMIO.
    pub fn with_ram(irqchip: bool, ram_size: usize) -> Self {
        let kvm = kvm();
        let vm = kvm.create_vm().expect("create vm");
        vm.set_tss_address(0xfffb_d000).expect("set tss address");
        if irqchip {
            vm.create_irq_chip().expect("create irqchip");
        }
        let ram = GuestRam::new(ram_size);
        ram.register(&vm);
        TestVm { kvm, vm, ram }
    }

    /// Creates a vCPU that starts in real mode at 0000:`rip` (CS base 0).
    pub fn real_mode_vcpu(&self, index: u32, rip: u64) -> Vcpu {
        let vcpu = Vcpu::new(&self.vm, index).expect("create vcpu");
        let mut sregs = vcpu.fd().get_sregs().expect("get sregs");
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.fd().set_sregs(&sregs).expect("set sregs");
        let regs = kvm_bindings::kvm_regs {
            rip,
            rflags: 2,
            ..Default::default()
        };
        vcpu.fd().set_regs(&regs).expect("set regs");
        vcpu
    }
}

/// One guest access seen by [`Recorder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    PioRead(u16, usize),
    PioWrite(u16, Vec<u8>),
    MmioRead(u64, usize),
    MmioWrite(u64, Vec<u8>),
}

/// Records accesses, answers reads with a fixed byte, and sends every access on a channel.
pub struct Recorder {
    pub accesses: Mutex<Vec<Access>>,
    pio_answer: u8,
    mmio_answer: u8,
    events: Mutex<Sender<Access>>,
}

impl Recorder {
    pub fn new(pio_answer: u8, mmio_answer: u8) -> (Arc<Self>, Receiver<Access>) {
        let (tx, rx) = channel();
        let recorder = Recorder {
            accesses: Mutex::new(Vec::new()),
            pio_answer,
            mmio_answer,
            events: Mutex::new(tx),
        };
        (Arc::new(recorder), rx)
    }

    pub fn accesses(&self) -> Vec<Access> {
        self.accesses.lock().expect("lock").clone()
    }

    fn record(&self, access: Access) {
        self.accesses.lock().expect("lock").push(access.clone());
        // The receiver may be gone; that is fine.
        let _ = self.events.lock().expect("lock").send(access);
    }
}

impl VcpuExitHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        data.fill(self.pio_answer);
        self.record(Access::PioRead(port, data.len()));
    }
    fn pio_write(&self, port: u16, data: &[u8]) {
        self.record(Access::PioWrite(port, data.to_vec()));
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        data.fill(self.mmio_answer);
        self.record(Access::MmioRead(addr, data.len()));
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.record(Access::MmioWrite(addr, data.to_vec()));
    }
}

/// An `on_exit` callback that sends (index, reason) on a channel.
pub fn exit_channel() -> (OnVcpuExit, Receiver<(u32, VcpuStopReason)>) {
    let (tx, rx) = channel();
    let on_exit: OnVcpuExit = Box::new(move |index, reason| {
        let _ = tx.send((index, reason));
    });
    (on_exit, rx)
}

/// Fresh exit statistics for one test VM.
pub fn stats() -> Arc<ExitStats> {
    Arc::new(ExitStats::new())
}
