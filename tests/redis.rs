//! `RedisStore` against a real Redis: exactly-once results, state rules, streams, liveness.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::broker::DeadLetter;
use shared::redis_store::{RedisConfig, RedisStore, RetryPolicy};
use shared::shard::{AgentHeartbeat, MetricPoint, RunRecord, ShardResult, ShardState};
use shared::store::{DeadLetterRecord, METRIC_STREAM_MAXLEN, Progress, Store};

use crate::util::{PrivateRedis, TestStore};

fn point(step: u64) -> MetricPoint {
    MetricPoint {
        step,
        kind: "train".to_owned(),
        values: BTreeMap::from([("loss".to_owned(), 1.0 / (step as f64 + 1.0))]),
        at: step as f64,
    }
}

fn beat(agent: &str) -> AgentHeartbeat {
    AgentHeartbeat {
        agent: agent.to_owned(),
        host: "host-a".to_owned(),
        device: "cuda:0".to_owned(),
        gpu_name: Some("H100".to_owned()),
        current: Some(("r".to_owned(), "s".to_owned())),
        step: Some(7),
        total_steps: Some(40),
        progress_at: Some(1.5),
        started_at: 1.0,
        at: 2.0,
        shards_done: 3,
        worker_memory_bytes: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_result_is_exactly_once_under_concurrency() {
    let s = Arc::new(TestStore::new("once").await);
    s.put_run(&RunRecord::sample("r1", 1.0, &["s1"])).await.unwrap();
    let writers: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                (i, s.put_result(&ShardResult::sample("r1", "s1", &format!("agent-{i}"))).await.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for w in writers {
        let (i, written) = w.await.unwrap();
        if written {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins: {winners:?}");
    let stored = s.get_result("r1", "s1").await.unwrap().unwrap();
    assert_eq!(stored.agent, format!("agent-{}", winners[0]));
    assert_eq!(s.states("r1").await.unwrap()["s1"], ShardState::Succeeded);

    // A later, different result (a redelivered shard) changes nothing.
    let mut late = ShardResult::sample("r1", "s1", "agent-late");
    late.status = ShardState::Failed;
    assert!(!s.put_result(&late).await.unwrap());
    assert_eq!(s.get_result("r1", "s1").await.unwrap().unwrap().agent, stored.agent);
    assert_eq!(s.states("r1").await.unwrap()["s1"], ShardState::Succeeded);
    // Re-sending the stored result itself (a retry whose first reply was lost) reports success.
    assert!(s.put_result(&stored).await.unwrap());

    // Results are JSON that a human can read with redis-cli.
    let mut raw = s.raw().await;
    let json: String = redis::cmd("GET").arg(s.keys().result("r1", "s1")).query_async(&mut raw).await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["shard"], "s1");
    assert_eq!(value["status"], "succeeded");

    assert_eq!(s.results("r1").await.unwrap(), vec![stored]);
    assert!(s.delete_result("r1", "s1").await.unwrap());
    assert!(!s.delete_result("r1", "s1").await.unwrap());
    assert!(s.results("r1").await.unwrap().is_empty());
}

#[tokio::test]
async fn set_state_never_downgrades_a_terminal_state() {
    let s = TestStore::new("states").await;
    s.put_run(&RunRecord::sample("r", 1.0, &["a", "b", "c"])).await.unwrap();
    // Recorded before the broker confirmed anything; queued once it has.
    assert!(s.states("r").await.unwrap().values().all(|st| *st == ShardState::Unpublished));
    s.set_state("r", "c", ShardState::Running).await.unwrap();
    s.mark_published("r", &["a".into(), "b".into(), "c".into()]).await.unwrap();
    let states = s.states("r").await.unwrap();
    assert_eq!((states["a"], states["b"]), (ShardState::Queued, ShardState::Queued));
    assert_eq!(states["c"], ShardState::Running, "an agent that started it first wins");

    s.set_state("r", "a", ShardState::Running).await.unwrap();
    assert_eq!(s.states("r").await.unwrap()["a"], ShardState::Running);
    for terminal in [ShardState::Succeeded, ShardState::Failed, ShardState::Cancelled, ShardState::Dead] {
        s.force_state("r", "b", terminal).await.unwrap();
        for later in [ShardState::Queued, ShardState::Running, ShardState::Failed, ShardState::Succeeded] {
            s.set_state("r", "b", later).await.unwrap();
            assert_eq!(s.states("r").await.unwrap()["b"], terminal, "{terminal:?} overwritten by {later:?}");
        }
    }
    // force_state is the one way back (a retry).
    s.force_state("r", "b", ShardState::Queued).await.unwrap();
    assert_eq!(s.states("r").await.unwrap()["b"], ShardState::Queued);

    // put_result's state is terminal too; a late "running" from a superseded attempt loses.
    assert!(s.put_result(&ShardResult::sample("r", "c", "agent")).await.unwrap());
    s.set_state("r", "c", ShardState::Running).await.unwrap();
    assert_eq!(s.states("r").await.unwrap()["c"], ShardState::Succeeded);

    // Resubmitting the run never resets progress.
    s.put_run(&RunRecord::sample("r", 1.0, &["a", "b", "c", "d"])).await.unwrap();
    let states = s.states("r").await.unwrap();
    assert_eq!(states["a"], ShardState::Running);
    assert_eq!(states["c"], ShardState::Succeeded);
    assert_eq!(states["d"], ShardState::Unpublished);
}

#[tokio::test]
async fn a_wrongtype_error_is_permanent_and_not_retried() {
    let s = TestStore::new("wrongtype").await;
    let mut raw = s.raw().await;
    let _: () =
        redis::cmd("SET").arg(s.keys().shard_states("r")).arg("not a hash").query_async(&mut raw).await.unwrap();
    let started = Instant::now();
    let err = s.set_state("r", "a", ShardState::Running).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
    // The first backoff alone is 50 ms; a non-retried error comes back well before the ~5 s budget.
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn metric_streams_round_trip_and_are_trimmed() {
    let s = TestStore::new("metrics").await;
    s.append_metrics("r", "s", &[point(0), point(1), point(2)]).await.unwrap();
    s.append_metrics("r", "s", &[point(3), point(4)]).await.unwrap();
    s.append_metrics("r", "s", &[]).await.unwrap();
    assert_eq!(s.metrics("r", "s", 100).await.unwrap(), (0..5).map(point).collect::<Vec<_>>());
    assert_eq!(s.metrics("r", "s", 2).await.unwrap(), vec![point(3), point(4)], "the newest, oldest first");
    assert!(s.metrics("r", "s", 0).await.unwrap().is_empty());
    assert!(s.metrics("r", "other", 10).await.unwrap().is_empty());

    // Past METRIC_STREAM_MAXLEN the stream is trimmed (approximately, by whole radix-tree nodes).
    let total = METRIC_STREAM_MAXLEN as u64 + 3_000;
    let batch: Vec<_> = (5..total).map(point).collect();
    for chunk in batch.chunks(5_000) {
        s.append_metrics("r", "s", chunk).await.unwrap();
    }
    let mut raw = s.raw().await;
    let len: usize = redis::cmd("XLEN").arg(s.keys().metrics("r", "s")).query_async(&mut raw).await.unwrap();
    assert!((METRIC_STREAM_MAXLEN..METRIC_STREAM_MAXLEN + 1_000).contains(&len), "XLEN {len}");
    let last = s.metrics("r", "s", 1).await.unwrap();
    assert_eq!(last, vec![point(total - 1)]);
}

#[tokio::test]
async fn expired_heartbeats_drop_out_of_the_agent_list() {
    let s = TestStore::new("agents").await;
    s.heartbeat(&beat("short-lived"), Duration::from_millis(600)).await.unwrap();
    s.heartbeat(&beat("steady"), Duration::from_secs(60)).await.unwrap();
    let mut names: Vec<_> = s.agents().await.unwrap().into_iter().map(|b| b.agent).collect();
    names.sort();
    assert_eq!(names, ["short-lived", "steady"]);
    assert_eq!(s.agents().await.unwrap().iter().find(|b| b.agent == "steady").unwrap(), &beat("steady"));

    tokio::time::sleep(Duration::from_millis(900)).await;
    let names: Vec<_> = s.agents().await.unwrap().into_iter().map(|b| b.agent).collect();
    assert_eq!(names, ["steady"]);
    // The expired agent was removed from the index too, not just filtered out.
    let mut raw = s.raw().await;
    let score: Option<f64> =
        redis::cmd("ZSCORE").arg(s.keys().agents()).arg("short-lived").query_async(&mut raw).await.unwrap();
    assert_eq!(score, None);

    s.remove_agent("steady").await.unwrap();
    assert!(s.agents().await.unwrap().is_empty());
}

#[tokio::test]
async fn cancel_flags_are_per_run() {
    let s = TestStore::new("cancel").await;
    assert!(!s.is_cancelled("r1").await.unwrap());
    s.cancel("r1").await.unwrap();
    assert!(s.is_cancelled("r1").await.unwrap());
    assert!(!s.is_cancelled("r2").await.unwrap());
    s.uncancel("r1").await.unwrap();
    assert!(!s.is_cancelled("r1").await.unwrap());
}

#[tokio::test]
async fn runs_are_listed_newest_first() {
    let s = TestStore::new("runs").await;
    assert!(s.list_runs(10).await.unwrap().is_empty());
    for (run, at) in [("old", 100.0), ("newest", 300.0), ("middle", 200.0)] {
        s.put_run(&RunRecord::sample(run, at, &["x"])).await.unwrap();
    }
    assert_eq!(s.list_runs(10).await.unwrap(), ["newest", "middle", "old"]);
    assert_eq!(s.list_runs(2).await.unwrap(), ["newest", "middle"]);
    assert!(s.list_runs(0).await.unwrap().is_empty());
    assert_eq!(s.get_run("middle").await.unwrap(), Some(RunRecord::sample("middle", 200.0, &["x"])));
    assert_eq!(s.get_run("missing").await.unwrap(), None);
}

#[tokio::test]
async fn attempts_progress_and_dead_letter_records() {
    let s = TestStore::new("bookkeeping").await;
    assert_eq!(s.incr_attempt("r", "a").await.unwrap(), 1);
    assert_eq!(s.incr_attempt("r", "a").await.unwrap(), 2);
    assert_eq!(s.incr_attempt("r", "b").await.unwrap(), 1);
    assert_eq!(s.attempts("r").await.unwrap(), BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 1)]));

    let p = Progress { step: 5, total_steps: 40, agent: "ag".to_owned(), loss: Some(0.7), at: 3.0 };
    s.set_progress("r", "a", &p).await.unwrap();
    assert_eq!(s.progress("r").await.unwrap(), BTreeMap::from([("a".to_owned(), p)]));

    for i in 0..3 {
        let letter = DeadLetter {
            message_id: Some(format!("r:{i}")),
            reason: "undecodable".to_owned(),
            queue: Some("qsched.shards.cpu".to_owned()),
            size: 10,
            headers: BTreeMap::new(),
        };
        s.record_dead_letter(&DeadLetterRecord { letter, agent: "ag".to_owned(), at: f64::from(i) }).await.unwrap();
    }
    let ids: Vec<_> =
        s.dead_letter_records(2).await.unwrap().into_iter().map(|r| r.letter.message_id.unwrap()).collect();
    assert_eq!(ids, ["r:2", "r:1"], "newest first");
}

#[tokio::test]
async fn unreachable_redis_is_a_fast_clear_error() {
    let started = Instant::now();
    let err = RedisStore::connect("redis://:s3cret-pw@127.0.0.1:1/0", "t").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let text = err.to_string();
    assert!(err.is_transient(), "{text}");
    assert!(text.contains("redis://:***@127.0.0.1:1/0"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");

    let err = RedisStore::connect("http://127.0.0.1:6379", "t").await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_issued_while_redis_restarts_succeed_once_it_is_back() {
    let mut server = PrivateRedis::start().await;
    let store = RedisStore::connect(&server.url(), "fault").await.unwrap();
    store.put_run(&RunRecord::sample("r", 1.0, &["s1", "s2"])).await.unwrap();

    // Down for longer than the retry budget: a clear transient error after 3 tries.
    server.kill();
    let impatient = store.with_retry(RetryPolicy {
        attempts: 3,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(50),
    });
    let started = Instant::now();
    let err = impatient.is_cancelled("r").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("gave up after 3 tries"), "{err}");
    // Connecting anew while it is down fails the same clear way.
    let err = RedisStore::connect_with(RedisConfig::new(server.url()).with_prefix("fault")).await.unwrap_err();
    assert!(err.is_transient(), "{err}");

    // Writes issued while it is down wait through the default backoff...
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let written = store.put_result(&ShardResult::sample("r", "s1", "agent")).await;
            let appended = store.append_metrics("r", "s1", &[point(1), point(2)]).await;
            (written, appended)
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!writer.is_finished(), "the writes must be waiting for Redis");
    // ...and land once it restarts (empty: this server keeps nothing on disk).
    server.restart().await;
    let (written, appended) = tokio::time::timeout(Duration::from_secs(15), writer).await.unwrap().unwrap();
    assert!(written.unwrap(), "the result must be written after the restart");
    appended.unwrap();

    // New commands after the restart work on the reconnected manager, scripts included.
    assert_eq!(store.get_result("r", "s1").await.unwrap().unwrap().agent, "agent");
    assert_eq!(store.metrics("r", "s1", 10).await.unwrap(), vec![point(1), point(2)]);
    store.set_state("r", "s1", ShardState::Running).await.unwrap();
    assert_eq!(store.states("r").await.unwrap()["s1"], ShardState::Succeeded);
}

#[tokio::test]
async fn results_round_trip_floats_exactly() {
    let s = TestStore::new("floats").await;
    let mut r = ShardResult::sample("r1", "s1", "a");
    // Values whose shortest decimal form a non-round-tripping float parser gets 1 ulp wrong.
    for (i, v) in [0.47626670077443123_f64, 0.8038990825688074, 1.0 / 3.0, 2.0_f64.sqrt() * 1e-7, 6.02214076e23]
        .into_iter()
        .enumerate()
    {
        r.measured.metrics.insert(format!("m{i}"), v);
    }
    r.measured.wall_seconds = 198.61234567890123;
    assert!(s.put_result(&r).await.unwrap());
    let back = s.get_result("r1", "s1").await.unwrap().unwrap();
    for (k, v) in &r.measured.metrics {
        assert_eq!(
            back.measured.metrics[k].to_bits(),
            v.to_bits(),
            "{k}: {v} came back as {}",
            back.measured.metrics[k]
        );
    }
    assert_eq!(back.measured.wall_seconds.to_bits(), r.measured.wall_seconds.to_bits());
}
