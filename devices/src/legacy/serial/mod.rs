//! A 16550A UART, as found at COM1, built on `vm-superio`'s register model.
//!
//! [`SerialDevice`] adds what a VMM console needs around `vm_superio::Serial`: buffered
//! output, input back-pressure with a wake-up eventfd, interrupts through an
//! [`InterruptLine`], and the [`BusDevice`] glue.
//!
//! # When output reaches the host
//!
//! Output is buffered (see the `output` module) and written at each newline, and also whenever
//! the guest touches any register other than a transmit write or a line/modem status read:
//! that is how a driver ends a burst. Linux's 8250 console restores IER after every message,
//! and its tty path reads IIR in each transmit interrupt and clears IER.THRI when its queue
//! runs dry, so a kernel message, a shell prompt without a newline and the echo of one typed
//! character all appear at once, while 10,000 bytes of boot log cost about one `write(2)` per
//! line (one per 4 KiB without newlines) instead of one per byte. A guest that polls LSR, writes a few bytes without a newline and then
//! goes quiet (a bare-metal test program) has them written when the next byte finds them
//! 10 ms old, when the VMM calls [`SerialDevice::flush_output`], or when the device is
//! dropped. A VMM that runs such guests can call `flush_output` from a periodic timer.
//!
//! # Input
//!
//! [`SerialDevice::enqueue_input`] takes only what fits in the 64-byte receive FIFO and says
//! how much it took; the caller keeps the rest. When input was refused, the `input_drained`
//! eventfd is written once as soon as the guest has emptied the FIFO, so an event loop can
//! stop polling stdin while the guest is busy and resume on that event. No byte is dropped.
//!
//! # Access width
//!
//! The UART's registers are 8 bits wide. A wider access is split into byte accesses to
//! consecutive registers, as an ISA bus does (so `inw` at the base reads RBR then IER).
//! Offsets past the eighth register read as `0xff` and ignore writes.

mod events;
mod output;

use std::fmt;
use std::io::Write;
use std::sync::Arc;

use thiserror::Error;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use self::events::DrainNotifier;
use self::output::ConsoleOutput;
use crate::bus::BusDevice;
use crate::interrupt::{InterruptLine, InterruptTrigger};
use crate::legacy::byte_offsets;
use crate::report::ErrorLog;

/// The first I/O port of COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// The ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;
/// How many I/O ports a UART occupies.
pub const SERIAL_PORT_LEN: u16 = 8;

/// Transmit holding register (write) / receive buffer register (read).
const DATA: u8 = 0;
const LINE_STATUS: u8 = 5;
const MODEM_STATUS: u8 = 6;
const MODEM_CONTROL: u8 = 4;
/// Number of registers.
const REGISTERS: u64 = 8;
/// MCR loopback bit: transmitted bytes go back into the receive FIFO, input is not taken.
const MCR_LOOP: u8 = 0x10;
/// `vm-superio`'s reset value of MCR (OUT2).
const MCR_DEFAULT: u8 = 0x08;

/// Errors from feeding input to the UART.
///
/// No operation fails today: an interrupt that cannot be raised is logged and the input is
/// still queued (the guest sees it in LSR). The type lets future failures be added without
/// changing callers.
#[derive(Debug, Error)]
pub enum SerialError {}

type Uart = Serial<InterruptTrigger, DrainNotifier, ConsoleOutput>;

/// A 16550A UART with buffered host output and back-pressured host input.
pub struct SerialDevice {
    uart: Uart,
    /// Mirror of MCR, to know when the UART is in loopback mode.
    modem_control: u8,
    errors: ErrorLog,
}

impl SerialDevice {
    /// A UART raising `irq`, writing guest output to `out`, and writing `input_drained` when
    /// the guest empties a receive FIFO that refused input.
    pub fn new(
        irq: Arc<dyn InterruptLine>,
        out: Box<dyn Write + Send>,
        input_drained: Option<EventFd>,
    ) -> Self {
        Self {
            uart: Serial::with_events(
                InterruptTrigger::new(irq),
                DrainNotifier::new(input_drained),
                ConsoleOutput::new(out),
            ),
            modem_control: MCR_DEFAULT,
            errors: ErrorLog::new("serial port"),
        }
    }

    /// Queues as much of `bytes` as the receive FIFO has room for and raises the receive
    /// interrupt if the guest enabled it. Returns how many bytes were taken; the caller keeps
    /// the rest and offers them again after `input_drained` fires.
    ///
    /// Returns `Ok(0)` while the guest has the UART in loopback mode (its receiver then hears
    /// only itself); leaving loopback also fires `input_drained`.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        if bytes.is_empty() {
            return Ok(0);
        }
        let offered = bytes.len().min(self.room());
        let taken = if offered == 0 {
            0
        } else {
            match self.uart.enqueue_raw_bytes(&bytes[..offered]) {
                Ok(taken) => taken,
                // The bytes are queued before the interrupt is raised.
                Err(vm_superio::serial::Error::Trigger(e)) => {
                    self.errors
                        .failed(&format_args!("cannot raise the interrupt: {e}"));
                    offered
                }
                // `enqueue_raw_bytes` checks for room before queuing anything and never writes
                // output, so these mean nothing was queued.
                Err(
                    vm_superio::serial::Error::FullFifo | vm_superio::serial::Error::IOError(_),
                ) => 0,
            }
        };
        if taken < bytes.len() {
            self.uart.events().arm();
        }
        Ok(taken)
    }

    /// How many input bytes the receive FIFO can take now: 0 in loopback mode.
    /// Returning 0 arms `input_drained`, as a refused [`enqueue_input`](Self::enqueue_input)
    /// does.
    pub fn input_space(&self) -> usize {
        let space = self.room();
        if space == 0 {
            self.uart.events().arm();
        }
        space
    }

    /// Free space in the receive FIFO for host input.
    fn room(&self) -> usize {
        if self.in_loopback() {
            0
        } else {
            self.uart.fifo_capacity()
        }
    }

    /// Writes any buffered guest output to the host now.
    pub fn flush_output(&mut self) {
        self.uart.writer_mut().flush_pending();
    }

    /// How many bytes of guest output were dropped because the host writer failed.
    pub fn lost_output_bytes(&self) -> u64 {
        self.uart.writer().lost_bytes()
    }

    fn in_loopback(&self) -> bool {
        self.modem_control & MCR_LOOP != 0
    }

    fn read_register(&mut self, register: u8) -> u8 {
        let value = self.uart.read(register);
        if register != LINE_STATUS && register != MODEM_STATUS {
            self.end_of_burst();
        }
        value
    }

    fn write_register(&mut self, register: u8, value: u8) {
        if let Err(e) = self.uart.write(register, value) {
            self.errors.failed(&e);
        }
        if register == MODEM_CONTROL {
            let was_looping = self.in_loopback();
            self.modem_control = value;
            if was_looping && !self.in_loopback() && self.uart.fifo_capacity() > 0 {
                self.uart.events().notify();
            }
        }
        if register != DATA {
            self.end_of_burst();
        }
    }

    fn end_of_burst(&mut self) {
        if self.uart.writer().has_pending() {
            self.flush_output();
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (register, byte) in byte_offsets(offset).zip(data.iter_mut()) {
            *byte = match register_index(register) {
                Some(register) => self.read_register(register),
                None => 0xff,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (register, &value) in byte_offsets(offset).zip(data) {
            if let Some(register) = register_index(register) {
                self.write_register(register, value);
            }
        }
    }
}

/// The UART register at a byte offset, if there is one.
fn register_index(offset: Option<u64>) -> Option<u8> {
    offset
        .filter(|&offset| offset < REGISTERS)
        .and_then(|offset| u8::try_from(offset).ok())
}

impl fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SerialDevice")
            .field("fifo_capacity", &self.uart.fifo_capacity())
            .field("modem_control", &self.modem_control)
            .field("lost_output_bytes", &self.lost_output_bytes())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::output::testing::{Behaviour, HostWriter};
    use super::*;
    use crate::interrupt::tests::CountingLine;
    use crate::test_log;
    use std::io::ErrorKind;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCRATCH: u64 = 7;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DATA_READY: u8 = 0x01;
    const FIFO_SIZE: usize = 64;

    struct Rig {
        serial: SerialDevice,
        host: HostWriter,
        irq: Arc<CountingLine>,
        drained: EventFd,
    }

    fn rig() -> Rig {
        let host = HostWriter::new();
        let irq = Arc::new(CountingLine::default());
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = SerialDevice::new(
            irq.clone(),
            Box::new(host.clone()),
            Some(drained.try_clone().unwrap()),
        );
        Rig {
            serial,
            host,
            irq,
            drained,
        }
    }

    impl Rig {
        fn out(&mut self, offset: u64, value: u8) {
            self.serial.write(u64::from(COM1_PORT), offset, &[value]);
        }

        fn inb(&mut self, offset: u64) -> u8 {
            let mut byte = [0];
            self.serial.read(u64::from(COM1_PORT), offset, &mut byte);
            byte[0]
        }

        /// What a polling console driver does per byte: wait for THRE, then write.
        fn putc(&mut self, byte: u8) {
            assert_ne!(self.inb(LSR) & 0x20, 0);
            self.out(0, byte);
        }

        fn drained_fired(&self) -> bool {
            self.drained.read().is_ok()
        }
    }

    #[test]
    fn output_reaches_the_host_in_order() {
        let mut rig = rig();
        for &byte in b"Hello, world!\nsecond line\n" {
            rig.putc(byte);
        }
        assert_eq!(rig.host.data(), b"Hello, world!\nsecond line\n");
    }

    #[test]
    fn ten_thousand_port_writes_cost_few_host_writes() {
        let mut rig = rig();
        let text: Vec<u8> = (0..10_000u32)
            .map(|i| {
                if i % 80 == 79 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        for &byte in &text {
            rig.putc(byte);
        }
        // Linux restores IER after the message.
        rig.out(IER, 0);
        assert_eq!(rig.host.data(), text);
        // One write per line at most; the 10 ms age rule can add a few on a slow machine.
        let lines = text.iter().filter(|&&b| b == b'\n').count();
        assert!(rig.host.writes() <= lines + 1 + 10, "{}", rig.host.writes());

        let mut rig = self::rig();
        for _ in 0..10_000 {
            rig.putc(b'x');
        }
        rig.out(IER, 0);
        assert_eq!(rig.host.data().len(), 10_000);
        assert!(
            rig.host.writes() <= 10_000 / 4096 + 1 + 10,
            "{}",
            rig.host.writes()
        );
    }

    #[test]
    fn a_prompt_without_newline_shows_when_the_driver_ends_the_burst() {
        // Console path: the message is followed by restoring IER.
        let mut rig = rig();
        for &byte in b"login: " {
            rig.putc(byte);
        }
        rig.out(IER, IER_RDA);
        assert_eq!(rig.host.data(), b"login: ");

        // Tty path: the next transmit interrupt starts with an IIR read.
        let mut rig = self::rig();
        for &byte in b"# " {
            rig.out(0, byte);
        }
        rig.inb(IIR);
        assert_eq!(rig.host.data(), b"# ");

        // And the VMM can always push it out.
        let mut rig = self::rig();
        rig.putc(b'$');
        rig.serial.flush_output();
        assert_eq!(rig.host.data(), b"$");
    }

    #[test]
    fn status_polling_between_bytes_does_not_flush_each_byte() {
        let mut rig = rig();
        for _ in 0..100 {
            rig.putc(b'.');
            rig.inb(6); // MSR, polled with flow control
        }
        // Only the 10 ms age rule can flush here, and only on a stalled machine.
        assert!(rig.host.writes() <= 10, "{}", rig.host.writes());
        rig.inb(IIR);
        assert_eq!(rig.host.data(), [b'.'; 100]);
    }

    #[test]
    fn divisor_writes_are_not_output() {
        let mut rig = rig();
        rig.out(LCR, 0x80);
        rig.out(0, 0x0c);
        rig.out(IER, 0x00);
        rig.out(LCR, 0x03);
        rig.serial.flush_output();
        assert!(rig.host.data().is_empty());
        rig.out(LCR, 0x80);
        assert_eq!(rig.inb(0), 0x0c);
    }

    #[test]
    fn host_output_errors_never_reach_the_guest_and_are_logged_once() {
        let mut rig = rig();
        rig.host.set(Behaviour::Fail(ErrorKind::BrokenPipe));
        let records = test_log::capture(|| {
            for _ in 0..50 {
                for &byte in b"lost line\n" {
                    rig.putc(byte);
                }
                rig.out(IER, 0);
            }
        });
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].starts_with("WARN serial console output failed"));
        assert_eq!(rig.serial.lost_output_bytes(), 500);
        // The UART still works.
        rig.out(SCRATCH, 0x5a);
        assert_eq!(rig.inb(SCRATCH), 0x5a);
    }

    #[test]
    fn a_failing_interrupt_line_is_logged_not_fatal() {
        let mut rig = rig();
        rig.irq.fail.store(true, Ordering::SeqCst);
        let records = test_log::capture(|| {
            rig.out(IER, IER_THRE | IER_RDA);
            rig.out(IER, IER_THRE | IER_RDA);
            assert_eq!(rig.serial.enqueue_input(b"ab").unwrap(), 2);
        });
        assert_eq!(records.len(), 1, "{records:?}");
        assert!(records[0].contains("interrupt"), "{records:?}");
        assert_eq!(rig.inb(LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(rig.inb(0), b'a');
    }

    #[test]
    fn input_raises_the_receive_interrupt_when_enabled() {
        let mut rig = rig();
        assert_eq!(rig.serial.enqueue_input(b"x").unwrap(), 1);
        assert_eq!(rig.irq.take(), 0, "RDA interrupt not enabled yet");
        // Enabling it with data pending raises it.
        rig.out(IER, IER_RDA);
        assert_eq!(rig.irq.take(), 1);
        assert_eq!(rig.inb(IIR) & 0x0f, 0x04);
        assert_eq!(rig.inb(0), b'x');
        assert_eq!(rig.serial.enqueue_input(b"y").unwrap(), 1);
        assert_eq!(rig.irq.take(), 1);
    }

    #[test]
    fn input_that_does_not_fit_stays_with_the_caller_until_the_guest_drains_the_fifo() {
        let mut rig = rig();
        let input: Vec<u8> = (0..100).collect();
        assert_eq!(rig.serial.input_space(), FIFO_SIZE);

        let taken = rig.serial.enqueue_input(&input).unwrap();
        assert_eq!(taken, FIFO_SIZE);
        assert_eq!(rig.serial.input_space(), 0);
        assert_eq!(rig.serial.enqueue_input(&input[taken..]).unwrap(), 0);
        assert!(!rig.drained_fired());

        // The guest reads all but one byte: no room signal yet.
        for expected in 0..FIFO_SIZE as u8 - 1 {
            assert_eq!(rig.inb(0), expected);
            assert!(!rig.drained_fired());
        }
        // The last byte empties the FIFO.
        assert_eq!(rig.inb(0), FIFO_SIZE as u8 - 1);
        assert!(rig.drained_fired());
        assert_eq!(rig.inb(LSR) & LSR_DATA_READY, 0);
        assert_eq!(rig.serial.input_space(), FIFO_SIZE);

        assert_eq!(rig.serial.enqueue_input(&input[taken..]).unwrap(), 36);
        for expected in FIFO_SIZE as u8..100 {
            assert_eq!(rig.inb(0), expected);
        }
        // Nothing was refused this time, so no signal.
        assert!(!rig.drained_fired());
    }

    #[test]
    fn a_partly_taken_input_alone_arms_the_signal() {
        let mut rig = rig();
        assert_eq!(rig.serial.enqueue_input(&[b'k'; 70]).unwrap(), FIFO_SIZE);
        for _ in 0..FIFO_SIZE {
            assert!(!rig.drained_fired());
            assert_eq!(rig.inb(0), b'k');
        }
        assert!(rig.drained_fired());
    }

    #[test]
    fn reads_of_an_empty_fifo_do_not_signal() {
        let mut rig = rig();
        assert_eq!(rig.serial.enqueue_input(b"abc").unwrap(), 3);
        for _ in 0..5 {
            rig.inb(0);
        }
        assert!(!rig.drained_fired());
    }

    #[test]
    fn loopback_refuses_input_and_leaving_it_signals() {
        let mut rig = rig();
        rig.out(MCR, MCR_LOOP | MCR_DEFAULT);
        // The guest's loopback self-test works.
        rig.out(0, 0xa5);
        assert_eq!(rig.inb(0), 0xa5);
        assert_eq!(rig.serial.input_space(), 0);
        assert_eq!(rig.serial.enqueue_input(b"hi").unwrap(), 0);
        assert!(!rig.drained_fired());
        rig.out(MCR, MCR_DEFAULT);
        assert!(rig.drained_fired());
        assert_eq!(rig.serial.enqueue_input(b"hi").unwrap(), 2);
        assert!(rig.host.data().is_empty(), "looped bytes are not output");
    }

    #[test]
    fn wide_accesses_are_split_into_byte_registers() {
        let mut rig = rig();
        rig.serial.enqueue_input(b"q").unwrap();
        let mut word = [0; 2];
        rig.serial.read(0x3f8, 0, &mut word);
        assert_eq!(word, [b'q', 0]);
        rig.serial.write(0x3f8, 6, &[0, 0x77]);
        assert_eq!(rig.inb(SCRATCH), 0x77);
        // Past the eighth register: all ones, writes ignored.
        let mut dword = [0; 4];
        rig.serial.read(0x3f8, 6, &mut dword);
        assert_eq!(dword[2..], [0xff, 0xff]);
        rig.serial.write(0x3f8, 8, &[1, 2]);
        rig.serial.write(0x3f8, u64::MAX, &[1]);
        rig.serial.read(0x3f8, u64::MAX, &mut dword[..1]);
        assert_eq!(dword[0], 0xff);
    }

    #[test]
    fn works_on_a_bus_at_com1() {
        let host = HostWriter::new();
        let serial = SerialDevice::new(
            Arc::new(CountingLine::default()),
            Box::new(host.clone()),
            None,
        );
        let mut bus = crate::bus::Bus::new();
        bus.insert(
            Arc::new(std::sync::Mutex::new(serial)),
            u64::from(COM1_PORT),
            u64::from(SERIAL_PORT_LEN),
        )
        .unwrap();
        for &byte in b"ok\n" {
            bus.write(u64::from(COM1_PORT), &[byte]).unwrap();
        }
        assert_eq!(host.data(), b"ok\n");
        assert!(bus.write(u64::from(COM1_PORT) + 7, &[0, 0]).is_err());
    }

    /// `cargo test -p petrel-devices -- --ignored --nocapture serial_output_cost`
    #[test]
    #[ignore = "micro-benchmark; prints its result"]
    fn serial_output_cost() {
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        let mut serial = SerialDevice::new(Arc::new(CountingLine::default()), Box::new(null), None);
        let line = b"[    0.123456] a typical kernel log line of about eighty characters......\n";
        let start = Instant::now();
        let mut bytes = 0;
        while bytes < 10_000 {
            for &byte in line {
                let mut lsr = [0];
                serial.read(0x3f8, 5, &mut lsr);
                serial.write(0x3f8, 0, &[byte]);
            }
            bytes += line.len();
        }
        serial.write(0x3f8, 1, &[0]);
        let elapsed = start.elapsed();
        println!(
            "{bytes} bytes in {elapsed:?}: {:.1} ns per byte (LSR read + THR write)",
            elapsed.as_nanos() as f64 / bytes as f64
        );
    }
}
