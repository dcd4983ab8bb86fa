//! `--net tap=NAME[,mac=MAC]`: the network interfaces of a VM, parsed and checked before
//! anything is built.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use petrel_devices::virtio::net::{generated_mac, is_valid_tap_name};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::flag_options::{FlagOptions, FlagOptionsError};

/// The most network interfaces a VM may have (one legacy interrupt line each, shared with
/// the other virtio devices).
pub const MAX_NETS: usize = 16;

/// A `--net` value or a set of interfaces that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetConfigError {
    /// The value is not a list of known `key=value` options.
    #[error("--net '{value}': {problem}")]
    Options {
        /// The whole value.
        value: String,
        /// What is wrong with it.
        problem: FlagOptionsError,
    },
    /// `tap=` is missing or empty.
    #[error("--net '{0}' has no tap= (use tap=NAME[,mac=MAC])")]
    NoTap(String),
    /// The TAP name is not a valid interface name.
    #[error("--net: invalid TAP name '{0}' (1 to 15 characters, no '/', ':' or whitespace)")]
    BadTapName(String),
    /// The MAC address cannot be parsed or cannot be a device's address.
    #[error("--net: MAC '{mac}' {problem}")]
    BadMac {
        /// The MAC as given.
        mac: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Two interfaces use the same TAP.
    #[error("TAP '{0}' is given to two network interfaces")]
    DuplicateTap(String),
    /// Two interfaces have the same MAC.
    #[error("two network interfaces have the MAC {0}")]
    DuplicateMac(MacAddr),
    /// More interfaces than petrel supports.
    #[error("{0} network interfaces is more than petrel supports (at most {MAX_NETS})")]
    TooMany(usize),
}

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = || {
            let mut bytes = [0u8; 6];
            let mut parts = text.split(':');
            for byte in &mut bytes {
                let part = parts.next().filter(|part| part.len() == 2)?;
                *byte = u8::from_str_radix(part, 16).ok()?;
            }
            parts.next().is_none().then_some(bytes)
        };
        let mac = Self(parse().ok_or_else(|| NetConfigError::BadMac {
            mac: text.to_string(),
            problem: "is not six hex bytes separated by ':'",
        })?);
        mac.check()?;
        Ok(mac)
    }
}

impl MacAddr {
    /// Whether a network card may have this address: unicast and not all zeros.
    pub fn check(&self) -> Result<(), NetConfigError> {
        let problem = if self.0[0] & 1 != 0 {
            "is a multicast address (bit 0 of the first byte is set)"
        } else if self.0 == [0; 6] {
            "is all zeros"
        } else {
            return Ok(());
        };
        Err(NetConfigError::BadMac {
            mac: self.to_string(),
            problem,
        })
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One virtio-net interface backed by a host TAP device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP interface: attached to if it exists, created if petrel may (CAP_NET_ADMIN).
    pub tap: String,
    /// The guest's MAC; without one, petrel derives a stable, locally administered MAC from
    /// the TAP's name.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

impl NetConfig {
    /// The MAC the guest will see: the configured one, or the one generated from the TAP name.
    pub fn guest_mac(&self) -> MacAddr {
        self.mac
            .unwrap_or_else(|| MacAddr(generated_mac(&self.tap)))
    }

    fn check_tap(&self) -> Result<(), NetConfigError> {
        if is_valid_tap_name(&self.tap) {
            Ok(())
        } else {
            Err(NetConfigError::BadTapName(self.tap.clone()))
        }
    }
}

impl FromStr for NetConfig {
    type Err = NetConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let options = FlagOptions::parse(value, &["tap", "mac"]).map_err(|problem| {
            NetConfigError::Options {
                value: value.to_string(),
                problem,
            }
        })?;
        let tap = options
            .non_empty("tap")
            .ok_or_else(|| NetConfigError::NoTap(value.to_string()))?
            .to_string();
        let mac = options.get("mac").map(str::parse).transpose()?;
        let config = Self { tap, mac };
        config.check_tap()?;
        Ok(config)
    }
}

impl fmt::Display for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tap={}", self.tap)?;
        if let Some(mac) = self.mac {
            write!(f, ",mac={mac}")?;
        }
        Ok(())
    }
}

/// Checks a VM's interfaces together: names, MACs (explicit or generated) and their number.
pub fn validate_nets(nets: &[NetConfig]) -> Result<(), NetConfigError> {
    if nets.len() > MAX_NETS {
        return Err(NetConfigError::TooMany(nets.len()));
    }
    let mut taps = HashSet::new();
    let mut macs = HashSet::new();
    for net in nets {
        net.check_tap()?;
        if let Some(mac) = net.mac {
            mac.check()?;
        }
        if !taps.insert(net.tap.as_str()) {
            return Err(NetConfigError::DuplicateTap(net.tap.clone()));
        }
        if !macs.insert(net.guest_mac()) {
            return Err(NetConfigError::DuplicateMac(net.guest_mac()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_and_mac() {
        let net: NetConfig = "tap=tap0,mac=02:AB:cd:00:11:ff".parse().unwrap();
        assert_eq!(net.tap, "tap0");
        assert_eq!(net.mac, Some(MacAddr([2, 0xab, 0xcd, 0, 0x11, 0xff])));
        assert_eq!(net.to_string(), "tap=tap0,mac=02:ab:cd:00:11:ff");
        let plain: NetConfig = "tap=vm1".parse().unwrap();
        assert_eq!(plain.mac, None);
        assert_eq!(plain.to_string(), "tap=vm1");
    }

    #[test]
    fn generated_macs_are_stable_local_and_unicast() {
        let net: NetConfig = "tap=vm1".parse().unwrap();
        let mac = net.guest_mac();
        assert_eq!(mac, net.clone().guest_mac());
        assert_eq!(mac.0[0] & 0b11, 0b10, "locally administered, unicast");
        let other: NetConfig = "tap=vm2".parse().unwrap();
        assert_ne!(mac, other.guest_mac());
    }

    #[test]
    fn refuses_malformed_values() {
        for bad in [
            "",
            "tap0",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=a,ip=10.0.0.1",
            "tap=this-name-is-too-long",
            "tap=a/b",
            "tap=a:1",
            "tap=a,mac=",
            "tap=a,mac=02:00:00:00:00",
            "tap=a,mac=02:00:00:00:00:01:02",
            "tap=a,mac=02-00-00-00-00-01",
            "tap=a,mac=2:0:0:0:0:1",
            "tap=a,mac=0g:00:00:00:00:01",
            "tap=a,mac=01:00:5e:00:00:01",
            "tap=a,mac=00:00:00:00:00:00",
        ] {
            assert!(bad.parse::<NetConfig>().is_err(), "{bad:?} was accepted");
        }
        let multicast = "tap=a,mac=03:00:00:00:00:01".parse::<NetConfig>();
        assert!(multicast.unwrap_err().to_string().contains("multicast"));
    }

    #[test]
    fn taps_and_macs_are_unique() {
        let a: NetConfig = "tap=a,mac=02:00:00:00:00:01".parse().unwrap();
        let b: NetConfig = "tap=b,mac=02:00:00:00:00:01".parse().unwrap();
        let a2: NetConfig = "tap=a".parse().unwrap();
        assert_eq!(
            validate_nets(&[a.clone(), b.clone()]),
            Err(NetConfigError::DuplicateMac(MacAddr([2, 0, 0, 0, 0, 1])))
        );
        assert_eq!(
            validate_nets(&[a.clone(), a2]),
            Err(NetConfigError::DuplicateTap("a".into()))
        );
        let generated: NetConfig = "tap=b".parse().unwrap();
        let same_as_generated = NetConfig {
            tap: "c".into(),
            mac: Some(generated.guest_mac()),
        };
        assert!(validate_nets(&[generated, same_as_generated]).is_err());
        validate_nets(&[a, "tap=b".parse().unwrap()]).unwrap();
        let many: Vec<NetConfig> = (0..=MAX_NETS)
            .map(|i| format!("tap=t{i}").parse().unwrap())
            .collect();
        assert_eq!(
            validate_nets(&many),
            Err(NetConfigError::TooMany(MAX_NETS + 1))
        );
    }

    #[test]
    fn config_files_are_checked_like_flags() {
        let json = r#"{"tap": "t0", "mac": "02:00:00:00:00:07"}"#;
        let net: NetConfig = serde_json::from_str(json).unwrap();
        assert_eq!(net.mac, Some(MacAddr([2, 0, 0, 0, 0, 7])));
        assert_eq!(
            serde_json::to_string(&net).unwrap().replace(' ', ""),
            json.replace(' ', "")
        );
        assert!(
            serde_json::from_str::<NetConfig>(r#"{"tap": "t0", "mac": "01:00:00:00:00:07"}"#)
                .is_err()
        );
        let bad_name = NetConfig {
            tap: "has space".into(),
            mac: None,
        };
        assert_eq!(
            validate_nets(&[bad_name]),
            Err(NetConfigError::BadTapName("has space".into()))
        );
    }
}
