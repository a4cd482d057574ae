//! The embedded on-disk implementation of [`Store`]: what `qsched submit --local` records
//! its runs in, so that `qsched results|status|compare|plot RUN --local` read them back
//! later with no Redis.
//!
//! One [redb](https://docs.rs/redb/2) file (pure Rust, crash-safe, ACID transactions)
//! holds one table per kind of record; values are JSON, as in Redis. The rules of the
//! trait hold because every operation is one redb transaction and redb runs write
//! transactions one at a time: `set_state` never replaces a terminal state, `put_result`
//! writes a result at most once and sets the shard's state in the same commit.
//!
//! - **One process at a time.** redb locks the file (`flock`, exclusive) for as long as it
//!   is open; a second `qsched` opening it while a local run is going gets
//!   [`Error::LocalStoreBusy`], naming the file. redb 2 has no shared read-only mode.
//! - **Heartbeats are kept in memory only.** The agents that beat are the local run's own,
//!   inside the process that holds the file: they die with it, and no other process can
//!   open the file while they live, so a heartbeat written to disk could only ever be
//!   read back stale.
//! - **Durability.** Progress and metric points (the frequent small writes) commit with
//!   redb's `Eventual` durability (queued for the disk, not waited for); everything else
//!   (runs, states, results, attempts, cancel flags, dead letters) is on disk when the
//!   call returns, and makes the earlier eventual commits durable with it.
//! - Blocking file I/O runs on tokio's blocking pool, never on an async worker.
//!
//! redb is 2.6 because later majors need a newer Rust than the workspace's `rust-version`.
//! Files are created in redb's v3 file format, which redb 3 and 4 open without an upgrade,
//! and keys are plain strings (tuple keys are encoded differently from redb 3 on).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, DatabaseError, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::redis_store::DEAD_LETTER_RECORDS_KEPT;
use crate::shard::{AgentHeartbeat, MetricPoint, RunRecord, ShardResult, ShardState, unix_now};
use crate::store::{AttemptError, DeadLetterRecord, METRIC_STREAM_MAXLEN, Progress, Store, may_overwrite};

/// Environment variable naming the store file (`--local-store` overrides it).
pub const LOCAL_STORE_ENV: &str = "QSCHED_LOCAL_STORE";

/// File name of the default store, under `$XDG_DATA_HOME/qsched/`.
pub const DEFAULT_FILE_NAME: &str = "local.redb";

/// Version of the table layout below; a file written by a later layout is refused.
const SCHEMA_VERSION: u32 = 1;

/// `"schema"` → [`SCHEMA_VERSION`].
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
/// run → run record.
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// run/shard → state.
const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("states");
/// run/shard → delivery attempts.
const ATTEMPTS: TableDefinition<&str, u32> = TableDefinition::new("attempts");
/// run/shard/attempt → why that attempt failed.
const ATTEMPT_ERRORS: TableDefinition<&str, &[u8]> = TableDefinition::new("attempt_errors");
/// run/shard → live progress.
const PROGRESS: TableDefinition<&str, &[u8]> = TableDefinition::new("progress");
/// run/shard/sequence → metric point; sequences are contiguous per stream.
const METRICS: TableDefinition<&str, &[u8]> = TableDefinition::new("metrics");
/// run/shard → final result.
const RESULTS: TableDefinition<&str, &[u8]> = TableDefinition::new("results");
/// Cancelled runs.
const CANCELLED: TableDefinition<&str, ()> = TableDefinition::new("cancelled");
/// sequence → dead-letter record (the newest has the highest sequence).
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");

/// Joins the parts of a key. Keys are plain strings (their encoding is the same in every
/// redb version, unlike tuples'); NUL cannot occur in a run or shard id (nor in a
/// command-line argument), so `run\0` is a prefix of exactly that run's keys. Numbers are
/// fixed-width hex so that keys sort in numeric order.
fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// The prefix of every key of `run` (or of `run`'s `shard`, given both).
fn prefix(parts: &[&str]) -> String {
    let mut p = key(parts);
    p.push('\0');
    p
}

fn seq_key(run: &str, shard: &str, seq: u64) -> String {
    key(&[run, shard, &format!("{seq:016x}")])
}

/// The store file to use: `flag` (`--local-store`), else `$QSCHED_LOCAL_STORE`, else
/// `$XDG_DATA_HOME/qsched/local.redb`, else `$HOME/.local/share/qsched/local.redb`.
///
/// `env` reads an environment variable (`std::env::var_os` outside tests); empty values
/// count as unset and a relative `XDG_DATA_HOME` is ignored, as the XDG spec says. With
/// neither home variable there is no default: an error says to pass `--local-store`.
pub fn store_path(flag: Option<&Path>, env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_owned());
    }
    let var = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = var(LOCAL_STORE_ENV) {
        return Ok(path);
    }
    let data_home = match (var("XDG_DATA_HOME").filter(|p| p.is_absolute()), var("HOME")) {
        (Some(xdg), _) => xdg,
        (None, Some(home)) => home.join(".local").join("share"),
        (None, None) => {
            return Err(Error::invalid(
                "local store",
                format!(
                    "neither XDG_DATA_HOME nor HOME is set, so there is no default place for it: \
                     pass --local-store FILE (or set {LOCAL_STORE_ENV})"
                ),
            ));
        }
    };
    Ok(data_home.join("qsched").join(DEFAULT_FILE_NAME))
}

/// A failure inside a transaction, before it is tied to the file's path.
#[derive(Debug)]
enum Fail {
    /// Boxed: redb's error is large, and every result in here carries this type.
    Db(Box<redb::Error>),
    Json(serde_json::Error),
    Schema(u32),
}

macro_rules! fail_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Db(Box::new(e.into()))
            }
        }
    )*};
}
fail_from_redb!(redb::Error, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

impl From<serde_json::Error> for Fail {
    fn from(e: serde_json::Error) -> Self {
        Fail::Json(e)
    }
}

type Tx<T> = std::result::Result<T, Fail>;

fn encode<T: Serialize>(value: &T) -> Tx<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Tx<T> {
    Ok(serde_json::from_slice(bytes)?)
}

/// The embedded store in one redb file; see the module docs.
#[derive(Clone)]
pub struct LocalStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    /// Agent heartbeats with their expiry (unix seconds): in memory only, see the module docs.
    agents: Arc<Mutex<BTreeMap<String, (AgentHeartbeat, f64)>>>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl LocalStore {
    /// Opens the store at `path`, creating the file and its folders when missing (what
    /// `submit --local` does).
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_owned(), source })?;
        }
        Self::open_with(path, true)
    }

    /// Opens an existing store (what the read commands do): a missing file is an error
    /// saying that `submit --local` creates it, rather than a new empty store.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::LocalStore {
                path: path.to_owned(),
                message:
                    "no such file: `qsched submit --local` creates it (pass the same --local-store as the submit did)"
                        .to_owned(),
            });
        }
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Self> {
        let mut builder = Database::builder();
        builder.create_with_file_format_v3(true);
        let opened = if create { builder.create(path) } else { builder.open(path) };
        let db = opened.map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => Error::LocalStoreBusy { path: path.to_owned() },
            other => Error::LocalStore { path: path.to_owned(), message: other.to_string() },
        })?;
        let store = LocalStore {
            db: Arc::new(db),
            path: Arc::new(path.to_owned()),
            agents: Arc::new(Mutex::new(BTreeMap::new())),
        };
        store.init().map_err(|e| store.error(e))?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the tables of a new file and checks the layout version of an old one.
    fn init(&self) -> Tx<()> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema")?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => return Err(Fail::Schema(v)),
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA_VERSION)?;
                }
            }
            tx.open_table(RUNS)?;
            tx.open_table(STATES)?;
            tx.open_table(ATTEMPTS)?;
            tx.open_table(ATTEMPT_ERRORS)?;
            tx.open_table(PROGRESS)?;
            tx.open_table(METRICS)?;
            tx.open_table(RESULTS)?;
            tx.open_table(CANCELLED)?;
            tx.open_table(DEAD_LETTERS)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn error(&self, fail: Fail) -> Error {
        let message = match fail {
            Fail::Db(e) => e.to_string(),
            Fail::Json(e) => format!("a stored record does not decode: {e}"),
            Fail::Schema(v) => format!(
                "written by a newer qsched (table layout {v}; this one reads {SCHEMA_VERSION}): \
                 use that qsched, or another --local-store"
            ),
        };
        Error::LocalStore { path: self.path.as_ref().clone(), message }
    }

    /// Runs `f` on tokio's blocking pool.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Database) -> Tx<T> + Send + 'static) -> Result<T> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(join) => Err(Error::LocalStore {
                path: self.path.as_ref().clone(),
                message: format!("a store operation did not finish: {join}"),
            }),
        }
    }

    /// Runs `f` in one write transaction and commits it with `durability`.
    async fn write<T: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Tx<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(move |db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability);
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` in one read transaction.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Tx<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(move |db| f(&db.begin_read()?)).await
    }

    fn agents_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (AgentHeartbeat, f64)>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every `(rest of the key, value)` under `prefix`, in key order.
fn under<V: redb::Value + 'static, R>(
    table: &impl ReadableTable<&'static str, V>,
    prefix: &str,
    mut value: impl FnMut(&str, V::SelfType<'_>) -> Tx<R>,
) -> Tx<Vec<R>> {
    let mut out = Vec::new();
    for entry in table.range(prefix..)? {
        let (k, v) = entry?;
        let Some(rest) = k.value().strip_prefix(prefix) else { break };
        out.push(value(rest, v.value())?);
    }
    Ok(out)
}

/// Every `(shard, value)` of one run in a table keyed by run/shard.
fn per_shard<V: redb::Value + 'static, R>(
    table: &impl ReadableTable<&'static str, V>,
    run: &str,
    mut value: impl FnMut(V::SelfType<'_>) -> Tx<R>,
) -> Tx<BTreeMap<String, R>> {
    Ok(under(table, &prefix(&[run]), |shard, v| Ok((shard.to_owned(), value(v)?)))?.into_iter().collect())
}

/// The sequence number at the end of a metric key.
fn seq_of(k: &str) -> u64 {
    k.rsplit('\0').next().and_then(|hex| u64::from_str_radix(hex, 16).ok()).unwrap_or(0)
}

/// First and last sequence of a shard's metric stream.
fn stream_bounds(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    run: &str,
    shard: &str,
) -> Tx<Option<(u64, u64)>> {
    let (from, to) = (seq_key(run, shard, 0), seq_key(run, shard, u64::MAX));
    let mut range = table.range(from.as_str()..=to.as_str())?;
    let first = match range.next() {
        Some(entry) => seq_of(entry?.0.value()),
        None => return Ok(None),
    };
    let last = match range.next_back() {
        Some(entry) => seq_of(entry?.0.value()),
        None => first,
    };
    Ok(Some((first, last)))
}

#[async_trait]
impl Store for LocalStore {
    async fn put_run(&self, record: &RunRecord) -> Result<()> {
        let run = record.run_id.to_string();
        let bytes = encode(record).map_err(|e| self.error(e))?;
        let keys: Vec<String> = record.shards.iter().map(|s| key(&[&run, &s.shard])).collect();
        self.write(Durability::Immediate, move |tx| {
            let mut states = tx.open_table(STATES)?;
            let unpublished = encode(&ShardState::Unpublished)?;
            for k in &keys {
                if states.get(k.as_str())?.is_none() {
                    states.insert(k.as_str(), unpublished.as_slice())?;
                }
            }
            tx.open_table(RUNS)?.insert(run.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn mark_published(&self, run: &str, shards: &[String]) -> Result<()> {
        let keys: Vec<String> = shards.iter().map(|s| key(&[run, s])).collect();
        self.write(Durability::Immediate, move |tx| {
            let mut states = tx.open_table(STATES)?;
            let queued = encode(&ShardState::Queued)?;
            for k in &keys {
                let current: Option<ShardState> = states.get(k.as_str())?.map(|v| decode(v.value())).transpose()?;
                if current == Some(ShardState::Unpublished) {
                    states.insert(k.as_str(), queued.as_slice())?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn get_run(&self, run: &str) -> Result<Option<RunRecord>> {
        let run = run.to_owned();
        self.read(move |tx| tx.open_table(RUNS)?.get(run.as_str())?.map(|v| decode(v.value())).transpose()).await
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<String>> {
        self.read(move |tx| {
            let mut runs = Vec::new();
            for entry in tx.open_table(RUNS)?.iter()? {
                let (_, v) = entry?;
                let record: RunRecord = decode(v.value())?;
                runs.push((record.created_at, record.run_id.to_string()));
            }
            runs.sort_by(|a, b| b.0.total_cmp(&a.0));
            Ok(runs.into_iter().take(limit).map(|(_, id)| id).collect())
        })
        .await
    }

    async fn set_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()> {
        let k = key(&[run, shard]);
        self.write(Durability::Immediate, move |tx| {
            let mut states = tx.open_table(STATES)?;
            let current: Option<ShardState> = states.get(k.as_str())?.map(|v| decode(v.value())).transpose()?;
            if may_overwrite(current) {
                states.insert(k.as_str(), encode(&state)?.as_slice())?;
            }
            Ok(())
        })
        .await
    }

    async fn force_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()> {
        let k = key(&[run, shard]);
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(STATES)?.insert(k.as_str(), encode(&state)?.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn states(&self, run: &str) -> Result<BTreeMap<String, ShardState>> {
        let run = run.to_owned();
        self.read(move |tx| per_shard(&tx.open_table(STATES)?, &run, decode)).await
    }

    async fn incr_attempt(&self, run: &str, shard: &str) -> Result<u32> {
        let k = key(&[run, shard]);
        self.write(Durability::Immediate, move |tx| {
            let mut attempts = tx.open_table(ATTEMPTS)?;
            let n = attempts.get(k.as_str())?.map_or(0, |v| v.value()) + 1;
            attempts.insert(k.as_str(), n)?;
            Ok(n)
        })
        .await
    }

    async fn attempts(&self, run: &str) -> Result<BTreeMap<String, u32>> {
        let run = run.to_owned();
        self.read(move |tx| per_shard(&tx.open_table(ATTEMPTS)?, &run, Ok)).await
    }

    async fn record_attempt_error(&self, run: &str, shard: &str, error: &AttemptError) -> Result<()> {
        let k = key(&[run, shard, &format!("{:08x}", error.attempt)]);
        let bytes = encode(error).map_err(|e| self.error(e))?;
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(ATTEMPT_ERRORS)?.insert(k.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn attempt_errors(&self, run: &str) -> Result<BTreeMap<String, Vec<AttemptError>>> {
        let run = run.to_owned();
        self.read(move |tx| {
            let mut out: BTreeMap<String, Vec<AttemptError>> = BTreeMap::new();
            let table = tx.open_table(ATTEMPT_ERRORS)?;
            // shard\0attempt, in attempt order within each shard.
            let errors = under(&table, &prefix(&[&run]), |rest, v| {
                let shard = rest.split('\0').next().unwrap_or(rest).to_owned();
                Ok((shard, decode(v)?))
            })?;
            for (shard, error) in errors {
                out.entry(shard).or_default().push(error);
            }
            Ok(out)
        })
        .await
    }

    async fn set_progress(&self, run: &str, shard: &str, progress: &Progress) -> Result<()> {
        let k = key(&[run, shard]);
        let bytes = encode(progress).map_err(|e| self.error(e))?;
        self.write(Durability::Eventual, move |tx| {
            tx.open_table(PROGRESS)?.insert(k.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn progress(&self, run: &str) -> Result<BTreeMap<String, Progress>> {
        let run = run.to_owned();
        self.read(move |tx| per_shard(&tx.open_table(PROGRESS)?, &run, decode)).await
    }

    async fn append_metrics(&self, run: &str, shard: &str, points: &[MetricPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let (run, shard) = (run.to_owned(), shard.to_owned());
        let encoded = points.iter().map(encode).collect::<Tx<Vec<_>>>().map_err(|e| self.error(e))?;
        self.write(Durability::Eventual, move |tx| {
            let mut table = tx.open_table(METRICS)?;
            let bounds = stream_bounds(&table, &run, &shard)?;
            let mut next = bounds.map_or(0, |(_, last)| last + 1);
            for bytes in &encoded {
                table.insert(seq_key(&run, &shard, next).as_str(), bytes.as_slice())?;
                next += 1;
            }
            // Keep the newest METRIC_STREAM_MAXLEN points: drop from the front.
            let first = bounds.map_or(0, |(first, _)| first);
            let excess = (next - first).saturating_sub(METRIC_STREAM_MAXLEN as u64);
            for seq in first..first + excess {
                table.remove(seq_key(&run, &shard, seq).as_str())?;
            }
            Ok(())
        })
        .await
    }

    async fn metrics(&self, run: &str, shard: &str, count: usize) -> Result<Vec<MetricPoint>> {
        let (from, to) = (seq_key(run, shard, 0), seq_key(run, shard, u64::MAX));
        self.read(move |tx| {
            let table = tx.open_table(METRICS)?;
            let mut points = Vec::new();
            for entry in table.range(from.as_str()..=to.as_str())?.rev().take(count) {
                points.push(decode(entry?.1.value())?);
            }
            points.reverse();
            Ok(points)
        })
        .await
    }

    async fn put_result(&self, result: &ShardResult) -> Result<bool> {
        let (k, status) = (key(&[&result.run, &result.shard]), result.status);
        let bytes = encode(result).map_err(|e| self.error(e))?;
        self.write(Durability::Immediate, move |tx| {
            let mut results = tx.open_table(RESULTS)?;
            if results.get(k.as_str())?.is_some() {
                return Ok(false);
            }
            results.insert(k.as_str(), bytes.as_slice())?;
            tx.open_table(STATES)?.insert(k.as_str(), encode(&status)?.as_slice())?;
            Ok(true)
        })
        .await
    }

    async fn get_result(&self, run: &str, shard: &str) -> Result<Option<ShardResult>> {
        let k = key(&[run, shard]);
        self.read(move |tx| tx.open_table(RESULTS)?.get(k.as_str())?.map(|v| decode(v.value())).transpose()).await
    }

    async fn results(&self, run: &str) -> Result<Vec<ShardResult>> {
        let run = run.to_owned();
        self.read(move |tx| Ok(per_shard(&tx.open_table(RESULTS)?, &run, decode)?.into_values().collect())).await
    }

    async fn delete_result(&self, run: &str, shard: &str) -> Result<bool> {
        let k = key(&[run, shard]);
        self.write(Durability::Immediate, move |tx| Ok(tx.open_table(RESULTS)?.remove(k.as_str())?.is_some())).await
    }

    async fn heartbeat(&self, beat: &AgentHeartbeat, ttl: Duration) -> Result<()> {
        self.agents_lock().insert(beat.agent.clone(), (beat.clone(), unix_now() + ttl.as_secs_f64()));
        Ok(())
    }

    async fn agents(&self) -> Result<Vec<AgentHeartbeat>> {
        let now = unix_now();
        Ok(self.agents_lock().values().filter(|(_, exp)| *exp > now).map(|(b, _)| b.clone()).collect())
    }

    async fn remove_agent(&self, agent: &str) -> Result<()> {
        self.agents_lock().remove(agent);
        Ok(())
    }

    async fn cancel(&self, run: &str) -> Result<()> {
        let run = run.to_owned();
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(CANCELLED)?.insert(run.as_str(), ())?;
            Ok(())
        })
        .await
    }

    async fn uncancel(&self, run: &str) -> Result<()> {
        let run = run.to_owned();
        self.write(Durability::Immediate, move |tx| {
            tx.open_table(CANCELLED)?.remove(run.as_str())?;
            Ok(())
        })
        .await
    }

    async fn is_cancelled(&self, run: &str) -> Result<bool> {
        let run = run.to_owned();
        self.read(move |tx| Ok(tx.open_table(CANCELLED)?.get(run.as_str())?.is_some())).await
    }

    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<()> {
        let bytes = encode(record).map_err(|e| self.error(e))?;
        self.write(Durability::Immediate, move |tx| {
            let mut table = tx.open_table(DEAD_LETTERS)?;
            let next = table.last()?.map_or(0, |(k, _)| k.value() + 1);
            table.insert(next, bytes.as_slice())?;
            // As many are kept as in Redis.
            while table.len()? > DEAD_LETTER_RECORDS_KEPT as u64 {
                table.pop_first()?;
            }
            Ok(())
        })
        .await
    }

    async fn dead_letter_records(&self, limit: usize) -> Result<Vec<DeadLetterRecord>> {
        self.read(move |tx| {
            let mut out = Vec::new();
            for entry in tx.open_table(DEAD_LETTERS)?.iter()?.rev().take(limit) {
                out.push(decode(entry?.1.value())?);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(&dir.path().join("deep/er/local.redb")).unwrap();
        conformance::check(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn everything_but_heartbeats_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.redb");
        {
            let store = LocalStore::create(&path).unwrap();
            store.put_run(&RunRecord::sample("r1", 1.0, &["s1", "s2"])).await.unwrap();
            store.put_result(&ShardResult::sample("r1", "s1", "agent-1")).await.unwrap();
            store.set_state("r1", "s2", ShardState::Running).await.unwrap();
            store.append_metrics("r1", "s1", &[conformance::point(1), conformance::point(2)]).await.unwrap();
            store.incr_attempt("r1", "s2").await.unwrap();
            store.cancel("r1").await.unwrap();
            let beat = AgentHeartbeat::sample("a", 0.0);
            store.heartbeat(&beat, Duration::from_secs(60)).await.unwrap();
            assert_eq!(store.agents().await.unwrap().len(), 1);
        }
        let store = LocalStore::open(&path).unwrap();
        assert_eq!(store.list_runs(10).await.unwrap(), ["r1"]);
        assert_eq!(store.results("r1").await.unwrap(), [ShardResult::sample("r1", "s1", "agent-1")]);
        let states = store.states("r1").await.unwrap();
        assert_eq!((states["s1"], states["s2"]), (ShardState::Succeeded, ShardState::Running));
        assert_eq!(store.metrics("r1", "s1", 10).await.unwrap(), [conformance::point(1), conformance::point(2)]);
        assert_eq!(store.attempts("r1").await.unwrap()["s2"], 1);
        assert!(store.is_cancelled("r1").await.unwrap());
        assert!(store.agents().await.unwrap().is_empty(), "heartbeats die with the process");
        // Appending goes on after the stream's last point.
        store.append_metrics("r1", "s1", &[conformance::point(3)]).await.unwrap();
        assert_eq!(store.metrics("r1", "s1", 1).await.unwrap(), [conformance::point(3)]);
    }

    #[test]
    fn a_second_opener_is_told_which_file_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.redb");
        let first = LocalStore::create(&path).unwrap();
        // redb's lock is flock(2), held per open file: a second open in this process is
        // refused exactly as one from another process is.
        for second in [LocalStore::open(&path), LocalStore::create(&path)] {
            let err = second.unwrap_err();
            assert!(matches!(&err, Error::LocalStoreBusy { path: p } if *p == path), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(path.to_str().unwrap()) && text.contains("--local-store"), "{text}");
        }
        drop(first);
        LocalStore::open(&path).unwrap();
    }

    #[test]
    fn a_missing_or_foreign_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.redb");
        let err = LocalStore::open(&missing).unwrap_err().to_string();
        assert!(err.contains("none.redb") && err.contains("submit --local"), "{err}");
        assert!(!missing.exists(), "reading never creates the file");
        let foreign = dir.path().join("notes.txt");
        std::fs::write(&foreign, "not a database, but long enough to have a header of some sort").unwrap();
        let err = LocalStore::open(&foreign).unwrap_err();
        assert!(matches!(&err, Error::LocalStore { path, .. } if *path == foreign), "{err:?}");
    }

    #[test]
    fn a_file_of_a_newer_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.redb");
        drop(LocalStore::create(&path).unwrap());
        let db = Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META).unwrap().insert("schema", SCHEMA_VERSION + 1).unwrap();
        tx.commit().unwrap();
        drop(db);
        let err = LocalStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("written by a newer qsched") && err.contains("local.redb"), "{err}");
    }

    #[test]
    fn the_store_path_comes_from_the_flag_the_environment_or_the_data_home() {
        let flag = Path::new("/x/flag.redb");
        let all = [(LOCAL_STORE_ENV, "/x/env.redb"), ("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(store_path(Some(flag), env(&all)).unwrap(), flag);
        assert_eq!(store_path(None, env(&all)).unwrap(), Path::new("/x/env.redb"));
        let homes = [(LOCAL_STORE_ENV, ""), ("XDG_DATA_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(store_path(None, env(&homes)).unwrap(), Path::new("/xdg/qsched/local.redb"));
        let relative_xdg = [("XDG_DATA_HOME", "rel"), ("HOME", "/home/u")];
        assert_eq!(store_path(None, env(&relative_xdg)).unwrap(), Path::new("/home/u/.local/share/qsched/local.redb"));
        assert_eq!(
            store_path(None, env(&[("HOME", "/home/u")])).unwrap(),
            Path::new("/home/u/.local/share/qsched/local.redb")
        );
        let err = store_path(None, env(&[("HOME", "")])).unwrap_err().to_string();
        assert!(err.contains("--local-store"), "{err}");
        assert_eq!(store_path(Some(flag), env(&[])).unwrap(), flag, "the flag needs no home");
    }
}
