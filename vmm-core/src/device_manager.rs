//! The one place a virtio device is registered: its MMIO window and interrupt line from the
//! resource allocator, the virtio-mmio transport on the MMIO bus, one ioeventfd per queue and
//! an irqfd with KVM, its event-loop subscription, and its description for the guest (an ACPI
//! DSDT node, and optionally a `virtio_mmio.device=` command-line entry).

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use petrel_boot::acpi::{IrqTrigger, VirtioMmioDevice};
use petrel_devices::bus::{Bus, BusError};
use petrel_devices::virtio::block::{Block, BlockConfig, BlockError};
use petrel_devices::virtio::mmio::{
    kernel_cmdline_entry, queue_notify_address, MmioError, MmioTransport, VIRTIO_MMIO_WINDOW,
};
use petrel_devices::virtio::net::{Net, NetError, Tap, TapError};
use petrel_devices::virtio::rng::{Rng, RngError};
use petrel_devices::virtio::vsock::{Vsock, VsockConfig as VsockDeviceConfig, VsockError};
use petrel_devices::virtio::VirtioDevice;
use petrel_memory::allocator::{AllocatorError, ResourceAllocator};
use petrel_memory::GuestMemoryMmap;

use crate::disk_config::DiskConfig;
use crate::irq::{IrqError, IrqfdLine};
use crate::kvm_vm::KvmVm;
use crate::net_config::NetConfig;
use crate::stats::{DiskStats, NetHandle};
use crate::vmm::Subscriber;
use crate::vsock_config::VsockConfig;

/// Errors registering a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    /// The resource allocator could not be created.
    #[error("cannot set up MMIO and IRQ allocation")]
    Allocator(#[source] AllocatorError),
    /// No MMIO window or interrupt line is left.
    #[error("no room for another virtio device")]
    Exhausted(#[source] AllocatorError),
    /// The transport could not be created.
    #[error("cannot create the virtio-mmio transport")]
    Transport(#[source] MmioError),
    /// The interrupt line could not be set up.
    #[error(transparent)]
    Irq(#[from] IrqError),
    /// KVM refused a queue's ioeventfd.
    #[error("cannot register the notification eventfd of queue {queue}")]
    IoEvent {
        /// The queue index.
        queue: u16,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The MMIO window overlaps something on the bus.
    #[error("cannot place the device on the MMIO bus")]
    Bus(#[source] BusError),
    /// A disk could not be opened.
    #[error("cannot open disk {path}")]
    Disk {
        /// The image path.
        path: String,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// A TAP device could not be opened or created.
    #[error("cannot open TAP {tap}")]
    Tap {
        /// The interface name.
        tap: String,
        /// Why.
        #[source]
        source: TapError,
    },
    /// A network device could not be created.
    #[error("cannot create the network device for TAP {tap}")]
    Net {
        /// The interface name.
        tap: String,
        /// Why.
        #[source]
        source: NetError,
    },
    /// The vsock device could not be created (its Unix socket, usually).
    #[error("cannot create the vsock device")]
    Vsock(#[source] VsockError),
    /// The entropy device could not be created.
    #[error("cannot create the entropy device")]
    Rng(#[source] RngError),
}

/// Registers virtio-mmio devices and remembers how to describe them to the guest.
pub struct VirtioDevices {
    allocator: ResourceAllocator,
    /// The MMIO bus the transports sit on.
    pub mmio_bus: Bus,
    /// Event-loop subscribers the devices need (their host-side I/O).
    pub subscribers: Vec<Subscriber>,
    /// DSDT descriptions, one per device, in registration order.
    pub acpi: Vec<VirtioMmioDevice>,
    /// `virtio_mmio.device=` entries, one per device.
    pub cmdline_entries: Vec<String>,
    /// The request counters of each disk, in attach order.
    pub disks: Vec<DiskStats>,
    /// The network interfaces, in attach order.
    pub nets: Vec<NetHandle>,
    /// The vsock device, if there is one.
    pub vsock: Option<Arc<Mutex<Vsock>>>,
}

impl VirtioDevices {
    /// An empty set, allocating windows from petrel's device MMIO range and IRQs 5-23.
    pub fn new() -> Result<Self, DeviceManagerError> {
        Ok(Self {
            allocator: ResourceAllocator::new().map_err(DeviceManagerError::Allocator)?,
            mmio_bus: Bus::new(),
            subscribers: Vec::new(),
            acpi: Vec::new(),
            cmdline_entries: Vec::new(),
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
        })
    }

    /// Registers `device` behind a new virtio-mmio transport; `subscriber` is its event-loop
    /// side (usually the same object). Returns the window's base address.
    pub fn attach(
        &mut self,
        vm: &KvmVm,
        memory: &GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
        subscriber: Subscriber,
        name: &'static str,
    ) -> Result<u64, DeviceManagerError> {
        let base = self
            .allocator
            .allocate_mmio(VIRTIO_MMIO_WINDOW, VIRTIO_MMIO_WINDOW)
            .map_err(DeviceManagerError::Exhausted)?;
        let irq = self
            .allocator
            .allocate_irq()
            .map_err(DeviceManagerError::Exhausted)?;
        let line = Arc::new(IrqfdLine::register(vm, irq)?);
        let transport = MmioTransport::new(memory.clone(), device, line)
            .map_err(DeviceManagerError::Transport)?;
        let notify = IoEventAddress::Mmio(queue_notify_address(base));
        for (queue, event) in transport
            .queue_events()
            .map_err(DeviceManagerError::Transport)?
        {
            vm.fd()
                .register_ioevent(&event, &notify, u32::from(queue))
                .map_err(|source| DeviceManagerError::IoEvent { queue, source })?;
        }
        self.mmio_bus
            .insert_named(
                Arc::new(Mutex::new(transport)),
                base,
                VIRTIO_MMIO_WINDOW,
                name,
            )
            .map_err(DeviceManagerError::Bus)?;
        self.subscribers.push(subscriber);
        // Edge-triggered: a plain irqfd pulses its line, which a level-triggered IOAPIC pin
        // could drop between delivery and the guest's EOI.
        self.acpi.push(VirtioMmioDevice {
            base,
            size: VIRTIO_MMIO_WINDOW,
            irq,
            trigger: IrqTrigger::Edge,
        });
        self.cmdline_entries.push(kernel_cmdline_entry(base, irq));
        log::debug!("virtio device {name} at {base:#x}, IRQ {irq}");
        Ok(base)
    }

    /// Opens each disk and attaches it as a virtio-blk device, keeping its counters in
    /// [`disks`](Self::disks).
    pub fn attach_disks(
        &mut self,
        vm: &KvmVm,
        memory: &GuestMemoryMmap,
        disks: &[DiskConfig],
    ) -> Result<(), DeviceManagerError> {
        for disk in disks {
            let block = Block::new(BlockConfig {
                path: disk.path.clone(),
                read_only: disk.read_only,
                id: disk.id.clone(),
            })
            .map_err(|source| DeviceManagerError::Disk {
                path: disk.path.display().to_string(),
                source,
            })?;
            let stats = DiskStats {
                id: block.disk_id().to_owned(),
                path: disk.path.clone(),
                read_only: block.read_only(),
                stats: block.stats(),
            };
            let block = Arc::new(Mutex::new(block));
            self.attach(vm, memory, block.clone(), block, "virtio-blk")?;
            self.disks.push(stats);
        }
        Ok(())
    }

    /// Opens (or creates) each interface's TAP and attaches it as a virtio-net device.
    pub fn attach_nets(
        &mut self,
        vm: &KvmVm,
        memory: &GuestMemoryMmap,
        nets: &[NetConfig],
    ) -> Result<(), DeviceManagerError> {
        for net in nets {
            let tap = Tap::open(&net.tap).map_err(|source| DeviceManagerError::Tap {
                tap: net.tap.clone(),
                source,
            })?;
            let device = Net::new(tap, Some(net.guest_mac().0)).map_err(|source| {
                DeviceManagerError::Net {
                    tap: net.tap.clone(),
                    source,
                }
            })?;
            let device = Arc::new(Mutex::new(device));
            self.attach(vm, memory, device.clone(), device.clone(), "virtio-net")?;
            self.nets.push(NetHandle {
                tap: net.tap.clone(),
                device,
            });
            log::info!("virtio-net on TAP {} with MAC {}", net.tap, net.guest_mac());
        }
        Ok(())
    }

    /// Attaches the virtio-vsock device, which binds its Unix socket now. Returns the window's
    /// base address.
    pub fn attach_vsock(
        &mut self,
        vm: &KvmVm,
        memory: &GuestMemoryMmap,
        config: &VsockConfig,
    ) -> Result<u64, DeviceManagerError> {
        let vsock = Vsock::new(VsockDeviceConfig {
            guest_cid: config.guest_cid,
            uds_path: config.uds_path.clone(),
        })
        .map_err(DeviceManagerError::Vsock)?;
        let vsock = Arc::new(Mutex::new(vsock));
        let base = self.attach(vm, memory, vsock.clone(), vsock.clone(), "virtio-vsock")?;
        self.vsock = Some(vsock);
        log::info!(
            "virtio-vsock for CID {} on {}",
            config.guest_cid,
            config.uds_path.display()
        );
        Ok(base)
    }

    /// Attaches a virtio-rng entropy device backed by the host's `getrandom(2)`. Returns the
    /// window's base address.
    pub fn attach_rng(
        &mut self,
        vm: &KvmVm,
        memory: &GuestMemoryMmap,
    ) -> Result<u64, DeviceManagerError> {
        let rng = Arc::new(Mutex::new(Rng::new().map_err(DeviceManagerError::Rng)?));
        self.attach(vm, memory, rng.clone(), rng, "virtio-rng")
    }
}
