//! The boot timer: a one-byte port the guest writes when it is ready, so the VMM can say
//! how long the boot took.
//!
//! The guest (an init script, or petrel's test guest) writes [`BOOT_TIMER_MAGIC`] (123, the
//! value Firecracker's boot timer uses) to port [`BOOT_TIMER_PORT`] (0x440). The first such
//! write logs, at info level,
//!
//! ```text
//! boot-timer: guest ready 41.207 ms after process start, 12.880 ms after the first KVM_RUN
//! ```
//!
//! and keeps both durations as a [`BootTime`] for the VMM's metrics. Later magic writes and
//! other values are ignored (logged at debug level), so a guest cannot move the figure.
//! Reads return `0xff`, like a port with nothing behind it: the device has nothing to say to
//! the guest, and a probe cannot tell it from an empty port.
//!
//! The device does not depend on the vCPU code: it reads the first `KVM_RUN` instant from an
//! `Arc<OnceLock<Instant>>` the run loop fills in (petrel-vcpu's
//! `ExitStats::first_run_cell()`).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

/// The port the guest writes the magic value to.
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// The number of ports the device occupies.
pub const BOOT_TIMER_PORT_LEN: u16 = 1;
/// The byte that means "the guest is ready".
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// How long the guest took to become ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTime {
    /// From the process start the VMM passed in to the magic write.
    pub since_process_start: Duration,
    /// From the first `KVM_RUN` to the magic write; `None` if no `KVM_RUN` was recorded.
    pub since_first_run: Option<Duration>,
}

impl fmt::Display for BootTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest ready {} after process start, ",
            Millis(self.since_process_start)
        )?;
        match self.since_first_run {
            Some(d) => write!(f, "{} after the first KVM_RUN", Millis(d)),
            None => f.write_str("first KVM_RUN not recorded"),
        }
    }
}

/// Formats a duration as milliseconds with three decimals.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0.as_micros();
        write!(f, "{}.{:03} ms", micros / 1000, micros % 1000)
    }
}

/// The boot timer port. Put it on the port-I/O bus at [`BOOT_TIMER_PORT`], length
/// [`BOOT_TIMER_PORT_LEN`].
#[derive(Debug)]
pub struct BootTimerDevice {
    process_start: Instant,
    first_run: Arc<OnceLock<Instant>>,
    boot_time: Arc<OnceLock<BootTime>>,
}

impl BootTimerDevice {
    /// A timer measuring from `process_start` and from the instant in `first_run` (read when
    /// the guest writes, so it may be filled in after the device is built).
    pub fn new(process_start: Instant, first_run: Arc<OnceLock<Instant>>) -> Self {
        BootTimerDevice {
            process_start,
            first_run,
            boot_time: Arc::new(OnceLock::new()),
        }
    }

    /// The recorded boot time, once the guest wrote the magic value.
    pub fn boot_time(&self) -> Option<BootTime> {
        self.boot_time.get().copied()
    }

    /// The cell the boot time is recorded in, for readers that should not lock the device
    /// (a metrics writer on another thread).
    pub fn boot_time_cell(&self) -> Arc<OnceLock<BootTime>> {
        self.boot_time.clone()
    }

    fn guest_ready(&self) {
        let now = Instant::now();
        let measured = BootTime {
            since_process_start: now.saturating_duration_since(self.process_start),
            since_first_run: self
                .first_run
                .get()
                .map(|first| now.saturating_duration_since(*first)),
        };
        if self.boot_time.set(measured).is_ok() {
            log::info!("boot-timer: {measured}");
        } else {
            log::debug!("boot-timer: guest wrote the magic value again; keeping the first time");
        }
    }
}

impl BusDevice for BootTimerDevice {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == 0 && data == [BOOT_TIMER_MAGIC] {
            self.guest_ready();
        } else {
            log::debug!("boot-timer: ignoring write of {data:02x?} at offset {offset}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Bus;
    use crate::test_log;
    use std::sync::Mutex;

    fn timer(first_run: Option<Instant>) -> (BootTimerDevice, Instant) {
        let start = Instant::now();
        let cell = Arc::new(OnceLock::new());
        if let Some(first) = first_run {
            cell.set(first).unwrap();
        }
        (BootTimerDevice::new(start, cell), start)
    }

    #[test]
    fn the_magic_write_records_and_logs_once() {
        let start = Instant::now() - Duration::from_millis(30);
        let first_run = start + Duration::from_millis(20);
        let cell = Arc::new(OnceLock::new());
        let mut dev = BootTimerDevice::new(start, cell.clone());
        cell.set(first_run).unwrap(); // filled in after the device was built
        let logs = test_log::capture(|| dev.write(0x440, 0, &[BOOT_TIMER_MAGIC]));
        let time = dev.boot_time().expect("recorded");
        assert!(time.since_process_start >= Duration::from_millis(30));
        let since_run = time.since_first_run.expect("first run known");
        assert_eq!(
            time.since_process_start - since_run,
            Duration::from_millis(20)
        );
        let info: Vec<_> = logs.iter().filter(|l| l.starts_with("INFO")).collect();
        assert_eq!(info.len(), 1, "{logs:?}");
        assert!(
            info[0].starts_with("INFO boot-timer: guest ready ")
                && info[0].contains(" ms after process start, ")
                && info[0].ends_with(" ms after the first KVM_RUN"),
            "{}",
            info[0]
        );

        std::thread::sleep(Duration::from_millis(2));
        let logs = test_log::capture(|| dev.write(0x440, 0, &[BOOT_TIMER_MAGIC]));
        assert_eq!(
            dev.boot_time(),
            Some(time),
            "a second write changes nothing"
        );
        assert!(logs.iter().all(|l| !l.starts_with("INFO")), "{logs:?}");
        assert_eq!(dev.boot_time_cell().get().copied(), Some(time));
    }

    #[test]
    fn other_values_are_ignored() {
        let (mut dev, _) = timer(None);
        dev.write(0x440, 0, &[BOOT_TIMER_MAGIC - 1]);
        dev.write(0x440, 0, &[0]);
        dev.write(0x440, 0, &[BOOT_TIMER_MAGIC, 0]);
        dev.write(0x440, 1, &[BOOT_TIMER_MAGIC]);
        assert_eq!(dev.boot_time(), None);
    }

    #[test]
    fn reads_return_all_ones() {
        let (mut dev, _) = timer(None);
        let mut data = [0u8; 1];
        dev.read(0x440, 0, &mut data);
        assert_eq!(data, [0xff]);
    }

    #[test]
    fn without_a_first_run_only_the_process_time_is_known() {
        let (mut dev, start) = timer(None);
        let logs = test_log::capture(|| dev.write(0x440, 0, &[BOOT_TIMER_MAGIC]));
        let time = dev.boot_time().unwrap();
        assert_eq!(time.since_first_run, None);
        assert!(time.since_process_start <= start.elapsed());
        assert!(
            logs.iter()
                .any(|l| l.ends_with("after process start, first KVM_RUN not recorded")),
            "{logs:?}"
        );
    }

    #[test]
    fn display_uses_milliseconds_with_three_decimals() {
        let time = BootTime {
            since_process_start: Duration::from_micros(41_207),
            since_first_run: Some(Duration::from_micros(12_880)),
        };
        assert_eq!(
            time.to_string(),
            "guest ready 41.207 ms after process start, 12.880 ms after the first KVM_RUN"
        );
        assert_eq!(Millis(Duration::from_nanos(999)).to_string(), "0.000 ms");
    }

    #[test]
    fn works_on_the_bus_at_its_port() {
        let (dev, _) = timer(Some(Instant::now()));
        let dev = Arc::new(Mutex::new(dev));
        let mut bus = Bus::new();
        bus.insert_named(
            dev.clone(),
            BOOT_TIMER_PORT.into(),
            BOOT_TIMER_PORT_LEN.into(),
            "boot-timer",
        )
        .unwrap();
        // A 16-bit write runs past the one-port range and never reaches the device.
        assert!(bus.write(0x440, &[BOOT_TIMER_MAGIC, 0]).is_err());
        assert_eq!(dev.lock().unwrap().boot_time(), None);
        bus.write(0x440, &[BOOT_TIMER_MAGIC]).unwrap();
        assert!(dev.lock().unwrap().boot_time().is_some());
        assert_eq!(bus.stats()[0].writes, 1);
    }
}
