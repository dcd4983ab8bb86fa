//! Routes the vCPUs' port-I/O and MMIO exits to the device buses.
//!
//! An address no device claims behaves like an empty slot on real hardware: reads return all
//! ones and writes are dropped. Each such address is logged once, at debug level, so a guest
//! that probes many ports does not flood the log.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use petrel_devices::bus::Bus;
use petrel_vcpu::exit::VcpuExitHandler;

/// How many distinct unclaimed addresses are remembered for logging; past this, the log says
/// so once and stays quiet.
const MAX_LOGGED_UNCLAIMED: usize = 256;

/// Which address space an access was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Space {
    Pio,
    Mmio,
}

/// The exit handler shared by every vCPU thread.
pub struct BusExitHandler {
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    unclaimed: Mutex<HashSet<(Space, u64)>>,
}

impl BusExitHandler {
    /// A handler over the two buses. The buses are complete before any vCPU runs.
    pub fn new(pio: Arc<Bus>, mmio: Arc<Bus>) -> Self {
        Self {
            pio,
            mmio,
            unclaimed: Mutex::new(HashSet::new()),
        }
    }

    fn note_unclaimed(&self, space: Space, address: u64, write: bool) {
        // Log MMIO per 4 KiB page, ports individually.
        let key = match space {
            Space::Pio => address,
            Space::Mmio => address & !0xfff,
        };
        let mut seen = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > MAX_LOGGED_UNCLAIMED || !seen.insert((space, key)) {
            return;
        }
        if seen.len() > MAX_LOGGED_UNCLAIMED {
            log::debug!(
                "more than {MAX_LOGGED_UNCLAIMED} unclaimed addresses; no longer logging them"
            );
            return;
        }
        let access = if write { "write to" } else { "read from" };
        match space {
            Space::Pio => log::debug!("guest {access} unclaimed port {address:#x}"),
            Space::Mmio => log::debug!("guest {access} unclaimed MMIO address {address:#x}"),
        }
    }
}

impl VcpuExitHandler for BusExitHandler {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if self.pio.read(u64::from(port), data).is_err() {
            data.fill(0xff);
            self.note_unclaimed(Space::Pio, u64::from(port), false);
        }
    }

    fn pio_write(&self, port: u16, data: &[u8]) {
        if self.pio.write(u64::from(port), data).is_err() {
            self.note_unclaimed(Space::Pio, u64::from(port), true);
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if self.mmio.read(addr, data).is_err() {
            data.fill(0xff);
            self.note_unclaimed(Space::Mmio, addr, false);
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if self.mmio.write(addr, data).is_err() {
            self.note_unclaimed(Space::Mmio, addr, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_devices::bus::BusDevice;

    struct Register(u8);

    impl BusDevice for Register {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn handler() -> BusExitHandler {
        let mut pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(Register(7))), 0x3f8, 8)
            .unwrap();
        let mut mmio = Bus::new();
        mmio.insert(Arc::new(Mutex::new(Register(9))), 0xd000_0000, 0x1000)
            .unwrap();
        BusExitHandler::new(Arc::new(pio), Arc::new(mmio))
    }

    #[test]
    fn claimed_addresses_reach_their_device() {
        let handler = handler();
        let mut byte = [0u8; 1];
        handler.pio_read(0x3f8, &mut byte);
        assert_eq!(byte, [7]);
        handler.pio_write(0x3f9, &[0x42]);
        handler.pio_read(0x3f8, &mut byte);
        assert_eq!(byte, [0x42]);

        let mut word = [0u8; 4];
        handler.mmio_read(0xd000_0010, &mut word);
        assert_eq!(word, [9; 4]);
    }

    #[test]
    fn unclaimed_addresses_read_all_ones_and_drop_writes() {
        let handler = handler();
        let mut word = [0u8; 4];
        handler.pio_read(0xcfc, &mut word);
        assert_eq!(word, [0xff; 4]);
        handler.mmio_write(0xe000_0000, &[1, 2, 3, 4]);
        let mut word = [0u8; 4];
        handler.mmio_read(0xe000_0000, &mut word);
        assert_eq!(word, [0xff; 4]);
    }

    #[test]
    fn the_log_memory_is_bounded() {
        let handler = handler();
        let mut byte = [0u8; 1];
        for port in 0..u16::MAX {
            if !(0x3f8..0x400).contains(&port) {
                handler.pio_read(port, &mut byte);
            }
        }
        assert!(handler.unclaimed.lock().unwrap().len() <= MAX_LOGGED_UNCLAIMED + 1);
    }
}
