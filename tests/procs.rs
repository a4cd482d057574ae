//! Harness for tests that run the real binaries: where `qagent`/`qsched` are, the data
//! directory, agent processes killed on drop, and one prefix shared by broker and store.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use shared::amqp::AmqpBroker;
use shared::redis_store::{RedisConfig, RedisStore};
use shared::shard::ShardState;
use shared::store::Store;

use crate::util::{TestBroker, TestStore, amqp_url, redis_url, unique_prefix};

/// A run of tiny `qwen3` × SST-2 shards: `steps` steps, one evaluation at the end, a
/// checkpoint every `checkpoint_every` steps.
pub fn tiny_qwen3(seeds: Vec<u64>, steps: u32, checkpoint_every: u32) -> shared::spec::BenchmarkSpec {
    shared::spec::SpecInput {
        scale: Some("tiny".into()),
        models: Some(vec!["qwen3".into()]),
        tasks: Some(vec!["sst2".into()]),
        seeds: Some(seeds),
        set: vec![
            format!("first_order.max_steps={steps}"),
            format!("first_order.eval_every={steps}"),
            format!("first_order.checkpoint_every={checkpoint_every}"),
        ],
        ..Default::default()
    }
    .resolve()
    .unwrap()
}

/// A binary of this workspace, built by `cargo build --workspace --bins` (the test
/// command does that first).
pub fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/integration-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target profile dir");
    let path = dir.join(name);
    assert!(path.is_file(), "{} not found: run `cargo build --workspace --bins` before the tests", path.display());
    path
}

/// The data directory with `glue/` and `tokenizers/` (`QSCHED_DATA_DIR`, else `../shared/data`).
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("QSCHED_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")));
    assert!(dir.join("glue").is_dir(), "no data directory at {} (set QSCHED_DATA_DIR)", dir.display());
    dir
}

/// Broker and store under one prefix, as `qagent --prefix` uses it; both cleaned up on drop.
/// A `qsched submit --local` of the fleet keeps its run in a store file of its own.
pub struct Fleet {
    pub prefix: String,
    pub broker: TestBroker,
    pub store: TestStore,
    pub local_store: tempfile::TempDir,
}

impl Fleet {
    pub async fn new(name: &str) -> Self {
        let prefix = unique_prefix(name);
        let p = prefix.clone();
        let broker = TestBroker::with(name, move |c| c.prefix = p).await;
        let config = RedisConfig::new(redis_url()).with_prefix(prefix.clone());
        let store = RedisStore::connect_with(config.clone()).await.expect("connect to Redis");
        Fleet { prefix, broker, store: TestStore { store, config }, local_store: tempfile::tempdir().unwrap() }
    }

    /// A fleet on `broker` (made with its own settings under `prefix`) and the test Redis.
    pub async fn with_broker(prefix: &str, broker: TestBroker) -> Self {
        assert_eq!(broker.config.prefix, prefix, "broker and store share the prefix");
        let config = RedisConfig::new(redis_url()).with_prefix(prefix.to_owned());
        let store = RedisStore::connect_with(config.clone()).await.expect("connect to Redis");
        Fleet {
            prefix: prefix.to_owned(),
            broker,
            store: TestStore { store, config },
            local_store: tempfile::tempdir().unwrap(),
        }
    }

    pub fn broker(&self) -> &AmqpBroker {
        &self.broker.broker
    }

    /// Environment for a child process of this fleet.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("QSCHED_AMQP_URL", amqp_url())
            .env("QSCHED_REDIS_URL", redis_url())
            .env("QSCHED_PREFIX", &self.prefix)
            .env("QSCHED_DATA_DIR", data_dir())
            .env("QSCHED_LOCAL_STORE", self.local_store.path().join("local.redb"))
            // Child processes log to the test's terminal; keep it to warnings unless asked.
            .env("RUST_LOG", std::env::var("QSCHED_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    }

    /// Starts `qagent --device cpu` with one thread per worker.
    pub fn agent(&self, extra: &[&str]) -> AgentProcess {
        let mut cmd = Command::new(bin("qagent"));
        self.env(&mut cmd);
        cmd.args(["--device", "cpu", "--threads", "1"]).args(extra).stdin(Stdio::null());
        AgentProcess { child: cmd.spawn().expect("start qagent") }
    }

    /// Runs `qsched ARGS` to completion.
    pub fn qsched(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("qsched"));
        self.env(&mut cmd);
        cmd.args(args).output().expect("run qsched")
    }

    /// Waits until every shard of `run` is terminal.
    pub async fn wait_finished(&self, run: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.store.get_run(run).await.unwrap().expect("run record");
            let states = self.store.states(run).await.unwrap();
            if record.shards.iter().all(|s| states.get(&s.shard).is_some_and(|st| st.is_terminal())) {
                return;
            }
            assert!(Instant::now() < deadline, "run {run} did not finish in {timeout:?}: {states:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Shards of `run` currently in `state`.
    pub async fn in_state(&self, run: &str, state: ShardState) -> Vec<String> {
        self.store.states(run).await.unwrap().into_iter().filter(|(_, s)| *s == state).map(|(k, _)| k).collect()
    }
}

/// A child process killed (SIGKILL) on drop.
pub struct AgentProcess {
    pub child: Child,
}

impl AgentProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the agent dies without acking or cleaning up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}
