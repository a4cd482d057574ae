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
            | Error::NotFound { .. } => false,
        }
    }
}

/// Replace the password of a URL (`scheme://user:password@host`) with `***`.
///
/// Used for every URL that reaches a log line, an error message or the terminal.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_owned() };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else { return url.to_owned() };
    let userinfo = &authority[..at];
    let redacted = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => userinfo.to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], redacted, &rest[at..])
}

/// The password in `url`'s userinfo, if any (as written, still percent-encoded).
fn url_password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let password = &userinfo[userinfo.find(':')? + 1..];
    (!password.is_empty()).then_some(password)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes every trace of `url`'s password from `text` (a client library's message may
/// quote the URL it was given): the whole URL is replaced by its redacted form, then the
/// password itself, as written and percent-decoded, by `***`.
pub(crate) fn scrub_secrets(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    if let Some(password) = url_password(url) {
        out = out.replace(password, "***");
        let decoded = percent_decode(password);
        if !decoded.is_empty() {
            out = out.replace(&decoded, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_only() {
        assert_eq!(redact_url("amqp://guest:secret@10.0.0.1:5672/%2f"), "amqp://guest:***@10.0.0.1:5672/%2f");
        assert_eq!(redact_url("redis://:pw@host:6379/0"), "redis://:***@host:6379/0");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("amqp://user@host/"), "amqp://user@host/");
        // An '@' in the path is not userinfo.
        assert_eq!(redact_url("amqp://host/vhost@x"), "amqp://host/vhost@x");
    }

    #[test]
    fn scrubs_passwords_from_messages() {
        let url = "amqp://guest:p%40ss@10.0.0.1:5672/%2f";
        let msg = format!("Invalid URL: '{url}' (password p@ss, raw p%40ss)");
        let scrubbed = scrub_secrets(&msg, url);
        assert!(!scrubbed.contains("p@ss") && !scrubbed.contains("p%40ss"), "{scrubbed}");
        assert!(scrubbed.contains("amqp://guest:***@10.0.0.1:5672/%2f"), "{scrubbed}");
        assert_eq!(scrub_secrets("no secret here", "redis://127.0.0.1:6379"), "no secret here");
    }

    #[test]
    fn transient_policy() {
        let broker = Error::Broker { url: "amqp://h".into(), message: "reset".into(), transient: true };
        assert!(broker.is_transient());
        assert!(!Error::Codec("bad".into()).is_transient());
        assert!(!Error::invalid("model", "unknown").is_transient());
    }
}
