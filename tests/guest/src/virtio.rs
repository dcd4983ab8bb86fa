//! virtio-mmio: the `Hal` that virtio-drivers needs, and device discovery the way a kernel
//! does it (the `virtio_mmio.device=` command-line parameters and `LNRO0005` devices in the
//! DSDT), printing one `VIRTIO dev ...` line per device.

use crate::acpi;
use crate::heap;
use crate::io::mmio_read32;
use crate::out::{line, nl, put, put_dec, put_hex};
use crate::vparse::{self, MmioDev};
use alloc::vec::Vec;
use core::ptr::NonNull;
use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

/// "virt", the magic value at offset 0 of a virtio-mmio register window.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The guest's identity map ends here: device windows must lie below.
const MAPPED_END: u64 = 0x1_0000_0000;
/// A virtio-mmio window is at least the registers (0x100 bytes) and must fit in the map.
const MIN_WINDOW: u64 = 0x100;

/// virtio-drivers' platform layer for this guest: physical == virtual (identity map of
/// 0..4 GiB, which covers the image, its stack, heap and DMA pool, and the MMIO window), no IOMMU.
pub struct GuestHal;

// SAFETY: dma_alloc returns zeroed, page-aligned pages from the DMA pool that nothing else uses
// (or paddr 0, which virtio-drivers treats as failure); addresses are identity-mapped, so sharing
// a buffer is just handing its address to the device.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match heap::dma_pages(pages).and_then(NonNull::new) {
            Some(p) => (p.as_ptr() as PhysAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        heap::dma_free(vaddr.as_ptr(), pages);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// A device window found on the command line and/or in the DSDT, with its registers read.
#[derive(Clone, Copy)]
pub struct Found {
    pub dev: MmioDev,
    pub from_cmdline: bool,
    pub from_dsdt: bool,
    /// MMIO `Version` (offset 0x004).
    pub version: u32,
    /// MMIO `DeviceID` (offset 0x008): 1 = net, 2 = block, 4 = entropy, 19 = vsock.
    pub device_id: u32,
}

impl Found {
    /// A virtio-drivers transport for this window.
    pub fn transport(&self) -> Result<MmioTransport<'static>, MmioError> {
        let header = NonNull::new(self.dev.base as *mut VirtIOHeader)
            .ok_or(MmioError::MmioRegionTooSmall)?;
        // SAFETY: discover() checked that the window lies in the identity-mapped (uncached)
        // 0..4 GiB and starts with the virtio magic; each window gets one transport per run.
        unsafe { MmioTransport::new(header, self.dev.size as usize) }
    }
}

/// virtio device id 1 (network card).
pub const DEVICE_NET: u32 = 1;
/// virtio device id 2.
pub const DEVICE_BLOCK: u32 = 2;
/// virtio device id 4 (entropy source).
pub const DEVICE_RNG: u32 = 4;
/// virtio device id 19 (socket, vsock).
pub const DEVICE_VSOCK: u32 = 19;

/// Adds `dev` to `list` (kept sorted by base address) or, if its base is already there, marks
/// the existing entry with the new source.
fn add(list: &mut Vec<Found>, dev: MmioDev, cmdline: bool) {
    for f in list.iter_mut() {
        if f.dev.base == dev.base {
            f.from_cmdline |= cmdline;
            f.from_dsdt |= !cmdline;
            return;
        }
    }
    let at = list
        .iter()
        .position(|f| f.dev.base > dev.base)
        .unwrap_or(list.len());
    list.insert(
        at,
        Found {
            dev,
            from_cmdline: cmdline,
            from_dsdt: !cmdline,
            version: 0,
            device_id: 0,
        },
    );
}

/// The `virtio_mmio.device=` parameters of the command line (bad ones print `VIRTIO error`).
fn from_cmdline(cmdline: &[u8], list: &mut Vec<Found>) {
    for tok in cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
        let Some(v) = tok.strip_prefix(vparse::CMDLINE_KEY) else {
            continue;
        };
        match vparse::parse_virtio_mmio_device(v) {
            Some(d) => add(list, d, true),
            None => {
                put(b"VIRTIO error bad cmdline ");
                crate::out::put_escaped(tok);
                nl();
            }
        }
    }
}

/// The `LNRO0005` devices in the DSDT (errors print `VIRTIO error` / `ACPI error`).
fn from_dsdt(boot_params: u64, list: &mut Vec<Found>) {
    let Some(a) = acpi::discover(boot_params, false) else {
        line(b"VIRTIO error no ACPI tables, DSDT not scanned");
        return;
    };
    let Some(fadt) = a.fadt else {
        line(b"VIRTIO error no FADT, DSDT not scanned");
        return;
    };
    let f = acpi::fadt(&a.mem, &fadt);
    let Some(t) = acpi::table_at(&a.mem, f.dsdt(), b"dsdt", false) else {
        return;
    };
    if &t.sig != b"DSDT" {
        line(b"VIRTIO error FADT's DSDT pointer does not point at a DSDT");
        return;
    }
    // SAFETY: table_at checked that [addr, addr + len) is RAM inside the identity map (len at
    // most 64 KiB); the VMM does not change it while the guest runs.
    let table = unsafe { core::slice::from_raw_parts(t.addr as *const u8, t.len as usize) };
    vparse::scan_dsdt(table, &mut |d| match (d.mem, d.irq) {
        (Some((base, size)), Some(irq)) => add(
            list,
            MmioDev {
                base: u64::from(base),
                size: u64::from(size),
                irq,
            },
            false,
        ),
        _ => {
            put(b"VIRTIO error dsdt LNRO0005 device at offset ");
            put_hex(d.offset as u64);
            if !d.has_crs {
                line(b" has no _CRS buffer");
            } else if d.mem.is_none() {
                line(b" has no Memory32Fixed in _CRS");
            } else {
                line(b" has no interrupt in _CRS");
            }
        }
    });
}

/// Finds the virtio-mmio devices (command line, then DSDT), reads their magic, version and
/// device id, prints `VIRTIO dev base=0x.. irq=<dec> from=<src> type=<dec>` for each usable
/// one (sorted by base) and `VIRTIO count=<dec>` last, and returns them. Windows with a bad
/// magic or outside 0..4 GiB print `VIRTIO error ...`; device id 0 (a placeholder) is skipped
/// silently.
pub fn discover(boot_params: u64, cmdline: &[u8]) -> Vec<Found> {
    let mut list = Vec::new();
    from_cmdline(cmdline, &mut list);
    from_dsdt(boot_params, &mut list);
    let mut usable = Vec::with_capacity(list.len());
    for mut f in list {
        let d = f.dev;
        let fits = d.size >= MIN_WINDOW
            && d.base % 4 == 0
            && d.base
                .checked_add(d.size)
                .is_some_and(|end| end <= MAPPED_END);
        if !fits {
            put(b"VIRTIO error base=");
            put_hex(d.base);
            put(b" size=");
            put_hex(d.size);
            line(b" not a window the guest can map (0..4GiB, >= 0x100 bytes)");
            continue;
        }
        let magic = mmio_read32(d.base);
        if magic != MMIO_MAGIC {
            put(b"VIRTIO error base=");
            put_hex(d.base);
            put(b" magic=");
            put_hex(u64::from(magic));
            line(b" (want 0x74726976)");
            continue;
        }
        f.version = mmio_read32(d.base + 4);
        f.device_id = mmio_read32(d.base + 8);
        if f.device_id == 0 {
            continue;
        }
        put(b"VIRTIO dev base=");
        put_hex(d.base);
        put(b" irq=");
        put_dec(u64::from(d.irq));
        put(b" from=");
        put(match (f.from_dsdt, f.from_cmdline) {
            (true, true) => b"dsdt,cmdline",
            (true, false) => b"dsdt",
            _ => b"cmdline",
        });
        put(b" type=");
        put_dec(u64::from(f.device_id));
        nl();
        if f.version != 2 {
            put(b"VIRTIO warn base=");
            put_hex(d.base);
            put(b" version=");
            put_dec(u64::from(f.version));
            line(b" (not 2)");
        }
        usable.push(f);
    }
    put(b"VIRTIO count=");
    put_dec(usable.len() as u64);
    nl();
    usable
}

/// The `virtio` scenario: discovery only.
pub fn report(boot_params: u64, cmdline: &[u8]) {
    discover(boot_params, cmdline);
}

/// A short name for a virtio-drivers error (no core::fmt in this guest).
pub fn error_name(e: virtio_drivers::Error) -> &'static [u8] {
    use virtio_drivers::Error as E;
    match e {
        E::QueueFull => b"queue-full",
        E::NotReady => b"not-ready",
        E::WrongToken => b"wrong-token",
        E::AlreadyUsed => b"already-used",
        E::InvalidParam => b"invalid-param",
        E::DmaError => b"dma",
        E::IoError => b"io",
        E::Unsupported => b"unsupported",
        E::ConfigSpaceTooSmall => b"config-space-too-small",
        E::ConfigSpaceMissing => b"config-space-missing",
        E::SocketDeviceError(_) => b"socket",
    }
}

/// A short name for a transport error.
pub fn mmio_error_name(e: &MmioError) -> &'static [u8] {
    match e {
        MmioError::BadMagic(_) => b"bad-magic",
        MmioError::UnsupportedVersion(_) => b"unsupported-version",
        MmioError::InvalidDeviceID(_) => b"invalid-device-id",
        MmioError::MmioRegionTooSmall => b"region-too-small",
    }
}
