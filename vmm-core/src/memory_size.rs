//! Parsing of user-given memory sizes ("128", "512M", "2G").

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a memory size could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemorySizeError {
    /// The text was empty.
    #[error("memory size is empty")]
    Empty,
    /// The number part is not a whole number.
    #[error("memory size '{0}' is not a whole number of MiB (use e.g. 128, 512M or 2G)")]
    NotANumber(String),
    /// The suffix is not M or G.
    #[error("memory size '{0}' has an unknown unit (use M or G)")]
    UnknownUnit(String),
    /// The value does not fit in 64 bits of bytes.
    #[error("memory size '{0}' is too large")]
    Overflow(String),
}

/// A guest memory size, held in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemorySize {
    mib: u64,
}

impl MemorySize {
    /// A size of `mib` MiB.
    pub const fn from_mib(mib: u64) -> Self {
        Self { mib }
    }

    /// The size in MiB.
    pub const fn mib(self) -> u64 {
        self.mib
    }

    /// The size in bytes, or `None` if it does not fit in a `u64`.
    pub fn bytes(self) -> Option<u64> {
        self.mib.checked_mul(1 << 20)
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mib != 0 && self.mib % 1024 == 0 {
            write!(f, "{} GiB", self.mib / 1024)
        } else {
            write!(f, "{} MiB", self.mib)
        }
    }
}

impl FromStr for MemorySize {
    type Err = MemorySizeError;

    /// Accepts a bare number of MiB, or a number with an `M`/`MiB`/`G`/`GiB` suffix
    /// (case-insensitive).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(MemorySizeError::Empty);
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        if digits.is_empty() {
            return Err(MemorySizeError::NotANumber(text.to_string()));
        }
        let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "m" | "mb" | "mib" => 1,
            "g" | "gb" | "gib" => 1024,
            _ => return Err(MemorySizeError::UnknownUnit(text.to_string())),
        };
        let value: u64 = digits
            .parse()
            .map_err(|_| MemorySizeError::Overflow(text.to_string()))?;
        let mib = value
            .checked_mul(multiplier)
            .filter(|mib| mib.checked_mul(1 << 20).is_some())
            .ok_or_else(|| MemorySizeError::Overflow(text.to_string()))?;
        Ok(Self { mib })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bare_numbers_as_mib() {
        assert_eq!("128".parse::<MemorySize>().unwrap().mib(), 128);
        assert_eq!(" 32 ".parse::<MemorySize>().unwrap().mib(), 32);
    }

    #[test]
    fn parses_suffixes() {
        assert_eq!("512M".parse::<MemorySize>().unwrap().mib(), 512);
        assert_eq!("512MiB".parse::<MemorySize>().unwrap().mib(), 512);
        assert_eq!("3G".parse::<MemorySize>().unwrap().mib(), 3072);
        assert_eq!("6gib".parse::<MemorySize>().unwrap().mib(), 6144);
        assert_eq!("3G".parse::<MemorySize>().unwrap().bytes(), Some(3 << 30));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!("".parse::<MemorySize>(), Err(MemorySizeError::Empty));
        assert!(matches!(
            "G".parse::<MemorySize>(),
            Err(MemorySizeError::NotANumber(_))
        ));
        assert!(matches!(
            "-5".parse::<MemorySize>(),
            Err(MemorySizeError::NotANumber(_))
        ));
        assert!(matches!(
            "12T".parse::<MemorySize>(),
            Err(MemorySizeError::UnknownUnit(_))
        ));
        assert!(matches!(
            "1.5G".parse::<MemorySize>(),
            Err(MemorySizeError::UnknownUnit(_))
        ));
    }

    #[test]
    fn rejects_values_that_overflow_bytes() {
        assert!(matches!(
            "99999999999999999999999".parse::<MemorySize>(),
            Err(MemorySizeError::Overflow(_))
        ));
        assert!(matches!(
            "18014398509481984G".parse::<MemorySize>(),
            Err(MemorySizeError::Overflow(_))
        ));
    }

    #[test]
    fn displays_in_readable_units() {
        assert_eq!(MemorySize::from_mib(2048).to_string(), "2 GiB");
        assert_eq!(MemorySize::from_mib(100).to_string(), "100 MiB");
    }
}
