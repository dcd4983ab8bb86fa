//! The binary's logger: env_logger writing `[seconds LEVEL module] message` to stderr, with
//! seconds counted from process start so boot steps can be timed from the log.

use std::io::Write;
use std::time::Instant;

/// The module whose info line is the boot-timer report.
const BOOT_TIMER_MODULE: &str = "petrel_devices::legacy::boot_timer";

/// Installs the logger at `level`. Only the binary does this; libraries use the `log` facade.
/// With `boot_timer`, the boot timer's report is shown even when `level` is quieter.
pub fn init(level: log::LevelFilter, boot_timer: bool) {
    let start = Instant::now();
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level);
    if boot_timer && level < log::LevelFilter::Info {
        builder.filter_module(BOOT_TIMER_MODULE, log::LevelFilter::Info);
    }
    builder.format(move |out, record| {
        let elapsed = start.elapsed();
        writeln!(
            out,
            "[{:>4}.{:06} {:<5} {}] {}",
            elapsed.as_secs(),
            elapsed.subsec_micros(),
            record.level(),
            record.target(),
            record.args()
        )
    });
    // A second init (never done by petrel) would fail harmlessly.
    let _ = builder.try_init();
}
