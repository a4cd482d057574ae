//! URLs that carry credentials: read from a file so they never appear in a process's
//! arguments, and redacted before they reach a log line, an error or the terminal.

use std::path::Path;

use crate::error::{Error, Result};

/// Reads a broker or Redis URL from `path` (`--amqp-file`, `--redis-file`): the first
/// line, surrounding whitespace removed. Unlike a command-line flag, a file (mode 0600,
/// or a mounted secret) is not visible to every user of the host through `ps`.
pub fn read_url_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let url = text.lines().next().unwrap_or("").trim();
    if url.is_empty() {
        return Err(Error::invalid("URL file", format!("{} is empty", path.display())));
    }
    Ok(url.to_owned())
}

/// The parts of a URL's authority that hold a secret: the byte range of the password in
/// `url`, if it has one.
///
/// URL grammar ends the authority at the first `/`, `?` or `#`, but a password typed raw
/// (`amqp://guest:S1pa?ss@host/`) contains those characters, and a client that fails to
/// parse such a URL may quote it whole in its error. So the userinfo is taken up to the
/// *last* `@` after `://`, and the password is everything after the first `:` in it. For
/// a well-formed URL this is exactly its password; for a malformed one it covers every
/// byte the user may have meant as one (it can only hide more, never less). An `@` with
/// no `:` before it (`amqp://host/vhost@x`) is no password.
fn password_range(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + 3;
    let at = start + url[start..].rfind('@')?;
    let colon = start + url[start..at].find(':')?;
    (colon + 1 < at).then_some(colon + 1..at)
}

/// Replace the password of a URL (`scheme://user:password@host`) with `***`.
///
/// Used for every URL that reaches a log line, an error message or the terminal.
pub fn redact_url(url: &str) -> String {
    match password_range(url) {
        Some(range) => format!("{}***{}", &url[..range.start], &url[range.end..]),
        None => url.to_owned(),
    }
}

/// The password in `url`'s userinfo, if any (as written, still percent-encoded).
fn url_password(url: &str) -> Option<&str> {
    password_range(url).map(|r| &url[r])
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
    fn raw_reserved_characters_in_passwords_never_leak() {
        for (url, secret) in [
            ("amqp://guest:S1pa?ssX@127.0.0.1:5672/%2f", "S1pa?ssX"),
            ("amqp://guest:S1pa/ssX@127.0.0.1:5672/%2f", "S1pa/ssX"),
            ("amqp://guest:S1pa#ssX@127.0.0.1:5672/%2f", "S1pa#ssX"),
            ("amqp://guest:123/ssX@127.0.0.1:5672/%2f", "123/ssX"),
            ("redis://:S1pa/ssX@127.0.0.1:6379", "S1pa/ssX"),
            ("redis://:S1pa#ssX@127.0.0.1:6379/0", "S1pa#ssX"),
            ("rediss://user:p@ss@127.0.0.1:6380", "p@ss"),
        ] {
            let redacted = redact_url(url);
            assert!(!redacted.contains(secret), "{url} -> {redacted}");
            assert!(redacted.contains("***@127.0.0.1"), "{url} -> {redacted}");
            let message = format!("failed to parse {url}: bad port in '{secret}'");
            assert!(!scrub_secrets(&message, url).contains(secret), "{url}");
        }
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
    fn url_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("amqp");
        std::fs::write(&path, "amqp://guest:s3cret@127.0.0.1:5672/%2f\n").unwrap();
        assert_eq!(read_url_file(&path).unwrap(), "amqp://guest:s3cret@127.0.0.1:5672/%2f");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_url_file(&path).unwrap_err().to_string().contains("is empty"));
        assert!(read_url_file(&dir.path().join("missing")).is_err());
    }
}
