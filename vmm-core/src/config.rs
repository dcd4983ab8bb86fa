//! The VM configuration: plain data, validated before anything is built.
//!
//! The command line, a config file and an API all produce a [`VmConfig`]; [`VmConfig::validate`]
//! checks everything that can be checked without creating the VM, so that bad input fails fast
//! with one clear message.

use std::fs;
use std::path::{Path, PathBuf};

use petrel_memory::allocator::{FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ};
use petrel_memory::layout::{LayoutError, MemoryLayout};
use petrel_vcpu::cpu_features::{parse_cpu_features, CpuFeatureError};
use serde::{Deserialize, Serialize};

use crate::console::ConsoleConfig;
use crate::disk_config::{validate_disks, DiskConfig, DiskConfigError};
use crate::memory_size::MemorySize;
use crate::net_config::{validate_nets, NetConfig, NetConfigError};
use crate::vsock_config::{VsockConfig, VsockConfigError};

/// The kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";
/// The guest memory size used when none is given.
pub const DEFAULT_MEMORY: MemorySize = MemorySize::from_mib(128);
/// The number of vCPUs used when none is given.
pub const DEFAULT_VCPUS: u32 = 1;

/// The most virtio devices a VM may have: one legacy interrupt line each
/// ([`FIRST_DEVICE_IRQ`]..=[`LAST_DEVICE_IRQ`]).
pub const MAX_VIRTIO_DEVICES: usize = (LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1) as usize;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named in the configuration is missing or unusable.
    #[error("{what} {path}: {problem}")]
    BadFile {
        /// Which file this is ("kernel", "initrd").
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// No vCPUs were asked for.
    #[error("--cpus must be at least 1")]
    NoVcpus,
    /// The memory size is not usable.
    #[error("--memory {size}: {source}")]
    Memory {
        /// The size as given.
        size: MemorySize,
        /// Why the layout refused it.
        #[source]
        source: LayoutError,
    },
    /// The memory size overflows when converted to bytes.
    #[error("--memory {0} is too large")]
    MemoryOverflow(MemorySize),
    /// A disk is not usable.
    #[error(transparent)]
    Disk(#[from] DiskConfigError),
    /// A network interface is not usable.
    #[error(transparent)]
    Net(#[from] NetConfigError),
    /// The vsock device is not usable.
    #[error(transparent)]
    Vsock(#[from] VsockConfigError),
    /// More virtio devices than interrupt lines.
    #[error("{0} virtio devices (disks, network interfaces, rng, vsock) is more than the {MAX_VIRTIO_DEVICES} interrupt lines petrel has for them")]
    TooManyVirtioDevices(usize),
    /// The CPU feature list is not valid.
    #[error("--cpu-features: {0}")]
    CpuFeatures(#[from] CpuFeatureError),
}

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The kernel image: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// An optional initial ramdisk.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// The number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Guest RAM size.
    #[serde(default = "default_memory")]
    pub memory: MemorySize,
    /// CPUID feature changes, e.g. `-cx16,-avx512f`.
    #[serde(default)]
    pub cpu_features: String,
    /// Where the serial console goes.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-blk disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Attach a virtio-rng entropy device backed by the host's `getrandom(2)`. Off by
    /// default: the extra device costs a little boot time, and most microVM guests seed
    /// their pool from RDRAND/RDSEED (Firecracker's entropy device is opt-in too).
    #[serde(default)]
    pub rng: bool,
    /// virtio-net interfaces, each backed by a host TAP device.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device, with Firecracker's Unix-socket model on the host side.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Also describe virtio-mmio devices on the kernel command line (`virtio_mmio.device=`),
    /// for kernels built with VIRTIO_MMIO_CMDLINE_DEVICES; the DSDT always describes them.
    #[serde(default)]
    pub virtio_cmdline: bool,
    /// Attach the boot-timer device (port 0x440) and report when the guest writes to it.
    #[serde(default)]
    pub boot_timer: bool,
    /// Print the VM-exit statistics table at shutdown.
    #[serde(default)]
    pub exit_stats: bool,
    /// Write JSON metrics to this file at exit and on SIGUSR1.
    #[serde(default)]
    pub metrics: Option<PathBuf>,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

fn default_vcpus() -> u32 {
    DEFAULT_VCPUS
}

fn default_memory() -> MemorySize {
    DEFAULT_MEMORY
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: DEFAULT_VCPUS,
            memory: DEFAULT_MEMORY,
            cpu_features: String::new(),
            console: ConsoleConfig::default(),
            disks: Vec::new(),
            rng: false,
            nets: Vec::new(),
            vsock: None,
            virtio_cmdline: false,
            boot_timer: false,
            exit_stats: false,
            metrics: None,
        }
    }

    /// Checks everything that can be checked before the VM exists.
    ///
    /// Limits that depend on the host's KVM (such as the most vCPUs it allows) are checked by
    /// the builder.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_regular_file("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check_regular_file("initrd", initrd)?;
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        self.memory_layout()?;
        parse_cpu_features(&self.cpu_features)?;
        validate_disks(&self.disks)?;
        validate_nets(&self.nets)?;
        let devices = self.disks.len()
            + self.nets.len()
            + usize::from(self.rng)
            + usize::from(self.vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyVirtioDevices(devices));
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        if let Some(path) = &self.metrics {
            check_writable_location("metrics file", path)?;
        }
        Ok(())
    }

    /// The guest-physical memory layout for the configured RAM size.
    pub fn memory_layout(&self) -> Result<MemoryLayout, ConfigError> {
        let bytes = self
            .memory
            .bytes()
            .ok_or(ConfigError::MemoryOverflow(self.memory))?;
        MemoryLayout::new(bytes).map_err(|source| ConfigError::Memory {
            size: self.memory,
            source,
        })
    }
}

/// Checks that `path` names a readable regular file.
fn check_regular_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |problem: String| ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        problem,
    };
    let metadata = fs::metadata(path).map_err(|e| bad(io_problem(&e)))?;
    if metadata.is_dir() {
        return Err(bad("is a directory, not a file".to_string()));
    }
    if !metadata.is_file() {
        return Err(bad("is not a regular file".to_string()));
    }
    if metadata.len() == 0 {
        return Err(bad("is empty".to_string()));
    }
    fs::File::open(path).map_err(|e| bad(io_problem(&e)))?;
    Ok(())
}

/// Checks that `path` can be created or overwritten: its directory exists and it is not a
/// directory itself. (Permission problems surface when the file is written.)
fn check_writable_location(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let bad = |problem: &str| ConfigError::BadFile {
        what,
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    if path.is_dir() {
        return Err(bad("is a directory, not a file"));
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(bad("its directory does not exist"));
    }
    Ok(())
}

fn io_problem(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("petrel-config-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_plain_config_validates() {
        let kernel = temp_file("kernel-ok", b"\x7fELF....");
        VmConfig::new(&kernel).validate().unwrap();
    }

    #[test]
    fn missing_directory_and_empty_kernels_are_refused() {
        let missing = VmConfig::new("/nonexistent/petrel/vmlinux");
        let err = missing.validate().unwrap_err().to_string();
        assert_eq!(err, "kernel /nonexistent/petrel/vmlinux: no such file");

        let dir = VmConfig::new(std::env::temp_dir());
        assert!(dir
            .validate()
            .unwrap_err()
            .to_string()
            .contains("is a directory"));

        let empty = VmConfig::new(temp_file("kernel-empty", b""));
        assert!(empty
            .validate()
            .unwrap_err()
            .to_string()
            .ends_with("is empty"));
    }

    #[test]
    fn initrd_is_checked_too() {
        let mut config = VmConfig::new(temp_file("kernel-initrd", b"x"));
        config.initrd = Some(PathBuf::from("/nonexistent/initrd"));
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("initrd /nonexistent/initrd"));
    }

    #[test]
    fn zero_vcpus_and_bad_memory_are_refused() {
        let kernel = temp_file("kernel-limits", b"x");
        let mut config = VmConfig::new(&kernel);
        config.vcpus = 0;
        assert!(matches!(config.validate(), Err(ConfigError::NoVcpus)));

        let mut config = VmConfig::new(&kernel);
        config.memory = MemorySize::from_mib(0);
        assert!(matches!(config.validate(), Err(ConfigError::Memory { .. })));

        config.memory = MemorySize::from_mib(u64::MAX / 2);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::MemoryOverflow(_))
        ));

        config.memory = MemorySize::from_mib(1 << 30);
        assert!(matches!(config.validate(), Err(ConfigError::Memory { .. })));
    }

    #[test]
    fn metrics_paths_are_checked() {
        let mut config = VmConfig::new(temp_file("kernel-metrics", b"x"));
        config.metrics = Some(PathBuf::from("/nonexistent/dir/metrics.json"));
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("directory does not exist"));
        config.metrics = Some(std::env::temp_dir());
        assert!(config.validate().is_err());
        config.metrics = Some(std::env::temp_dir().join("petrel-metrics.json"));
        config.validate().unwrap();
    }

    #[test]
    fn unknown_cpu_features_are_refused() {
        let mut config = VmConfig::new(temp_file("kernel-features", b"x"));
        config.cpu_features = "-cx16,-no-such-feature".to_string();
        assert!(matches!(
            config.validate(),
            Err(ConfigError::CpuFeatures(_))
        ));
    }

    #[test]
    fn deserializes_with_defaults_and_rejects_unknown_fields() {
        let config: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(config, VmConfig::new("/k"));
        assert!(!config.rng, "no entropy device unless asked");
        let config: VmConfig = serde_json::from_str(r#"{"kernel": "/k", "rng": true}"#).unwrap();
        assert!(config.rng);
        let config: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "memory": 512, "console": "none"}"#).unwrap();
        assert_eq!(config.memory.mib(), 512);
        assert_eq!(config.console, ConsoleConfig::None);
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "vcpu": 2}"#).is_err());
    }

    #[test]
    fn virtio_devices_are_bounded_by_interrupt_lines() {
        let mut config = VmConfig::new(temp_file("kernel-devices", b"x"));
        config.nets = (0..16)
            .map(|i| format!("tap=t{i}").parse().unwrap())
            .collect();
        config.rng = true;
        config.validate().unwrap();
        config.vsock = Some("cid=3,socket=/tmp/petrel-config-v.sock".parse().unwrap());
        config.disks = vec![DiskConfig {
            path: temp_file("disk-devices.img", &[0; 512]),
            read_only: true,
            id: None,
        }];
        config.validate().unwrap();
        config.disks.push(config.disks[0].clone());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TooManyVirtioDevices(20))
        ));
    }
}
