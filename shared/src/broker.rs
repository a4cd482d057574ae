//! The broker abstraction: publish shards to a device-class queue, consume with
//! prefetch 1, settle each delivery exactly once.
//!
//! Two implementations sit behind [`Broker`]: [`crate::amqp::AmqpBroker`] (RabbitMQ via
//! lapin) for fleets and [`MemoryBroker`] for the embedded `--local` mode and unit tests.
//! Both honour the same contract:
//! - `publish` returns only once every message is durably accepted (publisher confirms);
//! - a delivery that is dropped without being settled goes back to its queue, as an
//!   unacked AMQP delivery does when its channel closes;
//! - `reject(requeue = true)` counts as a failed attempt; after `delivery_limit` failed
//!   attempts the message is dead-lettered;
//! - `nack_requeue` (agent shutting down) puts the message back without counting.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::device::DeviceClass;
use crate::error::{Error, Result};

/// Header carrying the W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header with the dead-letter reason when an agent dead-letters a message itself.
pub const REASON_HEADER: &str = "x-qsched-reason";
/// Header with the publish time in Unix milliseconds, set by [`crate::amqp::AmqpBroker`] on
/// every message: the AMQP `timestamp` property has whole seconds only, too coarse for
/// the time a shard waits between publish and an agent taking it.
pub const PUBLISHED_AT_HEADER: &str = "x-qsched-published-ms";
/// Default number of failed deliveries before a message is dead-lettered.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 3;

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// Queue class it goes to.
    pub class: DeviceClass,
    /// Unique id (`run:shard`), used in confirms and logs.
    pub message_id: String,
    /// Encoded envelope.
    pub body: Vec<u8>,
    /// String headers (trace context, run id).
    pub headers: BTreeMap<String, String>,
}

/// A message in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Message id, if the publisher set one.
    pub message_id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Queue it came from.
    pub queue: Option<String>,
    /// Body size in bytes.
    pub size: usize,
    /// String headers.
    pub headers: BTreeMap<String, String>,
}

/// Settles one delivery.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Done: remove from the queue.
    async fn ack(&self) -> Result<()>;
    /// Failed attempt: requeue (counts toward the delivery limit) or drop to the DLQ.
    async fn reject(&self, requeue: bool) -> Result<()>;
    /// Give back without counting an attempt (agent shutting down).
    async fn nack_requeue(&self) -> Result<()>;
}

/// One received message.
pub struct Delivery {
    /// Encoded envelope.
    pub body: Vec<u8>,
    /// String headers.
    pub headers: BTreeMap<String, String>,
    /// Message id.
    pub message_id: Option<String>,
    /// True when the broker delivered it before.
    pub redelivered: bool,
    /// Failed deliveries so far (quorum queue `x-delivery-count`), 0 on the first.
    pub delivery_count: u32,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("size", &self.body.len())
            .field("redelivered", &self.redelivered)
            .field("delivery_count", &self.delivery_count)
            .finish()
    }
}

impl Delivery {
    /// Builds a delivery (used by broker implementations).
    pub fn new(
        body: Vec<u8>,
        headers: BTreeMap<String, String>,
        message_id: Option<String>,
        redelivered: bool,
        delivery_count: u32,
        acker: Box<dyn Acker>,
    ) -> Self {
        Delivery { body, headers, message_id, redelivered, delivery_count, acker }
    }

    /// When the message was published (Unix seconds, millisecond resolution), from
    /// [`PUBLISHED_AT_HEADER`]; `None` when the publisher did not set it.
    pub fn published_at(&self) -> Option<f64> {
        let ms: u64 = self.headers.get(PUBLISHED_AT_HEADER)?.parse().ok()?;
        Some(ms as f64 / 1000.0)
    }

    /// Acknowledge: the shard's outcome is stored.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Reject: `requeue = true` for a retryable failure, false to dead-letter now.
    pub async fn reject(self, requeue: bool) -> Result<()> {
        self.acker.reject(requeue).await
    }

    /// Put back without counting an attempt.
    pub async fn nack_requeue(self) -> Result<()> {
        self.acker.nack_requeue().await
    }
}

/// A stream of deliveries from one queue, prefetch 1.
#[async_trait]
pub trait ShardConsumer: Send {
    /// The next delivery; `None` when the consumer was cancelled or the broker closed it.
    async fn next(&mut self) -> Option<Result<Delivery>>;
}

/// A message broker holding one durable queue per device class: what publishers and
/// consumers need. Inspection and dead-letter administration are [`BrokerAdmin`], so a
/// test double of the messaging path implements only these calls.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Declares exchanges and queues (idempotent).
    async fn declare(&self) -> Result<()>;
    /// Publishes every message and returns once all are confirmed.
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<()>;
    /// Starts consuming the queue of `class` with prefetch 1.
    async fn consume(&self, class: DeviceClass, consumer_tag: &str) -> Result<Box<dyn ShardConsumer>>;
    /// Publishes a message straight to the dead-letter queue with a reason.
    async fn dead_letter(&self, body: Vec<u8>, headers: BTreeMap<String, String>, reason: &str) -> Result<()>;
    /// The largest message `publish` accepts (checked before anything is recorded).
    fn max_message_bytes(&self) -> usize {
        crate::wire::DEFAULT_MAX_MESSAGE_BYTES
    }
}

/// The broker's administration side: queue depths and the dead-letter queue (listing,
/// taking out for a retry, notices of new dead letters).
#[async_trait]
pub trait BrokerAdmin: Broker {
    /// Lists up to `limit` dead-lettered messages without removing them.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;
    /// Removes and returns the dead-lettered messages whose message id starts with
    /// `message_id_prefix` (`retry` takes a run's dead letters out before republishing).
    async fn take_dead_letters(&self, message_id_prefix: &str) -> Result<Vec<DeadLetter>>;
    /// Messages ready in the queue of `class` (for status displays).
    async fn queue_depth(&self, class: DeviceClass) -> Result<u64>;
    /// Messages in the dead-letter queue (all of them, unlike a `dead_letters` listing).
    async fn dead_letter_count(&self) -> Result<u64>;
    /// Removes and returns up to `max` notices of messages dead-lettered since earlier
    /// calls. Every dead letter, whether the broker put it there (its delivery limit) or
    /// an agent did, gives one notice; the dead letter itself stays in the dead-letter
    /// queue. [`crate::dead_letters::record_notices`] turns them into shard states.
    async fn take_dead_letter_notices(&self, max: usize) -> Result<Vec<DeadLetter>>;
}

// ---------------------------------------------------------------------------------------
// In-process implementation.

#[derive(Debug, Clone)]
struct MemMessage {
    id: u64,
    message_id: String,
    body: Vec<u8>,
    headers: BTreeMap<String, String>,
    delivered: bool,
    failures: u32,
}

#[derive(Debug, Default)]
struct MemState {
    queues: BTreeMap<DeviceClass, VecDeque<MemMessage>>,
    unacked: BTreeMap<u64, (DeviceClass, MemMessage)>,
    dead: Vec<(MemMessage, String)>,
    /// Notices of `dead`, in order, taken by `take_dead_letter_notices`.
    notices: VecDeque<DeadLetter>,
    next_id: u64,
}

impl MemState {
    /// Moves a message to the dead letters, with a notice of it.
    fn bury(&mut self, msg: MemMessage, reason: String) {
        self.notices.push_back(letter_of(&msg, &reason));
        self.dead.push((msg, reason));
    }
}

fn letter_of(m: &MemMessage, reason: &str) -> DeadLetter {
    DeadLetter {
        message_id: (!m.message_id.is_empty()).then(|| m.message_id.clone()),
        reason: reason.to_owned(),
        queue: None,
        size: m.body.len(),
        headers: m.headers.clone(),
    }
}

#[derive(Debug, Default)]
struct MemInner {
    state: Mutex<MemState>,
    notify: Notify,
}

/// An in-process broker with the same delivery semantics as the RabbitMQ setup.
#[derive(Debug, Clone)]
pub struct MemoryBroker {
    inner: Arc<MemInner>,
    delivery_limit: u32,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new(DEFAULT_DELIVERY_LIMIT)
    }
}

impl MemoryBroker {
    /// A broker that dead-letters a message after `delivery_limit` failed deliveries.
    pub fn new(delivery_limit: u32) -> Self {
        MemoryBroker { inner: Arc::new(MemInner::default()), delivery_limit }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        // A poisoned lock means a panic while holding it; the state is plain data and
        // still consistent for our operations, so keep going.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Messages not yet settled (ready + unacked), all classes.
    pub fn outstanding(&self) -> usize {
        let s = self.lock();
        s.queues.values().map(VecDeque::len).sum::<usize>() + s.unacked.len()
    }
}

struct MemAcker {
    broker: MemoryBroker,
    id: u64,
    settled: std::sync::atomic::AtomicBool,
}

impl MemAcker {
    fn settle(&self, how: Settle) {
        if self.settled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut s = self.broker.lock();
        let Some((class, mut msg)) = s.unacked.remove(&self.id) else { return };
        match how {
            Settle::Ack => {}
            Settle::Requeue { counts } => {
                if counts {
                    msg.failures += 1;
                }
                if msg.failures >= self.broker.delivery_limit {
                    let reason = format!("delivery limit of {} reached", self.broker.delivery_limit);
                    s.bury(msg, reason);
                } else {
                    msg.delivered = true;
                    s.queues.entry(class).or_default().push_front(msg);
                }
            }
            Settle::Dead => {
                msg.failures += 1;
                s.bury(msg, "rejected without requeue".into());
            }
        }
        drop(s);
        self.broker.inner.notify.notify_waiters();
    }
}

enum Settle {
    Ack,
    Requeue { counts: bool },
    Dead,
}

impl Drop for MemAcker {
    fn drop(&mut self) {
        // An unsettled delivery returns to the queue, like an unacked AMQP delivery
        // when its channel closes (a closed channel counts as a failed attempt).
        self.settle(Settle::Requeue { counts: true });
    }
}

#[async_trait]
impl Acker for MemAcker {
    async fn ack(&self) -> Result<()> {
        self.settle(Settle::Ack);
        Ok(())
    }
    async fn reject(&self, requeue: bool) -> Result<()> {
        self.settle(if requeue { Settle::Requeue { counts: true } } else { Settle::Dead });
        Ok(())
    }
    async fn nack_requeue(&self) -> Result<()> {
        self.settle(Settle::Requeue { counts: false });
        Ok(())
    }
}

struct MemConsumer {
    broker: MemoryBroker,
    class: DeviceClass,
}

#[async_trait]
impl ShardConsumer for MemConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        loop {
            let notified = self.broker.inner.notify.notified();
            {
                let mut s = self.broker.lock();
                if let Some(msg) = s.queues.get_mut(&self.class).and_then(VecDeque::pop_front) {
                    let id = msg.id;
                    s.unacked.insert(id, (self.class, msg.clone()));
                    let acker = MemAcker {
                        broker: self.broker.clone(),
                        id,
                        settled: std::sync::atomic::AtomicBool::new(false),
                    };
                    return Some(Ok(Delivery::new(
                        msg.body,
                        msg.headers,
                        Some(msg.message_id),
                        msg.delivered,
                        msg.failures,
                        Box::new(acker),
                    )));
                }
            }
            notified.await;
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn declare(&self) -> Result<()> {
        Ok(())
    }

    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<()> {
        {
            let mut s = self.lock();
            for m in messages {
                s.next_id += 1;
                let id = s.next_id;
                s.queues.entry(m.class).or_default().push_back(MemMessage {
                    id,
                    message_id: m.message_id,
                    body: m.body,
                    headers: m.headers,
                    delivered: false,
                    failures: 0,
                });
            }
        }
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn consume(&self, class: DeviceClass, _consumer_tag: &str) -> Result<Box<dyn ShardConsumer>> {
        Ok(Box::new(MemConsumer { broker: self.clone(), class }))
    }

    async fn dead_letter(&self, body: Vec<u8>, headers: BTreeMap<String, String>, reason: &str) -> Result<()> {
        let mut s = self.lock();
        s.next_id += 1;
        let id = s.next_id;
        // The agent passes the original message id as a header (as on RabbitMQ).
        let message_id = headers.get("message-id").cloned().unwrap_or_default();
        s.bury(MemMessage { id, message_id, body, headers, delivered: true, failures: 0 }, reason.to_owned());
        Ok(())
    }
}

#[async_trait]
impl BrokerAdmin for MemoryBroker {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let s = self.lock();
        Ok(s.dead.iter().take(limit).map(|(m, reason)| letter_of(m, reason)).collect())
    }

    async fn take_dead_letters(&self, message_id_prefix: &str) -> Result<Vec<DeadLetter>> {
        let mut s = self.lock();
        let (taken, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut s.dead).into_iter().partition(|(m, _)| m.message_id.starts_with(message_id_prefix));
        s.dead = kept;
        Ok(taken
            .into_iter()
            .map(|(m, reason)| DeadLetter {
                message_id: Some(m.message_id),
                reason,
                queue: None,
                size: m.body.len(),
                headers: m.headers,
            })
            .collect())
    }

    async fn queue_depth(&self, class: DeviceClass) -> Result<u64> {
        Ok(self.lock().queues.get(&class).map_or(0, |q| q.len() as u64))
    }

    async fn dead_letter_count(&self) -> Result<u64> {
        Ok(self.lock().dead.len() as u64)
    }

    async fn take_dead_letter_notices(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let mut s = self.lock();
        let n = max.min(s.notices.len());
        Ok(s.notices.drain(..n).collect())
    }
}

/// Error for a broker URL that cannot be used.
pub fn invalid_url(url: &str, why: &str) -> Error {
    Error::Broker { url: crate::secrets::redact_url(url), message: why.to_owned(), transient: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(class: DeviceClass, id: &str) -> OutgoingMessage {
        OutgoingMessage { class, message_id: id.into(), body: id.as_bytes().to_vec(), headers: BTreeMap::new() }
    }

    #[tokio::test]
    async fn classes_are_separate_and_fifo() {
        let b = MemoryBroker::default();
        b.publish(vec![msg(DeviceClass::Cpu, "a"), msg(DeviceClass::Cuda, "g"), msg(DeviceClass::Cpu, "b")])
            .await
            .unwrap();
        let mut cpu = b.consume(DeviceClass::Cpu, "t").await.unwrap();
        let d = cpu.next().await.unwrap().unwrap();
        assert_eq!(d.body, b"a");
        d.ack().await.unwrap();
        let d = cpu.next().await.unwrap().unwrap();
        assert_eq!(d.body, b"b");
        d.ack().await.unwrap();
        assert_eq!(b.queue_depth(DeviceClass::Cuda).await.unwrap(), 1);
        assert_eq!(b.outstanding(), 1);
    }

    #[tokio::test]
    async fn dropped_delivery_is_redelivered_then_dead_lettered() {
        let b = MemoryBroker::new(2);
        b.publish(vec![msg(DeviceClass::Cpu, "x")]).await.unwrap();
        let mut c = b.consume(DeviceClass::Cpu, "t").await.unwrap();
        let d = c.next().await.unwrap().unwrap();
        assert!(!d.redelivered);
        drop(d); // agent died
        let d = c.next().await.unwrap().unwrap();
        assert!(d.redelivered);
        assert_eq!(d.delivery_count, 1);
        d.reject(true).await.unwrap(); // second failure reaches the limit
        assert_eq!(b.queue_depth(DeviceClass::Cpu).await.unwrap(), 0);
        let dead = b.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].reason.contains("delivery limit"));
    }

    #[tokio::test]
    async fn nack_does_not_count() {
        let b = MemoryBroker::new(1);
        b.publish(vec![msg(DeviceClass::Cpu, "x")]).await.unwrap();
        let mut c = b.consume(DeviceClass::Cpu, "t").await.unwrap();
        for _ in 0..3 {
            let d = c.next().await.unwrap().unwrap();
            assert_eq!(d.delivery_count, 0);
            d.nack_requeue().await.unwrap();
        }
        assert!(b.dead_letters(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn consumer_waits_for_publish() {
        let b = MemoryBroker::default();
        let mut c = b.consume(DeviceClass::Cpu, "t").await.unwrap();
        let b2 = b.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            b2.publish(vec![msg(DeviceClass::Cpu, "late")]).await.unwrap();
        });
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), c.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(d.body, b"late");
    }
}
