//! Builds the CPUID a vCPU sees from what KVM supports.
//!
//! [`build_cpuid`] is a pure function on a [`CpuId`]: it needs no KVM, so it is unit-tested
//! with synthetic tables. It
//! - places the vCPU's APIC id (leaf 1 `EBX[31:24]`, leaf 0xB/0x1F EDX, AMD leaf 0x8000_001E),
//! - describes the topology as one socket with `vcpu_count` cores of one thread each
//!   (leaves 1, 4, 0xB, 0x1F, and on AMD 0x8000_0008, 0x8000_001D, 0x8000_001E),
//! - sets the hypervisor bit (leaf 1 `ECX[31]`) and the KVM signature at leaf 0x4000_0000,
//! - hides the features a [`CpuFeatureChange`] list asks to hide (see
//!   [`crate::cpu_features`]), with their dependents and their XSAVE state in leaf 0xD.
//!
//! Leaves 0xB and 0x1F are rewritten only when the supported table already offers them
//! (the maximum basic leaf reaches them); petrel never raises the maximum leaf.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};

use crate::cpu_features::{hidden_cpu_features, CpuFeatureChange, CpuidReg};

/// The most vCPUs petrel gives a guest: xAPIC ids are 8 bits wide and 0xff is the broadcast id.
pub const MAX_VCPUS: u32 = 254;
/// The hypervisor information leaf.
pub const HYPERVISOR_LEAF: u32 = 0x4000_0000;
/// The signature KVM guests look for at [`HYPERVISOR_LEAF`] (EBX, ECX, EDX).
pub const KVM_SIGNATURE: [u8; 12] = *b"KVMKVMKVM\0\0\0";

/// Leaf 1 ECX bit: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit: the package has more than one logical processor (HTT).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Level types of leaves 0xB and 0x1F.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Errors from building a vCPU's CPUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuidError {
    /// The vCPU count is zero or above [`MAX_VCPUS`].
    #[error("vcpu count {count} is not between 1 and {max}")]
    BadVcpuCount {
        /// The count asked for.
        count: u32,
        /// The largest count allowed.
        max: u32,
    },
    /// The vCPU index is not below the vCPU count.
    #[error("vcpu index {index} is out of range for {count} vcpus")]
    IndexOutOfRange {
        /// The index asked for.
        index: u32,
        /// The vCPU count.
        count: u32,
    },
    /// The supported CPUID lacks a leaf petrel must fill in.
    #[error("supported cpuid has no leaf {leaf:#x}")]
    MissingLeaf {
        /// The leaf.
        leaf: u32,
    },
    /// The result has more entries than KVM accepts.
    #[error("cpuid would have {count} entries, more than kvm's limit of {max}")]
    TooManyEntries {
        /// Entries needed.
        count: usize,
        /// KVM's limit.
        max: usize,
    },
}

/// The CPU vendor, as far as topology leaves care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vendor {
    Intel,
    Amd,
    Other,
}

/// One socket of `count` single-thread cores; this vCPU is core `index`.
#[derive(Debug, Clone, Copy)]
struct Topology {
    index: u32,
    count: u32,
    /// Bits of the APIC id that number cores: ceil(log2(count)).
    core_shift: u32,
}

impl Topology {
    fn new(index: u32, count: u32) -> Result<Self, CpuidError> {
        if count == 0 || count > MAX_VCPUS {
            return Err(CpuidError::BadVcpuCount {
                count,
                max: MAX_VCPUS,
            });
        }
        if index >= count {
            return Err(CpuidError::IndexOutOfRange { index, count });
        }
        Ok(Topology {
            index,
            count,
            core_shift: count.next_power_of_two().trailing_zeros(),
        })
    }

    /// How many APIC ids the package spans: 2^core_shift.
    fn addressable_ids(&self) -> u32 {
        1 << self.core_shift
    }
}

/// Builds the CPUID for vCPU `vcpu_index` of `vcpu_count` from KVM's supported CPUID
/// (`KVM_GET_SUPPORTED_CPUID`), applying `changes`. The input is not modified.
pub fn build_cpuid(
    supported: &CpuId,
    vcpu_index: u32,
    vcpu_count: u32,
    changes: &[CpuFeatureChange],
) -> Result<CpuId, CpuidError> {
    let topo = Topology::new(vcpu_index, vcpu_count)?;
    let mut entries = supported.as_slice().to_vec();
    let vendor = vendor_of(&entries);

    update_leaf1(&mut entries, topo)?;
    update_cache_leaf(&mut entries, 4, topo);
    for leaf in [0xb, 0x1f] {
        rebuild_extended_topology(&mut entries, leaf, topo);
    }
    if vendor == Vendor::Amd {
        update_amd_topology(&mut entries, topo);
    }
    set_hypervisor_signature(&mut entries);
    hide_features(&mut entries, changes);

    CpuId::from_entries(&entries).map_err(|_| CpuidError::TooManyEntries {
        count: entries.len(),
        max: KVM_MAX_CPUID_ENTRIES,
    })
}

fn vendor_of(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

fn max_basic_leaf(entries: &[kvm_cpuid_entry2]) -> u32 {
    entries
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax)
}

fn update_leaf1(entries: &mut [kvm_cpuid_entry2], topo: Topology) -> Result<(), CpuidError> {
    let leaf1 = entries
        .iter_mut()
        .find(|e| e.function == 1)
        .ok_or(CpuidError::MissingLeaf { leaf: 1 })?;
    // EBX[31:24] initial APIC id, EBX[23:16] addressable logical processor ids.
    let logical = topo.addressable_ids().min(0xff);
    leaf1.ebx = (leaf1.ebx & 0x0000_ffff) | (topo.index << 24) | (logical << 16);
    leaf1.ecx |= LEAF1_ECX_HYPERVISOR;
    if topo.count > 1 {
        leaf1.edx |= LEAF1_EDX_HTT;
    } else {
        leaf1.edx &= !LEAF1_EDX_HTT;
    }
    Ok(())
}

/// Leaf 4 (Intel) and 0x8000_001D (AMD) describe caches with the same EAX fields:
/// EAX[4:0] cache type (0 = no more caches), EAX[7:5] level, EAX[25:14] logical processors
/// sharing the cache - 1; leaf 4 also has EAX[31:26] cores in the package - 1.
fn update_cache_leaf(entries: &mut [kvm_cpuid_entry2], leaf: u32, topo: Topology) {
    for entry in entries.iter_mut().filter(|e| e.function == leaf) {
        if entry.eax & 0x1f == 0 {
            continue;
        }
        let level = (entry.eax >> 5) & 0x7;
        // L1 and L2 belong to one core (one thread); L3 is shared by the whole package.
        let sharing = if level >= 3 {
            topo.addressable_ids() - 1
        } else {
            0
        };
        entry.eax = (entry.eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14);
        if leaf == 4 {
            let cores = (topo.addressable_ids() - 1).min(0x3f);
            entry.eax = (entry.eax & 0x03ff_ffff) | (cores << 26);
        }
    }
}

/// Replaces leaf 0xB or 0x1F (when the table offers it) with: SMT level (1 thread),
/// core level (`count` cores, shift `core_shift`), and the terminating invalid level.
fn rebuild_extended_topology(entries: &mut Vec<kvm_cpuid_entry2>, leaf: u32, topo: Topology) {
    let offered = entries.iter().any(|e| e.function == leaf) && max_basic_leaf(entries) >= leaf;
    if !offered {
        return;
    }
    let Some(pos) = entries.iter().position(|e| e.function == leaf) else {
        return;
    };
    entries.retain(|e| e.function != leaf);
    let levels = [
        (0, 1, 0, LEVEL_TYPE_SMT),
        (topo.core_shift, topo.count, 1, LEVEL_TYPE_CORE),
        (0, 0, 2, 0),
    ];
    for (i, (shift, logical, subleaf, level_type)) in levels.into_iter().enumerate() {
        let entry = kvm_cpuid_entry2 {
            function: leaf,
            index: subleaf,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            eax: shift,
            ebx: logical,
            ecx: subleaf | (level_type << 8),
            edx: topo.index,
            ..Default::default()
        };
        entries.insert(pos + i, entry);
    }
}

/// AMD's own topology leaves.
fn update_amd_topology(entries: &mut [kvm_cpuid_entry2], topo: Topology) {
    for entry in entries.iter_mut() {
        match entry.function {
            // ECX[7:0] cores - 1, ECX[15:12] APIC id bits that number cores.
            0x8000_0008 => {
                entry.ecx =
                    (entry.ecx & !0xf0ff) | ((topo.core_shift & 0xf) << 12) | (topo.count - 1);
            }
            // EAX extended APIC id, EBX[7:0] core id, EBX[15:8] threads per core - 1,
            // ECX[7:0] node id, ECX[10:8] nodes per socket - 1.
            0x8000_001e => {
                entry.eax = topo.index;
                entry.ebx = (entry.ebx & !0xffff) | (topo.index & 0xff);
                entry.ecx &= !0x7ff;
            }
            _ => {}
        }
    }
    update_cache_leaf(entries, 0x8000_001d, topo);
}

fn signature_words() -> [u32; 3] {
    let s = KVM_SIGNATURE;
    [
        u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
        u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
    ]
}

fn set_hypervisor_signature(entries: &mut Vec<kvm_cpuid_entry2>) {
    let [ebx, ecx, edx] = signature_words();
    let highest = entries
        .iter()
        .map(|e| e.function)
        .filter(|f| (HYPERVISOR_LEAF..HYPERVISOR_LEAF + 0x100).contains(f))
        .max()
        .unwrap_or(HYPERVISOR_LEAF);
    match entries.iter_mut().find(|e| e.function == HYPERVISOR_LEAF) {
        Some(entry) => {
            entry.eax = entry.eax.clamp(HYPERVISOR_LEAF, highest);
            entry.ebx = ebx;
            entry.ecx = ecx;
            entry.edx = edx;
        }
        None => entries.push(kvm_cpuid_entry2 {
            function: HYPERVISOR_LEAF,
            eax: highest,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }),
    }
}

/// The names of features `changes` hides that `cpuid` still shows.
///
/// Some hosts' KVM (PVM, for one) re-adds host features in `KVM_SET_CPUID2` that it did not
/// report as supported; reading the table back and calling this tells the user instead of
/// pretending the feature is hidden.
pub fn features_still_visible(cpuid: &CpuId, changes: &[CpuFeatureChange]) -> Vec<&'static str> {
    let entries = cpuid.as_slice();
    hidden_cpu_features(changes)
        .into_iter()
        .filter(|feature| {
            entries
                .iter()
                .filter(|e| matches_leaf(e, feature.leaf, feature.subleaf))
                .any(|e| {
                    let mut entry = *e;
                    *register_mut(&mut entry, feature.register) & (1u32 << feature.bit) != 0
                })
        })
        .map(|feature| feature.name)
        .collect()
}

fn matches_leaf(entry: &kvm_cpuid_entry2, leaf: u32, subleaf: u32) -> bool {
    entry.function == leaf
        && (entry.index == subleaf || entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
}

fn register_mut(entry: &mut kvm_cpuid_entry2, reg: CpuidReg) -> &mut u32 {
    match reg {
        CpuidReg::Eax => &mut entry.eax,
        CpuidReg::Ebx => &mut entry.ebx,
        CpuidReg::Ecx => &mut entry.ecx,
        CpuidReg::Edx => &mut entry.edx,
    }
}

fn hide_features(entries: &mut [kvm_cpuid_entry2], changes: &[CpuFeatureChange]) {
    let hidden = hidden_cpu_features(changes);
    let mut xstate = 0u64;
    let mut no_xsave = false;
    for feature in &hidden {
        for entry in entries
            .iter_mut()
            .filter(|e| matches_leaf(e, feature.leaf, feature.subleaf))
        {
            *register_mut(entry, feature.register) &= !(1u32 << feature.bit);
        }
        xstate |= feature.xstate_components;
        no_xsave |= feature.name == "xsave";
    }
    for entry in entries.iter_mut().filter(|e| e.function == 0xd) {
        if no_xsave {
            // Without XSAVE the whole state-enumeration leaf is meaningless.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        } else if entry.index == 0 {
            // EDX:EAX is the set of XCR0 bits the guest may enable.
            entry.eax &= !(xstate as u32);
            entry.edx &= !((xstate >> 32) as u32);
        } else if entry.index >= 2 && entry.index < 64 && xstate & (1 << entry.index) != 0 {
            // Subleaf n describes state component n.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_features::parse_cpu_features;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        let flags = match function {
            4 | 7 | 0xb | 0xd | 0x1f | 0x8000_001d => KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            _ => 0,
        };
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_words(vendor: &[u8; 12]) -> [u32; 3] {
        let w =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        // EBX, EDX, ECX order.
        [w(0), w(4), w(8)]
    }

    /// A host like a recent Intel server: every feature of the table set, leaves 4, 0xB, 0xD
    /// and 0x1F present, KVM's signature leaf present.
    fn intel_host() -> CpuId {
        let [b, d, c] = vendor_words(b"GenuineIntel");
        let cache = |level: u32, kind: u32| (level << 5) | kind | (7 << 26) | (1 << 14);
        let entries = vec![
            entry(0, 0, [0x1f, b, c, d]),
            entry(1, 0, [0x000806f8, 0x0c10_0800, 0x7ffa_fbff, 0xbfeb_fbff]),
            entry(4, 0, [cache(1, 1), 0, 0, 0]),
            entry(4, 1, [cache(1, 2), 0, 0, 0]),
            entry(4, 2, [cache(2, 3), 0, 0, 0]),
            entry(4, 3, [cache(3, 3), 0, 0, 0]),
            entry(4, 4, [0, 0, 0, 0]),
            entry(7, 0, [1, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff]),
            entry(7, 1, [0x30, 0, 0, 0]),
            entry(0xb, 0, [1, 2, 0x100, 7]),
            entry(0xb, 1, [4, 8, 0x201, 7]),
            entry(0xd, 0, [0x2e7, 0xa88, 0xa88, 0]),
            entry(0xd, 1, [0xf, 0, 0, 0]),
            entry(0xd, 2, [0x100, 0x240, 0, 0]),
            entry(0xd, 5, [0x40, 0x440, 0, 0]),
            entry(0xd, 6, [0x200, 0x480, 0, 0]),
            entry(0xd, 7, [0x400, 0x680, 0, 0]),
            entry(0xd, 9, [0x8, 0xa80, 0, 0]),
            entry(0x1f, 0, [1, 2, 0x100, 7]),
            entry(0x1f, 1, [4, 8, 0x201, 7]),
            entry(0x1f, 2, [0, 0, 2, 7]),
            entry(
                HYPERVISOR_LEAF,
                0,
                [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ),
            entry(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0x121, 0x2c10_0800]),
            entry(0x8000_0008, 0, [0x3030, 0, 0, 0]),
        ];
        CpuId::from_entries(&entries).expect("synthetic cpuid")
    }

    /// An AMD host without the hypervisor leaf and with a short basic range (no 0xB).
    fn amd_host() -> CpuId {
        let [b, d, c] = vendor_words(b"AuthenticAMD");
        let entries = vec![
            entry(0, 0, [0xa, b, c, d]),
            entry(1, 0, [0x00a00f11, 0x0010_0800, 0x7ed8_320b, 0x178b_fbff]),
            entry(7, 0, [0, 0x219c_97a9, 0x0040_0684, 0]),
            entry(0xb, 0, [1, 2, 0x100, 3]),
            entry(0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0x75c2_37ff, 0x2fd3_fbff]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x0001_700f, 0]),
            entry(0x8000_001d, 0, [0x121, 0, 0, 0]),
            entry(0x8000_001d, 1, [0x143 | (15 << 14), 0, 0, 0]),
            entry(0x8000_001d, 2, [0x163 | (15 << 14), 0, 0, 0]),
            entry(0x8000_001e, 0, [7, 0x0107, 0x0100, 0]),
        ];
        CpuId::from_entries(&entries).expect("synthetic cpuid")
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    fn all(cpuid: &CpuId, function: u32) -> Vec<kvm_cpuid_entry2> {
        cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == function)
            .copied()
            .collect()
    }

    fn build(host: &CpuId, index: u32, count: u32, list: &str) -> CpuId {
        let changes = parse_cpu_features(list).expect("valid list");
        build_cpuid(host, index, count, &changes).expect("build cpuid")
    }

    #[test]
    fn apic_id_is_placed_in_every_topology_leaf() {
        let host = intel_host();
        for index in 0..4 {
            let cpuid = build(&host, index, 4, "");
            assert_eq!(find(&cpuid, 1, 0).ebx >> 24, index);
            for leaf in [0xb, 0x1f] {
                for e in all(&cpuid, leaf) {
                    assert_eq!(e.edx, index, "leaf {leaf:#x}.{}", e.index);
                }
            }
        }
    }

    #[test]
    fn leaf1_keeps_the_low_ebx_fields() {
        let cpuid = build(&intel_host(), 2, 4, "");
        // CLFLUSH line size (EBX[15:8]) and brand index stay as the host had them.
        assert_eq!(find(&cpuid, 1, 0).ebx & 0xffff, 0x0800);
    }

    #[test]
    fn topology_for_1_2_4_and_64_vcpus() {
        let host = intel_host();
        for (count, shift) in [(1u32, 0u32), (2, 1), (4, 2), (64, 6)] {
            let cpuid = build(&host, count - 1, count, "");
            let leaf1 = find(&cpuid, 1, 0);
            assert_eq!((leaf1.ebx >> 16) & 0xff, 1 << shift, "count {count}");
            assert_eq!(leaf1.edx & LEAF1_EDX_HTT != 0, count > 1, "count {count}");

            for leaf in [0xb, 0x1f] {
                let levels = all(&cpuid, leaf);
                assert_eq!(levels.len(), 3, "count {count}");
                let smt = find(&cpuid, leaf, 0);
                assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, LEVEL_TYPE_SMT << 8));
                let core = find(&cpuid, leaf, 1);
                assert_eq!(
                    (core.eax, core.ebx, core.ecx),
                    (shift, count, 1 | (LEVEL_TYPE_CORE << 8)),
                    "count {count}"
                );
                let end = find(&cpuid, leaf, 2);
                assert_eq!((end.eax, end.ebx, end.ecx & 0xff00), (0, 0, 0));
                assert!(levels
                    .iter()
                    .all(|e| e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0));
            }

            for e in all(&cpuid, 4) {
                if e.eax & 0x1f == 0 {
                    assert_eq!(e.eax, 0, "null cache entry untouched");
                    continue;
                }
                assert_eq!(e.eax >> 26, (1 << shift) - 1, "cores, count {count}");
                let level = (e.eax >> 5) & 7;
                let sharing = (e.eax >> 14) & 0xfff;
                let expect = if level == 3 { (1 << shift) - 1 } else { 0 };
                assert_eq!(sharing, expect, "L{level} sharing, count {count}");
            }
        }
    }

    #[test]
    fn odd_counts_round_the_id_space_up() {
        let cpuid = build(&intel_host(), 0, 3, "");
        assert_eq!((find(&cpuid, 1, 0).ebx >> 16) & 0xff, 4);
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx), (2, 3));
    }

    #[test]
    fn amd_topology_leaves() {
        let cpuid = build(&amd_host(), 3, 4, "");
        let ext8 = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(ext8.ecx & 0xff, 3, "NC = cores - 1");
        assert_eq!((ext8.ecx >> 12) & 0xf, 2, "ApicIdCoreIdSize");
        assert_eq!(ext8.ecx & 0x0003_0000, 0x0001_0000, "other bits kept");
        let ext1e = find(&cpuid, 0x8000_001e, 0);
        assert_eq!(ext1e.eax, 3);
        assert_eq!(ext1e.ebx & 0xffff, 3, "core id 3, one thread per core");
        assert_eq!(ext1e.ecx & 0x7ff, 0);
        assert_eq!(
            (find(&cpuid, 0x8000_001d, 1).eax >> 14) & 0xfff,
            0,
            "L2 private"
        );
        assert_eq!(
            (find(&cpuid, 0x8000_001d, 2).eax >> 14) & 0xfff,
            3,
            "L3 shared"
        );
        // Max basic leaf 0xa: the stale 0xB entry is left alone, not rewritten.
        assert_eq!(all(&cpuid, 0xb).len(), 1);
        assert_eq!(find(&cpuid, 0xb, 0).edx, 3, "untouched host value");
    }

    #[test]
    fn amd_only_leaves_are_left_alone_on_intel() {
        let host = intel_host();
        let cpuid = build(&host, 1, 4, "");
        assert_eq!(find(&cpuid, 0x8000_0008, 0), find(&host, 0x8000_0008, 0));
    }

    #[test]
    fn hypervisor_bit_and_signature_are_set() {
        let check = |cpuid: &CpuId| {
            assert_ne!(find(cpuid, 1, 0).ecx & LEAF1_ECX_HYPERVISOR, 0);
            let hv = find(cpuid, HYPERVISOR_LEAF, 0);
            let mut sig = Vec::new();
            for word in [hv.ebx, hv.ecx, hv.edx] {
                sig.extend_from_slice(&word.to_le_bytes());
            }
            assert_eq!(sig, KVM_SIGNATURE);
            hv.eax
        };
        // Present (KVM's own): max leaf kept.
        assert_eq!(check(&build(&intel_host(), 0, 1, "")), 0x4000_0001);
        // Absent: added, with nothing beyond it.
        let amd = amd_host();
        assert_eq!(find(&amd, 1, 0).ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(check(&build(&amd, 0, 1, "")), HYPERVISOR_LEAF);
    }

    #[test]
    fn input_is_not_modified() {
        let host = intel_host();
        let before = host.as_slice().to_vec();
        let _ = build(&host, 1, 2, "-xsave");
        assert_eq!(host.as_slice(), &before[..]);
    }

    #[test]
    fn hiding_cx16_clears_only_its_bit() {
        let host = intel_host();
        let base = build(&host, 0, 1, "");
        let hidden = build(&host, 0, 1, "-cx16");
        let (b, h) = (find(&base, 1, 0), find(&hidden, 1, 0));
        assert_ne!(b.ecx & (1 << 13), 0);
        assert_eq!(h.ecx, b.ecx & !(1 << 13));
        assert_eq!((h.eax, h.ebx, h.edx), (b.eax, b.ebx, b.edx));
        assert_eq!(find(&hidden, 7, 0), find(&base, 7, 0));
    }

    #[test]
    fn hiding_avx512f_drops_all_avx512_and_its_state() {
        let host = intel_host();
        let base = build(&host, 0, 1, "");
        let cpuid = build(&host, 0, 1, "-avx512f");
        let leaf7 = find(&cpuid, 7, 0);
        for bit in [16, 17, 21, 26, 27, 28, 30, 31] {
            assert_eq!(leaf7.ebx & (1 << bit), 0, "ebx bit {bit}");
        }
        for bit in [1, 6, 11, 12, 14] {
            assert_eq!(leaf7.ecx & (1 << bit), 0, "ecx bit {bit}");
        }
        for bit in [2, 3, 8, 23] {
            assert_eq!(leaf7.edx & (1 << bit), 0, "edx bit {bit}");
        }
        assert_eq!(find(&cpuid, 7, 1).eax & (1 << 5), 0, "avx512_bf16");
        assert_ne!(find(&cpuid, 7, 1).eax & (1 << 4), 0, "avx_vnni stays");
        // AVX2 and the non-AVX-512 bits of leaf 7 are untouched.
        assert_ne!(leaf7.ebx & (1 << 5), 0);
        assert_eq!(leaf7.ebx | 0xdc23_0000, find(&base, 7, 0).ebx);
        // XCR0 loses opmask/ZMM state, keeps x87/SSE/AVX/PKRU; their subleaves are zeroed.
        assert_eq!(find(&cpuid, 0xd, 0).eax, 0x2e7 & !0xe0);
        for sub in [5, 6, 7] {
            let e = find(&cpuid, 0xd, sub);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0), "0xd.{sub}");
        }
        assert_eq!(find(&cpuid, 0xd, 2).eax, 0x100);
    }

    #[test]
    fn hiding_xsave_drops_dependents_and_leaf_0xd() {
        let cpuid = build(&intel_host(), 0, 1, "-xsave");
        let leaf1 = find(&cpuid, 1, 0);
        for bit in [26, 28, 12, 29] {
            assert_eq!(leaf1.ecx & (1 << bit), 0, "leaf 1 ecx bit {bit}");
        }
        assert_ne!(leaf1.ecx & (1 << 20), 0, "sse4_2 stays");
        let leaf7 = find(&cpuid, 7, 0);
        assert_eq!(leaf7.ebx & (1 << 5), 0, "avx2");
        assert_eq!(leaf7.ebx & (1 << 16), 0, "avx512f");
        assert_eq!(leaf7.ecx & (1 << 3), 0, "pku");
        assert_ne!(leaf7.ebx & (1 << 8), 0, "bmi2 stays");
        for e in all(&cpuid, 0xd) {
            assert_eq!(
                (e.eax, e.ebx, e.ecx, e.edx),
                (0, 0, 0, 0),
                "0xd.{}",
                e.index
            );
        }
    }

    #[test]
    fn plus_undoes_a_hide() {
        let host = intel_host();
        let base = build(&host, 0, 2, "");
        assert_eq!(
            build(&host, 0, 2, "-avx512f,+avx512f").as_slice(),
            base.as_slice()
        );
        assert_eq!(build(&host, 0, 2, "-cx16,cx16").as_slice(), base.as_slice());
    }

    #[test]
    fn plus_cannot_add_what_the_host_lacks() {
        let amd = amd_host();
        // The synthetic AMD host has no AVX-512 (leaf 7 EBX bit 16 clear).
        let cpuid = build(&amd, 0, 1, "+avx512f");
        assert_eq!(find(&cpuid, 7, 0).ebx & (1 << 16), 0);
    }

    #[test]
    fn empty_change_list_only_adds_topology_and_signature() {
        let host = intel_host();
        let cpuid = build(&host, 0, 1, "");
        assert_eq!(find(&cpuid, 7, 0), find(&host, 7, 0));
        assert_eq!(find(&cpuid, 0xd, 0), find(&host, 0xd, 0));
        assert_eq!(find(&cpuid, 0x8000_0001, 0), find(&host, 0x8000_0001, 0));
    }

    #[test]
    fn bad_counts_and_indices_are_refused() {
        let host = intel_host();
        assert_eq!(
            build_cpuid(&host, 0, 0, &[]).map(|_| ()),
            Err(CpuidError::BadVcpuCount {
                count: 0,
                max: MAX_VCPUS
            })
        );
        assert!(matches!(
            build_cpuid(&host, 0, MAX_VCPUS + 1, &[]),
            Err(CpuidError::BadVcpuCount { .. })
        ));
        assert_eq!(
            build_cpuid(&host, 4, 4, &[]).map(|_| ()),
            Err(CpuidError::IndexOutOfRange { index: 4, count: 4 })
        );
        assert!(build_cpuid(&host, MAX_VCPUS - 1, MAX_VCPUS, &[]).is_ok());
    }

    #[test]
    fn missing_leaf1_is_an_error() {
        let entries = [entry(0, 0, [0xd, 0, 0, 0])];
        let host = CpuId::from_entries(&entries).expect("cpuid");
        assert_eq!(
            build_cpuid(&host, 0, 1, &[]).map(|_| ()),
            Err(CpuidError::MissingLeaf { leaf: 1 })
        );
    }

    #[test]
    fn a_full_table_without_signature_leaf_is_refused() {
        let mut entries = vec![entry(0, 0, [1, 0, 0, 0]), entry(1, 0, [0; 4])];
        while entries.len() < KVM_MAX_CPUID_ENTRIES {
            let n = entries.len() as u32;
            entries.push(entry(0x8000_0000 + n, 0, [0; 4]));
        }
        let host = CpuId::from_entries(&entries).expect("cpuid");
        assert!(matches!(
            build_cpuid(&host, 0, 1, &[]),
            Err(CpuidError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn features_still_visible_names_what_the_host_put_back() {
        let changes = parse_cpu_features("-cx16,-avx512f").unwrap();
        let mut leaf1 = entry(1, 0, [0, 0, 1 << 13, 0]);
        let leaf7 = entry(7, 0, [0, 1 << 16, 0, 0]);
        let cpuid = CpuId::from_entries(&[leaf1, leaf7]).unwrap();
        assert_eq!(
            features_still_visible(&cpuid, &changes),
            vec!["cx16", "avx512f"]
        );
        leaf1.ecx = 0;
        let cpuid = CpuId::from_entries(&[leaf1, entry(7, 0, [0; 4])]).unwrap();
        assert!(features_still_visible(&cpuid, &changes).is_empty());
    }
}
