//! Library side of `qagent inspect --model-dir DIR [--tokens FILE] [--device D]`.
//!
//! Without tokens it prints what a checkpoint directory holds (architecture, resolved
//! config, parameter count, dtypes) as one JSON object. With a tokens file
//! (`{"input_ids": [[…]], "attention_mask": [[…]]}`, mask optional = all ones, padding
//! on either side) it prints `{"logits": …}` computed in fp32: `[batch, seq, vocab]` for a
//! causal LM, `[batch, num_labels]` for sequence classification. It is the Rust half of
//! the transformers cross-check (`ops/parity/check_saved.py`).
//!
//! Argument parsing and CUDA initialisation belong to the binary; this gets a ready
//! device. Bad input is an error, never repaired: ragged rows, mask values other than
//! 0/1 and token ids outside the vocabulary are refused (ids are never clamped).

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::hf::{self, HfCheckpoint};

/// A batch read from a tokens file, validated against a vocabulary.
#[derive(Debug)]
pub struct TokenBatch {
    /// Token ids, row-major `[batch][seq]`.
    pub input_ids: Vec<Vec<i64>>,
    /// 0/1 attention mask of the same shape.
    pub attention_mask: Vec<Vec<i64>>,
}

impl TokenBatch {
    /// Reads `path` and checks shapes, mask values and `0 ≤ id < vocab_size`.
    pub fn read(path: &Path, vocab_size: i64) -> Result<TokenBatch> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::malformed(path, format!("not valid JSON: {e}")))?;
        let input_ids = int_matrix(path, &json, "input_ids")?
            .ok_or_else(|| Error::malformed(path, "missing `input_ids` ([[id, ...], ...])"))?;
        let seq = input_ids[0].len();
        let attention_mask = match int_matrix(path, &json, "attention_mask")? {
            Some(m) => m,
            None => input_ids.iter().map(|r| vec![1; r.len()]).collect(),
        };
        if attention_mask.len() != input_ids.len() || attention_mask.iter().any(|r| r.len() != seq) {
            return Err(Error::malformed(path, "`attention_mask` must have the shape of `input_ids`"));
        }
        for (b, (ids, mask)) in input_ids.iter().zip(&attention_mask).enumerate() {
            for (t, (&id, &m)) in ids.iter().zip(mask).enumerate() {
                if !(0..vocab_size).contains(&id) {
                    return Err(Error::malformed(
                        path,
                        format!("input_ids[{b}][{t}] = {id} is outside the model vocabulary [0, {vocab_size})"),
                    ));
                }
                if m != 0 && m != 1 {
                    return Err(Error::malformed(path, format!("attention_mask[{b}][{t}] = {m}; expected 0 or 1")));
                }
            }
        }
        Ok(TokenBatch { input_ids, attention_mask })
    }

    /// `(input_ids, attention_mask)` as `Int64` `[B, T]` tensors on `device`.
    pub fn to_tensors(&self, device: Device) -> Result<(Tensor, Tensor)> {
        let to = |rows: &Vec<Vec<i64>>| -> Result<Tensor> {
            let (b, t) = (rows.len() as i64, rows[0].len() as i64);
            let flat: Vec<i64> = rows.iter().flatten().copied().collect();
            Ok(Tensor::f_from_slice(&flat)?.f_view([b, t])?.f_to_device(device)?)
        };
        Ok((to(&self.input_ids)?, to(&self.attention_mask)?))
    }
}

/// A non-empty, rectangular list of integer rows, or `None` when the key is absent.
fn int_matrix(path: &Path, json: &serde_json::Value, key: &str) -> Result<Option<Vec<Vec<i64>>>> {
    let Some(v) = json.get(key).filter(|v| !v.is_null()) else { return Ok(None) };
    let rows = v.as_array().ok_or_else(|| Error::malformed(path, format!("`{key}` must be a list of rows")))?;
    if rows.is_empty() {
        return Err(Error::malformed(path, format!("`{key}` is empty")));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (b, row) in rows.iter().enumerate() {
        let row = row.as_array().ok_or_else(|| Error::malformed(path, format!("`{key}[{b}]` must be a list")))?;
        let vals = row
            .iter()
            .enumerate()
            .map(|(t, x)| {
                x.as_i64().ok_or_else(|| Error::malformed(path, format!("`{key}[{b}][{t}]` = {x} is not an integer")))
            })
            .collect::<Result<Vec<i64>>>()?;
        out.push(vals);
    }
    let seq = out[0].len();
    if seq == 0 {
        return Err(Error::malformed(path, format!("`{key}[0]` is empty")));
    }
    if let Some(b) = out.iter().position(|r| r.len() != seq) {
        return Err(Error::malformed(
            path,
            format!(
                "`{key}` is ragged: row {b} has {} entries, row 0 has {seq} (pad rows and give an attention_mask)",
                out[b].len()
            ),
        ));
    }
    Ok(Some(out))
}

/// Runs `inspect`: summary without `tokens`, fp32 logits as JSON with them.
pub fn run(model_dir: &Path, tokens: Option<&Path>, device: Device, out: &mut dyn std::io::Write) -> Result<()> {
    let (_vs, model, info) = hf::load_model_dir(model_dir, device)?;
    let json = match tokens {
        None => serde_json::json!({
            "model_dir": model_dir.display().to_string(),
            "device": format!("{device:?}"),
            "architecture": info.architecture.as_str(),
            "parameter_count": info.parameter_count,
            "stored_dtype": info.stored_dtype,
            "declared_dtype": info.declared_dtype,
            "variable_dtype": info.variable_dtype,
            "num_labels": info.num_labels,
            "config": info.config,
        }),
        Some(path) => {
            let batch = TokenBatch::read(path, model.vocab_size())?;
            let (ids, mask) = batch.to_tensors(device)?;
            let logits = tch::no_grad(|| model.logits(&ids, &mask))?.f_to_kind(Kind::Float)?;
            let bad = logits.f_isfinite()?.f_logical_not()?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            if bad > 0 {
                return Err(Error::Checkpoint {
                    path: model_dir.to_path_buf(),
                    message: format!("the model produced {bad} non-finite logits for {}", path.display()),
                });
            }
            serde_json::json!({ "architecture": model.architecture().as_str(), "logits": nested(&logits)? })
        }
    };
    let text = serde_json::to_string(&json)
        .map_err(|e| Error::Serialise { what: "inspect output", message: e.to_string() })?;
    writeln!(out, "{text}").map_err(|e| Error::io("<output>", e))
}

/// A float tensor of rank 2 or 3 as nested JSON arrays.
fn nested(t: &Tensor) -> Result<serde_json::Value> {
    let size = t.size();
    let flat: Vec<f32> = Vec::<f32>::try_from(&t.f_contiguous()?.f_view([-1])?)?;
    let value = match size.as_slice() {
        [_, n] => serde_json::json!(flat.chunks(*n as usize).collect::<Vec<_>>()),
        [_, t1, n] => {
            let rows: Vec<Vec<&[f32]>> =
                flat.chunks((*t1 * *n) as usize).map(|b| b.chunks(*n as usize).collect()).collect();
            serde_json::json!(rows)
        }
        other => return Err(Error::Inputs(format!("cannot print logits of shape {other:?}"))),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn tokens_file_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(
            dir.path(),
            "ok.json",
            r#"{"input_ids": [[5, 6, 0], [7, 8, 9]], "attention_mask": [[1, 1, 0], [1, 1, 1]]}"#,
        );
        let b = TokenBatch::read(&ok, 10).unwrap();
        assert_eq!(b.attention_mask, vec![vec![1, 1, 0], vec![1, 1, 1]]);
        let no_mask = write(dir.path(), "nm.json", r#"{"input_ids": [[5, 6], [7, 8]]}"#);
        assert_eq!(TokenBatch::read(&no_mask, 10).unwrap().attention_mask, vec![vec![1, 1], vec![1, 1]]);

        let ragged = write(dir.path(), "r.json", r#"{"input_ids": [[5, 6, 0], [7, 8]]}"#);
        let e = TokenBatch::read(&ragged, 10).unwrap_err().to_string();
        assert!(e.contains("ragged"), "{e}");
        let oov = write(dir.path(), "o.json", r#"{"input_ids": [[5, 10]]}"#);
        let e = TokenBatch::read(&oov, 10).unwrap_err().to_string();
        assert!(e.contains("input_ids[0][1] = 10") && e.contains("outside"), "{e}");
        let neg = write(dir.path(), "n.json", r#"{"input_ids": [[-1]]}"#);
        assert!(TokenBatch::read(&neg, 10).is_err());
        let bad_mask = write(dir.path(), "m.json", r#"{"input_ids": [[1, 2]], "attention_mask": [[1, 2]]}"#);
        assert!(TokenBatch::read(&bad_mask, 10).unwrap_err().to_string().contains("attention_mask[0][1] = 2"));
        let shape = write(dir.path(), "s.json", r#"{"input_ids": [[1, 2]], "attention_mask": [[1]]}"#);
        assert!(TokenBatch::read(&shape, 10).is_err());
    }
}
