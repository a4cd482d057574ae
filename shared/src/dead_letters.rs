//! Dead letters the store must know about: a shard whose message the broker dead-lettered
//! on its own (its delivery limit reached after agents died holding it) would otherwise
//! stay `running` in the store forever, its last agent gone.
//!
//! Every dead letter gives a notice ([`Broker::take_dead_letter_notices`]); agents take
//! them periodically and mark the shard `dead` with the broker's reason. A shard that
//! already has a terminal state (an agent dead-lettered it itself and said so, or a
//! result was stored first) keeps it.

use crate::broker::{BrokerAdmin, DeadLetter, REASON_HEADER};
use crate::error::Result;
use crate::names::parse_message_id;
use crate::shard::{ShardState, unix_now};
use crate::store::{DeadLetterRecord, Store};

/// Notices taken per call: a bound on one pass, not on the backlog (callers loop).
pub const NOTICES_PER_PASS: usize = 500;

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NoticeReport {
    /// Notices taken from the broker.
    pub taken: usize,
    /// Shards newly marked `dead` (the broker gave up on them; no agent had said so).
    pub marked_dead: usize,
}

/// Takes up to [`NOTICES_PER_PASS`] notices and records what they say: for each shard the
/// broker dead-lettered, the `dead` state and a dead-letter record naming the broker's
/// reason. `recorded_by` names who recorded it (an agent id or `qsched`).
///
/// A notice whose message id is not `run:shard` (garbage that never was a shard) changes
/// no state. If the store fails part-way, the notices taken are lost; the dead letters
/// themselves stay listed by `qsched dead-letters`.
pub async fn record_notices(broker: &dyn BrokerAdmin, store: &dyn Store, recorded_by: &str) -> Result<NoticeReport> {
    let notices = broker.take_dead_letter_notices(NOTICES_PER_PASS).await?;
    let mut report = NoticeReport { taken: notices.len(), marked_dead: 0 };
    for letter in notices {
        if record_one(store, letter, recorded_by).await? {
            report.marked_dead += 1;
        }
    }
    Ok(report)
}

async fn record_one(store: &dyn Store, letter: DeadLetter, recorded_by: &str) -> Result<bool> {
    // An agent's own dead letter was recorded (with its context) when it was made.
    if letter.headers.contains_key(REASON_HEADER) {
        return Ok(false);
    }
    let Some((run, shard)) = letter.message_id.as_deref().and_then(parse_message_id) else { return Ok(false) };
    let states = store.states(run.as_str()).await?;
    match states.get(shard.as_str()) {
        // Unknown to the store (another prefix's leftovers, a run since deleted).
        None => return Ok(false),
        Some(state) if state.is_terminal() => return Ok(false),
        Some(_) => {}
    }
    store.set_state(run.as_str(), shard.as_str(), ShardState::Dead).await?;
    store.record_dead_letter(&DeadLetterRecord { letter, agent: recorded_by.to_owned(), at: unix_now() }).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::broker::{Broker, MemoryBroker, OutgoingMessage};
    use crate::device::DeviceClass;
    use crate::shard::{RunRecord, ShardSummary};
    use crate::store::MemoryStore;

    fn message(id: &str) -> OutgoingMessage {
        OutgoingMessage {
            class: DeviceClass::Cpu,
            message_id: id.to_owned(),
            body: vec![1, 2, 3],
            headers: BTreeMap::new(),
        }
    }

    async fn running_run(store: &MemoryStore, shards: &[&str]) {
        let record = RunRecord {
            run_id: crate::RunId::new("r1").unwrap(),
            name: "t".into(),
            created_at: 0.0,
            shard_count: shards.len() as u32,
            spec_hash: String::new(),
            spec: serde_json::Value::Null,
            shards: shards
                .iter()
                .map(|s| ShardSummary {
                    shard: (*s).to_owned(),
                    model: crate::ModelId::Qwen3,
                    task: crate::TaskId::Sst2,
                    seed: 1,
                    device_class: DeviceClass::Cpu,
                })
                .collect(),
            traceparent: None,
        };
        store.put_run(&record).await.unwrap();
        for s in shards {
            store.set_state("r1", s, ShardState::Running).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_shard_the_broker_gave_up_on_becomes_dead_with_the_reason() {
        let broker = MemoryBroker::new(2);
        let store = MemoryStore::new();
        running_run(&store, &["a", "b"]).await;
        broker.publish(vec![message("r1:a")]).await.unwrap();
        // Two deliveries whose consumer died holding them (dropped unsettled).
        for _ in 0..2 {
            let mut consumer = broker.consume(DeviceClass::Cpu, "t").await.unwrap();
            let delivery = consumer.next().await.unwrap().unwrap();
            delivery.reject(true).await.unwrap();
        }
        assert_eq!(broker.dead_letter_count().await.unwrap(), 1);

        let report = record_notices(&broker, &store, "agent-1").await.unwrap();
        assert_eq!(report, NoticeReport { taken: 1, marked_dead: 1 });
        let states = store.states("r1").await.unwrap();
        assert_eq!(states["a"], ShardState::Dead);
        assert_eq!(states["b"], ShardState::Running);
        let records = store.dead_letter_records(10).await.unwrap();
        assert_eq!(records.len(), 1);
        assert!(records[0].letter.reason.contains("delivery limit"), "{:?}", records[0]);
        assert_eq!(records[0].agent, "agent-1");
        // The dead letter is still listed; the notice is gone.
        assert_eq!(broker.dead_letter_count().await.unwrap(), 1);
        assert_eq!(record_notices(&broker, &store, "agent-1").await.unwrap(), NoticeReport::default());
    }

    #[tokio::test]
    async fn terminal_states_agents_own_dead_letters_and_garbage_are_left_alone() {
        let broker = MemoryBroker::new(1);
        let store = MemoryStore::new();
        running_run(&store, &["a", "b"]).await;
        store.set_state("r1", "a", ShardState::Succeeded).await.unwrap();
        broker.publish(vec![message("r1:a"), message("not a shard id")]).await.unwrap();
        for _ in 0..2 {
            let mut consumer = broker.consume(DeviceClass::Cpu, "t").await.unwrap();
            consumer.next().await.unwrap().unwrap().reject(false).await.unwrap();
        }
        let mut headers = BTreeMap::from([("message-id".to_owned(), "r1:b".to_owned())]);
        headers.insert(REASON_HEADER.to_owned(), "undecodable".to_owned());
        broker.dead_letter(vec![0], headers, "undecodable").await.unwrap();

        let report = record_notices(&broker, &store, "agent-1").await.unwrap();
        assert_eq!(report, NoticeReport { taken: 3, marked_dead: 0 });
        let states = store.states("r1").await.unwrap();
        assert_eq!(states["a"], ShardState::Succeeded);
        assert_eq!(states["b"], ShardState::Running, "the agent records its own dead letters");
        assert!(store.dead_letter_records(10).await.unwrap().is_empty());
    }
}
