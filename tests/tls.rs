//! Encrypted connections with a private CA: `rediss://` and `amqps://` are trusted through
//! `--redis-ca-file` / `--amqp-ca-file` (or their environment variables), refused without
//! them, and a whole shard runs over them from `qsched submit` to `qsched results`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared::amqp::{AmqpBroker, AmqpConfig};
use shared::redis_store::{RedisConfig, RedisStore};
use shared::shard::ShardState;
use shared::store::Store;
use shared::tls::CaBundle;

use crate::procs::{AgentProcess, bin, data_dir, text};
use crate::util::{PrivateRabbit, PrivateRedis, TestCa, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_runs_over_amqps_and_rediss_trusting_a_private_ca() {
    let ca = TestCa::new();
    let redis = PrivateRedis::start_with_tls(&ca).await;
    let rabbit = PrivateRabbit::start_with_tls(&ca).await;
    let prefix = unique_prefix("tls");
    let bundle = CaBundle::read(&ca.ca_file()).unwrap();

    // The host's store does not know the private CA: the handshake is refused, and the
    // error says why.
    let err = RedisStore::connect_with(RedisConfig::new(redis.tls_url()).with_prefix(&prefix)).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    let err = AmqpBroker::connect(AmqpConfig::new(rabbit.tls_url()).with_prefix(&prefix)).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // A CA file beside a plain URL is a mistake (credentials would travel in the clear).
    let mut plain = RedisConfig::new(redis.url()).with_prefix(&prefix);
    plain.ca = Some(bundle.clone());
    let err = RedisStore::connect_with(plain).await.unwrap_err().to_string();
    assert!(err.contains("rediss://"), "{err}");
    let mut plain = AmqpConfig::new(rabbit.url()).with_prefix(&prefix);
    plain.ca = Some(bundle.clone());
    let err = AmqpBroker::connect(plain).await.unwrap_err().to_string();
    assert!(err.contains("amqps://"), "{err}");

    // Trusted with the CA.
    let mut config = RedisConfig::new(redis.tls_url()).with_prefix(&prefix);
    config.ca = Some(bundle.clone());
    let store = RedisStore::connect_with(config).await.unwrap();

    // The binaries, given only the TLS endpoints and the CA files through the environment.
    let env = |cmd: &mut Command| {
        cmd.env("QSCHED_AMQP_URL", rabbit.tls_url())
            .env("QSCHED_AMQP_CA_FILE", ca.ca_file())
            .env("QSCHED_REDIS_URL", redis.tls_url())
            .env("QSCHED_REDIS_CA_FILE", ca.ca_file())
            .env("QSCHED_PREFIX", &prefix)
            .env("QSCHED_DATA_DIR", data_dir())
            .env("RUST_LOG", "warn")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    };
    let qsched = |args: &[&str]| {
        let mut cmd = Command::new(bin("qsched"));
        env(&mut cmd);
        cmd.args(args).output().expect("run qsched")
    };
    let out = qsched(&[
        "submit",
        "--models",
        "qwen3",
        "--tasks",
        "sst2",
        "--seeds",
        "1",
        "--set",
        "first_order.max_steps=3",
        "--set",
        "first_order.eval_every=3",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "submit over TLS failed:\n{stderr}");
    let run = stdout.trim().to_owned();
    let mut cmd = Command::new(bin("qagent"));
    env(&mut cmd);
    cmd.args(["--device", "cpu", "--threads", "1", "--max-shards", "1"]).stdin(Stdio::null());
    let _agent = AgentProcess { child: cmd.spawn().expect("start qagent") };

    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let states = store.states(&run).await.unwrap();
        if states.values().all(|s| s.is_terminal()) && !states.is_empty() {
            assert!(states.values().all(|s| *s == ShardState::Succeeded), "{states:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the shard did not finish over TLS: {states:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = qsched(&["results", &run, "--format", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "results over TLS failed:\n{stderr}");
    assert!(stdout.contains("\"succeeded\"") && stdout.contains("sst2"), "{stdout}");
    // Without the CA file the same command is refused with the reason.
    let mut cmd = Command::new(bin("qsched"));
    env(&mut cmd);
    let out = cmd.env_remove("QSCHED_REDIS_CA_FILE").args(["results", &run]).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).1.to_lowercase().contains("certificate"), "{}", text(&out).1);
}
