//! `--disk path=FILE[,readonly=on][,id=NAME]`: the block devices of a VM, parsed and checked
//! before anything is built.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::flag_options::{FlagOptions, FlagOptionsError};

/// The size of a disk sector; disk images must be a whole number of them.
pub const SECTOR_SIZE: u64 = 512;
/// The longest id virtio-blk can report (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_DISK_ID_LEN: usize = 20;
/// The most disks a VM may have: one legacy interrupt line each (IRQs 5 to 23).
pub const MAX_DISKS: usize = 19;

/// A `--disk` value or a set of disks that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskConfigError {
    /// `path=` is missing.
    #[error("--disk '{0}' has no path= (use path=FILE[,readonly=on][,id=NAME])")]
    NoPath(String),
    /// The value is not a list of known `key=value` options.
    #[error("--disk '{value}': {problem}")]
    Options {
        /// The whole value.
        value: String,
        /// What is wrong with it.
        problem: FlagOptionsError,
    },
    /// `readonly=` is not on/off.
    #[error("--disk '{0}': readonly takes on or off")]
    BadReadOnly(String),
    /// The id is empty, too long, or not printable ASCII.
    #[error("--disk id '{0}' must be 1 to {MAX_DISK_ID_LEN} printable ASCII characters")]
    BadId(String),
    /// The disk file cannot be used.
    #[error("disk {path}: {problem}")]
    BadFile {
        /// The path as given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The same file is given twice and at least one of them is writable.
    #[error("disk {0} is given twice and would be written through two devices")]
    SharedWritable(PathBuf),
    /// Two disks have the same id.
    #[error("two disks have the id '{0}'")]
    DuplicateId(String),
    /// More disks than interrupt lines.
    #[error("{0} disks is more than petrel supports (at most {MAX_DISKS})")]
    TooMany(usize),
}

/// One virtio-blk disk backed by a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The raw disk image.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub read_only: bool,
    /// The serial number the guest reads with VIRTIO_BLK_T_GET_ID.
    #[serde(default)]
    pub id: Option<String>,
}

impl FromStr for DiskConfig {
    type Err = DiskConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let options =
            FlagOptions::parse(value, &["path", "readonly", "id"]).map_err(|problem| {
                DiskConfigError::Options {
                    value: value.to_string(),
                    problem,
                }
            })?;
        let path = match options.non_empty("path") {
            Some(path) => PathBuf::from(path),
            None => return Err(DiskConfigError::NoPath(value.to_string())),
        };
        let read_only = match options.get("readonly") {
            None | Some("off") => false,
            Some("on") => true,
            Some(_) => return Err(DiskConfigError::BadReadOnly(value.to_string())),
        };
        let id = options.get("id").map(|id| id.to_string());
        let config = DiskConfig {
            path,
            read_only,
            id,
        };
        config.check_id()?;
        Ok(config)
    }
}

impl fmt::Display for DiskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "path={}", self.path.display())?;
        if self.read_only {
            f.write_str(",readonly=on")?;
        }
        if let Some(id) = &self.id {
            write!(f, ",id={id}")?;
        }
        Ok(())
    }
}

impl DiskConfig {
    fn check_id(&self) -> Result<(), DiskConfigError> {
        if let Some(id) = &self.id {
            let printable = id.bytes().all(|b| b.is_ascii_graphic());
            if id.is_empty() || id.len() > MAX_DISK_ID_LEN || !printable {
                return Err(DiskConfigError::BadId(id.clone()));
            }
        }
        Ok(())
    }

    /// The disk's size in bytes after checking that the file is a usable raw image: it
    /// exists, is a regular file, and holds a whole number of sectors.
    pub fn check_file(&self) -> Result<u64, DiskConfigError> {
        let bad = |problem: String| DiskConfigError::BadFile {
            path: self.path.clone(),
            problem,
        };
        let metadata = fs::metadata(&self.path).map_err(|e| {
            bad(match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                _ => e.to_string(),
            })
        })?;
        if metadata.is_dir() {
            return Err(bad("is a directory, not a disk image".to_string()));
        }
        if !metadata.is_file() {
            return Err(bad("is not a regular file".to_string()));
        }
        if metadata.len() % SECTOR_SIZE != 0 {
            return Err(bad(format!(
                "size {} is not a multiple of {SECTOR_SIZE} bytes",
                metadata.len()
            )));
        }
        Ok(metadata.len())
    }
}

/// Checks a VM's disks together: each file, ids, and that no file is written through two
/// devices (a read-only disk may share its file with other read-only disks).
pub fn validate_disks(disks: &[DiskConfig]) -> Result<(), DiskConfigError> {
    if disks.len() > MAX_DISKS {
        return Err(DiskConfigError::TooMany(disks.len()));
    }
    let mut files: HashMap<(u64, u64), bool> = HashMap::new();
    let mut ids = HashMap::new();
    for disk in disks {
        disk.check_id()?;
        disk.check_file()?;
        let metadata = fs::metadata(&disk.path).map_err(|e| DiskConfigError::BadFile {
            path: disk.path.clone(),
            problem: e.to_string(),
        })?;
        let key = (metadata.dev(), metadata.ino());
        if let Some(other_read_only) = files.insert(key, disk.read_only) {
            if !(other_read_only && disk.read_only) {
                return Err(DiskConfigError::SharedWritable(disk.path.clone()));
            }
        }
        if let Some(id) = &disk.id {
            if ids.insert(id.clone(), ()).is_some() {
                return Err(DiskConfigError::DuplicateId(id.clone()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, size: u64) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("petrel-disk-config-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        fs::File::create(&path).unwrap().set_len(size).unwrap();
        path
    }

    #[test]
    fn parses_every_option() {
        let disk: DiskConfig = "path=/d.img,readonly=on,id=root".parse().unwrap();
        assert_eq!(disk.path, PathBuf::from("/d.img"));
        assert!(disk.read_only);
        assert_eq!(disk.id.as_deref(), Some("root"));
        assert_eq!(disk.to_string(), "path=/d.img,readonly=on,id=root");
        let plain: DiskConfig = "path=/d.img".parse().unwrap();
        assert!(!plain.read_only && plain.id.is_none());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "/d.img",
            "readonly=on",
            "path=",
            "path=/a,path=/b",
            "path=/a,readonly=yes",
            "path=/a,size=4",
            "path=/a,id=",
            "path=/a,id=this-id-is-longer-than-20",
            "path=/a,id=two words",
        ] {
            assert!(bad.parse::<DiskConfig>().is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn checks_the_image_file() {
        let good = DiskConfig {
            path: image("good.img", 1 << 20),
            read_only: false,
            id: None,
        };
        assert_eq!(good.check_file().unwrap(), 1 << 20);
        let odd = DiskConfig {
            path: image("odd.img", 1000),
            ..good.clone()
        };
        assert!(odd
            .check_file()
            .unwrap_err()
            .to_string()
            .contains("multiple of 512"));
        let missing = DiskConfig {
            path: PathBuf::from("/nonexistent/disk.img"),
            ..good.clone()
        };
        assert!(missing
            .check_file()
            .unwrap_err()
            .to_string()
            .contains("no such file"));
        let dir = DiskConfig {
            path: std::env::temp_dir(),
            ..good
        };
        assert!(dir
            .check_file()
            .unwrap_err()
            .to_string()
            .contains("directory"));
    }

    #[test]
    fn a_file_is_written_through_one_device_at_most() {
        let path = image("shared.img", 4096);
        let rw = DiskConfig {
            path: path.clone(),
            read_only: false,
            id: None,
        };
        let ro = DiskConfig {
            read_only: true,
            ..rw.clone()
        };
        assert!(matches!(
            validate_disks(&[rw.clone(), rw.clone()]),
            Err(DiskConfigError::SharedWritable(_))
        ));
        assert!(matches!(
            validate_disks(&[rw, ro.clone()]),
            Err(DiskConfigError::SharedWritable(_))
        ));
        validate_disks(&[ro.clone(), ro]).unwrap();
    }

    #[test]
    fn ids_are_unique_and_disks_are_bounded() {
        let a = DiskConfig {
            path: image("a.img", 512),
            read_only: true,
            id: Some("same".into()),
        };
        let b = DiskConfig {
            path: image("b.img", 512),
            ..a.clone()
        };
        assert!(matches!(
            validate_disks(&[a.clone(), b]),
            Err(DiskConfigError::DuplicateId(_))
        ));
        let many = vec![DiskConfig { id: None, ..a }; MAX_DISKS + 1];
        assert!(matches!(
            validate_disks(&many),
            Err(DiskConfigError::TooMany(_))
        ));
    }
}
