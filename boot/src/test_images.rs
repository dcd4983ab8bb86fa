//! Synthetic kernel images for the unit tests, written byte by byte.

/// One program header (and its data) of a synthetic ELF.
pub struct ElfSegment {
    pub p_type: u32,
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

impl ElfSegment {
    /// A `PT_LOAD` segment whose memory size equals its data size.
    pub fn load(paddr: u64, data: Vec<u8>) -> Self {
        let memsz = data.len() as u64;
        ElfSegment {
            p_type: 1,
            paddr,
            data,
            memsz,
        }
    }

    /// A `PT_NOTE` segment.
    pub fn note(data: Vec<u8>) -> Self {
        ElfSegment {
            p_type: 4,
            paddr: 0,
            data,
            memsz: 0,
        }
    }

    pub fn with_memsz(mut self, memsz: u64) -> Self {
        self.memsz = memsz;
        self
    }
}

/// An ELF64 little-endian x86-64 executable: header, program headers, then segment data.
pub fn elf_image(entry: u64, segments: &[ElfSegment]) -> Vec<u8> {
    let phoff = 64u64;
    let mut data_off = phoff + 56 * segments.len() as u64;
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // ELFDATA2LSB
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    out[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    out[56..58].copy_from_slice(&(segments.len() as u16).to_le_bytes());
    let mut payload = Vec::new();
    for seg in segments {
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&seg.p_type.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
        ph[8..16].copy_from_slice(&data_off.to_le_bytes());
        ph[16..24].copy_from_slice(&(seg.paddr | 0xffff_ffff_8000_0000).to_le_bytes());
        ph[24..32].copy_from_slice(&seg.paddr.to_le_bytes());
        ph[32..40].copy_from_slice(&(seg.data.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&seg.memsz.to_le_bytes());
        ph[48..56].copy_from_slice(&4u64.to_le_bytes());
        out.extend_from_slice(&ph);
        payload.extend_from_slice(&seg.data);
        data_off += seg.data.len() as u64;
    }
    out.extend_from_slice(&payload);
    out
}

/// A `XEN_ELFNOTE_PHYS32_ENTRY` note ("Xen", type 18) with a 32-bit entry.
pub fn pvh_note(entry: u32) -> Vec<u8> {
    let mut n = Vec::new();
    n.extend_from_slice(&4u32.to_le_bytes()); // n_namesz
    n.extend_from_slice(&4u32.to_le_bytes()); // n_descsz
    n.extend_from_slice(&18u32.to_le_bytes()); // n_type
    n.extend_from_slice(b"Xen\0");
    n.extend_from_slice(&entry.to_le_bytes());
    n
}

/// Setup-header fields of a synthetic bzImage.
#[derive(Clone)]
pub struct BzImageSpec {
    pub setup_sects: u8,
    pub version: u16,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable: bool,
    pub pref_address: u64,
    pub init_size: u32,
    pub syssize: Option<u32>,
    pub payload: Vec<u8>,
}

/// A valid protocol 2.15 bzImage: 64-bit, relocatable, 16 MiB pref_address, 2 MiB init_size.
pub fn bzimage() -> BzImageSpec {
    BzImageSpec {
        setup_sects: 3,
        version: 0x020f,
        loadflags: 0x01,  // LOADED_HIGH
        xloadflags: 0x03, // XLF_KERNEL_64 | XLF_CAN_BE_LOADED_ABOVE_4G
        cmdline_size: 255,
        initrd_addr_max: 0x7fff_ffff,
        kernel_alignment: 0x20_0000,
        relocatable: true,
        pref_address: 0x100_0000,
        init_size: 0x20_0000,
        syssize: None,
        payload: (0..1024u32).map(|i| (i as u8) ^ 0x5a).collect(),
    }
}

macro_rules! setter {
    ($name:ident: $ty:ty) => {
        pub fn $name(mut self, v: $ty) -> Self {
            self.$name = v;
            self
        }
    };
}

impl BzImageSpec {
    setter!(setup_sects: u8);
    setter!(version: u16);
    setter!(loadflags: u8);
    setter!(xloadflags: u16);
    setter!(cmdline_size: u32);
    setter!(initrd_addr_max: u32);
    setter!(kernel_alignment: u32);
    setter!(relocatable: bool);
    setter!(pref_address: u64);
    setter!(init_size: u32);
    setter!(payload: Vec<u8>);

    pub fn syssize(mut self, v: u32) -> Self {
        self.syssize = Some(v);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let sects = if self.setup_sects == 0 {
            4
        } else {
            usize::from(self.setup_sects)
        };
        let mut out = vec![0u8; (sects + 1) * 512];
        let syssize = self
            .syssize
            .unwrap_or(self.payload.len().div_ceil(16) as u32);
        out[0x1f1] = self.setup_sects;
        out[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        out[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        out[0x200..0x202].copy_from_slice(&[0xeb, 0x66]); // jmp
        out[0x202..0x206].copy_from_slice(b"HdrS");
        out[0x206..0x208].copy_from_slice(&self.version.to_le_bytes());
        out[0x211] = self.loadflags;
        out[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        out[0x22c..0x230].copy_from_slice(&self.initrd_addr_max.to_le_bytes());
        out[0x230..0x234].copy_from_slice(&self.kernel_alignment.to_le_bytes());
        out[0x234] = u8::from(self.relocatable);
        out[0x235] = 21; // min_alignment: 2 MiB
        out[0x236..0x238].copy_from_slice(&self.xloadflags.to_le_bytes());
        out[0x238..0x23c].copy_from_slice(&self.cmdline_size.to_le_bytes());
        out[0x258..0x260].copy_from_slice(&self.pref_address.to_le_bytes());
        out[0x260..0x264].copy_from_slice(&self.init_size.to_le_bytes());
        out.extend_from_slice(&self.payload);
        // syssize counts 16-byte paragraphs; pad the file to a whole one.
        let padded = (sects + 1) * 512 + syssize as usize * 16;
        if out.len() < padded {
            out.resize(padded, 0);
        }
        out
    }
}
