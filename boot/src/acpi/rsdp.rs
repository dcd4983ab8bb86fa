//! The Root System Description Pointer: the one structure the guest has to find, pointing at
//! the XSDT.
//!
//! ACPI 2.0+ layout (36 bytes): signature `"RSD PTR "` (0), checksum of the first 20 bytes
//! (8), OEM ID (9), revision 2 (15), RSDT address (16, 0: there is no RSDT), length (20),
//! XSDT address (24), extended checksum of all 36 bytes (32).

use acpi_tables::rsdp::Rsdp;
use acpi_tables::Aml;

use super::OEM_ID;

/// Length of an ACPI 2.0+ RSDP.
pub const RSDP_LEN: usize = 36;
/// RSDP revision: 2 (ACPI 2.0 and later, with an XSDT).
pub const RSDP_REVISION: u8 = 2;

/// The RSDP bytes for an XSDT at `xsdt_addr`, both checksums filled in.
pub fn build_rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RSDP_LEN);
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_bytes::{sum, u32_at, u64_at};

    #[test]
    fn fields_are_at_their_acpi_offsets() {
        let rsdp = build_rsdp(0x1234_5678_9abc_def0);
        assert_eq!(rsdp.len(), RSDP_LEN);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(&rsdp[9..15], b"PETREL");
        assert_eq!(rsdp[15], RSDP_REVISION);
        assert_eq!(u32_at(&rsdp, 16), 0);
        assert_eq!(u32_at(&rsdp, 20), RSDP_LEN as u32);
        assert_eq!(u64_at(&rsdp, 24), 0x1234_5678_9abc_def0);
        assert_eq!(&rsdp[33..36], &[0, 0, 0]);
    }

    #[test]
    fn both_checksums_hold() {
        for xsdt in [0, 0xe0030, u64::MAX] {
            let rsdp = build_rsdp(xsdt);
            assert_eq!(sum(&rsdp[..20]), 0, "{xsdt:#x}");
            assert_eq!(sum(&rsdp), 0, "{xsdt:#x}");
        }
    }
}
