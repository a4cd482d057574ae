//! The scheduler: expands a resolved benchmark spec into shards (pure and
//! deterministic) and publishes them (the only I/O here), plus run bookkeeping for
//! `cancel` and `retry`.
//!
//! Expansion order is models × tasks × seeds, in the order the spec lists them. A shard
//! id is the first 16 hex digits of the sha256 of the shard's canonical JSON without its
//! run id and position, so the same spec always yields the same shard ids, the same
//! model × task × seed × settings has the same id in any matrix, and runs can be compared
//! shard by shard.
#![deny(missing_docs)]

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use tracing::{Instrument, info, info_span};

use shared::broker::{Broker, BrokerAdmin, OutgoingMessage};
use shared::shard::{ModelArch, RunRecord, Shard, ShardState, ShardSummary, unix_now};
use shared::spec::BenchmarkSpec;
use shared::store::Store;
use shared::{Family, RunId, ShardId, wire};

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the shared crate (codec, broker, store).
    #[error(transparent)]
    Shared(#[from] shared::Error),
    /// A run that does not exist.
    #[error("run '{0}' not found")]
    UnknownRun(String),
    /// The spec stored with a run cannot be read back.
    #[error("run '{run}': stored spec is unreadable: {message}")]
    CorruptRun {
        /// Run id.
        run: String,
        /// Why.
        message: String,
    },
}

impl Error {
    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Shared(e) => e.is_transient(),
            Error::UnknownRun(_) | Error::CorruptRun { .. } => false,
        }
    }
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 of the spec's canonical JSON.
pub fn spec_hash(spec: &BenchmarkSpec) -> String {
    // serde_json writes struct fields in declaration order and maps (BTreeMap) sorted,
    // so this is canonical for a given build.
    sha256_hex(&serde_json::to_vec(spec).unwrap_or_default())
}

/// A fresh run id: `r-<UTC yyyymmdd-hhmmss>-<6 hex>` (sortable, unique per submission).
pub fn new_run_id() -> RunId {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let rand = uuid::Uuid::new_v4().simple().to_string();
    let id = format!("r-{y:04}{m:02}{d:02}-{:02}{:02}{:02}-{}", rem / 3600, rem % 3600 / 60, rem % 60, &rand[..6]);
    RunId::new(id).expect("a generated run id has the accepted form")
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Expands a spec into shards for `run_id`. Pure: no I/O, deterministic ids (computed on
/// several threads for a large matrix).
pub fn expand(spec: &BenchmarkSpec, run_id: &RunId) -> Vec<Shard> {
    let p = &spec.preset;
    let mut shards = Vec::new();
    for &model in &spec.models {
        for &task in &spec.tasks {
            for &seed in &spec.seeds {
                let arch = match model.family() {
                    Family::Qwen3 => ModelArch::Qwen3(p.qwen3.clone()),
                    Family::Opt => ModelArch::Opt(p.opt.clone()),
                };
                let train = if model.is_zeroth_order() { p.zeroth_order.clone() } else { p.first_order.clone() };
                let dizo = (model == shared::ModelId::DizoOpt).then(|| p.dizo.clone());
                let mut shard = Shard {
                    run_id: run_id.clone(),
                    shard_id: ShardId::new(UNHASHED).expect("the placeholder is a valid id"),
                    index: 0,
                    model,
                    task,
                    seed,
                    scale: p.name.clone(),
                    device_class: spec.device_class,
                    arch,
                    init: spec.init_for(model).clone(),
                    data: p.data.clone(),
                    train,
                    dizo,
                };
                shard.index = shards.len() as u32;
                shards.push(shard);
            }
        }
    }
    // The content hash is most of the work: large expansions hash on several threads.
    let ids = par_chunks(shards.iter().collect(), |part| part.into_iter().map(Shard::content_id).collect::<Vec<_>>());
    for (shard, id) in shards.iter_mut().zip(ids.into_iter().flatten()) {
        shard.shard_id = id;
    }
    shards
}

/// Inputs below this size are handled on the calling thread: thread start-up would cost
/// more than it saves.
const PARALLEL_MIN_ITEMS: usize = 4096;

/// `f` of consecutive chunks of `items`, one chunk per thread on up to 4 threads (no more
/// than the machine's cores) for large inputs, else `f(items)`; results in input order.
fn par_chunks<T: Send, R: Send>(items: Vec<T>, f: impl Fn(Vec<T>) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads <= 1 || items.len() < PARALLEL_MIN_ITEMS {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(threads);
    let mut chunks = Vec::with_capacity(threads);
    let mut rest = items;
    while rest.len() > size {
        let tail = rest.split_off(size);
        chunks.push(std::mem::replace(&mut rest, tail));
    }
    chunks.push(rest);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = chunks.into_iter().map(|part| scope.spawn(move || f(part))).collect();
        parts.into_iter().map(|part| part.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

/// Shard id placeholder while the content hash is computed.
const UNHASHED: &str = "0";

/// The run record stored at submit time.
pub fn run_record(spec: &BenchmarkSpec, run_id: &RunId, shards: &[Shard], traceparent: Option<String>) -> RunRecord {
    RunRecord {
        run_id: run_id.clone(),
        name: spec.name.clone(),
        created_at: unix_now(),
        shard_count: shards.len() as u32,
        spec_hash: spec_hash(spec),
        spec: serde_json::to_value(spec).unwrap_or(serde_json::Value::Null),
        shards: shards
            .iter()
            .map(|s| ShardSummary {
                shard: s.shard_id.to_string(),
                model: s.model,
                task: s.task,
                seed: s.seed,
                device_class: s.device_class,
            })
            .collect(),
        traceparent,
    }
}

/// The broker message of one shard: its envelope, message id `run:shard` and trace headers.
pub fn message_for(shard: &Shard) -> Result<OutgoingMessage> {
    Ok(message_with_body(shard, wire::encode_shard(shard)?))
}

/// The message of `shard` around its encoded envelope `body`.
fn message_with_body(shard: &Shard, body: Vec<u8>) -> OutgoingMessage {
    // Each message carries the trace context of its own publish span, a child of the
    // submit span, so the agent's processing joins the submit's trace.
    let span = info_span!("shard.publish", otel.kind = "producer", run = %shard.run_id, shard = %shard.shard_id,
        model = %shard.model, task = %shard.task, seed = shard.seed, messaging.system = "rabbitmq",
        messaging.operation.type = "publish");
    let mut headers = shared::telemetry::inject(&span);
    headers.insert("x-qsched-run".into(), shard.run_id.to_string());
    OutgoingMessage {
        class: shard.device_class,
        message_id: format!("{}:{}", shard.run_id, shard.shard_id),
        body,
        headers,
    }
}

/// Messages per [`Broker::publish`] call: the unit in which shards are marked queued once
/// the broker has confirmed them, and what an interrupted submit can leave half-sent.
const PUBLISH_BATCH: usize = 256;

/// Batches published at the same time, each on its own channel. A `publish` call returns
/// only when its last message is confirmed, and a quorum queue confirms in rounds (Raft
/// commits): with one batch at a time the pipe drains at the end of every batch and the
/// publisher waits, so the next batches are already being sent while one waits for its
/// last confirms, and the broker works on several channels at once. BENCHMARKS.md §6 has
/// the measurements behind 8 × 256 (with the broker's channels kept open between
/// batches). A broker that dies mid-submit leaves at most these 2,048 shards unmarked that
/// it may have stored, as many as the one batch of 2,048 of earlier builds: a resume
/// publishes them again, and agents settle the copies by the results-once rule.
const BATCHES_IN_FLIGHT: usize = 8;

/// Encodes every shard's envelope, refusing any the broker would not accept: a spec that
/// cannot be published is refused before anything is recorded. (The rest of a message,
/// its trace context and headers, is made afterwards by `messages_with_bodies`.)
fn encode_bodies(shards: &[Shard], limit: usize) -> Result<Vec<Vec<u8>>> {
    let encode = |shard: &Shard| -> Result<Vec<u8>> {
        let body = wire::encode_shard(shard)?;
        if body.len() > limit {
            return Err(Error::Shared(shared::Error::invalid(
                "spec",
                format!(
                    "shard {} ({} × {} seed {}) encodes to {} bytes, over the broker's {limit}-byte message \
                     limit (a long value in the spec, such as a model directory?)",
                    shard.shard_id,
                    shard.model,
                    shard.task,
                    shard.seed,
                    body.len()
                ),
            )));
        }
        Ok(body)
    };
    // Each chunk stops at its first refusal, so a spec whose every shard is too large
    // does not encode them all.
    let parts = par_chunks(shards.iter().collect(), |part| part.into_iter().map(encode).collect::<Result<Vec<_>>>());
    let mut bodies = Vec::with_capacity(shards.len());
    for part in parts {
        bodies.extend(part?);
    }
    Ok(bodies)
}

/// The messages of `shards` around their encoded envelopes, made on several threads for a
/// large run, each under the caller's span (so that every message's trace context is a
/// child of it, as when made in line).
fn messages_with_bodies(shards: &[Shard], bodies: Vec<Vec<u8>>) -> Vec<OutgoingMessage> {
    let parent = tracing::Span::current();
    let pairs: Vec<(&Shard, Vec<u8>)> = shards.iter().zip(bodies).collect();
    par_chunks(pairs, |part| {
        let _entered = parent.enter();
        part.into_iter().map(|(shard, body)| message_with_body(shard, body)).collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Where the time of a publish went (logged with the `published` event; read by
/// `ops/bench/publish_throughput.sh`).
#[derive(Debug, Default, Clone, Copy)]
struct PublishTimes {
    /// First publish to the last batch's confirms.
    publish: std::time::Duration,
    /// Time spent in `mark_published` calls, overlapping the publishing of later batches.
    mark: std::time::Duration,
    /// The last mark, after the last confirm: the part of `mark` nothing overlaps.
    last_mark: std::time::Duration,
}

/// Publishes one message per shard (`messages` in shard order) in confirmed batches, marking
/// each batch's shards queued once the broker has confirmed the whole batch while the next
/// batches are being published. The first failure stops new batches from starting; the
/// batches already under way are finished and those the broker confirmed are marked
/// queued, so that a resume does not publish them twice. The rest stays `unpublished`,
/// and the first error is returned.
async fn publish_recorded(
    run_id: &str,
    shards: &[Shard],
    messages: Vec<OutgoingMessage>,
    broker: &dyn Broker,
    store: &dyn Store,
) -> Result<PublishTimes> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesOrdered;
    use std::time::Instant;

    let started = Instant::now();
    let mut times = PublishTimes::default();
    let mut messages = messages.into_iter();
    let mut batches = shards.chunks(PUBLISH_BATCH).map(|batch| {
        let ids: Vec<String> = batch.iter().map(|s| s.shard_id.to_string()).collect();
        (ids, messages.by_ref().take(batch.len()).collect::<Vec<_>>())
    });
    let mut in_flight = FuturesOrdered::new();
    let mut failure: Option<Error> = None;
    // The ids of the last confirmed batch, marked while the next batches publish.
    let mut confirmed: Option<Vec<String>> = None;
    loop {
        while failure.is_none() && in_flight.len() < BATCHES_IN_FLIGHT {
            let Some((ids, messages)) = batches.next() else { break };
            in_flight.push_back(async move { (ids, broker.publish(messages).await) });
        }
        let next = match confirmed.take() {
            Some(ids) => {
                let mark = async {
                    let t = Instant::now();
                    (store.mark_published(run_id, &ids).await, t.elapsed())
                };
                let ((marked, took), next) = tokio::join!(mark, in_flight.next());
                times.mark += took;
                times.last_mark = took;
                if let Err(e) = marked {
                    failure.get_or_insert(e.into());
                }
                next
            }
            None => in_flight.next().await,
        };
        match next {
            Some((ids, Ok(()))) => confirmed = Some(ids),
            Some((_, Err(e))) => {
                failure.get_or_insert(e.into());
            }
            None => break,
        }
        // In-flight batches run out only once the last one has been sent and confirmed.
        if in_flight.is_empty() {
            times.publish = started.elapsed();
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(times),
    }
}

/// The result of a blocking job of `submit`; a panic in it is the caller's panic.
async fn joined<T>(job: tokio::task::JoinHandle<T>) -> Result<T> {
    match job.await {
        Ok(value) => Ok(value),
        // Expansion, encoding and message making return errors rather than panic; should
        // they ever panic, the submit panics as it did with them in line.
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Shared(shared::Error::Codec(format!("preparing the messages stopped: {e}")))),
    }
}

/// Records the run in the store, then publishes its shards (confirmed).
///
/// Every message is encoded and checked first, so a spec that cannot be published is
/// refused with nothing recorded. The record is written before publishing so that an
/// agent that picks a shard up at once finds its run; shards are recorded
/// `unpublished` and marked `queued` batch by batch as the broker confirms them. If
/// publishing is interrupted, `resume` publishes what is left.
///
/// Expansion and encoding run on blocking threads while the broker's topology is
/// declared, and the messages' trace contexts and headers are made while the run is
/// recorded; batches are published concurrently and marked as they are confirmed
/// (`publish_recorded`).
pub async fn submit(spec: &BenchmarkSpec, run_id: &RunId, broker: &dyn Broker, store: &dyn Store) -> Result<RunRecord> {
    let span =
        info_span!("submit", otel.kind = "producer", run = %run_id, name = %spec.name, scale = %spec.preset.name);
    async {
        use std::time::Instant;
        let started = Instant::now();
        let prepare = {
            let (spec, run_id) = (spec.clone(), run_id.clone());
            let (limit, parent) = (broker.max_message_bytes(), tracing::Span::current());
            tokio::task::spawn_blocking(move || {
                let _entered = info_span!(parent: &parent, "submit.prepare").entered();
                let t = Instant::now();
                let shards = expand(&spec, &run_id);
                let record = run_record(&spec, &run_id, &shards, shared::telemetry::traceparent(&parent));
                let expanded = t.elapsed();
                let bodies = encode_bodies(&shards, limit);
                (shards, record, bodies, expanded, t.elapsed() - expanded)
            })
        };
        // The topology is declared while that runs. A spec that cannot be published is
        // refused as such even when the declare fails too, and nothing is recorded
        // unless both succeed.
        let (declared, declare_time) = async {
            let t = Instant::now();
            (broker.declare().await, t.elapsed())
        }
        .instrument(info_span!("submit.declare"))
        .await;
        let (shards, record, bodies, expand_time, encode_time) = joined(prepare).await?;
        let bodies = bodies?;
        declared?;
        let body_bytes: usize = bodies.iter().map(Vec::len).sum();
        // The messages' trace contexts and headers are made while the run is recorded.
        let make_messages = {
            let parent = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _entered = parent.enter();
                let t = Instant::now();
                let messages = messages_with_bodies(&shards, bodies);
                (shards, messages, t.elapsed())
            })
        };
        let t = Instant::now();
        store.put_run(&record).instrument(info_span!("submit.record")).await?;
        let record_time = t.elapsed();
        let (shards, messages, messages_time) = joined(make_messages).await?;
        let times = publish_recorded(run_id, &shards, messages, broker, store)
            .instrument(info_span!("submit.publish", shards = shards.len()))
            .await?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        info!(
            shards = shards.len(),
            body_bytes,
            total_ms = ms(started.elapsed()),
            expand_ms = ms(expand_time),
            encode_ms = ms(encode_time),
            declare_ms = ms(declare_time),
            messages_ms = ms(messages_time),
            record_ms = ms(record_time),
            publish_ms = ms(times.publish),
            mark_ms = ms(times.mark),
            last_mark_ms = ms(times.last_mark),
            "published"
        );
        Ok(record)
    }
    .instrument(span)
    .await
}

/// Publishes the shards of an interrupted submit that the broker never confirmed (state
/// `unpublished`). Returns their ids; none when the submit had finished.
pub async fn resume(run_id: &str, broker: &dyn Broker, store: &dyn Store) -> Result<Vec<String>> {
    let span = info_span!("resume", otel.kind = "producer", run = %run_id);
    async {
        let record = store.get_run(run_id).await?.ok_or_else(|| Error::UnknownRun(run_id.to_owned()))?;
        let states = store.states(run_id).await?;
        let shards: Vec<Shard> = shards_of(&record)?
            .into_iter()
            .filter(|s| states.get(s.shard_id.as_str()).is_none_or(|st| *st == ShardState::Unpublished))
            .collect();
        let bodies = encode_bodies(&shards, broker.max_message_bytes())?;
        let messages = messages_with_bodies(&shards, bodies);
        broker.declare().await?;
        let times = publish_recorded(run_id, &shards, messages, broker, store).await?;
        info!(
            shards = shards.len(),
            publish_ms = times.publish.as_secs_f64() * 1e3,
            "published the rest of an interrupted submit"
        );
        Ok(shards.into_iter().map(|s| s.shard_id.to_string()).collect())
    }
    .instrument(span)
    .await
}

/// Re-expands a stored run's spec (same ids) — used by `retry`.
pub fn shards_of(record: &RunRecord) -> Result<Vec<Shard>> {
    let spec: BenchmarkSpec = serde_json::from_value(record.spec.clone())
        .map_err(|e| Error::CorruptRun { run: record.run_id.to_string(), message: e.to_string() })?;
    Ok(expand(&spec, &record.run_id))
}

/// Marks a run cancelled. Queued shards are acked without running when an agent
/// receives them; running shards are stopped by their agent.
pub async fn cancel(run_id: &str, store: &dyn Store) -> Result<BTreeMap<ShardState, usize>> {
    let record = store.get_run(run_id).await?.ok_or_else(|| Error::UnknownRun(run_id.to_owned()))?;
    store.cancel(run_id).await?;
    let states = store.states(run_id).await?;
    let mut counts = BTreeMap::new();
    for s in &record.shards {
        let state = states.get(&s.shard).copied().unwrap_or(ShardState::Queued);
        *counts.entry(state).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Which shards `retry` republishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySelection {
    /// Failed, dead-lettered and cancelled shards.
    Unsuccessful,
    /// Only failed and dead-lettered shards.
    FailedOnly,
}

/// Republishes a run's unsuccessful shards: clears the cancel flag, removes their
/// results, marks them queued and publishes them again. Returns the shard ids.
pub async fn retry(
    run_id: &str,
    selection: RetrySelection,
    broker: &dyn BrokerAdmin,
    store: &dyn Store,
) -> Result<Vec<String>> {
    let span = info_span!("retry", otel.kind = "producer", run = %run_id);
    async {
        let record = store.get_run(run_id).await?.ok_or_else(|| Error::UnknownRun(run_id.to_owned()))?;
        let mut states = store.states(run_id).await?;
        // Shards the broker dead-lettered on its own (their agent died on the last allowed
        // delivery) never got a result and still look queued or running: take them out of
        // the dead-letter queue and mark them dead, so they are retried and no stale copy
        // is left behind.
        for letter in broker.take_dead_letters(&format!("{run_id}:")).await? {
            let Some(shard) = letter.message_id.as_deref().and_then(|m| m.strip_prefix(&format!("{run_id}:"))) else {
                continue;
            };
            if !states.get(shard).is_some_and(|s| s.is_terminal()) {
                store.force_state(run_id, shard, ShardState::Dead).await?;
                states.insert(shard.to_owned(), ShardState::Dead);
            }
        }
        // Unpublished shards (an interrupted submit) have no message: always publish them.
        let wanted = |s: ShardState| match selection {
            RetrySelection::Unsuccessful => {
                matches!(s, ShardState::Failed | ShardState::Dead | ShardState::Cancelled | ShardState::Unpublished)
            }
            RetrySelection::FailedOnly => matches!(s, ShardState::Failed | ShardState::Dead | ShardState::Unpublished),
        };
        let shards: Vec<Shard> = shards_of(&record)?
            .into_iter()
            .filter(|s| states.get(s.shard_id.as_str()).copied().is_some_and(wanted))
            .collect();
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        store.uncancel(run_id).await?;
        for s in &shards {
            store.delete_result(run_id, &s.shard_id).await?;
            store.force_state(run_id, &s.shard_id, ShardState::Queued).await?;
        }
        broker.declare().await?;
        broker.publish(shards.iter().map(message_for).collect::<Result<Vec<_>>>()?).await?;
        info!(shards = shards.len(), "republished");
        Ok(shards.into_iter().map(|s| s.shard_id.to_string()).collect())
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::broker::MemoryBroker;
    use shared::spec::SpecInput;
    use shared::store::MemoryStore;
    use shared::{DeviceClass, ModelId, TaskId};

    /// Computed by the build before ids became types (commit ad1d009).
    const PINNED_FIRST_ID: &str = "cc790fe9ad5dccca";
    const PINNED_LAST_ID: &str = "5b95edc90eaadc59";

    fn r(id: &str) -> RunId {
        RunId::new(id).unwrap()
    }

    fn spec() -> BenchmarkSpec {
        SpecInput {
            // Named, not the default: the pinned ids below are of this content.
            scale: Some("tiny".into()),
            models: Some(vec!["qwen3".into(), "dizo-opt".into()]),
            tasks: Some(vec!["sst2".into(), "rte".into()]),
            seeds: Some(vec![1, 2, 3]),
            ..Default::default()
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn expansion_is_the_full_product_in_order() {
        let shards = expand(&spec(), &r("r1"));
        assert_eq!(shards.len(), 12);
        assert_eq!((shards[0].model, shards[0].task, shards[0].seed), (ModelId::Qwen3, TaskId::Sst2, 1));
        assert_eq!((shards[3].model, shards[3].task, shards[3].seed), (ModelId::Qwen3, TaskId::Rte, 1));
        assert_eq!((shards[11].model, shards[11].task, shards[11].seed), (ModelId::DizoOpt, TaskId::Rte, 3));
        assert!(shards.iter().enumerate().all(|(i, s)| s.index as usize == i && s.run_id == "r1"));
        // Method-specific settings.
        assert!(matches!(shards[0].arch, ModelArch::Qwen3(_)));
        assert!(shards[0].dizo.is_none());
        assert!(matches!(shards[6].arch, ModelArch::Opt(_)));
        assert!(shards[6].dizo.is_some());
        assert_eq!(shards[6].train, spec().preset.zeroth_order);
        assert!(shards.iter().all(|s| s.device_class == DeviceClass::Cpu));
    }

    #[test]
    fn ids_are_deterministic_unique_and_run_independent() {
        let a = expand(&spec(), &r("r1"));
        let b = expand(&spec(), &r("r2"));
        let ids: Vec<_> = a.iter().map(|s| s.shard_id.clone()).collect();
        assert_eq!(ids, b.iter().map(|s| s.shard_id.clone()).collect::<Vec<_>>());
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(ids.iter().all(|i| i.len() == 16 && i.chars().all(|c| c.is_ascii_hexdigit())));
        // A shard's id does not depend on the rest of the matrix.
        let mut alone = spec();
        alone.seeds = vec![3];
        alone.models = vec![shared::ModelId::DizoOpt];
        alone.tasks = vec![TaskId::Rte];
        assert_eq!(expand(&alone, &r("r9"))[0].shard_id, a[11].shard_id);
        // Changing a setting changes the ids.
        let mut other = spec();
        other.preset.first_order.max_steps += 1;
        assert_ne!(expand(&other, &r("r1"))[0].shard_id, a[0].shard_id);
    }

    /// A matrix large enough to be hashed and encoded on several threads comes out as
    /// it would in line: in order, each id the shard's content hash.
    #[test]
    fn large_expansions_match_the_serial_result() {
        let mut big = spec();
        big.seeds = (1..=2500).collect();
        let shards = expand(&big, &r("r1"));
        assert_eq!(shards.len(), 10_000);
        assert!(shards.len() >= 2 * PARALLEL_MIN_ITEMS);
        for (i, s) in shards.iter().enumerate() {
            assert_eq!(s.index as usize, i);
            assert_eq!(s.shard_id, s.content_id());
        }
        assert_eq!((shards[2500].model, shards[2500].task, shards[2500].seed), (ModelId::Qwen3, TaskId::Rte, 1));
        let bodies = encode_bodies(&shards, usize::MAX).unwrap();
        let messages = messages_with_bodies(&shards, bodies);
        for (s, m) in shards.iter().zip(&messages) {
            assert_eq!(m.message_id, format!("r1:{}", s.shard_id));
            assert_eq!(wire::decode_shard(&m.body, usize::MAX).unwrap(), *s);
        }
    }

    /// Shard ids name stored results: they must not change between builds.
    #[test]
    fn ids_are_pinned_across_builds() {
        let ids: Vec<String> = expand(&spec(), &r("r1")).iter().map(|s| s.shard_id.to_string()).collect();
        assert_eq!(ids[0], PINNED_FIRST_ID);
        assert_eq!(ids[11], PINNED_LAST_ID);
    }

    #[test]
    fn run_ids_are_dated_and_unique() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(a.starts_with("r-20") && a.len() == "r-20261126-010203-abcdef".len(), "{a}");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }

    #[tokio::test]
    async fn submit_records_then_publishes() {
        let broker = MemoryBroker::default();
        let store = MemoryStore::new();
        let record = submit(&spec(), &r("r1"), &broker, &store).await.unwrap();
        assert_eq!(record.shard_count, 12);
        assert_eq!(broker.queue_depth(DeviceClass::Cpu).await.unwrap(), 12);
        let states = store.states("r1").await.unwrap();
        assert_eq!(states.len(), 12);
        assert!(states.values().all(|s| *s == ShardState::Queued));
        // Nothing left to resume.
        assert!(resume("r1", &broker, &store).await.unwrap().is_empty());
        let stored = store.get_run("r1").await.unwrap().unwrap();
        assert_eq!(shards_of(&stored).unwrap(), expand(&spec(), &r("r1")));
    }

    /// A broker that confirms `allowed` messages and then fails, like one killed mid-submit;
    /// and that refuses any batch holding the message `refused` (a nack).
    struct DiesAfter {
        inner: MemoryBroker,
        allowed: std::sync::atomic::AtomicUsize,
        refused: Option<String>,
    }

    #[async_trait::async_trait]
    impl shared::broker::Broker for DiesAfter {
        async fn declare(&self) -> shared::Result<()> {
            self.inner.declare().await
        }
        async fn publish(&self, messages: Vec<OutgoingMessage>) -> shared::Result<()> {
            use std::sync::atomic::Ordering;
            if let Some(id) = messages.iter().map(|m| &m.message_id).find(|id| Some(*id) == self.refused.as_ref()) {
                return Err(shared::Error::NotConfirmed { message_id: id.clone(), reason: "nacked".into() });
            }
            let n = messages.len();
            if self.allowed.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |a| a.checked_sub(n)).is_err() {
                return Err(shared::Error::Broker {
                    url: "amqp://test".into(),
                    message: "killed".into(),
                    transient: true,
                });
            }
            self.inner.publish(messages).await
        }
        async fn consume(
            &self,
            class: DeviceClass,
            tag: &str,
        ) -> shared::Result<Box<dyn shared::broker::ShardConsumer>> {
            self.inner.consume(class, tag).await
        }
        async fn dead_letter(
            &self,
            body: Vec<u8>,
            headers: BTreeMap<String, String>,
            reason: &str,
        ) -> shared::Result<()> {
            self.inner.dead_letter(body, headers, reason).await
        }
        fn max_message_bytes(&self) -> usize {
            self.inner.max_message_bytes()
        }
    }

    #[tokio::test]
    async fn an_interrupted_submit_is_resumed_without_duplicates() {
        let inner = MemoryBroker::default();
        let store = MemoryStore::new();
        let mut big = spec();
        big.seeds = (1..=2500).collect();
        let run = r("r1");
        // The broker dies after the first confirmed batch.
        let dying = DiesAfter { inner: inner.clone(), allowed: PUBLISH_BATCH.into(), refused: None };
        let err = submit(&big, &run, &dying, &store).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        let states = store.states("r1").await.unwrap();
        let count = |want: ShardState| states.values().filter(|s| **s == want).count();
        assert_eq!(count(ShardState::Queued), PUBLISH_BATCH);
        assert_eq!(count(ShardState::Unpublished), 10_000 - PUBLISH_BATCH);
        // Resume publishes exactly the rest.
        let again = resume("r1", &inner, &store).await.unwrap();
        assert_eq!(again.len(), 10_000 - PUBLISH_BATCH);
        assert_eq!(inner.queue_depth(DeviceClass::Cpu).await.unwrap(), 10_000);
        assert!(store.states("r1").await.unwrap().values().all(|s| *s == ShardState::Queued));
        assert!(resume("r1", &inner, &store).await.unwrap().is_empty());
    }

    /// Batches are published concurrently: when one fails, the ones already under way
    /// that the broker confirmed are marked queued, so a resume publishes each shard once.
    #[tokio::test]
    async fn a_failed_batch_leaves_the_batches_under_way_marked_and_the_rest_resumable() {
        let inner = MemoryBroker::default();
        let store = MemoryStore::new();
        let mut big = spec();
        big.seeds = (1..=2500).collect();
        let run = r("r1");
        let second_batch = &expand(&big, &run)[PUBLISH_BATCH];
        let refused = Some(format!("r1:{}", second_batch.shard_id));
        let failing = DiesAfter { inner: inner.clone(), allowed: usize::MAX.into(), refused };
        let err = submit(&big, &run, &failing, &store).await.unwrap_err();
        assert!(matches!(err, Error::Shared(shared::Error::NotConfirmed { .. })), "{err}");
        // The first batch and those started before the failure was seen went through and
        // are marked queued; exactly those are in the queue.
        let states = store.states("r1").await.unwrap();
        let count = |want: ShardState| states.values().filter(|s| **s == want).count();
        let published = count(ShardState::Queued);
        assert!(published >= PUBLISH_BATCH && published % PUBLISH_BATCH == 0, "{published}");
        assert!(published < 10_000 - PUBLISH_BATCH, "{published}: publishing stopped");
        assert_eq!(count(ShardState::Unpublished), 10_000 - published);
        assert_eq!(states[second_batch.shard_id.as_str()], ShardState::Unpublished);
        assert_eq!(inner.queue_depth(DeviceClass::Cpu).await.unwrap(), published as u64);
        // Resume publishes the rest and nothing twice.
        let again = resume("r1", &inner, &store).await.unwrap();
        assert_eq!(again.len(), 10_000 - published);
        assert_eq!(inner.queue_depth(DeviceClass::Cpu).await.unwrap(), 10_000);
        assert!(store.states("r1").await.unwrap().values().all(|s| *s == ShardState::Queued));
    }

    #[tokio::test]
    async fn a_spec_that_cannot_be_published_is_refused_before_it_is_recorded() {
        let broker = MemoryBroker::default();
        let store = MemoryStore::new();
        let mut huge = spec();
        huge.opt_init = shared::spec::ModelInit::Pretrained { dir: format!("/{}", "m".repeat(2 << 20)) };
        let err = submit(&huge, &r("r1"), &broker, &store).await.unwrap_err().to_string();
        assert!(err.contains("over the broker's 1048576-byte message limit"), "{err}");
        assert!(store.get_run("r1").await.unwrap().is_none(), "nothing recorded");
        assert_eq!(broker.queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn retry_republishes_only_unsuccessful() {
        let broker = MemoryBroker::default();
        let store = MemoryStore::new();
        let record = submit(&spec(), &r("r1"), &broker, &store).await.unwrap();
        let ids: Vec<_> = record.shards.iter().map(|s| s.shard.clone()).collect();
        store.force_state("r1", &ids[0], ShardState::Failed).await.unwrap();
        store.force_state("r1", &ids[1], ShardState::Succeeded).await.unwrap();
        store.force_state("r1", &ids[2], ShardState::Cancelled).await.unwrap();
        let again = retry("r1", RetrySelection::FailedOnly, &broker, &store).await.unwrap();
        assert_eq!(again, vec![ids[0].clone()]);
        assert_eq!(store.states("r1").await.unwrap()[&ids[0]], ShardState::Queued);
        let again = retry("r1", RetrySelection::Unsuccessful, &broker, &store).await.unwrap();
        assert_eq!(again, vec![ids[2].clone()]);
        assert_eq!(broker.queue_depth(DeviceClass::Cpu).await.unwrap(), 14);
        assert!(matches!(
            retry("nope", RetrySelection::Unsuccessful, &broker, &store).await,
            Err(Error::UnknownRun(_))
        ));
    }

    #[tokio::test]
    async fn retry_recovers_shards_the_broker_dead_lettered() {
        use shared::broker::Broker as _;
        let broker = MemoryBroker::new(1);
        let store = MemoryStore::new();
        let record = submit(&spec(), &r("r1"), &broker, &store).await.unwrap();
        // An agent takes the first shard, marks it running and dies: with a delivery
        // limit of 1 the broker dead-letters it; its state still says running.
        let mut c = broker.consume(DeviceClass::Cpu, "t").await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        let first = record.shards[0].shard.clone();
        store.set_state("r1", &first, ShardState::Running).await.unwrap();
        drop(d);
        drop(c);
        assert_eq!(broker.dead_letters(10).await.unwrap().len(), 1);
        let again = retry("r1", RetrySelection::FailedOnly, &broker, &store).await.unwrap();
        assert_eq!(again, vec![first.clone()]);
        assert_eq!(store.states("r1").await.unwrap()[&first], ShardState::Queued);
        assert!(broker.dead_letters(10).await.unwrap().is_empty(), "the stale dead letter is gone");
    }
}
