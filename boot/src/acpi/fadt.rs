//! The Fixed ACPI Description Table (signature `FACP`), revision 6.5 (276 bytes).
//!
//! petrel's machine is **hardware-reduced** (FADT flag `HW_REDUCED_ACPI`): there is no PM1
//! event/control block, no PM timer, no GPE block and no SCI, so none of the fixed hardware a
//! PC chipset has needs emulating. What remains is what the guest needs to power off and
//! reset:
//!
//! | offset | field | value |
//! |--------|-------|-------|
//! | 36 / 132 | FIRMWARE_CTRL / X_FIRMWARE_CTRL | 0: no FACS (not used when hardware-reduced) |
//! | 40 / 140 | DSDT / X_DSDT | 0 / the DSDT's address |
//! | 46 | SCI_INT | 0 (ignored when hardware-reduced) |
//! | 109 | IAPC_BOOT_ARCH | 8042 present (bit 1, if configured), VGA not present (bit 2), no CMOS RTC (bit 5) |
//! | 112 | Flags | `PWR_BUTTON` and `SLP_BUTTON` (no fixed-feature buttons), `RESET_REG_SUP`, `HW_REDUCED_ACPI` |
//! | 116 | RESET_REG | system I/O, 8 bits, byte access, the reset port |
//! | 128 | RESET_VALUE | the reset value |
//! | 131 | minor version | 5 |
//! | 244 | SLEEP_CONTROL_REG | system I/O, 8 bits, byte access |
//! | 256 | SLEEP_STATUS_REG | system I/O, 8 bits, byte access |
//! | 268 | Hypervisor Vendor Identity | `"PETREL  "` |
//!
//! How Linux uses them: power-off enters S5 by writing `(SLP_TYP << 2) | SLP_EN` to the
//! sleep control register (`acpi_hw_extended_sleep`), with SLP_TYP from the DSDT's `\_S5`;
//! reboot writes RESET_VALUE to RESET_REG (`acpi_reboot`, tried first by default). Linux
//! reads IAPC_BOOT_ARCH in `acpi_parse_fadt` whether or not the machine is hardware-reduced:
//! without bit 1 it skips the i8042 driver, with bit 2 it does not probe VGA, and with
//! bit 5 it registers no `rtc_cmos` device.

use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::Aml;

use super::{AcpiError, AcpiPmRegisters, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// Length of a revision 6.5 FADT.
pub const FADT_LEN: usize = 276;
/// FADT major revision.
pub const FADT_REVISION: u8 = 6;
/// FADT minor revision.
pub const FADT_MINOR_REVISION: u8 = 5;
/// IAPC_BOOT_ARCH bit 1: an 8042 keyboard controller is present at ports 0x60/0x64.
pub const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH bit 2: it is not safe to probe for VGA.
pub const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// IAPC_BOOT_ARCH bit 5: there is no CMOS RTC.
pub const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// The FADT's Hypervisor Vendor Identity.
pub const HYPERVISOR_VENDOR_ID: [u8; 8] = *b"PETREL  ";

/// An 8-bit system I/O register at `port`.
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// The FADT bytes for the registers in `pm`, an i8042 if `i8042`, and the DSDT at
/// `dsdt_addr`.
///
/// Fails if a register is at port 0: ACPICA treats an address of 0 as "no register", and
/// the guest could not power off or reset.
pub fn build_fadt(pm: &AcpiPmRegisters, i8042: bool, dsdt_addr: u64) -> Result<Vec<u8>, AcpiError> {
    for (register, port) in [
        ("sleep control", pm.sleep_control),
        ("sleep status", pm.sleep_status),
        ("reset", pm.reset),
    ] {
        if port == 0 {
            return Err(AcpiError::ZeroPmPort { register });
        }
    }
    let mut boot_arch = IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC;
    if i8042 {
        boot_arch |= IAPC_BOOT_ARCH_8042;
    }
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .flag(Flags::HwReducedAcpi);
    builder.iapc_boot_arch = boot_arch.into();
    builder.reset_reg = io_register(pm.reset);
    builder.reset_value = pm.reset_value;
    builder.sleep_control_reg = io_register(pm.sleep_control);
    builder.sleep_status_reg = io_register(pm.sleep_status);
    builder.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR_ID).into();
    let fadt: FADT = builder.finalize();
    let mut bytes = Vec::with_capacity(FADT_LEN);
    fadt.to_aml_bytes(&mut bytes);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_bytes::{check_header, u16_at, u32_at, u64_at};

    const HW_REDUCED_ACPI: u32 = 1 << 20;
    const RESET_REG_SUP: u32 = 1 << 10;
    const PWR_BUTTON: u32 = 1 << 4;
    const SLP_BUTTON: u32 = 1 << 5;

    fn pm() -> AcpiPmRegisters {
        AcpiPmRegisters {
            sleep_control: 0x600,
            sleep_status: 0x601,
            reset: 0x602,
            reset_value: 0x01,
        }
    }

    /// A Generic Address Structure at `off`: (space, bit width, bit offset, access size, address).
    fn gas(fadt: &[u8], off: usize) -> (u8, u8, u8, u8, u64) {
        (
            fadt[off],
            fadt[off + 1],
            fadt[off + 2],
            fadt[off + 3],
            u64_at(fadt, off + 4),
        )
    }

    #[test]
    fn header_length_and_checksum() {
        let fadt = build_fadt(&pm(), true, 0xe0400).unwrap();
        assert_eq!(fadt.len(), FADT_LEN);
        check_header(&fadt, b"FACP", FADT_REVISION);
        assert_eq!(fadt[131], FADT_MINOR_REVISION);
    }

    #[test]
    fn dsdt_is_given_by_its_64_bit_address_only() {
        let fadt = build_fadt(&pm(), true, 0xe0400).unwrap();
        assert_eq!(u32_at(&fadt, 40), 0, "DSDT");
        assert_eq!(u64_at(&fadt, 140), 0xe0400, "X_DSDT");
        assert_eq!(u32_at(&fadt, 36), 0, "FIRMWARE_CTRL");
        assert_eq!(u64_at(&fadt, 132), 0, "X_FIRMWARE_CTRL");
    }

    #[test]
    fn flags_say_hardware_reduced_with_a_reset_register() {
        let fadt = build_fadt(&pm(), true, 0xe0400).unwrap();
        assert_eq!(
            u32_at(&fadt, 112),
            HW_REDUCED_ACPI | RESET_REG_SUP | PWR_BUTTON | SLP_BUTTON
        );
        // No SCI and no fixed hardware blocks: bytes 46..=108 (SCI_INT up to CENTURY) and
        // 148..244 (X_PM1a_EVT_BLK up to X_GPE1_BLK) are all zero.
        assert!(fadt[46..109].iter().all(|&b| b == 0));
        assert!(fadt[148..244].iter().all(|&b| b == 0));
    }

    #[test]
    fn boot_arch_flags() {
        let fadt = build_fadt(&pm(), true, 0).unwrap();
        assert_eq!(u16_at(&fadt, 109), 0b10_0110);
        let fadt = build_fadt(&pm(), false, 0).unwrap();
        assert_eq!(u16_at(&fadt, 109), 0b10_0100);
    }

    #[test]
    fn power_management_registers_are_8_bit_system_io() {
        let fadt = build_fadt(&pm(), true, 0).unwrap();
        assert_eq!(gas(&fadt, 116), (1, 8, 0, 1, 0x602), "RESET_REG");
        assert_eq!(fadt[128], 0x01, "RESET_VALUE");
        assert_eq!(gas(&fadt, 244), (1, 8, 0, 1, 0x600), "SLEEP_CONTROL_REG");
        assert_eq!(gas(&fadt, 256), (1, 8, 0, 1, 0x601), "SLEEP_STATUS_REG");
        assert_eq!(&fadt[268..276], b"PETREL  ");
    }

    #[test]
    fn other_ports_and_reset_values_are_written_as_given() {
        let regs = AcpiPmRegisters {
            sleep_control: 0xb004,
            sleep_status: 0xb005,
            reset: 0xcf9,
            reset_value: 0x0e,
        };
        let fadt = build_fadt(&regs, true, 0).unwrap();
        assert_eq!(gas(&fadt, 116).4, 0xcf9);
        assert_eq!(fadt[128], 0x0e);
        assert_eq!(gas(&fadt, 244).4, 0xb004);
        assert_eq!(gas(&fadt, 256).4, 0xb005);
    }

    #[test]
    fn a_register_at_port_0_is_refused() {
        for (i, name) in ["sleep control", "sleep status", "reset"]
            .iter()
            .enumerate()
        {
            let mut regs = pm();
            match i {
                0 => regs.sleep_control = 0,
                1 => regs.sleep_status = 0,
                _ => regs.reset = 0,
            }
            let e = build_fadt(&regs, true, 0).unwrap_err();
            assert!(
                matches!(e, AcpiError::ZeroPmPort { register } if register == *name),
                "{e}"
            );
        }
    }
}
