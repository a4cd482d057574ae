//! Shard checkpoints: weights, optimizer state and loop state, written atomically.
//!
//! Layout: `<checkpoint_dir>/<run>/<shard>/step-<N>/{state.json, tensors.safetensors}`
//! plus a `LATEST` file naming the newest complete step folder. A checkpoint is written
//! into a fresh folder first and only then published by atomically renaming a new
//! `LATEST` over the old one; older folders are removed afterwards. A kill at any moment
//! therefore leaves a complete checkpoint to resume from (the previous or the new one).
//! Because batches and noise are functions of (seed, step), restoring the tensors and
//! the step is all a resumed shard needs to continue as if it had never stopped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

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

/// Folder of one shard's checkpoint.
pub fn shard_dir(root: &Path, run: &str, shard: &str) -> PathBuf {
    root.join(run).join(shard)
}

const LATEST: &str = "LATEST";

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io(path, e))
}

/// Writes a checkpoint for `state.step` and publishes it atomically.
pub fn save(dir: &Path, state: &LoopState, tensors: &[(String, &Tensor)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
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
pub fn load(dir: &Path, shard_id: &str) -> Result<Option<(LoopState, HashMap<String, Tensor>)>> {
    let latest = dir.join(LATEST);
    if !latest.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(|e| Error::io(&latest, e))?;
    let step_dir = dir.join(name.trim());
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

/// Removes a shard's checkpoints (after its result is stored); missing is fine.
pub fn remove(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
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

    #[test]
    fn save_load_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let ck = shard_dir(dir.path(), "r1", "s1");
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
        restore(&ck, &tensors, &[("a".into(), &live)]).unwrap();
        assert_eq!(Vec::<f32>::try_from(&live).unwrap(), vec![4.0, 5.0, 6.0]);
        // Only the newest step folder and LATEST remain.
        let mut names: Vec<String> =
            std::fs::read_dir(&ck).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, vec!["LATEST".to_owned(), "step-9".to_owned()]);
        // Wrong shard, missing tensor, wrong shape.
        assert!(load(&ck, "s2").is_err());
        let other = Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
        assert!(restore(&ck, &tensors, &[("a".into(), &other)]).is_err());
        assert!(restore(&ck, &tensors, &[("b".into(), &live)]).is_err());
        assert!(load(&shard_dir(dir.path(), "r1", "none"), "none").unwrap().is_none());
        // A step folder written but never published is ignored: LATEST still wins.
        std::fs::create_dir_all(ck.join("step-11")).unwrap();
        assert_eq!(load(&ck, "s1").unwrap().unwrap().0.step, 9);
        remove(&ck).unwrap();
        assert!(!ck.exists());
        remove(&ck).unwrap();
    }
}
