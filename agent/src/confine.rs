//! Every filesystem path the agent builds from a message goes through here.
//!
//! A shard arrives from the broker, so anything in it is untrusted input: its run and
//! shard ids name checkpoint folders, and a pretrained `init.dir` names a directory to
//! read weights and a tokenizer from. Ids are validated types ([`shared::RunId`],
//! [`shared::ShardId`]) that cannot be path components such as `..`; on top of that,
//! [`join_under`] refuses anything but plain names and any symlink between the root and
//! the result, and [`model_dir`] admits a directory only inside a root the operator
//! configured (`qagent --model-root`).

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// `root/part/part/…`, where each part must be one plain name (no separator, `.`, `..`
/// or root) and no existing path below `root` on the way may be a symlink, so the
/// result stays inside `root` whatever the parts or the filesystem hold.
pub fn join_under(root: &Path, parts: &[&str]) -> Result<PathBuf> {
    let mut path = root.to_path_buf();
    for part in parts {
        let mut components = Path::new(part).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(name)), None) if name == std::ffi::OsStr::new(part) => path.push(name),
            _ => {
                return Err(Error::Refused(format!(
                    "{part:?} is not a plain file name; refusing to build a path under {}",
                    root.display()
                )));
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::Refused(format!(
                    "{} is a symlink; refusing to follow it out of {}",
                    path.display(),
                    root.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(path)
}

/// Resolves a model directory named by a shard against the operator's model roots: the
/// directory (symlinks resolved) must lie inside one of them. Anything else — no roots
/// configured, a relative path, a directory elsewhere — is refused with the reason.
pub fn model_dir(dir: &str, roots: &[PathBuf]) -> Result<PathBuf> {
    if roots.is_empty() {
        return Err(Error::Refused(format!(
            "the shard asks for model directory {dir:?}, but this agent reads pretrained weights only from \
             directories under --model-root, and none is configured"
        )));
    }
    let requested = Path::new(dir);
    if !requested.is_absolute() {
        return Err(Error::Refused(format!("model directory {dir:?} is not an absolute path")));
    }
    let resolved = requested.canonicalize().map_err(|e| Error::io(requested, e))?;
    for root in roots {
        let root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        if resolved.starts_with(&root) {
            return Ok(resolved);
        }
    }
    let allowed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    Err(Error::Refused(format!(
        "model directory {} is outside the agent's model roots ({})",
        resolved.display(),
        allowed.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_join_and_everything_else_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let ok = join_under(root.path(), &["r-1", "00ff"]).unwrap();
        assert_eq!(ok, root.path().join("r-1").join("00ff"));
        for bad in ["..", ".", "", "/etc", "a/b", "../x", "a/../b"] {
            let err = join_under(root.path(), &["r-1", bad]).unwrap_err().to_string();
            assert!(err.contains("not a plain file name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn symlinks_below_the_root_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("run")).unwrap();
        let err = join_under(root.path(), &["run", "shard"]).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
    }

    #[test]
    fn model_dirs_only_inside_configured_roots() {
        let models = tempfile::tempdir().unwrap();
        let opt = models.path().join("opt");
        std::fs::create_dir(&opt).unwrap();
        let roots = vec![models.path().to_path_buf()];
        assert_eq!(model_dir(opt.to_str().unwrap(), &roots).unwrap(), opt.canonicalize().unwrap());
        let err = model_dir("/etc", &roots).unwrap_err().to_string();
        assert!(err.contains("outside the agent's model roots"), "{err}");
        let err = model_dir(opt.to_str().unwrap(), &[]).unwrap_err().to_string();
        assert!(err.contains("none is configured"), "{err}");
        let err = model_dir("models/opt", &roots).unwrap_err().to_string();
        assert!(err.contains("not an absolute path"), "{err}");
        // `..` inside an allowed prefix is resolved before the check.
        let sneaky = format!("{}/../../etc", opt.display());
        assert!(model_dir(&sneaky, &roots).is_err());
        // A symlink inside a root that points out of it is resolved and refused.
        std::os::unix::fs::symlink("/etc", models.path().join("link")).unwrap();
        let link = models.path().join("link");
        assert!(model_dir(link.to_str().unwrap(), &roots).unwrap_err().to_string().contains("outside"));
    }
}
