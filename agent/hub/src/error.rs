//! The one error type of `qsched-hub`.
//!
//! Every variant names what it was working on (the repository id, the URL, the file or the
//! cache path), so a message printed alone is enough to act on. `is_transient` says whether
//! trying again can help: a dropped connection or a 5xx can; a bad id, an offline miss or a
//! checksum that does not match the hub's will not by retrying the same request.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong resolving, downloading, caching and converting hub files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // === Input errors: the user must change something ===
    /// A repository id is not `org/name[@revision]`.
    #[error("invalid hub id '{id}': {reason}")]
    InvalidId {
        /// The id as given.
        id: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// An environment variable that configures the hub client has a value it cannot use.
    #[error("invalid {var}={value:?}: {reason}")]
    Config {
        /// The variable (`HF_ENDPOINT`, `HF_HUB_OFFLINE`, ...).
        var: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        reason: String,
    },
    /// A task or benchmark name that `datasets` does not know.
    #[error("unknown {what} '{name}'; known: {known}")]
    Unknown {
        /// "task" or "benchmark".
        what: &'static str,
        /// The name as given.
        name: String,
        /// The accepted names, space-separated.
        known: String,
    },
    /// `--tasks` names a task of a benchmark that was not asked for.
    #[error("task '{task}' is not in the benchmarks asked for: it is a {benchmark} task (add '{benchmark}')")]
    TaskNotSelected {
        /// The task.
        task: String,
        /// Its benchmark's command-line name.
        benchmark: &'static str,
    },
    /// A file exists where a fetched file would go and was not written by a previous fetch.
    #[error(
        "{path} exists and is not listed in {manifest} as fetched from the hub; \
         refusing to overwrite it (move it away, or pass --force)"
    )]
    WouldOverwrite {
        /// The existing file.
        path: PathBuf,
        /// The manifest consulted.
        manifest: PathBuf,
    },

    // === Network errors ===
    /// The request could not be sent or its response not read (DNS, refused, reset, timeout).
    /// The source is the client's error without the URL, which the message already names.
    #[error("request to {url} failed")]
    Http {
        /// The URL requested.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A download stopped before the announced size; the bytes received are kept and the
    /// next attempt resumes from them.
    #[error("download from {url} stopped after {got} of {expected} bytes: {reason}")]
    Interrupted {
        /// The URL.
        url: String,
        /// Bytes on disk.
        got: u64,
        /// The file's size.
        expected: u64,
        /// Why it stopped.
        reason: String,
    },
    /// The hub answered with an error status.
    #[error("{url} answered HTTP {status}{hint}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// What the status usually means here (empty when nothing useful can be said).
        hint: String,
    },
    /// The hub's answer lacks something the client needs, or is malformed.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What is missing or wrong.
        message: String,
    },

    // === Integrity errors: the bytes are not the ones the hub describes ===
    /// The downloaded file does not have the size the hub announced.
    #[error("{file} from {url}: expected {expected} bytes, got {got}")]
    SizeMismatch {
        /// The file in the repository.
        file: String,
        /// The URL it came from.
        url: String,
        /// Size announced by the hub.
        expected: u64,
        /// Size received.
        got: u64,
    },
    /// The downloaded file's digest differs from the hub's (sha256 for LFS files, the git
    /// blob sha1 for the others). The partial file is deleted.
    #[error("{file} from {url}: {algorithm} is {got}, the hub says {expected}; the download was discarded")]
    ChecksumMismatch {
        /// The file in the repository.
        file: String,
        /// The URL it came from.
        url: String,
        /// `sha256` or `git-sha1`.
        algorithm: &'static str,
        /// Digest announced by the hub.
        expected: String,
        /// Digest of the bytes received.
        got: String,
    },

    // === Cache errors ===
    /// Offline mode is on and the cache cannot serve the request.
    #[error(
        "offline mode is on (HF_HUB_OFFLINE=1): {what} of {repo} at revision '{revision}' is not in the cache {cache}"
    )]
    Offline {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// What is missing (a file, or the revision's commit).
        what: String,
        /// The cache folder of the repository.
        cache: PathBuf,
    },
    /// A model repository lacks a file this project needs to load it.
    #[error("{repo} at commit {commit} has no {missing}")]
    IncompleteModel {
        /// The repository id.
        repo: String,
        /// The commit listed.
        commit: String,
        /// What is missing (`config.json`, `*.safetensors weights`, a shard named by the index).
        missing: String,
    },
    /// A dataset repository has no parquet file for a task's split.
    #[error("{repo} at revision '{revision}' has no parquet file for {what} (looked for {pattern})")]
    NoDataFiles {
        /// The repository id.
        repo: String,
        /// The revision.
        revision: String,
        /// Task and split.
        what: String,
        /// The paths looked for.
        pattern: String,
    },
    /// A file or folder could not be read, written, locked or renamed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("cannot write", "cannot lock", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // === Data errors ===
    /// A parquet file could not be read.
    #[error("cannot read parquet file {path}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The parquet reader's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A row of a dataset file cannot be written in the task's format.
    #[error("{source_file} row {row}: {message}")]
    Row {
        /// The parquet file (path in the repository).
        source_file: String,
        /// 0-based row in the split.
        row: usize,
        /// What is wrong (missing column, unexpected label, a tab inside a TSV field ...).
        message: String,
    },
    /// A JSON document (hub listing, manifest, index) could not be parsed.
    #[error("malformed JSON in {what}")]
    Json {
        /// The URL or file.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// True when the same request may succeed later: a network failure, a timeout, a 5xx
    /// or 429 answer, or a download cut short. Bad ids, offline misses, 4xx answers and
    /// checksum mismatches are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Http { .. } | Error::Interrupted { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { action, path: path.into(), source }
    }

    pub(crate) fn status(url: &str, status: u16) -> Self {
        let hint = match status {
            401 => ": not authorised (a private or gated repository needs HF_TOKEN)",
            403 => ": forbidden (a gated repository: accept its terms on the hub, and set HF_TOKEN)",
            404 => ": not found (check the repository id, the revision and the file name)",
            429 => ": rate limited (try again later)",
            _ => "",
        };
        Error::Status { url: url.to_string(), status, hint: hint.to_string() }
    }
}
