//! The Redis implementation of [`Store`] (redis-rs 1.8, `ConnectionManager`).
//!
//! This module owns how qsched's state is laid out in Redis values and how every command
//! survives a flaky connection; key names come from [`crate::keys::Keys`].
//!
//! - Values are JSON so that `redis-cli GET <key>` is readable; shard states are bare names
//!   (`queued`, `running`, …) in one hash per run.
//! - The two invariants of the store are enforced inside Redis by Lua scripts, atomically:
//!   `set_state` never replaces a terminal state, and `put_result` writes a result at most
//!   once (`SET NX`) and sets the shard's state in the same step.
//! - `ConnectionManager` hands the error of a failed call back to the caller and reconnects
//!   in the background, so every operation here is retried with bounded exponential backoff
//!   when the error is transient (I/O, timeout, `LOADING`, `TRYAGAIN`, `BUSY`, …). Errors that
//!   retrying cannot fix (`WRONGTYPE`, script errors, authentication) return at once.
//!
//! Multi-key operations (`put_run`, the agent listing) assume one Redis server (standalone
//! or behind Sentinel): the `runs` and `agents` indexes do not share a hash slot with the
//! keys they index, so Redis Cluster would refuse them.
//!
//! Retrying is safe because each write is idempotent or harmless when repeated after a
//! lost reply: `SET`, `HSET`, `ZADD`, `HSETNX` and the scripts converge to the same state;
//! `put_result` answers `true` again when the stored result is byte-for-byte the one being
//! written (our own earlier attempt). Three writes are at-least-once instead: a metric
//! batch (`XADD`), an attempt count (`HINCRBY`) and a dead-letter record (`LPUSH`) may be
//! applied twice when a reply is lost mid-flight; readers treat them as such.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisError, RedisResult, Script, ScriptInvocation, ServerErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::secrets::{redact_url, scrub_secrets};
use crate::shard::{AgentHeartbeat, MetricPoint, RunRecord, ShardResult, ShardState, unix_now};
use crate::store::{AttemptError, DeadLetterRecord, METRIC_STREAM_MAXLEN, Progress, Store};
use crate::tls::CaBundle;

/// Dead-letter records kept (the list is trimmed on every push).
pub const DEAD_LETTER_RECORDS_KEPT: usize = 1000;

/// Field of a metric stream entry holding the point as JSON.
const METRIC_FIELD: &str = "data";

/// Sets a shard's state unless its current state is terminal.
/// KEYS[1] states hash; ARGV[1] shard, ARGV[2] new state, ARGV[3..] the terminal states.
const SET_STATE_LUA: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  for i = 3, #ARGV do
    if current == ARGV[i] then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Marks shards queued where they are still unpublished.
/// KEYS[1] states hash; ARGV the shard ids.
const MARK_PUBLISHED_LUA: &str = r"
for i = 1, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == 'unpublished' then
    redis.call('HSET', KEYS[1], ARGV[i], 'queued')
  end
end
return 1
";

/// Writes a final result once and, only then, the shard's state.
/// KEYS[1] result key, KEYS[2] states hash; ARGV[1] result JSON, ARGV[2] shard, ARGV[3] status.
/// Returns 1 when written (or when the identical value is already there: a retry of our own
/// write whose reply was lost), 0 when another result exists.
const PUT_RESULT_LUA: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
";

/// Returns the heartbeats of live agents and forgets the expired ones.
/// KEYS[1] agents zset, KEYS[2..] heartbeat keys; ARGV[i] the agent id of KEYS[i + 1].
const AGENTS_LUA: &str = r"
local live = {}
for i = 2, #KEYS do
  local beat = redis.call('GET', KEYS[i])
  if beat then
    table.insert(live, beat)
  else
    redis.call('ZREM', KEYS[1], ARGV[i - 1])
  end
end
return live
";

/// How often and how patiently an operation is retried after a transient error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial_delay: Duration,
    /// Upper bound of one wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 8 tries, 50 ms doubling to 2 s: about 5 s of waiting in all, enough to ride out a
    /// Redis restart or a replica promotion without failing a shard.
    fn default() -> Self {
        RetryPolicy { attempts: 8, initial_delay: Duration::from_millis(50), max_delay: Duration::from_secs(2) }
    }
}

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:6379[/db]` or `rediss://…`.
    pub url: String,
    /// Key prefix (default `qsched`; tests use a unique one).
    pub prefix: String,
    /// Bound on connecting (each attempt and the initial connect as a whole).
    pub connect_timeout: Duration,
    /// Bound on one command's reply; a timeout counts as transient.
    pub response_timeout: Duration,
    /// Retry policy for transient errors.
    pub retry: RetryPolicy,
    /// CA trusted for a `rediss://` URL instead of the host's store (`--redis-ca-file`).
    pub ca: Option<CaBundle>,
}

impl RedisConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "qsched".into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            ca: None,
        }
    }

    /// Sets the key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

// Hand-written so that the password never reaches a log line through `{:?}`.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("retry", &self.retry)
            .field("ca", &self.ca)
            .finish()
    }
}

/// A [`Store`] on Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
    url: String,
    safe_url: String,
    retry: RetryPolicy,
    set_state: Script,
    mark_published: Script,
    put_result: Script,
    agents: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore").field("url", &self.safe_url).field("prefix", &self.keys.prefix()).finish()
    }
}

impl RedisStore {
    /// Connects with default timeouts and retry policy.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        Self::connect_with(RedisConfig::new(url).with_prefix(prefix)).await
    }

    /// Connects and checks the server with `PING`.
    ///
    /// A URL that does not parse is a non-transient error; an unreachable server, one that
    /// does not answer within `connect_timeout`, is a transient one. Both name the URL with
    /// its password redacted.
    pub async fn connect_with(config: RedisConfig) -> Result<Self> {
        let safe_url = redact_url(&config.url);
        if config.prefix.is_empty() {
            return Err(Error::invalid("Redis key prefix", "must not be empty"));
        }
        let fail = |message: String, transient: bool| Error::Store {
            url: safe_url.clone(),
            message: scrub_secrets(&message, &config.url),
            transient,
        };
        crate::tls::check_scheme(&config.url, config.ca.as_ref(), "rediss", "Redis URL")?;
        let client = match &config.ca {
            None => redis::Client::open(config.url.as_str()),
            Some(ca) => redis::Client::build_with_tls(
                config.url.as_str(),
                redis::TlsCertificates { client_tls: None, root_cert: Some(ca.pem().as_bytes().to_vec()) },
            ),
        }
        .map_err(|e| {
            fail(format!("not a usable Redis URL ({e}); expected redis://[:password@]host:6379[/db]"), false)
        })?;
        // The manager's own reconnect loop stays short: the retry policy of this store is
        // where patience lives, so that an operation fails within a known bound.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let connect = ConnectionManager::new_with_config(client, manager_config);
        let mut conn = match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(fail(format!("cannot connect to Redis: {e}"), is_transient(&e))),
            Err(_) => {
                return Err(fail(
                    format!("cannot connect to Redis: no connection within {:?}", config.connect_timeout),
                    true,
                ));
            }
        };
        let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        match pong {
            Ok(_) => {}
            Err(e) => return Err(fail(format!("Redis did not answer PING: {e}"), is_transient(&e))),
        }
        info!(url = %safe_url, prefix = %config.prefix, "connected to Redis");
        Ok(RedisStore {
            conn,
            keys: Keys::new(config.prefix),
            url: config.url,
            safe_url,
            retry: RetryPolicy { attempts: config.retry.attempts.max(1), ..config.retry },
            set_state: Script::new(SET_STATE_LUA),
            mark_published: Script::new(MARK_PUBLISHED_LUA),
            put_result: Script::new(PUT_RESULT_LUA),
            agents: Script::new(AGENTS_LUA),
        })
    }

    /// The same store (sharing the connection) with another retry policy, e.g. a more
    /// patient one for writing final results.
    pub fn with_retry(&self, retry: RetryPolicy) -> Self {
        RedisStore { retry: RetryPolicy { attempts: retry.attempts.max(1), ..retry }, ..self.clone() }
    }

    /// The key schema in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The Redis URL with its password redacted.
    pub fn safe_url(&self) -> &str {
        &self.safe_url
    }

    /// Deletes every key under this store's prefix and returns how many went (tests and
    /// maintenance; with the default prefix this wipes all qsched state).
    pub async fn delete_prefix(&self) -> Result<u64> {
        let pattern = format!("{}:*", glob_escape(self.keys.prefix()));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .query(
                    "scanning keys",
                    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000),
                )
                .await?;
            if !keys.is_empty() {
                deleted += self.query::<u64>("deleting keys", redis::cmd("DEL").arg(&keys)).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        debug!(prefix = %self.keys.prefix(), deleted, "deleted keys");
        Ok(deleted)
    }

    /// Runs `op` until it succeeds, fails for good, or the retry policy is spent.
    async fn retrying<T: redis::FromRedisValue>(&self, what: &str, op: Op<'_>) -> Result<T> {
        let mut delay = self.retry.initial_delay;
        let mut attempt = 1;
        loop {
            // A clone shares the one multiplexed connection (and its reconnect state).
            let mut conn = self.conn.clone();
            match op.run(&mut conn).await {
                Ok(v) => {
                    if attempt > 1 {
                        info!(op = %what, attempt, "redis operation succeeded after retrying");
                    }
                    return Ok(v);
                }
                Err(e) if is_transient(&e) && attempt < self.retry.attempts => {
                    warn!(op = %what, attempt, retry_in = ?delay, error = %e, "transient redis error; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max_delay);
                    attempt += 1;
                }
                Err(e) => {
                    let transient = is_transient(&e);
                    let tries = if transient { format!(" (gave up after {attempt} tries)") } else { String::new() };
                    return Err(Error::Store {
                        url: self.safe_url.clone(),
                        message: scrub_secrets(&format!("{what}: {e}{tries}"), &self.url),
                        transient,
                    });
                }
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, what: &str, cmd: &Cmd) -> Result<T> {
        self.retrying(what, Op::Cmd(cmd)).await
    }

    async fn query_pipe<T: redis::FromRedisValue>(&self, what: &str, pipe: &Pipeline) -> Result<T> {
        self.retrying(what, Op::Pipe(pipe)).await
    }

    async fn invoke<T: redis::FromRedisValue>(&self, what: &str, inv: &ScriptInvocation<'_>) -> Result<T> {
        self.retrying(what, Op::Script(inv)).await
    }

    fn corrupt(&self, key: &str, e: impl fmt::Display) -> Error {
        Error::Store { url: self.safe_url.clone(), message: format!("malformed value at {key}: {e}"), transient: false }
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, json: &str) -> Result<T> {
        serde_json::from_str(json).map_err(|e| self.corrupt(key, e))
    }

    fn parse_state(&self, key: &str, name: &str) -> Result<ShardState> {
        serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|e| self.corrupt(key, e))
    }
}

/// One retryable unit of work: a command, a pipeline or a script call.
#[derive(Clone, Copy)]
enum Op<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a Pipeline),
    Script(&'a ScriptInvocation<'a>),
}

impl Op<'_> {
    async fn run<T: redis::FromRedisValue>(self, conn: &mut ConnectionManager) -> RedisResult<T> {
        match self {
            Op::Cmd(cmd) => cmd.query_async(conn).await,
            Op::Pipe(pipe) => pipe.query_async(conn).await,
            // EVALSHA, falling back to loading the script after a restart emptied the cache.
            Op::Script(inv) => inv.invoke_async(conn).await,
        }
    }
}

/// JSON for a value we produced ourselves; serde_json fails only on maps with non-string
/// keys or failing `Serialize` impls, neither of which our types have.
fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Codec(format!("JSON encoding: {e}")))
}

/// Whether trying the same command again (after the manager reconnects) can succeed.
fn is_transient(e: &RedisError) -> bool {
    use redis::ErrorKind as K;
    match e.kind() {
        // Connection refused, reset, dropped, timed out: the manager reconnects.
        K::Io => true,
        K::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ClusterDown
            // A replica promoted under us answers READONLY until the client follows.
            | ServerErrorKind::ReadOnly,
        ) => true,
        // A script running too long elsewhere: "BUSY Redis is busy running a script".
        K::Extension => e.code() == Some("BUSY"),
        _ => false,
    }
}

/// Escapes the glob metacharacters of a `SCAN MATCH` pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn terminal_states() -> impl Iterator<Item = &'static str> {
    ShardState::ALL.into_iter().filter(|s| s.is_terminal()).map(ShardState::as_str)
}

#[async_trait]
impl Store for RedisStore {
    async fn put_run(&self, record: &RunRecord) -> Result<()> {
        let states = self.keys.shard_states(&record.run_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.keys.run_record(&record.run_id), to_json(record)?)
            .ignore()
            .zadd(self.keys.runs(), record.run_id.as_str(), record.created_at)
            .ignore();
        // HSETNX: a resubmitted run keeps the progress its shards already made.
        for s in &record.shards {
            pipe.hset_nx(&states, &s.shard, ShardState::Unpublished.as_str()).ignore();
        }
        self.query_pipe::<()>("recording the run", &pipe).await
    }

    async fn mark_published(&self, run: &str, shards: &[String]) -> Result<()> {
        if shards.is_empty() {
            return Ok(());
        }
        let mut inv = self.mark_published.prepare_invoke();
        inv.key(self.keys.shard_states(run));
        for shard in shards {
            inv.arg(shard);
        }
        let _: i64 = self.invoke("marking shards published", &inv).await?;
        Ok(())
    }

    async fn get_run(&self, run: &str) -> Result<Option<RunRecord>> {
        let key = self.keys.run_record(run);
        let json: Option<String> = self.query("reading the run", redis::cmd("GET").arg(&key)).await?;
        json.map(|j| self.decode(&key, &j)).transpose()
    }

    async fn list_runs(&self, limit: usize) -> Result<Vec<String>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        self.query("listing runs", redis::cmd("ZREVRANGE").arg(self.keys.runs()).arg(0).arg(stop)).await
    }

    async fn set_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()> {
        let mut inv = self.set_state.prepare_invoke();
        inv.key(self.keys.shard_states(run)).arg(shard).arg(state.as_str());
        for t in terminal_states() {
            inv.arg(t);
        }
        let changed: i64 = self.invoke("setting a shard state", &inv).await?;
        if changed == 0 {
            debug!(run, shard, state = state.as_str(), "kept the terminal state");
        }
        Ok(())
    }

    async fn force_state(&self, run: &str, shard: &str, state: ShardState) -> Result<()> {
        self.query(
            "forcing a shard state",
            redis::cmd("HSET").arg(self.keys.shard_states(run)).arg(shard).arg(state.as_str()),
        )
        .await
    }

    async fn states(&self, run: &str) -> Result<BTreeMap<String, ShardState>> {
        let key = self.keys.shard_states(run);
        let raw: BTreeMap<String, String> = self.query("reading shard states", redis::cmd("HGETALL").arg(&key)).await?;
        raw.into_iter().map(|(shard, name)| Ok((shard, self.parse_state(&key, &name)?))).collect()
    }

    async fn incr_attempt(&self, run: &str, shard: &str) -> Result<u32> {
        let key = self.keys.shard_attempts(run);
        let n: i64 = self.query("counting an attempt", redis::cmd("HINCRBY").arg(&key).arg(shard).arg(1)).await?;
        u32::try_from(n).map_err(|e| self.corrupt(&key, e))
    }

    async fn attempts(&self, run: &str) -> Result<BTreeMap<String, u32>> {
        self.query("reading attempts", redis::cmd("HGETALL").arg(self.keys.shard_attempts(run))).await
    }

    async fn record_attempt_error(&self, run: &str, shard: &str, error: &AttemptError) -> Result<()> {
        let field = format!("{shard}/{}", error.attempt);
        let cmd =
            redis::cmd("HSET").arg(self.keys.shard_attempt_errors(run)).arg(field).arg(to_json(error)?).to_owned();
        self.query("recording an attempt's error", &cmd).await
    }

    async fn attempt_errors(&self, run: &str) -> Result<BTreeMap<String, Vec<AttemptError>>> {
        let key = self.keys.shard_attempt_errors(run);
        let raw: BTreeMap<String, String> =
            self.query("reading attempt errors", redis::cmd("HGETALL").arg(&key)).await?;
        let mut out: BTreeMap<String, Vec<AttemptError>> = BTreeMap::new();
        for (field, json) in raw {
            // Shard ids never contain '/' (they are validated names), so the last one splits.
            let shard = field.rsplit_once('/').map_or(field.as_str(), |(shard, _)| shard);
            out.entry(shard.to_owned()).or_default().push(self.decode(&key, &json)?);
        }
        for errors in out.values_mut() {
            errors.sort_by_key(|e| e.attempt);
        }
        Ok(out)
    }

    async fn set_progress(&self, run: &str, shard: &str, progress: &Progress) -> Result<()> {
        let cmd = redis::cmd("HSET").arg(self.keys.shard_progress(run)).arg(shard).arg(to_json(progress)?).to_owned();
        self.query("recording progress", &cmd).await
    }

    async fn progress(&self, run: &str) -> Result<BTreeMap<String, Progress>> {
        let key = self.keys.shard_progress(run);
        let raw: BTreeMap<String, String> = self.query("reading progress", redis::cmd("HGETALL").arg(&key)).await?;
        raw.into_iter().map(|(shard, json)| Ok((shard, self.decode(&key, &json)?))).collect()
    }

    async fn append_metrics(&self, run: &str, shard: &str, points: &[MetricPoint]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let key = self.keys.metrics(run, shard);
        let mut pipe = redis::pipe();
        for p in points {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(METRIC_STREAM_MAXLEN)
                .arg("*")
                .arg(METRIC_FIELD)
                .arg(to_json(p)?)
                .ignore();
        }
        self.query_pipe::<()>("appending metrics", &pipe).await
    }

    async fn metrics(&self, run: &str, shard: &str, count: usize) -> Result<Vec<MetricPoint>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.metrics(run, shard);
        let entries: Vec<(String, Vec<(String, String)>)> = self
            .query("reading metrics", redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(count))
            .await?;
        let mut points = Vec::with_capacity(entries.len());
        for (id, fields) in entries.into_iter().rev() {
            let json = fields
                .into_iter()
                .find_map(|(f, v)| (f == METRIC_FIELD).then_some(v))
                .ok_or_else(|| self.corrupt(&key, format!("entry {id} has no '{METRIC_FIELD}' field")))?;
            points.push(self.decode(&key, &json)?);
        }
        Ok(points)
    }

    async fn put_result(&self, result: &ShardResult) -> Result<bool> {
        let mut inv = self.put_result.prepare_invoke();
        inv.key(self.keys.result(&result.run, &result.shard))
            .key(self.keys.shard_states(&result.run))
            .arg(to_json(result)?)
            .arg(&result.shard)
            .arg(result.status.as_str());
        let written: i64 = self.invoke("writing the result", &inv).await?;
        if written == 0 {
            info!(run = %result.run, shard = %result.shard, "a result already exists; kept it");
        }
        Ok(written == 1)
    }

    async fn get_result(&self, run: &str, shard: &str) -> Result<Option<ShardResult>> {
        let key = self.keys.result(run, shard);
        let json: Option<String> = self.query("reading a result", redis::cmd("GET").arg(&key)).await?;
        json.map(|j| self.decode(&key, &j)).transpose()
    }

    async fn results(&self, run: &str) -> Result<Vec<ShardResult>> {
        // Every shard with a result has a state (put_result sets both), so the state hash
        // names every result key without a SCAN over the keyspace.
        let mut shards: Vec<String> =
            self.query("listing shards", redis::cmd("HKEYS").arg(self.keys.shard_states(run))).await?;
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        shards.sort();
        let keys: Vec<String> = shards.iter().map(|s| self.keys.result(run, s)).collect();
        let values: Vec<Option<String>> = self.query("reading results", redis::cmd("MGET").arg(&keys)).await?;
        keys.iter().zip(values).filter_map(|(key, json)| json.map(|j| self.decode(key, &j))).collect()
    }

    async fn delete_result(&self, run: &str, shard: &str) -> Result<bool> {
        let n: i64 = self.query("deleting a result", redis::cmd("DEL").arg(self.keys.result(run, shard))).await?;
        Ok(n > 0)
    }

    async fn heartbeat(&self, beat: &AgentHeartbeat, ttl: Duration) -> Result<()> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.agent(&beat.agent))
            .arg(to_json(beat)?)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .zadd(self.keys.agents(), &beat.agent, unix_now())
            .ignore();
        self.query_pipe::<()>("sending a heartbeat", &pipe).await
    }

    async fn agents(&self) -> Result<Vec<AgentHeartbeat>> {
        let zset = self.keys.agents();
        let ids: Vec<String> = self.query("listing agents", redis::cmd("ZRANGE").arg(&zset).arg(0).arg(-1)).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.agents.prepare_invoke();
        inv.key(&zset);
        for id in &ids {
            inv.key(self.keys.agent(id)).arg(id);
        }
        let beats: Vec<String> = self.invoke("reading heartbeats", &inv).await?;
        beats.iter().map(|j| self.decode(&zset, j)).collect()
    }

    async fn remove_agent(&self, agent: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.del(self.keys.agent(agent)).ignore().zrem(self.keys.agents(), agent).ignore();
        self.query_pipe::<()>("removing an agent", &pipe).await
    }

    async fn cancel(&self, run: &str) -> Result<()> {
        self.query("cancelling the run", redis::cmd("SET").arg(self.keys.cancel(run)).arg(unix_now())).await
    }

    async fn uncancel(&self, run: &str) -> Result<()> {
        self.query::<()>("clearing the cancel flag", redis::cmd("DEL").arg(self.keys.cancel(run))).await
    }

    async fn is_cancelled(&self, run: &str) -> Result<bool> {
        self.query("reading the cancel flag", redis::cmd("EXISTS").arg(self.keys.cancel(run))).await
    }

    async fn record_dead_letter(&self, record: &DeadLetterRecord) -> Result<()> {
        let key = self.keys.dead_letters();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(&key, to_json(record)?)
            .ignore()
            .ltrim(&key, 0, DEAD_LETTER_RECORDS_KEPT as isize - 1)
            .ignore();
        self.query_pipe::<()>("recording a dead letter", &pipe).await
    }

    async fn dead_letter_records(&self, limit: usize) -> Result<Vec<DeadLetterRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.dead_letters();
        let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        let raw: Vec<String> =
            self.query("reading dead letters", redis::cmd("LRANGE").arg(&key).arg(0).arg(stop)).await?;
        raw.iter().map(|j| self.decode(&key, j)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_match_the_enum() {
        let t: Vec<_> = terminal_states().collect();
        assert_eq!(t, ["succeeded", "failed", "cancelled", "dead"]);
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("t-1-a"), "t-1-a");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn error_classes() {
        let io: RedisError = std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into();
        assert!(is_transient(&io));
        let loading: RedisError = (redis::ErrorKind::Server(ServerErrorKind::BusyLoading), "loading").into();
        assert!(is_transient(&loading));
        let wrongtype: RedisError = (redis::ErrorKind::Server(ServerErrorKind::ResponseError), "WRONGTYPE").into();
        assert!(!is_transient(&wrongtype));
        let auth: RedisError = (redis::ErrorKind::AuthenticationFailed, "bad password").into();
        assert!(!is_transient(&auth));
    }

    #[test]
    fn config_debug_hides_the_password() {
        let shown = format!("{:?}", RedisConfig::new("redis://:hunter2@cache:6379/0"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[tokio::test]
    async fn bad_url_is_a_permanent_error() {
        let err = RedisStore::connect("http://:hunter2@host:6379", "t").await.unwrap_err();
        assert!(!err.is_transient(), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
