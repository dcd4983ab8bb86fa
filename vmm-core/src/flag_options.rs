//! The `key=value,key=value` values of device flags (`--disk`, `--net`, `--vsock`): split,
//! checked against the keys a flag knows, each key at most once.

use std::collections::HashMap;

/// A device flag's value that is not a list of known `key=value` options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagOptionsError {
    /// An option is not `key=value`.
    #[error("options are key=value pairs separated by commas")]
    Malformed,
    /// A key the flag does not know.
    #[error("unknown option '{key}' (known: {known})")]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// The keys the flag knows, comma-separated.
        known: String,
    },
    /// A key given twice.
    #[error("'{0}' is given twice")]
    DuplicateKey(String),
}

/// The options of one flag value, by key.
#[derive(Debug)]
pub struct FlagOptions<'a> {
    options: HashMap<&'a str, &'a str>,
}

impl<'a> FlagOptions<'a> {
    /// Splits `value` on commas into `key=value` options whose keys are all in `known`.
    pub fn parse(value: &'a str, known: &[&str]) -> Result<Self, FlagOptionsError> {
        let mut options = HashMap::new();
        for option in value.split(',') {
            let (key, setting) = option.split_once('=').ok_or(FlagOptionsError::Malformed)?;
            if !known.contains(&key) {
                return Err(FlagOptionsError::UnknownKey {
                    key: key.to_string(),
                    known: known.join(", "),
                });
            }
            if options.insert(key, setting).is_some() {
                return Err(FlagOptionsError::DuplicateKey(key.to_string()));
            }
        }
        Ok(Self { options })
    }

    /// The setting of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.options.get(key).copied()
    }

    /// The setting of `key` if it is given and not empty.
    pub fn non_empty(&self, key: &str) -> Option<&'a str> {
        self.get(key).filter(|setting| !setting.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_known_options() {
        let options = FlagOptions::parse("a=1,b=,c=x=y", &["a", "b", "c"]).unwrap();
        assert_eq!(options.get("a"), Some("1"));
        assert_eq!(options.get("b"), Some(""));
        assert_eq!(options.non_empty("b"), None);
        assert_eq!(options.get("c"), Some("x=y"), "only the first '=' splits");
        assert_eq!(options.get("d"), None);
    }

    #[test]
    fn refuses_unknown_repeated_and_malformed_options() {
        assert_eq!(
            FlagOptions::parse("a=1,z=2", &["a"])
                .unwrap_err()
                .to_string(),
            "unknown option 'z' (known: a)"
        );
        assert_eq!(
            FlagOptions::parse("a=1,a=2", &["a"]).unwrap_err(),
            FlagOptionsError::DuplicateKey("a".into())
        );
        for bad in ["", "a", "a=1,", ",a=1", "a=1,,b=2"] {
            assert_eq!(
                FlagOptions::parse(bad, &["a", "b"]).unwrap_err(),
                FlagOptionsError::Malformed,
                "{bad:?}"
            );
        }
    }
}
