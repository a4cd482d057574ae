//! The long chaos suite (`ops/chaos.sh`; ignored in the test command): hundreds of shards
//! on a RabbitMQ node and a Redis server of its own, while agents and workers are killed
//! at random steps, the broker is stopped and killed (once during a submit), Redis is
//! killed with AOF on while agents are busy and kept down for a minute while they are
//! idle, and about a thousand malformed messages arrive. It ends with a JSON summary of
//! what it did and what it found: shards without a result, shards with more than one,
//! wrongly dead-lettered messages, agent crashes, files touched outside the roots, and
//! resumed shards that differ from an uninterrupted run.
//!
//! Settings (environment): `QSCHED_CHAOS_SHARDS` (200), `QSCHED_CHAOS_KILLS` (20),
//! `QSCHED_CHAOS_FUZZ` (1000), `QSCHED_CHAOS_OUTAGE_S` (60), `QSCHED_CHAOS_SEED` (1),
//! `QSCHED_CHAOS_OUT` (a file for the summary).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use shared::DeviceClass;
use shared::amqp::{AmqpBroker, AmqpConfig};
use shared::broker::{Broker, BrokerAdmin, OutgoingMessage};
use shared::redis_store::{RedisConfig, RedisStore};
use shared::shard::{Shard, ShardState};
use shared::spec::BenchmarkSpec;
use shared::store::Store;

use crate::procs::{AgentProcess, bin, data_dir, text};
use crate::util::{PrivateRabbit, PrivateRedis, snapshot, unique_prefix};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const STEPS: u32 = 24;
/// Shards of the run whose submit is interrupted (enough that publishing takes a while:
/// about a second at the submit's rate on 2 cores).
const RUN_B_SHARDS: u64 = 20_000;

fn spec(seeds: std::ops::RangeInclusive<u64>) -> BenchmarkSpec {
    crate::procs::tiny_qwen3(seeds.collect(), STEPS, 4)
}

/// Malformed messages of every kind an operator tried: random bytes, truncations and bit
/// flips of a valid shard, wrong schemas, deep nesting, length bombs, ids that name paths,
/// hostile headers.
fn fuzz_messages(valid: &Shard, count: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<OutgoingMessage> {
    let good = shared::wire::encode_shard(valid).unwrap();
    let as_value: serde_json::Value = rmp_serde::from_slice(&good).unwrap();
    (0..count)
        .map(|i| {
            let mut headers = BTreeMap::new();
            let body = match i % 8 {
                0 => (0..rng.random_range(0..2048)).map(|_| rng.random::<u8>()).collect(),
                1 => good[..rng.random_range(0..good.len())].to_vec(),
                2 => {
                    let mut b = good.clone();
                    for _ in 0..rng.random_range(1..8) {
                        let at = rng.random_range(0..b.len());
                        b[at] ^= 1 << rng.random_range(0..8);
                    }
                    b
                }
                3 => {
                    rmp_serde::to_vec_named(&serde_json::json!({"schema_version": 1, "shard": {"run_id": 7}})).unwrap()
                }
                4 => {
                    let mut nested = serde_json::json!(1);
                    for _ in 0..rng.random_range(50..120) {
                        nested = serde_json::json!([nested]);
                    }
                    rmp_serde::to_vec_named(&serde_json::json!({"schema_version": 1, "shard": nested})).unwrap()
                }
                // A str32 header claiming 4 GiB, then nothing.
                5 => vec![0x82, 0xae, b's', b'c', b'h', b'e', b'm', b'a', 0xdb, 0xff, 0xff, 0xff, 0xff],
                6 => {
                    let mut v = as_value.clone();
                    let hostile = ["..", ".", "/etc", "../../outside", "a/b", "\u{0}\u{1}", "x".repeat(200).as_str()]
                        .map(str::to_owned);
                    let field = if rng.random::<bool>() { "run_id" } else { "shard_id" };
                    v["shard"][field] = hostile[rng.random_range(0..hostile.len())].clone().into();
                    rmp_serde::to_vec_named(&v).unwrap()
                }
                _ => {
                    headers.insert("traceparent".into(), "00-zzzz-not-a-trace".into());
                    headers.insert("x-death".into(), "forged".into());
                    headers.insert("x-qsched-run".into(), "../../etc".into());
                    let mut b = good.clone();
                    b.truncate(good.len() / 2);
                    b
                }
            };
            OutgoingMessage { class: DeviceClass::Cpu, message_id: format!("fuzz:{i}"), body, headers }
        })
        .collect()
}

struct Fleet {
    prefix: String,
    rabbit: PrivateRabbit,
    redis: PrivateRedis,
    ckpt: std::path::PathBuf,
    agents: Vec<AgentProcess>,
    agents_started: usize,
    crashed: Vec<String>,
}

impl Fleet {
    fn start_agent(&mut self) {
        let mut cmd = Command::new(bin("qagent"));
        cmd.env("QSCHED_AMQP_URL", self.rabbit.url())
            .env("QSCHED_REDIS_URL", self.redis.url())
            .env("QSCHED_PREFIX", &self.prefix)
            .env("QSCHED_DATA_DIR", data_dir())
            .env("RUST_LOG", std::env::var("QSCHED_TEST_LOG").unwrap_or_else(|_| "error".into()))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .args(["--device", "cpu", "--threads", "1", "--stall-timeout-secs", "120", "--checkpoint-dir"])
            .arg(&self.ckpt)
            .stdin(Stdio::null());
        self.agents.push(AgentProcess { child: cmd.spawn().expect("start qagent") });
        self.agents_started += 1;
    }

    /// Agents that exited without being killed by the suite are crashes.
    fn check_alive(&mut self) {
        for a in &mut self.agents {
            if let Ok(Some(status)) = a.child.try_wait() {
                self.crashed.push(format!("agent {} exited: {status}", a.pid()));
            }
        }
        self.agents.retain_mut(|a| a.child.try_wait().ok().flatten().is_none());
    }

    async fn broker(&self) -> AmqpBroker {
        AmqpBroker::connect(AmqpConfig::new(self.rabbit.url()).with_prefix(self.prefix.clone())).await.unwrap()
    }

    async fn store(&self) -> RedisStore {
        RedisStore::connect_with(RedisConfig::new(self.redis.url()).with_prefix(self.prefix.clone())).await.unwrap()
    }
}

fn workers_of(agent: &AgentProcess) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.pid()))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

async fn with_retries<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = shared::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "service did not come back: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run by ops/chaos.sh"]
async fn long_suite() {
    let started = Instant::now();
    let shards_a = env_or("QSCHED_CHAOS_SHARDS", 200);
    let kills = env_or("QSCHED_CHAOS_KILLS", 20) as usize;
    let fuzz = env_or("QSCHED_CHAOS_FUZZ", 1000) as usize;
    let outage = Duration::from_secs(env_or("QSCHED_CHAOS_OUTAGE_S", 60));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(env_or("QSCHED_CHAOS_SEED", 1));

    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir_all(outside.join("victim")).unwrap();
    std::fs::write(outside.join("victim/precious.txt"), "keep").unwrap();
    let before = snapshot(&outside);
    let ckpt = root.path().join("ckpt");
    std::fs::create_dir_all(&ckpt).unwrap();
    let mut fleet = Fleet {
        prefix: unique_prefix("chaos"),
        rabbit: PrivateRabbit::start().await,
        redis: PrivateRedis::start_with_aof().await,
        ckpt,
        agents: Vec::new(),
        agents_started: 0,
        crashed: Vec::new(),
    };
    let mut log: Vec<String> = Vec::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();

    // 1. Run A and the malformed messages, then two agents.
    let run_a = scheduler::new_run_id();
    let spec_a = spec(1..=shards_a);
    {
        let (broker, store) = (fleet.broker().await, fleet.store().await);
        scheduler::submit(&spec_a, &run_a, &broker, &store).await.unwrap();
        let valid = scheduler::expand(&spec_a, &run_a).remove(0);
        for chunk in fuzz_messages(&valid, fuzz, &mut rng).chunks(100) {
            broker.publish(chunk.to_vec()).await.unwrap();
        }
    }
    fleet.start_agent();
    fleet.start_agent();

    // 2. Chaos while run A is in flight: worker and agent kills at random steps, two
    //    broker restarts (one clean stop, one kill), two Redis kills with AOF.
    let mut plan: Vec<&str> = Vec::new();
    plan.extend(std::iter::repeat_n("kill-worker", kills.div_ceil(2)));
    plan.extend(std::iter::repeat_n("kill-agent", kills / 2));
    plan.extend(["stop-broker", "kill-broker", "kill-redis", "kill-redis"]);
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.random_range(0..=i));
    }
    let total: u64 = shards_a;
    let mut actions = plan.into_iter();
    let mut next_at = Instant::now() + Duration::from_secs(rng.random_range(5..15));
    let deadline = Instant::now() + Duration::from_secs(60 * 60);
    loop {
        fleet.check_alive();
        let done = match fleet.store().await.results(run_a.as_str()).await {
            Ok(r) => r.len() as u64,
            Err(_) => 0,
        };
        if done >= total {
            break;
        }
        assert!(Instant::now() < deadline, "run A did not finish: {done}/{total}");
        if Instant::now() >= next_at
            && let Some(action) = actions.next()
        {
            match action {
                "kill-worker" => {
                    let busy: Vec<u32> = fleet.agents.iter().flat_map(workers_of).collect();
                    if let Some(&pid) = busy.get(rng.random_range(0..busy.len().max(1))) {
                        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
                        *counts.entry("worker_kills").or_default() += 1;
                        log.push(format!("{:.0}s kill worker {pid}", started.elapsed().as_secs_f64()));
                    }
                }
                "kill-agent" => {
                    let i = rng.random_range(0..fleet.agents.len());
                    let mut a = fleet.agents.remove(i);
                    log.push(format!("{:.0}s kill agent {}", started.elapsed().as_secs_f64(), a.pid()));
                    a.kill();
                    *counts.entry("agent_kills").or_default() += 1;
                    fleet.start_agent();
                }
                "stop-broker" | "kill-broker" => {
                    log.push(format!("{:.0}s {action}", started.elapsed().as_secs_f64()));
                    if action == "stop-broker" {
                        fleet.rabbit.stop()
                    } else {
                        fleet.rabbit.kill()
                    }
                    tokio::time::sleep(Duration::from_secs(rng.random_range(2..8))).await;
                    fleet.rabbit.restart().await;
                    *counts.entry("broker_restarts").or_default() += 1;
                }
                _ => {
                    log.push(format!("{:.0}s kill redis", started.elapsed().as_secs_f64()));
                    fleet.redis.kill();
                    tokio::time::sleep(Duration::from_secs(rng.random_range(2..8))).await;
                    fleet.redis.restart().await;
                    *counts.entry("redis_restarts").or_default() += 1;
                }
            }
            next_at = Instant::now() + Duration::from_secs(rng.random_range(3..12));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 3. The broker killed during a submit of RUN_B_SHARDS shards: run B is recorded with
    //    what was confirmed (or not at all, if the kill came first); resume (or submit
    //    again) once it is back. Run B is cancelled before it is submitted, so agents
    //    settle each of its shards as cancelled without training: what is checked is that
    //    every shard was published and settled exactly once.
    let run_b = scheduler::new_run_id();
    let spec_b = spec(10_001..=10_000 + RUN_B_SHARDS);
    fleet.store().await.cancel(run_b.as_str()).await.unwrap();
    let interrupted = {
        let (broker, store) = (fleet.broker().await, fleet.store().await);
        let (spec, run) = (spec_b.clone(), run_b.clone());
        let submitting = tokio::spawn(async move { scheduler::submit(&spec, &run, &broker, &store).await.is_err() });
        // Kill it mid-publish: once the first batches are confirmed (marked queued), after
        // a random extra delay, while the submit is still running.
        let store = fleet.store().await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !submitting.is_finished() && Instant::now() < deadline {
            let states = store.states(run_b.as_str()).await.unwrap_or_default();
            if states.values().any(|s| *s != ShardState::Unpublished) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        fleet.rabbit.kill();
        let interrupted = submitting.await.unwrap();
        *counts.entry("broker_restarts").or_default() += 1;
        fleet.rabbit.restart().await;
        interrupted
    };
    let recorded = fleet.store().await.get_run(run_b.as_str()).await.unwrap().is_some();
    let (rabbit, redis, prefix) = (fleet.rabbit.url(), fleet.redis.url(), fleet.prefix.clone());
    let published = with_retries(|| {
        let (rabbit, redis, prefix, spec, run) =
            (rabbit.clone(), redis.clone(), prefix.clone(), spec_b.clone(), run_b.clone());
        async move {
            let broker = AmqpBroker::connect(AmqpConfig::new(rabbit).with_prefix(prefix.clone())).await?;
            let store = RedisStore::connect_with(RedisConfig::new(redis).with_prefix(prefix)).await?;
            let published = if recorded {
                scheduler::resume(run.as_str(), &broker, &store).await.map(|ids| ids.len())
            } else {
                scheduler::submit(&spec, &run, &broker, &store).await.map(|r| r.shards.len())
            };
            published.map_err(|e| match e {
                scheduler::Error::Shared(e) => e,
                other => panic!("{other}"),
            })
        }
    })
    .await;
    log.push(format!(
        "{:.0}s broker killed during a submit ({}); {} shards then {}",
        started.elapsed().as_secs_f64(),
        if !interrupted {
            "it had finished"
        } else if recorded {
            "run recorded, partly published"
        } else {
            "before the run was recorded"
        },
        published,
        if recorded { "resumed" } else { "submitted again" }
    ));
    let run_b_id = run_b.to_string();

    // 4. A Redis outage with idle agents: shards arrive while it is down.
    let store = fleet.store().await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while store.results(&run_b_id).await.unwrap().len() < RUN_B_SHARDS as usize {
        fleet.check_alive();
        assert!(Instant::now() < deadline, "run B did not finish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log.push(format!("{:.0}s redis down for {} s, idle agents", started.elapsed().as_secs_f64(), outage.as_secs()));
    let dead_before_outage = fleet.broker().await.dead_letter_count().await.unwrap();
    fleet.redis.kill();
    let run_c = scheduler::new_run_id();
    let shards_c = scheduler::expand(&spec(2001..=2006), &run_c);
    fleet.broker().await.publish(shards_c.iter().map(|s| scheduler::message_for(s).unwrap()).collect()).await.unwrap();
    let until = Instant::now() + outage;
    let mut dead_during_outage = 0;
    while Instant::now() < until {
        fleet.check_alive();
        dead_during_outage = dead_during_outage.max(fleet.broker().await.dead_letter_count().await.unwrap());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    fleet.redis.restart().await;
    *counts.entry("redis_restarts").or_default() += 1;
    let store = fleet.store().await;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        fleet.check_alive();
        let mut missing = 0;
        for s in &shards_c {
            if store.get_result(&run_c, &s.shard_id).await.unwrap().is_none() {
                missing += 1;
            }
        }
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} shards of the outage batch did not finish");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 5. What happened.
    fleet.check_alive();
    let broker = fleet.broker().await;
    let mut raw = redis::Client::open(fleet.redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut shards_total = 0u64;
    let mut lost = Vec::new();
    let mut duplicates = 0u64;
    let mut failed = Vec::new();
    let mut resumed_results = Vec::new();
    for (run, ids) in [
        (
            run_a.to_string(),
            scheduler::expand(&spec(1..=shards_a), &run_a)
                .into_iter()
                .map(|s| s.shard_id.to_string())
                .collect::<Vec<_>>(),
        ),
        (
            run_b_id.clone(),
            store.get_run(&run_b_id).await.unwrap().unwrap().shards.into_iter().map(|s| s.shard).collect(),
        ),
        (run_c.to_string(), shards_c.iter().map(|s| s.shard_id.to_string()).collect()),
    ] {
        let pattern = format!("{}:{{run:{run}}}:result:*", fleet.prefix);
        let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut raw).await.unwrap();
        let have: BTreeSet<String> = keys.iter().filter_map(|k| k.rsplit(':').next().map(str::to_owned)).collect();
        duplicates += keys.len() as u64 - have.len() as u64;
        // Run B was cancelled before it was submitted: its shards end cancelled.
        let expected = if run == run_b_id { ShardState::Cancelled } else { ShardState::Succeeded };
        for id in &ids {
            shards_total += 1;
            match store.get_result(&run, id).await.unwrap() {
                None => lost.push(format!("{run}/{id}")),
                Some(r) if r.status != expected => failed.push(format!("{run}/{id}: {:?}", r.error)),
                Some(r) => {
                    if r.measured.resumed_from_step.is_some() {
                        resumed_results.push(r);
                    }
                }
            }
        }
    }
    // Count first: a listing holds the messages it reads until its channel closes.
    let dead_count = broker.dead_letter_count().await.unwrap();
    let dead = broker.dead_letters(fuzz + 100).await.unwrap();
    // An agent dead-letters by publishing a copy, then acking; a kill or broker restart in
    // between leaves a second copy (at least once), never none. Every malformed message
    // must be there, and nothing else.
    let distinct_dead: BTreeSet<&str> = dead.iter().filter_map(|d| d.message_id.as_deref()).collect();
    let fuzz_ids: BTreeSet<String> = (0..fuzz).map(|i| format!("fuzz:{i}")).collect();
    let missing_dead: Vec<&String> = fuzz_ids.iter().filter(|id| !distinct_dead.contains(id.as_str())).collect();
    let wrongly_dead: Vec<String> = dead
        .iter()
        .filter(|d| !d.message_id.as_deref().is_some_and(|m| m.starts_with("fuzz:")))
        .map(|d| format!("{:?}: {}", d.message_id, d.reason))
        .collect();
    let outside_touched = (snapshot(&outside) != before) as u64;
    // Resumed shards against uninterrupted runs of the same shard (`--local`, same seed).
    let mut compared = 0;
    let mut differ = Vec::new();
    for r in resumed_results.iter().take(5) {
        let seed = r.seed.to_string();
        let mut args: Vec<String> =
            ["submit", "--local", "--scale", "tiny", "--models", "qwen3", "--tasks", "sst2", "--seeds", &seed]
                .map(str::to_owned)
                .to_vec();
        for s in [
            format!("first_order.max_steps={STEPS}"),
            format!("first_order.eval_every={STEPS}"),
            "first_order.checkpoint_every=4".into(),
        ] {
            args.extend(["--set".into(), s]);
        }
        args.extend(["--threads", "1", "--format", "json", "--data-dir"].map(str::to_owned));
        args.push(data_dir().display().to_string());
        let out = Command::new(bin("qsched"))
            .args(&args)
            .env("RUST_LOG", "error")
            .env("QSCHED_LOCAL_STORE", root.path().join("local.redb"))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        let local: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        compared += 1;
        if local[0]["metrics"] != serde_json::to_value(&r.measured.metrics).unwrap()
            || local[0]["shard"] != r.shard.as_str()
        {
            differ.push(r.shard.clone());
        }
    }
    let summary = serde_json::json!({
        "shards": shards_total,
        "shards_trained": shards_total - RUN_B_SHARDS,
        "interrupted_submit_shards": RUN_B_SHARDS,
        "malformed_messages": fuzz,
        "actions": counts,
        "agents_started": fleet.agents_started,
        "lost": lost.len(),
        "failed": failed.len(),
        "duplicate_results": duplicates,
        "dead_letters": dead_count,
        "dead_letters_listed": dead.len(),
        "wrongly_dead_lettered": wrongly_dead.len(),
        "malformed_not_dead_lettered": missing_dead.len(),
        "dead_lettered_during_redis_outage": dead_during_outage.saturating_sub(dead_before_outage),
        "dead_letter_copies": dead.len() - distinct_dead.len(),
        "agent_crashes": fleet.crashed.len(),
        "files_outside_roots_touched": outside_touched,
        "resumed_shards": resumed_results.len(),
        "resumed_compared_with_uninterrupted": compared,
        "resumed_differing": differ.len(),
        "seconds": started.elapsed().as_secs(),
        "log": log,
    });
    let text = serde_json::to_string_pretty(&summary).unwrap();
    println!("{text}");
    if let Ok(path) = std::env::var("QSCHED_CHAOS_OUT") {
        std::fs::write(path, &text).unwrap();
    }
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert_eq!(duplicates, 0);
    assert!(wrongly_dead.is_empty(), "wrongly dead-lettered: {wrongly_dead:?}");
    assert!(missing_dead.is_empty(), "malformed messages not dead-lettered: {missing_dead:?}");
    assert_eq!(dead.len() as u64, dead_count, "the listing shows every dead letter");
    assert!(fleet.crashed.is_empty(), "crashes: {:?}", fleet.crashed);
    assert_eq!(outside_touched, 0);
    assert!(differ.is_empty(), "resumed shards differ from uninterrupted runs: {differ:?}");
}
