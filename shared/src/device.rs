//! `DeviceSpec`: the one place a device string (`cpu`, `cuda:N`) is parsed.
//!
//! The parsed value is passed down explicitly to every component that creates tensors;
//! nothing in qsched picks a device on its own and nothing falls back from CUDA to CPU.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A concrete device an agent is pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The host CPU.
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(u32),
}

/// The class of device a shard needs; each class has its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    /// Runs on any CPU agent.
    Cpu,
    /// Runs on any CUDA agent.
    Cuda,
}

impl DeviceSpec {
    /// The queue class this device consumes from.
    pub fn class(self) -> DeviceClass {
        match self {
            DeviceSpec::Cpu => DeviceClass::Cpu,
            DeviceSpec::Cuda(_) => DeviceClass::Cuda,
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad =
            |why: &str| Error::invalid("device", format!("'{s}' {why}; expected 'cpu' or 'cuda:N' (e.g. cuda:0)"));
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Err(bad("has no device ordinal")),
            _ => {
                let Some(ordinal) = s.strip_prefix("cuda:") else { return Err(bad("is not a device")) };
                if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("has an invalid ordinal"));
                }
                ordinal.parse::<u32>().map(DeviceSpec::Cuda).map_err(|_| bad("has an invalid ordinal"))
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl FromStr for DeviceClass {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "cpu" => Ok(DeviceClass::Cpu),
            "cuda" => Ok(DeviceClass::Cuda),
            _ => Err(Error::invalid("device class", format!("'{s}'; expected 'cpu' or 'cuda'"))),
        }
    }
}

impl fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceClass::Cpu => "cpu",
            DeviceClass::Cuda => "cuda",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_devices() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda:0".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:12".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(12));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::Cuda(3).class(), DeviceClass::Cuda);
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["gpu", "cuda", "cuda:", "cuda:-1", "cuda:x", "CPU", "cuda:0 ", "mps", "cuda:+1", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("expected 'cpu' or 'cuda:N'"), "{bad}: {err}");
        }
    }

    #[test]
    fn serde_round_trip_as_string() {
        let json = serde_json::to_string(&DeviceSpec::Cuda(1)).unwrap();
        assert_eq!(json, "\"cuda:1\"");
        assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), DeviceSpec::Cuda(1));
        assert!(serde_json::from_str::<DeviceSpec>("\"gpu\"").is_err());
    }
}
