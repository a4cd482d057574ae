//! The wire codec: MessagePack with field names, a schema version and a size limit.
//!
//! `rmp_serde::to_vec_named` writes maps keyed by field name, so adding an optional field
//! or reordering fields never silently shifts values the way positional encoding does.
//! Every envelope carries `schema_version`; a reader refuses versions it does not know.
//! Decoding checks the size first, so a hostile or corrupt message cannot make an agent
//! allocate without bound. The golden-byte test pins the exact encoding.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::shard::Shard;

/// Schema version written by this build.
pub const SCHEMA_VERSION: u32 = 1;
/// AMQP `content_type` of every message.
pub const CONTENT_TYPE: &str = "application/msgpack";
/// Largest message accepted by default (1 MiB; a shard is about 1.5 KiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

/// A shard as it travels through the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEnvelope {
    /// Schema version of the envelope.
    pub schema_version: u32,
    /// The shard.
    pub shard: Shard,
}

impl ShardEnvelope {
    /// Wraps a shard with the current schema version.
    pub fn new(shard: Shard) -> Self {
        ShardEnvelope { schema_version: SCHEMA_VERSION, shard }
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    schema_version: u32,
}

/// Encodes a value as named MessagePack.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes named MessagePack of at most `max_bytes`, without a version check.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T> {
    if bytes.len() > max_bytes {
        return Err(Error::TooLarge { size: bytes.len(), limit: max_bytes });
    }
    rmp_serde::from_slice(bytes).map_err(|e| Error::Codec(e.to_string()))
}

/// Encodes a shard envelope.
pub fn encode_shard(shard: &Shard) -> Result<Vec<u8>> {
    encode(&ShardEnvelope::new(shard.clone()))
}

/// Decodes a shard envelope: size limit, then schema version, then the body.
pub fn decode_shard(bytes: &[u8], max_bytes: usize) -> Result<Shard> {
    let probe: VersionProbe = decode(bytes, max_bytes)?;
    if probe.schema_version != SCHEMA_VERSION {
        return Err(Error::SchemaVersion { found: probe.schema_version, supported: SCHEMA_VERSION });
    }
    let env: ShardEnvelope = decode(bytes, max_bytes)?;
    Ok(env.shard)
}

/// A fixed shard used by golden-byte tests here and in other crates.
pub fn sample_shard() -> Shard {
    use crate::device::DeviceClass;
    use crate::ids::{ModelId, TaskId};
    use crate::scale::{DataSettings, LrSchedule, Precision, Qwen3Arch, TrainSettings};
    use crate::shard::ModelArch;
    use crate::spec::ModelInit;
    Shard {
        run_id: crate::RunId::new("r-golden").expect("a valid id"),
        shard_id: crate::ShardId::new("0123456789abcdef").expect("a valid id"),
        index: 0,
        model: ModelId::Qwen3,
        task: TaskId::Sst2,
        seed: 1,
        scale: "tiny".into(),
        device_class: DeviceClass::Cpu,
        arch: ModelArch::Qwen3(Qwen3Arch {
            vocab_size: 151_936,
            hidden_size: 64,
            intermediate_size: 192,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            max_position_embeddings: 2048,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            initializer_range: 0.02,
        }),
        init: ModelInit::Random,
        data: DataSettings { train_examples: 2000, dev_examples: 100, test_examples: 200, max_seq_len: 64 },
        train: TrainSettings {
            max_steps: 40,
            batch_size: 16,
            eval_batch_size: 64,
            learning_rate: 1e-3,
            lr_schedule: LrSchedule::Linear,
            warmup_steps: 4,
            weight_decay: 0.01,
            grad_clip: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            zo_eps: 0.0,
            eval_every: 20,
            early_stopping_patience: 0,
            checkpoint_every: 20,
            precision: Precision::Fp32,
        },
        dizo: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_HEX: &str = include_str!("golden/shard_v1.hex");

    fn golden() -> Vec<u8> {
        hex::decode(GOLDEN_HEX.trim()).unwrap()
    }

    #[test]
    fn golden_bytes_encode() {
        let bytes = encode_shard(&sample_shard()).unwrap();
        if std::env::var_os("QSCHED_BLESS").is_some() {
            // Regenerate after an intentional schema change (and bump SCHEMA_VERSION).
            std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/src/golden/shard_v1.hex"), hex::encode(&bytes))
                .unwrap();
            return;
        }
        assert_eq!(hex::encode(&bytes), GOLDEN_HEX.trim(), "the wire encoding changed: bump SCHEMA_VERSION");
    }

    #[test]
    fn golden_bytes_decode() {
        assert_eq!(decode_shard(&golden(), DEFAULT_MAX_MESSAGE_BYTES).unwrap(), sample_shard());
    }

    #[test]
    fn encoding_is_named_not_positional() {
        let bytes = golden();
        // Field names are present in the bytes.
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("schema_version") && text.contains("shard_id") && text.contains("learning_rate"));
    }

    #[test]
    fn content_id_names_the_work_not_the_run_or_position() {
        let shard = sample_shard();
        let id = shard.content_id();
        let elsewhere =
            Shard { run_id: crate::RunId::new("r-other").unwrap(), index: 7, shard_id: id.clone(), ..shard.clone() };
        assert_eq!(elsewhere.content_id(), id);
        let mut edited = shard.clone();
        edited.train.learning_rate *= 2.0;
        assert_ne!(edited.content_id(), id);
    }

    #[test]
    fn size_limit() {
        let err = decode_shard(&golden(), 16).unwrap_err();
        assert!(matches!(err, Error::TooLarge { limit: 16, .. }), "{err}");
    }

    #[test]
    fn garbage_and_versions_are_refused() {
        assert!(matches!(decode_shard(b"not msgpack", 1024).unwrap_err(), Error::Codec(_)));
        assert!(matches!(decode_shard(&[], 1024).unwrap_err(), Error::Codec(_)));
        #[derive(Serialize)]
        struct Future {
            schema_version: u32,
        }
        let bytes = encode(&Future { schema_version: 99 }).unwrap();
        assert!(matches!(decode_shard(&bytes, 1024).unwrap_err(), Error::SchemaVersion { found: 99, supported: 1 }));
        // Right version, wrong body.
        let bytes = encode(&Future { schema_version: 1 }).unwrap();
        assert!(matches!(decode_shard(&bytes, 1024).unwrap_err(), Error::Codec(_)));
    }
}
