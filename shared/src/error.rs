//! The one error type of the `shared` crate, with the retry policy attached.
//!
//! Every variant says whether trying again can help (`is_transient`): a broker or Redis
//! connection that dropped can come back; a malformed spec or a message that does not
//! decode never will. Callers decide between requeue and dead-letter from that predicate
//! alone, without matching on variants.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in spec handling, the wire codec, the broker and the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === Input errors: the user must change something ===
    /// A value given on the command line or in a spec file is not valid.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// Which input (e.g. "model", "device", "spec field train.lr").
        what: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A spec file could not be parsed.
    #[error("malformed spec file {path}: {message}")]
    SpecFile {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the line and field.
        message: String,
    },
    /// A file that must exist could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // === Wire errors: the message is bad, retrying cannot help ===
    /// A message could not be encoded or decoded.
    #[error("wire codec: {0}")]
    Codec(String),
    /// A message is larger than the configured limit.
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A message was written by an incompatible schema version.
    #[error("unsupported schema_version {found} (this build reads {supported})")]
    SchemaVersion {
        /// Version in the message.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },

    // === Service errors ===
    /// The AMQP broker failed or refused an operation.
    #[error("broker ({url}): {message}")]
    Broker {
        /// Broker URL with the password redacted.
        url: String,
        /// What failed.
        message: String,
        /// True when reconnecting or retrying can help (connection loss, timeouts).
        transient: bool,
    },
    /// A publish was not confirmed by the broker (nacked or unroutable).
    #[error("publish of {message_id} not confirmed: {reason}")]
    NotConfirmed {
        /// Message id of the publish.
        message_id: String,
        /// Nack, or returned as unroutable.
        reason: String,
    },
    /// Redis failed.
    #[error("redis ({url}): {message}")]
    Store {
        /// Redis URL with the password redacted.
        url: String,
        /// What failed.
        message: String,
        /// True when reconnecting or retrying can help.
        transient: bool,
    },
    /// The embedded store file of `qsched submit --local` could not be opened, read or
    /// written (not a store file, a newer layout, an I/O or decoding failure).
    #[error("local store {path}: {message}")]
    LocalStore {
        /// The store file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Another process holds the embedded store file (one process at a time opens it).
    #[error(
        "local store {path} is in use by another process (a `qsched submit --local` still running?); \
         one process at a time opens it: wait for that one to finish, or use another file with --local-store FILE"
    )]
    LocalStoreBusy {
        /// The store file.
        path: PathBuf,
    },
    /// A record that should exist is missing.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up (e.g. "run r-20261126-ab12").
        what: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), message: message.into() }
    }

    /// True when the same operation may succeed if tried again later.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Broker { transient, .. } | Error::Store { transient, .. } => *transient,
            Error::NotConfirmed { .. } => true,
            Error::Invalid { .. }
            | Error::SpecFile { .. }
            | Error::Io { .. }
            | Error::Codec(_)
            | Error::TooLarge { .. }
            | Error::SchemaVersion { .. }
            | Error::LocalStore { .. }
            | Error::LocalStoreBusy { .. }
            | Error::NotFound { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_policy() {
        let broker = Error::Broker { url: "amqp://h".into(), message: "reset".into(), transient: true };
        assert!(broker.is_transient());
        assert!(!Error::Codec("bad".into()).is_transient());
        assert!(!Error::invalid("model", "unknown").is_transient());
    }
}
