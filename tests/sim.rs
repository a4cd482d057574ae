//! Simulated agents (`agent::sim`) against the real RabbitMQ and Redis: the agent's own
//! consume loop with a no-op executor, several agents with their own connections, every
//! shard handled and stored exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use agent::sim::{FleetSimConfig, Journal, run_fleet};
use shared::DeviceClass;
use shared::broker::BrokerAdmin;
use shared::shard::ShardState;
use shared::store::Store;

use crate::util::{TestBroker, TestStore};

const AGENTS: usize = 8;
const SHARDS: u64 = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_simulated_agents_handle_each_of_200_shards_once() {
    let broker = TestBroker::new("sim").await;
    let store = TestStore::new("sim").await;
    let cfg = FleetSimConfig {
        agents: AGENTS,
        shards: SHARDS as usize,
        time_limit: Duration::from_secs(25),
        idle: Duration::ZERO,
        delay: Duration::from_millis(2),
        heartbeat_interval: Duration::from_secs(1),
        amqp: broker.config.clone(),
        redis: store.config.clone(),
        // The shared Redis serves other tests: its command counts are not ours.
        command_stats: false,
        connect_parallelism: AGENTS,
    };
    let journal = Arc::new(Journal::default());
    let (ready, on_ready) = tokio::sync::oneshot::channel();
    let sim = tokio::spawn(run_fleet(cfg, journal.clone(), ready));
    let ready = on_ready.await.expect("the fleet became ready");
    assert_eq!(ready.agents, AGENTS);

    // Published while the agents consume, as a submit to a running fleet.
    let spec = crate::procs::tiny_qwen3((1..=SHARDS).collect(), 10, 10);
    let run = scheduler::new_run_id();
    let record = scheduler::submit(&spec, &run, &broker.broker, &*store).await.unwrap();
    assert_eq!(u64::from(record.shard_count), SHARDS);
    let report = tokio::time::timeout(Duration::from_secs(30), sim)
        .await
        .expect("the simulation ended within its time limit")
        .expect("the simulation task did not panic")
        .expect("the simulation ran");
    assert!(!report.timed_out, "{report:?}");
    assert_eq!(report.agent_stats.failed_agents, 0);
    assert_eq!(report.shards_acked, SHARDS as usize);

    // Exactly one stored result per shard, each from the no-op executor.
    let expected: BTreeSet<String> = record.shards.iter().map(|s| format!("{run}:{}", s.shard)).collect();
    let results = store.results(&run).await.unwrap();
    assert_eq!(results.len(), SHARDS as usize);
    let stored: BTreeSet<String> = results.iter().map(|r| format!("{}:{}", r.run, r.shard)).collect();
    assert_eq!(stored, expected);
    for r in &results {
        assert_eq!(r.status, ShardState::Succeeded, "{}: {:?}", r.shard, r.error);
        assert_eq!(r.measured.config["executor"], "no-op");
        assert_eq!(r.attempt, 1, "{} took {} attempts", r.shard, r.attempt);
    }
    let states = store.states(&run).await.unwrap();
    assert!(states.values().all(|s| *s == ShardState::Succeeded), "{states:?}");

    // Each shard was run once and acked once; nothing was redelivered or skipped.
    let runs = journal.executions_per_shard();
    assert_eq!(runs.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(
        runs.values().all(|&n| n == 1),
        "run twice: {:?}",
        runs.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let mut acks: BTreeMap<String, u32> = BTreeMap::new();
    for a in journal.acks() {
        *acks.entry(a.message_id.expect("acked deliveries carry their id")).or_insert(0) += 1;
    }
    assert_eq!(acks.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(acks.values().all(|&n| n == 1), "{acks:?}");
    assert_eq!((report.deliveries, report.redeliveries, report.shards_run_twice), (SHARDS as usize, 0, 0));
    assert_eq!(
        (report.agent_stats.finished, report.agent_stats.duplicates, report.agent_stats.requeued),
        (SHARDS, 0, 0)
    );

    // The work spread over the agents, and every publish carried its time.
    let by_agent: BTreeSet<String> = journal.executions().into_iter().map(|e| e.agent).collect();
    assert!(by_agent.len() > 1, "one agent took every shard");
    assert_eq!(report.queue_to_start_ms.count, SHARDS as usize);
    // Stopped agents left an empty queue and no heartbeat behind.
    assert_eq!(broker.queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
    assert!(store.agents().await.unwrap().is_empty());
}
