//! Trust for encrypted connections (`amqps://`, `rediss://`): the CA bundle a deployment
//! names with `--amqp-ca-file` / `--redis-ca-file`.
//!
//! Without one, both clients trust the host's certificate store (`SSL_CERT_FILE` and
//! `SSL_CERT_DIR` are honoured). A private CA, the usual case for a broker and a Redis
//! inside a lab network, is given as a PEM file and trusted for that connection only.

use std::path::Path;

use crate::error::{Error, Result};

/// A PEM bundle of one or more CA certificates, read and checked once at start-up.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    pem: String,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("certificates", &self.certificates()).finish()
    }
}

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";

impl CaBundle {
    /// Reads `path`; a file that holds no PEM certificate is refused here rather than
    /// surfacing later as an unexplained handshake failure.
    pub fn read(path: &Path) -> Result<Self> {
        let pem = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        Self::from_pem(pem)
            .map_err(|_| Error::invalid("CA file", format!("{} holds no PEM certificate ({BEGIN} …)", path.display())))
    }

    /// A bundle from PEM text.
    pub fn from_pem(pem: impl Into<String>) -> Result<Self> {
        let pem = pem.into();
        if !pem.contains(BEGIN) {
            return Err(Error::invalid("CA bundle", format!("no PEM certificate ({BEGIN} …)")));
        }
        Ok(CaBundle { pem })
    }

    /// The PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// How many certificates the bundle holds.
    pub fn certificates(&self) -> usize {
        self.pem.matches(BEGIN).count()
    }
}

/// Checks that a CA bundle goes with an encrypted URL: a CA file next to a plain
/// `amqp://` or `redis://` URL is a mistake that would silently send credentials in the
/// clear, so it is refused.
pub fn check_scheme(url: &str, ca: Option<&CaBundle>, tls_scheme: &str, what: &str) -> Result<()> {
    if ca.is_some() && !url.starts_with(&format!("{tls_scheme}://")) {
        let scheme = url.split("://").next().unwrap_or("");
        return Err(Error::invalid(
            what,
            format!("a CA file was given but the URL's scheme is '{scheme}', not {tls_scheme}://"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = CaBundle::read(&path).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("no PEM certificate"), "{err}");
        let missing = CaBundle::read(&dir.path().join("absent.pem")).unwrap_err().to_string();
        assert!(missing.contains("absent.pem"), "{missing}");
    }

    #[test]
    fn counts_certificates() {
        let one = format!("{BEGIN}\nAAAA\n-----END CERTIFICATE-----\n");
        assert_eq!(CaBundle::from_pem(one.repeat(2)).unwrap().certificates(), 2);
    }

    #[test]
    fn a_ca_file_needs_an_encrypted_scheme() {
        let ca = CaBundle::from_pem(format!("{BEGIN}\n")).unwrap();
        let err = check_scheme("redis://127.0.0.1:6379", Some(&ca), "rediss", "Redis URL").unwrap_err().to_string();
        assert!(err.contains("'redis'") && err.contains("rediss://"), "{err}");
        check_scheme("rediss://127.0.0.1:6380", Some(&ca), "rediss", "Redis URL").unwrap();
        check_scheme("redis://127.0.0.1:6379", None, "rediss", "Redis URL").unwrap();
    }
}
