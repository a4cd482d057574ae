//! The agent's Prometheus metrics and the HTTP endpoint of `qagent --metrics-listen`.
//!
//! Owns the registry (OpenMetrics text, `prometheus-client`) with every `qsched_agent_*`
//! series, and a server with one route, `GET /metrics`. It owns no agent state: the
//! supervisor records events here as they happen (a shard started, a training point
//! relayed, a heartbeat stored, an outcome stored), and two values are read at scrape
//! time because they are ages or samples, not events (the heartbeat age, the worker's
//! resident memory).
//!
//! What is not exported, and why:
//! - Live GPU memory. CUDA allocator statistics are per process and the supervisor does
//!   not allocate on the GPU: the worker owns the memory and reports only its peak, when
//!   the shard ends. That peak is exported (`shard_peak_memory_bytes`); nothing live is.
//! - Finished shards' live series: a shard's loss, steps/s, tokens/s and worker memory
//!   are removed when its worker ends, so an agent exports one shard's worth at a time.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tracing::{debug, info};

use shared::shard::Shard;

use crate::error::{Error, Result};

/// The content type of OpenMetrics text, which Prometheus asks for and parses.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// How long open scrape connections get to finish once the agent stops; Prometheus keeps
/// its connection alive between scrapes, and an agent's exit must not wait on it.
const DRAIN: Duration = Duration::from_secs(2);

/// `model` and `task`: the labels of the shard counters (bounded by the benchmark's
/// models × tasks).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelTask {
    model: String,
    task: String,
}

/// The running shard: the labels of its live series, removed when it ends.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    model: String,
    task: String,
    shard: String,
}

/// Labels of a finished shard's measured peak memory.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeakLabels {
    model: String,
    task: String,
    /// What the peak measures, as in results: `host_rss_peak` or `cuda_allocated_peak`.
    kind: String,
}

/// Labels of the info series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    agent: String,
    host: String,
    device: String,
    gpu: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What the scrape-time values and the rate need to remember.
#[derive(Debug)]
struct Live {
    /// The running shard's labels (None between shards).
    current: Option<ShardLabels>,
    /// Its worker process, for its resident memory.
    worker_pid: Option<u32>,
    /// Its previous training point (step, Unix seconds), for steps/s.
    last_train: Option<(u64, f64)>,
    /// When a heartbeat was last stored; before the first, when the agent started.
    heartbeat_base: Instant,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    started: Family<ModelTask, Counter>,
    succeeded: Family<ModelTask, Counter>,
    failed: Family<ModelTask, Counter>,
    retried: Family<ModelTask, Counter>,
    worker_restarts: Counter,
    steps_per_second: Family<ShardLabels, FloatGauge>,
    tokens_per_second: Family<ShardLabels, FloatGauge>,
    loss: Family<ShardLabels, FloatGauge>,
    worker_memory: Family<ShardLabels, Gauge>,
    peak_memory: Family<PeakLabels, Gauge>,
    heartbeat_age: FloatGauge,
    info: Family<InfoLabels, Gauge>,
    live: Mutex<Live>,
}

/// The agent's metrics: a cheap handle (clones share one registry), always recorded by
/// the supervisor and served only when `--metrics-listen` is given.
#[derive(Clone)]
pub struct AgentMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn model_task(shard: &Shard) -> ModelTask {
    ModelTask { model: shard.model.to_string(), task: shard.task.to_string() }
}

impl AgentMetrics {
    /// An empty registry with every metric described.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("qsched_agent");
        let inner = Inner {
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            worker_restarts: Counter::default(),
            steps_per_second: Family::default(),
            tokens_per_second: Family::default(),
            loss: Family::default(),
            worker_memory: Family::default(),
            peak_memory: Family::default(),
            heartbeat_age: FloatGauge::default(),
            info: Family::default(),
            live: Mutex::new(Live {
                current: None,
                worker_pid: None,
                last_train: None,
                heartbeat_base: Instant::now(),
            }),
            registry: Registry::default(),
        };
        registry.register(
            "shards_started",
            "Shard attempts this agent started a worker for (a redelivery that already had a result, \
             or of a cancelled run, starts none)",
            inner.started.clone(),
        );
        registry.register(
            "shards_succeeded",
            "Shards whose successful result this agent stored",
            inner.succeeded.clone(),
        );
        registry.register(
            "shards_failed",
            "Shards whose failed result this agent stored (a fatal error, or a retryable one on the last allowed \
             delivery)",
            inner.failed.clone(),
        );
        registry.register(
            "shards_retried",
            "Shard attempts that failed retryably here (worker crashed, killed as hung, out of memory) and were \
             returned to the queue",
            inner.retried.clone(),
        );
        registry.register(
            "worker_restarts",
            "Workers this agent started for a shard attempted before, whose earlier attempt ended without a result \
             (its worker crashed or was killed as hung, or its agent died or was stopped); attempts are counted at \
             least once, so a lost store reply can add one",
            inner.worker_restarts.clone(),
        );
        registry.register(
            "steps_per_second",
            "Training steps per second of the running shard between its last two training reports (wall clock, \
             evaluations included)",
            inner.steps_per_second.clone(),
        );
        registry.register(
            "tokens_per_second",
            "Non-pad training tokens per second of the running shard as its worker reports them: the average over \
             the shard's training so far, counting time in training steps only (carried across a resume from a \
             checkpoint)",
            inner.tokens_per_second.clone(),
        );
        registry.register(
            "loss",
            "Mean training loss of the running shard since its previous training report (absent when every step in \
             between was skipped as non-finite)",
            inner.loss.clone(),
        );
        registry.register_with_unit(
            "worker_resident_memory",
            "Resident set size (VmRSS, host RAM) of the running shard's worker process, read from /proc at scrape \
             time; not GPU memory",
            Unit::Bytes,
            inner.worker_memory.clone(),
        );
        registry.register_with_unit(
            "shard_peak_memory",
            "Peak memory of the last shard of this model and task that succeeded here, as its worker measured it \
             (kind host_rss_peak: process RSS on CPU; cuda_allocated_peak: CUDA caching allocator on the GPU)",
            Unit::Bytes,
            inner.peak_memory.clone(),
        );
        registry.register_with_unit(
            "heartbeat_age",
            "Seconds since this agent last stored its heartbeat (since it started, before the first)",
            Unit::Seconds,
            inner.heartbeat_age.clone(),
        );
        registry.register("info", "This agent: its id, host, device and GPU; the value is 1", inner.info.clone());
        AgentMetrics { inner: Arc::new(Inner { registry, ..inner }) }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        // The state is a few plain values; a panic elsewhere cannot leave it half-written.
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The agent is consuming: sets its info series and starts the heartbeat clock.
    pub fn agent_started(&self, agent: &str, host: &str, device: &str, gpu: Option<&str>) {
        self.inner.info.clear();
        let labels = InfoLabels {
            agent: agent.to_owned(),
            host: host.to_owned(),
            device: device.to_owned(),
            gpu: gpu.unwrap_or_default().to_owned(),
        };
        self.inner.info.get_or_create(&labels).set(1);
        self.live().heartbeat_base = Instant::now();
    }

    /// A heartbeat reached the store.
    pub fn heartbeat_stored(&self) {
        self.live().heartbeat_base = Instant::now();
    }

    /// A worker is about to start for `shard` on its `attempt`-th delivery.
    pub fn shard_started(&self, shard: &Shard, attempt: u32) {
        self.inner.started.get_or_create(&model_task(shard)).inc();
        if attempt > 1 {
            self.inner.worker_restarts.inc();
        }
        let mut live = self.live();
        if let Some(previous) = live.current.take() {
            self.remove_live_series(&previous);
        }
        live.current = Some(ShardLabels {
            model: shard.model.to_string(),
            task: shard.task.to_string(),
            shard: shard.shard_id.to_string(),
        });
        live.worker_pid = None;
        live.last_train = None;
    }

    /// The running shard's worker process started.
    pub fn worker_spawned(&self, pid: u32) {
        self.live().worker_pid = Some(pid);
    }

    /// The resident memory of the running shard's worker now (host RAM, bytes); None
    /// between shards.
    pub fn worker_resident_bytes(&self) -> Option<u64> {
        let pid = self.live().worker_pid;
        pid.and_then(resident_bytes)
    }

    /// A training report of the running shard: `values` as the worker sent them
    /// (`loss`, `tokens_per_second`, ...), `at` in Unix seconds.
    pub fn train_point(&self, step: u64, at: f64, values: &BTreeMap<String, f64>) {
        let mut live = self.live();
        let Some(labels) = live.current.clone() else { return };
        match values.get("loss").filter(|l| l.is_finite()) {
            Some(&loss) => {
                self.inner.loss.get_or_create(&labels).set(loss);
            }
            // A stale loss would read as the current one.
            None => {
                self.inner.loss.remove(&labels);
            }
        }
        if let Some(&tps) = values.get("tokens_per_second").filter(|v| v.is_finite()) {
            self.inner.tokens_per_second.get_or_create(&labels).set(tps);
        }
        // A resumed or restarted attempt can report a lower step: measure from there on.
        if let Some((step0, at0)) = live.last_train
            && step > step0
            && at > at0
        {
            self.inner.steps_per_second.get_or_create(&labels).set((step - step0) as f64 / (at - at0));
        }
        live.last_train = Some((step, at));
    }

    /// The running shard's worker ended (any way): its live series go.
    pub fn worker_ended(&self) {
        let mut live = self.live();
        if let Some(labels) = live.current.take() {
            self.remove_live_series(&labels);
        }
        live.worker_pid = None;
        live.last_train = None;
    }

    fn remove_live_series(&self, labels: &ShardLabels) {
        self.inner.loss.remove(labels);
        self.inner.steps_per_second.remove(labels);
        self.inner.tokens_per_second.remove(labels);
        self.inner.worker_memory.remove(labels);
    }

    /// `shard`'s successful result is stored; `peak_memory_bytes` of `peak_memory_kind`
    /// as the result records them.
    pub fn shard_succeeded(&self, shard: &Shard, peak_memory_bytes: u64, peak_memory_kind: &str) {
        let key = model_task(shard);
        self.inner.succeeded.get_or_create(&key).inc();
        if peak_memory_bytes > 0 {
            let labels = PeakLabels { model: key.model, task: key.task, kind: peak_memory_kind.to_owned() };
            self.inner.peak_memory.get_or_create(&labels).set(i64::try_from(peak_memory_bytes).unwrap_or(i64::MAX));
        }
    }

    /// `shard`'s failed result is stored.
    pub fn shard_failed(&self, shard: &Shard) {
        self.inner.failed.get_or_create(&model_task(shard)).inc();
    }

    /// `shard`'s attempt failed retryably and went back to the queue.
    pub fn shard_retried(&self, shard: &Shard) {
        self.inner.retried.get_or_create(&model_task(shard)).inc();
    }

    /// The registry as OpenMetrics text, with the scrape-time values read now.
    pub fn render(&self) -> String {
        self.render_at(Instant::now())
    }

    fn render_at(&self, now: Instant) -> String {
        {
            let live = self.live();
            self.inner.heartbeat_age.set(now.saturating_duration_since(live.heartbeat_base).as_secs_f64());
            if let Some(labels) = &live.current {
                match live.worker_pid.and_then(resident_bytes) {
                    Some(bytes) => {
                        self.inner.worker_memory.get_or_create(labels).set(i64::try_from(bytes).unwrap_or(i64::MAX));
                    }
                    // Not started yet, or already gone: no reading rather than an old one.
                    None => {
                        self.inner.worker_memory.remove(labels);
                    }
                }
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .expect("encoding into a String cannot fail");
        text
    }
}

/// VmRSS of process `pid` in bytes; None when it has exited (or /proc is unreadable).
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The `--metrics-listen` endpoint, bound and not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    metrics: AgentMetrics,
}

impl MetricsServer {
    /// Binds `address` at once, so that a taken port or a foreign address is an error at
    /// startup, before the agent takes a shard.
    pub async fn bind(address: SocketAddr, metrics: AgentMetrics) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| Error::MetricsEndpoint {
            address,
            action: "cannot listen for metrics",
            source,
        })?;
        // Port 0 picks a free port: report the one the kernel chose.
        let address = listener.local_addr().unwrap_or(address);
        if address.ip().is_loopback() {
            info!(%address, "Prometheus metrics at http://{address}/metrics");
        } else {
            info!(%address, "Prometheus metrics at http://{address}/metrics, reachable from other hosts \
                (no authentication: restrict it with a firewall)");
        }
        Ok(MetricsServer { listener, address, metrics })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Serves `GET /metrics` until `shutdown` resolves, then gives open connections a
    /// short while to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let address = self.address;
        let app = axum::Router::new().route("/metrics", axum::routing::get(scrape)).with_state(self.metrics);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let server = std::future::IntoFuture::into_future(server);
        tokio::pin!(server, shutdown);
        let served = tokio::select! {
            served = &mut server => served,
            () = &mut shutdown => {
                let _ = stop.send(());
                match tokio::time::timeout(DRAIN, &mut server).await {
                    Ok(served) => served,
                    Err(_) => {
                        debug!("scrape connections still open after the drain period; closing them");
                        Ok(())
                    }
                }
            }
        };
        served.map_err(|source| Error::MetricsEndpoint { address, action: "stopped serving metrics", source })
    }
}

async fn scrape(State(metrics): State<AgentMetrics>) -> impl IntoResponse {
    ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> Shard {
        shared::wire::sample_shard()
    }

    /// The sample lines of `text` (no `#` comments), sorted.
    fn samples(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        lines.sort_unstable();
        lines
    }

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    const SHARD: &str = r#"{model="qwen3",task="sst2",shard="0123456789abcdef"}"#;
    const MODEL_TASK: &str = r#"{model="qwen3",task="sst2"}"#;

    #[test]
    fn before_any_event_only_the_unlabelled_series_exist() {
        // prometheus-client leaves a family without series out altogether (no HELP/TYPE).
        let text = AgentMetrics::new().render();
        assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
        let got = samples(&text);
        assert_eq!(got.len(), 2, "{text}");
        assert!(got[0].starts_with("qsched_agent_heartbeat_age_seconds "), "{text}");
        assert_eq!(got[1], "qsched_agent_worker_restarts_total 0");
    }

    #[test]
    fn describes_every_metric() {
        let m = AgentMetrics::new();
        let s = shard();
        m.agent_started("host:cpu:42", "host", "cpu", None);
        m.shard_succeeded(&s, 1, "host_rss_peak");
        m.shard_failed(&s);
        m.shard_retried(&s);
        m.shard_started(&s, 2);
        m.worker_spawned(std::process::id());
        for (step, at) in [(1, 1.0), (2, 2.0)] {
            m.train_point(step, at, &BTreeMap::from([("loss".to_owned(), 1.0), ("tokens_per_second".into(), 1.0)]));
        }
        let text = m.render();
        for (name, kind, unit) in [
            ("shards_started", "counter", None),
            ("shards_succeeded", "counter", None),
            ("shards_failed", "counter", None),
            ("shards_retried", "counter", None),
            ("worker_restarts", "counter", None),
            ("steps_per_second", "gauge", None),
            ("tokens_per_second", "gauge", None),
            ("loss", "gauge", None),
            ("worker_resident_memory_bytes", "gauge", Some("bytes")),
            ("shard_peak_memory_bytes", "gauge", Some("bytes")),
            ("heartbeat_age_seconds", "gauge", Some("seconds")),
            ("info", "gauge", None),
        ] {
            let name = format!("qsched_agent_{name}");
            for line in [format!("# TYPE {name} {kind}")].into_iter().chain(unit.map(|u| format!("# UNIT {name} {u}")))
            {
                assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
            }
            assert!(text.lines().any(|l| l.starts_with(&format!("# HELP {name} "))), "no HELP for {name}");
        }
        assert_eq!(samples(&text).len(), 12, "one series each: {text}");
    }

    #[test]
    fn a_shard_from_start_to_success() {
        let m = AgentMetrics::new();
        let s = shard();
        m.agent_started("host:cpu:42", "host", "cpu", None);
        m.shard_started(&s, 1);
        let values =
            |loss: f64, tps: f64| BTreeMap::from([("loss".to_owned(), loss), ("tokens_per_second".into(), tps)]);
        m.train_point(10, 100.0, &values(0.75, 512.0));
        let text = m.render();
        assert_eq!(value_of(&text, &format!("qsched_agent_loss{SHARD}")), Some(0.75));
        assert_eq!(value_of(&text, &format!("qsched_agent_tokens_per_second{SHARD}")), Some(512.0));
        assert_eq!(value_of(&text, &format!("qsched_agent_steps_per_second{SHARD}")), None, "one point: no rate yet");
        m.train_point(30, 104.0, &values(0.5, 600.0));
        let text = m.render();
        assert_eq!(value_of(&text, &format!("qsched_agent_steps_per_second{SHARD}")), Some(5.0));
        assert_eq!(value_of(&text, &format!("qsched_agent_loss{SHARD}")), Some(0.5));
        assert_eq!(value_of(&text, &format!("qsched_agent_tokens_per_second{SHARD}")), Some(600.0));
        assert_eq!(value_of(&text, &format!("qsched_agent_shards_started_total{MODEL_TASK}")), Some(1.0));
        assert_eq!(value_of(&text, "qsched_agent_worker_restarts_total"), Some(0.0));

        m.worker_ended();
        m.shard_succeeded(&s, 3 << 20, "host_rss_peak");
        let text = m.render();
        let mut got = samples(&text);
        got.retain(|l| !l.starts_with("qsched_agent_heartbeat_age_seconds "));
        assert_eq!(
            got,
            [
                r#"qsched_agent_info{agent="host:cpu:42",host="host",device="cpu",gpu=""} 1"#,
                r#"qsched_agent_shard_peak_memory_bytes{model="qwen3",task="sst2",kind="host_rss_peak"} 3145728"#,
                r#"qsched_agent_shards_started_total{model="qwen3",task="sst2"} 1"#,
                r#"qsched_agent_shards_succeeded_total{model="qwen3",task="sst2"} 1"#,
                "qsched_agent_worker_restarts_total 0",
            ],
            "the shard's live series are gone once it ended:\n{text}"
        );
    }

    #[test]
    fn failures_retries_and_restarts_are_counted_by_model_and_task() {
        let m = AgentMetrics::new();
        let s = shard();
        m.shard_started(&s, 1);
        m.worker_ended();
        m.shard_retried(&s);
        m.shard_started(&s, 2);
        m.worker_ended();
        m.shard_failed(&s);
        let text = m.render();
        assert_eq!(value_of(&text, &format!("qsched_agent_shards_started_total{MODEL_TASK}")), Some(2.0));
        assert_eq!(value_of(&text, &format!("qsched_agent_shards_retried_total{MODEL_TASK}")), Some(1.0));
        assert_eq!(value_of(&text, &format!("qsched_agent_shards_failed_total{MODEL_TASK}")), Some(1.0));
        assert_eq!(value_of(&text, &format!("qsched_agent_shards_succeeded_total{MODEL_TASK}")), None);
        assert_eq!(value_of(&text, "qsched_agent_worker_restarts_total"), Some(1.0), "the second attempt's worker");
    }

    #[test]
    fn a_report_without_loss_drops_the_old_loss_and_a_lower_step_restarts_the_rate() {
        let m = AgentMetrics::new();
        m.shard_started(&shard(), 1);
        m.train_point(10, 100.0, &BTreeMap::from([("loss".to_owned(), 0.7)]));
        m.train_point(20, 110.0, &BTreeMap::from([("skipped".to_owned(), 10.0)]));
        let text = m.render();
        assert_eq!(value_of(&text, &format!("qsched_agent_loss{SHARD}")), None, "every step skipped: no loss");
        assert_eq!(value_of(&text, &format!("qsched_agent_steps_per_second{SHARD}")), Some(1.0));
        // The step went back (a resumed worker): the rate waits for the next report.
        m.train_point(8, 120.0, &BTreeMap::new());
        assert_eq!(value_of(&m.render(), &format!("qsched_agent_steps_per_second{SHARD}")), Some(1.0));
        m.train_point(12, 121.0, &BTreeMap::new());
        assert_eq!(value_of(&m.render(), &format!("qsched_agent_steps_per_second{SHARD}")), Some(4.0));
    }

    #[test]
    fn heartbeat_age_counts_from_the_last_stored_heartbeat() {
        let m = AgentMetrics::new();
        m.agent_started("a", "h", "cpu", None);
        let base = m.live().heartbeat_base;
        let text = m.render_at(base + Duration::from_millis(2500));
        assert_eq!(value_of(&text, "qsched_agent_heartbeat_age_seconds"), Some(2.5));
        m.heartbeat_stored();
        let base = m.live().heartbeat_base;
        assert_eq!(value_of(&m.render_at(base), "qsched_agent_heartbeat_age_seconds"), Some(0.0));
    }

    #[test]
    fn worker_memory_is_read_at_scrape_time_and_dropped_with_the_worker() {
        let m = AgentMetrics::new();
        m.shard_started(&shard(), 1);
        let series = format!("qsched_agent_worker_resident_memory_bytes{SHARD}");
        assert_eq!(value_of(&m.render(), &series), None, "no worker yet");
        // This test process stands in for the worker.
        m.worker_spawned(std::process::id());
        let rss = value_of(&m.render(), &series).expect("the worker's RSS");
        assert!(rss > 1e6, "RSS {rss}");
        // The heartbeat reads the same value.
        assert!(m.worker_resident_bytes().is_some_and(|b| b > 1_000_000));
        m.worker_ended();
        assert_eq!(value_of(&m.render(), &series), None);
        assert_eq!(m.worker_resident_bytes(), None);
    }

    #[tokio::test]
    async fn serves_metrics_until_shutdown_and_names_a_taken_address() {
        let m = AgentMetrics::new();
        m.agent_started("host:cpu:7", "host", "cpu", None);
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), m).await.unwrap();
        let address = server.local_addr();

        let taken = MetricsServer::bind(address, AgentMetrics::new()).await.unwrap_err();
        assert!(matches!(taken, Error::MetricsEndpoint { .. }), "{taken:?}");
        assert!(taken.to_string().contains(&address.to_string()), "{taken}");

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let response = get(address, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("content-type: application/openmetrics-text; version=1.0.0"), "{response}");
        assert!(response.contains(r#"qsched_agent_info{agent="host:cpu:7",host="host",device="cpu",gpu=""} 1"#));
        assert!(get(address, "/").await.starts_with("HTTP/1.1 404"));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), serving).await.expect("stopped in time").unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(address).await.is_err(), "the port is closed once stopped");
    }

    async fn get(address: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        response
    }
}
