//! `GET /metrics` of the dashboard: run, shard, queue and agent gauges for Prometheus,
//! read from the store and the broker at each scrape (the dashboard keeps no state, so
//! two dashboards on one fleet export the same values). The agents export their own
//! counters (`qagent --metrics-listen`); these are the fleet-wide view next to them.

use std::collections::BTreeMap;

use anyhow::Result;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use shared::broker::BrokerAdmin;
use shared::shard::{ShardState, unix_now};
use shared::store::Store;
use shared::{DeviceClass, DeviceSpec};

use super::views::STALE_HEARTBEAT_S;
use crate::commands;

/// Runs counted (the most recent ones): a scrape reads each run's states.
pub const RUNS_COUNTED: usize = 100;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    device_class: String,
    stale: String,
}

/// What one scrape counted, before encoding (tested apart from the text format).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetCounts {
    /// Runs by `active` / `finished` / `cancelled`.
    pub runs: BTreeMap<&'static str, i64>,
    /// Shards of those runs by state.
    pub shards: BTreeMap<&'static str, i64>,
    /// Ready messages per queue (`cpu`, `cuda`, `dead_letters`); empty without a broker.
    pub queues: BTreeMap<&'static str, i64>,
    /// Live agents by (device class, stale).
    pub agents: BTreeMap<(String, bool), i64>,
}

/// Counts the most recent [`RUNS_COUNTED`] runs, their shards, the queues and the agents.
/// A broker that cannot be reached leaves the queue gauges out (an absent series, not a 0).
pub async fn count(store: &dyn Store, broker: Option<&dyn BrokerAdmin>) -> Result<FleetCounts> {
    let mut counts = FleetCounts::default();
    for id in store.list_runs(RUNS_COUNTED).await? {
        let Some(record) = store.get_run(&id).await? else { continue };
        let states = store.states(&id).await?;
        let status = if commands::run_finished(&record, &states) {
            "finished"
        } else if store.is_cancelled(&id).await? {
            "cancelled"
        } else {
            "active"
        };
        *counts.runs.entry(status).or_default() += 1;
        for (state, n) in commands::state_counts(&record, &states) {
            *counts.shards.entry(state.as_str()).or_default() += n as i64;
        }
    }
    if let Some(b) = broker
        && let (Ok(cpu), Ok(cuda), Ok(dead)) =
            (b.queue_depth(DeviceClass::Cpu).await, b.queue_depth(DeviceClass::Cuda).await, b.dead_letter_count().await)
    {
        counts.queues = BTreeMap::from([("cpu", cpu as i64), ("cuda", cuda as i64), ("dead_letters", dead as i64)]);
    }
    let now = unix_now();
    for a in store.agents().await? {
        let class = a.device.parse::<DeviceSpec>().map_or_else(|_| "unknown".to_owned(), |d| d.class().to_string());
        *counts.agents.entry((class, now - a.at > STALE_HEARTBEAT_S)).or_default() += 1;
    }
    Ok(counts)
}

/// The OpenMetrics text of `counts`. Every state and run status is exported, 0 when
/// none is in it, so a series does not vanish when its count drops to zero.
pub fn encode(counts: &FleetCounts) -> Result<String> {
    let mut registry = Registry::with_prefix("qsched");
    let runs = Family::<StatusLabels, Gauge>::default();
    for status in ["active", "finished", "cancelled"] {
        runs.get_or_create(&StatusLabels { status: status.into() }).set(counts.runs.get(status).copied().unwrap_or(0));
    }
    registry.register("runs", "Most recent runs (up to 100) by status", runs);
    let shards = Family::<StateLabels, Gauge>::default();
    for state in ShardState::ALL {
        let name = state.as_str();
        shards.get_or_create(&StateLabels { state: name.into() }).set(counts.shards.get(name).copied().unwrap_or(0));
    }
    registry.register("shards", "Shards of the most recent runs (up to 100) by state", shards);
    if !counts.queues.is_empty() {
        let queues = Family::<QueueLabels, Gauge>::default();
        for (queue, n) in &counts.queues {
            queues.get_or_create(&QueueLabels { queue: (*queue).into() }).set(*n);
        }
        registry.register(
            "queue_ready_messages",
            "Messages ready in the shard queues and the dead-letter queue",
            queues,
        );
    }
    let agents = Family::<AgentLabels, Gauge>::default();
    for ((class, stale), n) in &counts.agents {
        agents.get_or_create(&AgentLabels { device_class: class.clone(), stale: stale.to_string() }).set(*n);
    }
    registry.register("agents", "Agents heartbeating, by device class and whether the last beat is late", agents);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::shard::{AgentHeartbeat, RunRecord};
    use shared::store::MemoryStore;
    use std::time::Duration;

    #[tokio::test]
    async fn counts_runs_shards_and_agents_and_exports_every_state() {
        let store = MemoryStore::new();
        let now = unix_now();
        store.put_run(&RunRecord::sample("r-1", now, &["a", "b"])).await.unwrap();
        store.put_run(&RunRecord::sample("r-2", now, &["c"])).await.unwrap();
        store.mark_published("r-1", &["b".to_owned()]).await.unwrap();
        store.set_state("r-1", "a", ShardState::Running).await.unwrap();
        store.set_state("r-2", "c", ShardState::Succeeded).await.unwrap();
        let beat = AgentHeartbeat::sample("h:cpu:1", now);
        store.heartbeat(&beat, Duration::from_secs(30)).await.unwrap();
        let counts = count(&store, None).await.unwrap();
        assert_eq!(counts.runs, BTreeMap::from([("active", 1), ("finished", 1)]));
        assert_eq!(counts.shards, BTreeMap::from([("queued", 1), ("running", 1), ("succeeded", 1)]));
        assert_eq!(counts.agents, BTreeMap::from([(("cpu".to_owned(), false), 1)]));
        assert!(counts.queues.is_empty());

        let text = encode(&counts).unwrap();
        assert!(text.contains("qsched_runs{status=\"active\"} 1"), "{text}");
        assert!(text.contains("qsched_runs{status=\"cancelled\"} 0"), "{text}");
        assert!(text.contains("qsched_shards{state=\"running\"} 1"), "{text}");
        assert!(text.contains("qsched_shards{state=\"dead\"} 0"), "{text}");
        assert!(text.contains("qsched_agents{device_class=\"cpu\",stale=\"false\"} 1"), "{text}");
        assert!(!text.contains("qsched_queue_ready_messages"), "no broker, no queue series: {text}");
        assert!(text.ends_with("# EOF\n"));
    }

    /// Names of the `qsched_…` series in `text`.
    fn series_names(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("qsched_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn the_grafana_fleet_dashboard_queries_only_series_the_dashboard_exports() {
        let counts = FleetCounts {
            queues: BTreeMap::from([("cpu", 1)]),
            agents: BTreeMap::from([(("cpu".to_owned(), false), 1)]),
            ..FleetCounts::default()
        };
        let exported = series_names(&encode(&counts).unwrap());
        let grafana: serde_json::Value =
            serde_json::from_str(include_str!("../../../ops/grafana/qsched-fleet.json")).unwrap();
        let mut queried = std::collections::BTreeSet::new();
        for panel in grafana["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                queried.extend(series_names(target["expr"].as_str().unwrap()));
            }
        }
        assert!(queried.len() >= 4, "{queried:?}");
        let missing: Vec<_> = queried.difference(&exported).collect();
        assert!(missing.is_empty(), "queried but not exported: {missing:?} (exported: {exported:?})");
    }
}
