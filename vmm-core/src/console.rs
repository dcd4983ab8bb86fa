//! Where the guest's serial console goes: `stdio`, `none` or `file=PATH`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors about the console setting or its file.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The setting is not one of the known forms.
    #[error("console '{0}' is not one of stdio, none, file=PATH")]
    Unknown(String),
    /// `file=` was given without a path.
    #[error("console file path is empty")]
    EmptyPath,
    /// The console file could not be opened for writing.
    #[error("cannot open console file {path}")]
    Open {
        /// The path given by the user.
        path: PathBuf,
        /// Why opening failed.
        #[source]
        source: io::Error,
    },
}

/// The serial console's connection to the host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsoleConfig {
    /// Guest output to stdout, stdin to the guest.
    #[default]
    Stdio,
    /// Guest output is discarded and the guest gets no input.
    None,
    /// Guest output is appended to this file; the guest gets no input.
    File(PathBuf),
}

impl ConsoleConfig {
    /// Whether the guest reads the host's stdin.
    pub fn takes_stdin(&self) -> bool {
        matches!(self, ConsoleConfig::Stdio)
    }

    /// Opens the host side of the console output.
    pub fn open_output(&self) -> Result<Box<dyn Write + Send>, ConsoleError> {
        match self {
            ConsoleConfig::Stdio => Ok(Box::new(io::stdout())),
            ConsoleConfig::None => Ok(Box::new(io::sink())),
            ConsoleConfig::File(path) => {
                let file: File = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ConsoleError::Open {
                        path: path.clone(),
                        source,
                    })?;
                Ok(Box::new(file))
            }
        }
    }
}

impl FromStr for ConsoleConfig {
    type Err = ConsoleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "stdio" => Ok(ConsoleConfig::Stdio),
            "none" => Ok(ConsoleConfig::None),
            _ => match text.strip_prefix("file=") {
                Some("") => Err(ConsoleError::EmptyPath),
                Some(path) => Ok(ConsoleConfig::File(PathBuf::from(path))),
                None => Err(ConsoleError::Unknown(text.to_string())),
            },
        }
    }
}

impl fmt::Display for ConsoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleConfig::Stdio => f.write_str("stdio"),
            ConsoleConfig::None => f.write_str("none"),
            ConsoleConfig::File(path) => write!(f, "file={}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            "stdio".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::Stdio
        );
        assert_eq!(
            "none".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::None
        );
        assert_eq!(
            "file=/tmp/x.log".parse::<ConsoleConfig>().unwrap(),
            ConsoleConfig::File(PathBuf::from("/tmp/x.log"))
        );
        assert!(matches!(
            "file=".parse::<ConsoleConfig>(),
            Err(ConsoleError::EmptyPath)
        ));
        assert!(matches!(
            "tty".parse::<ConsoleConfig>(),
            Err(ConsoleError::Unknown(_))
        ));
    }

    #[test]
    fn round_trips_through_display() {
        for text in ["stdio", "none", "file=/a/b"] {
            assert_eq!(text.parse::<ConsoleConfig>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn file_output_appends_and_unwritable_paths_fail() {
        let dir = std::env::temp_dir().join(format!("petrel-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let console = ConsoleConfig::File(path.clone());
        console.open_output().unwrap().write_all(b"one\n").unwrap();
        console.open_output().unwrap().write_all(b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");

        let bad = ConsoleConfig::File(dir.join("missing-dir").join("console.log"));
        assert!(matches!(bad.open_output(), Err(ConsoleError::Open { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
