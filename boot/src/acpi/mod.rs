//! ACPI tables that describe the machine to the guest: where its CPUs and interrupt
//! controllers are, which devices exist and what resources they use, and how to power the
//! machine off or reset it.
//!
//! [`write_acpi_tables`] writes one fixed set of tables into the BIOS area
//! `[0xE0000, 0x100000)`, which petrel's e820 map already reserves:
//!
//! | table | built by | what it holds |
//! |-------|----------|---------------|
//! | RSDP (at `0xE0000`) | [`rsdp`] | the entry point: the XSDT's address. Linux finds it through `boot_params.acpi_rsdp_addr` ([`crate::zero_page::set_acpi_rsdp`]) or by scanning the BIOS area |
//! | XSDT | [`xsdt`] | the addresses of the FADT and the MADT |
//! | FADT (`FACP`) | [`fadt`] | hardware-reduced ACPI, the sleep control/status and reset registers, boot flags, the DSDT's address |
//! | MADT (`APIC`) | [`madt`] | one local APIC (or x2APIC) per vCPU, the I/O APIC, the IRQ 0 override, LINT1 = NMI |
//! | DSDT | [`dsdt`] | AML: `\_S5` and the devices (COM ports, the i8042, virtio-mmio) with their resources |
//!
//! The tables are laid out from `0xE0000` in that order, each 16-byte aligned. Table layout
//! and AML come from the `acpi_tables` crate; the few MADT entries and the one AML resource
//! descriptor it lacks are small [`acpi_tables::Aml`] types here.
//!
//! There is no FACS (hardware-reduced ACPI has no global lock and no firmware waking vector),
//! no RSDT (the XSDT supersedes it) and no SCI.

pub mod dsdt;
pub mod fadt;
pub mod madt;
pub mod rsdp;
pub mod xsdt;

use petrel_memory::GuestMemoryMmap;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

/// Start of the area the tables go in (the BIOS area, reserved in e820).
pub const ACPI_TABLES_START: u64 = 0xE_0000;
/// End (exclusive) of the area the tables go in.
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// Where the RSDP goes: the first 16-byte boundary Linux's BIOS-area scan looks at.
pub const RSDP_ADDR: u64 = ACPI_TABLES_START;
/// OEM ID in every table header and in the RSDP.
pub const OEM_ID: [u8; 6] = *b"PETREL";
/// OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"PETRELVM";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;
/// The SLP_TYP value of S5 (soft off) in the DSDT's `\_S5` package. The sleep control
/// register model must power off on exactly this value (petrel-devices' `S5_SLEEP_TYPE`).
pub const S5_SLEEP_TYPE: u8 = 5;
/// The I/O APIC's ID (the in-kernel I/O APIC's ID register reads 0).
pub const IOAPIC_ID: u8 = 0;
/// Number of I/O APIC pins, and so of GSIs (0-23).
pub const IOAPIC_PINS: u32 = 24;
/// Length of the standard table header every table but the RSDP starts with.
pub const TABLE_HEADER_LEN: usize = 36;

/// Every table starts on this boundary (the RSDP must be 16-byte aligned).
const TABLE_ALIGN: u64 = 16;

/// The port-I/O registers of the hardware-reduced ACPI power management device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiPmRegisters {
    /// Sleep control register (8 bits): the guest writes `(SLP_TYP << 2) | SLP_EN`.
    pub sleep_control: u16,
    /// Sleep status register (8 bits, WAK_STS in bit 7).
    pub sleep_status: u16,
    /// Reset register (8 bits).
    pub reset: u16,
    /// The value that resets the machine when written to [`AcpiPmRegisters::reset`].
    pub reset_value: u8,
}

/// A 16550-compatible serial port on the ISA bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacySerial {
    /// First of its 8 ports (0x3f8 for COM1).
    pub port: u16,
    /// ISA IRQ (0-15; 4 for COM1).
    pub irq: u32,
}

/// How an interrupt line signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqTrigger {
    /// The device pulses the line; each pulse is one interrupt. Right for a plain KVM irqfd.
    Edge,
    /// The device holds the line until the guest acknowledges. Needs a resampling irqfd
    /// (`KVM_IRQFD_FLAG_RESAMPLE`) that re-asserts while the device's interrupt status is
    /// set; with a plain irqfd, a pulse that arrives before the guest's EOI is lost.
    Level,
}

/// A virtio-mmio transport, described to the guest as an `LNRO0005` device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of its register window (below 4 GiB).
    pub base: u64,
    /// Size of the register window (normally 0x1000).
    pub size: u64,
    /// GSI (I/O APIC pin, 0-23).
    pub irq: u32,
    /// How the transport raises [`VirtioMmioDevice::irq`].
    pub trigger: IrqTrigger,
}

/// What the tables describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs; vCPU `i` has APIC ID `i`.
    pub vcpus: u32,
    /// The power management registers petrel implements.
    pub pm: AcpiPmRegisters,
    /// Whether the machine has an i8042 at ports 0x60/0x64 (keyboard IRQ 1): sets the
    /// FADT's 8042 boot flag and adds a `PNP0303` device to the DSDT, through which Linux
    /// gets the keyboard interrupt (hardware-reduced ACPI has no fixed ISA IRQ numbers).
    pub i8042: bool,
    /// Serial ports, described as `COM1`, `COM2`, ... in this order.
    pub serial_ports: Vec<LegacySerial>,
    /// virtio-mmio transports, described as `VR00`, `VR01`, ... in this order.
    pub virtio_mmio: Vec<VirtioMmioDevice>,
}

/// Why the ACPI tables could not be built or written.
#[derive(Debug, Error)]
pub enum AcpiError {
    /// The configuration has no vCPU.
    #[error("the machine needs at least one vcpu")]
    NoVcpus,
    /// A power management register is at port 0, which ACPI reads as "not implemented".
    #[error("acpi {register} register at port 0")]
    ZeroPmPort {
        /// Which register.
        register: &'static str,
    },
    /// More serial ports than the DSDT names (`COM1`-`COM4`).
    #[error("{count} serial ports, at most {max} can be described")]
    TooManySerialPorts {
        /// Ports asked for.
        count: usize,
        /// Ports allowed.
        max: usize,
    },
    /// A serial port's 8 ports run past 0xffff.
    #[error("serial port {port:#x}: its 8 ports run past 0xffff")]
    SerialPortRange {
        /// The port's base.
        port: u16,
    },
    /// A serial port's IRQ is not an ISA IRQ.
    #[error("serial port {port:#x}: irq {irq} is not an isa irq (0-15)")]
    SerialIrq {
        /// The port's base.
        port: u16,
        /// The IRQ asked for.
        irq: u32,
    },
    /// More virtio-mmio devices than the DSDT names (`VR00`-`VR99`).
    #[error("{count} virtio-mmio devices, at most {max} can be described")]
    TooManyVirtioDevices {
        /// Devices asked for.
        count: usize,
        /// Devices allowed.
        max: usize,
    },
    /// A virtio-mmio window is empty or not entirely below 4 GiB.
    #[error("virtio-mmio window {base:#x} size {size:#x} is empty or not below 4 gib")]
    VirtioWindow {
        /// Window base.
        base: u64,
        /// Window size.
        size: u64,
    },
    /// A virtio-mmio device's GSI is not an I/O APIC pin.
    #[error("virtio-mmio device at {base:#x}: gsi {irq} is not an i/o apic pin (0-23)")]
    VirtioIrq {
        /// Window base.
        base: u64,
        /// The GSI asked for.
        irq: u32,
    },
    /// The tables do not fit in the BIOS area.
    #[error("acpi tables need {needed} bytes, the bios area holds {available}")]
    DoesNotFit {
        /// Bytes needed from [`ACPI_TABLES_START`], alignment included.
        needed: u64,
        /// Bytes in `[ACPI_TABLES_START, ACPI_TABLES_END)`.
        available: u64,
    },
    /// Guest memory refused a write.
    #[error("cannot write the {table} table at {addr:#x}")]
    Write {
        /// Table signature.
        table: &'static str,
        /// Where it was going.
        addr: u64,
        /// What guest memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Hands out 16-byte aligned addresses from [`ACPI_TABLES_START`] upwards.
struct Placement {
    next: u64,
}

impl Placement {
    fn new() -> Self {
        Self {
            next: ACPI_TABLES_START,
        }
    }

    /// The address of a table of `len` bytes placed next.
    fn place(&mut self, len: usize) -> u64 {
        let addr = self.next;
        // Lengths are bounded long before this could overflow (see `write_acpi_tables`).
        let end = addr.saturating_add(len as u64);
        self.next = end.div_ceil(TABLE_ALIGN).saturating_mul(TABLE_ALIGN);
        addr
    }

    /// Fails unless everything placed so far ends by [`ACPI_TABLES_END`].
    fn check_fits(needed_end: u64) -> Result<(), AcpiError> {
        if needed_end > ACPI_TABLES_END {
            return Err(AcpiError::DoesNotFit {
                needed: needed_end - ACPI_TABLES_START,
                available: ACPI_TABLES_END - ACPI_TABLES_START,
            });
        }
        Ok(())
    }
}

/// Builds the tables for `config` and writes them into `mem` from [`ACPI_TABLES_START`]:
/// RSDP, XSDT, FADT, MADT, DSDT. Returns the RSDP's address ([`RSDP_ADDR`]), for
/// `boot_params.acpi_rsdp_addr` ([`crate::zero_page::set_acpi_rsdp`]).
///
/// Nothing is written unless the whole set fits below [`ACPI_TABLES_END`] and every part of
/// `config` is valid.
pub fn write_acpi_tables(mem: &GuestMemoryMmap, config: &AcpiConfig) -> Result<u64, AcpiError> {
    // build_madt refuses a vCPU count whose MADT alone cannot fit, before allocating it.
    let madt = madt::build_madt(config.vcpus)?;
    let dsdt = dsdt::build_dsdt(config)?;

    let mut placement = Placement::new();
    let rsdp_addr = placement.place(rsdp::RSDP_LEN);
    let xsdt_addr = placement.place(xsdt::xsdt_len(2));
    let fadt_addr = placement.place(fadt::FADT_LEN);
    let madt_addr = placement.place(madt.len());
    let dsdt_addr = placement.place(dsdt.len());
    Placement::check_fits(dsdt_addr.saturating_add(dsdt.len() as u64))?;

    let fadt = fadt::build_fadt(&config.pm, config.i8042, dsdt_addr)?;
    let xsdt = xsdt::build_xsdt(&[fadt_addr, madt_addr]);
    let rsdp = rsdp::build_rsdp(xsdt_addr);

    for (table, addr, bytes) in [
        ("RSDP", rsdp_addr, &rsdp),
        ("XSDT", xsdt_addr, &xsdt),
        ("FACP", fadt_addr, &fadt),
        ("APIC", madt_addr, &madt),
        ("DSDT", dsdt_addr, &dsdt),
    ] {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::Write {
                table,
                addr,
                source,
            })?;
        log::debug!("acpi: {table} at {addr:#x}, {} bytes", bytes.len());
    }
    Ok(rsdp_addr)
}

/// Byte-level helpers for the table tests.
#[cfg(test)]
pub(crate) mod test_bytes {
    /// The byte sum of `bytes` (a valid ACPI checksum makes it 0).
    pub(crate) fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    pub(crate) fn u16_at(bytes: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(bytes[off..off + 2].try_into().unwrap())
    }

    pub(crate) fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    pub(crate) fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    /// True if `needle` occurs in `haystack`.
    pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Checks the standard header of `table`: signature, length field = actual length,
    /// revision, checksum, OEM fields.
    pub(crate) fn check_header(table: &[u8], signature: &[u8; 4], revision: u8) {
        assert!(table.len() >= super::TABLE_HEADER_LEN);
        assert_eq!(&table[0..4], signature);
        assert_eq!(u32_at(table, 4) as usize, table.len(), "length field");
        assert_eq!(table[8], revision, "revision");
        assert_eq!(sum(table), 0, "checksum");
        assert_eq!(&table[10..16], &super::OEM_ID);
        assert_eq!(&table[16..24], &super::OEM_TABLE_ID);
        assert_eq!(u32_at(table, 24), super::OEM_REVISION);
    }
}

#[cfg(test)]
mod tests {
    use super::test_bytes::*;
    use super::*;
    use petrel_memory::guest_ram::create_guest_memory;
    use petrel_memory::layout::{MemoryLayout, MIB};

    fn pm() -> AcpiPmRegisters {
        AcpiPmRegisters {
            sleep_control: 0x600,
            sleep_status: 0x601,
            reset: 0x602,
            reset_value: 0x01,
        }
    }

    fn com1() -> LegacySerial {
        LegacySerial {
            port: 0x3f8,
            irq: 4,
        }
    }

    fn config(vcpus: u32) -> AcpiConfig {
        AcpiConfig {
            vcpus,
            pm: pm(),
            i8042: true,
            serial_ports: vec![com1()],
            virtio_mmio: Vec::new(),
        }
    }

    /// The largest configuration petrel can ask for: 254 vCPUs, COM1-COM4, 32 virtio devices.
    fn worst_case() -> AcpiConfig {
        AcpiConfig {
            vcpus: 254,
            serial_ports: [0x3f8, 0x2f8, 0x3e8, 0x2e8]
                .iter()
                .zip([4, 3, 4, 3])
                .map(|(&port, irq)| LegacySerial { port, irq })
                .collect(),
            virtio_mmio: (0..32)
                .map(|i| VirtioMmioDevice {
                    base: 0xc000_0000 + i * 0x1000,
                    size: 0x1000,
                    irq: 5 + (i as u32 % 19),
                    trigger: IrqTrigger::Level,
                })
                .collect(),
            ..config(1)
        }
    }

    fn memory() -> GuestMemoryMmap {
        create_guest_memory(&MemoryLayout::new(32 * MIB).unwrap()).unwrap()
    }

    /// A table read back from guest memory: its header's length says how much to read.
    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut bytes = vec![0u8; len as usize];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    /// Every table reachable from the RSDP at `rsdp_addr`: (address, bytes) for the XSDT,
    /// each XSDT entry, and the DSDT (from the FADT's X_DSDT).
    fn tables(mem: &GuestMemoryMmap, rsdp_addr: u64) -> Vec<(u64, Vec<u8>)> {
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(rsdp_addr)).unwrap();
        let xsdt_addr = u64_at(&rsdp, 24);
        let xsdt = table_at(mem, xsdt_addr);
        let mut all = vec![(xsdt_addr, xsdt.clone())];
        for entry in xsdt[36..].chunks(8) {
            let addr = u64::from_le_bytes(entry.try_into().unwrap());
            let table = table_at(mem, addr);
            if &table[0..4] == b"FACP" {
                let dsdt_addr = u64_at(&table, 140);
                all.push((dsdt_addr, table_at(mem, dsdt_addr)));
            }
            all.push((addr, table));
        }
        all
    }

    #[test]
    fn rsdp_is_at_0xe0000_with_both_checksums() {
        let mem = memory();
        let addr = write_acpi_tables(&mem, &config(2)).unwrap();
        assert_eq!(addr, 0xe0000);
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(0xe0000)).unwrap();
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&rsdp), 0, "extended checksum");
        assert_eq!(&rsdp[9..15], b"PETREL");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(&rsdp, 16), 0, "no RSDT");
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        let xsdt = u64_at(&rsdp, 24);
        assert!((0xe0000..0x100000).contains(&xsdt));
    }

    #[test]
    fn xsdt_points_at_facp_and_apic_and_facp_at_the_dsdt() {
        let mem = memory();
        let rsdp = write_acpi_tables(&mem, &config(4)).unwrap();
        let all = tables(&mem, rsdp);
        let signatures: Vec<&[u8]> = all.iter().map(|(_, t)| &t[0..4]).collect();
        assert_eq!(
            signatures,
            [&b"XSDT"[..], &b"DSDT"[..], &b"FACP"[..], &b"APIC"[..]]
        );
        let revisions = [1, 2, 6, 5];
        for ((_, table), revision) in all.iter().zip(revisions) {
            check_header(table, table[0..4].try_into().unwrap(), revision);
        }
        // RSDP, XSDT, FADT, MADT, DSDT in that order, 16-byte aligned, inside the BIOS area.
        let addrs: Vec<u64> = [0, 2, 3, 1].iter().map(|&i| all[i].0).collect();
        assert!(addrs.windows(2).all(|w| w[0] < w[1]), "{addrs:x?}");
        assert!(addrs.iter().all(|a| a % 16 == 0 && *a > 0xe0000));
        let (dsdt_addr, dsdt) = &all[1];
        assert!(dsdt_addr + dsdt.len() as u64 <= 0x100000);
    }

    #[test]
    fn nothing_outside_the_bios_area_is_touched() {
        let mem = memory();
        mem.write_slice(&[0xaa; 0x100], GuestAddress(0xdff00))
            .unwrap();
        mem.write_slice(&[0xaa; 0x100], GuestAddress(0x100000))
            .unwrap();
        write_acpi_tables(&mem, &worst_case()).unwrap();
        for addr in [0xdff00, 0x100000] {
            let mut back = [0u8; 0x100];
            mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
            assert!(back.iter().all(|&b| b == 0xaa), "{addr:#x}");
        }
    }

    #[test]
    fn the_worst_case_fits_with_room_to_spare() {
        let config = worst_case();
        let mem = memory();
        let rsdp = write_acpi_tables(&mem, &config).unwrap();
        let all = tables(&mem, rsdp);
        let end = all
            .iter()
            .map(|(addr, t)| addr + t.len() as u64)
            .max()
            .unwrap();
        // 254 xAPIC entries: 44 + 254 * 8 + 12 + 10 + 6 = 2104 bytes of MADT; the DSDT has
        // four COM ports, the i8042 and 32 virtio devices.
        let madt = &all.iter().find(|(_, t)| &t[0..4] == b"APIC").unwrap().1;
        assert_eq!(madt.len(), 2104);
        let dsdt = &all.iter().find(|(_, t)| &t[0..4] == b"DSDT").unwrap().1;
        assert!(dsdt.len() < 4096, "{}", dsdt.len());
        assert!(end - ACPI_TABLES_START < 8 * 1024, "{:#x}", end);
        for (_, table) in &all {
            assert_eq!(sum(table), 0);
        }
    }

    #[test]
    fn too_many_vcpus_do_not_fit_and_nothing_is_written() {
        let mem = memory();
        for vcpus in [20_000, u32::MAX] {
            let e = write_acpi_tables(&mem, &config(vcpus)).unwrap_err();
            assert!(
                matches!(e, AcpiError::DoesNotFit { available: 0x20000, needed } if needed > 0x20000),
                "{e}"
            );
        }
        let mut rsdp = [0u8; 8];
        mem.read_slice(&mut rsdp, GuestAddress(0xe0000)).unwrap();
        assert_eq!(rsdp, [0; 8]);
    }

    #[test]
    fn the_largest_vcpu_count_that_fits_fills_the_bios_area() {
        let mem = memory();
        let fits = |vcpus| write_acpi_tables(&mem, &config(vcpus)).is_ok();
        let (mut lo, mut hi) = (254, 20_000); // fits(lo), !fits(hi)
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        // About 8000 vCPUs (x2APIC entries are 16 bytes): far beyond petrel's limit.
        assert!(lo > 8000, "{lo}");
        let rsdp = write_acpi_tables(&mem, &config(lo)).unwrap();
        let end = tables(&mem, rsdp)
            .iter()
            .map(|(addr, t)| addr + t.len() as u64)
            .max()
            .unwrap();
        // One more vCPU adds 16 bytes to the MADT and moves the DSDT by 16.
        assert!(end <= 0x100000 && end + 16 > 0x100000, "{end:#x}");
        assert!(matches!(
            write_acpi_tables(&mem, &config(lo + 1)),
            Err(AcpiError::DoesNotFit { .. })
        ));
    }

    #[test]
    fn invalid_configurations_are_refused_before_writing() {
        let mem = memory();
        assert!(matches!(
            write_acpi_tables(&mem, &config(0)),
            Err(AcpiError::NoVcpus)
        ));
        let mut c = config(1);
        c.pm.sleep_status = 0;
        let e = write_acpi_tables(&mem, &c).unwrap_err();
        assert_eq!(e.to_string(), "acpi sleep status register at port 0");
        let mut c = config(1);
        c.virtio_mmio.push(VirtioMmioDevice {
            base: 0xffff_f000,
            size: 0x2000,
            irq: 5,
            trigger: IrqTrigger::Level,
        });
        assert!(matches!(
            write_acpi_tables(&mem, &c),
            Err(AcpiError::VirtioWindow { .. })
        ));
        let mut rsdp = [0u8; 8];
        mem.read_slice(&mut rsdp, GuestAddress(0xe0000)).unwrap();
        assert_eq!(rsdp, [0; 8]);
    }

    #[test]
    fn a_write_outside_guest_memory_is_an_error() {
        // Guest memory that does not reach the BIOS area.
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let e = write_acpi_tables(&mem, &config(1)).unwrap_err();
        assert!(
            matches!(
                e,
                AcpiError::Write {
                    table: "RSDP",
                    addr: 0xe0000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn placement_aligns_every_table() {
        let mut p = Placement::new();
        assert_eq!(p.place(36), 0xe0000);
        assert_eq!(p.place(52), 0xe0030);
        assert_eq!(p.place(16), 0xe0070);
        assert_eq!(p.place(0), 0xe0080);
        assert_eq!(p.place(1), 0xe0080);
        assert_eq!(p.place(1), 0xe0090);
        assert!(Placement::check_fits(0x100000).is_ok());
        assert!(Placement::check_fits(0x100001).is_err());
    }

    /// A one-off check with ACPICA's tools: `cargo test -p petrel-boot -- --ignored` with
    /// `iasl` and `acpiexec` installed (Debian: `acpica-tools`). Every table but the RSDP
    /// must disassemble without errors or warnings and the disassembly must compile again;
    /// the DSDT must load into ACPICA's interpreter and `\_S5` must evaluate. The
    /// disassembly is printed (`--nocapture`).
    #[test]
    #[ignore = "needs iasl and acpiexec (acpica-tools)"]
    fn acpica_disassembles_recompiles_and_loads_every_table() {
        use std::path::Path;
        use std::process::Command;
        let run = |dir: &Path, program: &str, args: &[&str]| -> String {
            let out = Command::new(program)
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e} (apt-get install acpica-tools)"));
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{program} {args:?}: {text}");
            text
        };
        let dir = std::env::temp_dir().join(format!("petrel-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mem = memory();
        let rsdp = write_acpi_tables(&mem, &worst_case()).unwrap();
        // iasl reads only tables with a standard header, so not the RSDP (tested above).
        for (_, table) in tables(&mem, rsdp) {
            let name = String::from_utf8_lossy(&table[0..4]).to_lowercase();
            std::fs::write(dir.join(format!("{name}.dat")), &table).unwrap();
            let text = run(&dir, "iasl", &["-d", &format!("{name}.dat")]);
            for bad in ["Error", "Warning", "Invalid", "Unknown"] {
                assert!(!text.contains(bad), "{name}: {text}");
            }
            let dsl = std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap();
            println!("{dsl}");
            let text = run(
                &dir,
                "iasl",
                &["-p", &format!("re-{name}"), &format!("{name}.dsl")],
            );
            assert!(text.contains(" 0 Errors, 0 Warnings"), "{name}: {text}");
        }
        let text = run(
            &dir,
            "acpiexec",
            &[
                "-b",
                "evaluate \\_S5; evaluate \\_SB.COM1._CRS; evaluate \\_SB.VR31._CRS",
                "dsdt.dat",
            ],
        );
        println!("{text}");
        assert!(!text.contains("Error") && !text.contains("AE_"), "{text}");
        assert!(
            text.contains("Package") && text.contains("0000000000000005"),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
