//! The PS/2 keyboard behind the i8042's first port: it answers the commands a driver sends.
//!
//! It reports no key presses; it exists so that a keyboard driver (Linux's atkbd) finds a
//! well-behaved standard keyboard at once instead of waiting for replies that never come.

/// "Acknowledge": the keyboard accepted a command or argument.
pub(crate) const ACK: u8 = 0xfa;
/// "Resend": the keyboard did not understand the last byte.
pub(crate) const RESEND: u8 = 0xfe;
/// Sent after a reset: the basic assurance test passed.
pub(crate) const SELF_TEST_PASSED: u8 = 0xaa;
/// The first ID byte of a standard MF2 keyboard.
pub(crate) const ID_FIRST: u8 = 0xab;
/// The second ID byte, as the keyboard sends it and as the i8042 translates it to set 1.
pub(crate) const ID_SECOND: u8 = 0x83;
pub(crate) const ID_SECOND_TRANSLATED: u8 = 0x41;

const SET_LEDS: u8 = 0xed;
const ECHO: u8 = 0xee;
const SCANCODE_SET: u8 = 0xf0;
const GET_ID: u8 = 0xf2;
const SET_TYPEMATIC: u8 = 0xf3;
const RESEND_LAST: u8 = 0xfe;
const RESET: u8 = 0xff;

/// The scan code set a keyboard starts in.
const DEFAULT_SET: u8 = 2;

/// A standard PS/2 keyboard's command interpreter.
#[derive(Debug)]
pub(crate) struct Keyboard {
    /// The command whose argument byte comes next.
    awaiting: Option<u8>,
    scancode_set: u8,
    last_sent: u8,
}

impl Keyboard {
    pub(crate) fn new() -> Self {
        Self {
            awaiting: None,
            scancode_set: DEFAULT_SET,
            last_sent: ACK,
        }
    }

    /// The bytes the keyboard sends back for `byte` from the host. `translated` says whether
    /// the controller translates the keyboard's bytes to scan code set 1, which changes the
    /// bytes a driver sees for the ID and the scan code set.
    pub(crate) fn receive(&mut self, byte: u8, translated: bool) -> Vec<u8> {
        let reply = match self.awaiting.take() {
            Some(command) if Self::is_argument(command, byte) => {
                self.argument(command, byte, translated)
            }
            // Anything else ends the previous command and is a command itself.
            _ => self.command(byte, translated),
        };
        if let Some(&last) = reply.last() {
            self.last_sent = last;
        }
        reply
    }

    fn is_argument(command: u8, byte: u8) -> bool {
        match command {
            SET_LEDS => byte <= 0x07,
            SET_TYPEMATIC => byte <= 0x7f,
            SCANCODE_SET => byte <= 3,
            _ => false,
        }
    }

    fn argument(&mut self, command: u8, byte: u8, translated: bool) -> Vec<u8> {
        if command == SCANCODE_SET {
            if byte == 0 {
                return vec![ACK, set_code(self.scancode_set, translated)];
            }
            self.scancode_set = byte;
        }
        vec![ACK]
    }

    fn command(&mut self, byte: u8, translated: bool) -> Vec<u8> {
        match byte {
            SET_LEDS | SET_TYPEMATIC | SCANCODE_SET => {
                self.awaiting = Some(byte);
                vec![ACK]
            }
            ECHO => vec![ECHO],
            GET_ID => vec![
                ACK,
                ID_FIRST,
                if translated {
                    ID_SECOND_TRANSLATED
                } else {
                    ID_SECOND
                },
            ],
            RESEND_LAST => vec![self.last_sent],
            RESET => {
                self.scancode_set = DEFAULT_SET;
                vec![ACK, SELF_TEST_PASSED]
            }
            // Enable (f4), disable (f5), set defaults (f6) and the set-3 key type commands.
            0xf4..=0xfd => {
                if byte == 0xf5 || byte == 0xf6 {
                    self.scancode_set = DEFAULT_SET;
                }
                vec![ACK]
            }
            _ => vec![RESEND],
        }
    }
}

/// How a scan code set number reaches the driver: translated by the i8042 or not.
fn set_code(set: u8, translated: bool) -> u8 {
    match (translated, set) {
        (false, set) => set,
        (true, 1) => 0x43,
        (true, 2) => 0x41,
        (true, _) => 0x3f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_the_commands_a_driver_probes_with() {
        let mut kbd = Keyboard::new();
        assert_eq!(kbd.receive(GET_ID, false), [ACK, ID_FIRST, ID_SECOND]);
        assert_eq!(
            kbd.receive(GET_ID, true),
            [ACK, ID_FIRST, ID_SECOND_TRANSLATED]
        );
        assert_eq!(kbd.receive(SET_LEDS, false), [ACK]);
        assert_eq!(kbd.receive(0x07, false), [ACK]);
        assert_eq!(kbd.receive(SET_TYPEMATIC, false), [ACK]);
        assert_eq!(kbd.receive(0x20, false), [ACK]);
        assert_eq!(kbd.receive(0xf4, false), [ACK]);
        assert_eq!(kbd.receive(0xf5, false), [ACK]);
        assert_eq!(kbd.receive(ECHO, false), [ECHO]);
        assert_eq!(kbd.receive(RESET, false), [ACK, SELF_TEST_PASSED]);
        assert_eq!(kbd.receive(RESEND_LAST, false), [SELF_TEST_PASSED]);
        assert_eq!(kbd.receive(0x42, false), [RESEND]);
    }

    #[test]
    fn scan_code_set_can_be_read_and_changed() {
        let mut kbd = Keyboard::new();
        assert_eq!(kbd.receive(SCANCODE_SET, false), [ACK]);
        assert_eq!(kbd.receive(0, false), [ACK, 2]);
        assert_eq!(kbd.receive(SCANCODE_SET, false), [ACK]);
        assert_eq!(kbd.receive(3, false), [ACK]);
        assert_eq!(kbd.receive(SCANCODE_SET, false), [ACK]);
        assert_eq!(kbd.receive(0, true), [ACK, 0x3f]);
        assert_eq!(kbd.receive(RESET, false), [ACK, SELF_TEST_PASSED]);
        assert_eq!(kbd.receive(SCANCODE_SET, true), [ACK]);
        assert_eq!(kbd.receive(0, true), [ACK, 0x41]);
    }

    #[test]
    fn a_command_instead_of_an_argument_is_a_command() {
        let mut kbd = Keyboard::new();
        assert_eq!(kbd.receive(SET_LEDS, false), [ACK]);
        assert_eq!(kbd.receive(GET_ID, false), [ACK, ID_FIRST, ID_SECOND]);
        // And the LED command no longer waits for its argument.
        assert_eq!(kbd.receive(0x01, false), [RESEND]);
    }
}
