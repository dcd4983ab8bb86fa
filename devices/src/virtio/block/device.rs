//! The virtio-blk device: its image, features and configuration space, and the
//! [`VirtioDevice`] implementation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

use super::disk::Disk;
use super::stats::BlockStats;
use super::{
    BlockError, DISCARD_SECTOR_ALIGNMENT, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG,
    MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SIZE_MAX,
};
use crate::report::ErrorLog;
use crate::virtio::device_queues::DeviceQueues;
use crate::virtio::{
    read_config_bytes, ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt,
    FEATURE_VERSION_1, TYPE_BLOCK,
};
use petrel_memory::GuestMemoryMmap;

/// Size of the configuration space petrel exposes: `struct virtio_blk_config` up to
/// `write_zeroes_may_unmap` and its padding (secure erase and zoned fields are not offered).
pub(crate) const CONFIG_SPACE_SIZE: usize = 60;

/// What a block device is made from: `--disk path=FILE[,readonly=on][,id=NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw image (a regular file or a host block device); its size must be a multiple of
    /// 512 bytes.
    pub path: PathBuf,
    /// Open the image read-only and offer `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The disk's id, returned as its serial number by GET_ID (1 to 20 printable ASCII
    /// characters). Without one, an id derived from the image's device and inode numbers is
    /// used.
    pub id: Option<String>,
}

/// A virtio-blk device backed by a raw image.
///
/// Put it behind a transport as an `Arc<Mutex<Block>>`, and register the same `Arc` with the
/// VMM's `event-manager` (it is a `MutEventSubscriber`): the event loop then runs its
/// requests. See the [module documentation](super) for where I/O happens.
pub struct Block {
    pub(super) disk: Disk,
    id: String,
    /// The id as GET_ID returns it: NUL-padded to 20 bytes.
    pub(super) id_bytes: [u8; ID_BYTES],
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    /// The queue, its activation and its link to the event loop.
    pub(super) queues: DeviceQueues,
    /// Requests the guest got wrong so far (the first is logged at warning level).
    pub(super) bad_requests: u64,
    pub(super) io_errors: ErrorLog,
    /// Request counters, shared with whoever reports them.
    pub(super) stats: Arc<BlockStats>,
}

fn check_id(id: &str) -> Result<(), BlockError> {
    if id.len() > ID_BYTES {
        return Err(BlockError::IdTooLong {
            id: id.to_owned(),
            len: id.len(),
        });
    }
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(BlockError::InvalidId { id: id.to_owned() });
    }
    Ok(())
}

impl Block {
    /// Opens the image in `config` (read-write, or read-only) and builds the device.
    ///
    /// Fails if the image is missing, a directory, not a file or block device, or not a
    /// whole number of sectors, or if the id is not 1 to 20 printable ASCII characters.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        if let Some(id) = &config.id {
            check_id(id)?;
        }
        let disk = Disk::open(&config.path, config.read_only)?;
        let id = match config.id {
            Some(id) => id,
            None => disk.derived_id().chars().take(ID_BYTES).collect(),
        };
        let mut id_bytes = [0u8; ID_BYTES];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());

        let mut avail_features = FEATURE_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX;
        if config.read_only {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            avail_features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let queues = DeviceQueues::new(
            format!("virtio-blk {}", disk.path().display()),
            1,
            &[0],
            "virtio-blk interrupt",
        )
        .map_err(BlockError::EventFd)?;
        Ok(Self {
            config_space: config_space(disk.sectors()),
            disk,
            id,
            id_bytes,
            avail_features,
            acked_features: 0,
            queues,
            bad_requests: 0,
            io_errors: ErrorLog::new("virtio-blk disk I/O"),
            stats: Arc::new(BlockStats::new()),
        })
    }

    /// The disk's id: the serial number GET_ID returns.
    pub fn disk_id(&self) -> &str {
        &self.id
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        self.disk.path()
    }

    /// The capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    /// Whether the disk is read-only.
    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// The features the driver accepted (0 before negotiation and after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether the driver has started the device.
    pub fn is_active(&self) -> bool {
        self.queues.is_active()
    }

    /// The device's request counters. Keep the `Arc` to read them later without locking the
    /// device: the event loop updates them with relaxed atomics as it completes requests.
    /// They count from the device's creation and survive driver resets.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }
}

/// `struct virtio_blk_config` for a disk of `sectors` sectors.
fn config_space(sectors: u64) -> [u8; CONFIG_SPACE_SIZE] {
    let mut space = [0u8; CONFIG_SPACE_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        space[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &sectors.to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
                                     // 16: geometry (not offered)
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
                                                  // 24: topology (not offered); 32: writeback (not offered)
    put(34, &1u16.to_le_bytes()); // num_queues
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
    put(56, &[1]); // write_zeroes_may_unmap
    space
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable without VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
        log::debug!(
            "virtio-blk: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.queues.activate(mem, interrupt, queues)
    }

    fn disable_queue(&mut self, index: u16) {
        // `process_queue` leaves a queue that is not ready alone.
        self.queues.disable_queue(index);
    }

    fn reset(&mut self) -> bool {
        self.queues.reset();
        self.acked_features = 0;
        true
    }
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("path", &self.disk.path())
            .field("id", &self.id)
            .field("read_only", &self.disk.read_only())
            .field("capacity", &self.disk.sectors())
            .field("active", &self.queues.is_active())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::TempImage;

    fn config(image: &TempImage) -> BlockConfig {
        BlockConfig {
            path: image.0.clone(),
            read_only: false,
            id: Some("disk0".into()),
        }
    }

    fn read_u32(block: &Block, offset: u64) -> u32 {
        let mut word = [0; 4];
        block.read_config(offset, &mut word);
        u32::from_le_bytes(word)
    }

    #[test]
    fn features_depend_on_read_only() {
        let image = TempImage::new("features", &[0; 8192]);
        let block = Block::new(config(&image)).unwrap();
        let rw = block.avail_features();
        for bit in [1, 2, 6, 9, 13, 14, 32] {
            assert_ne!(rw & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(
            rw & ((1 << 28) | (1 << 29)),
            0,
            "no indirect, no event index"
        );

        let ro = Block::new(BlockConfig {
            read_only: true,
            ..config(&image)
        })
        .unwrap();
        let ro = ro.avail_features();
        assert_ne!(ro & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(
            ro & (1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES),
            0
        );
    }

    #[test]
    fn the_config_space_describes_the_disk() {
        let image = TempImage::new("config", &[0; 3 * 512]);
        let block = Block::new(config(&image)).unwrap();
        let mut capacity = [0; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 3);
        assert_eq!(block.capacity(), 3);
        assert_eq!(read_u32(&block, 8), SIZE_MAX);
        assert_eq!(read_u32(&block, 12), u32::from(QUEUE_SIZE) - 2);
        assert_eq!(read_u32(&block, 20), 512);
        assert_eq!(read_u32(&block, 36), MAX_DISCARD_SECTORS);
        assert_eq!(read_u32(&block, 44), DISCARD_SECTOR_ALIGNMENT);
        assert_eq!(read_u32(&block, 52), MAX_WRITE_ZEROES_SEG);
        let mut byte = [0xff];
        block.read_config(56, &mut byte);
        assert_eq!(byte, [1]);
        // Past the end, and straddling it: zeroes.
        assert_eq!(read_u32(&block, 58), 0);
        assert_eq!(read_u32(&block, 0x1000), 0);
        block.read_config(u64::MAX, &mut byte);
        assert_eq!(byte, [0]);
    }

    #[test]
    fn ids_are_checked_and_a_missing_one_is_derived() {
        let image = TempImage::new("id", &[0; 512]);
        let long = BlockConfig {
            id: Some("x".repeat(21)),
            ..config(&image)
        };
        assert!(matches!(
            Block::new(long),
            Err(BlockError::IdTooLong { len: 21, .. })
        ));
        for bad in ["", "a\0b", "tab\there", "é"] {
            let c = BlockConfig {
                id: Some(bad.into()),
                ..config(&image)
            };
            assert!(Block::new(c).is_err(), "{bad:?}");
        }
        let exact = "abcdefghijklmnopqrst";
        let block = Block::new(BlockConfig {
            id: Some(exact.into()),
            ..config(&image)
        })
        .unwrap();
        assert_eq!(block.disk_id(), exact);
        assert_eq!(&block.id_bytes, exact.as_bytes());

        let derived = Block::new(BlockConfig {
            id: None,
            ..config(&image)
        })
        .unwrap();
        assert!(!derived.disk_id().is_empty() && derived.disk_id().len() <= ID_BYTES);
        let again = Block::new(BlockConfig {
            id: None,
            ..config(&image)
        })
        .unwrap();
        assert_eq!(derived.disk_id(), again.disk_id(), "stable for one file");
    }

    #[test]
    fn bad_images_are_refused_with_the_reason() {
        let dir = std::env::temp_dir();
        let err = Block::new(BlockConfig {
            path: dir.clone(),
            read_only: false,
            id: None,
        })
        .unwrap_err();
        assert!(matches!(err, BlockError::IsDirectory { .. }), "{err}");
        assert!(err.to_string().ends_with("is a directory"));
        let err = Block::new(BlockConfig {
            path: dir.join("petrel-definitely-missing.img"),
            read_only: true,
            id: None,
        })
        .unwrap_err();
        assert!(err.to_string().ends_with("does not exist"), "{err}");
        let image = TempImage::new("unaligned", &[0; 513]);
        assert!(matches!(
            Block::new(config(&image)),
            Err(BlockError::SizeNotAligned { size: 513, .. })
        ));
    }

    #[test]
    fn activation_needs_exactly_one_ready_queue() {
        use crate::virtio::test_utils::{guest_memory, DriverQueue, RecordingInterrupt};
        let image = TempImage::new("activate", &[0; 4096]);
        let mut block = Block::new(config(&image)).unwrap();
        let mem = guest_memory();
        let irq = Arc::new(RecordingInterrupt::default());
        let driver = DriverQueue::new(&mem, 16);
        let queue = |ready| driver.active_queue(ready);
        assert!(matches!(
            block.activate(mem.clone(), irq.clone(), vec![]),
            Err(ActivateError::QueueCount {
                expected: 1,
                got: 0
            })
        ));
        assert!(matches!(
            block.activate(mem.clone(), irq.clone(), vec![queue(true), queue(true)]),
            Err(ActivateError::QueueCount { got: 2, .. })
        ));
        assert!(matches!(
            block.activate(mem.clone(), irq.clone(), vec![queue(false)]),
            Err(ActivateError::QueueNotReady { index: 0 })
        ));
        assert!(!block.is_active());
        assert_eq!(
            block.queues.state_changed.read().ok(),
            None,
            "nothing signalled yet"
        );

        block.ack_features(FEATURE_VERSION_1 | 1 << 60);
        assert_eq!(
            block.acked_features(),
            FEATURE_VERSION_1,
            "unoffered bits dropped"
        );
        block
            .activate(mem.clone(), irq.clone(), vec![queue(true)])
            .unwrap();
        assert!(block.is_active());
        assert_eq!(block.queues.state_changed.read().unwrap(), 1);
        assert!(matches!(
            block.activate(mem.clone(), irq.clone(), vec![queue(true)]),
            Err(ActivateError::AlreadyActive)
        ));
        assert!(block.reset());
        assert!(!block.is_active());
        assert_eq!(block.acked_features(), 0);
        assert_eq!(block.queues.state_changed.read().unwrap(), 1);
        block.activate(mem, irq, vec![queue(true)]).unwrap();
    }
}
