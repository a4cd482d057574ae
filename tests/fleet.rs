//! End to end against the real RabbitMQ and Redis with real `qagent` processes: every
//! shard finishes exactly once, a killed agent loses nothing, poison messages are
//! dead-lettered while the agent keeps working, and `qsched results` reads it all back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use shared::DeviceClass;
use shared::broker::{Broker, BrokerAdmin, OutgoingMessage};
use shared::shard::ShardState;
use shared::spec::BenchmarkSpec;
use shared::store::Store;

use crate::procs::{Fleet, text};

/// `--set` overrides of the tiny qwen3 × SST-2 shards these tests run.
fn overrides(steps: u32) -> Vec<String> {
    vec![
        format!("first_order.max_steps={steps}"),
        format!("first_order.eval_every={steps}"),
        "first_order.checkpoint_every=10".into(),
    ]
}

fn tiny_qwen3(seeds: Vec<u64>, steps: u32) -> BenchmarkSpec {
    crate::procs::tiny_qwen3(seeds, steps, 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_shards_two_agents_one_killed_mid_shard() {
    let fleet = Fleet::new("fleet").await;
    let spec = tiny_qwen3((1..=6).collect(), 150);
    let run = scheduler::new_run_id();
    let record = scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    assert_eq!(record.shard_count, 6);

    // Both agents checkpoint to one shared folder, as agents on a fleet share storage.
    let checkpoints = tempfile::tempdir().unwrap();
    let ckpt = checkpoints.path().to_str().unwrap();
    let mut doomed = fleet.agent(&["--checkpoint-dir", ckpt]);
    let survivor = fleet.agent(&["--checkpoint-dir", ckpt]);
    // Kill the first agent once it is well into a shard (its heartbeat shows the step).
    let suffix = format!(":{}", doomed.pid());
    let deadline = Instant::now() + Duration::from_secs(240);
    let killed_shard = loop {
        let agents = fleet.store.agents().await.unwrap();
        if let Some(a) = agents.iter().find(|a| a.agent.ends_with(&suffix))
            && let (Some((r, s)), Some(step)) = (&a.current, a.step)
            && r == run.as_str()
            && step >= 20
        {
            break s.clone();
        }
        assert!(Instant::now() < deadline, "the first agent never got 20 steps into a shard");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    doomed.kill();

    fleet.wait_finished(&run, Duration::from_secs(600)).await;
    let results = fleet.store.results(&run).await.unwrap();
    assert_eq!(results.len(), 6, "one result per shard");
    let ids: BTreeSet<_> = results.iter().map(|r| r.shard.clone()).collect();
    let expected: BTreeSet<_> = record.shards.iter().map(|s| s.shard.clone()).collect();
    assert_eq!(ids, expected);
    for r in &results {
        assert_eq!(r.status, ShardState::Succeeded, "{}: {:?}", r.shard, r.error);
        let acc = r.measured.metrics["accuracy"];
        assert!((0.0..=1.0).contains(&acc), "accuracy {acc}");
        assert_eq!(r.measured.split_sizes["test"], 200);
        assert!(r.measured.peak_memory_bytes > 0 && r.measured.wall_seconds > 0.0 && r.measured.steps == 150);
    }
    // The killed agent's shard was delivered again and finished on the survivor.
    let redone = results.iter().find(|r| r.shard == killed_shard).unwrap();
    assert!(redone.attempt >= 2, "killed shard finished on attempt {}", redone.attempt);
    assert!(!redone.agent.ends_with(&suffix), "finished by {}", redone.agent);
    assert!(fleet.store.attempts(&run).await.unwrap()[&killed_shard] >= 2);
    // It resumed from the checkpoint the killed agent wrote (every 10 steps, killed at
    // step 20 or later) ...
    let resumed = redone.measured.resumed_from_step.expect("the redelivered shard resumed from a checkpoint");
    assert!(resumed >= 20 && resumed % 10 == 0, "resumed from step {resumed}");
    // ... and ended exactly where an uninterrupted run of the same shard ends.
    let seed = redone.seed.to_string();
    let mut args =
        vec!["submit", "--local", "--scale", "tiny", "--models", "qwen3", "--tasks", "sst2", "--seeds", &seed];
    let sets = overrides(150);
    for s in &sets {
        args.extend(["--set", s.as_str()]);
    }
    let data = crate::procs::data_dir();
    args.extend(["--threads", "1", "--format", "json", "--data-dir", data.to_str().unwrap()]);
    let out = fleet.qsched(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let local: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let local = &local.as_array().unwrap()[0];
    assert_eq!(local["shard"], redone.shard.as_str(), "same spec, same shard id");
    assert_eq!(local["resumed_from_step"], serde_json::Value::Null);
    assert_eq!(
        local["metrics"],
        serde_json::to_value(&redone.measured.metrics).unwrap(),
        "resumed run differs from an uninterrupted one"
    );
    assert_eq!(local["config"]["evaluations"], redone.measured.config["evaluations"]);
    // Checkpoints of finished shards are removed once their results are stored.
    let leftover: Vec<_> =
        std::fs::read_dir(checkpoints.path().join(run.as_str())).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(leftover.is_empty(), "checkpoints left behind: {leftover:?}");
    // Exactly one result key per shard in Redis.
    let mut raw = fleet.store.raw().await;
    let pattern = format!("{}:{{run:{run}}}:result:*", fleet.prefix);
    let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut raw).await.unwrap();
    assert_eq!(keys.len(), 6);
    assert_eq!(fleet.broker().queue_depth(DeviceClass::Cpu).await.unwrap(), 0);

    // `qsched results` reads them back, as JSON and as the summary table.
    let out = fleet.qsched(&["results", &run, "--format", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for row in rows {
        for key in [
            "run",
            "shard",
            "model",
            "task",
            "seed",
            "scale",
            "device",
            "status",
            "metrics",
            "peak_memory_bytes",
            "wall_seconds",
        ] {
            assert!(row.get(key).is_some(), "missing {key} in {row}");
        }
        assert_eq!(row["device"], "cpu");
        assert!(row["metrics"]["accuracy"].is_f64());
    }
    let out = fleet.qsched(&["results", &run]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("qwen3") && stdout.contains("accuracy") && stdout.contains(" ± "), "{stdout}");
    drop(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_is_dead_lettered_and_the_agent_keeps_working() {
    let fleet = Fleet::new("poison").await;
    fleet
        .broker()
        .publish(vec![OutgoingMessage {
            class: DeviceClass::Cpu,
            message_id: "garbage:1".into(),
            body: b"\x93this is not a shard".to_vec(),
            headers: Default::default(),
        }])
        .await
        .unwrap();
    let spec = tiny_qwen3(vec![1], 6);
    let run = scheduler::new_run_id();
    scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    let _agent = fleet.agent(&[]);
    fleet.wait_finished(&run, Duration::from_secs(300)).await;
    assert_eq!(fleet.in_state(&run, ShardState::Succeeded).await.len(), 1);
    let dead = fleet.broker().dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("undecodable"), "{}", dead[0].reason);
    assert_eq!(dead[0].message_id.as_deref(), Some("garbage:1"), "the dead letter keeps the message id");
    let recorded = fleet.store.dead_letter_records(10).await.unwrap();
    assert_eq!(recorded.len(), 1);
    let out = fleet.qsched(&["dead-letters"]);
    assert!(text(&out).0.contains("undecodable message"), "{:?}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_agents_cancel_and_retry() {
    let fleet = Fleet::new("ops").await;
    let spec = tiny_qwen3(vec![1, 2], 400);
    let run = scheduler::new_run_id();
    scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    let _agent = fleet.agent(&[]);
    // Wait for the first shard to be running, then look at the fleet.
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.in_state(&run, ShardState::Running).await.is_empty() {
        assert!(Instant::now() < deadline, "no shard started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // at least one heartbeat with a step
    let (agents, _) = text(&fleet.qsched(&["agents"]));
    assert!(agents.contains("cpu") && agents.contains(run.as_str()), "{agents}");
    let (status, _) = text(&fleet.qsched(&["status", &run]));
    assert!(status.contains("running 1") && status.contains("queued 1"), "{status}");

    // Cancel: the running shard is stopped, the queued one is skipped.
    let out = fleet.qsched(&["cancel", &run]);
    assert!(out.status.success(), "{:?}", text(&out));
    fleet.wait_finished(&run, Duration::from_secs(120)).await;
    assert_eq!(fleet.in_state(&run, ShardState::Cancelled).await.len(), 2);

    // Retry publishes both again; with the flag cleared they run (and are cancelled again
    // here, to keep the test short).
    let out = fleet.qsched(&["retry", &run]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.contains("2 shard(s) published again"), "{stdout}{stderr}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.in_state(&run, ShardState::Running).await.is_empty() {
        assert!(Instant::now() < deadline, "retried shard did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.qsched(&["cancel", &run]);
    fleet.wait_finished(&run, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_returns_the_running_shard_to_the_queue() {
    let fleet = Fleet::new("sigterm").await;
    let spec = tiny_qwen3(vec![1], 400);
    let run = scheduler::new_run_id();
    let record = scheduler::submit(&spec, &run, fleet.broker(), &*fleet.store).await.unwrap();
    let shard = record.shards[0].shard.clone();
    let mut agent = fleet.agent(&[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.in_state(&run, ShardState::Running).await.is_empty() {
        assert!(Instant::now() < deadline, "the shard never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = agent.terminate(Duration::from_secs(60)).expect("agent did not stop within 60 s of SIGTERM");
    assert!(status.success(), "agent exited with {status}");
    // No result, state back to queued, and the message is in the queue for the next agent.
    assert!(fleet.store.get_result(&run, &shard).await.unwrap().is_none());
    assert_eq!(fleet.store.states(&run).await.unwrap()[&shard], ShardState::Queued);
    let deadline = Instant::now() + Duration::from_secs(30);
    while fleet.broker().queue_depth(DeviceClass::Cpu).await.unwrap() != 1 {
        assert!(Instant::now() < deadline, "the shard did not return to the queue");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Another agent finishes it.
    let _next = fleet.agent(&[]);
    fleet.wait_finished(&run, Duration::from_secs(300)).await;
    let result = fleet.store.get_result(&run, &shard).await.unwrap().expect("result");
    assert_eq!(result.status, ShardState::Succeeded);
}
