//! The Multiple APIC Description Table (signature `APIC`), revision 5: the interrupt
//! controllers.
//!
//! Header fields after the standard header: local APIC address `0xFEE00000` (36) and flags
//! (40) = `PCAT_COMPAT`. Then, from offset 44:
//!
//! | entry | type | length | contents |
//! |-------|------|--------|----------|
//! | Processor Local APIC | 0 | 8 | one per vCPU with APIC ID < 255: UID = APIC ID = vCPU index, enabled |
//! | Processor Local x2APIC | 9 | 16 | one per vCPU with APIC ID >= 255 (petrel allows 254 vCPUs, so none today) |
//! | I/O APIC | 1 | 12 | ID 0, address `0xFEC00000`, GSI base 0 (24 pins) |
//! | Interrupt Source Override | 2 | 10 | ISA IRQ 0 → GSI 2, flags 0 (conforming): the PIT, as KVM routes it |
//! | Local APIC NMI | 4 | 6 | all processors (UID 0xFF), LINT1 |
//! | Local x2APIC NMI | 0xA | 12 | all processors (UID 0xFFFFFFFF), LINT1; only with x2APIC entries |
//!
//! APIC ID 0xFF is the xAPIC broadcast ID, so the first vCPU that needs an x2APIC entry is
//! the one with ID 255.
//!
//! **PCAT_COMPAT = 1.** The flag says the machine also has a PC-AT dual 8259, which is true:
//! KVM's in-kernel irqchip includes one, and KVM's default routing feeds GSIs 0-15 to it as
//! well as to the I/O APIC. Its vectors start at 0 until someone programs it. An OS that
//! honours the flag remaps and masks the 8259 before it uses the I/O APIC; an OS told "no
//! 8259" may leave it live, and an interrupt it then passes to LINT0 arrives as a CPU
//! exception vector. Linux under hardware-reduced ACPI ignores the flag and the 8259
//! altogether (`acpi_generic_reduced_hw_init` installs `null_legacy_pic`, which never
//! programs it), and keeps LINT0 masked because it finds it masked at boot (a Debian 6.1
//! kernel on petrel prints `masked ExtINT on CPU#0`). vCPU 0's LINT0 must stay masked at
//! boot for that to hold.
//!
//! **IRQ 0 and the SCI.** The FADT's SCI_INT is 0 (ignored when hardware-reduced). Linux
//! treats an override whose source equals SCI_INT as the SCI's, so it applies SCI defaults
//! (level, active low; it then forces IRQ 0 back to edge) to the IRQ 0 override: with
//! `apic=verbose` it prints `Int: type 0, pol 3, trig 1, bus 00, IRQ 00, APIC ID 0, APIC INT
//! 02`. Nothing uses IRQ 0 under hardware-reduced ACPI (Linux skips the PIT/HPET timer
//! setup), so this is harmless; QEMU's `microvm` behaves the same way.

use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::{Aml, AmlSink};
use petrel_memory::layout::{IOAPIC_START, LAPIC_START};

use super::{
    AcpiError, ACPI_TABLES_END, ACPI_TABLES_START, IOAPIC_ID, OEM_ID, OEM_REVISION, OEM_TABLE_ID,
};

/// MADT revision (ACPI 6.3 and later).
pub const MADT_REVISION: u8 = 5;
/// MADT flag: the machine also has a PC-AT compatible dual 8259.
pub const MADT_PCAT_COMPAT: u32 = 1;
/// The highest APIC ID a type 0 (xAPIC) entry is used for; 0xFF is the broadcast ID.
pub const MAX_XAPIC_ID: u32 = 254;
/// ISA IRQ 0 (the PIT's output) ...
pub const PIT_ISA_IRQ: u8 = 0;
/// ... is wired to I/O APIC pin 2 (KVM's default routing does the same).
pub const PIT_GSI: u32 = 2;
/// The LAPIC input the NMI is wired to.
pub const NMI_LINT: u8 = 1;

/// Fixed part of the MADT: standard header, local APIC address, flags.
const MADT_HEADER_LEN: usize = 44;

const TYPE_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const TYPE_LOCAL_X2APIC: u8 = 9;
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xa;

const LOCAL_APIC_LEN: u64 = 8;
const LOCAL_X2APIC_LEN: u8 = 16;
const IOAPIC_LEN: u64 = 12;
const INTERRUPT_SOURCE_OVERRIDE_LEN: u8 = 10;
const LOCAL_APIC_NMI_LEN: u8 = 6;
const LOCAL_X2APIC_NMI_LEN: u8 = 12;

/// Local APIC flag: the processor is usable.
const LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags 0: polarity and trigger mode conform to the bus.
const INTI_CONFORMING: u16 = 0;
/// Processor UID meaning "all processors" in a Local APIC NMI entry.
const ALL_PROCESSORS: u8 = 0xff;
/// Processor UID meaning "all processors" in a Local x2APIC NMI entry.
const ALL_X2APIC_PROCESSORS: u32 = u32::MAX;

/// Processor Local x2APIC structure (type 9); `acpi_tables` has no type for it.
struct LocalX2Apic {
    x2apic_id: u32,
    uid: u32,
}

impl Aml for LocalX2Apic {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(TYPE_LOCAL_X2APIC);
        sink.byte(LOCAL_X2APIC_LEN);
        sink.word(0); // reserved
        sink.dword(self.x2apic_id);
        sink.dword(LAPIC_ENABLED);
        sink.dword(self.uid);
    }
}

/// Interrupt Source Override structure (type 2).
struct InterruptSourceOverride {
    source: u8,
    gsi: u32,
    flags: u16,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(TYPE_INTERRUPT_SOURCE_OVERRIDE);
        sink.byte(INTERRUPT_SOURCE_OVERRIDE_LEN);
        sink.byte(0); // bus: ISA
        sink.byte(self.source);
        sink.dword(self.gsi);
        sink.word(self.flags);
    }
}

/// Local APIC NMI structure (type 4).
struct LocalApicNmi {
    uid: u8,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(TYPE_LOCAL_APIC_NMI);
        sink.byte(LOCAL_APIC_NMI_LEN);
        sink.byte(self.uid);
        sink.word(INTI_CONFORMING);
        sink.byte(self.lint);
    }
}

/// Local x2APIC NMI structure (type 0xA).
struct LocalX2ApicNmi {
    uid: u32,
    lint: u8,
}

impl Aml for LocalX2ApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(TYPE_LOCAL_X2APIC_NMI);
        sink.byte(LOCAL_X2APIC_NMI_LEN);
        sink.word(INTI_CONFORMING);
        sink.dword(self.uid);
        sink.byte(self.lint);
        sink.vec(&[0; 3]); // reserved
    }
}

/// The xAPIC ID of `apic_id` if a type 0 entry can describe it.
fn xapic_id(apic_id: u32) -> Option<u8> {
    u8::try_from(apic_id)
        .ok()
        .filter(|_| apic_id <= MAX_XAPIC_ID)
}

/// Number of vCPUs (of `vcpus`) that get a type 0 entry; the rest get type 9.
fn xapic_count(vcpus: u32) -> u32 {
    vcpus.min(MAX_XAPIC_ID + 1)
}

/// Length of the MADT for `vcpus` vCPUs, without building it (`vcpus` may be absurd).
pub fn madt_len(vcpus: u32) -> u64 {
    let xapic = u64::from(xapic_count(vcpus));
    let x2apic = u64::from(vcpus) - xapic;
    let mut len = MADT_HEADER_LEN as u64
        + xapic * LOCAL_APIC_LEN
        + x2apic * u64::from(LOCAL_X2APIC_LEN)
        + IOAPIC_LEN
        + u64::from(INTERRUPT_SOURCE_OVERRIDE_LEN)
        + u64::from(LOCAL_APIC_NMI_LEN);
    if x2apic > 0 {
        len += u64::from(LOCAL_X2APIC_NMI_LEN);
    }
    len
}

/// The MADT bytes for `vcpus` vCPUs with APIC IDs `0..vcpus`.
///
/// Fails for 0 vCPUs, and for a count whose MADT alone would not fit in the BIOS area (so an
/// absurd count is refused before anything is allocated).
pub fn build_madt(vcpus: u32) -> Result<Vec<u8>, AcpiError> {
    if vcpus == 0 {
        return Err(AcpiError::NoVcpus);
    }
    let available = ACPI_TABLES_END - ACPI_TABLES_START;
    let needed = madt_len(vcpus);
    if needed > available {
        return Err(AcpiError::DoesNotFit { needed, available });
    }
    // The addresses are fixed 32-bit constants of the x86 platform.
    let lapic_address = u32::try_from(LAPIC_START).unwrap_or(u32::MAX);
    let ioapic_address = u32::try_from(IOAPIC_START).unwrap_or(u32::MAX);

    let mut table = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN as u32,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.write_u32(36, lapic_address);
    table.write_u32(40, MADT_PCAT_COMPAT);

    let mut entries = Vec::with_capacity(madt_len(vcpus) as usize);
    let mut any_x2apic = false;
    for apic_id in 0..vcpus {
        match xapic_id(apic_id) {
            Some(id) => {
                ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut entries)
            }
            None => {
                any_x2apic = true;
                LocalX2Apic {
                    x2apic_id: apic_id,
                    uid: apic_id,
                }
                .to_aml_bytes(&mut entries);
            }
        }
    }
    IoApic::new(IOAPIC_ID, ioapic_address, 0).to_aml_bytes(&mut entries);
    InterruptSourceOverride {
        source: PIT_ISA_IRQ,
        gsi: PIT_GSI,
        flags: INTI_CONFORMING,
    }
    .to_aml_bytes(&mut entries);
    LocalApicNmi {
        uid: ALL_PROCESSORS,
        lint: NMI_LINT,
    }
    .to_aml_bytes(&mut entries);
    if any_x2apic {
        LocalX2ApicNmi {
            uid: ALL_X2APIC_PROCESSORS,
            lint: NMI_LINT,
        }
        .to_aml_bytes(&mut entries);
    }
    table.append_slice(&entries);
    Ok(table.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::test_bytes::{check_header, u16_at, u32_at};

    /// The MADT's entries as (type, bytes), checking each length byte on the way.
    fn entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut off = MADT_HEADER_LEN;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            assert!(len >= 2 && off + len <= madt.len(), "entry at {off}");
            out.push((kind, &madt[off..off + len]));
            off += len;
        }
        assert_eq!(off, madt.len());
        out
    }

    fn count(madt: &[u8], kind: u8) -> usize {
        entries(madt).iter().filter(|(k, _)| *k == kind).count()
    }

    #[test]
    fn header_fields() {
        let madt = build_madt(1).unwrap();
        check_header(&madt, b"APIC", MADT_REVISION);
        assert_eq!(u32_at(&madt, 36), 0xfee0_0000);
        assert_eq!(u32_at(&madt, 40), 1, "PCAT_COMPAT");
    }

    #[test]
    fn entry_counts_for_1_4_64_and_254_vcpus() {
        for vcpus in [1u32, 4, 64, 254] {
            let madt = build_madt(vcpus).unwrap();
            check_header(&madt, b"APIC", MADT_REVISION);
            assert_eq!(madt.len() as u64, madt_len(vcpus));
            assert_eq!(madt.len(), 44 + 8 * vcpus as usize + 12 + 10 + 6);
            assert_eq!(count(&madt, 0), vcpus as usize, "{vcpus}: local APICs");
            assert_eq!(count(&madt, 1), 1, "{vcpus}: I/O APIC");
            assert_eq!(count(&madt, 2), 1, "{vcpus}: override");
            assert_eq!(count(&madt, 4), 1, "{vcpus}: NMI");
            assert_eq!(count(&madt, 9), 0, "{vcpus}: x2APICs");
            assert_eq!(count(&madt, 0xa), 0, "{vcpus}: x2APIC NMI");
            assert_eq!(entries(&madt).len(), vcpus as usize + 3);
        }
    }

    #[test]
    fn local_apic_entries_have_uid_and_id_equal_to_the_index_and_are_enabled() {
        let madt = build_madt(254).unwrap();
        let lapics: Vec<&[u8]> = entries(&madt)
            .into_iter()
            .filter(|(k, _)| *k == 0)
            .map(|(_, e)| e)
            .collect();
        for (i, e) in lapics.iter().enumerate() {
            assert_eq!(e.len(), 8);
            assert_eq!(e[2] as usize, i, "ACPI processor UID");
            assert_eq!(e[3] as usize, i, "APIC ID");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
    }

    #[test]
    fn ioapic_override_and_nmi_entries() {
        let madt = build_madt(2).unwrap();
        let all = entries(&madt);
        let (_, ioapic) = all.iter().find(|(k, _)| *k == 1).unwrap();
        assert_eq!(ioapic.len(), 12);
        assert_eq!(ioapic[2], 0, "I/O APIC ID");
        assert_eq!(ioapic[3], 0, "reserved");
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
        let (_, iso) = all.iter().find(|(k, _)| *k == 2).unwrap();
        assert_eq!(iso.len(), 10);
        assert_eq!((iso[2], iso[3]), (0, 0), "bus ISA, IRQ 0");
        assert_eq!(u32_at(iso, 4), 2, "GSI 2");
        assert_eq!(u16_at(iso, 8), 0, "conforming");
        let (_, nmi) = all.iter().find(|(k, _)| *k == 4).unwrap();
        assert_eq!(nmi, &[4, 6, 0xff, 0, 0, 1]);
        // Order: processors, then the I/O APIC, the override and the NMI.
        let kinds: Vec<u8> = all.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [0, 0, 1, 2, 4]);
    }

    #[test]
    fn apic_ids_from_255_get_x2apic_entries() {
        let vcpus = 300;
        let madt = build_madt(vcpus).unwrap();
        check_header(&madt, b"APIC", MADT_REVISION);
        assert_eq!(madt.len() as u64, madt_len(vcpus));
        assert_eq!(madt.len(), 44 + 255 * 8 + 45 * 16 + 12 + 10 + 6 + 12);
        assert_eq!(count(&madt, 0), 255, "IDs 0..=254");
        assert_eq!(count(&madt, 9), 45, "IDs 255..300");
        assert_eq!(count(&madt, 4), 1);
        assert_eq!(count(&madt, 0xa), 1);
        let all = entries(&madt);
        let lapic_ids: Vec<u8> = all
            .iter()
            .filter(|(k, _)| *k == 0)
            .map(|(_, e)| e[3])
            .collect();
        assert_eq!(
            lapic_ids,
            (0..=254).collect::<Vec<u8>>(),
            "no 0xff xAPIC ID"
        );
        let x2apics: Vec<&[u8]> = all
            .iter()
            .filter(|(k, _)| *k == 9)
            .map(|(_, e)| *e)
            .collect();
        for (e, id) in x2apics.iter().zip(255u32..) {
            assert_eq!(e.len(), 16);
            assert_eq!(u16_at(e, 2), 0, "reserved");
            assert_eq!(u32_at(e, 4), id, "x2APIC ID");
            assert_eq!(u32_at(e, 8), 1, "enabled");
            assert_eq!(u32_at(e, 12), id, "ACPI processor UID");
        }
        let (_, x2nmi) = all.iter().find(|(k, _)| *k == 0xa).unwrap();
        assert_eq!(x2nmi, &[0xa, 12, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]);
    }

    #[test]
    fn the_first_x2apic_entry_is_for_apic_id_255() {
        let madt = build_madt(255).unwrap();
        assert_eq!(count(&madt, 0), 255);
        assert_eq!(count(&madt, 9), 0);
        assert_eq!(count(&madt, 0xa), 0);
        let madt = build_madt(256).unwrap();
        assert_eq!(count(&madt, 0), 255);
        assert_eq!(count(&madt, 9), 1);
        assert_eq!(count(&madt, 0xa), 1);
        assert_eq!(madt.len() as u64, madt_len(256));
        let x2apic = entries(&madt).into_iter().find(|(k, _)| *k == 9).unwrap().1;
        assert_eq!(u32_at(x2apic, 4), 255);
    }

    #[test]
    fn zero_vcpus_is_an_error_and_lengths_do_not_overflow() {
        assert!(matches!(build_madt(0), Err(AcpiError::NoVcpus)));
        assert!(matches!(
            build_madt(u32::MAX),
            Err(AcpiError::DoesNotFit {
                available: 0x20000,
                ..
            })
        ));
        assert_eq!(
            madt_len(u32::MAX),
            44 + 255 * 8 + (u64::from(u32::MAX) - 255) * 16 + 12 + 10 + 6 + 12
        );
    }
}
