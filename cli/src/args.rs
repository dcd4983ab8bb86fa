//! The command line, parsed with clap's derive API into a [`VmConfig`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use petrel_core::config::{DEFAULT_CMDLINE, DEFAULT_VCPUS};
use petrel_core::disk_config::DiskConfig;
use petrel_core::net_config::NetConfig;
use petrel_core::vsock_config::VsockConfig;
use petrel_core::{ConsoleConfig, MemorySize, VmConfig};

/// petrel: a small virtual machine monitor for Linux/KVM.
#[derive(Debug, Parser)]
#[command(name = "petrel", version, about, long_about = None)]
pub struct Cli {
    /// How much petrel logs to stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Warn)]
    pub log_level: LogLevel,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// petrel's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest kernel and run it until it resets or powers off.
    Run(RunArgs),
}

/// Arguments of `petrel run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The guest kernel: an ELF vmlinux or a bzImage (detected by content).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// An initial ramdisk for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// The kernel command line.
    #[arg(long, value_name = "STRING", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,

    /// The number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VCPUS)]
    pub cpus: u32,

    /// Guest RAM: MiB as a bare number, or with an M or G suffix.
    #[arg(long, value_name = "SIZE", default_value = "128")]
    pub memory: MemorySize,

    /// CPUID features to hide (-name) or keep (+name), comma-separated, e.g. -cx16,-avx512f.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "",
        allow_hyphen_values = true
    )]
    pub cpu_features: String,

    /// Where the serial console goes: stdio, none, or file=PATH.
    #[arg(long, value_name = "WHERE", default_value = "stdio")]
    pub console: ConsoleConfig,

    /// A virtio-blk disk backed by a raw image: path=FILE[,readonly=on][,id=NAME]. Repeat for
    /// more disks (the guest sees them in this order: vda, vdb, …).
    #[arg(long, value_name = "path=FILE[,readonly=on][,id=NAME]")]
    pub disk: Vec<DiskConfig>,

    /// A virtio-net interface backed by a host TAP device: tap=NAME[,mac=MAC]. petrel attaches
    /// to an existing TAP or creates one when it has CAP_NET_ADMIN. Without mac=, the MAC is
    /// derived from the TAP name (stable, locally administered). Repeat for more interfaces.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<NetConfig>,

    /// A virtio-vsock device for guest CID N. petrel listens on the Unix socket PATH: a host
    /// program connects and sends "CONNECT <port>\n" to reach the guest's listener on that
    /// port; the guest's connections to CID 2, port P, go to the Unix socket PATH_P.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    pub vsock: Option<VsockConfig>,

    /// Attach a virtio-rng entropy device backed by the host's getrandom. Off by default:
    /// it costs a little boot time and most guests seed from RDRAND/RDSEED.
    #[arg(long)]
    pub rng: bool,

    /// Also list virtio devices on the kernel command line as virtio_mmio.device=, for
    /// kernels built with VIRTIO_MMIO_CMDLINE_DEVICES (the ACPI DSDT always lists them).
    #[arg(long)]
    pub virtio_cmdline: bool,

    /// Report when the guest writes 123 to port 0x440: time since process start and since
    /// the first KVM_RUN.
    #[arg(long)]
    pub boot_timer: bool,

    /// Print VM exits by reason and by device (count, total and mean µs) at shutdown.
    #[arg(long)]
    pub exit_stats: bool,

    /// Write JSON metrics to PATH at exit and whenever petrel receives SIGUSR1.
    #[arg(long, value_name = "PATH")]
    pub metrics: Option<PathBuf>,
}

impl RunArgs {
    /// The VM configuration these arguments describe.
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            vcpus: self.cpus,
            memory: self.memory,
            cpu_features: self.cpu_features.clone(),
            console: self.console.clone(),
            disks: self.disk.clone(),
            rng: self.rng,
            nets: self.net.clone(),
            vsock: self.vsock.clone(),
            virtio_cmdline: self.virtio_cmdline,
            boot_timer: self.boot_timer,
            exit_stats: self.exit_stats,
            metrics: self.metrics.clone(),
        }
    }
}

/// Log levels accepted by `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Nothing but the final error line.
    Off,
    /// Errors.
    Error,
    /// Warnings and errors (the default).
    Warn,
    /// What petrel does, step by step.
    Info,
    /// Details useful when debugging petrel or a guest.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("petrel").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let cli = parse(&["run", "--kernel", "/k"]).unwrap();
        let Command::Run(run) = cli.command;
        let config = run.to_config();
        assert_eq!(config, VmConfig::new("/k"));
        assert_eq!(cli.log_level, LogLevel::Warn);
    }

    #[test]
    fn every_flag_is_parsed() {
        let cli = parse(&[
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "console=ttyS0 quiet",
            "--cpus",
            "4",
            "--memory",
            "2G",
            "--cpu-features",
            "-cx16,-avx512f",
            "--console",
            "file=/tmp/c.log",
            "--log-level",
            "debug",
            "--boot-timer",
            "--exit-stats",
            "--rng",
            "--metrics",
            "/tmp/m.json",
        ])
        .unwrap();
        let Command::Run(run) = cli.command;
        let config = run.to_config();
        assert_eq!(config.initrd, Some(PathBuf::from("/i")));
        assert_eq!(config.cmdline, "console=ttyS0 quiet");
        assert_eq!(config.vcpus, 4);
        assert_eq!(config.memory.mib(), 2048);
        assert_eq!(config.cpu_features, "-cx16,-avx512f");
        assert_eq!(config.console, ConsoleConfig::File("/tmp/c.log".into()));
        assert_eq!(cli.log_level, LogLevel::Debug);
        assert!(config.boot_timer && config.exit_stats && config.rng);
        assert_eq!(config.metrics, Some(PathBuf::from("/tmp/m.json")));
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        assert!(parse(&["run"]).is_err());
        assert!(parse(&["run", "--kernel", "/k", "--cpus", "-1"]).is_err());
        assert!(parse(&["run", "--kernel", "/k", "--memory", "lots"]).is_err());
        assert!(parse(&["run", "--kernel", "/k", "--console", "tty"]).is_err());
        assert!(parse(&["run", "--kernel", "/k", "--log-level", "loud"]).is_err());
    }
}
