//! Time for the network scenarios: the TSC frequency (from CPUID, else measured against the PIT,
//! else a guess of 3 GHz) to turn `rdtsc` deltas into microseconds, and TSC-based timeouts so
//! that no wait can hang the guest.

use crate::io::{rdtsc, tsc_khz_known, tsc_khz_pit};

/// The TSC frequency used by one scenario run.
#[derive(Clone, Copy)]
pub struct Clock {
    /// TSC kHz (cycles per millisecond).
    pub khz: u64,
}

impl Clock {
    /// CPUID 0x40000010/0x15/0x16, else a 10 ms measurement against PIT channel 2, else 3 GHz.
    pub fn new() -> Clock {
        let khz = match tsc_khz_known() {
            Some((k, _)) => k,
            None => tsc_khz_pit().unwrap_or(3_000_000),
        };
        Clock { khz: khz.max(1) }
    }

    /// Microseconds in `cycles` TSC cycles.
    pub fn us(&self, cycles: u64) -> u64 {
        // cycles * 1000 / khz, split so the product cannot overflow (no u128: that would call
        // compiler_builtins' precompiled division).
        cycles / self.khz * 1000 + cycles % self.khz * 1000 / self.khz
    }

    /// A timer that expires `ms` milliseconds from now.
    pub fn timer(&self, ms: u64) -> Timer {
        Timer {
            start: rdtsc(),
            budget: self.khz.saturating_mul(ms),
        }
    }
}

/// A TSC deadline that can be pushed back (`restart`) whenever there is progress.
pub struct Timer {
    start: u64,
    budget: u64,
}

impl Timer {
    /// True once the time is up.
    pub fn expired(&self) -> bool {
        rdtsc().wrapping_sub(self.start) >= self.budget
    }

    /// Starts the same interval again from now.
    pub fn restart(&mut self) {
        self.start = rdtsc();
    }
}
