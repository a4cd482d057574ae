//! `AmqpBroker` against a real RabbitMQ: confirms, prefetch, redelivery, dead-lettering.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shared::DeviceClass;
use shared::amqp::{AmqpBroker, AmqpConfig};
use shared::broker::{Broker, BrokerAdmin, Delivery, OutgoingMessage, ShardConsumer, TRACEPARENT_HEADER};
use shared::dead_letters::{NoticeReport, record_notices};
use shared::error::Error;
use shared::shard::ShardState;
use shared::store::Store;

use crate::util::{TestBroker, amqp_url};

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn message(class: DeviceClass, id: &str) -> OutgoingMessage {
    let mut headers = BTreeMap::new();
    headers.insert(TRACEPARENT_HEADER.to_owned(), TRACE.to_owned());
    headers.insert("x-qsched-run".to_owned(), "r-test".to_owned());
    OutgoingMessage { class, message_id: id.to_owned(), body: format!("body of {id}").into_bytes(), headers }
}

async fn next(consumer: &mut Box<dyn ShardConsumer>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("consumer still open")
        .expect("delivery ok")
}

/// Asserts nothing is delivered for a while.
async fn assert_quiet(consumer: &mut Box<dyn ShardConsumer>, wait: Duration) {
    if let Ok(got) = tokio::time::timeout(wait, consumer.next()).await {
        panic!("expected no delivery, got {got:?}");
    }
}

/// Dead-lettering from a quorum queue is asynchronous: poll until `n` letters are listed.
async fn wait_for_dead_letters(broker: &AmqpBroker, n: usize) -> Vec<shared::broker::DeadLetter> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let letters = broker.dead_letters(100).await.unwrap();
        if letters.len() >= n || Instant::now() > deadline {
            return letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn declare_is_idempotent_and_reads_the_server_version() {
    let b = TestBroker::new("declare").await;
    b.declare().await.unwrap();
    let v = b.server_version().expect("server version read from connection.start");
    assert_eq!(v.product, "RabbitMQ");
    assert!(v.at_least(3, 10), "{v}");
    assert_eq!(v.supports_consumer_timeout_argument(), v.at_least(3, 12));
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
    assert_eq!(b.shard_queue(DeviceClass::Cuda), format!("{}.shards.cuda", b.config.prefix));

    // Same names, different delivery limit: the broker refuses, and that is not transient.
    let mut other = b.config.clone();
    other.delivery_limit = 5;
    let err = AmqpBroker::connect(other).await.unwrap().declare().await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
}

#[tokio::test]
async fn publish_with_confirms_then_consume_and_ack() {
    let b = TestBroker::new("roundtrip").await;
    b.publish(vec![
        message(DeviceClass::Cpu, "r:1"),
        message(DeviceClass::Cuda, "r:2"),
        message(DeviceClass::Cpu, "r:3"),
    ])
    .await
    .unwrap();
    // publish returned after the confirms: the messages are in their queues already.
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 2);
    assert_eq!(b.queue_depth(DeviceClass::Cuda).await.unwrap(), 1);

    let mut cpu = b.consume(DeviceClass::Cpu, "agent-cpu").await.unwrap();
    for id in ["r:1", "r:3"] {
        let d = next(&mut cpu).await;
        assert_eq!(d.message_id.as_deref(), Some(id));
        assert_eq!(d.body, format!("body of {id}").into_bytes());
        assert_eq!(d.headers.get(TRACEPARENT_HEADER).map(String::as_str), Some(TRACE));
        assert_eq!(d.headers.get("x-qsched-run").map(String::as_str), Some("r-test"));
        assert!(!d.redelivered);
        assert_eq!(d.delivery_count, 0);
        d.ack().await.unwrap();
    }
    assert_quiet(&mut cpu, Duration::from_millis(300)).await;
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
    assert_eq!(b.queue_depth(DeviceClass::Cuda).await.unwrap(), 1);
}

#[tokio::test]
async fn many_messages_pass_through_the_confirm_window() {
    let b = TestBroker::new("window").await;
    let n = 700; // more than two windows of 256
    let msgs = (0..n).map(|i| message(DeviceClass::Cpu, &format!("w:{i}"))).collect();
    b.publish(msgs).await.unwrap();
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), n);
}

#[tokio::test]
async fn prefetch_one_holds_back_the_next_message_until_settled() {
    let b = TestBroker::new("prefetch").await;
    b.publish(vec![message(DeviceClass::Cpu, "p:1"), message(DeviceClass::Cpu, "p:2")]).await.unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "agent").await.unwrap();
    let first = next(&mut c).await;
    assert_eq!(first.message_id.as_deref(), Some("p:1"));
    // While p:1 is unsettled, p:2 stays in the queue for other agents.
    assert_quiet(&mut c, Duration::from_millis(800)).await;
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 1);
    let mut other = b.consume(DeviceClass::Cpu, "idle-agent").await.unwrap();
    let second = next(&mut other).await;
    assert_eq!(second.message_id.as_deref(), Some("p:2"));
    first.ack().await.unwrap();
    second.ack().await.unwrap();
}

#[tokio::test]
async fn reject_requeue_counts_then_dead_letters_at_the_limit() {
    let b = TestBroker::with("limit", |c| c.delivery_limit = 3).await;
    b.publish(vec![message(DeviceClass::Cuda, "poison")]).await.unwrap();
    let mut c = b.consume(DeviceClass::Cuda, "agent").await.unwrap();
    for attempt in 0..3u32 {
        let d = next(&mut c).await;
        assert_eq!(d.message_id.as_deref(), Some("poison"));
        assert_eq!(d.redelivered, attempt > 0, "attempt {attempt}");
        assert_eq!(d.delivery_count, attempt, "x-delivery-count on attempt {attempt}");
        d.reject(true).await.unwrap();
    }
    // The third failure reached the limit: no fourth delivery, one dead letter.
    assert_quiet(&mut c, Duration::from_millis(500)).await;
    let dead = wait_for_dead_letters(&b, 1).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id.as_deref(), Some("poison"));
    assert!(dead[0].reason.contains("delivery limit"), "{}", dead[0].reason);
    assert_eq!(dead[0].queue.as_deref(), Some(b.shard_queue(DeviceClass::Cuda).as_str()));
    assert_eq!(dead[0].headers.get(TRACEPARENT_HEADER).map(String::as_str), Some(TRACE));
    assert_eq!(b.queue_depth(DeviceClass::Cuda).await.unwrap(), 0);
}

#[tokio::test]
async fn reject_without_requeue_dead_letters_at_once() {
    let b = TestBroker::new("reject").await;
    b.publish(vec![message(DeviceClass::Cpu, "bad")]).await.unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "agent").await.unwrap();
    next(&mut c).await.reject(false).await.unwrap();
    let dead = wait_for_dead_letters(&b, 1).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].reason.contains("rejected"), "{}", dead[0].reason);
    assert_quiet(&mut c, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn nack_requeue_redelivers() {
    let b = TestBroker::new("nack").await;
    b.publish(vec![message(DeviceClass::Cpu, "drain")]).await.unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "agent").await.unwrap();
    next(&mut c).await.nack_requeue().await.unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.message_id.as_deref(), Some("drain"));
    assert!(d.redelivered);
    // RabbitMQ 4.3 stopped counting nack(requeue) as a failed delivery; older brokers count it.
    let counts = !b.server_version().unwrap().at_least(4, 3);
    assert_eq!(d.delivery_count, u32::from(counts));
    d.ack().await.unwrap();
}

#[tokio::test]
async fn dropping_a_delivery_unsettled_requeues_it() {
    let b = TestBroker::new("dropdelivery").await;
    b.publish(vec![message(DeviceClass::Cpu, "d")]).await.unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "agent").await.unwrap();
    drop(next(&mut c).await);
    // Without the requeue-on-drop, prefetch 1 would block this consumer for good.
    let d = next(&mut c).await;
    assert!(d.redelivered);
    assert_eq!(d.delivery_count, 1);
    d.ack().await.unwrap();
}

#[tokio::test]
async fn a_dying_agent_connection_requeues_its_shard() {
    let b = TestBroker::new("agentdies").await;
    b.publish(vec![message(DeviceClass::Cuda, "long")]).await.unwrap();

    // The agent has its own connection, takes the shard and "dies" without settling it.
    let agent = b.another_connection().await;
    let mut doomed = agent.consume(DeviceClass::Cuda, "doomed").await.unwrap();
    let held = next(&mut doomed).await;
    agent.close().await.unwrap();

    // Its consumer ends instead of hanging, and the late ack is an error, not a silent no-op.
    match tokio::time::timeout(Duration::from_secs(5), doomed.next()).await.expect("consumer must end") {
        None => {}
        Some(Err(e)) => assert!(e.is_transient(), "{e}"),
        Some(Ok(d)) => panic!("unexpected delivery {d:?}"),
    }
    let err = held.ack().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    // The closed broker handle reconnects on its next use.
    assert_eq!(agent.queue_depth(DeviceClass::Cuda).await.unwrap(), 1);

    // Another agent gets the shard again, marked as redelivered.
    let mut survivor = b.consume(DeviceClass::Cuda, "survivor").await.unwrap();
    let d = next(&mut survivor).await;
    assert_eq!(d.message_id.as_deref(), Some("long"));
    assert!(d.redelivered);
    assert_eq!(d.delivery_count, 1);
    d.ack().await.unwrap();
}

#[tokio::test]
async fn dropping_a_consumer_closes_its_channel_and_requeues() {
    let b = TestBroker::new("dropconsumer").await;
    b.publish(vec![message(DeviceClass::Cpu, "c")]).await.unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "first").await.unwrap();
    let held = next(&mut c).await;
    drop(c);
    let mut again = b.consume(DeviceClass::Cpu, "second").await.unwrap();
    let d = next(&mut again).await;
    assert!(d.redelivered);
    assert!(held.ack().await.is_err(), "ack on a closed channel must fail");
    d.ack().await.unwrap();
    // The connection itself is still usable.
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
}

#[tokio::test]
async fn dead_letter_listing_shows_reasons_and_keeps_the_messages() {
    let b = TestBroker::new("dlq").await;
    let mut headers = BTreeMap::new();
    headers.insert("x-qsched-run".to_owned(), "r-1".to_owned());
    let garbage = b"\xc1 not msgpack".to_vec();
    b.dead_letter(garbage.clone(), headers.clone(), "undecodable: bad msgpack").await.unwrap();
    b.dead_letter(b"second".to_vec(), headers, "schema_version 9 unsupported").await.unwrap();
    for _ in 0..2 {
        let letters = b.dead_letters(10).await.unwrap();
        assert_eq!(letters.len(), 2, "{letters:?}");
        assert_eq!(letters[0].reason, "undecodable: bad msgpack");
        assert_eq!(letters[1].reason, "schema_version 9 unsupported");
        assert_eq!(letters[0].size, garbage.len());
        assert_eq!(letters[0].headers.get("x-qsched-run").map(String::as_str), Some("r-1"));
    }
    assert_eq!(b.dead_letters(1).await.unwrap().len(), 1);
    assert!(b.dead_letters(0).await.unwrap().is_empty());
    // Still two: listing never consumes.
    assert_eq!(b.dead_letters(10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn take_dead_letters_removes_only_the_matching_run() {
    let b = TestBroker::new("dlqtake").await;
    b.publish(vec![
        message(DeviceClass::Cpu, "r1:a"),
        message(DeviceClass::Cpu, "r2:b"),
        message(DeviceClass::Cpu, "r1:c"),
    ])
    .await
    .unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "t").await.unwrap();
    for _ in 0..3 {
        next(&mut c).await.reject(false).await.unwrap();
    }
    assert_eq!(wait_for_dead_letters(&b, 3).await.len(), 3);
    let mut taken: Vec<String> =
        b.take_dead_letters("r1:").await.unwrap().into_iter().filter_map(|d| d.message_id).collect();
    taken.sort();
    assert_eq!(taken, vec!["r1:a".to_owned(), "r1:c".to_owned()]);
    let left = b.dead_letters(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].message_id.as_deref(), Some("r2:b"));
}

#[tokio::test]
async fn unroutable_publish_is_not_confirmed() {
    let b = TestBroker::new("unroutable").await;
    // Take the cuda queue away behind the broker's back so that routing key `cuda` matches nothing.
    let raw = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let ch = raw.create_channel().await.unwrap();
    ch.queue_delete(b.shard_queue(DeviceClass::Cuda).as_str().into(), Default::default()).await.unwrap();

    let err = b
        .publish(vec![
            message(DeviceClass::Cpu, "ok"),
            message(DeviceClass::Cuda, "lost"),
            message(DeviceClass::Cpu, "ok2"),
        ])
        .await
        .unwrap_err();
    match &err {
        Error::NotConfirmed { message_id, reason } => {
            assert_eq!(message_id, "lost");
            assert!(reason.contains("unroutable"), "{reason}");
        }
        other => panic!("expected NotConfirmed, got {other}"),
    }
    assert!(err.is_transient());
    // The routable messages of the batch were still published and confirmed.
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 2);
}

#[tokio::test]
async fn oversized_messages_are_refused_before_publishing() {
    let b = TestBroker::with("toolarge", |c| c.max_message_bytes = 16).await;
    let mut m = message(DeviceClass::Cpu, "big");
    m.body = vec![0; 17];
    assert!(matches!(b.publish(vec![m]).await, Err(Error::TooLarge { size: 17, limit: 16 })));
    assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
}

#[tokio::test]
async fn consumer_timeout_setting_works_on_this_broker() {
    // On ≥ 3.12 the consumer carries x-consumer-timeout; older brokers get a warning and the
    // broker-wide setting. Either way consuming must work.
    let b = TestBroker::with("ctimeout", |c| c.consumer_timeout = Some(Duration::from_secs(6 * 3600))).await;
    b.publish(vec![message(DeviceClass::Cpu, "t")]).await.unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "agent").await.unwrap();
    next(&mut c).await.ack().await.unwrap();
}

#[tokio::test]
async fn unreachable_broker_is_a_fast_clear_error() {
    let url = "amqp://qsched:s3cret-pw@127.0.0.1:1/%2f";
    let started = Instant::now();
    let err = AmqpBroker::connect(AmqpConfig::new(url)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let text = err.to_string();
    assert!(err.is_transient(), "{text}");
    assert!(text.contains("amqp://qsched:***@127.0.0.1:1/%2f"), "{text}");
    assert!(text.contains("cannot reach the broker at 127.0.0.1:1 (connection refused)"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[tokio::test]
async fn a_black_holed_address_is_bounded_by_connect_timeout() {
    // 192.0.2.0/24 is TEST-NET-1: never routed, so the SYN goes nowhere (or fails at once).
    let mut config = AmqpConfig::new("amqp://guest:s3cret-pw@192.0.2.1:5672/%2f");
    config.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = AmqpBroker::connect(config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(err.is_transient(), "{err}");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
}

#[tokio::test]
async fn wrong_credentials_are_a_permanent_error() {
    let mut url = amqp_url();
    url = url.replacen("guest:guest@", "guest:wrong-pw@", 1);
    let err = AmqpBroker::connect(AmqpConfig::new(url)).await.unwrap_err();
    assert!(!err.is_transient(), "{err}");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
}

#[tokio::test]
async fn a_shard_the_broker_dead_letters_is_marked_dead_in_the_store() {
    let b = TestBroker::with("notices", |c| c.delivery_limit = 2).await;
    let store = crate::util::TestStore::new("notices").await;
    let run = scheduler::new_run_id();
    let record = scheduler::submit(&crate::procs::tiny_qwen3(vec![1], 5, 5), &run, &*b, &*store).await.expect("submit");
    let shard = record.shards[0].shard.clone();
    // Two agents in turn take the shard and die holding it (the broker counts both).
    store.set_state(run.as_str(), &shard, ShardState::Running).await.unwrap();
    let mut c = b.consume(DeviceClass::Cpu, "agent").await.unwrap();
    for _ in 0..2 {
        next(&mut c).await.reject(true).await.unwrap();
    }
    assert_eq!(wait_for_dead_letters(&b, 1).await.len(), 1);

    // An agent's periodic pass (or `qsched status`) learns it from the notice queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = record_notices(&*b, &*store, "agent-x").await.unwrap();
        if report.taken > 0 || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report, NoticeReport { taken: 1, marked_dead: 1 });
    assert_eq!(store.states(run.as_str()).await.unwrap()[&shard], ShardState::Dead);
    let records = store.dead_letter_records(10).await.unwrap();
    assert!(records[0].letter.reason.contains("delivery limit"), "{:?}", records[0]);
    assert_eq!(records[0].letter.message_id.as_deref(), Some(format!("{run}:{shard}").as_str()));
    // The dead letter stays listed for `qsched dead-letters`; the notice is used up.
    assert_eq!(b.dead_letters(10).await.unwrap().len(), 1);
    assert_eq!(record_notices(&*b, &*store, "agent-x").await.unwrap(), NoticeReport::default());
}
