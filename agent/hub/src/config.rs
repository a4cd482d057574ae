//! Client settings from the environment variables `huggingface_hub` reads, resolved once.
//!
//! [`HubConfig::from_lookup`] takes the variable lookup as a function so that tests (and
//! callers that run several clients in one process) never have to change the process
//! environment; [`HubConfig::from_env`] is that function over `std::env`.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The public hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the client talks to and where it caches.
#[derive(Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Base URL without a trailing `/` (`HF_ENDPOINT`, default [`DEFAULT_ENDPOINT`]).
    pub endpoint: String,
    /// Sent as `Authorization: Bearer` (`HF_TOKEN`). Never printed.
    pub token: Option<String>,
    /// The cache root holding `models--*` and `datasets--*` folders.
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: answer from the cache only, with no request at all.
    pub offline: bool,
}

// The token stays out of logs and error chains.
impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .finish()
    }
}

impl HubConfig {
    /// Settings from the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// Settings from a variable lookup, in `huggingface_hub`'s order:
    /// - cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    ///   else `~/.cache/huggingface/hub` (no `HOME` then is an error, not a guess);
    /// - endpoint: `HF_ENDPOINT` (an `http://` or `https://` URL), else the public hub;
    /// - token: `HF_TOKEN` when set and not empty;
    /// - offline: `HF_HUB_OFFLINE` in `1/ON/YES/TRUE` or `0/OFF/NO/FALSE` (any case, empty
    ///   means off); any other value is an error.
    pub fn from_lookup(get: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let text = |var: &'static str| -> Result<Option<String>> {
            match get(var) {
                None => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|v| Error::Config {
                    var,
                    value: v.to_string_lossy().into_owned(),
                    reason: "not valid UTF-8".into(),
                }),
            }
        };
        let endpoint = match text("HF_ENDPOINT")? {
            Some(url) if !url.is_empty() => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::Config {
                        var: "HF_ENDPOINT",
                        value: url,
                        reason: "expected an http:// or https:// URL".into(),
                    });
                }
                url.trim_end_matches('/').to_string()
            }
            _ => DEFAULT_ENDPOINT.to_string(),
        };
        let offline = match text("HF_HUB_OFFLINE")? {
            None => false,
            Some(v) => match v.trim().to_ascii_uppercase().as_str() {
                "1" | "ON" | "YES" | "TRUE" => true,
                "" | "0" | "OFF" | "NO" | "FALSE" => false,
                _ => {
                    return Err(Error::Config {
                        var: "HF_HUB_OFFLINE",
                        value: v,
                        reason: "expected 1/ON/YES/TRUE or 0/OFF/NO/FALSE".into(),
                    });
                }
            },
        };
        let token = text("HF_TOKEN")?.filter(|t| !t.trim().is_empty()).map(|t| t.trim().to_string());
        let non_empty = |var| get(var).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache_dir = if let Some(dir) = non_empty("HF_HUB_CACHE") {
            dir
        } else if let Some(home) = non_empty("HF_HOME") {
            home.join("hub")
        } else if let Some(xdg) = non_empty("XDG_CACHE_HOME") {
            xdg.join("huggingface").join("hub")
        } else if let Some(home) = non_empty("HOME") {
            home.join(".cache").join("huggingface").join("hub")
        } else {
            return Err(Error::Config {
                var: "HF_HOME",
                value: String::new(),
                reason: "no cache folder: set HF_HUB_CACHE or HF_HOME (HOME is not set either)".into(),
            });
        };
        Ok(HubConfig { endpoint, token, cache_dir, offline })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<HubConfig> {
        let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        HubConfig::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn cache_dir_precedence() {
        let c = config(&[("HOME", "/h")]).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!((c.endpoint.as_str(), c.offline, c.token.is_none()), (DEFAULT_ENDPOINT, false, true));
        let c = config(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let c = config(&[("HOME", "/h"), ("HF_HOME", "/hf")]).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/hf/hub"));
        let c = config(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/cache")]).unwrap();
        assert_eq!(c.cache_dir, PathBuf::from("/cache"));
        assert!(config(&[]).unwrap_err().to_string().contains("set HF_HUB_CACHE or HF_HOME"));
    }

    #[test]
    fn endpoint_token_offline() {
        let c = config(&[("HOME", "/h"), ("HF_ENDPOINT", "http://127.0.0.1:9/"), ("HF_TOKEN", "hf_x")]).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:9");
        assert_eq!(c.token.as_deref(), Some("hf_x"));
        assert!(!format!("{c:?}").contains("hf_x"), "the token is never printed");
        for on in ["1", "true", "YES", "On"] {
            assert!(config(&[("HOME", "/h"), ("HF_HUB_OFFLINE", on)]).unwrap().offline, "{on}");
        }
        for off in ["0", "", "false", "no"] {
            assert!(!config(&[("HOME", "/h"), ("HF_HUB_OFFLINE", off)]).unwrap().offline, "{off}");
        }
        let err = config(&[("HOME", "/h"), ("HF_HUB_OFFLINE", "maybe")]).unwrap_err().to_string();
        assert!(err.contains("HF_HUB_OFFLINE") && err.contains("maybe"), "{err}");
        let err = config(&[("HOME", "/h"), ("HF_ENDPOINT", "hub.local")]).unwrap_err().to_string();
        assert!(err.contains("http:// or https://"), "{err}");
    }
}
