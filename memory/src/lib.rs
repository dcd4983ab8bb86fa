//! Guest RAM for an x86-64 KVM virtual machine: the physical address map, the host mapping
//! that backs it, and allocation of device MMIO ranges and IRQ lines.
//!
//! This crate does not touch KVM; any VMM built on `vm-memory` can use it:
//!
//! - [`layout`]: a pure function from a RAM size to the RAM regions (split around the
//!   `[2 GiB, 4 GiB)` MMIO hole), plus the fixed x86-64 addresses (IOAPIC, LAPIC, KVM TSS, …).
//! - [`guest_ram`]: maps the layout as anonymous, `MAP_NORESERVE`, not pre-faulted memory.
//! - [`allocator`]: hands out MMIO ranges from the device window and IRQ lines 5..=23.
//!
//! ```
//! use petrel_memory::allocator::ResourceAllocator;
//! use petrel_memory::guest_ram::create_guest_memory;
//! use petrel_memory::layout::{MemoryLayout, GIB, MIB};
//! use petrel_memory::vm_memory::{Bytes, GuestAddress};
//!
//! let layout = MemoryLayout::new(3 * GIB)?;
//! assert_eq!(layout.low_ram_end(), 2 * GIB); // RAM below the hole
//! assert_eq!(layout.end(), 5 * GIB); // the last GiB lives at 4 GiB
//!
//! let mem = create_guest_memory(&layout)?; // costs no RSS until touched
//! mem.write_obj(0x1234_u32, GuestAddress(4 * GIB))?;
//!
//! let mut resources = ResourceAllocator::new()?;
//! let mmio_base = resources.allocate_mmio(4096, 4096)?;
//! let irq = resources.allocate_irq()?;
//! # let _ = (mmio_base, irq, MIB);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod allocator;
pub mod guest_ram;
pub mod layout;

pub use vm_memory;

/// Guest memory backed by host `mmap`, without dirty-page tracking.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
