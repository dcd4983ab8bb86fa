//! A built VM and its run: start the vCPU threads, run the event loop until something stops
//! the VM, then stop and join every vCPU thread and report what happened.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use petrel_memory::GuestMemoryMmap;
use petrel_vcpu::exit_stats::ExitStats;
use petrel_vcpu::thread::{spawn_vcpu, VcpuHandle};
use petrel_vcpu::vcpu::Vcpu;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::LegacyDevices;
use crate::config::VmConfig;
use crate::device_manager::VirtioDevices;
use crate::event_loop::{ConsoleInput, MetricsRequests, StopEvents};
use crate::exit_handler::BusExitHandler;
use crate::kvm_vm::KvmVm;
use crate::lifecycle::{LifecycleError, ResetSource, StopLatch, StopReason};
use crate::metrics::{metrics_json, write_metrics};
use crate::signals::{install_metrics_signal_handler, install_stop_signal_handlers, SignalError};
use crate::stats::VmStats;

/// The subscriber type of petrel's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors while running a VM.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The event loop could not be created or failed.
    #[error("event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    /// An eventfd could not be duplicated for the event loop.
    #[error("cannot duplicate an eventfd for the event loop")]
    CloneEventFd(#[source] std::io::Error),
    /// The stop latch could not be created.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// Stop signals could not be handled.
    #[error(transparent)]
    Signals(#[from] SignalError),
    /// A vCPU thread could not be started.
    #[error("cannot start vCPU {index}")]
    StartVcpu {
        /// Which vCPU.
        index: u32,
        /// What failed.
        #[source]
        source: petrel_vcpu::VcpuError,
    },
}

/// How the run reports on itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Whether host stdin feeds the serial console.
    pub console_takes_stdin: bool,
    /// Print the exit-statistics table at shutdown.
    pub exit_stats: bool,
    /// Write metrics here at exit and on SIGUSR1.
    pub metrics: Option<PathBuf>,
}

impl RunOptions {
    /// The run options a configuration asks for.
    pub fn from_config(config: &VmConfig) -> Self {
        Self {
            console_takes_stdin: config.console.takes_stdin(),
            exit_stats: config.exit_stats,
            metrics: config.metrics.clone(),
        }
    }
}

/// How a run ended, with what it measured.
pub struct RunReport {
    /// Why the VM stopped.
    pub reason: StopReason,
    /// The `--exit-stats` table, when asked for.
    pub exit_stats_table: Option<String>,
}

/// A VM that is built and ready to run.
///
/// Fields drop in declaration order: the vCPUs and the KVM VM go before the guest memory they
/// map.
pub struct Vmm {
    vcpus: Vec<Vcpu>,
    devices: LegacyDevices,
    virtio: VirtioDevices,
    exit_stats: Arc<ExitStats>,
    options: RunOptions,
    vm: KvmVm,
    memory: GuestMemoryMmap,
}

impl Vmm {
    pub(crate) fn new(
        vm: KvmVm,
        memory: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        devices: LegacyDevices,
        virtio: VirtioDevices,
        exit_stats: Arc<ExitStats>,
        options: RunOptions,
    ) -> Self {
        Self {
            vcpus,
            devices,
            virtio,
            exit_stats,
            options,
            vm,
            memory,
        }
    }

    /// Guest memory, for inspection.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The KVM VM.
    pub fn vm(&self) -> &KvmVm {
        &self.vm
    }

    /// Runs the VM until the guest stops it, a stop signal arrives, or a vCPU fails; every vCPU
    /// thread has stopped when this returns.
    pub fn run(mut self) -> Result<RunReport, RunError> {
        let latch = Arc::new(StopLatch::new()?);
        let signal_event = install_stop_signal_handlers()?;
        let mut event_manager: EventManager<Subscriber> =
            EventManager::new().map_err(RunError::EventLoop)?;

        let stats = VmStats {
            exits: self.exit_stats.clone(),
            pio: Arc::new(std::mem::take(&mut self.devices.pio_bus)),
            mmio: Arc::new(std::mem::take(&mut self.virtio.mmio_bus)),
            boot_time: self.devices.boot_time.clone(),
            disks: self.virtio.disks.clone(),
            nets: self.virtio.nets.clone(),
            vsock: self.virtio.vsock.clone(),
        };
        let guest_lines = vec![
            (
                clone_event(&self.devices.reset)?,
                StopReason::GuestReset(ResetSource::I8042),
            ),
            (
                clone_event(&self.devices.acpi_reset)?,
                StopReason::GuestReset(ResetSource::AcpiResetRegister),
            ),
            (
                clone_event(&self.devices.acpi_power_off)?,
                StopReason::GuestPowerOff,
            ),
        ];
        event_manager.add_subscriber(Arc::new(Mutex::new(StopEvents::new(
            latch.clone(),
            guest_lines,
            Some(signal_event),
        ))));
        if self.options.console_takes_stdin {
            event_manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
                self.devices.serial.clone(),
                libc::STDIN_FILENO,
                clone_event(&self.devices.serial_input_drained)?,
            ))));
        }
        for subscriber in self.virtio.subscribers.drain(..) {
            event_manager.add_subscriber(subscriber);
        }
        if let Some(path) = &self.options.metrics {
            let requests = install_metrics_signal_handler()?;
            event_manager.add_subscriber(Arc::new(Mutex::new(MetricsRequests::new(
                requests,
                stats.clone(),
                path.clone(),
            ))));
        }

        let handler = Arc::new(BusExitHandler::new(stats.pio.clone(), stats.mmio.clone()));
        let handles = match self.start_vcpus(handler, &latch) {
            Ok(handles) => handles,
            Err((error, started)) => {
                stop_vcpus(started);
                return Err(error);
            }
        };

        let reason = loop {
            if let Some(reason) = latch.reason() {
                break reason;
            }
            if let Err(e) = event_manager.run() {
                break StopReason::VmmError(format!("event loop failed: {e:?}"));
            }
        };
        stop_vcpus(handles);
        // Output the guest wrote without a newline is still in the UART's buffer.
        self.devices
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush_output();
        Ok(self.report(&stats, reason))
    }

    /// Writes the metrics file and builds the exit-statistics table, as asked.
    fn report(&self, stats: &VmStats, reason: StopReason) -> RunReport {
        let snapshot = stats.snapshot();
        if let Some(boot_time) = snapshot.boot_time {
            log::debug!("boot-timer reading: {boot_time}");
        }
        if let Some(path) = &self.options.metrics {
            if let Err(e) = write_metrics(path, &metrics_json(&snapshot, Some(&reason))) {
                log::error!("{e}");
            }
        }
        RunReport {
            exit_stats_table: self.options.exit_stats.then(|| snapshot.table()),
            reason,
        }
    }

    fn start_vcpus(
        &mut self,
        handler: Arc<BusExitHandler>,
        latch: &Arc<StopLatch>,
    ) -> Result<Vec<VcpuHandle>, (RunError, Vec<VcpuHandle>)> {
        let mut handles = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus.drain(..) {
            let index = vcpu.index();
            let latch = latch.clone();
            let on_exit = Box::new(move |index, reason| {
                if let Some(reason) = StopReason::from_vcpu(index, reason) {
                    latch.report(reason);
                }
            });
            match spawn_vcpu(vcpu, handler.clone(), self.exit_stats.clone(), on_exit) {
                Ok(handle) => handles.push(handle),
                Err(source) => return Err((RunError::StartVcpu { index, source }, handles)),
            }
        }
        Ok(handles)
    }
}

fn clone_event(event: &EventFd) -> Result<EventFd, RunError> {
    event.try_clone().map_err(RunError::CloneEventFd)
}

/// Asks every vCPU thread to stop, then waits for all of them.
fn stop_vcpus(handles: Vec<VcpuHandle>) {
    for handle in &handles {
        handle.request_stop();
    }
    for handle in handles {
        if let Err(e) = handle.join() {
            log::error!("{e}");
        }
    }
}
