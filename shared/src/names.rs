//! Run and shard identifiers as validated types.
//!
//! Both ids travel inside messages and name Redis keys and checkpoint folders, so a
//! hostile or corrupt message must not be able to smuggle a path into them. A [`RunId`]
//! or [`ShardId`] can only be built from 1–64 ASCII letters, digits, `-` and `_`,
//! starting with a letter or digit: never `.`/`..`, never a separator, never NUL. The
//! check runs when a value is parsed, including when a shard is decoded from the wire
//! (serde goes through [`TryFrom<String>`]), so an invalid id is an undecodable message
//! that is dead-lettered with its reason. The encoding is a plain string, so the wire
//! bytes are the same as before the types existed.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why `s` is not a valid id, or `None` when it is.
fn invalid_reason(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("it is empty".into());
    }
    if s.len() > MAX_ID_LEN {
        return Some(format!("it is {} bytes long (at most {MAX_ID_LEN})", s.len()));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Some(format!("it contains {c:?} (allowed: ASCII letters, digits, '-' and '_')"));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Some("it must start with a letter or digit".into());
    }
    None
}

/// Shows an untrusted value in an error message without control characters.
fn quoted(s: &str) -> String {
    let mut shown: String = s.chars().take(MAX_ID_LEN + 8).collect::<String>().escape_default().to_string();
    if s.chars().count() > MAX_ID_LEN + 8 {
        shown.push('…');
    }
    format!("'{shown}'")
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `s` (see the module docs for the accepted form).
            pub fn new(s: impl Into<String>) -> Result<Self, Error> {
                let s = s.into();
                match invalid_reason(&s) {
                    None => Ok($name(s)),
                    Some(reason) => Err(Error::invalid($what, format!("{} is not a valid {}: {reason}", quoted(&s), $what))),
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self, Error> {
                $name::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                $name::new(s)
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// The id of a run (`r-20261130-174105-1a2b3c` when `qsched submit` makes it).
    RunId,
    "run id"
);

id_type!(
    /// The id of a shard within its run (16 hex digits of its content hash).
    ShardId,
    "shard id"
);

/// Splits an AMQP message id `run:shard` into validated ids; `None` when it is not one.
pub fn parse_message_id(message_id: &str) -> Option<(RunId, ShardId)> {
    let (run, shard) = message_id.split_once(':')?;
    Some((RunId::new(run).ok()?, ShardId::new(shard).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_ids_qsched_makes() {
        for s in ["r-20261130-174105-1a2b3c", "r-golden", "0123456789abcdef", "a", "A_b-9"] {
            assert_eq!(RunId::new(s).unwrap().as_str(), s);
            assert_eq!(s.parse::<ShardId>().unwrap(), s);
        }
        assert!(RunId::new("x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn refuses_path_components_separators_and_control_bytes() {
        for s in [
            "",
            ".",
            "..",
            "../victim",
            "/etc",
            "a/b",
            "a\\b",
            "\u{0}\u{1}",
            "run\u{0}",
            "-rf",
            "_x",
            ".hidden",
            "a b",
            "é",
            "a:b",
        ] {
            let err = RunId::new(s).unwrap_err().to_string();
            assert!(err.contains("not a valid run id"), "{s:?}: {err}");
            assert!(ShardId::new(s).is_err(), "{s:?}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert!(RunId::new(long).unwrap_err().to_string().contains("65 bytes"));
        // Control characters are shown escaped, never raw.
        let err = ShardId::new("\u{0}\u{1}").unwrap_err().to_string();
        assert!(err.contains("\\u{0}") && !err.contains('\u{0}'), "{err}");
    }

    #[test]
    fn serde_validates_and_encodes_as_a_plain_string() {
        let id: RunId = serde_json::from_str("\"r-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"r-1\"");
        assert!(serde_json::from_str::<RunId>("\"..\"").is_err());
        assert!(serde_json::from_str::<ShardId>("\"a/b\"").is_err());
        // MessagePack: same bytes as a String.
        assert_eq!(rmp_serde::to_vec(&id).unwrap(), rmp_serde::to_vec("r-1").unwrap());
    }

    #[test]
    fn message_ids() {
        let (r, s) = parse_message_id("r-1:00ff").unwrap();
        assert_eq!((r.as_str(), s.as_str()), ("r-1", "00ff"));
        assert!(parse_message_id("..:victim").is_none());
        assert!(parse_message_id("r-1").is_none());
        assert!(parse_message_id("r-1:a:b").is_none());
    }
}
