//! The device status state machine (virtio 1.2 sections 2.1 and 3.1.1), as a pure function.
//!
//! The driver builds the status up bit by bit: ACKNOWLEDGE, then DRIVER, then FEATURES_OK
//! (which the device keeps only if it accepts the features), then DRIVER_OK. The spec forbids
//! clearing bits (other than by writing 0, a reset) and fixes the order in which they are
//! set; it does not require one bit per write. So a write is accepted when it only adds bits
//! and every added bit's predecessors are set once the write is applied. virtio-drivers 0.13
//! relies on this: it writes ACKNOWLEDGE | DRIVER in a single write (Firecracker refuses that
//! write; petrel accepts it).
//!
//! FAILED may be added at any time; once it is set, only a reset is accepted.
//! DEVICE_NEEDS_RESET belongs to the device: its bit in a written value is ignored (drivers
//! write back what they read plus a new bit).

use crate::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK,
};

/// The bits a driver sets during initialisation, in the order it must set them.
const ORDER: [u32; 4] = [
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_FEATURES_OK,
    STATUS_DRIVER_OK,
];

/// Every bit virtio 1.2 defines in the device status.
const KNOWN: u32 = STATUS_ACKNOWLEDGE
    | STATUS_DRIVER
    | STATUS_FEATURES_OK
    | STATUS_DRIVER_OK
    | STATUS_DEVICE_NEEDS_RESET
    | STATUS_FAILED;

/// What to do with a write to the status register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusWrite {
    /// The driver wrote 0: reset the device.
    Reset,
    /// Store `status` (the driver-owned bits).
    Accept {
        /// The new status.
        status: u32,
        /// The write set FEATURES_OK but the features are not acceptable, so FEATURES_OK
        /// (and DRIVER_OK, which depends on it) stays clear.
        features_refused: bool,
    },
    /// Leave the status as it is.
    Ignore(StatusRejection),
}

/// Why a status write was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusRejection {
    /// The value has bits virtio does not define.
    ReservedBits,
    /// The value clears bits that are set (only a reset may do that).
    ClearsBits,
    /// The value sets a bit before the bits that must precede it.
    OutOfOrder,
    /// FAILED is set; only a reset is accepted.
    AfterFailed,
}

impl StatusRejection {
    /// A short explanation for the log.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::ReservedBits => "it sets reserved bits",
            Self::ClearsBits => "it clears bits (only writing 0 resets)",
            Self::OutOfOrder => {
                "it sets a bit out of order (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK)"
            }
            Self::AfterFailed => "FAILED is set; only a reset is accepted",
        }
    }
}

/// Decides what the driver writing `written` does to `current` (the driver-owned bits).
/// `features_acceptable` says whether the features the driver wrote may be accepted, in case
/// the write sets FEATURES_OK.
pub(crate) fn status_write(current: u32, written: u32, features_acceptable: bool) -> StatusWrite {
    if written == 0 {
        return StatusWrite::Reset;
    }
    if written & !KNOWN != 0 {
        return StatusWrite::Ignore(StatusRejection::ReservedBits);
    }
    let written = written & !STATUS_DEVICE_NEEDS_RESET;
    if current & !written != 0 {
        return StatusWrite::Ignore(StatusRejection::ClearsBits);
    }
    let added = written & !current;
    if added == 0 {
        return StatusWrite::Accept {
            status: current,
            features_refused: false,
        };
    }
    if current & STATUS_FAILED != 0 {
        return StatusWrite::Ignore(StatusRejection::AfterFailed);
    }
    if added & STATUS_FAILED != 0 {
        // The driver gives up; whatever else it wrote no longer matters.
        return StatusWrite::Accept {
            status: current | STATUS_FAILED,
            features_refused: false,
        };
    }
    for (i, &bit) in ORDER.iter().enumerate() {
        if added & bit != 0 && ORDER[..i].iter().any(|&before| written & before == 0) {
            return StatusWrite::Ignore(StatusRejection::OutOfOrder);
        }
    }
    if added & STATUS_FEATURES_OK != 0 && !features_acceptable {
        return StatusWrite::Accept {
            status: written & !(STATUS_FEATURES_OK | STATUS_DRIVER_OK),
            features_refused: true,
        };
    }
    StatusWrite::Accept {
        status: written,
        features_refused: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACK: u32 = STATUS_ACKNOWLEDGE;
    const DRV: u32 = STATUS_DRIVER;
    const FOK: u32 = STATUS_FEATURES_OK;
    const DOK: u32 = STATUS_DRIVER_OK;

    fn accepted(status: u32) -> StatusWrite {
        StatusWrite::Accept {
            status,
            features_refused: false,
        }
    }

    #[test]
    fn one_bit_per_write_in_spec_order_is_accepted() {
        let mut status = 0;
        for bit in [ACK, DRV, FOK, DOK] {
            assert_eq!(
                status_write(status, status | bit, true),
                accepted(status | bit)
            );
            status |= bit;
        }
        assert_eq!(status, 0xf);
    }

    #[test]
    fn virtio_drivers_0_13_writes_acknowledge_and_driver_in_one_write() {
        // virtio-drivers 0.13 `Transport::begin_init`: reset, then ACKNOWLEDGE | DRIVER at once.
        assert_eq!(status_write(0, ACK | DRV, true), accepted(ACK | DRV));
        // ...then FEATURES_OK and DRIVER_OK, each written with the bits before it.
        assert_eq!(
            status_write(ACK | DRV, ACK | DRV | FOK, true),
            accepted(ACK | DRV | FOK)
        );
        assert_eq!(
            status_write(ACK | DRV | FOK, ACK | DRV | FOK | DOK, true),
            accepted(0xf)
        );
    }

    #[test]
    fn any_write_that_adds_bits_in_order_is_accepted() {
        assert_eq!(status_write(0, ACK | DRV | FOK, true), accepted(0xb));
        assert_eq!(status_write(0, ACK | DRV | FOK | DOK, true), accepted(0xf));
        assert_eq!(
            status_write(ACK, ACK | DRV | FOK | DOK, true),
            accepted(0xf)
        );
        // Rewriting the current value changes nothing.
        assert_eq!(
            status_write(ACK | DRV, ACK | DRV, true),
            accepted(ACK | DRV)
        );
    }

    #[test]
    fn bits_set_before_their_predecessors_are_refused() {
        let out_of_order = StatusWrite::Ignore(StatusRejection::OutOfOrder);
        assert_eq!(status_write(0, DRV, true), out_of_order);
        assert_eq!(status_write(0, FOK, true), out_of_order);
        assert_eq!(status_write(0, DOK, true), out_of_order);
        assert_eq!(status_write(ACK, ACK | FOK, true), out_of_order);
        assert_eq!(status_write(ACK, ACK | DRV | DOK, true), out_of_order);
        // virtio 1.x: DRIVER_OK needs FEATURES_OK (the legacy order is not accepted).
        assert_eq!(status_write(ACK | DRV, ACK | DRV | DOK, true), out_of_order);
    }

    #[test]
    fn clearing_bits_is_refused_and_zero_resets() {
        let clears = StatusWrite::Ignore(StatusRejection::ClearsBits);
        assert_eq!(status_write(ACK | DRV, ACK, true), clears);
        assert_eq!(status_write(0xf, ACK | DRV | DOK, true), clears);
        assert_eq!(status_write(ACK | DRV, DRV | FOK, true), clears);
        assert_eq!(status_write(0xf, 0, true), StatusWrite::Reset);
        assert_eq!(status_write(0, 0, true), StatusWrite::Reset);
    }

    #[test]
    fn features_ok_is_dropped_when_the_features_are_not_acceptable() {
        assert_eq!(
            status_write(ACK | DRV, ACK | DRV | FOK, false),
            StatusWrite::Accept {
                status: ACK | DRV,
                features_refused: true
            }
        );
        // DRIVER_OK cannot survive without FEATURES_OK.
        assert_eq!(
            status_write(ACK | DRV, ACK | DRV | FOK | DOK, false),
            StatusWrite::Accept {
                status: ACK | DRV,
                features_refused: true
            }
        );
        // Once FEATURES_OK is set, the features are no longer checked.
        assert_eq!(status_write(0xb, 0xf, false), accepted(0xf));
    }

    #[test]
    fn failed_is_accepted_at_any_point_and_then_only_reset_is() {
        assert_eq!(
            status_write(0, STATUS_FAILED, true),
            accepted(STATUS_FAILED)
        );
        assert_eq!(
            status_write(ACK | DRV, ACK | DRV | FOK | STATUS_FAILED, true),
            accepted(ACK | DRV | STATUS_FAILED)
        );
        let failed = ACK | STATUS_FAILED;
        assert_eq!(
            status_write(failed, failed | DRV, true),
            StatusWrite::Ignore(StatusRejection::AfterFailed)
        );
        assert_eq!(status_write(failed, 0, true), StatusWrite::Reset);
    }

    #[test]
    fn reserved_bits_are_refused_and_needs_reset_is_the_devices() {
        assert_eq!(
            status_write(0, ACK | 0x10, true),
            StatusWrite::Ignore(StatusRejection::ReservedBits)
        );
        assert_eq!(
            status_write(0, 0x100, true),
            StatusWrite::Ignore(StatusRejection::ReservedBits)
        );
        // A driver writing back DEVICE_NEEDS_RESET with a new bit: the bit is not stored.
        assert_eq!(
            status_write(ACK, ACK | DRV | STATUS_DEVICE_NEEDS_RESET, true),
            accepted(ACK | DRV)
        );
    }
}
