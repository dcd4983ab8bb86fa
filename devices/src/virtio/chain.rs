//! Copying a descriptor chain out of a split queue's descriptor table, defensively.
//!
//! `virtio-queue`'s `DescriptorChain` iterator is not enough against a hostile driver: it
//! ends silently at an unreadable descriptor or a `next` index outside the table, it ends a
//! looping chain only after `queue size` descriptors (again silently), and it follows
//! indirect tables whether or not `VIRTIO_RING_F_INDIRECT_DESC` was negotiated. A device must
//! know that a chain is broken, and where, to answer the request instead of acting on half of
//! it. [`read_chain`] walks the table itself, copies each descriptor once (so the guest
//! cannot change them while the device works), and stops at the first problem:
//!
//! - a head or `next` index outside the queue,
//! - a `next` that points back at a descriptor already in the chain (a loop; the chain can
//!   therefore never hold more descriptors than the queue),
//! - an indirect descriptor (petrel's devices do not offer indirect tables),
//! - a descriptor that cannot be read from guest memory.
//!
//! The descriptors read before the problem are kept, so a device can still find a status
//! buffer to report the error in.
//!
//! [`next_chain`] takes the next chain off the available ring and copies it; [`QueueFault`]
//! is what every device can get wrong with a queue or a chain, wrapped by each device's own
//! fault type.

use thiserror::Error;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use petrel_memory::GuestMemoryMmap;

/// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
pub(crate) const DESC_F_NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
/// `VIRTQ_DESC_F_WRITE`: the device writes this buffer (otherwise it only reads it).
pub(crate) const DESC_F_WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
/// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub(crate) const DESC_F_INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
/// Size of one descriptor table entry.
pub(crate) const DESC_SIZE: u64 = 16;

/// One buffer of a chain, as the device copied it from the descriptor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Descriptor {
    /// Its index in the descriptor table.
    pub(crate) index: u16,
    /// Guest-physical address of the buffer.
    pub(crate) addr: u64,
    /// Length of the buffer in bytes.
    pub(crate) len: u32,
    /// Whether the device may write the buffer (`VIRTQ_DESC_F_WRITE`).
    pub(crate) writable: bool,
}

/// Why a descriptor chain could not be followed to its end.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// The available ring names a head outside the descriptor table.
    #[error("chain head {head} is outside the queue of {size} descriptors")]
    HeadOutOfRange {
        /// The head index.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor links to an index outside the descriptor table.
    #[error("descriptor {index} links to {next}, outside the queue of {size} descriptors")]
    NextOutOfRange {
        /// The linking descriptor.
        index: u16,
        /// The index it links to.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor links back to one already in the chain.
    #[error("descriptor {index} links back to descriptor {next}: the chain loops")]
    Loop {
        /// The linking descriptor.
        index: u16,
        /// The descriptor it links back to.
        next: u16,
    },
    /// A descriptor refers to an indirect table, a feature the device did not offer.
    #[error("descriptor {index} refers to an indirect table, which was not negotiated")]
    Indirect {
        /// The descriptor.
        index: u16,
    },
    /// A descriptor table entry is not in guest memory.
    #[error("descriptor {index} cannot be read from guest memory")]
    Unreadable {
        /// The descriptor.
        index: u16,
    },
}

/// A chain copied out of the descriptor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    /// The head index, as the available ring gave it (used to complete the chain).
    pub(crate) head: u16,
    /// The descriptors, in chain order, up to the end or to the first problem.
    pub(crate) descriptors: Vec<Descriptor>,
    /// What stopped the walk before the chain's end, if anything.
    pub(crate) error: Option<ChainError>,
}

/// Copies the chain starting at `head` out of the descriptor table at `desc_table`, which
/// holds `queue_size` entries. Never reads more than `queue_size` descriptors.
pub(crate) fn read_chain(
    mem: &GuestMemoryMmap,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
) -> Chain {
    let mut chain = Chain {
        head,
        descriptors: Vec::new(),
        error: None,
    };
    if head >= queue_size {
        chain.error = Some(ChainError::HeadOutOfRange {
            head,
            size: queue_size,
        });
        return chain;
    }
    let mut visited = vec![0u64; usize::from(queue_size).div_ceil(64)];
    let mut index = head;
    loop {
        visited[usize::from(index / 64)] |= 1 << (index % 64);
        let Some((descriptor, flags, next)) = read_descriptor(mem, desc_table, index) else {
            chain.error = Some(ChainError::Unreadable { index });
            return chain;
        };
        if flags & DESC_F_INDIRECT != 0 {
            chain.error = Some(ChainError::Indirect { index });
            return chain;
        }
        chain.descriptors.push(descriptor);
        if flags & DESC_F_NEXT == 0 {
            return chain;
        }
        if next >= queue_size {
            chain.error = Some(ChainError::NextOutOfRange {
                index,
                next,
                size: queue_size,
            });
            return chain;
        }
        if visited[usize::from(next / 64)] & (1 << (next % 64)) != 0 {
            chain.error = Some(ChainError::Loop { index, next });
            return chain;
        }
        index = next;
    }
}

/// Reads table entry `index`: the descriptor, its flags and its `next` field.
fn read_descriptor(
    mem: &GuestMemoryMmap,
    desc_table: GuestAddress,
    index: u16,
) -> Option<(Descriptor, u16, u16)> {
    let addr = desc_table.0.checked_add(u64::from(index) * DESC_SIZE)?;
    let mut raw = [0u8; DESC_SIZE as usize];
    mem.read_slice(&mut raw, GuestAddress(addr)).ok()?;
    let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
    let flags = u16::from_le_bytes([f0, f1]);
    let descriptor = Descriptor {
        index,
        addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        writable: flags & DESC_F_WRITE != 0,
    };
    Some((descriptor, flags, u16::from_le_bytes([n0, n1])))
}

/// The head of the next chain the driver made available, if any, taking it off the
/// available ring. An error means the available ring's index is not believable.
pub(crate) fn next_available_head(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<Option<u16>, virtio_queue::Error> {
    let mut available = queue.iter(mem)?;
    Ok(available.next().map(|chain| chain.head_index()))
}

/// The next chain the driver made available, taken off the available ring and copied out of
/// the descriptor table; `None` when the ring is empty. A chain that is broken past its head
/// is returned with its [`Chain::error`]; an available ring that cannot be believed, or a head
/// outside the queue, is an error of the queue itself (it needs a reset).
pub(crate) fn next_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
) -> Result<Option<Chain>, QueueFault> {
    let Some(head) = next_available_head(queue, mem).map_err(QueueFault::AvailRing)? else {
        return Ok(None);
    };
    let chain = read_chain(mem, GuestAddress(queue.desc_table()), queue.size(), head);
    if let Some(error @ ChainError::HeadOutOfRange { .. }) = chain.error {
        return Err(QueueFault::Head(error));
    }
    Ok(Some(chain))
}

/// The device-writable buffers of a chain the device fills (a receive chain), as (address,
/// length), and their total size. Zero-length buffers are skipped. A broken chain, a
/// device-readable buffer or one outside guest memory is refused before anything is written.
pub(crate) fn writable_buffers(
    mem: &GuestMemoryMmap,
    chain: &Chain,
) -> Result<(Vec<(u64, u32)>, u64), QueueFault> {
    if let Some(error) = chain.error {
        return Err(QueueFault::Chain(error));
    }
    let mut buffers = Vec::with_capacity(chain.descriptors.len());
    let mut total = 0u64;
    for desc in &chain.descriptors {
        if !desc.writable {
            return Err(QueueFault::Direction { index: desc.index });
        }
        if desc.len == 0 {
            continue;
        }
        if !mem.check_range(GuestAddress(desc.addr), desc.len as usize) {
            return Err(QueueFault::OutsideMemory {
                index: desc.index,
                addr: desc.addr,
                len: desc.len,
            });
        }
        buffers.push((desc.addr, desc.len));
        total += u64::from(desc.len);
    }
    Ok((buffers, total))
}

/// Writes the start of `bytes` across `buffers` (checked by [`writable_buffers`]), in order,
/// and returns how many bytes were written: all of them, or as many as the buffers hold.
/// `index` names the chain in the error if guest memory refuses a write.
pub(crate) fn scatter(
    mem: &GuestMemoryMmap,
    buffers: &[(u64, u32)],
    bytes: &[u8],
    index: u16,
) -> Result<usize, QueueFault> {
    let mut written = 0;
    for &(addr, len) in buffers {
        let rest = &bytes[written..];
        if rest.is_empty() {
            break;
        }
        let n = rest.len().min(len as usize);
        mem.write_slice(&rest[..n], GuestAddress(addr))
            .map_err(|_| QueueFault::OutsideMemory { index, addr, len })?;
        written += n;
    }
    Ok(written)
}

/// What can go wrong with a queue or one of its chains, whatever the device. The first three
/// break the queue (the device needs a reset); the others concern one chain, which the
/// device completes and counts.
#[derive(Debug, Error)]
pub(crate) enum QueueFault {
    /// The available ring's index is not believable (the queue needs a reset).
    #[error("cannot read the available ring")]
    AvailRing(#[source] virtio_queue::Error),
    /// The available ring names a chain head outside the queue (the queue needs a reset).
    #[error("the available ring names a bad chain")]
    Head(#[source] ChainError),
    /// The used ring or its flags could not be written (the queue needs a reset).
    #[error("cannot update the used ring")]
    UsedRing(#[source] virtio_queue::Error),
    /// The chain could not be followed to its end.
    #[error("broken descriptor chain")]
    Chain(#[source] ChainError),
    /// A buffer goes the wrong way (writable where the device reads, or the reverse).
    #[error("descriptor {index} has the wrong direction")]
    Direction {
        /// The descriptor.
        index: u16,
    },
    /// A buffer is not in guest memory.
    #[error("descriptor {index} ({len} bytes at {addr:#x}) is outside guest memory")]
    OutsideMemory {
        /// The descriptor.
        index: u16,
        /// Its address.
        addr: u64,
        /// Its length (or the part the device would have used).
        len: u32,
    },
}

/// Logs a guest mistake, the `count`th so far: the first at warning level, the rest at
/// debug level. `label` names the device, `what` the mistake.
pub(crate) fn log_bad(label: &str, count: u64, what: &dyn std::fmt::Display) {
    if count <= 1 {
        log::warn!(
            "{label}: bad request from the guest: {what}; further ones are logged at debug level"
        );
    } else {
        log::debug!("{label}: bad request: {what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{guest_memory, write_descriptor, MEM_SIZE};

    const TABLE: GuestAddress = GuestAddress(0x1000);

    fn desc(index: u16, addr: u64, len: u32, writable: bool) -> Descriptor {
        Descriptor {
            index,
            addr,
            len,
            writable,
        }
    }

    #[test]
    fn a_well_formed_chain_is_copied_in_order() {
        let mem = guest_memory();
        write_descriptor(&mem, TABLE, 3, 0x8000, 16, DESC_F_NEXT, 7);
        write_descriptor(&mem, TABLE, 7, 0x9000, 512, DESC_F_NEXT | DESC_F_WRITE, 0);
        write_descriptor(&mem, TABLE, 0, 0xa000, 1, DESC_F_WRITE, 5);
        let chain = read_chain(&mem, TABLE, 8, 3);
        assert_eq!(
            chain,
            Chain {
                head: 3,
                descriptors: vec![
                    desc(3, 0x8000, 16, false),
                    desc(7, 0x9000, 512, true),
                    desc(0, 0xa000, 1, true),
                ],
                error: None,
            }
        );
    }

    #[test]
    fn a_loop_stops_at_the_first_repeated_descriptor() {
        let mem = guest_memory();
        write_descriptor(&mem, TABLE, 0, 0x8000, 16, DESC_F_NEXT, 1);
        write_descriptor(&mem, TABLE, 1, 0x9000, 1, DESC_F_NEXT | DESC_F_WRITE, 0);
        let chain = read_chain(&mem, TABLE, 256, 0);
        assert_eq!(chain.descriptors.len(), 2);
        assert_eq!(chain.error, Some(ChainError::Loop { index: 1, next: 0 }));

        // A descriptor linking to itself.
        write_descriptor(&mem, TABLE, 4, 0x8000, 16, DESC_F_NEXT, 4);
        let chain = read_chain(&mem, TABLE, 256, 4);
        assert_eq!(chain.descriptors, [desc(4, 0x8000, 16, false)]);
        assert_eq!(chain.error, Some(ChainError::Loop { index: 4, next: 4 }));
    }

    #[test]
    fn a_chain_through_every_descriptor_is_bounded_by_the_queue() {
        let mem = guest_memory();
        // 0 -> 1 -> ... -> 15 -> 0: sixteen distinct descriptors, then a loop.
        for i in 0..16u16 {
            write_descriptor(&mem, TABLE, i, 0x8000, 1, DESC_F_NEXT, (i + 1) % 16);
        }
        let chain = read_chain(&mem, TABLE, 16, 0);
        assert_eq!(chain.descriptors.len(), 16);
        assert_eq!(chain.error, Some(ChainError::Loop { index: 15, next: 0 }));
    }

    #[test]
    fn indices_outside_the_queue_are_reported() {
        let mem = guest_memory();
        let chain = read_chain(&mem, TABLE, 8, 8);
        assert!(chain.descriptors.is_empty());
        assert_eq!(
            chain.error,
            Some(ChainError::HeadOutOfRange { head: 8, size: 8 })
        );

        write_descriptor(&mem, TABLE, 2, 0x8000, 16, DESC_F_NEXT, 9);
        let chain = read_chain(&mem, TABLE, 8, 2);
        assert_eq!(chain.descriptors, [desc(2, 0x8000, 16, false)]);
        assert_eq!(
            chain.error,
            Some(ChainError::NextOutOfRange {
                index: 2,
                next: 9,
                size: 8
            })
        );
    }

    #[test]
    fn indirect_descriptors_are_refused() {
        let mem = guest_memory();
        write_descriptor(&mem, TABLE, 0, 0x8000, 16, DESC_F_NEXT, 1);
        write_descriptor(&mem, TABLE, 1, 0x9000, 32, DESC_F_INDIRECT, 0);
        let chain = read_chain(&mem, TABLE, 8, 0);
        assert_eq!(chain.descriptors, [desc(0, 0x8000, 16, false)]);
        assert_eq!(chain.error, Some(ChainError::Indirect { index: 1 }));
    }

    #[test]
    fn a_table_outside_guest_memory_is_unreadable() {
        let mem = guest_memory();
        let chain = read_chain(&mem, GuestAddress(MEM_SIZE - 32), 8, 1);
        assert_eq!(chain.descriptors.len(), 1);
        assert_eq!(chain.error, None, "entry 1 is the last one in memory");
        let chain = read_chain(&mem, GuestAddress(MEM_SIZE - 32), 8, 2);
        assert_eq!(chain.error, Some(ChainError::Unreadable { index: 2 }));
        let chain = read_chain(&mem, GuestAddress(u64::MAX - 15), 8, 1);
        assert_eq!(chain.error, Some(ChainError::Unreadable { index: 1 }));
    }
}
