//! `qagent --metrics-listen` scraped by a real Prometheus (Debian's `prometheus` package,
//! which `.ci/run` installs): a shard's counters reach Prometheus's storage and come back
//! from its query API. The test runs its own `prometheus` process on free loopback ports
//! with a private storage folder, so a system Prometheus (the package's service on :9090)
//! is neither needed nor disturbed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shared::store::Store;

use crate::procs::{Fleet, bin, data_dir, text};
use crate::util::free_port;

/// The Prometheus server binary (`QSCHED_PROMETHEUS`, default `prometheus` on the PATH).
fn prometheus_binary() -> PathBuf {
    std::env::var_os("QSCHED_PROMETHEUS").map_or_else(|| PathBuf::from("prometheus"), PathBuf::from)
}

/// A `prometheus` of our own scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let binary = prometheus_binary();
        // Missing is a failure, not a skip: CI installs the package, and a skipped test
        // would pass without having scraped anything.
        let version = Command::new(&binary).arg("--version").output().unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}): install Debian's prometheus package (`apt-get install prometheus`, as \
                 .ci/run does) or point QSCHED_PROMETHEUS at a Prometheus 2.x server binary",
                binary.display()
            )
        });
        assert!(version.status.success(), "{} --version failed: {:?}", binary.display(), text(&version));
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: qagent\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Prometheus { child, address, dir }
    }

    /// What it logged, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `data.result` vector of an instant query, or why there is none yet.
    async fn query(&self, query: &str) -> Result<Vec<serde_json::Value>, String> {
        let (status, body) = http_get(self.address, &format!("/api/v1/query?query={query}"))
            .await
            .map_err(|e| format!("Prometheus not answering yet: {e}"))?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if json["status"] != "success" {
            return Err(format!("HTTP {status}: {json}"));
        }
        json["data"]["result"].as_array().cloned().ok_or_else(|| format!("no result vector: {json}"))
    }

    /// Polls `query` until it returns a series whose value satisfies `want`.
    async fn wait_for(&mut self, query: &str, timeout: Duration, want: impl Fn(f64) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match self.query(query).await {
                Ok(series) => {
                    if let Some(found) = series.iter().find(|s| value(s).is_some_and(&want)) {
                        return found.clone();
                    }
                    last = format!("{series:?}");
                }
                Err(e) => last = e,
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}); its log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{query} did not reach the wanted value in {timeout:?}; last answer: {last}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series of an instant-query result (`"value": [time, "1"]`).
fn value(series: &serde_json::Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// `GET path` over HTTP/1.0 (the reply ends when the server closes, no chunking):
/// the status code and the body.
async fn http_get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(address).await?;
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).await?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP reply: {reply:?}"));
    let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let (_, body) = reply.split_once("\r\n\r\n").ok_or_else(bad)?;
    Ok((status, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_running_agent() {
    let fleet = Fleet::new("metrics").await;
    let run = scheduler::new_run_id();
    // 40 steps with a training report after each: a few seconds in which the running
    // shard's series can be seen.
    let spec = crate::procs::tiny_qwen3(vec![1], 40, 40);
    let record = scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    let shard = &record.shards[0].shard;

    let endpoint: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut agent = fleet.agent(&["--metrics-listen", &endpoint.to_string()]);
    let mut prometheus = Prometheus::start(endpoint);

    // While the shard runs, its live series are on the agent's page.
    let labels = format!(r#"{{model="qwen3",task="sst2",shard="{shard}"}} "#);
    let live = ["qsched_agent_loss", "qsched_agent_steps_per_second", "qsched_agent_worker_resident_memory_bytes"];
    let mut seen_live = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if !seen_live && let Ok((200, page)) = http_get(endpoint, "/metrics").await {
            seen_live = live.iter().all(|name| page.lines().any(|l| l.starts_with(&format!("{name}{labels}"))));
        }
        let states = fleet.store.states(&run).await.unwrap();
        if states.get(shard).is_some_and(|s| s.is_terminal()) {
            break;
        }
        assert!(Instant::now() < deadline, "the shard did not finish: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_live, "never saw {live:?} with {labels} while the shard ran");

    // The agent's own page: the counters of the one shard, and no per-shard series left
    // behind once it ended.
    let (status, page) = http_get(endpoint, "/metrics").await.expect("the agent serves /metrics");
    assert_eq!(status, 200, "{page}");
    let samples: Vec<&str> = page.lines().filter(|l| !l.starts_with('#')).collect();
    for wanted in [
        r#"qsched_agent_shards_started_total{model="qwen3",task="sst2"} 1"#,
        r#"qsched_agent_shards_succeeded_total{model="qwen3",task="sst2"} 1"#,
        "qsched_agent_worker_restarts_total 0",
    ] {
        assert!(samples.contains(&wanted), "no {wanted:?} in\n{page}");
    }
    for gone in ["qsched_agent_loss{", "qsched_agent_steps_per_second{", "qsched_agent_worker_resident_memory_bytes{"] {
        assert!(!samples.iter().any(|l| l.starts_with(gone)), "{gone} outlived its shard:\n{page}");
    }
    assert!(
        samples.iter().any(|l| l
            .starts_with(r#"qsched_agent_shard_peak_memory_bytes{model="qwen3",task="sst2",kind="host_rss_peak"} "#)),
        "{page}"
    );

    // Prometheus scraped it, stored it, and answers for it.
    let succeeded =
        prometheus.wait_for("qsched_agent_shards_succeeded_total", Duration::from_secs(60), |v| v >= 1.0).await;
    assert_eq!(value(&succeeded), Some(1.0), "{succeeded}");
    let labels = &succeeded["metric"];
    assert_eq!(labels["model"], "qwen3", "{succeeded}");
    assert_eq!(labels["task"], "sst2", "{succeeded}");
    assert_eq!(labels["job"], "qagent", "{succeeded}");
    assert_eq!(labels["instance"], endpoint.to_string(), "{succeeded}");
    let info = prometheus.wait_for("qsched_agent_info", Duration::from_secs(10), |v| v == 1.0).await;
    let agent_id = info["metric"]["agent"].as_str().unwrap_or_default();
    assert!(agent_id.ends_with(&format!(":cpu:{}", agent.pid())), "{info}");
    assert_eq!(info["metric"]["device"], "cpu", "{info}");
    // The agent heartbeats every 5 s: a fresh age, well under the heartbeat's 30 s expiry.
    let age = prometheus.wait_for("qsched_agent_heartbeat_age_seconds", Duration::from_secs(10), |_| true).await;
    assert!(value(&age).is_some_and(|a| (0.0..30.0).contains(&a)), "{age}");

    // The endpoint stops with the agent.
    let exit = agent.terminate(Duration::from_secs(30)).expect("qagent stopped on SIGTERM");
    assert!(exit.success(), "qagent exited with {exit}");
    assert!(tokio::net::TcpStream::connect(endpoint).await.is_err(), "{endpoint} still open after the agent stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_address_is_an_error_at_startup() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    // Nothing listens on port 1: were the address not checked first, the error would be
    // about the broker instead.
    let out = Command::new(bin("qagent"))
        .args(["--device", "cpu", "--metrics-listen", &address.to_string()])
        .env("QSCHED_DATA_DIR", data_dir())
        .env("QSCHED_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("RUST_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("run qagent");
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "qagent started on a taken address: {stderr}");
    assert!(stderr.contains(&format!("cannot listen for metrics on {address}")), "{stderr}");
    drop(taken);
}
