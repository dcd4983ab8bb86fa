//! A built VM and its run: start the vCPU threads, run the event loop until something stops
//! the VM, then stop and join every vCPU thread.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use petrel_devices::bus::Bus;
use petrel_memory::GuestMemoryMmap;
use petrel_vcpu::thread::{spawn_vcpu, VcpuHandle};
use petrel_vcpu::vcpu::Vcpu;

use crate::builder::LegacyDevices;
use crate::event_loop::{ConsoleInput, StopEvents};
use crate::exit_handler::BusExitHandler;
use crate::kvm_vm::KvmVm;
use crate::lifecycle::{LifecycleError, StopLatch, StopReason};
use crate::signals::{install_stop_signal_handlers, SignalError};

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

/// A VM that is built and ready to run.
///
/// Fields drop in declaration order: the vCPUs and the KVM VM go before the guest memory they
/// map.
pub struct Vmm {
    vcpus: Vec<Vcpu>,
    devices: LegacyDevices,
    console_takes_stdin: bool,
    vm: KvmVm,
    memory: GuestMemoryMmap,
}

impl Vmm {
    pub(crate) fn new(
        vm: KvmVm,
        memory: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        devices: LegacyDevices,
        console_takes_stdin: bool,
    ) -> Self {
        Self {
            vcpus,
            devices,
            console_takes_stdin,
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
    pub fn run(mut self) -> Result<StopReason, RunError> {
        let latch = Arc::new(StopLatch::new()?);
        let signal_event = install_stop_signal_handlers()?;
        let mut event_manager: EventManager<Subscriber> =
            EventManager::new().map_err(RunError::EventLoop)?;

        let reset = self
            .devices
            .reset
            .try_clone()
            .map_err(RunError::CloneEventFd)?;
        event_manager.add_subscriber(Arc::new(Mutex::new(StopEvents::new(
            latch.clone(),
            reset,
            Some(signal_event),
        ))));
        if self.console_takes_stdin {
            let drained = self
                .devices
                .serial_input_drained
                .try_clone()
                .map_err(RunError::CloneEventFd)?;
            event_manager.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(
                self.devices.serial.clone(),
                libc::STDIN_FILENO,
                drained,
            ))));
        }

        let pio_bus = std::mem::take(&mut self.devices.pio_bus);
        let handler = Arc::new(BusExitHandler::new(Arc::new(pio_bus), Arc::new(Bus::new())));
        let handles = self.start_vcpus(handler, &latch);
        let handles = match handles {
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
        Ok(reason)
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
            match spawn_vcpu(vcpu, handler.clone(), on_exit) {
                Ok(handle) => handles.push(handle),
                Err(source) => return Err((RunError::StartVcpu { index, source }, handles)),
            }
        }
        Ok(handles)
    }
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
