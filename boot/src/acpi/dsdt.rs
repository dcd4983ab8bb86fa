//! The Differentiated System Description Table: the device tree in AML.
//!
//! What petrel's DSDT declares (ASL as `iasl -d` prints it):
//!
//! ```text
//! DefinitionBlock ("", "DSDT", 2, "PETREL", "PETRELVM", 0x00000001)
//! {
//!     Scope (\_SB)
//!     {
//!         Device (COM1)                       // one per serial port: COM1, COM2, ...
//!         {
//!             Name (_HID, EisaId ("PNP0501"))  // 16550A-compatible UART
//!             Name (_UID, One)
//!             Name (_STA, 0x0F)
//!             Name (_CRS, ResourceTemplate ()
//!             {
//!                 IO (Decode16, 0x03F8, 0x03F8, 0x00, 0x08)
//!                 IRQNoFlags () {4}
//!             })
//!         }
//!         Device (KBD)                        // if the machine has the i8042
//!         {
//!             Name (_HID, EisaId ("PNP0303"))  // IBM enhanced keyboard controller
//!             Name (_STA, 0x0F)
//!             Name (_CRS, ResourceTemplate ()
//!             {
//!                 IO (Decode16, 0x0060, 0x0060, 0x01, 0x01)
//!                 IO (Decode16, 0x0064, 0x0064, 0x01, 0x01)
//!                 IRQNoFlags () {1}
//!             })
//!         }
//!         Device (VR00)                       // one per virtio-mmio transport: VR00, VR01, ...
//!         {
//!             Name (_HID, "LNRO0005")          // Linux's virtio-mmio ACPI ID
//!             Name (_UID, Zero)
//!             Name (_CRS, ResourceTemplate ()
//!             {
//!                 Memory32Fixed (ReadWrite, 0xC0000000, 0x00001000)
//!                 Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive) {5}
//!             })
//!         }
//!     }
//!     Name (\_S5, Package (0x02) { 0x05, Zero })
//! }
//! ```
//!
//! **Adding devices.** virtio-mmio transports need no code here: put them in
//! [`AcpiConfig::virtio_mmio`] and each becomes a `VRnn` device like the one above (Linux's
//! `virtio_mmio` driver binds to `LNRO0005`; the cloud kernels build no
//! `virtio_mmio.device=` command line support, so this is how they find the devices).
//! Another kind of device gets a function like [`virtio_mmio_device`] and a call in
//! [`build_dsdt`], inside `\_SB`.
//!
//! **Why the devices must be here.** Under hardware-reduced ACPI Linux has no legacy PIC, so
//! ISA IRQs 0-15 have no fixed Linux IRQ numbers: a driver gets its interrupt only from a
//! device's `_CRS`. The COM ports' and the keyboard's interrupts come from these entries
//! (`8250_pnp` and the i8042 PNP probe), and the 8250 driver keeps the console's `ttyS0`
//! name because it matches the port address, not `_UID`. `_UID` counts from 1 like the COM
//! number, as QEMU does; it only has to differ between devices with the same `_HID`.
//!
//! `\_S5` gives SLP_TYP 5 ([`S5_SLEEP_TYPE`]) for soft-off; there are no other sleep states.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};

use super::{
    AcpiConfig, AcpiError, IrqTrigger, LegacySerial, VirtioMmioDevice, IOAPIC_PINS, OEM_ID,
    OEM_REVISION, OEM_TABLE_ID, S5_SLEEP_TYPE, TABLE_HEADER_LEN,
};

/// DSDT revision: 2 makes AML integers 64 bits wide.
pub const DSDT_REVISION: u8 = 2;
/// Serial ports the DSDT can name (`COM1`-`COM4`).
pub const MAX_SERIAL_PORTS: usize = 4;
/// virtio-mmio devices the DSDT can name (`VR00`-`VR99`).
pub const MAX_VIRTIO_DEVICES: usize = 100;
/// `_HID` of a virtio-mmio transport.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";

/// Ports a serial port decodes.
const SERIAL_PORT_LEN: u8 = 8;
/// ISA IRQs are 0-15.
const ISA_IRQS: u32 = 16;
/// `_STA`: present, enabled, shown in the UI, functioning.
const STA_PRESENT: u8 = 0x0f;
/// The i8042's data and command ports and keyboard IRQ, fixed on every PC.
const I8042_DATA_PORT: u16 = 0x60;
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_KEYBOARD_IRQ: u8 = 1;
/// Small resource descriptor tag of `IRQNoFlags` (type 4, 2 bytes of data).
const IRQ_NO_FLAGS_TAG: u8 = 0x22;

/// `IRQNoFlags () {irq}`: the short ISA IRQ descriptor (edge, active high, exclusive).
/// `acpi_tables` only has the extended `Interrupt` descriptor, which ISA devices
/// traditionally do not use.
struct IrqNoFlags {
    irq: u8,
}

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(IRQ_NO_FLAGS_TAG);
        sink.word(1u16.checked_shl(u32::from(self.irq)).unwrap_or(0));
    }
}

/// `Device (COMn)` for `serial`, the `n`th serial port (from 1).
fn serial_device(n: u8, serial: &LegacySerial, sink: &mut dyn AmlSink) -> Result<(), AcpiError> {
    let port = serial.port;
    if port.checked_add(u16::from(SERIAL_PORT_LEN) - 1).is_none() {
        return Err(AcpiError::SerialPortRange { port });
    }
    let irq = u8::try_from(serial.irq)
        .ok()
        .filter(|&irq| u32::from(irq) < ISA_IRQS)
        .ok_or(AcpiError::SerialIrq {
            port,
            irq: serial.irq,
        })?;
    let hid = EISAName::new("PNP0501");
    let io = IO::new(port, port, 0, SERIAL_PORT_LEN);
    let irq = IrqNoFlags { irq };
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    Device::new(
        Path::new(&format!("COM{n}")),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_UID".into(), &n),
            &Name::new("_STA".into(), &STA_PRESENT),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
    Ok(())
}

/// `Device (KBD)`: the i8042 keyboard controller.
fn i8042_device(sink: &mut dyn AmlSink) {
    let hid = EISAName::new("PNP0303");
    let data = IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let command = IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    let irq = IrqNoFlags {
        irq: I8042_KEYBOARD_IRQ,
    };
    let crs = ResourceTemplate::new(vec![&data, &command, &irq]);
    Device::new(
        "KBD_".into(),
        vec![
            &Name::new("_HID".into(), &hid),
            &Name::new("_STA".into(), &STA_PRESENT),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
}

/// `Device (VRnn)` for `device`, the `index`th virtio-mmio transport (from 0, below
/// [`MAX_VIRTIO_DEVICES`]).
pub fn virtio_mmio_device(
    index: usize,
    device: &VirtioMmioDevice,
    sink: &mut dyn AmlSink,
) -> Result<(), AcpiError> {
    if index >= MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyVirtioDevices {
            count: index.saturating_add(1),
            max: MAX_VIRTIO_DEVICES,
        });
    }
    let window = || AcpiError::VirtioWindow {
        base: device.base,
        size: device.size,
    };
    let base = u32::try_from(device.base).map_err(|_| window())?;
    let size = u32::try_from(device.size).map_err(|_| window())?;
    if size == 0 || base.checked_add(size - 1).is_none() {
        return Err(window());
    }
    if device.irq >= IOAPIC_PINS {
        return Err(AcpiError::VirtioIrq {
            base: device.base,
            irq: device.irq,
        });
    }
    let memory = Memory32Fixed::new(true, base, size);
    let edge = device.trigger == IrqTrigger::Edge;
    let interrupt = Interrupt::new(true, edge, false, false, device.irq);
    let crs = ResourceTemplate::new(vec![&memory, &interrupt]);
    // `index` < 100, so the name has four characters and `_UID` fits a byte.
    let uid = index as u8;
    Device::new(
        Path::new(&format!("VR{index:02}")),
        vec![
            &Name::new("_HID".into(), &VIRTIO_MMIO_HID),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), &crs),
        ],
    )
    .to_aml_bytes(sink);
    Ok(())
}

/// The DSDT bytes for `config`'s serial ports, i8042 and virtio-mmio devices.
pub fn build_dsdt(config: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let count = config.serial_ports.len();
    if count > MAX_SERIAL_PORTS {
        return Err(AcpiError::TooManySerialPorts {
            count,
            max: MAX_SERIAL_PORTS,
        });
    }
    let count = config.virtio_mmio.len();
    if count > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyVirtioDevices {
            count,
            max: MAX_VIRTIO_DEVICES,
        });
    }

    let mut devices = Vec::new();
    for (n, serial) in (1u8..).zip(&config.serial_ports) {
        serial_device(n, serial, &mut devices)?;
    }
    if config.i8042 {
        i8042_device(&mut devices);
    }
    for (index, device) in config.virtio_mmio.iter().enumerate() {
        virtio_mmio_device(index, device, &mut devices)?;
    }

    let mut aml = Scope::raw("\\_SB_".into(), devices);
    Name::new("\\_S5_".into(), &Package::new(vec![&S5_SLEEP_TYPE, &0u8])).to_aml_bytes(&mut aml);

    let mut table = Sdt::new(
        *b"DSDT",
        TABLE_HEADER_LEN as u32,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&aml);
    Ok(table.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_bytes::{check_header, contains, u16_at, u32_at};
    use crate::acpi::AcpiPmRegisters;

    fn config() -> AcpiConfig {
        AcpiConfig {
            vcpus: 1,
            pm: AcpiPmRegisters {
                sleep_control: 0x600,
                sleep_status: 0x601,
                reset: 0x602,
                reset_value: 1,
            },
            i8042: true,
            serial_ports: vec![LegacySerial {
                port: 0x3f8,
                irq: 4,
            }],
            virtio_mmio: Vec::new(),
        }
    }

    fn virtio(i: u64) -> VirtioMmioDevice {
        VirtioMmioDevice {
            base: 0xc000_0000 + i * 0x1000,
            size: 0x1000,
            irq: 5 + i as u32,
            trigger: IrqTrigger::Level,
        }
    }

    /// Decodes an AML PkgLength at `bytes[0..]`: (value, bytes it took).
    fn pkg_length(bytes: &[u8]) -> (usize, usize) {
        let lead = bytes[0];
        let follow = usize::from(lead >> 6);
        if follow == 0 {
            return (usize::from(lead & 0x3f), 1);
        }
        let mut value = usize::from(lead & 0x0f);
        for i in 0..follow {
            value |= usize::from(bytes[1 + i]) << (4 + 8 * i);
        }
        (value, 1 + follow)
    }

    /// The AML body after the header, walked as `Scope (\_SB) { Device ... }` followed by
    /// `Name (\_S5, ...)`, checking that every length lands exactly where the next object
    /// starts. Returns the device names in order and the `\_S5` package bytes.
    fn walk(dsdt: &[u8]) -> (Vec<String>, Vec<u8>) {
        let aml = &dsdt[TABLE_HEADER_LEN..];
        assert_eq!(aml[0], 0x10, "ScopeOp");
        let (scope_len, n) = pkg_length(&aml[1..]);
        let scope_end = 1 + scope_len;
        assert_eq!(&aml[1 + n..1 + n + 5], b"\\_SB_");
        let mut off = 1 + n + 5;
        let mut names = Vec::new();
        while off < scope_end {
            assert_eq!(&aml[off..off + 2], &[0x5b, 0x82], "DeviceOp at {off}");
            let (len, n) = pkg_length(&aml[off + 2..]);
            let name = &aml[off + 2 + n..off + 2 + n + 4];
            names.push(String::from_utf8(name.to_vec()).unwrap());
            off += 2 + len;
        }
        assert_eq!(off, scope_end, "devices fill the scope exactly");
        let rest = &aml[scope_end..];
        assert_eq!(&rest[0..6], b"\x08\\_S5_", "Name (\\_S5, ...)");
        assert_eq!(rest[6], 0x12, "PackageOp");
        let (len, _) = pkg_length(&rest[7..]);
        assert_eq!(7 + len, rest.len(), "the package ends the table");
        (names, rest[7..].to_vec())
    }

    /// The bytes of the device named `name`.
    fn device<'a>(dsdt: &'a [u8], name: &[u8]) -> &'a [u8] {
        let at = dsdt
            .windows(4)
            .position(|w| w == name)
            .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(name)));
        &dsdt[at..]
    }

    #[test]
    fn header_checksum_and_structure() {
        let dsdt = build_dsdt(&config()).unwrap();
        check_header(&dsdt, b"DSDT", DSDT_REVISION);
        let (names, s5) = walk(&dsdt);
        assert_eq!(names, ["COM1", "KBD_"]);
        // Package (2) { 5, Zero }
        assert_eq!(&s5[1..], &[2, 0x0a, 5, 0x00]);
    }

    #[test]
    fn names_are_present() {
        let mut c = config();
        c.virtio_mmio = vec![virtio(0), virtio(1)];
        let dsdt = build_dsdt(&c).unwrap();
        for name in [&b"_S5_"[..], b"_SB_", b"COM1", b"KBD_", b"VR00", b"VR01"] {
            assert!(contains(&dsdt, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(contains(&dsdt, b"LNRO0005\0"));
        // EisaId ("PNP0501") and EisaId ("PNP0303") as DWord constants.
        assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x03, 0x03]));
        let (names, _) = walk(&dsdt);
        assert_eq!(names, ["COM1", "KBD_", "VR00", "VR01"]);
    }

    #[test]
    fn com1_resources() {
        let dsdt = build_dsdt(&config()).unwrap();
        let com1 = device(&dsdt, b"COM1");
        // _UID One, _STA 0x0F
        assert!(contains(com1, b"\x08_UID\x01"));
        assert!(contains(com1, b"\x08_STA\x0a\x0f"));
        // IO (Decode16, 0x3F8, 0x3F8, 0, 8), IRQNoFlags () {4}, EndTag
        let io = [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x00, 0x08];
        let irq = [0x22, 0x10, 0x00];
        let crs = [&io[..], &irq, &[0x79, 0x00]].concat();
        assert!(contains(com1, &crs));
    }

    #[test]
    fn i8042_resources_and_its_absence() {
        let dsdt = build_dsdt(&config()).unwrap();
        let kbd = device(&dsdt, b"KBD_");
        let crs = [
            &[0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01][..],
            &[0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01],
            &[0x22, 0x02, 0x00, 0x79, 0x00],
        ]
        .concat();
        assert!(contains(kbd, &crs));
        let mut c = config();
        c.i8042 = false;
        let dsdt = build_dsdt(&c).unwrap();
        assert!(!contains(&dsdt, b"KBD_"));
        assert_eq!(walk(&dsdt).0, ["COM1"]);
    }

    #[test]
    fn virtio_mmio_resources() {
        let mut c = config();
        c.virtio_mmio = vec![
            virtio(0),
            VirtioMmioDevice {
                trigger: IrqTrigger::Edge,
                ..virtio(1)
            },
        ];
        let dsdt = build_dsdt(&c).unwrap();
        for (i, flags) in [(0usize, 0x01u8), (1, 0x03)] {
            let name = format!("VR{i:02}");
            let dev = device(&dsdt, name.as_bytes());
            assert!(contains(dev, b"\x08_HID\x0dLNRO0005\x00"));
            let uid: &[u8] = if i == 0 {
                b"\x08_UID\x00"
            } else {
                b"\x08_UID\x01"
            };
            assert!(contains(dev, uid));
            // Memory32Fixed (ReadWrite, base, 0x1000)
            let at = dev.windows(1).position(|w| w[0] == 0x86).unwrap();
            assert_eq!(u16_at(dev, at + 1), 9);
            assert_eq!(dev[at + 3], 1, "read-write");
            assert_eq!(u32_at(dev, at + 4), 0xc000_0000 + 0x1000 * i as u32);
            assert_eq!(u32_at(dev, at + 8), 0x1000);
            // Interrupt (ResourceConsumer, Level|Edge, ActiveHigh, Exclusive) {5 + i}
            let irq = &dev[at + 12..at + 21];
            assert_eq!(&irq[..5], &[0x89, 6, 0, flags, 1]);
            assert_eq!(u32_at(irq, 5), 5 + i as u32);
        }
    }

    #[test]
    fn many_devices_keep_the_aml_well_formed() {
        let mut c = config();
        c.serial_ports = [0x3f8u16, 0x2f8, 0x3e8, 0x2e8]
            .into_iter()
            .zip([4, 3, 4, 3])
            .map(|(port, irq)| LegacySerial { port, irq })
            .collect();
        c.virtio_mmio = (0..MAX_VIRTIO_DEVICES as u64)
            .map(|i| VirtioMmioDevice {
                irq: 5 + (i as u32 % 19),
                ..virtio(i)
            })
            .collect();
        let dsdt = build_dsdt(&c).unwrap();
        check_header(&dsdt, b"DSDT", DSDT_REVISION);
        let (names, _) = walk(&dsdt);
        assert_eq!(names.len(), 4 + 1 + MAX_VIRTIO_DEVICES);
        assert_eq!(names[..4], ["COM1", "COM2", "COM3", "COM4"]);
        assert_eq!(names[5], "VR00");
        assert_eq!(names[104], "VR99");
    }

    #[test]
    fn invalid_devices_are_refused() {
        let with = |f: &dyn Fn(&mut AcpiConfig)| {
            let mut c = config();
            f(&mut c);
            build_dsdt(&c).unwrap_err()
        };
        let e = with(&|c| c.serial_ports = vec![c.serial_ports[0]; 5]);
        assert!(matches!(
            e,
            AcpiError::TooManySerialPorts { count: 5, max: 4 }
        ));
        let e = with(&|c| c.serial_ports[0].port = 0xfff9);
        assert!(matches!(e, AcpiError::SerialPortRange { port: 0xfff9 }));
        let e = with(&|c| c.serial_ports[0].irq = 16);
        assert_eq!(
            e.to_string(),
            "serial port 0x3f8: irq 16 is not an isa irq (0-15)"
        );
        let e = with(&|c| c.serial_ports[0].irq = u32::MAX);
        assert!(matches!(e, AcpiError::SerialIrq { .. }));
        let e = with(&|c| c.virtio_mmio = vec![virtio(0); 101]);
        assert!(matches!(
            e,
            AcpiError::TooManyVirtioDevices {
                count: 101,
                max: 100
            }
        ));
        for (base, size) in [
            (0xc000_0000, 0),
            (0x1_0000_0000, 0x1000),
            (0xffff_f000, 0x1001),
            (0, u64::MAX),
        ] {
            let e = with(&|c| {
                c.virtio_mmio = vec![VirtioMmioDevice {
                    base,
                    size,
                    ..virtio(0)
                }]
            });
            assert!(
                matches!(e, AcpiError::VirtioWindow { base: b, size: s } if b == base && s == size),
                "{e}"
            );
        }
        let e = with(&|c| {
            c.virtio_mmio = vec![VirtioMmioDevice {
                irq: 24,
                ..virtio(0)
            }]
        });
        assert!(matches!(e, AcpiError::VirtioIrq { irq: 24, .. }));
        // A window that ends exactly at 4 GiB is fine.
        let mut c = config();
        c.virtio_mmio = vec![VirtioMmioDevice {
            base: 0xffff_f000,
            size: 0x1000,
            ..virtio(0)
        }];
        build_dsdt(&c).unwrap();
    }

    #[test]
    fn irq_no_flags_encodes_a_mask() {
        for (irq, mask) in [(0u8, 0x0001u16), (4, 0x0010), (15, 0x8000)] {
            let mut bytes = Vec::new();
            IrqNoFlags { irq }.to_aml_bytes(&mut bytes);
            assert_eq!(bytes, [0x22, mask as u8, (mask >> 8) as u8]);
        }
    }
}
