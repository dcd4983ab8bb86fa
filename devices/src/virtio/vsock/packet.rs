//! The 44-byte virtio-vsock packet header (virtio 1.2 section 5.10.6), its operations and
//! flags.
//!
//! Every packet, in both directions, starts with this header, little-endian; `OP_RW` packets
//! carry `len` bytes of payload after it. The header is copied out of (or into) guest memory
//! as bytes and parsed here, so nothing in it is trusted until the device checked it.

/// Size of the header on the wire.
pub const HDR_LEN: usize = 44;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type the device supports.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_OP_REQUEST`: open a connection.
pub const OP_REQUEST: u16 = 1;
/// `VIRTIO_VSOCK_OP_RESPONSE`: accept a connection.
pub const OP_RESPONSE: u16 = 2;
/// `VIRTIO_VSOCK_OP_RST`: end a connection at once (or refuse one).
pub const OP_RST: u16 = 3;
/// `VIRTIO_VSOCK_OP_SHUTDOWN`: the sender will receive and/or send no more (see the flags).
pub const OP_SHUTDOWN: u16 = 4;
/// `VIRTIO_VSOCK_OP_RW`: stream data.
pub const OP_RW: u16 = 5;
/// `VIRTIO_VSOCK_OP_CREDIT_UPDATE`: the sender's buffer space changed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// `VIRTIO_VSOCK_OP_CREDIT_REQUEST`: the sender asks for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length (only `OP_RW` has one).
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (`SHUTDOWN_*` for `OP_SHUTDOWN`).
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has taken out of that buffer so far (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Parses the wire format.
    pub fn from_bytes(raw: &[u8; HDR_LEN]) -> Self {
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |o: usize| u32::from_le_bytes([raw[o], raw[o + 1], raw[o + 2], raw[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[o + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The wire format.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut raw = [0u8; HDR_LEN];
        raw[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        raw[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        raw[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        raw[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        raw[24..28].copy_from_slice(&self.len.to_le_bytes());
        raw[28..30].copy_from_slice(&self.type_.to_le_bytes());
        raw[30..32].copy_from_slice(&self.op.to_le_bytes());
        raw[32..36].copy_from_slice(&self.flags.to_le_bytes());
        raw[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        raw[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        raw
    }
}

/// The name of an operation, for logs.
pub(super) fn op_name(op: u16) -> &'static str {
    match op {
        OP_REQUEST => "REQUEST",
        OP_RESPONSE => "RESPONSE",
        OP_RST => "RST",
        OP_SHUTDOWN => "SHUTDOWN",
        OP_RW => "RW",
        OP_CREDIT_UPDATE => "CREDIT_UPDATE",
        OP_CREDIT_REQUEST => "CREDIT_REQUEST",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_format_is_little_endian_at_the_spec_offsets() {
        let header = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0x1122_3344,
            dst_port: 5000,
            len: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xdead_beef,
        };
        let raw = header.to_bytes();
        assert_eq!(raw[..8], [8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(raw[8..16], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(raw[16..20], [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(raw[20..24], 5000u32.to_le_bytes());
        assert_eq!(raw[24..28], [7, 0, 0, 0]);
        assert_eq!(raw[28..32], [1, 0, 5, 0]);
        assert_eq!(raw[32..36], [2, 0, 0, 0]);
        assert_eq!(raw[36..40], [0, 0, 4, 0]);
        assert_eq!(raw[40..44], [0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Header::from_bytes(&raw), header);
        assert_eq!(op_name(OP_CREDIT_REQUEST), "CREDIT_REQUEST");
        assert_eq!(op_name(0), "unknown");
    }
}
