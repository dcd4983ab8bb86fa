//! A KVM vCPU with its index, and its one-shot configuration before it first runs.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{VcpuFd, VmFd};

use crate::cpu_features::CpuFeatureChange;
use crate::cpuid::{build_cpuid, features_still_visible, CpuidError};
use crate::kick::KickError;
use crate::setup::{
    setup_fpu, setup_lapic, setup_long_mode_entry, setup_msrs, EntryState, SetupError,
};

/// Errors from creating, configuring or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create kvm vcpu {index}")]
    Create {
        /// The vCPU index.
        index: u32,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The CPUID could not be built.
    #[error("cannot build the vcpu's cpuid")]
    Cpuid(#[from] CpuidError),
    /// KVM refused the CPUID.
    #[error("cannot set the vcpu's cpuid")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// Registers, MSRs, FPU or LAPIC could not be set.
    #[error("cannot set up the vcpu")]
    Setup(#[from] SetupError),
    /// The kick signal could not be set up.
    #[error("cannot set up the vcpu kick")]
    Kick(#[from] KickError),
    /// The vCPU thread could not be started.
    #[error("cannot start the vcpu thread")]
    Spawn(#[source] std::io::Error),
    /// The vCPU thread panicked outside the run loop (e.g. in the `on_exit` callback).
    #[error("vcpu {index} thread panicked")]
    ThreadPanicked {
        /// The vCPU index.
        index: u32,
    },
}

/// One vCPU: the KVM file descriptor (with its `kvm_run` mapping) and its index, which is
/// also its APIC id.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    index: u32,
}

impl Vcpu {
    /// Creates vCPU `index` in `vm`. With an in-kernel irqchip, create it
    /// (`VmFd::create_irq_chip`) before any vCPU.
    pub fn new(vm: &VmFd, index: u32) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        Ok(Vcpu { fd, index })
    }

    /// The vCPU's index (and APIC id).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The KVM vCPU, for ioctls this crate does not wrap.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The KVM vCPU, mutably (e.g. to run it by hand or read `kvm_run`).
    pub fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Reads the CPUID table back from KVM and warns about hidden features it still shows.
    fn warn_about_unhidden_features(&self, changes: &[CpuFeatureChange]) {
        match self.fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES) {
            Ok(actual) => {
                let visible = features_still_visible(&actual, changes);
                if !visible.is_empty() {
                    log::warn!(
                        "this host's KVM keeps showing CPU features petrel hid: {} \
                         (PVM hosts re-add host features in KVM_SET_CPUID2)",
                        visible.join(",")
                    );
                }
            }
            Err(e) => log::debug!("cannot read the vcpu's cpuid back: {e}"),
        }
    }

    /// Configures the vCPU before its first run: CPUID (from `supported_cpuid`, for this
    /// vCPU of `vcpu_count`, with `changes` applied), boot MSRs, FPU, and the LAPIC's LINT0/1.
    /// With `entry` (the boot vCPU) it also enters 64-bit long mode at the entry point; APs
    /// get `None` and wait for INIT/SIPI from the in-kernel LAPIC.
    ///
    /// The LAPIC step needs the in-kernel irqchip.
    pub fn configure(
        &mut self,
        supported_cpuid: &CpuId,
        vcpu_count: u32,
        changes: &[CpuFeatureChange],
        entry: Option<&EntryState>,
    ) -> Result<(), VcpuError> {
        let cpuid = build_cpuid(supported_cpuid, self.index, vcpu_count, changes)?;
        self.fd.set_cpuid2(&cpuid).map_err(VcpuError::SetCpuid)?;
        if self.index == 0 && !changes.is_empty() {
            self.warn_about_unhidden_features(changes);
        }
        setup_msrs(&self.fd)?;
        setup_fpu(&self.fd)?;
        setup_lapic(&self.fd)?;
        if let Some(entry) = entry {
            setup_long_mode_entry(&self.fd, entry)?;
        }
        Ok(())
    }
}
