//! Who may read the dashboard. Bound to a loopback address it answers anyone on the host,
//! like `qsched status` would; bound anywhere else it requires a token, because run
//! names, errors and agent hosts are not for the whole network. Pure: the server asks
//! [`Access::decide`] about each request.

use anyhow::{Result, bail};

/// Name of the cookie that carries the token after the first visit with `?token=`.
pub const COOKIE: &str = "qsched_dashboard_token";

/// Shortest token accepted: guessing one must not be practical.
pub const MIN_TOKEN_LEN: usize = 16;

/// The token policy of one dashboard.
#[derive(Clone)]
pub struct Access {
    token: Option<String>,
}

impl std::fmt::Debug for Access {
    // The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("token", &self.token.as_ref().map(|_| "<set>")).finish()
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Serve it.
    Allow,
    /// The token came in the URL: set the cookie and redirect to the same path without
    /// it, so the token leaves the address bar and the history.
    SetCookie,
    /// Refuse it (401).
    Deny,
}

impl Access {
    /// The policy for a dashboard listening on `listen`: a token is required off loopback,
    /// and must be at least [`MIN_TOKEN_LEN`] characters.
    pub fn new(listen: std::net::SocketAddr, token: Option<String>) -> Result<Access> {
        let token = token.map(|t| t.trim().to_owned());
        match &token {
            Some(t) if t.len() < MIN_TOKEN_LEN => {
                bail!(
                    "the dashboard token is {} characters; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 16`)",
                    t.len()
                )
            }
            None if !listen.ip().is_loopback() => bail!(
                "refusing to serve the dashboard on {listen} without a token: it would show runs, errors and \
                 agent hosts to the whole network; pass --token-file FILE (or QSCHED_DASHBOARD_TOKEN), or listen \
                 on 127.0.0.1"
            ),
            _ => Ok(Access { token }),
        }
    }

    /// Whether requests need a token at all.
    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// The decision for a request carrying `bearer` (an `Authorization: Bearer` header),
    /// `cookie` (the [`COOKIE`] value) and `query` (a `token=` URL parameter).
    pub fn decide(&self, bearer: Option<&str>, cookie: Option<&str>, query: Option<&str>) -> Decision {
        let Some(token) = &self.token else { return Decision::Allow };
        let matches = |given: Option<&str>| given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()));
        if matches(bearer) || matches(cookie) {
            Decision::Allow
        } else if matches(query) {
            Decision::SetCookie
        } else {
            Decision::Deny
        }
    }

    /// The `Set-Cookie` value that carries the token.
    pub fn cookie(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict"))
    }
}

/// Compares without returning early, so the time taken says nothing about how much of a
/// guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The value of parameter `name` in a URL query string (not percent-decoded: tokens are
/// plain ASCII).
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The query string without parameter `name`.
pub fn query_without(query: &str, name: &str) -> String {
    query.split('&').filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(name)).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn loopback_needs_no_token_and_anything_else_does() {
        let open = Access::new("127.0.0.1:8787".parse().unwrap(), None).unwrap();
        assert_eq!(open.decide(None, None, None), Decision::Allow);
        assert!(!open.requires_token());
        Access::new("[::1]:8787".parse().unwrap(), None).unwrap();
        let err = Access::new("0.0.0.0:8787".parse().unwrap(), None).unwrap_err().to_string();
        assert!(err.contains("without a token") && err.contains("--token-file"), "{err}");
        let err = Access::new("0.0.0.0:8787".parse().unwrap(), Some("short".into())).unwrap_err().to_string();
        assert!(err.contains("at least 16"), "{err}");
        Access::new("0.0.0.0:8787".parse().unwrap(), Some(TOKEN.into())).unwrap();
    }

    #[test]
    fn a_token_is_taken_from_a_header_a_cookie_or_once_from_the_url() {
        let access = Access::new("0.0.0.0:8787".parse().unwrap(), Some(format!("{TOKEN}\n"))).unwrap();
        assert_eq!(access.decide(Some(TOKEN), None, None), Decision::Allow);
        assert_eq!(access.decide(None, Some(TOKEN), None), Decision::Allow);
        assert_eq!(access.decide(None, None, Some(TOKEN)), Decision::SetCookie);
        assert_eq!(access.decide(None, None, None), Decision::Deny);
        assert_eq!(access.decide(Some("0123456789abcdef0124"), Some("x"), Some(&TOKEN[1..])), Decision::Deny);
        // A token on loopback is required there too.
        let local = Access::new("127.0.0.1:8787".parse().unwrap(), Some(TOKEN.into())).unwrap();
        assert_eq!(local.decide(None, None, None), Decision::Deny);
        assert!(access.cookie().unwrap().starts_with(&format!("{COOKIE}={TOKEN}; ")));
        assert!(!format!("{access:?}").contains(TOKEN));
    }

    #[test]
    fn cookies_and_queries_are_read_by_name() {
        assert_eq!(cookie_value("a=1; qsched_dashboard_token=xyz; b=2", COOKIE), Some("xyz"));
        assert_eq!(cookie_value("a=1", COOKIE), None);
        assert_eq!(query_value("x=1&token=abc", "token"), Some("abc"));
        assert_eq!(query_without("x=1&token=abc&y=2", "token"), "x=1&y=2");
        assert_eq!(query_without("token=abc", "token"), "");
    }
}
