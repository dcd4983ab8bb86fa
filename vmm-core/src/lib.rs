//! petrel-core: the VMM itself — configuration, the VM builder, the event loop and the VM
//! lifecycle — built from petrel's leaf crates (`petrel-memory`, `petrel-boot`,
//! `petrel-vcpu`, `petrel-devices`).
//!
//! What another program gets from this crate:
//! - [`VmConfig`]: plain, serde-ready configuration with [`VmConfig::validate`], checked
//!   before anything is built;
//! - [`build_vm`]: the builder, a linear recipe of small `create_*`/`attach_*`/`configure_*`
//!   steps that ends in a [`Vmm`];
//! - [`Vmm::run`]: runs the vCPU threads and the event loop until the guest resets or powers
//!   off, a stop signal arrives, or a vCPU fails, and returns a [`RunReport`] with the
//!   [`StopReason`], which maps to petrel's documented exit status with
//!   [`StopReason::exit_code`];
//! - observability: VM-exit statistics by reason and by device ([`stats`]), a
//!   Firecracker-compatible metrics file ([`metrics`]) and the boot timer.
//!
//! ```no_run
//! use petrel_core::{build_vm, VmConfig};
//!
//! let mut config = VmConfig::new("/path/to/vmlinux");
//! config.cmdline = "console=ttyS0 reboot=k panic=-1".to_string();
//! let report = build_vm(&config)?.run()?;
//! println!("{}", report.reason);
//! std::process::exit(report.reason.exit_code());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod builder;
pub mod config;
pub mod console;
pub mod device_manager;
pub mod disk_config;
pub mod event_loop;
pub mod exit_handler;
pub mod flag_options;
pub mod irq;
pub mod kvm_vm;
pub mod lifecycle;
pub mod memory_size;
pub mod metrics;
pub mod net_config;
pub mod signals;
pub mod stats;
pub mod vmm;
pub mod vsock_config;

use std::sync::OnceLock;
use std::time::Instant;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records now as the moment the process started; the binary calls this first thing in
/// `main` so the boot timer can report time since process start.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// The moment recorded by [`mark_process_start`] (or the first call to this function).
pub fn process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
}

pub use builder::{build_vm, BuildError};
pub use config::{ConfigError, VmConfig};
pub use console::ConsoleConfig;
pub use lifecycle::StopReason;
pub use memory_size::MemorySize;
pub use vmm::{RunError, RunReport, Vmm};
