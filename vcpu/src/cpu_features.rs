//! Named CPUID feature bits and the `-name,+name` list that hides or keeps them.
//!
//! The table names the bits a user may want to hide from the guest, spelled as Linux's
//! `/proc/cpuinfo` spells them (a few also have the other common spelling as an alias, e.g.
//! `sse3`/`pni`). Each feature lists the features it `requires`: hiding a feature also hides
//! everything that requires it (directly or not), so `-xsave` hides AVX and AVX-512 too.
//!
//! Nothing here can *add* a feature: `+name` only undoes an earlier `-name` in the same list.
//! What KVM does not support stays hidden whatever the list says.

use std::fmt;

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidReg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One named CPUID feature bit.
#[derive(Debug, PartialEq, Eq)]
pub struct CpuFeature {
    /// The name, as `/proc/cpuinfo` spells it where Linux shows it.
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// CPUID leaf (EAX input).
    pub leaf: u32,
    /// CPUID subleaf (ECX input); 0 for leaves without subleaves.
    pub subleaf: u32,
    /// The register that holds the bit.
    pub register: CpuidReg,
    /// The bit number in that register.
    pub bit: u8,
    /// Names of the features this one cannot work without. Hiding any of them hides this one.
    pub requires: &'static [&'static str],
    /// XSAVE state components (XCR0 bits) that belong to this feature; hiding the feature
    /// removes them from CPUID leaf 0xD.
    pub xstate_components: u64,
}

impl CpuFeature {
    /// True if `name` is this feature's name or one of its aliases (ASCII case is ignored).
    pub fn is_named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for CpuFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

const fn feat(
    name: &'static str,
    leaf: u32,
    subleaf: u32,
    register: CpuidReg,
    bit: u8,
    requires: &'static [&'static str],
) -> CpuFeature {
    CpuFeature {
        name,
        aliases: &[],
        leaf,
        subleaf,
        register,
        bit,
        requires,
        xstate_components: 0,
    }
}

use CpuidReg::{Eax, Ebx, Ecx, Edx};

/// XCR0 bit of the AVX (YMM upper halves) state.
const XSTATE_YMM: u64 = 1 << 2;
/// XCR0 bits of the AVX-512 state (opmask, ZMM_Hi256, Hi16_ZMM).
const XSTATE_AVX512: u64 = 0b111 << 5;
/// XCR0 bit of the PKRU state.
const XSTATE_PKRU: u64 = 1 << 9;

/// Every feature petrel can hide, by leaf.
pub static CPU_FEATURES: &[CpuFeature] = &[
    // Leaf 1, ECX.
    CpuFeature {
        aliases: &["pni"],
        ..feat("sse3", 1, 0, Ecx, 0, &["sse2"])
    },
    feat("pclmulqdq", 1, 0, Ecx, 1, &["sse2"]),
    feat("ssse3", 1, 0, Ecx, 9, &["sse2"]),
    feat("fma", 1, 0, Ecx, 12, &["avx"]),
    feat("cx16", 1, 0, Ecx, 13, &[]),
    feat("pcid", 1, 0, Ecx, 17, &[]),
    feat("sse4_1", 1, 0, Ecx, 19, &["sse2"]),
    feat("sse4_2", 1, 0, Ecx, 20, &["sse2"]),
    feat("x2apic", 1, 0, Ecx, 21, &[]),
    feat("movbe", 1, 0, Ecx, 22, &[]),
    feat("popcnt", 1, 0, Ecx, 23, &[]),
    CpuFeature {
        aliases: &["tsc_deadline_timer"],
        ..feat("tsc_deadline", 1, 0, Ecx, 24, &[])
    },
    feat("aes", 1, 0, Ecx, 25, &["sse2"]),
    feat("xsave", 1, 0, Ecx, 26, &[]),
    CpuFeature {
        xstate_components: XSTATE_YMM,
        ..feat("avx", 1, 0, Ecx, 28, &["xsave", "sse2"])
    },
    feat("f16c", 1, 0, Ecx, 29, &["avx"]),
    feat("rdrand", 1, 0, Ecx, 30, &[]),
    // Leaf 1, EDX.
    feat("cx8", 1, 0, Edx, 8, &[]),
    feat("cmov", 1, 0, Edx, 15, &[]),
    feat("clflush", 1, 0, Edx, 19, &[]),
    feat("mmx", 1, 0, Edx, 23, &[]),
    feat("fxsr", 1, 0, Edx, 24, &[]),
    feat("sse", 1, 0, Edx, 25, &["fxsr"]),
    feat("sse2", 1, 0, Edx, 26, &["sse"]),
    // Leaf 7.0, EBX.
    feat("fsgsbase", 7, 0, Ebx, 0, &[]),
    feat("bmi1", 7, 0, Ebx, 3, &[]),
    feat("hle", 7, 0, Ebx, 4, &[]),
    feat("avx2", 7, 0, Ebx, 5, &["avx"]),
    feat("smep", 7, 0, Ebx, 7, &[]),
    feat("bmi2", 7, 0, Ebx, 8, &[]),
    feat("erms", 7, 0, Ebx, 9, &[]),
    feat("invpcid", 7, 0, Ebx, 10, &[]),
    feat("rtm", 7, 0, Ebx, 11, &[]),
    CpuFeature {
        xstate_components: XSTATE_AVX512,
        ..feat("avx512f", 7, 0, Ebx, 16, &["avx2"])
    },
    feat("avx512dq", 7, 0, Ebx, 17, &["avx512f"]),
    feat("rdseed", 7, 0, Ebx, 18, &[]),
    feat("adx", 7, 0, Ebx, 19, &[]),
    feat("smap", 7, 0, Ebx, 20, &[]),
    feat("avx512ifma", 7, 0, Ebx, 21, &["avx512f"]),
    feat("clflushopt", 7, 0, Ebx, 23, &[]),
    feat("clwb", 7, 0, Ebx, 24, &[]),
    feat("avx512pf", 7, 0, Ebx, 26, &["avx512f"]),
    feat("avx512er", 7, 0, Ebx, 27, &["avx512f"]),
    feat("avx512cd", 7, 0, Ebx, 28, &["avx512f"]),
    CpuFeature {
        aliases: &["sha_ni"],
        ..feat("sha", 7, 0, Ebx, 29, &["sse2"])
    },
    feat("avx512bw", 7, 0, Ebx, 30, &["avx512f"]),
    feat("avx512vl", 7, 0, Ebx, 31, &["avx512f"]),
    // Leaf 7.0, ECX.
    feat("avx512vbmi", 7, 0, Ecx, 1, &["avx512f"]),
    feat("umip", 7, 0, Ecx, 2, &[]),
    CpuFeature {
        xstate_components: XSTATE_PKRU,
        ..feat("pku", 7, 0, Ecx, 3, &["xsave"])
    },
    feat("waitpkg", 7, 0, Ecx, 5, &[]),
    feat("avx512_vbmi2", 7, 0, Ecx, 6, &["avx512f"]),
    feat("gfni", 7, 0, Ecx, 8, &["sse2"]),
    feat("vaes", 7, 0, Ecx, 9, &["avx", "aes"]),
    feat("vpclmulqdq", 7, 0, Ecx, 10, &["avx", "pclmulqdq"]),
    feat("avx512_vnni", 7, 0, Ecx, 11, &["avx512f"]),
    feat("avx512_bitalg", 7, 0, Ecx, 12, &["avx512f"]),
    feat("avx512_vpopcntdq", 7, 0, Ecx, 14, &["avx512f"]),
    feat("rdpid", 7, 0, Ecx, 22, &[]),
    // Leaf 7.0, EDX.
    feat("avx512_4vnniw", 7, 0, Edx, 2, &["avx512f"]),
    feat("avx512_4fmaps", 7, 0, Edx, 3, &["avx512f"]),
    feat("fsrm", 7, 0, Edx, 4, &[]),
    feat("avx512_vp2intersect", 7, 0, Edx, 8, &["avx512f"]),
    feat("avx512_fp16", 7, 0, Edx, 23, &["avx512bw"]),
    // Leaf 7.1, EAX.
    feat("avx_vnni", 7, 1, Eax, 4, &["avx2"]),
    feat("avx512_bf16", 7, 1, Eax, 5, &["avx512f"]),
    // Leaf 0xD.1, EAX.
    feat("xsaveopt", 0xd, 1, Eax, 0, &["xsave"]),
    feat("xsavec", 0xd, 1, Eax, 1, &["xsave"]),
    feat("xgetbv1", 0xd, 1, Eax, 2, &["xsave"]),
    feat("xsaves", 0xd, 1, Eax, 3, &["xsave"]),
    // Leaf 0x8000_0001, ECX.
    feat("lahf_lm", 0x8000_0001, 0, Ecx, 0, &[]),
    CpuFeature {
        aliases: &["lzcnt"],
        ..feat("abm", 0x8000_0001, 0, Ecx, 5, &[])
    },
    feat("sse4a", 0x8000_0001, 0, Ecx, 6, &["sse2"]),
    CpuFeature {
        aliases: &["3dnowprefetch"],
        ..feat("prefetchw", 0x8000_0001, 0, Ecx, 8, &[])
    },
    // Leaf 0x8000_0001, EDX.
    feat("syscall", 0x8000_0001, 0, Edx, 11, &[]),
    feat("nx", 0x8000_0001, 0, Edx, 20, &[]),
    feat("pdpe1gb", 0x8000_0001, 0, Edx, 26, &[]),
    feat("rdtscp", 0x8000_0001, 0, Edx, 27, &[]),
    feat("lm", 0x8000_0001, 0, Edx, 29, &[]),
];

/// Looks a feature up by name or alias (ASCII case is ignored).
pub fn find_cpu_feature(name: &str) -> Option<&'static CpuFeature> {
    CPU_FEATURES.iter().find(|f| f.is_named(name))
}

/// The names of every known feature, comma separated (for error messages and `--help`).
pub fn cpu_feature_names() -> String {
    CPU_FEATURES
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One entry of a feature list: hide (`enable == false`) or keep (`enable == true`) a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatureChange {
    /// The feature.
    pub feature: &'static CpuFeature,
    /// `false` hides the feature; `true` undoes an earlier hide (it never adds a feature the
    /// host or KVM lacks).
    pub enable: bool,
}

/// Errors from parsing a CPU feature list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuFeatureError {
    /// A name is not in the feature table.
    #[error("unknown cpu feature `{name}` (known features: {known})")]
    Unknown {
        /// The name as given.
        name: String,
        /// The names petrel knows.
        known: String,
    },
    /// An item is only a sign, without a name.
    #[error("cpu feature item `{item}` has no name")]
    EmptyName {
        /// The item as given.
        item: String,
    },
}

/// Parses a comma-separated feature list: `-name` hides a feature, `+name` or `name` keeps it
/// (undoing an earlier `-name`). Spaces around items are ignored, and so are empty items, so
/// `""` and `" -avx512f , "` are valid. Later items win over earlier ones.
pub fn parse_cpu_features(list: &str) -> Result<Vec<CpuFeatureChange>, CpuFeatureError> {
    let mut changes = Vec::new();
    for raw in list.split(',') {
        let item = raw.trim();
        if item.is_empty() {
            continue;
        }
        let (enable, name) = match item.as_bytes()[0] {
            b'-' => (false, &item[1..]),
            b'+' => (true, &item[1..]),
            _ => (true, item),
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(CpuFeatureError::EmptyName {
                item: item.to_string(),
            });
        }
        let feature = find_cpu_feature(name).ok_or_else(|| CpuFeatureError::Unknown {
            name: name.to_string(),
            known: cpu_feature_names(),
        })?;
        changes.push(CpuFeatureChange { feature, enable });
    }
    Ok(changes)
}

/// The features a change list hides in the end: every feature whose last change is a hide,
/// plus every feature that requires a hidden one (transitively). Returned in table order.
///
/// `+name` cannot bring back a feature whose prerequisite is hidden (`-xsave,+avx` still hides
/// AVX); such a request is logged.
pub fn hidden_cpu_features(changes: &[CpuFeatureChange]) -> Vec<&'static CpuFeature> {
    let mut hidden = vec![false; CPU_FEATURES.len()];
    let mut kept = vec![false; CPU_FEATURES.len()];
    for change in changes {
        if let Some(i) = table_index(change.feature) {
            hidden[i] = !change.enable;
            kept[i] = change.enable;
        }
    }
    // Propagate to dependents until nothing changes; the table is small, so the fixed point
    // is reached after a handful of passes.
    loop {
        let mut changed = false;
        for (i, feature) in CPU_FEATURES.iter().enumerate() {
            if hidden[i] {
                continue;
            }
            let needs_hidden = feature.requires.iter().any(|req| {
                CPU_FEATURES
                    .iter()
                    .position(|f| f.name == *req)
                    .is_some_and(|j| hidden[j])
            });
            if needs_hidden {
                hidden[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (i, feature) in CPU_FEATURES.iter().enumerate() {
        if hidden[i] && kept[i] {
            log::warn!("cpu feature {feature} stays hidden: a feature it requires is hidden");
        }
    }
    CPU_FEATURES
        .iter()
        .zip(hidden)
        .filter_map(|(f, h)| h.then_some(f))
        .collect()
}

fn table_index(feature: &CpuFeature) -> Option<usize> {
    CPU_FEATURES.iter().position(|f| std::ptr::eq(f, feature))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(features: &[&CpuFeature]) -> Vec<&'static str> {
        features.iter().map(|f| f.name).collect()
    }

    fn hidden_by(list: &str) -> Vec<&'static str> {
        let changes = parse_cpu_features(list).expect("valid list");
        hidden_cpu_features(&changes)
            .into_iter()
            .map(|f| f.name)
            .collect()
    }

    #[test]
    fn table_names_are_unique_and_bits_distinct() {
        for (i, a) in CPU_FEATURES.iter().enumerate() {
            assert!(a.bit < 32, "{} bit {}", a.name, a.bit);
            for b in &CPU_FEATURES[i + 1..] {
                assert!(!b.is_named(a.name), "duplicate name {}", a.name);
                for alias in a.aliases {
                    assert!(!b.is_named(alias), "duplicate alias {alias}");
                }
                let same_bit = (a.leaf, a.subleaf, a.register, a.bit)
                    == (b.leaf, b.subleaf, b.register, b.bit);
                assert!(!same_bit, "{} and {} share a bit", a.name, b.name);
            }
        }
    }

    #[test]
    fn requirements_name_known_features() {
        for feature in CPU_FEATURES {
            for req in feature.requires {
                assert!(
                    CPU_FEATURES.iter().any(|f| f.name == *req),
                    "{} requires unknown {req}",
                    feature.name
                );
            }
        }
    }

    #[test]
    fn api_feature_list_is_present() {
        for name in [
            "sse3",
            "pclmulqdq",
            "ssse3",
            "fma",
            "cx16",
            "pcid",
            "sse4_1",
            "sse4_2",
            "x2apic",
            "movbe",
            "popcnt",
            "tsc_deadline",
            "aes",
            "xsave",
            "avx",
            "f16c",
            "rdrand",
            "sse",
            "sse2",
            "fsgsbase",
            "bmi1",
            "hle",
            "avx2",
            "smep",
            "bmi2",
            "erms",
            "invpcid",
            "rtm",
            "avx512f",
            "avx512dq",
            "rdseed",
            "adx",
            "smap",
            "avx512ifma",
            "clflushopt",
            "clwb",
            "avx512pf",
            "avx512er",
            "avx512cd",
            "sha",
            "avx512bw",
            "avx512vl",
            "avx512vbmi",
            "umip",
            "pku",
            "waitpkg",
            "avx512_vbmi2",
            "gfni",
            "vaes",
            "vpclmulqdq",
            "avx512_vnni",
            "avx512_bitalg",
            "avx512_vpopcntdq",
            "rdpid",
            "xsaveopt",
            "xsavec",
            "xgetbv1",
            "xsaves",
            "lahf_lm",
            "abm",
            "lzcnt",
            "sse4a",
            "prefetchw",
            "syscall",
            "nx",
            "pdpe1gb",
            "rdtscp",
            "lm",
        ] {
            assert!(find_cpu_feature(name).is_some(), "{name} missing");
        }
    }

    #[test]
    fn known_bits_are_where_the_sdm_says() {
        let cx16 = find_cpu_feature("cx16").expect("cx16");
        assert_eq!((cx16.leaf, cx16.register, cx16.bit), (1, Ecx, 13));
        let avx512f = find_cpu_feature("avx512f").expect("avx512f");
        assert_eq!(
            (avx512f.leaf, avx512f.subleaf, avx512f.register, avx512f.bit),
            (7, 0, Ebx, 16)
        );
        let lm = find_cpu_feature("lm").expect("lm");
        assert_eq!((lm.leaf, lm.register, lm.bit), (0x8000_0001, Edx, 29));
        let xsaves = find_cpu_feature("xsaves").expect("xsaves");
        assert_eq!(
            (xsaves.leaf, xsaves.subleaf, xsaves.register, xsaves.bit),
            (0xd, 1, Eax, 3)
        );
    }

    #[test]
    fn parses_signs_and_bare_names() {
        let changes = parse_cpu_features("-cx16,+avx,sse4_2").expect("valid");
        let got: Vec<_> = changes.iter().map(|c| (c.feature.name, c.enable)).collect();
        assert_eq!(got, [("cx16", false), ("avx", true), ("sse4_2", true)]);
    }

    #[test]
    fn empty_list_and_empty_items_are_fine() {
        assert_eq!(parse_cpu_features(""), Ok(vec![]));
        assert_eq!(parse_cpu_features("  "), Ok(vec![]));
        assert_eq!(parse_cpu_features(",,"), Ok(vec![]));
        assert_eq!(parse_cpu_features("-cx16,").expect("valid").len(), 1);
    }

    #[test]
    fn whitespace_around_items_and_after_signs_is_ignored() {
        let changes = parse_cpu_features("  -cx16 , + avx512f ,\tpopcnt\n").expect("valid");
        let got: Vec<_> = changes.iter().map(|c| (c.feature.name, c.enable)).collect();
        assert_eq!(got, [("cx16", false), ("avx512f", true), ("popcnt", true)]);
    }

    #[test]
    fn aliases_and_case_resolve_to_the_feature() {
        let changes = parse_cpu_features("-PNI,-sha_ni,-LZCNT").expect("valid");
        let got: Vec<_> = changes.iter().map(|c| c.feature.name).collect();
        assert_eq!(got, ["sse3", "sha", "abm"]);
    }

    #[test]
    fn unknown_name_is_named_with_suggestions() {
        let err = parse_cpu_features("-cx16,-no-such-thing").expect_err("unknown");
        match &err {
            CpuFeatureError::Unknown { name, known } => {
                assert_eq!(name, "no-such-thing");
                assert!(known.contains("avx512f"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = err.to_string();
        assert!(text.contains("`no-such-thing`"), "{text}");
        assert!(text.contains("cx16"), "{text}");
    }

    #[test]
    fn a_bare_sign_is_refused() {
        assert_eq!(
            parse_cpu_features("-cx16, - ,avx"),
            Err(CpuFeatureError::EmptyName {
                item: "-".to_string()
            })
        );
        assert!(matches!(
            parse_cpu_features("+"),
            Err(CpuFeatureError::EmptyName { .. })
        ));
    }

    #[test]
    fn hiding_one_leaf_feature_hides_only_it() {
        assert_eq!(hidden_by("-cx16"), ["cx16"]);
        assert_eq!(hidden_by("-popcnt,-rdrand"), ["popcnt", "rdrand"]);
    }

    #[test]
    fn hiding_xsave_hides_its_dependents() {
        let hidden = hidden_by("-xsave");
        for name in [
            "xsave",
            "avx",
            "fma",
            "f16c",
            "avx2",
            "avx512f",
            "avx512vl",
            "avx512_bf16",
            "avx512_fp16",
            "vaes",
            "vpclmulqdq",
            "avx_vnni",
            "pku",
            "xsaveopt",
            "xsavec",
            "xgetbv1",
            "xsaves",
        ] {
            assert!(hidden.contains(&name), "{name} not hidden: {hidden:?}");
        }
        assert!(!hidden.contains(&"sse4_2"));
        assert!(!hidden.contains(&"bmi2"));
    }

    #[test]
    fn hiding_avx512f_hides_every_avx512_feature_and_nothing_else() {
        let hidden = hidden_by("-avx512f");
        let all_avx512: Vec<_> = CPU_FEATURES
            .iter()
            .filter(|f| f.name.starts_with("avx512"))
            .map(|f| f.name)
            .collect();
        assert_eq!(hidden, all_avx512);
        assert!(!hidden.contains(&"avx2"));
    }

    #[test]
    fn plus_undoes_an_earlier_hide() {
        assert!(hidden_by("-cx16,+cx16").is_empty());
        assert!(hidden_by("-avx512f,avx512f").is_empty());
        assert_eq!(hidden_by("+cx16,-cx16"), ["cx16"]);
    }

    #[test]
    fn plus_cannot_bring_back_a_feature_whose_prerequisite_is_hidden() {
        let hidden = hidden_by("-xsave,+avx");
        assert!(hidden.contains(&"avx"));
        assert!(hidden.contains(&"xsave"));
    }

    #[test]
    fn no_changes_hide_nothing() {
        assert!(hidden_cpu_features(&[]).is_empty());
        assert!(names(&hidden_cpu_features(
            &parse_cpu_features("+avx,sse2").expect("valid")
        ))
        .is_empty());
    }
}
