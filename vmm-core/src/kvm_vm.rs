//! The KVM side of a VM: the /dev/kvm handle, the VM fd, the in-kernel irqchip and PIT, and
//! guest RAM registered as memory slots.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::thread::{self, JoinHandle};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use petrel_memory::layout::{KVM_IDENTITY_MAP_START, KVM_TSS_START};
use petrel_memory::vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use petrel_memory::GuestMemoryMmap;
use vmm_sys_util::ioctl::ioctl_with_ref;

/// The KVM API version petrel was written against (the only one Linux has ever had).
const KVM_API_VERSION: i32 = 12;

/// The most vCPUs petrel gives a guest: xAPIC ids are 8 bits and 0xff is the broadcast id,
/// and petrel's CPUID topology does not describe x2APIC-only ids yet.
pub const MAX_XAPIC_VCPUS: usize = petrel_vcpu::cpuid::MAX_VCPUS as usize;

/// Errors from creating or setting up the KVM VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmVmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The host's KVM speaks another API version.
    #[error("KVM API version {0} is not supported (petrel needs {KVM_API_VERSION})")]
    ApiVersion(i32),
    /// A capability petrel depends on is missing.
    #[error("the host's KVM lacks {0}")]
    MissingCap(&'static str),
    /// KVM_CREATE_VM failed.
    #[error("cannot create the VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// An ioctl that sets up the VM failed.
    #[error("cannot {what}")]
    Setup {
        /// What petrel was doing.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// More memory regions than KVM has slots.
    #[error("guest memory needs {needed} memory slots but KVM has {available}")]
    TooManySlots {
        /// Slots needed.
        needed: usize,
        /// Slots KVM offers.
        available: usize,
    },
    /// Asked for more vCPUs than KVM or the APIC id space allow.
    #[error("--cpus {requested} is more than this host allows (at most {limit})")]
    TooManyVcpus {
        /// vCPUs asked for.
        requested: u32,
        /// The limit.
        limit: usize,
    },
}

/// The capabilities petrel cannot work without, with the names errors use.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// `KVM_REINJECT_CONTROL`: `_IO(KVMIO, 0x71)`, which kvm-ioctls does not wrap.
const KVM_REINJECT_CONTROL: libc::c_ulong = 0xae71;

/// The argument of `KVM_REINJECT_CONTROL` (`struct kvm_reinject_control`).
#[repr(C)]
#[derive(Default)]
struct ReinjectControl {
    pit_reinject: u8,
    reserved: [u8; 31],
}

/// An open KVM VM with its interrupt controllers.
#[derive(Debug)]
pub struct KvmVm {
    kvm: Kvm,
    fd: VmFd,
    pit_tuning: Option<JoinHandle<()>>,
}

impl Drop for KvmVm {
    fn drop(&mut self) {
        // The tuning thread uses a duplicate of the VM fd; let it finish before the VM goes.
        if let Some(thread) = self.pit_tuning.take() {
            let _ = thread.join();
        }
    }
}

/// Switches the in-kernel PIT from re-injecting lost ticks to discarding them (QEMU's
/// `lost_tick_policy=discard`), on a thread of its own.
///
/// Linux keeps time with the TSC or kvmclock and does not count PIT ticks, so reinjection buys
/// nothing. But while it is on, KVM holds an interrupt-ack notifier whose removal waits for an
/// SRCU grace period, several jiffies, when the VM is destroyed: 15-20 ms of every short-lived
/// VM's exit. Turning it off costs the same wait once, so it runs beside the boot instead of
/// after the guest stops.
fn discard_lost_pit_ticks_in_background(fd: &VmFd) -> Option<JoinHandle<()>> {
    // SAFETY: dup only duplicates the VM fd, which is open for the duration of the call.
    let dup = unsafe { libc::dup(fd.as_raw_fd()) };
    if dup < 0 {
        log::debug!(
            "cannot duplicate the VM fd to tune the PIT: {}",
            io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `dup` is a fresh fd that nothing else owns.
    let vm = unsafe { File::from_raw_fd(dup) };
    let spawned = thread::Builder::new()
        .name("pit-tuning".to_string())
        .spawn(move || {
            let control = ReinjectControl::default();
            // SAFETY: KVM_REINJECT_CONTROL reads a `struct kvm_reinject_control`, which
            // `control` lays out exactly, from a VM fd with an in-kernel PIT.
            let ret = unsafe { ioctl_with_ref(&vm, KVM_REINJECT_CONTROL, &control) };
            if ret < 0 {
                log::debug!(
                    "cannot turn off PIT tick reinjection: {}",
                    io::Error::last_os_error()
                );
            }
        });
    match spawned {
        Ok(thread) => Some(thread),
        Err(e) => {
            log::debug!("cannot start the PIT tuning thread: {e}");
            None
        }
    }
}

impl KvmVm {
    /// Opens /dev/kvm, checks the API version and capabilities, and creates a VM with the
    /// in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
    pub fn create() -> Result<Self, KvmVmError> {
        let kvm = Kvm::new().map_err(KvmVmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmVmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(KvmVmError::MissingCap(name));
            }
        }
        let fd = kvm.create_vm().map_err(KvmVmError::CreateVm)?;
        let setup = |what| move |source| KvmVmError::Setup { what, source };
        // The TSS and identity-map pages are only used by Intel CPUs without unrestricted
        // guest mode, but KVM wants them placed; they sit in the MMIO hole, away from RAM.
        fd.set_tss_address(KVM_TSS_START as usize)
            .map_err(setup("set the TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_START)
            .map_err(setup("set the identity map address"))?;
        fd.create_irq_chip()
            .map_err(setup("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(setup("create the in-kernel PIT"))?;
        let pit_tuning = if kvm.check_extension(Cap::ReinjectControl) {
            discard_lost_pit_ticks_in_background(&fd)
        } else {
            None
        };
        Ok(Self {
            kvm,
            fd,
            pit_tuning,
        })
    }

    /// The VM fd.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The /dev/kvm handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The most vCPUs this VM may have: KVM's limit, capped by the xAPIC id space.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus().min(MAX_XAPIC_VCPUS)
    }

    /// Fails with a message naming the limit when `requested` vCPUs are too many.
    pub fn check_vcpu_count(&self, requested: u32) -> Result<(), KvmVmError> {
        let limit = self.max_vcpus();
        if requested as usize > limit {
            return Err(KvmVmError::TooManyVcpus { requested, limit });
        }
        Ok(())
    }

    /// The CPUID entries KVM can expose to a guest.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmVmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| KvmVmError::Setup {
                what: "read the supported CPUID",
                source,
            })
    }

    /// Registers every region of `memory` as a KVM memory slot.
    pub fn register_memory(&self, memory: &GuestMemoryMmap) -> Result<(), KvmVmError> {
        let available = self.kvm.get_nr_memslots();
        let needed = memory.num_regions();
        if needed > available {
            return Err(KvmVmError::TooManySlots { needed, available });
        }
        for (slot, region) in memory.iter().enumerate() {
            let host_address = region
                .get_host_address(petrel_memory::vm_memory::MemoryRegionAddress(0))
                .map_err(|_| KvmVmError::MissingCap("host mapping for guest memory"))?;
            let slot_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host_address as u64,
            };
            // SAFETY: the region is a live mapping owned by `memory`, which the caller keeps
            // alive for as long as the VM exists (the Vmm holds both and drops the VM fd first),
            // and the slots do not overlap because the regions of a GuestMemoryMmap do not.
            unsafe { self.fd.set_user_memory_region(slot_region) }.map_err(|source| {
                KvmVmError::Setup {
                    what: "register guest memory",
                    source,
                }
            })?;
        }
        Ok(())
    }
}
