//! The quick chaos suite: hostile messages and service outages against real `qagent`
//! processes. Each test reproduces one hole an operator found and asserts that nothing is
//! lost, nothing is wrongly dead-lettered, no agent crashes and no file outside the
//! checkpoint root is touched. (`ops/chaos.sh` runs the long version.)

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shared::DeviceClass;
use shared::broker::{Broker, BrokerAdmin, OutgoingMessage};
use shared::redis_store::{RedisConfig, RedisStore};
use shared::shard::{Shard, ShardState};
use shared::spec::{BenchmarkSpec, ModelInit};
use shared::store::Store;

use crate::procs::{AgentProcess, Fleet, bin};
use crate::util::{PrivateRedis, TestBroker, snapshot, unique_prefix};

fn tiny_qwen3(seeds: Vec<u64>, steps: u32) -> BenchmarkSpec {
    crate::procs::tiny_qwen3(seeds, steps, 2)
}

async fn publish(broker: &dyn Broker, shards: &[Shard]) {
    let messages = shards.iter().map(|s| scheduler::message_for(s).unwrap()).collect();
    broker.publish(messages).await.unwrap();
}

/// A shard's envelope with fields replaced after encoding, as a hostile publisher would
/// write it (the typed `Shard` cannot hold these values).
fn tampered(shard: &Shard, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let bytes = shared::wire::encode_shard(shard).unwrap();
    let mut value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    edit(&mut value["shard"]);
    rmp_serde::to_vec_named(&value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_ids_and_model_dirs_touch_nothing_outside_the_roots() {
    let fleet = Fleet::new("traversal").await;
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("ckpt");
    // What a hostile message aimed at: a sibling of the checkpoint root, and another
    // run's checkpoints inside it.
    std::fs::create_dir_all(outer.path().join("victim")).unwrap();
    std::fs::write(outer.path().join("victim/precious.txt"), "keep me").unwrap();
    std::fs::create_dir_all(root.join("r-other/0123456789abcdef/step-4")).unwrap();
    std::fs::write(root.join("r-other/0123456789abcdef/LATEST"), "step-4").unwrap();
    let before = snapshot(outer.path());

    let run = scheduler::new_run_id();
    let shards = scheduler::expand(&tiny_qwen3(vec![1, 2], 2), &run);
    let victim = outer.path().join("victim");
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            tampered(&shards[0], |s| {
                s["run_id"] = "..".into();
                s["shard_id"] = "victim".into();
            }),
        ),
        ("absolute", tampered(&shards[0], |s| s["run_id"] = victim.to_str().unwrap().into())),
        (
            "dot",
            tampered(&shards[0], |s| {
                s["run_id"] = ".".into();
                s["shard_id"] = ".".into();
            }),
        ),
        ("nul", tampered(&shards[0], |s| s["shard_id"] = "\u{0}\u{1}".into())),
        ("slash", tampered(&shards[0], |s| s["shard_id"] = "../../victim".into())),
        // Valid ids, other settings: it would run them under the real shard's id.
        ("edited", tampered(&shards[0], |s| s["train"]["learning_rate"] = 0.5.into())),
        // Another (valid) run id: the content hash does not cover it, the message id does.
        ("other-run", tampered(&shards[0], |s| s["run_id"] = "r-elsewhere".into())),
    ];
    // The last two travel under the real shard's message id, as a message changed in
    // transit would.
    let real_id = format!("{run}:{}", shards[0].shard_id);
    let messages = hostile
        .into_iter()
        .map(|(name, body)| OutgoingMessage {
            class: DeviceClass::Cpu,
            message_id: if matches!(name, "edited" | "other-run") {
                real_id.clone()
            } else {
                format!("hostile:{name}")
            },
            body,
            headers: BTreeMap::new(),
        })
        .collect();
    fleet.broker().publish(messages).await.unwrap();
    // A shard with valid ids that names a model directory the operator did not allow.
    let mut etc = shards[1].clone();
    etc.init = ModelInit::Pretrained { dir: "/etc".into() };
    etc.shard_id = etc.content_id();
    // And an ordinary shard after all of them: the agent keeps working.
    publish(fleet.broker(), &[etc.clone(), shards[0].clone()]).await;

    let models = outer.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let agent = fleet.agent(&["--checkpoint-dir", root.to_str().unwrap(), "--model-root", models.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let ok = loop {
        let done = (
            fleet.store.get_result(&run, &shards[0].shard_id).await.unwrap(),
            fleet.store.get_result(&run, &etc.shard_id).await.unwrap(),
        );
        if let (Some(ok), Some(_)) = &done {
            break ok.clone();
        }
        assert!(Instant::now() < deadline, "shards did not finish: {done:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(ok.status, ShardState::Succeeded, "{:?}", ok.error);
    let refused = fleet.store.get_result(&run, &etc.shard_id).await.unwrap().unwrap();
    assert_eq!(refused.status, ShardState::Failed);
    let reason = refused.error.unwrap_or_default();
    assert!(reason.contains("/etc") && reason.contains("outside the agent's model roots"), "{reason}");

    // Every hostile message is dead-lettered with its reason; none ran.
    let dead = fleet.broker().dead_letters(20).await.unwrap();
    assert_eq!(dead.len(), 7, "{dead:?}");
    let corrupt: Vec<&str> =
        dead.iter().filter(|d| d.reason.contains("corrupt shard:")).map(|d| d.reason.as_str()).collect();
    assert!(corrupt.iter().any(|r| r.contains("content hashes to")), "{corrupt:?}");
    assert!(corrupt.iter().any(|r| r.contains("does not name the shard")), "{corrupt:?}");
    for letter in &dead {
        assert!(
            letter.reason.contains("not a valid run id")
                || letter.reason.contains("not a valid shard id")
                || letter.reason.contains("corrupt shard:"),
            "{letter:?}"
        );
    }
    // The agent is alive, and outside the finished shard's own (removed) folder not one
    // file under the temporary tree changed.
    let mut agent = agent;
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent exited");
    agent.kill();
    let mut after = snapshot(outer.path());
    after.retain(|k, _| !k.starts_with(&format!("ckpt/{run}")));
    assert_eq!(before, after, "files outside the shard's own checkpoint folder changed");
    assert!(!root.join(run.as_str()).exists(), "the finished shard's checkpoints are removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_dead_lettered_without_a_crash() {
    // The publisher's own limit is raised so that the broker gets a message larger than
    // the agent accepts (a foreign or older publisher).
    let prefix = unique_prefix("oversized");
    let p = prefix.clone();
    let broker = TestBroker::with("oversized", move |c| {
        c.prefix = p;
        c.max_message_bytes = 4 << 20;
    })
    .await;
    let fleet = Fleet::with_broker(&prefix, broker).await;
    let run = scheduler::new_run_id();
    let shard = scheduler::expand(&tiny_qwen3(vec![1], 2), &run).remove(0);
    let mut big = scheduler::message_for(&shard).unwrap();
    big.message_id = "big:1".into();
    big.body = vec![0x90; 1_500_000];
    fleet.broker().publish(vec![big, scheduler::message_for(&shard).unwrap()]).await.unwrap();
    let mut agent = fleet.agent(&[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while fleet.store.get_result(&run, &shard.shard_id).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the good shard did not finish");
        assert!(agent.child.try_wait().unwrap().is_none(), "the agent crashed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let dead = fleet.broker().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("exceeds the 1048576-byte limit"), "{}", dead[0].reason);
    assert_eq!(dead[0].headers.get("x-qsched-original-size").map(String::as_str), Some("1500000"));
    assert!(dead[0].size <= 4096, "the dead-letter record carries an excerpt, {} bytes", dead[0].size);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent crashed");
    agent.kill();
}

/// `qagent` against the private Redis `redis` and the fleet's broker.
fn agent_on(fleet: &Fleet, redis: &PrivateRedis) -> AgentProcess {
    let mut cmd = Command::new(bin("qagent"));
    fleet.env(&mut cmd);
    cmd.env("QSCHED_REDIS_URL", redis.url()).args(["--device", "cpu", "--threads", "1"]).stdin(Stdio::null());
    AgentProcess { child: cmd.spawn().expect("start qagent") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_with_an_idle_agent_dead_letters_nothing() {
    let fleet = Fleet::new("redis-outage").await;
    let mut redis = PrivateRedis::start().await;
    let store =
        RedisStore::connect_with(RedisConfig::new(redis.url()).with_prefix(fleet.prefix.clone())).await.unwrap();
    let mut agent = agent_on(&fleet, &redis);
    // Idle and connected: its heartbeat is in Redis.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.agents().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the agent never sent a heartbeat");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Redis goes away; shards arrive while it is down.
    redis.kill();
    let run = scheduler::new_run_id();
    let shards = scheduler::expand(&tiny_qwen3(vec![1, 2, 3], 2), &run);
    publish(fleet.broker(), &shards).await;
    // Long enough for the old behaviour (a rejected delivery every few seconds, limit 3)
    // to have dead-lettered every one of them.
    let outage = Duration::from_secs(30);
    let down_until = Instant::now() + outage;
    while Instant::now() < down_until {
        assert!(agent.child.try_wait().unwrap().is_none(), "the agent exited during the outage");
        assert!(fleet.broker().dead_letters(10).await.unwrap().is_empty(), "a shard was dead-lettered");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(300);
    for shard in &shards {
        loop {
            if let Some(result) = store.get_result(&run, &shard.shard_id).await.unwrap() {
                assert_eq!(result.status, ShardState::Succeeded, "{:?}", result.error);
                assert_eq!(result.attempt, 1, "the shard ran more than once");
                break;
            }
            assert!(Instant::now() < deadline, "shard {} did not finish after the outage", shard.shard_id);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert!(fleet.broker().dead_letters(10).await.unwrap().is_empty());
    assert_eq!(fleet.broker().queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
    assert!(agent.child.try_wait().unwrap().is_none(), "the agent exited");
    agent.kill();
}

/// The pid of `agent`'s worker process, once it has one.
async fn worker_pid(agent: &AgentProcess) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", agent.pid())).unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().unwrap();
        }
        assert!(Instant::now() < deadline, "the agent started no worker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_flagged_killed_and_its_shard_requeued() {
    let fleet = Fleet::new("sigstop").await;
    let run = scheduler::new_run_id();
    let shards = scheduler::expand(&tiny_qwen3(vec![1], 200), &run);
    let checkpoints = tempfile::tempdir().unwrap();
    publish(fleet.broker(), &shards).await;
    let mut agent =
        fleet.agent(&["--stall-timeout-secs", "8", "--checkpoint-dir", checkpoints.path().to_str().unwrap()]);
    // Well into training (past a checkpoint), stop the worker as SIGSTOP (or a hung
    // kernel) would: the process lives, the agent's own heartbeat stays fresh.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let agents = fleet.store.agents().await.unwrap();
        if agents.iter().any(|a| a.step.is_some_and(|s| s >= 20)) {
            break;
        }
        assert!(Instant::now() < deadline, "the shard never reached step 20");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = worker_pid(&agent).await;
    assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
    // The agent's heartbeat shows the worker's progress going stale...
    tokio::time::sleep(Duration::from_secs(4)).await;
    let beat = fleet.store.agents().await.unwrap().remove(0);
    let silent = shared::shard::unix_now() - beat.progress_at.expect("progress time in the heartbeat");
    assert!(silent >= 3.0, "progress {silent:.1} s old while the worker is stopped");
    // ... then the watchdog kills it and the shard runs again, resuming, to the end.
    let deadline = Instant::now() + Duration::from_secs(300);
    let result = loop {
        if let Some(r) = fleet.store.get_result(&run, &shards[0].shard_id).await.unwrap() {
            break r;
        }
        assert!(Instant::now() < deadline, "the stopped shard never finished");
        assert!(agent.child.try_wait().unwrap().is_none(), "the agent exited");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(result.status, ShardState::Succeeded, "{:?}", result.error);
    assert_eq!(result.attempt, 2);
    // Why the first attempt failed is recorded with the shard, not only in the agent's log.
    let errors = fleet.store.attempt_errors(&run).await.unwrap();
    let first = &errors[shards[0].shard_id.as_str()];
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].attempt, 1);
    assert!(first[0].error.contains("no progress"), "{}", first[0].error);
    assert!(
        result.measured.resumed_from_step.is_some_and(|s| s >= 20),
        "resumed from {:?}",
        result.measured.resumed_from_step
    );
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "the stopped worker was not killed");
    assert!(fleet.broker().dead_letters(10).await.unwrap().is_empty());
    agent.kill();
}
