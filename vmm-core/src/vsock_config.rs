//! `--vsock cid=N,socket=PATH`: the VM's virtio-vsock device and the Unix socket that stands
//! for the host side (Firecracker's hybrid model), parsed and checked before anything is
//! built.

use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::flag_options::{FlagOptions, FlagOptionsError};

pub use petrel_devices::virtio::vsock::{MAX_GUEST_CID, MIN_GUEST_CID};

/// The longest socket path: `sun_path` holds 108 bytes with the NUL, and guest-initiated
/// connections to port P use `PATH_P`, up to 11 bytes longer.
pub const MAX_SOCKET_PATH: usize = 107 - 11;

/// A `--vsock` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VsockConfigError {
    /// The value is not a list of known `key=value` options.
    #[error("--vsock '{value}': {problem}")]
    Options {
        /// The whole value.
        value: String,
        /// What is wrong with it.
        problem: FlagOptionsError,
    },
    /// `cid=` or `socket=` is missing.
    #[error("--vsock '{0}' needs cid= and socket= (use cid=N,socket=PATH)")]
    Missing(String),
    /// The CID is not a number a guest may have.
    #[error("--vsock: guest CID '{0}' must be a number from {MIN_GUEST_CID} to {MAX_GUEST_CID}")]
    BadCid(String),
    /// The socket path cannot be used.
    #[error("--vsock socket {path}: {problem}")]
    BadSocket {
        /// The path as given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// The virtio-vsock device: the guest's CID, and the Unix socket petrel listens on for
/// host-initiated connections (`CONNECT <port>\n`); guest-initiated connections to the
/// host's port P go to `<uds_path>_P`. Field names follow Firecracker's `vsock` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id.
    pub guest_cid: u64,
    /// The Unix socket petrel creates.
    pub uds_path: PathBuf,
}

impl FromStr for VsockConfig {
    type Err = VsockConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let options = FlagOptions::parse(value, &["cid", "socket"]).map_err(|problem| {
            VsockConfigError::Options {
                value: value.to_string(),
                problem,
            }
        })?;
        let (Some(cid), Some(socket)) = (options.non_empty("cid"), options.non_empty("socket"))
        else {
            return Err(VsockConfigError::Missing(value.to_string()));
        };
        let guest_cid = cid
            .parse::<u64>()
            .map_err(|_| VsockConfigError::BadCid(cid.to_string()))?;
        let config = Self {
            guest_cid,
            uds_path: PathBuf::from(socket),
        };
        config.check_cid()?;
        Ok(config)
    }
}

impl fmt::Display for VsockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cid={},socket={}",
            self.guest_cid,
            self.uds_path.display()
        )
    }
}

impl VsockConfig {
    fn check_cid(&self) -> Result<(), VsockConfigError> {
        if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.guest_cid) {
            Ok(())
        } else {
            Err(VsockConfigError::BadCid(self.guest_cid.to_string()))
        }
    }

    /// Checks the CID and that the socket can be created: its directory exists, the path
    /// is short enough, and nothing but a (possibly stale) socket is in the way. Whether
    /// another process listens there is found out when petrel binds it.
    pub fn validate(&self) -> Result<(), VsockConfigError> {
        self.check_cid()?;
        let bad = |problem: String| VsockConfigError::BadSocket {
            path: self.uds_path.clone(),
            problem,
        };
        let len = self.uds_path.as_os_str().as_bytes().len();
        if len > MAX_SOCKET_PATH {
            return Err(bad(format!(
                "path is {len} bytes, more than the {MAX_SOCKET_PATH} a Unix socket path (with _PORT) allows"
            )));
        }
        let parent = match self.uds_path.parent() {
            Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
            Some(parent) => parent,
            None => return Err(bad("is not a file path".to_string())),
        };
        if !parent.is_dir() {
            return Err(bad(format!(
                "directory {} does not exist",
                parent.display()
            )));
        }
        match fs::symlink_metadata(&self.uds_path) {
            Ok(metadata) if !metadata.file_type().is_socket() => Err(bad(
                "exists and is not a socket (petrel will not replace it)".to_string(),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cid_and_socket() {
        let vsock: VsockConfig = "cid=3,socket=/run/v.sock".parse().unwrap();
        assert_eq!(vsock.guest_cid, 3);
        assert_eq!(vsock.uds_path, PathBuf::from("/run/v.sock"));
        assert_eq!(vsock.to_string(), "cid=3,socket=/run/v.sock");
        let json = r#"{"guest_cid": 52, "uds_path": "/tmp/v.sock"}"#;
        let from_file: VsockConfig = serde_json::from_str(json).unwrap();
        assert_eq!(from_file.guest_cid, 52);
    }

    #[test]
    fn refuses_reserved_cids_and_malformed_values() {
        for bad in [
            "",
            "cid=3",
            "socket=/tmp/v",
            "cid=,socket=/tmp/v",
            "cid=3,socket=",
            "cid=0,socket=/tmp/v",
            "cid=1,socket=/tmp/v",
            "cid=2,socket=/tmp/v",
            "cid=4294967295,socket=/tmp/v",
            "cid=18446744073709551616,socket=/tmp/v",
            "cid=-3,socket=/tmp/v",
            "cid=three,socket=/tmp/v",
            "cid=3,socket=/tmp/v,port=1",
            "cid=3,cid=4,socket=/tmp/v",
        ] {
            assert!(bad.parse::<VsockConfig>().is_err(), "{bad:?} was accepted");
        }
        "cid=4294967294,socket=/tmp/v"
            .parse::<VsockConfig>()
            .unwrap();
    }

    #[test]
    fn checks_where_the_socket_goes() {
        let dir = std::env::temp_dir().join(format!("petrel-vsock-config-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let config = |path: PathBuf| VsockConfig {
            guest_cid: 3,
            uds_path: path,
        };
        config(dir.join("v.sock")).validate().unwrap();
        config(PathBuf::from("relative.sock")).validate().unwrap();
        let file = dir.join("plain-file");
        fs::write(&file, b"x").unwrap();
        let err = config(file).validate().unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        let err = config(dir.join("missing/v.sock")).validate().unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let long = dir.join("x".repeat(MAX_SOCKET_PATH));
        assert!(config(long)
            .validate()
            .unwrap_err()
            .to_string()
            .contains("bytes"));
        let bad_cid = VsockConfig {
            guest_cid: 2,
            uds_path: dir.join("v.sock"),
        };
        assert!(matches!(
            bad_cid.validate(),
            Err(VsockConfigError::BadCid(_))
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
