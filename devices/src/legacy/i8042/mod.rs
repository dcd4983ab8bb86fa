//! The i8042 PS/2 controller at ports 0x60 (data) and 0x64 (status / command).
//!
//! The model covers what an operating system's probe and reboot code use, so that Linux's
//! i8042 driver finishes its probe at once, with no 0.5 s command time-outs and without
//! `i8042.noaux`-style options:
//!
//! - the status register: output-buffer-full, the system flag, "last write was a command",
//!   and "keyboard not locked"; the input buffer is never busy;
//! - the controller RAM (0x20-0x3f read, 0x60-0x7f write), whose byte 0 is the command byte
//!   (CTR), and the port enable/disable commands 0xa7/0xa8 (AUX) and 0xad/0xae (keyboard),
//!   which set and clear the CTR's disable bits;
//! - the self-tests: controller (0xaa → 0x55), keyboard interface (0xab → 0x00), AUX
//!   interface (0xa9 → 0x02, "clock line stuck high": no mouse port);
//! - the output port (0xd0 read, 0xd1 write, 0xdd/0xdf for A20), and the loop-back commands
//!   0xd2 (as if from the keyboard) and 0xd3 (AUX: echoed, but not flagged as AUX data, so
//!   Linux concludes there is no mouse port without waiting);
//! - CPU reset: command 0xfe, any pulse command 0xf0-0xfe with bit 0 clear, and writing the
//!   output port with its reset bit (bit 0) clear all write the reset eventfd.
//!
//! There is no mouse. A keyboard is present only when the device is built with
//! [`I8042Device::with_keyboard`], which needs an interrupt line (IRQ 1): it then answers
//! the commands a keyboard driver sends (ID, LEDs, typematic rate, scan code set, reset).
//! Without one, bytes sent to the keyboard are dropped, and Linux's keyboard driver gives up
//! after its own time-outs (in the background; the boot does not wait).
//!
//! The ports are 8 bits wide; a wider access is split into byte accesses at consecutive
//! offsets. Offsets 1-3 (ports 0x61-0x63) are not the controller's: they read as `0xff`.

mod keyboard;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use self::keyboard::Keyboard;
use crate::bus::BusDevice;
use crate::interrupt::InterruptLine;
use crate::legacy::byte_offsets;
use crate::report::ErrorLog;

/// The i8042's first port (data); the status / command port is `I8042_PORT + 4`.
pub const I8042_PORT: u16 = 0x60;
/// The span of ports from the data port to the command port.
pub const I8042_PORT_LEN: u16 = 5;
/// The ISA interrupt line of the keyboard.
pub const KEYBOARD_IRQ: u32 = 1;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
const STATUS_NOT_LOCKED: u8 = 0x10;

// Command byte (CTR) bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const CTR_TRANSLATE: u8 = 0x40;
/// Keyboard interrupt on, POST passed, no mouse port, no scan code translation.
const CTR_DEFAULT: u8 = CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLED;

// Output port bits.
const OUTPUT_PORT_NOT_RESET: u8 = 0x01;
const OUTPUT_PORT_A20: u8 = 0x02;
const OUTPUT_PORT_DEFAULT: u8 = OUTPUT_PORT_NOT_RESET | OUTPUT_PORT_A20;

// Controller commands.
const READ_RAM_FIRST: u8 = 0x20;
const READ_RAM_LAST: u8 = 0x3f;
const WRITE_RAM_FIRST: u8 = 0x60;
const WRITE_RAM_LAST: u8 = 0x7f;
const AUX_DISABLE: u8 = 0xa7;
const AUX_ENABLE: u8 = 0xa8;
const AUX_TEST: u8 = 0xa9;
const SELF_TEST: u8 = 0xaa;
const KBD_TEST: u8 = 0xab;
const KBD_DISABLE: u8 = 0xad;
const KBD_ENABLE: u8 = 0xae;
const READ_OUTPUT_PORT: u8 = 0xd0;
const WRITE_OUTPUT_PORT: u8 = 0xd1;
const WRITE_KBD_OUTPUT: u8 = 0xd2;
const WRITE_AUX_OUTPUT: u8 = 0xd3;
const WRITE_AUX: u8 = 0xd4;
const A20_DISABLE: u8 = 0xdd;
const A20_ENABLE: u8 = 0xdf;
const PULSE_FIRST: u8 = 0xf0;

// Replies.
const SELF_TEST_PASSED: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
const INTERFACE_CLOCK_HIGH: u8 = 0x02;

/// Bytes the controller holds for the host before dropping more.
const OUTPUT_CAPACITY: usize = 16;
const RAM_SIZE: usize = 32;

/// What the next byte written to the data port is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataTarget {
    Ram(u8),
    OutputPort,
    KeyboardOutput,
    AuxOutput,
    AuxDevice,
}

/// A byte waiting in the output buffer.
#[derive(Debug, Clone, Copy)]
struct Output {
    byte: u8,
    from_keyboard: bool,
}

/// An i8042 PS/2 controller that can reset the machine and, optionally, has a keyboard.
pub struct I8042Device {
    reset: EventFd,
    keyboard: Option<(Keyboard, Arc<dyn InterruptLine>)>,
    ram: [u8; RAM_SIZE],
    output_port: u8,
    data_target: Option<DataTarget>,
    last_write_was_command: bool,
    output: VecDeque<Output>,
    /// What the data port returns when the output buffer is empty.
    last_read: u8,
    reset_errors: ErrorLog,
    irq_errors: ErrorLog,
}

impl I8042Device {
    /// A controller with nothing on its ports, which writes `reset` when the guest resets the
    /// CPU through it.
    pub fn new(reset: EventFd) -> Self {
        let mut ram = [0; RAM_SIZE];
        ram[0] = CTR_DEFAULT;
        Self {
            reset,
            keyboard: None,
            ram,
            output_port: OUTPUT_PORT_DEFAULT,
            data_target: None,
            last_write_was_command: false,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
            last_read: 0,
            reset_errors: ErrorLog::new("i8042 reset notification"),
            irq_errors: ErrorLog::new("i8042 keyboard interrupt"),
        }
    }

    /// A controller with a PS/2 keyboard that raises `irq` (normally [`KEYBOARD_IRQ`]) when it
    /// has a byte for the guest.
    pub fn with_keyboard(reset: EventFd, irq: Arc<dyn InterruptLine>) -> Self {
        let mut device = Self::new(reset);
        device.keyboard = Some((Keyboard::new(), irq));
        device
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn set_ctr(&mut self, value: u8) {
        let was_enabled = self.ctr() & CTR_KBD_INT != 0;
        self.ram[0] = value;
        if !was_enabled {
            self.signal_keyboard_byte();
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_NOT_LOCKED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.ctr() & CTR_SYSTEM != 0 {
            status |= STATUS_SYSTEM;
        }
        if self.last_write_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        if let Some(output) = self.output.pop_front() {
            self.last_read = output.byte;
            self.signal_keyboard_byte();
        }
        self.last_read
    }

    /// Puts a controller reply in the output buffer, replacing anything stale.
    fn reply(&mut self, byte: u8) {
        self.output.clear();
        self.output.push_back(Output {
            byte,
            from_keyboard: false,
        });
    }

    fn push_from_keyboard(&mut self, bytes: &[u8]) {
        let was_empty = self.output.is_empty();
        for &byte in bytes {
            if self.output.len() == OUTPUT_CAPACITY {
                log::debug!("i8042 output buffer full, dropping {byte:#04x}");
                break;
            }
            self.output.push_back(Output {
                byte,
                from_keyboard: true,
            });
        }
        if was_empty {
            self.signal_keyboard_byte();
        }
    }

    /// Raises the keyboard interrupt if the byte now at the head of the output buffer came
    /// from the keyboard and the guest enabled the interrupt.
    fn signal_keyboard_byte(&mut self) {
        let Some((_, irq)) = &self.keyboard else {
            return;
        };
        let head_is_keyboard = self.output.front().is_some_and(|o| o.from_keyboard);
        if head_is_keyboard && self.ctr() & CTR_KBD_INT != 0 {
            match irq.trigger() {
                Ok(()) => self.irq_errors.succeeded(),
                Err(e) => self.irq_errors.failed(&e),
            }
        }
    }

    fn request_reset(&mut self) {
        log::debug!("i8042: guest requested a CPU reset");
        match self.reset.write(1) {
            Ok(()) => self.reset_errors.succeeded(),
            Err(e) => self.reset_errors.failed(&e),
        }
    }

    fn write_command(&mut self, command: u8) {
        self.last_write_was_command = true;
        self.data_target = None;
        let ctr = self.ctr();
        match command {
            READ_RAM_FIRST..=READ_RAM_LAST => {
                self.reply(self.ram[usize::from(command - READ_RAM_FIRST)]);
            }
            WRITE_RAM_FIRST..=WRITE_RAM_LAST => {
                self.data_target = Some(DataTarget::Ram(command - WRITE_RAM_FIRST));
            }
            AUX_DISABLE => self.set_ctr(ctr | CTR_AUX_DISABLED),
            AUX_ENABLE => self.set_ctr(ctr & !CTR_AUX_DISABLED),
            AUX_TEST => self.reply(INTERFACE_CLOCK_HIGH),
            SELF_TEST => {
                self.set_ctr(ctr | CTR_SYSTEM);
                self.reply(SELF_TEST_PASSED);
            }
            KBD_TEST => self.reply(INTERFACE_OK),
            KBD_DISABLE => self.set_ctr(ctr | CTR_KBD_DISABLED),
            KBD_ENABLE => self.set_ctr(ctr & !CTR_KBD_DISABLED),
            READ_OUTPUT_PORT => self.reply(self.output_port),
            WRITE_OUTPUT_PORT => self.data_target = Some(DataTarget::OutputPort),
            WRITE_KBD_OUTPUT => self.data_target = Some(DataTarget::KeyboardOutput),
            WRITE_AUX_OUTPUT => self.data_target = Some(DataTarget::AuxOutput),
            WRITE_AUX => self.data_target = Some(DataTarget::AuxDevice),
            A20_DISABLE => self.output_port &= !OUTPUT_PORT_A20,
            A20_ENABLE => self.output_port |= OUTPUT_PORT_A20,
            // Pulse output lines: a clear bit in the low nibble pulses that line low; bit 0 is
            // the CPU reset line. 0xff pulses nothing.
            PULSE_FIRST..=u8::MAX => {
                if command & OUTPUT_PORT_NOT_RESET == 0 {
                    self.request_reset();
                }
            }
            _ => log::debug!("i8042: ignoring unsupported command {command:#04x}"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.last_write_was_command = false;
        match self.data_target.take() {
            Some(DataTarget::Ram(0)) => self.set_ctr(value),
            Some(DataTarget::Ram(index)) => self.ram[usize::from(index)] = value,
            Some(DataTarget::OutputPort) => {
                self.output_port = value;
                if value & OUTPUT_PORT_NOT_RESET == 0 {
                    self.request_reset();
                }
            }
            Some(DataTarget::KeyboardOutput) => self.push_from_keyboard(&[value]),
            // No mouse port: the echo comes back without the AUX flag.
            Some(DataTarget::AuxOutput) => self.reply(value),
            Some(DataTarget::AuxDevice) => {
                log::debug!("i8042: no mouse, dropping {value:#04x}");
            }
            None => self.write_keyboard(value),
        }
    }

    fn write_keyboard(&mut self, value: u8) {
        let translated = self.ctr() & CTR_TRANSLATE != 0;
        let Some((keyboard, _)) = &mut self.keyboard else {
            log::debug!("i8042: no keyboard, dropping {value:#04x}");
            return;
        };
        let reply = keyboard.receive(value, translated);
        self.push_from_keyboard(&reply);
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (port, byte) in byte_offsets(offset).zip(data.iter_mut()) {
            *byte = match port {
                Some(DATA) => self.read_data(),
                Some(COMMAND) => self.status(),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (port, &value) in byte_offsets(offset).zip(data) {
            match port {
                Some(DATA) => self.write_data(value),
                Some(COMMAND) => self.write_command(value),
                _ => {}
            }
        }
    }
}

impl fmt::Debug for I8042Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042Device")
            .field("ctr", &self.ctr())
            .field("status", &self.status())
            .field("output_port", &self.output_port)
            .field("keyboard", &self.keyboard.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::keyboard::{ACK, ID_FIRST, ID_SECOND, SELF_TEST_PASSED as KBD_BAT_OK};
    use super::*;
    use crate::interrupt::tests::CountingLine;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    // Status bits Linux looks at that this model never sets.
    const STATUS_INPUT_FULL: u8 = 0x02;
    const STATUS_AUX_DATA: u8 = 0x20;

    // Linux's i8042 command words: low byte the command, bits 12-15 the number of parameter
    // bytes sent, bits 8-11 the number of bytes received.
    const CTL_RCTR: u16 = 0x0120;
    const CTL_WCTR: u16 = 0x1060;
    const CTL_TEST: u16 = 0x01aa;
    const AUX_LOOP: u16 = 0x11d3;
    const AUX_TEST_CMD: u16 = 0x01a9;
    const AUX_DISABLE_CMD: u16 = 0x00a7;
    const AUX_ENABLE_CMD: u16 = 0x00a8;
    const KBD_DISABLE_CMD: u16 = 0x00ad;
    const KBD_ENABLE_CMD: u16 = 0x00ae;
    const CTR_AUX_INT: u8 = 0x02;

    fn reset_evt() -> (EventFd, EventFd) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let clone = evt.try_clone().unwrap();
        (evt, clone)
    }

    fn inb(dev: &mut I8042Device, port: u64) -> u8 {
        let mut byte = [0];
        dev.read(u64::from(I8042_PORT), port, &mut byte);
        byte[0]
    }

    fn outb(dev: &mut I8042Device, port: u64, value: u8) {
        dev.write(u64::from(I8042_PORT), port, &[value]);
    }

    #[derive(Debug, PartialEq, Eq)]
    enum CommandError {
        /// Linux would have polled for 0.5 s and given up.
        Timeout,
        /// The AUX loop reply was not flagged as AUX data.
        AuxError,
    }

    /// Linux's `__i8042_command`, except that where Linux would poll the status register for
    /// up to half a second, this fails at once: the model must never make a driver wait.
    fn command(dev: &mut I8042Device, param: &mut [u8], command: u16) -> Result<(), CommandError> {
        let wait_write = |dev: &mut I8042Device| {
            if inb(dev, COMMAND) & STATUS_INPUT_FULL != 0 {
                Err(CommandError::Timeout)
            } else {
                Ok(())
            }
        };
        wait_write(dev)?;
        outb(dev, COMMAND, command as u8);
        for value in param.iter().take(usize::from((command >> 12) & 0xf)) {
            wait_write(dev)?;
            outb(dev, DATA, *value);
        }
        for value in param.iter_mut().take(usize::from((command >> 8) & 0xf)) {
            let status = inb(dev, COMMAND);
            if status & STATUS_OUTPUT_FULL == 0 {
                return Err(CommandError::Timeout);
            }
            if command == AUX_LOOP && status & STATUS_AUX_DATA == 0 {
                return Err(CommandError::AuxError);
            }
            *value = inb(dev, DATA);
        }
        Ok(())
    }

    /// Linux's `i8042_flush`: false if the output buffer never empties.
    fn flush(dev: &mut I8042Device) -> bool {
        for _ in 0..16 {
            if inb(dev, COMMAND) & STATUS_OUTPUT_FULL == 0 {
                return true;
            }
            inb(dev, DATA);
        }
        inb(dev, COMMAND) & STATUS_OUTPUT_FULL == 0
    }

    /// Linux's `i8042_toggle_aux`: the CTR must show the change.
    fn toggle_aux(dev: &mut I8042Device, on: bool) -> bool {
        let mut param = [0];
        let cmd = if on { AUX_ENABLE_CMD } else { AUX_DISABLE_CMD };
        if command(dev, &mut param, cmd).is_err() {
            return false;
        }
        command(dev, &mut param, CTL_RCTR).unwrap();
        (param[0] & CTR_AUX_DISABLED == 0) == on
    }

    #[test]
    fn linux_probe_finds_a_controller_and_keyboard_port_without_waiting() {
        let (reset, _) = reset_evt();
        let mut dev = I8042Device::new(reset);

        // i8042_controller_check
        assert!(flush(&mut dev), "No controller found");

        // i8042_controller_selftest
        let mut param = [0];
        command(&mut dev, &mut param, CTL_TEST).unwrap();
        assert_eq!(param[0], SELF_TEST_PASSED);

        // i8042_controller_init: two equal CTR reads, keylock, write back.
        let mut ctr = [[0u8]; 2];
        command(&mut dev, &mut ctr[0], CTL_RCTR).unwrap();
        command(&mut dev, &mut ctr[1], CTL_RCTR).unwrap();
        assert_eq!(ctr[0], ctr[1]);
        let initial_ctr = ctr[0][0];
        assert_ne!(
            inb(&mut dev, COMMAND) & STATUS_NOT_LOCKED,
            0,
            "Warning: Keylock active"
        );
        let mut linux_ctr = (initial_ctr | CTR_KBD_DISABLED) & !CTR_KBD_INT;
        command(&mut dev, &mut [linux_ctr], CTL_WCTR).unwrap();
        assert!(flush(&mut dev));

        // i8042_check_aux: the loop fails fast and the AUX test says "no port".
        assert!(flush(&mut dev));
        let mut param = [0x5a];
        assert_eq!(
            command(&mut dev, &mut param, AUX_LOOP),
            Err(CommandError::AuxError)
        );
        command(&mut dev, &mut param, AUX_TEST_CMD).unwrap();
        assert!(
            param[0] != 0 && param[0] != 0xfa && param[0] != 0xff,
            "AUX test must report a missing port, got {:#x}",
            param[0]
        );
        // i8042_check_aux returned -ENODEV; nothing else was sent for the AUX port.

        // i8042_setup_kbd → i8042_enable_kbd_port
        linux_ctr = (linux_ctr & !CTR_KBD_DISABLED) | CTR_KBD_INT;
        command(&mut dev, &mut [linux_ctr], CTL_WCTR).unwrap();
        let mut param = [0];
        command(&mut dev, &mut param, CTL_RCTR).unwrap();
        assert_eq!(param[0], linux_ctr);
        assert!(flush(&mut dev));

        // i8042_controller_reset on shutdown: disable both ports, restore the initial CTR.
        command(
            &mut dev,
            &mut [linux_ctr | CTR_KBD_DISABLED | CTR_AUX_DISABLED],
            CTL_WCTR,
        )
        .unwrap();
        command(&mut dev, &mut [initial_ctr], CTL_WCTR).unwrap();
        command(&mut dev, &mut param, CTL_RCTR).unwrap();
        assert_eq!(param[0], initial_ctr);
    }

    #[test]
    fn port_enable_commands_show_in_the_command_byte() {
        let (reset, _) = reset_evt();
        let mut dev = I8042Device::new(reset);
        assert!(toggle_aux(&mut dev, true));
        assert!(toggle_aux(&mut dev, false));
        assert!(toggle_aux(&mut dev, true));

        let mut param = [0];
        command(&mut dev, &mut param, KBD_DISABLE_CMD).unwrap();
        command(&mut dev, &mut param, CTL_RCTR).unwrap();
        assert_ne!(param[0] & CTR_KBD_DISABLED, 0);
        command(&mut dev, &mut param, KBD_ENABLE_CMD).unwrap();
        command(&mut dev, &mut param, CTL_RCTR).unwrap();
        assert_eq!(param[0] & CTR_KBD_DISABLED, 0);
    }

    #[test]
    fn self_test_and_command_byte_round_trip() {
        let (reset, _) = reset_evt();
        let mut dev = I8042Device::new(reset);
        assert_eq!(inb(&mut dev, COMMAND), STATUS_NOT_LOCKED | STATUS_SYSTEM);

        outb(&mut dev, COMMAND, SELF_TEST);
        assert_eq!(
            inb(&mut dev, COMMAND),
            STATUS_OUTPUT_FULL | STATUS_SYSTEM | STATUS_LAST_WAS_COMMAND | STATUS_NOT_LOCKED
        );
        assert_eq!(inb(&mut dev, DATA), SELF_TEST_PASSED);
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);

        outb(&mut dev, COMMAND, READ_RAM_FIRST);
        assert_eq!(inb(&mut dev, DATA), CTR_DEFAULT);
        outb(&mut dev, COMMAND, WRITE_RAM_FIRST);
        outb(&mut dev, DATA, CTR_AUX_INT | CTR_TRANSLATE);
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_LAST_WAS_COMMAND, 0);
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_SYSTEM, 0, "follows the CTR");
        outb(&mut dev, COMMAND, READ_RAM_FIRST);
        assert_eq!(inb(&mut dev, DATA), CTR_AUX_INT | CTR_TRANSLATE);

        // Other RAM bytes are plain storage.
        outb(&mut dev, COMMAND, WRITE_RAM_LAST);
        outb(&mut dev, DATA, 0x99);
        outb(&mut dev, COMMAND, READ_RAM_LAST);
        assert_eq!(inb(&mut dev, DATA), 0x99);

        // The keyboard interface test passes; reading again returns the last byte.
        outb(&mut dev, COMMAND, KBD_TEST);
        assert_eq!(inb(&mut dev, DATA), INTERFACE_OK);
        assert_eq!(inb(&mut dev, DATA), INTERFACE_OK);
    }

    #[test]
    fn a_new_command_replaces_a_stale_reply() {
        let (reset, _) = reset_evt();
        let mut dev = I8042Device::new(reset);
        outb(&mut dev, COMMAND, SELF_TEST);
        outb(&mut dev, COMMAND, READ_OUTPUT_PORT);
        assert_eq!(inb(&mut dev, DATA), OUTPUT_PORT_DEFAULT);
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn reset_commands_write_the_reset_eventfd() {
        let (reset, observer) = reset_evt();
        let mut dev = I8042Device::new(reset);

        outb(&mut dev, COMMAND, 0xfe);
        assert_eq!(observer.read().unwrap(), 1);

        // 0xff pulses no line, and is what Linux's A20 code sends as a null command.
        outb(&mut dev, COMMAND, 0xff);
        assert!(observer.read().is_err());
        // Any pulse with bit 0 clear resets.
        outb(&mut dev, COMMAND, 0xf0);
        assert_eq!(observer.read().unwrap(), 1);

        // Writing the output port: A20 on and reset high is harmless, reset low resets.
        outb(&mut dev, COMMAND, WRITE_OUTPUT_PORT);
        outb(&mut dev, DATA, 0xdf);
        assert!(observer.read().is_err());
        outb(&mut dev, COMMAND, READ_OUTPUT_PORT);
        assert_eq!(inb(&mut dev, DATA), 0xdf);
        outb(&mut dev, COMMAND, WRITE_OUTPUT_PORT);
        outb(&mut dev, DATA, 0xde);
        assert_eq!(observer.read().unwrap(), 1);

        // A20 commands only touch their bit.
        outb(&mut dev, COMMAND, A20_DISABLE);
        outb(&mut dev, COMMAND, READ_OUTPUT_PORT);
        assert_eq!(inb(&mut dev, DATA), 0xdc);
        outb(&mut dev, COMMAND, A20_ENABLE);
        outb(&mut dev, COMMAND, READ_OUTPUT_PORT);
        assert_eq!(inb(&mut dev, DATA), 0xde);
        assert!(observer.read().is_err());
    }

    #[test]
    fn without_a_keyboard_its_bytes_are_dropped() {
        let (reset, _) = reset_evt();
        let mut dev = I8042Device::new(reset);
        outb(&mut dev, DATA, 0xf2);
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        // Mouse bytes too.
        outb(&mut dev, COMMAND, WRITE_AUX);
        outb(&mut dev, DATA, 0xff);
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn a_keyboard_answers_through_its_interrupt() {
        let (reset, _) = reset_evt();
        let irq = Arc::new(CountingLine::default());
        let mut dev = I8042Device::with_keyboard(reset, irq.clone());

        // Linux disables the keyboard interrupt while it sets the controller up.
        outb(&mut dev, COMMAND, WRITE_RAM_FIRST);
        outb(&mut dev, DATA, CTR_SYSTEM | CTR_KBD_DISABLED);
        outb(&mut dev, DATA, 0xf2); // GET ID, sent with the interrupt off
        assert_eq!(irq.take(), 0);
        assert_ne!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);

        // Turning the interrupt on delivers the waiting byte.
        outb(&mut dev, COMMAND, WRITE_RAM_FIRST);
        outb(&mut dev, DATA, CTR_SYSTEM | CTR_KBD_INT);
        assert_eq!(irq.take(), 1);

        // One interrupt per byte, as the handler reads one byte per interrupt.
        for expected in [ACK, ID_FIRST, ID_SECOND] {
            assert_ne!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
            assert_eq!(inb(&mut dev, DATA), expected);
            let more = inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL != 0;
            assert_eq!(irq.take(), usize::from(more));
        }
        assert_eq!(inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);

        // Reset: ACK, then the self-test result.
        outb(&mut dev, DATA, 0xff);
        assert_eq!(irq.take(), 1);
        assert_eq!(inb(&mut dev, DATA), ACK);
        assert_eq!(irq.take(), 1);
        assert_eq!(inb(&mut dev, DATA), KBD_BAT_OK);
        assert_eq!(irq.take(), 0);

        // Controller replies do not raise the keyboard interrupt.
        outb(&mut dev, COMMAND, SELF_TEST);
        assert_eq!(irq.take(), 0);
        assert_eq!(inb(&mut dev, DATA), SELF_TEST_PASSED);
    }

    #[test]
    fn the_keyboard_id_is_translated_when_the_controller_translates() {
        let (reset, _) = reset_evt();
        let mut dev = I8042Device::with_keyboard(reset, Arc::new(CountingLine::default()));
        outb(&mut dev, COMMAND, WRITE_RAM_FIRST);
        outb(&mut dev, DATA, CTR_DEFAULT | CTR_TRANSLATE);
        outb(&mut dev, DATA, 0xf2);
        assert_eq!(inb(&mut dev, DATA), ACK);
        assert_eq!(inb(&mut dev, DATA), ID_FIRST);
        assert_eq!(inb(&mut dev, DATA), 0x41);
    }

    #[test]
    fn the_output_buffer_is_bounded() {
        let (reset, _) = reset_evt();
        let irq = Arc::new(CountingLine::default());
        let mut dev = I8042Device::with_keyboard(reset, irq.clone());
        for i in 0..40 {
            outb(&mut dev, COMMAND, WRITE_KBD_OUTPUT);
            outb(&mut dev, DATA, i);
        }
        assert_eq!(irq.take(), 1, "only the first byte found the buffer empty");
        let mut read = Vec::new();
        while inb(&mut dev, COMMAND) & STATUS_OUTPUT_FULL != 0 {
            read.push(inb(&mut dev, DATA));
        }
        assert_eq!(read, (0..OUTPUT_CAPACITY as u8).collect::<Vec<_>>());
    }

    #[test]
    fn wide_and_foreign_offsets_are_handled() {
        let (reset, observer) = reset_evt();
        let mut dev = I8042Device::new(reset);
        let mut bytes = [0; 5];
        dev.read(0x60, 0, &mut bytes);
        assert_eq!(bytes[1..4], [0xff; 3]);
        assert_eq!(bytes[4], STATUS_NOT_LOCKED | STATUS_SYSTEM);
        // A 2-byte write at 0x63 reaches the command port with its second byte.
        dev.write(0x60, 3, &[0x00, 0xfe]);
        assert_eq!(observer.read().unwrap(), 1);
        dev.write(0x60, 1, &[0xfe]);
        dev.write(0x60, u64::MAX, &[0xfe]);
        dev.read(0x60, u64::MAX, &mut bytes[..1]);
        assert_eq!(bytes[0], 0xff);
        assert!(observer.read().is_err());
    }

    #[test]
    fn a_failing_keyboard_interrupt_is_not_fatal() {
        let (reset, _) = reset_evt();
        let irq = Arc::new(CountingLine::default());
        irq.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut dev = I8042Device::with_keyboard(reset, irq);
        outb(&mut dev, DATA, 0xf2);
        assert_eq!(inb(&mut dev, DATA), ACK);
    }
}
