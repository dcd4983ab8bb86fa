//! The VM builder: a linear recipe of small steps, from a validated [`VmConfig`] to a
//! [`Vmm`] whose vCPUs are ready to run.
//!
//! The order matters and is the same as on real hardware bring-up: KVM VM and interrupt
//! controllers → guest RAM → vCPUs (which need the in-kernel irqchip) → devices → kernel and
//! boot structures in RAM → vCPU registers pointing at the kernel.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use petrel_boot::acpi::{write_acpi_tables, AcpiConfig, AcpiError, AcpiPmRegisters, LegacySerial};
use petrel_boot::layout::BOOT_STACK_POINTER;
use petrel_boot::zero_page::{set_acpi_rsdp, ZeroPageError};
use petrel_boot::{load_linux_boot, BootEntry, BootError};
use petrel_devices::bus::{Bus, BusError};
use petrel_devices::legacy::absent::{AbsentDevice, ABSENT_PIO_RANGES};
use petrel_devices::legacy::acpi_pm::{
    AcpiPmDevice, ACPI_PM_PORT, ACPI_PM_PORT_LEN, ACPI_RESET_PORT, ACPI_RESET_VALUE,
    ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT,
};
use petrel_devices::legacy::boot_timer::{
    BootTime, BootTimerDevice, BOOT_TIMER_PORT, BOOT_TIMER_PORT_LEN,
};
use petrel_devices::legacy::i8042::{I8042Device, I8042_PORT, I8042_PORT_LEN};
use petrel_devices::legacy::serial::{SerialDevice, COM1_IRQ, COM1_PORT, SERIAL_PORT_LEN};
use petrel_memory::guest_ram::{create_guest_memory, GuestRamError};
use petrel_memory::layout::MemoryLayout;
use petrel_memory::GuestMemoryMmap;
use petrel_vcpu::cpu_features::{parse_cpu_features, CpuFeatureChange};
use petrel_vcpu::exit_stats::ExitStats;
use petrel_vcpu::setup::EntryState;
use petrel_vcpu::vcpu::Vcpu;
use petrel_vcpu::VcpuError;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{ConfigError, VmConfig};
use crate::console::ConsoleError;
use crate::device_manager::{DeviceManagerError, VirtioDevices};
use crate::irq::{IrqError, IrqfdLine};
use crate::kvm_vm::{KvmVm, KvmVmError};
use crate::process_start;
use crate::vmm::{RunOptions, Vmm};

/// Errors from building a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The console output could not be opened.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A kernel or initrd file could not be opened.
    #[error("cannot open {what} {path}")]
    OpenFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Creating or setting up the KVM VM failed.
    #[error(transparent)]
    Kvm(#[from] KvmVmError),
    /// Guest RAM could not be created.
    #[error("cannot create guest memory")]
    GuestRam(#[source] GuestRamError),
    /// A vCPU could not be created or configured.
    #[error("cannot set up vCPU {index}")]
    Vcpu {
        /// Which vCPU.
        index: u32,
        /// What failed.
        #[source]
        source: VcpuError,
    },
    /// A device's interrupt line could not be set up.
    #[error(transparent)]
    Irq(#[from] IrqError),
    /// A device could not be placed on a bus.
    #[error("cannot place {what} on the bus")]
    Bus {
        /// The device.
        what: &'static str,
        /// Why.
        #[source]
        source: BusError,
    },
    /// An eventfd for a device could not be created.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] io::Error),
    /// A virtio device could not be registered.
    #[error(transparent)]
    Virtio(#[from] DeviceManagerError),
    /// The ACPI tables could not be written.
    #[error("cannot describe the machine in ACPI tables")]
    Acpi(#[source] AcpiError),
    /// The RSDP address could not be written into the zero page.
    #[error("cannot point the kernel at the ACPI tables")]
    AcpiPointer(#[source] ZeroPageError),
    /// The kernel, initrd or command line could not be loaded.
    #[error("cannot boot {path}")]
    Boot {
        /// The kernel path.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: BootError,
    },
}

impl BuildError {
    /// Whether the error comes from the user's configuration rather than from the host.
    pub fn is_config_error(&self) -> bool {
        matches!(self, BuildError::Config(_))
    }
}

/// The legacy devices, and the handles the event loop needs to drive them.
pub struct LegacyDevices {
    /// The port-I/O bus with COM1, the i8042 and the absent ports.
    pub pio_bus: Bus,
    /// The serial console.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Signalled when the serial receive FIFO is drained.
    pub serial_input_drained: EventFd,
    /// Signalled when the guest resets through the i8042.
    pub reset: EventFd,
    /// Signalled when the guest enters S5 through the ACPI sleep control register.
    pub acpi_power_off: EventFd,
    /// Signalled when the guest writes the ACPI reset register.
    pub acpi_reset: EventFd,
    /// The boot-timer reading, when the boot timer is attached.
    pub boot_time: Option<Arc<OnceLock<BootTime>>>,
}

/// Builds a VM from `config`, ready for [`Vmm::run`].
pub fn build_vm(config: &VmConfig) -> Result<Vmm, BuildError> {
    config.validate()?;
    let layout = config.memory_layout()?;
    let cpu_features = parse_cpu_features(&config.cpu_features).map_err(ConfigError::from)?;
    let console_output = config.console.open_output()?;
    let mut kernel = open_file("kernel", &config.kernel)?;
    let mut initrd = config
        .initrd
        .as_deref()
        .map(|path| open_file("initrd", path))
        .transpose()?;

    let exit_stats = Arc::new(ExitStats::new());
    let vm = KvmVm::create()?;
    vm.check_vcpu_count(config.vcpus)?;
    log::debug!("created the KVM VM with its irqchip and PIT");
    let memory = create_memory(&vm, &layout)?;
    log::debug!("registered guest memory");
    let mut vcpus = create_vcpus(&vm, config.vcpus)?;
    log::debug!("created {} vCPUs", vcpus.len());
    let mut devices = attach_legacy_devices(&vm, console_output)?;
    if config.boot_timer {
        devices.boot_time = Some(attach_boot_timer(&mut devices.pio_bus, &exit_stats)?);
    }
    log::debug!("attached the legacy devices");
    let mut virtio = VirtioDevices::new()?;
    virtio.attach_disks(&vm, &memory, &config.disks)?;
    virtio.attach_nets(&vm, &memory, &config.nets)?;
    if let Some(vsock) = &config.vsock {
        virtio.attach_vsock(&vm, &memory, vsock)?;
    }
    if config.rng {
        virtio.attach_rng(&vm, &memory)?;
    }
    let cmdline = kernel_cmdline(config, &virtio);
    let boot = load_linux_boot(&memory, &layout, &mut kernel, initrd.as_mut(), &cmdline).map_err(
        |source| BuildError::Boot {
            path: config.kernel.clone(),
            source,
        },
    )?;
    log_boot_entry(&boot);
    write_acpi_tables_for(&memory, &boot, config.vcpus, &virtio)?;
    configure_vcpus(&vm, &mut vcpus, &cpu_features, &boot)?;
    log::debug!("configured the vCPUs");
    Ok(Vmm::new(
        vm,
        memory,
        vcpus,
        devices,
        virtio,
        exit_stats,
        RunOptions::from_config(config),
    ))
}

/// The command line the kernel gets: the user's, plus `virtio_mmio.device=` entries when
/// asked for.
fn kernel_cmdline(config: &VmConfig, virtio: &VirtioDevices) -> String {
    let mut cmdline = config.cmdline.clone();
    if config.virtio_cmdline {
        for entry in &virtio.cmdline_entries {
            cmdline.push(' ');
            cmdline.push_str(entry);
        }
    }
    cmdline
}

fn open_file(what: &'static str, path: &Path) -> Result<File, BuildError> {
    File::open(path).map_err(|source| BuildError::OpenFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Creates guest RAM for `layout` and registers it with KVM.
fn create_memory(vm: &KvmVm, layout: &MemoryLayout) -> Result<GuestMemoryMmap, BuildError> {
    let memory = create_guest_memory(layout).map_err(BuildError::GuestRam)?;
    vm.register_memory(&memory)?;
    Ok(memory)
}

/// Creates `count` vCPUs; the in-kernel irqchip already exists, as KVM requires.
fn create_vcpus(vm: &KvmVm, count: u32) -> Result<Vec<Vcpu>, BuildError> {
    (0..count)
        .map(|index| Vcpu::new(vm.fd(), index).map_err(|source| BuildError::Vcpu { index, source }))
        .collect()
}

/// Places COM1, the i8042 and the absent legacy ports on a new port-I/O bus.
fn attach_legacy_devices(
    vm: &KvmVm,
    console_output: Box<dyn io::Write + Send>,
) -> Result<LegacyDevices, BuildError> {
    let mut pio_bus = Bus::new();

    let serial_input_drained =
        EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::EventFd("the serial console", e))?;
    let drained_for_device = serial_input_drained
        .try_clone()
        .map_err(|e| BuildError::EventFd("the serial console", e))?;
    let irq = Arc::new(IrqfdLine::register(vm, COM1_IRQ)?);
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        irq,
        console_output,
        Some(drained_for_device),
    )));
    pio_bus
        .insert_named(
            serial.clone(),
            u64::from(COM1_PORT),
            u64::from(SERIAL_PORT_LEN),
            "COM1",
        )
        .map_err(|source| BuildError::Bus {
            what: "COM1",
            source,
        })?;

    let reset = EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::EventFd("the i8042", e))?;
    let reset_for_device = reset
        .try_clone()
        .map_err(|e| BuildError::EventFd("the i8042", e))?;
    let i8042 = Arc::new(Mutex::new(I8042Device::new(reset_for_device)));
    pio_bus
        .insert_named(
            i8042,
            u64::from(I8042_PORT),
            u64::from(I8042_PORT_LEN),
            "i8042",
        )
        .map_err(|source| BuildError::Bus {
            what: "the i8042",
            source,
        })?;

    for (base, len, what) in ABSENT_PIO_RANGES {
        pio_bus
            .insert_named(
                Arc::new(Mutex::new(AbsentDevice)),
                u64::from(*base),
                u64::from(*len),
                what,
            )
            .map_err(|source| BuildError::Bus { what, source })?;
    }

    let acpi_power_off =
        EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::EventFd("ACPI power-off", e))?;
    let acpi_reset =
        EventFd::new(EFD_NONBLOCK).map_err(|e| BuildError::EventFd("ACPI reset", e))?;
    let pm = AcpiPmDevice::new(
        acpi_power_off
            .try_clone()
            .map_err(|e| BuildError::EventFd("ACPI power-off", e))?,
        acpi_reset
            .try_clone()
            .map_err(|e| BuildError::EventFd("ACPI reset", e))?,
    );
    pio_bus
        .insert_named(
            Arc::new(Mutex::new(pm)),
            u64::from(ACPI_PM_PORT),
            u64::from(ACPI_PM_PORT_LEN),
            "ACPI PM",
        )
        .map_err(|source| BuildError::Bus {
            what: "the ACPI PM registers",
            source,
        })?;

    Ok(LegacyDevices {
        pio_bus,
        serial,
        serial_input_drained,
        reset,
        acpi_power_off,
        acpi_reset,
        boot_time: None,
    })
}

/// Places the boot-timer device (port 0x440) on the bus; returns where its reading appears.
fn attach_boot_timer(
    pio_bus: &mut Bus,
    exit_stats: &ExitStats,
) -> Result<Arc<OnceLock<BootTime>>, BuildError> {
    let timer = BootTimerDevice::new(process_start(), exit_stats.first_run_cell());
    let reading = timer.boot_time_cell();
    pio_bus
        .insert_named(
            Arc::new(Mutex::new(timer)),
            u64::from(BOOT_TIMER_PORT),
            u64::from(BOOT_TIMER_PORT_LEN),
            "boot-timer",
        )
        .map_err(|source| BuildError::Bus {
            what: "the boot timer",
            source,
        })?;
    Ok(reading)
}

fn log_boot_entry(boot: &BootEntry) {
    log::info!(
        "kernel {:?} loaded at {:#x}..{:#x}, entry {:#x}",
        boot.kernel.format,
        boot.kernel.start,
        boot.kernel.end,
        boot.entry_point
    );
    if let Some(initrd) = &boot.initrd {
        log::info!("initrd at {:#x}, {} bytes", initrd.addr, initrd.size);
    }
}

/// Writes the ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) describing `vcpus` CPUs and the
/// legacy devices, and points the zero page at them.
fn write_acpi_tables_for(
    memory: &GuestMemoryMmap,
    boot: &BootEntry,
    vcpus: u32,
    virtio: &VirtioDevices,
) -> Result<(), BuildError> {
    let config = AcpiConfig {
        vcpus,
        pm: AcpiPmRegisters {
            sleep_control: ACPI_SLEEP_CONTROL_PORT,
            sleep_status: ACPI_SLEEP_STATUS_PORT,
            reset: ACPI_RESET_PORT,
            reset_value: ACPI_RESET_VALUE,
        },
        i8042: true,
        serial_ports: vec![LegacySerial {
            port: COM1_PORT,
            irq: COM1_IRQ,
        }],
        virtio_mmio: virtio.acpi.clone(),
    };
    let rsdp = write_acpi_tables(memory, &config).map_err(BuildError::Acpi)?;
    set_acpi_rsdp(memory, boot.boot_params, rsdp).map_err(BuildError::AcpiPointer)?;
    log::debug!("ACPI tables for {vcpus} vCPUs, RSDP at {rsdp:#x}");
    Ok(())
}

/// Gives every vCPU its CPUID, MSRs and LAPIC setup; vCPU 0 also gets the kernel entry state.
fn configure_vcpus(
    vm: &KvmVm,
    vcpus: &mut [Vcpu],
    cpu_features: &[CpuFeatureChange],
    boot: &BootEntry,
) -> Result<(), BuildError> {
    let supported_cpuid = vm.supported_cpuid()?;
    let tables = &boot.cpu_tables;
    let entry = EntryState {
        rip: boot.entry_point,
        rsi: boot.boot_params,
        rsp: BOOT_STACK_POINTER,
        page_table_root: tables.page_table_root,
        gdt_base: tables.gdt_base,
        gdt_entries: tables.gdt_entries,
        idt_base: tables.idt_base,
        idt_limit: tables.idt_limit,
    };
    let count = vcpus.len() as u32;
    for (index, vcpu) in vcpus.iter_mut().enumerate() {
        let entry = (index == 0).then_some(&entry);
        vcpu.configure(&supported_cpuid, count, cpu_features, entry)
            .map_err(|source| BuildError::Vcpu {
                index: index as u32,
                source,
            })?;
    }
    Ok(())
}
