//! Model snapshots: which files of a model repository the project loads, fetched into the
//! cache, and the snapshot folder that then reads like any local model folder.
//!
//! Taken: `config.json`, `generation_config.json`, the tokenizer files (`tokenizer.json`,
//! `tokenizer_config.json`, `vocab.json`, `merges.txt`, `special_tokens_map.json`), and the
//! weights as `*.safetensors` with their `*.safetensors.index.json`. Left out: every other
//! weight format (`.bin`, `.msgpack`, `.h5`, `.onnx`, `.gguf`...) and anything in a
//! sub-folder, which the loaders never read and which can be many gigabytes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Deserialize;

use crate::client::{Hub, ProgressFn, RepoFile};
use crate::error::{Error, Result};
use crate::id::RepoId;

/// Top-level files taken besides the weights, when the repository has them.
pub const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
];

/// The single-file weights name, expected when a repository has no index.
pub const SINGLE_WEIGHTS: &str = "model.safetensors";
/// The index of sharded weights.
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// A model's files in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The repository (with the revision asked for).
    pub repo: RepoId,
    /// The commit the revision resolved to.
    pub commit: String,
    /// `snapshots/<commit>`: a model folder with `config.json` and the weights.
    pub dir: PathBuf,
    /// The files in it that were selected, sorted.
    pub files: Vec<String>,
}

/// The files of a listing the project loads (see the module docs), sorted; an error when
/// there is no `config.json` or no safetensors weights.
pub fn select_model_files(repo: &RepoId, commit: &str, files: &[RepoFile]) -> Result<Vec<String>> {
    let names: BTreeSet<&str> = files.iter().map(|f| f.rfilename.as_str()).filter(|n| !n.contains('/')).collect();
    let incomplete = |missing: &str| Error::IncompleteModel {
        repo: repo.path(),
        commit: commit.to_string(),
        missing: missing.to_string(),
    };
    if !names.contains("config.json") {
        return Err(incomplete("config.json"));
    }
    let weights: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json"))
        .collect();
    if !weights.iter().any(|n| n.ends_with(".safetensors")) {
        let others: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| [".bin", ".msgpack", ".h5", ".onnx", ".gguf", ".pt", ".pth"].iter().any(|ext| n.ends_with(ext)))
            .collect();
        let found = if others.is_empty() { String::new() } else { format!(" (it has {})", others.join(", ")) };
        return Err(incomplete(&format!("*.safetensors weights, the only format loaded{found}")));
    }
    let mut out: Vec<String> =
        MODEL_FILES.iter().copied().filter(|n| names.contains(n)).chain(weights).map(str::to_string).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

#[derive(Deserialize)]
struct WeightsIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The shard files an index names, sorted and deduplicated.
pub fn index_shards(index_json: &[u8], what: &str) -> Result<Vec<String>> {
    let index: WeightsIndex =
        serde_json::from_slice(index_json).map_err(|source| Error::Json { what: what.to_string(), source })?;
    let shards: BTreeSet<String> = index.weight_map.into_values().collect();
    Ok(shards.into_iter().collect())
}

/// Fetches a model's files into the cache (see the module docs for which) and returns
/// its snapshot. Files already cached are not requested again; with `HF_HUB_OFFLINE` the
/// snapshot is put together from the cache alone, and a file that is not there is an
/// error naming it.
pub fn pull_model(hub: &Hub, repo: &RepoId, progress: ProgressFn<'_>) -> Result<Snapshot> {
    if hub.config().offline {
        return cached_model(hub, repo);
    }
    let listing = hub.list(repo)?;
    let commit = listing.commit;
    let files = select_model_files(repo, &commit, &listing.files)?;
    for file in &files {
        hub.download(repo, &commit, file, progress)?;
    }
    // Every shard the index names must have been listed (and so fetched).
    if files.iter().any(|f| f == WEIGHTS_INDEX) {
        let index = hub.require_cached(repo, &commit, WEIGHTS_INDEX)?;
        let bytes = std::fs::read(&index).map_err(|e| Error::io("cannot read", &index, e))?;
        for shard in index_shards(&bytes, &index.display().to_string())? {
            if !files.contains(&shard) {
                return Err(Error::IncompleteModel {
                    repo: repo.path(),
                    commit,
                    missing: format!("{shard}, which {WEIGHTS_INDEX} names"),
                });
            }
        }
    }
    let dir = hub.cache(repo).snapshot_dir(&commit);
    Ok(Snapshot { repo: repo.clone(), commit, dir, files })
}

/// The snapshot from the cache alone: `config.json`, then the index's shards or the
/// single weights file, are required; the other files are taken when present.
fn cached_model(hub: &Hub, repo: &RepoId) -> Result<Snapshot> {
    let commit = hub.cached_commit(repo)?;
    let mut files = vec!["config.json".to_string()];
    hub.require_cached(repo, &commit, "config.json")?;
    if let Some(index) = hub.cached_file(repo, &commit, WEIGHTS_INDEX)? {
        let bytes = std::fs::read(&index).map_err(|e| Error::io("cannot read", &index, e))?;
        files.push(WEIGHTS_INDEX.to_string());
        for shard in index_shards(&bytes, &index.display().to_string())? {
            hub.require_cached(repo, &commit, &shard)?;
            files.push(shard);
        }
    } else {
        hub.require_cached(repo, &commit, SINGLE_WEIGHTS)?;
        files.push(SINGLE_WEIGHTS.to_string());
    }
    for optional in MODEL_FILES.iter().skip(1) {
        if hub.cached_file(repo, &commit, optional)?.is_some() {
            files.push(optional.to_string());
        }
    }
    files.sort();
    files.dedup();
    let dir = hub.cache(repo).snapshot_dir(&commit);
    Ok(Snapshot { repo: repo.clone(), commit, dir, files })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&str]) -> Vec<RepoFile> {
        names.iter().map(|n| RepoFile { rfilename: n.to_string(), size: None, lfs: None }).collect()
    }

    #[test]
    fn takes_config_tokenizer_and_safetensors_only() {
        let repo: RepoId = "facebook/opt-125m".parse().unwrap();
        let files = listing(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "flax_model.msgpack",
            "generation_config.json",
            "merges.txt",
            "model.safetensors",
            "pytorch_model.bin",
            "special_tokens_map.json",
            "tf_model.h5",
            "tokenizer_config.json",
            "vocab.json",
            "onnx/model.safetensors",
        ]);
        assert_eq!(
            select_model_files(&repo, "c", &files).unwrap(),
            vec![
                "config.json",
                "generation_config.json",
                "merges.txt",
                "model.safetensors",
                "special_tokens_map.json",
                "tokenizer_config.json",
                "vocab.json"
            ]
        );
        let sharded = listing(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
        ]);
        assert_eq!(select_model_files(&repo, "c", &sharded).unwrap().len(), 5);
    }

    #[test]
    fn missing_config_or_weights_is_named() {
        let repo: RepoId = "o/n".parse().unwrap();
        let err = select_model_files(&repo, "c0", &listing(&["model.safetensors"])).unwrap_err().to_string();
        assert!(err.contains("o/n at commit c0 has no config.json"), "{err}");
        let err = select_model_files(&repo, "c0", &listing(&["config.json", "pytorch_model.bin"])).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("*.safetensors weights") && err.contains("pytorch_model.bin"), "{err}");
    }

    #[test]
    fn index_names_its_shards() {
        let index = br#"{"metadata": {"total_size": 8}, "weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}"#;
        assert_eq!(index_shards(index, "i").unwrap(), vec!["m-1.safetensors", "m-2.safetensors"]);
        assert!(index_shards(b"{}", "i").unwrap_err().to_string().contains("malformed JSON in i"));
    }
}
