//! One trace from `submit` to the agent: the publish carries the W3C `traceparent` in its
//! headers, the agent's `shard.process` span joins it, and the stored result records it.

use std::sync::Arc;

use opentelemetry_sdk::trace::InMemorySpanExporter;

use agent::supervisor::{self, AgentConfig};
use shared::DeviceSpec;
use shared::broker::MemoryBroker;
use shared::spec::SpecInput;
use shared::store::{MemoryStore, Store};

use crate::procs::{bin, data_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_agent_spans_share_one_trace() {
    let exporter = InMemorySpanExporter::default();
    let _telemetry = shared::telemetry::init_with_exporter("qsched-test", "warn", exporter.clone());

    let broker = Arc::new(MemoryBroker::default());
    let store = Arc::new(MemoryStore::new());
    let spec = SpecInput {
        models: Some(vec!["qwen3".into()]),
        seeds: Some(vec![1]),
        set: vec!["first_order.max_steps=4".into(), "first_order.eval_every=4".into()],
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let run = scheduler::new_run_id();
    let record = scheduler::submit(&spec, &run, broker.as_ref(), store.as_ref()).await.unwrap();

    let mut cfg = AgentConfig::new(DeviceSpec::Cpu, data_dir()).unwrap();
    cfg.worker_command = vec![bin("qagent").into_os_string(), "worker".into()];
    cfg.threads = 1;
    cfg.max_shards = Some(1);
    supervisor::run(cfg, broker.clone(), broker.clone(), store.clone(), std::future::pending()).await.unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span among {:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>()))
    };
    let submit = find("submit");
    let trace = submit.span_context.trace_id();
    let publish = find("shard.publish");
    let process = find("shard.process");
    assert_eq!(publish.span_context.trace_id(), trace);
    assert_eq!(process.span_context.trace_id(), trace, "the agent's span joined the submit's trace");
    assert_eq!(process.parent_span_id, publish.span_context.span_id(), "process is a child of its publish");
    // The result records the context handed to the worker process (its `shard.train`
    // span's parent), so results link back to the trace.
    let result = store.get_result(&run, &record.shards[0].shard).await.unwrap().expect("result");
    let tp = result.traceparent.expect("traceparent in the result");
    assert_eq!(shared::telemetry::trace_id_of(&tp), Some(trace.to_string().as_str()));
}
