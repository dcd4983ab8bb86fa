//! petrel-vcpu: x86-64 KVM vCPU setup and a per-vCPU run-loop thread.
//!
//! What another VMM gets from this crate, without any of petrel's devices or boot code:
//!
//! - [`cpu_features`]: a table of named CPUID feature bits and a parser for
//!   `-avx512f,+cx16`-style lists ([`parse_cpu_features`]).
//! - [`cpuid`]: [`build_cpuid`], a pure function from KVM's supported CPUID to one vCPU's
//!   CPUID (APIC id, topology, hypervisor signature, hidden features).
//! - [`setup`]: boot MSRs, FPU, LAPIC LINT0/LINT1, and 64-bit long-mode entry from plain
//!   data ([`EntryState`]).
//! - [`vcpu`]: [`Vcpu`], which owns a `VcpuFd` and applies all of the above
//!   ([`Vcpu::configure`]).
//! - [`exit`]: the [`VcpuExitHandler`] trait the VMM implements for port and MMIO accesses,
//!   and [`handle_exit`], the plain function deciding what each KVM exit means.
//! - [`thread`]: [`spawn_vcpu`], one thread per vCPU with a [`VcpuHandle`] to pause, resume
//!   and stop it; stopping kicks a vCPU out of `KVM_RUN` with a signal ([`kick`]).
//! - [`exit_stats`]: [`ExitStats`], always-on lock-free counts and handling times per exit
//!   reason, shared by all vCPU threads, and the instant of the first `KVM_RUN`.
//!
//! The vCPU knows no device: the VMM routes accesses in its handler. The run loop stops on
//! `hlt` (only seen without an in-kernel irqchip), triple fault, the guest's system events,
//! KVM failures and unexpected exits, and reports the [`VcpuStopReason`] once, through the
//! `on_exit` callback, and again from [`VcpuHandle::join`].
//!
//! # Example
//!
//! Create a VM with the in-kernel irqchip, configure the boot vCPU for a 64-bit entry point,
//! run it with a handler, and stop it.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
//! use kvm_ioctls::Kvm;
//! use petrel_vcpu::{parse_cpu_features, spawn_vcpu, EntryState, ExitStats, Vcpu, VcpuExitHandler};
//!
//! /// Routes the guest's accesses to the VMM's devices (here: a console on port 0x3f8).
//! struct Devices;
//!
//! impl VcpuExitHandler for Devices {
//!     fn pio_read(&self, _port: u16, data: &mut [u8]) {
//!         data.fill(0xff); // nothing there
//!     }
//!     fn pio_write(&self, port: u16, data: &[u8]) {
//!         if port == 0x3f8 {
//!             print!("{}", String::from_utf8_lossy(data));
//!         }
//!     }
//!     fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
//!         data.fill(0xff);
//!     }
//!     fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let kvm = Kvm::new()?;
//! let vm = kvm.create_vm()?;
//! vm.create_irq_chip()?; // before any vCPU
//! // ... register guest memory, load a kernel, write the GDT, IDT and page tables ...
//!
//! let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
//! let changes = parse_cpu_features("-avx512f")?;
//! let entry = EntryState {
//!     rip: 0x100_0000,
//!     rsi: 0x7000,
//!     rsp: 0x8ff0,
//!     page_table_root: 0x9000,
//!     gdt_base: 0x500,
//!     gdt_entries: [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff],
//!     idt_base: 0x520,
//!     idt_limit: 7,
//! };
//! let mut vcpu = Vcpu::new(&vm, 0)?;
//! vcpu.configure(&supported, 1, &changes, Some(&entry))?;
//!
//! let stats = Arc::new(ExitStats::new()); // one for all vCPUs of the VM
//! let handle = spawn_vcpu(
//!     vcpu,
//!     Arc::new(Devices),
//!     stats.clone(),
//!     Box::new(|index, reason| eprintln!("vcpu {index} stopped: {reason}")),
//! )?;
//! // ... the guest runs; later, from any thread:
//! handle.request_stop();
//! let reason = handle.join()?;
//! println!("{reason}");
//! for exit in stats.snapshot().iter().filter(|e| e.count > 0) {
//!     println!("{:<14} {:>8} exits {:>10} ns", exit.name, exit.count, exit.total_ns);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Process-wide effects: the first [`spawn_vcpu`] installs a handler for the real-time signal
//! [`kick::kick_signal`] (`SIGRTMIN()`), which the embedding program must leave alone.

pub mod cpu_features;
pub mod cpuid;
pub mod exit;
pub mod exit_stats;
pub mod kick;
pub mod registers;
pub mod setup;
pub mod thread;
pub mod vcpu;

pub use kvm_bindings;
pub use kvm_ioctls;

pub use cpu_features::{parse_cpu_features, CpuFeature, CpuFeatureChange, CpuFeatureError};
pub use cpuid::{build_cpuid, CpuidError};
pub use exit::{handle_exit, ExitAction, VcpuExitHandler, VcpuFailure, VcpuStopReason};
pub use exit_stats::{ExitKind, ExitStat, ExitStats};
pub use registers::RegisterDump;
pub use setup::{EntryState, SetupError};
pub use thread::{spawn_vcpu, OnVcpuExit, VcpuHandle, VcpuState};
pub use vcpu::{Vcpu, VcpuError};
