//! Shards (units of work), their results, run records, agent heartbeats and metric points.
//!
//! A [`Shard`] carries everything an agent needs to run it: the model id, task, seed,
//! the resolved architecture and training settings, and where the weights come from.
//! Its id is a content hash, so the same spec always expands to the same shard ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::device::DeviceClass;
use crate::ids::{ModelId, TaskId};
use crate::names::{RunId, ShardId};
use crate::scale::{DataSettings, DizoSettings, OptArch, Qwen3Arch, TrainSettings};
use crate::spec::ModelInit;

/// Architecture of the model a shard trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelArch {
    /// Qwen3 shape (standard or reversible).
    Qwen3(Qwen3Arch),
    /// OPT shape.
    Opt(OptArch),
}

/// One unit of work: a model × task × seed at a scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    /// Run this shard belongs to.
    pub run_id: RunId,
    /// Content-derived id (16 hex digits), stable for the same spec.
    pub shard_id: ShardId,
    /// Position in the run's expansion order.
    pub index: u32,
    /// Model and method.
    pub model: ModelId,
    /// Task.
    pub task: TaskId,
    /// Seed for data sampling, initialisation and training randomness.
    pub seed: u64,
    /// Scale preset name.
    pub scale: String,
    /// Device class that must run it.
    pub device_class: DeviceClass,
    /// Architecture (ignored for the shape when `init` is pretrained: the checkpoint's
    /// `config.json` wins, and the result records the shape that actually ran).
    pub arch: ModelArch,
    /// Weight source.
    pub init: ModelInit,
    /// Data sizes.
    pub data: DataSettings,
    /// Training settings for this shard's method.
    pub train: TrainSettings,
    /// DiZO projection settings (only for `dizo-opt`).
    pub dizo: Option<DizoSettings>,
}

impl Shard {
    /// The id naming this shard's work (model, task, seed, settings) wherever it appears
    /// in a matrix: the first 16 hex digits of the sha256 of its JSON with the run id and
    /// the shard id written as empty strings and index 0 (the bytes every build has
    /// hashed, so stored runs keep their ids). An agent checks a received shard against
    /// it: a message corrupted or edited in transit would otherwise run other settings
    /// under the id of the real shard.
    pub fn content_id(&self) -> ShardId {
        use sha2::Digest;
        let unplaced = Shard { index: 0, ..self.clone() };
        let json = serde_json::to_string(&unplaced).expect("a shard serialises to JSON");
        // `run_id` and `shard_id` are the first two fields of `Shard`.
        let written = format!(
            "{{\"run_id\":{},\"shard_id\":{},",
            serde_json::to_string(&self.run_id).expect("an id serialises"),
            serde_json::to_string(&self.shard_id).expect("an id serialises")
        );
        let rest = json.strip_prefix(&written).expect("Shard starts with run_id and shard_id");
        let hashed = format!("{{\"run_id\":\"\",\"shard_id\":\"\",{rest}");
        let digest = hex::encode(sha2::Sha256::digest(hashed.as_bytes()));
        ShardId::new(&digest[..16]).expect("16 hex digits are a valid id")
    }
}

/// Lifecycle state of a shard as recorded in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    /// Recorded by `submit`, its message not yet confirmed by the broker. A submit that
    /// was interrupted leaves shards here; `qsched submit --resume RUN` publishes them.
    Unpublished,
    /// Published, not yet picked up.
    Queued,
    /// An agent is running it.
    Running,
    /// Finished with metrics.
    Succeeded,
    /// Finished with an error (recorded in the result).
    Failed,
    /// Stopped by `qsched cancel`.
    Cancelled,
    /// Sent to the dead-letter queue (delivery limit reached or undecodable).
    Dead,
}

impl ShardState {
    /// Every state, in lifecycle order.
    pub const ALL: [ShardState; 7] = [
        ShardState::Unpublished,
        ShardState::Queued,
        ShardState::Running,
        ShardState::Succeeded,
        ShardState::Failed,
        ShardState::Cancelled,
        ShardState::Dead,
    ];

    /// True once the shard will not change again (unless retried).
    pub fn is_terminal(self) -> bool {
        matches!(self, ShardState::Succeeded | ShardState::Failed | ShardState::Cancelled | ShardState::Dead)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardState::Unpublished => "unpublished",
            ShardState::Queued => "queued",
            ShardState::Running => "running",
            ShardState::Succeeded => "succeeded",
            ShardState::Failed => "failed",
            ShardState::Cancelled => "cancelled",
            ShardState::Dead => "dead",
        }
    }
}

/// What a worker measured while running a shard: the part of a result that training
/// and evaluation report. The worker sends it to its supervisor, which flattens it into
/// the [`ShardResult`] it stores; a shard that failed before reporting keeps the
/// defaults, with the precision it was asked for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ShardMeasurements {
    /// Device that ran it (`cpu`, `cuda:0`).
    pub device: String,
    /// GPU product name, when a GPU ran it.
    pub gpu_name: Option<String>,
    /// Test-split metrics of the best-dev checkpoint (name → value).
    pub metrics: BTreeMap<String, f64>,
    /// Dev-split metrics of the best checkpoint.
    pub dev_metrics: BTreeMap<String, f64>,
    /// Name of the metric used for model selection and comparisons.
    pub primary_metric: Option<String>,
    /// Step of the best-dev checkpoint.
    pub best_step: Option<u64>,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Peak memory: host RSS of the worker on CPU, peak allocated GPU memory on CUDA.
    pub peak_memory_bytes: u64,
    /// What `peak_memory_bytes` measures.
    pub peak_memory_kind: String,
    /// Wall-clock seconds of the whole shard (load, train, evaluate).
    pub wall_seconds: f64,
    /// Seconds spent in training steps only.
    pub train_seconds: f64,
    /// Training steps per second.
    pub steps_per_second: f64,
    /// Training tokens (non-pad) per second.
    pub tokens_per_second: f64,
    /// Non-finite losses skipped (each one resampled, never silently used).
    pub skipped_steps: u64,
    /// Training precision that ran ([`crate::scale::Precision::label`]).
    pub precision: String,
    /// Intra-op CPU threads of the worker.
    pub threads: u32,
    /// Model parameters.
    pub parameters: u64,
    /// Train/dev/test example counts.
    pub split_sizes: BTreeMap<String, u64>,
    /// sha256 of each data and tokenizer file used, keyed by path relative to the data dir.
    pub data_checksums: BTreeMap<String, String>,
    /// The shard as it ran (architecture, settings, weight source).
    pub config: serde_json::Value,
    /// Step a resumed run restarted from, if it resumed from a checkpoint.
    pub resumed_from_step: Option<u64>,
}

/// The final record of one shard, written once: who ran it and how it ended, with what
/// it measured flattened in (the stored JSON has one level).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardResult {
    /// Run id.
    pub run: String,
    /// Shard id.
    pub shard: String,
    /// Model id.
    pub model: ModelId,
    /// Task id.
    pub task: TaskId,
    /// Seed.
    pub seed: u64,
    /// Scale preset.
    pub scale: String,
    /// Host name of the agent.
    pub host: String,
    /// Agent id.
    pub agent: String,
    /// Terminal state: succeeded, failed or cancelled.
    pub status: ShardState,
    /// Error message for failed shards.
    pub error: Option<String>,
    /// What the worker measured.
    #[serde(flatten)]
    pub measured: ShardMeasurements,
    /// Delivery attempt that produced this result (1 = first).
    pub attempt: u32,
    /// Unix seconds when the attempt started.
    pub started_at: f64,
    /// Unix seconds when it finished.
    pub finished_at: f64,
    /// W3C traceparent of the shard's processing span.
    pub traceparent: Option<String>,
}

/// A run as recorded at submit time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id.
    pub run_id: RunId,
    /// Benchmark name.
    pub name: String,
    /// Unix seconds of submission.
    pub created_at: f64,
    /// Number of shards.
    pub shard_count: u32,
    /// sha256 of the resolved spec (canonical JSON).
    pub spec_hash: String,
    /// The resolved spec, as JSON.
    pub spec: serde_json::Value,
    /// Every shard id with its model/task/seed, in expansion order.
    pub shards: Vec<ShardSummary>,
    /// W3C traceparent of the submit span.
    pub traceparent: Option<String>,
}

/// Identity of a shard within a run record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSummary {
    /// Shard id.
    pub shard: String,
    /// Model id.
    pub model: ModelId,
    /// Task id.
    pub task: TaskId,
    /// Seed.
    pub seed: u64,
    /// Device class.
    pub device_class: DeviceClass,
}

/// Live state of an agent, refreshed every few seconds with a TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentHeartbeat {
    /// Agent id (`host:device:pid`).
    pub agent: String,
    /// Host name.
    pub host: String,
    /// Device the agent is pinned to.
    pub device: String,
    /// GPU name, if any.
    pub gpu_name: Option<String>,
    /// Run and shard being processed.
    pub current: Option<(String, String)>,
    /// Last reported training step of the current shard.
    pub step: Option<u64>,
    /// Total steps of the current shard.
    pub total_steps: Option<u64>,
    /// Unix seconds of the current shard's last progress (step, evaluation batch); the
    /// heartbeat itself comes from the agent's timer, so a stalled worker shows here.
    #[serde(default)]
    pub progress_at: Option<f64>,
    /// Unix seconds when the agent started.
    pub started_at: f64,
    /// Unix seconds of this heartbeat.
    pub at: f64,
    /// Shards finished by this agent.
    pub shards_done: u64,
    /// Resident memory (host RAM, bytes) of the worker running the current shard, read
    /// when this heartbeat was sent. GPU memory belongs to the worker's CUDA allocator and
    /// is reported only as the shard's peak, in its result.
    #[serde(default)]
    pub worker_memory_bytes: Option<u64>,
}

/// One point of a shard's metric stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Training step.
    pub step: u64,
    /// What the point is: "train" (loss, lr, throughput) or "dev"/"test" evaluation.
    pub kind: String,
    /// Values by name.
    pub values: BTreeMap<String, f64>,
    /// Unix seconds.
    pub at: f64,
}

/// Seconds since the Unix epoch as f64.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Fixed records for tests here and in other crates (as [`crate::wire::sample_shard`]):
/// every store implementation's tests build their runs and results from these.
impl RunRecord {
    /// A `glue-tiny` run of qwen3 × SST-2 × seed 1 CPU shards named `shards`.
    pub fn sample(run: &str, created_at: f64, shards: &[&str]) -> RunRecord {
        RunRecord {
            run_id: RunId::new(run).expect("a valid run id"),
            name: "glue-tiny".to_owned(),
            created_at,
            shard_count: shards.len() as u32,
            spec_hash: "ab".repeat(32),
            spec: serde_json::json!({"scale": "tiny"}),
            shards: shards
                .iter()
                .map(|s| ShardSummary {
                    shard: (*s).to_owned(),
                    model: ModelId::Qwen3,
                    task: TaskId::Sst2,
                    seed: 1,
                    device_class: DeviceClass::Cpu,
                })
                .collect(),
            traceparent: None,
        }
    }
}

impl AgentHeartbeat {
    /// The heartbeat at `at` of an idle CPU agent named `agent` that started then.
    pub fn sample(agent: &str, at: f64) -> AgentHeartbeat {
        AgentHeartbeat {
            agent: agent.to_owned(),
            host: "h".to_owned(),
            device: "cpu".to_owned(),
            gpu_name: None,
            current: None,
            step: None,
            total_steps: None,
            progress_at: None,
            started_at: at,
            at,
            shards_done: 0,
            worker_memory_bytes: None,
        }
    }
}

impl ShardResult {
    /// A succeeded CPU result of `shard` of `run` stored by `agent`; its accuracy, 0.1 + 0.2,
    /// has no short decimal form, so a store that loses float precision fails the tests.
    pub fn sample(run: &str, shard: &str, agent: &str) -> ShardResult {
        ShardResult {
            run: run.to_owned(),
            shard: shard.to_owned(),
            model: ModelId::Qwen3,
            task: TaskId::Sst2,
            seed: 1,
            scale: "tiny".to_owned(),
            host: "host-a".to_owned(),
            agent: agent.to_owned(),
            status: ShardState::Succeeded,
            error: None,
            measured: ShardMeasurements {
                device: "cpu".to_owned(),
                gpu_name: None,
                metrics: BTreeMap::from([("accuracy".to_owned(), 0.1 + 0.2)]),
                dev_metrics: BTreeMap::from([("accuracy".to_owned(), 0.9)]),
                primary_metric: Some("accuracy".to_owned()),
                best_step: Some(20),
                steps: 40,
                peak_memory_bytes: 123_456_789,
                peak_memory_kind: "rss".to_owned(),
                wall_seconds: 12.5,
                train_seconds: 10.0,
                steps_per_second: 4.0,
                tokens_per_second: 2048.0,
                skipped_steps: 0,
                precision: "fp32".to_owned(),
                threads: 2,
                parameters: 1_000_000,
                split_sizes: BTreeMap::from([("train".to_owned(), 2000)]),
                data_checksums: BTreeMap::new(),
                config: serde_json::json!({"lr": 0.001}),
                resumed_from_step: None,
            },
            attempt: 1,
            started_at: 1.0,
            finished_at: 13.5,
            traceparent: None,
        }
    }
}
