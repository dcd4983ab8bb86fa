//! The Extended System Description Table: the list of the other tables' 64-bit addresses
//! (here the FADT and the MADT; the DSDT is reached through the FADT).
//!
//! Layout: the 36-byte table header (signature `"XSDT"`, revision 1), then one `u64` address
//! per table from offset 36.

use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use super::{OEM_ID, OEM_REVISION, OEM_TABLE_ID, TABLE_HEADER_LEN};

/// XSDT revision (1 in every ACPI version so far).
pub const XSDT_REVISION: u8 = 1;

/// Length of an XSDT listing `entries` tables.
pub fn xsdt_len(entries: usize) -> usize {
    TABLE_HEADER_LEN + entries * 8
}

/// The XSDT bytes listing the tables at `entries`, in that order.
pub fn build_xsdt(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &entry in entries {
        xsdt.add_entry(entry);
    }
    let mut bytes = Vec::with_capacity(xsdt_len(entries.len()));
    xsdt.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_bytes::{check_header, u64_at};

    #[test]
    fn header_and_entries() {
        let xsdt = build_xsdt(&[0xe0070, 0xe0190]);
        assert_eq!(xsdt.len(), xsdt_len(2));
        assert_eq!(xsdt.len(), 52);
        check_header(&xsdt, b"XSDT", XSDT_REVISION);
        assert_eq!(u64_at(&xsdt, 36), 0xe0070);
        assert_eq!(u64_at(&xsdt, 44), 0xe0190);
    }

    #[test]
    fn checksum_holds_for_any_entries() {
        for entries in [&[][..], &[u64::MAX], &[1, 2, 3, 0x8000_0000_0000_0000]] {
            let xsdt = build_xsdt(entries);
            assert_eq!(xsdt.len(), xsdt_len(entries.len()));
            check_header(&xsdt, b"XSDT", XSDT_REVISION);
        }
    }
}
