//! Hub repository ids: `org/name[@revision]`, parsed and validated without I/O.
//!
//! The rules follow the hub's own: the name parts are ASCII letters, digits, `-`, `_` and
//! `.`, at most 96 characters, neither starting nor ending with `-` or `.`, and without
//! `--` or `..` (the cache folder joins the parts with `--`, so a part containing `--`
//! would make two ids share a folder). A revision is a branch, a tag, a 40-hex commit, or
//! a ref such as `refs/convert/parquet`; it is kept as written and resolved later.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The kind of repository: it decides the URL prefix and the cache folder's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepoKind {
    /// A model repository (`{endpoint}/{id}`, cache `models--org--name`).
    Model,
    /// A dataset repository (`{endpoint}/datasets/{id}`, cache `datasets--org--name`).
    Dataset,
}

impl RepoKind {
    /// The plural used in API paths and cache folder names.
    pub fn plural(self) -> &'static str {
        match self {
            RepoKind::Model => "models",
            RepoKind::Dataset => "datasets",
        }
    }
}

/// A repository on the hub, with the revision asked for (`None`: the default branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoId {
    /// Model or dataset.
    pub kind: RepoKind,
    /// The owner (user or organisation).
    pub org: String,
    /// The repository name.
    pub name: String,
    /// Branch, tag, commit or ref; `None` means `main`.
    pub revision: Option<String>,
}

/// The branch the hub serves when no revision is given.
pub const DEFAULT_REVISION: &str = "main";

impl RepoId {
    /// Parses `org/name[@revision]` as a repository of `kind`.
    pub fn parse(s: &str, kind: RepoKind) -> Result<Self> {
        let bad = |reason: String| Error::InvalidId { id: s.to_string(), reason };
        let (path, revision) = match s.split_once('@') {
            Some((path, rev)) => (path, Some(rev)),
            None => (s, None),
        };
        let Some((org, name)) = path.split_once('/') else {
            return Err(bad("expected org/name[@revision], e.g. facebook/opt-125m or Qwen/Qwen3-0.6B@main \
                 (ids without an owner, such as gpt2, now live under one: openai-community/gpt2)"
                .to_string()));
        };
        check_part(org, "owner").map_err(&bad)?;
        check_part(name, "name").map_err(&bad)?;
        if let Some(rev) = revision {
            check_revision(rev).map_err(&bad)?;
        }
        Ok(RepoId { kind, org: org.to_string(), name: name.to_string(), revision: revision.map(str::to_string) })
    }

    /// `org/name`, as in URLs.
    pub fn path(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    /// The revision asked for, or `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    /// The same repository at another revision.
    pub fn at(&self, revision: &str) -> Result<Self> {
        check_revision(revision)
            .map_err(|reason| Error::InvalidId { id: format!("{}@{revision}", self.path()), reason })?;
        Ok(RepoId { revision: Some(revision.to_string()), ..self.clone() })
    }

    /// The cache folder name: `models--org--name` or `datasets--org--name`.
    pub fn cache_folder(&self) -> String {
        format!("{}--{}--{}", self.kind.plural(), self.org, self.name)
    }
}

impl FromStr for RepoId {
    type Err = Error;
    /// Parses a model id (datasets are named by `datasets` itself, not on the command line).
    fn from_str(s: &str) -> Result<Self> {
        RepoId::parse(s, RepoKind::Model)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == RepoKind::Dataset {
            f.write_str("datasets/")?;
        }
        write!(f, "{}/{}", self.org, self.name)?;
        if let Some(rev) = &self.revision {
            write!(f, "@{rev}")?;
        }
        Ok(())
    }
}

/// True for a full 40-hex commit id (lower case, as the hub writes them).
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_part(part: &str, what: &str) -> std::result::Result<(), String> {
    if part.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if part.len() > 96 {
        return Err(format!("the {what} '{part}' is longer than 96 characters"));
    }
    if let Some(c) = part.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("the {what} '{part}' contains '{c}' (allowed: letters, digits, '-', '_', '.')"));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(format!("the {what} '{part}' starts or ends with '-' or '.'"));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("the {what} '{part}' contains '--' or '..'"));
    }
    Ok(())
}

/// A revision becomes a URL segment and a path under `refs/`: nothing that could leave
/// that folder or break the URL is accepted.
fn check_revision(rev: &str) -> std::result::Result<(), String> {
    if rev.is_empty() {
        return Err("the revision after '@' is empty".into());
    }
    if rev.len() > 255 {
        return Err("the revision is longer than 255 characters".into());
    }
    if let Some(c) = rev.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))) {
        return Err(format!("the revision '{rev}' contains '{c}' (allowed: letters, digits, '-', '_', '.', '/')"));
    }
    if rev.starts_with('/')
        || rev.ends_with('/')
        || rev.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!("the revision '{rev}' has an empty, '.' or '..' path segment"));
    }
    if rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()) && !is_commit_hash(rev) {
        return Err(format!("the commit '{rev}' must be written in lower case"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_and_without_revision() {
        let id: RepoId = "facebook/opt-125m".parse().unwrap();
        assert_eq!((id.org.as_str(), id.name.as_str(), id.revision()), ("facebook", "opt-125m", "main"));
        assert_eq!(id.cache_folder(), "models--facebook--opt-125m");
        assert_eq!(id.to_string(), "facebook/opt-125m");

        let id: RepoId = "Qwen/Qwen3-0.6B@v1.0".parse().unwrap();
        assert_eq!((id.name.as_str(), id.revision()), ("Qwen3-0.6B", "v1.0"));
        assert_eq!(id.to_string(), "Qwen/Qwen3-0.6B@v1.0");

        let commit = "0123456789abcdef0123456789abcdef01234567";
        let id: RepoId = format!("a/b@{commit}").parse().unwrap();
        assert!(is_commit_hash(id.revision()));

        let ds = RepoId::parse("aps/super_glue@refs/convert/parquet", RepoKind::Dataset).unwrap();
        assert_eq!(ds.revision(), "refs/convert/parquet");
        assert_eq!(ds.cache_folder(), "datasets--aps--super_glue");
        assert_eq!(ds.to_string(), "datasets/aps/super_glue@refs/convert/parquet");
    }

    #[test]
    fn malformed_ids_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("gpt2", "expected org/name"),
            ("/opt", "the owner is empty"),
            ("facebook/", "the name is empty"),
            ("a/b/c", "contains '/'"),
            ("a b/c", "contains ' '"),
            ("-a/b", "starts or ends"),
            ("a/b.", "starts or ends"),
            ("a--x/b", "'--'"),
            ("a/b@", "revision after '@' is empty"),
            ("a/b@../../etc", "'..' path segment"),
            ("a/b@/main", "empty, '.' or '..'"),
            ("a/b@ma in", "contains ' '"),
            ("a/b@x?y", "contains '?'"),
            ("a/b@0123456789ABCDEF0123456789abcdef01234567", "lower case"),
        ];
        for (id, want) in cases {
            let err = id.parse::<RepoId>().unwrap_err().to_string();
            assert!(err.contains(want) && err.contains(&format!("'{id}'")), "{id}: {err}");
        }
        let long = format!("a/{}", "x".repeat(97));
        assert!(long.parse::<RepoId>().unwrap_err().to_string().contains("longer than 96"));
    }

    #[test]
    fn commit_hashes() {
        assert!(is_commit_hash(&"a".repeat(40)));
        assert!(!is_commit_hash(&"a".repeat(39)));
        assert!(!is_commit_hash(&"g".repeat(40)));
        assert!(!is_commit_hash("main"));
    }
}
