//! The standard Hugging Face cache layout, shared with `huggingface_hub` and `transformers`:
//!
//! ```text
//! <cache>/models--org--name/            (datasets--org--name for datasets)
//!     blobs/<etag>                      file contents, named by the hub's ETag
//!     snapshots/<commit>/<path>         relative symlink to ../../blobs/<etag>
//!     refs/<revision>                   the commit a branch or tag pointed at when last resolved
//! <cache>/.locks/models--org--name/<etag>.lock
//! ```
//!
//! A blob's name is its ETag: the sha256 of an LFS file, the git blob sha1 of a small
//! one. Everything that becomes a path here (a revision, a file in the repository) is
//! checked so that nothing can resolve outside the repository's folder.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::id::RepoId;

/// The cache folder of one repository.
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    locks: PathBuf,
    repo: String,
}

impl RepoCache {
    /// The folder of `repo` under the cache root `cache_dir`.
    pub fn new(cache_dir: &Path, repo: &RepoId) -> Self {
        let folder = repo.cache_folder();
        RepoCache { root: cache_dir.join(&folder), locks: cache_dir.join(".locks").join(&folder), repo: repo.path() }
    }

    /// `<cache>/models--org--name`.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `blobs/<etag>`.
    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    /// `blobs/<etag>.incomplete`: the download in progress, resumed from its length.
    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// `.locks/<folder>/<etag>.lock`: held while the blob is downloaded.
    pub fn lock(&self, etag: &str) -> PathBuf {
        self.locks.join(format!("{etag}.lock"))
    }

    /// `snapshots/<commit>`.
    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// `snapshots/<commit>/<file>`; `file` must be a relative path inside the repository.
    pub fn snapshot_file(&self, commit: &str, file: &str) -> Result<PathBuf> {
        check_repo_file(&self.repo, file)?;
        Ok(self.snapshot_dir(commit).join(file))
    }

    /// `refs/<revision>`.
    pub fn ref_file(&self, revision: &str) -> PathBuf {
        self.root.join("refs").join(revision)
    }

    /// The commit recorded for `revision`, if any.
    pub fn read_ref(&self, revision: &str) -> Result<Option<String>> {
        let path = self.ref_file(revision);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", path, e)),
        }
    }

    /// Records that `revision` points at `commit` (written whole, then renamed).
    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        let path = self.ref_file(revision);
        if self.read_ref(revision)?.as_deref() == Some(commit) {
            return Ok(());
        }
        write_atomic(&path, commit.as_bytes())
    }

    /// Points `snapshots/<commit>/<file>` at `blobs/<etag>`: a relative symlink, or a copy
    /// where the filesystem has no symlinks. The entry is made under a temporary name and
    /// renamed over the old one, so two processes linking the same file never see a gap.
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dest = self.snapshot_file(commit, file)?;
        let parent = dest.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = parent.join(format!(".{etag}.{}.{seq}.link", std::process::id()));
        #[cfg(unix)]
        let linked = std::os::unix::fs::symlink(relative_blob_target(file, etag), &tmp).is_ok();
        #[cfg(not(unix))]
        let linked = false;
        if !linked {
            let blob = self.blob(etag);
            std::fs::copy(&blob, &tmp).map_err(|e| Error::io("cannot copy", &blob, e))?;
        }
        std::fs::rename(&tmp, &dest).map_err(|e| Error::io("cannot rename", &tmp, e))?;
        Ok(dest)
    }
}

/// `../../blobs/<etag>` from `snapshots/<commit>/<file>`, one more `..` per folder in `file`.
pub fn relative_blob_target(file: &str, etag: &str) -> PathBuf {
    let depth = file.split('/').count() - 1;
    let mut target = PathBuf::new();
    for _ in 0..depth + 2 {
        target.push("..");
    }
    target.join("blobs").join(etag)
}

/// A file name from a hub listing: relative, `/`-separated, no `.`/`..`/empty segments.
pub fn check_repo_file(repo: &str, file: &str) -> Result<()> {
    let ok = !file.is_empty()
        && !file.contains('\\')
        && !file.contains('\0')
        && Path::new(file).components().all(|c| matches!(c, Component::Normal(_)))
        && !file.split('/').any(|s| s.is_empty() || s == "." || s == "..");
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId {
            id: format!("{repo}:{file}"),
            reason: "not a relative path inside the repository".into(),
        })
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader sees the old content or the new, never half of one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().ok_or_else(|| {
        Error::io("cannot write", path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "no parent folder"))
    })?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io("cannot create", parent, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename", &tmp, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::RepoKind;

    #[test]
    fn layout_matches_huggingface_hub() {
        let repo: RepoId = "facebook/opt-125m".parse().unwrap();
        let cache = RepoCache::new(Path::new("/c"), &repo);
        assert_eq!(cache.dir(), Path::new("/c/models--facebook--opt-125m"));
        assert_eq!(cache.blob("abc"), Path::new("/c/models--facebook--opt-125m/blobs/abc"));
        assert_eq!(cache.lock("abc"), Path::new("/c/.locks/models--facebook--opt-125m/abc.lock"));
        assert_eq!(cache.ref_file("main"), Path::new("/c/models--facebook--opt-125m/refs/main"));
        assert_eq!(
            cache.snapshot_file("c0ffee", "onnx/model.onnx").unwrap(),
            Path::new("/c/models--facebook--opt-125m/snapshots/c0ffee/onnx/model.onnx")
        );
        let ds = RepoId::parse("nyu-mll/glue@refs/convert/parquet", RepoKind::Dataset).unwrap();
        let cache = RepoCache::new(Path::new("/c"), &ds);
        assert_eq!(cache.ref_file(ds.revision()), Path::new("/c/datasets--nyu-mll--glue/refs/refs/convert/parquet"));
    }

    #[test]
    fn symlink_targets_climb_out_of_nested_folders() {
        assert_eq!(relative_blob_target("config.json", "e1"), Path::new("../../blobs/e1"));
        assert_eq!(relative_blob_target("sst2/train.parquet", "e1"), Path::new("../../../blobs/e1"));
    }

    #[test]
    fn unsafe_repo_paths_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\\b"] {
            assert!(check_repo_file("a/b", bad).is_err(), "{bad:?}");
        }
        check_repo_file("a/b", "sst2/train-00000-of-00001.parquet").unwrap();
    }

    #[test]
    fn refs_and_links_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let repo: RepoId = "o/n".parse().unwrap();
        let cache = RepoCache::new(tmp.path(), &repo);
        assert_eq!(cache.read_ref("main").unwrap(), None);
        cache.write_ref("main", "abc").unwrap();
        assert_eq!(cache.read_ref("main").unwrap().as_deref(), Some("abc"));
        std::fs::create_dir_all(cache.blob("e").parent().unwrap()).unwrap();
        std::fs::write(cache.blob("e"), b"hello").unwrap();
        let linked = cache.link("abc", "dir/file.txt", "e").unwrap();
        assert_eq!(std::fs::read(&linked).unwrap(), b"hello");
        // Linking again replaces the entry instead of failing.
        cache.link("abc", "dir/file.txt", "e").unwrap();
    }
}
