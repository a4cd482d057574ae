//! Shard checkpoints: weights, optimizer state and loop state, written atomically.
//!
//! Layout: `<checkpoint_dir>/<run>/<shard>/step-<N>/{state.json, tensors.safetensors}`
//! plus a `LATEST` file naming the newest complete step folder and a `.qsched-shard`
//! marker naming the shard. The folder is built from validated ids through
//! [`crate::confine::join_under`], and [`ShardDir::remove`] deletes only a folder that
//! carries this shard's marker, so a message can never make the agent delete or write
//! anything but its own checkpoints. A checkpoint is written
//! into a fresh folder first and only then published by atomically renaming a new
//! `LATEST` over the old one; older folders are removed afterwards. A kill at any moment
//! therefore leaves a complete checkpoint to resume from (the previous or the new one).
//! Because batches and noise are functions of (seed, step), restoring the tensors and
//! the step is all a resumed shard needs to continue as if it had never stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use shared::{RunId, ShardId};

use crate::error::{Error, Result};

/// One evaluation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Step after which it ran.
    pub step: u64,
    /// Dev metrics.
    pub dev: BTreeMap<String, f64>,
    /// Test metrics.
    pub test: BTreeMap<String, f64>,
    /// Dev loss.
    pub dev_loss: f64,
}

/// Loop state saved with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Shard id the checkpoint belongs to (checked on resume).
    pub shard_id: String,
    /// Steps completed.
    pub step: u64,
    /// AdamW steps taken (bias correction).
    pub optimizer_step: u64,
    /// Every evaluation so far.
    pub history: Vec<EvalRecord>,
    /// Index into `history` of the best dev evaluation.
    pub best: Option<usize>,
    /// Evaluations since the best one (early stopping).
    pub evals_since_best: u32,
    /// Non-finite steps skipped.
    pub skipped_steps: u64,
    /// Seconds spent in training steps.
    pub train_seconds: f64,
    /// Non-pad training tokens processed.
    pub train_tokens: u64,
    /// Whether early stopping ended training.
    pub stopped_early: bool,
}

impl LoopState {
    /// Fresh state for a shard.
    pub fn new(shard_id: &str) -> Self {
        LoopState {
            shard_id: shard_id.to_owned(),
            step: 0,
            optimizer_step: 0,
            history: Vec::new(),
            best: None,
            evals_since_best: 0,
            skipped_steps: 0,
            train_seconds: 0.0,
            train_tokens: 0,
            stopped_early: false,
        }
    }
}

/// The checkpoint folder of one shard, `<root>/<run>/<shard>`, confined under `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDir {
    path: PathBuf,
    marker: String,
}

/// Marker file written into every shard folder the agent creates.
const MARKER: &str = ".qsched-shard";

impl ShardDir {
    /// The folder of `run`/`shard` under `root` (nothing is created yet).
    pub fn new(root: &Path, run: &RunId, shard: &ShardId) -> Result<Self> {
        let path = crate::confine::join_under(root, &[run.as_str(), shard.as_str()])?;
        Ok(ShardDir { path, marker: format!("{run}/{shard}") })
    }

    /// Where the checkpoints are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the folder and its marker.
    fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let marker = self.path.join(MARKER);
        if !marker.is_file() {
            write_file(&marker, self.marker.as_bytes())?;
        }
        Ok(())
    }

    /// Removes the shard's checkpoints (after its result is stored), and the run's folder
    /// once it is empty. Only a real folder (not a symlink) carrying this shard's marker
    /// is removed: anything else was not created by an agent for this shard and is left
    /// alone with an error. Missing is fine.
    pub fn remove(&self) -> Result<()> {
        match std::fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(&self.path, e)),
            Ok(meta) if !meta.is_dir() => {
                return Err(Error::Refused(format!(
                    "{} is not a checkpoint folder; not removing it",
                    self.path.display()
                )));
            }
            Ok(_) => {}
        }
        let marker = self.path.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(found) if found == self.marker => {}
            Ok(found) => {
                return Err(Error::Refused(format!(
                    "{} belongs to {found:?}, not {}; not removing it",
                    self.path.display(),
                    self.marker
                )));
            }
            Err(e) => {
                return Err(Error::Refused(format!(
                    "{} has no readable {MARKER} marker ({e}); not removing a folder the agent did not create",
                    self.path.display()
                )));
            }
        }
        std::fs::remove_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))?;
        if let Some(run_dir) = self.path.parent() {
            // Fails while other shards of the run still have checkpoints: that is fine.
            let _ = std::fs::remove_dir(run_dir);
        }
        Ok(())
    }
}

const LATEST: &str = "LATEST";

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// Writes a checkpoint for `state.step` and publishes it atomically.
pub fn save(shard_dir: &ShardDir, state: &LoopState, tensors: &[(String, &Tensor)]) -> Result<()> {
    shard_dir.create()?;
    let dir = shard_dir.path();
    let name = format!("step-{}", state.step);
    let target = dir.join(&name);
    if target.exists() {
        // A leftover of an attempt killed while writing this very step.
        std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    }
    std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
    // Tensors are copied to the CPU for writing; the live ones stay where they are.
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_detach()?.f_to_device(tch::Device::Cpu)?)))
        .collect::<Result<_>>()?;
    Tensor::write_safetensors(&cpu, target.join("tensors.safetensors"))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::io(&target, std::io::Error::other(e)))?;
    write_file(&target.join("state.json"), &json)?;
    // Publish: LATEST is replaced by rename, which is atomic on POSIX filesystems.
    let tmp = dir.join(format!("{LATEST}.tmp-{}", std::process::id()));
    write_file(&tmp, name.as_bytes())?;
    std::fs::rename(&tmp, dir.join(LATEST)).map_err(|e| Error::io(dir.join(LATEST), e))?;
    // Older checkpoints are no longer needed.
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let file_name = entry.file_name();
        let n = file_name.to_string_lossy();
        if n.starts_with("step-") && n != name.as_str() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Reads the latest checkpoint if one exists for `shard_id`.
pub fn load(shard_dir: &ShardDir, shard_id: &str) -> Result<Option<(LoopState, HashMap<String, Tensor>)>> {
    let dir = shard_dir.path();
    let latest = dir.join(LATEST);
    if !latest.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
    let name = name.trim();
    if !name.strip_prefix("step-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
        return Err(Error::Checkpoint { path: latest, message: format!("names {name:?}, not a step folder") });
    }
    let step_dir = crate::confine::join_under(dir, &[name])?;
    let state_path = step_dir.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: LoopState = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint { path: state_path.clone(), message: format!("unreadable state: {e}") })?;
    if state.shard_id != shard_id {
        return Err(Error::Checkpoint {
            path: state_path,
            message: format!("belongs to shard {}, not {shard_id}", state.shard_id),
        });
    }
    let tensors = Tensor::read_safetensors(step_dir.join("tensors.safetensors"))?.into_iter().collect();
    Ok(Some((state, tensors)))
}

/// Copies saved values into live tensors (same names), failing on anything missing or
/// misshapen.
pub fn restore(dir: &Path, saved: &HashMap<String, Tensor>, live: &[(String, &Tensor)]) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (name, t) in live {
            let src = saved
                .get(name)
                .ok_or_else(|| Error::Checkpoint { path: dir.to_owned(), message: format!("tensor {name} missing") })?;
            if src.size() != t.size() {
                return Err(Error::Checkpoint {
                    path: dir.to_owned(),
                    message: format!("tensor {name} has shape {:?}, expected {:?}", src.size(), t.size()),
                });
            }
            let mut dst = t.shallow_clone();
            dst.f_copy_(&src.f_to_kind(t.kind())?)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(run: &str, shard: &str) -> (RunId, ShardId) {
        (RunId::new(run).unwrap(), ShardId::new(shard).unwrap())
    }

    #[test]
    fn save_load_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (run, shard) = ids("r1", "s1");
        let ck = ShardDir::new(dir.path(), &run, &shard).unwrap();
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let mut state = LoopState::new("s1");
        state.step = 7;
        save(&ck, &state, &[("a".into(), &a)]).unwrap();
        // Overwrite with a newer checkpoint: atomic replace.
        state.step = 9;
        let a2 = Tensor::from_slice(&[4.0f32, 5.0, 6.0]);
        save(&ck, &state, &[("a".into(), &a2)]).unwrap();
        let (loaded, tensors) = load(&ck, "s1").unwrap().unwrap();
        assert_eq!(loaded.step, 9);
        let live = Tensor::zeros([3], (tch::Kind::Float, tch::Device::Cpu));
        restore(ck.path(), &tensors, &[("a".into(), &live)]).unwrap();
        assert_eq!(Vec::<f32>::try_from(&live).unwrap(), vec![4.0, 5.0, 6.0]);
        // Only the newest step folder, LATEST and the marker remain.
        let mut names: Vec<String> = std::fs::read_dir(ck.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![".qsched-shard".to_owned(), "LATEST".to_owned(), "step-9".to_owned()]);
        // Wrong shard, missing tensor, wrong shape.
        assert!(load(&ck, "s2").is_err());
        let other = Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
        assert!(restore(ck.path(), &tensors, &[("a".into(), &other)]).is_err());
        assert!(restore(ck.path(), &tensors, &[("b".into(), &live)]).is_err());
        let (run_none, none) = ids("r1", "none");
        assert!(load(&ShardDir::new(dir.path(), &run_none, &none).unwrap(), "none").unwrap().is_none());
        // A step folder written but never published is ignored: LATEST still wins.
        std::fs::create_dir_all(ck.path().join("step-11")).unwrap();
        assert_eq!(load(&ck, "s1").unwrap().unwrap().0.step, 9);
        // A LATEST that names anything but a step folder is refused, not followed.
        std::fs::write(ck.path().join(LATEST), "../../elsewhere").unwrap();
        assert!(load(&ck, "s1").unwrap_err().to_string().contains("not a step folder"));
        ck.remove().unwrap();
        assert!(!ck.path().exists());
        assert!(!dir.path().join("r1").exists(), "the empty run folder goes too");
        ck.remove().unwrap();
    }

    #[test]
    fn removal_only_of_folders_the_agent_created_for_this_shard() {
        let root = tempfile::tempdir().unwrap();
        let (run, shard) = ids("r1", "victim");
        let ck = ShardDir::new(root.path(), &run, &shard).unwrap();
        // A folder at the shard's place that the agent did not create: left alone.
        std::fs::create_dir_all(ck.path()).unwrap();
        std::fs::write(ck.path().join("precious"), "keep").unwrap();
        assert!(ck.remove().unwrap_err().to_string().contains("did not create"));
        assert!(ck.path().join("precious").is_file());
        // Another shard's marker: left alone.
        std::fs::write(ck.path().join(MARKER), "r1/other").unwrap();
        assert!(ck.remove().unwrap_err().to_string().contains("belongs to"));
        assert!(ck.path().join("precious").is_file());
        // A symlinked run folder is never followed, for writing or removing.
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("s")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("r2")).unwrap();
        let (run2, s) = ids("r2", "s");
        assert!(ShardDir::new(root.path(), &run2, &s).unwrap_err().to_string().contains("symlink"));
        assert!(outside.path().join("s").is_dir());
    }
}
