//! Shard checkpoints: weights, optimizer state and loop state, written atomically.
//!
//! Layout: `<checkpoint_dir>/<run>/<shard>/{state.json, tensors.safetensors}`. A new
//! checkpoint is written into a temporary folder and renamed over the old one, so a kill
//! at any moment leaves either the previous or the new checkpoint, never a torn one.
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

/// Writes a checkpoint atomically.
pub fn save(dir: &Path, state: &LoopState, tensors: &[(String, &Tensor)]) -> Result<()> {
    let parent = dir.parent().ok_or_else(|| Error::io(dir, std::io::Error::other("checkpoint dir has no parent")))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt"),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    // Tensors are copied to the CPU for writing; the live ones stay where they are.
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_detach()?.f_to_device(tch::Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let tensors_path = tmp.join("tensors.safetensors");
    Tensor::write_safetensors(&cpu, &tensors_path)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::io(&tmp, std::io::Error::other(e)))?;
    std::fs::write(tmp.join("state.json"), json).map_err(|e| Error::io(tmp.join("state.json"), e))?;
    if dir.exists() {
        let old = parent.join(format!(".{}.old-{}", dir.file_name().and_then(|n| n.to_str()).unwrap_or("ckpt"), std::process::id()));
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Reads a checkpoint if one exists for `shard_id`.
pub fn load(dir: &Path, shard_id: &str) -> Result<Option<(LoopState, HashMap<String, Tensor>)>> {
    let state_path = dir.join("state.json");
    if !state_path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: LoopState = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Checkpoint { path: state_path.clone(), message: format!("unreadable state: {e}") })?;
    if state.shard_id != shard_id {
        return Err(Error::Checkpoint {
            path: state_path,
            message: format!("belongs to shard {}, not {shard_id}", state.shard_id),
        });
    }
    let tensors = Tensor::read_safetensors(dir.join("tensors.safetensors"))?.into_iter().collect();
    Ok(Some((state, tensors)))
}

/// Copies saved values into live tensors (same names), failing on anything missing or
/// misshapen.
pub fn restore(dir: &Path, saved: &HashMap<String, Tensor>, live: &[(String, &Tensor)]) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (name, t) in live {
            let src = saved.get(name).ok_or_else(|| Error::Checkpoint {
                path: dir.to_owned(),
                message: format!("tensor {name} missing"),
            })?;
            if src.size() != t.size() {
                return Err(Error::Checkpoint {
                    path: dir.to_owned(),
                    message: format!("tensor {name} has shape {:?}, expected {:?}", src.size(), t.size()),
                });
            }
            let mut dst = t.shallow_clone();
            let _ = dst.f_copy_(&src.f_to_kind(t.kind())?)?;
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
        // No temporary folders left behind.
        assert_eq!(std::fs::read_dir(ck.parent().unwrap()).unwrap().count(), 1);
        // Wrong shard, missing tensor, wrong shape.
        assert!(load(&ck, "s2").is_err());
        let other = Tensor::zeros([2], (tch::Kind::Float, tch::Device::Cpu));
        assert!(restore(&ck, &tensors, &[("a".into(), &other)]).is_err());
        assert!(restore(&ck, &tensors, &[("b".into(), &live)]).is_err());
        assert!(load(&shard_dir(dir.path(), "r1", "none"), "none").unwrap().is_none());
    }
}
