//! The RabbitMQ implementation of [`Broker`] (lapin 4.12).
//!
//! This module owns the AMQP topology and how qsched uses it; the delivery contract itself
//! is defined by [`crate::broker`] and mirrored by [`crate::broker::MemoryBroker`].
//!
//! Topology for a prefix `p` (default `qsched`), declared idempotently by
//! [`Broker::declare`]:
//!
//! | name | kind | purpose |
//! |---|---|---|
//! | `p.shards` | durable direct exchange | shards, routing key = device class |
//! | `p.shards.cpu`, `p.shards.cuda` | durable quorum queues | one per device class; `x-delivery-limit`, dead-letter to `p.dlx` |
//! | `p.dlx` | durable fanout exchange | dead letters from every shard queue and from agents |
//! | `p.dead` | durable classic queue | the dead-letter queue, listed by `qsched dead-letters` |
//! | `p.dead.notices` | durable classic queue | one notice per dead letter, taken by agents to mark the shard `dead` |
//!
//! Reliability choices, each mirrored by an integration test:
//! - publishes use publisher confirms, `mandatory`, persistent delivery mode, and a bounded
//!   window of unconfirmed messages; a nack or an unroutable return is
//!   [`Error::NotConfirmed`];
//! - every consumer gets its own channel with prefetch 1 (per consumer: quorum queues refuse
//!   global QoS), so a consumer timeout or channel error on one agent cannot requeue another's
//!   work;
//! - a delivery dropped without being settled is rejected with requeue, as
//!   [`crate::broker::MemoryBroker`] does, because with prefetch 1 an unsettled delivery
//!   would block its consumer forever;
//! - `x-consumer-timeout` is passed per consumer only to brokers ≥ 3.12 (older brokers
//!   ignore it silently); on older brokers `ops/rabbitmq/rabbitmq.conf` raises the
//!   broker-wide `consumer_timeout` instead.
//!
//! Version notes: on RabbitMQ < 4.3 every requeue (`reject` *and* `nack`) and every closed
//! channel counts toward `x-delivery-limit`; from 4.3 `basic.nack(requeue)` does not count,
//! which is the semantics [`crate::broker::Acker::nack_requeue`] documents.
//!
//! lapin does not expose the broker's `server-properties` (they arrive in
//! `connection.start` and are only traced), so [`AmqpBroker::connect`] reads them with a
//! short pre-handshake probe: open the socket, send the protocol header, parse
//! `connection.start`, close. The probe authenticates nothing and sends no credentials; the
//! broker logs it as one "client unexpectedly closed TCP connection" warning per connect.
//! Call [`AmqpBroker::close`] on shutdown so the main connection ends without one.
//!
//! Automatic connection recovery in lapin is deliberately not enabled: a consumer whose
//! connection dies ends (`next()` returns `None` or a transient error), its unacked
//! delivery goes back to the queue on the broker side, and the agent calls
//! [`Broker::consume`] again, which reconnects. Publishing, declaring and listing reconnect
//! lazily the same way.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::broker::{
    Acker, Broker, BrokerAdmin, DEFAULT_DELIVERY_LIMIT, DeadLetter, Delivery, OutgoingMessage, REASON_HEADER,
};
use crate::broker::{PUBLISHED_AT_HEADER, ShardConsumer, invalid_url};
use crate::device::DeviceClass;
use crate::error::{Error, Result};
use crate::secrets::{redact_url, scrub_secrets};
use crate::tls::CaBundle;
use crate::wire::{CONTENT_TYPE, DEFAULT_MAX_MESSAGE_BYTES};

/// Unconfirmed publishes kept in flight on one channel before waiting for the oldest
/// confirm. A quorum queue confirms in Raft-commit rounds, so on one channel this window
/// holds the rate to about two thirds of an unbounded one (RabbitMQ 3.10, BENCHMARKS.md
/// §6); `scheduler::submit` keeps 8 batches in flight, each on its own channel, which is
/// faster than one unbounded channel. More per channel only adds latency and memory.
pub const CONFIRM_WINDOW: usize = 256;

/// AMQP heartbeat asked for when the URL does not set `?heartbeat=`: a dead peer is noticed
/// within about a minute instead of the server default's two.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 30;

/// Default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Header with the quorum-queue delivery count (absent on a first delivery).
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Every device class, each with its own queue. The exhaustive match makes a new class a
/// compile error here rather than a queue that is silently never declared.
fn all_classes() -> [DeviceClass; 2] {
    let _exhaustive = |c: DeviceClass| match c {
        DeviceClass::Cpu | DeviceClass::Cuda => (),
    };
    [DeviceClass::Cpu, DeviceClass::Cuda]
}

/// How to reach RabbitMQ and how qsched's topology is set up there.
#[derive(Clone)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:5672/vhost` or `amqps://…`; may carry `?heartbeat=`.
    pub url: String,
    /// Prefix of every exchange and queue name (default `qsched`; tests use a unique one).
    pub prefix: String,
    /// Failed deliveries (reject with requeue, or a consumer lost while holding it) after
    /// which a message is dead-lettered; at least 1 (default 3).
    pub delivery_limit: u32,
    /// Per-consumer acknowledgement timeout (`x-consumer-timeout`, RabbitMQ ≥ 3.12): set it
    /// above the longest shard's wall time. `None` leaves the broker's setting.
    pub consumer_timeout: Option<Duration>,
    /// Largest message body `publish` accepts.
    pub max_message_bytes: usize,
    /// Bound on opening a connection (TCP, TLS and AMQP handshake).
    pub connect_timeout: Duration,
    /// CA trusted for an `amqps://` URL instead of the host's store (`--amqp-ca-file`).
    pub ca: Option<CaBundle>,
}

impl AmqpConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            prefix: "qsched".into(),
            delivery_limit: DEFAULT_DELIVERY_LIMIT,
            consumer_timeout: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ca: None,
        }
    }

    /// Sets the name prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

// Hand-written so that the password never reaches a log line through `{:?}`.
impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("delivery_limit", &self.delivery_limit)
            .field("consumer_timeout", &self.consumer_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("ca", &self.ca)
            .finish()
    }
}

/// The broker product and version, from the `connection.start` server properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// `product` property (e.g. `RabbitMQ`).
    pub product: String,
    /// `version` property as sent (e.g. `3.10.8`, `4.1.0-rc.1`).
    pub version: String,
    /// Leading numeric components: major, minor, patch (missing ones are 0).
    pub numbers: (u32, u32, u32),
}

impl ServerVersion {
    /// Parses a `version` property; `None` when it does not start with a number.
    pub fn parse(product: &str, version: &str) -> Option<Self> {
        // Drop pre-release and build suffixes ("4.0.0-beta.5", "3.12.0+rc.1").
        let core = version.split(['-', '+', ' ']).next().unwrap_or("");
        let mut parts = core.split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().and_then(|p| p.ok()).unwrap_or(0);
        let patch = parts.next().and_then(|p| p.ok()).unwrap_or(0);
        Some(ServerVersion { product: product.to_owned(), version: version.to_owned(), numbers: (major, minor, patch) })
    }

    /// True when the version is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.numbers.0, self.numbers.1) >= (major, minor)
    }

    /// True when the broker honours `x-consumer-timeout` on `basic.consume` (RabbitMQ ≥ 3.12).
    pub fn supports_consumer_timeout_argument(&self) -> bool {
        self.product.eq_ignore_ascii_case("rabbitmq") && self.at_least(3, 12)
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.product, self.version)
    }
}

/// A [`Broker`] on RabbitMQ.
pub struct AmqpBroker {
    config: AmqpConfig,
    uri: AMQPUri,
    safe_url: String,
    conn: Mutex<Option<Arc<Connection>>>,
    version: RwLock<Option<ServerVersion>>,
    /// Confirm-mode channels kept open between publishes (see [`CONFIRM_CHANNELS_KEPT`]).
    confirm_channels: std::sync::Mutex<Vec<Channel>>,
}

/// Confirm-mode channels kept for reuse after a publish that succeeded: a submit publishes
/// its shards in many concurrent batches, and opening, confirm-selecting and closing a
/// channel for each costs three round trips and broker work per batch. A channel whose
/// publish failed, or one beyond this many, is closed.
const CONFIRM_CHANNELS_KEPT: usize = 16;

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.safe_url)
            .field("prefix", &self.config.prefix)
            .field("server_version", &self.server_version())
            .finish()
    }
}

impl AmqpBroker {
    /// Validates the configuration and connects.
    ///
    /// Errors: a URL that is not `amqp://`/`amqps://` or a bad setting is a non-transient
    /// error; an unreachable broker or a handshake that does not finish within
    /// `connect_timeout` is a transient one. Both name the URL with its password redacted.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let safe_url = redact_url(&config.url);
        if config.delivery_limit == 0 {
            return Err(Error::invalid("delivery limit", "must be at least 1"));
        }
        // Queue names are AMQP short strings (≤ 255 bytes) and show up in URLs of the
        // management UI: keep the prefix plain.
        if config.prefix.is_empty()
            || config.prefix.len() > 200
            || !config.prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(Error::invalid(
                "AMQP prefix",
                format!("'{}': use 1-200 characters from [A-Za-z0-9-_.:]", config.prefix),
            ));
        }
        crate::tls::check_scheme(&config.url, config.ca.as_ref(), "amqps", "AMQP URL")?;
        let mut uri: AMQPUri = config.url.parse().map_err(|e: String| {
            invalid_url(
                &config.url,
                &scrub_secrets(
                    &format!("not a usable AMQP URL ({e}); expected amqp://user:password@host:5672/vhost or amqps://…"),
                    &config.url,
                ),
            )
        })?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_SECS);
        }
        let broker = AmqpBroker {
            config,
            uri,
            safe_url,
            conn: Mutex::new(None),
            version: RwLock::new(None),
            confirm_channels: std::sync::Mutex::new(Vec::new()),
        };
        broker.connection().await?;
        Ok(broker)
    }

    /// Broker product and version, read when the connection was opened; `None` if the
    /// probe failed (then per-consumer timeouts are not used).
    pub fn server_version(&self) -> Option<ServerVersion> {
        self.version.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// The broker URL with its password redacted.
    pub fn safe_url(&self) -> &str {
        &self.safe_url
    }

    /// The shard exchange, `<prefix>.shards`.
    pub fn exchange(&self) -> String {
        format!("{}.shards", self.config.prefix)
    }

    /// The queue of a device class, `<prefix>.shards.<class>`.
    pub fn shard_queue(&self, class: DeviceClass) -> String {
        format!("{}.shards.{class}", self.config.prefix)
    }

    /// The dead-letter exchange, `<prefix>.dlx`.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.config.prefix)
    }

    /// The dead-letter queue, `<prefix>.dead`.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.config.prefix)
    }

    /// The queue of dead-letter notices, `<prefix>.dead.notices`: the same messages as the
    /// dead-letter queue (both are bound to the fanout dead-letter exchange), consumed so
    /// that the store learns which shards the broker gave up on.
    pub fn dead_letter_notice_queue(&self) -> String {
        format!("{}.dead.notices", self.config.prefix)
    }

    /// Deletes every queue and exchange of this prefix, with their messages (tests and
    /// `qsched` maintenance; never called by agents).
    pub async fn delete_topology(&self) -> Result<()> {
        let ch = self.channel().await?;
        let mut queues: Vec<String> = all_classes().iter().map(|c| self.shard_queue(*c)).collect();
        queues.push(self.dead_letter_queue());
        queues.push(self.dead_letter_notice_queue());
        for q in &queues {
            let removed = ch
                .queue_delete(short(q)?, QueueDeleteOptions::default())
                .await
                .map_err(|e| self.lapin_error(&format!("deleting queue {q}"), &e))?;
            debug!(queue = %q, messages = removed, "deleted queue");
        }
        for x in [self.exchange(), self.dead_letter_exchange()] {
            ch.exchange_delete(short(&x)?, ExchangeDeleteOptions::default())
                .await
                .map_err(|e| self.lapin_error(&format!("deleting exchange {x}"), &e))?;
        }
        close_channel(&ch).await;
        info!(prefix = %self.config.prefix, "deleted topology");
        Ok(())
    }

    /// Closes the connection; consumers on it end and their unsettled deliveries return to
    /// their queues. A later call on this broker reconnects.
    pub async fn close(&self) -> Result<()> {
        // The kept channels close with their connection.
        self.kept_channels().clear();
        let conn = self.conn.lock().await.take();
        if let Some(conn) = conn
            && conn.status().connected()
        {
            conn.close(200, "OK".into()).await.map_err(|e| self.lapin_error("closing the connection", &e))?;
        }
        Ok(())
    }

    /// The live connection, reconnecting when the previous one is gone.
    async fn connection(&self) -> Result<Arc<Connection>> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.clone());
        }
        let conn = Arc::new(self.open().await?);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// `host:port` of the broker, for messages about reaching it.
    fn host_port(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }

    /// The TLS settings of an `amqps://` connection: the configured CA, if any.
    fn tls_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig { identity: None, cert_chain: self.config.ca.as_ref().map(|ca| ca.pem().to_owned()) }
    }

    async fn open(&self) -> Result<Connection> {
        let timeout = self.config.connect_timeout;
        let props = ConnectionProperties::default()
            .with_connection_name(format!("qsched:{}:{}", self.config.prefix, std::process::id()).into());
        // lapin retries nothing by default (its backoff has 0 retries unless auto-recovery
        // is on), but a TCP connect to a black-holed address can still hang for minutes:
        // bound the whole handshake.
        let runtime = lapin::runtime::default_runtime().map_err(|e| Error::Broker {
            url: self.safe_url.clone(),
            message: format!("cannot start the AMQP client's runtime: {e}"),
            transient: false,
        })?;
        let connect = Connection::connect_uri_with_config(self.uri.clone(), props, self.tls_config(), runtime);
        let conn = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let transient = lapin_transient(&e);
                let refused = matches!(e.kind(), lapin::ErrorKind::IOError(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused);
                let message = if refused {
                    format!("cannot reach the broker at {} (connection refused)", self.host_port())
                } else {
                    scrub_secrets(&format!("cannot connect to RabbitMQ at {}: {e}", self.host_port()), &self.config.url)
                };
                return Err(Error::Broker { url: self.safe_url.clone(), message, transient });
            }
            Err(_) => {
                return Err(Error::Broker {
                    url: self.safe_url.clone(),
                    message: format!(
                        "cannot reach the broker at {} (timed out after {} s)",
                        self.host_port(),
                        timeout.as_secs_f64()
                    ),
                    transient: true,
                });
            }
        };
        let version = match probe_server_properties(&self.uri, &self.tls_config(), timeout).await {
            Ok(props) => {
                let product = field_string(&props, "product").unwrap_or_default();
                let version = field_string(&props, "version").unwrap_or_default();
                ServerVersion::parse(&product, &version)
            }
            Err(why) => {
                warn!(url = %self.safe_url, %why, "could not read the broker version; per-consumer timeouts disabled");
                None
            }
        };
        info!(url = %self.safe_url, server = ?version.as_ref().map(|v| v.to_string()), "connected to RabbitMQ");
        *self.version.write().unwrap_or_else(|p| p.into_inner()) = version;
        Ok(conn)
    }

    async fn channel(&self) -> Result<Channel> {
        let conn = self.connection().await?;
        conn.create_channel().await.map_err(|e| self.lapin_error("opening a channel", &e))
    }

    fn lapin_error(&self, what: &str, e: &lapin::Error) -> Error {
        Error::Broker {
            url: self.safe_url.clone(),
            message: scrub_secrets(&format!("{what}: {e}"), &self.config.url),
            transient: lapin_transient(e),
        }
    }

    fn shard_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        // RabbitMQ dead-letters a message once it has been returned *more* than
        // x-delivery-limit times; MemoryBroker (and our docs) count the failed deliveries
        // themselves, so "dead after N failures" is a broker limit of N - 1.
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(self.config.delivery_limit - 1).unwrap_or(i32::MAX)),
        );
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.dead_letter_exchange().into()));
        // At-least-once dead-lettering (RabbitMQ ≥ 3.10): the source queue keeps a message
        // until the dead-letter queue has confirmed it, so a poison shard is never lost on
        // its way to `<prefix>.dead`. It requires the reject-publish overflow mode, which
        // changes nothing here because the shard queues have no length limit.
        args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
        args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        args
    }

    /// Publishes every item on one confirm-mode channel and waits for all confirms,
    /// keeping at most [`CONFIRM_WINDOW`] in flight. Returns the first failure after every
    /// confirm has been collected.
    async fn publish_confirmed(&self, items: Vec<Publish<'_>>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        for item in &items {
            if item.body.len() > self.config.max_message_bytes {
                return Err(Error::TooLarge { size: item.body.len(), limit: self.config.max_message_bytes });
            }
        }
        let ch = self.confirm_channel().await?;
        let mut window = VecDeque::with_capacity(CONFIRM_WINDOW.min(items.len()));
        let mut failure = None;
        let count = items.len();
        for item in items {
            if window.len() >= CONFIRM_WINDOW
                && let Some((id, confirm)) = window.pop_front()
            {
                self.check_confirm(id, confirm.await, &mut failure);
            }
            let message_id = item.message_id.unwrap_or("(none)");
            let mut props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(CONTENT_TYPE.into())
                .with_app_id("qsched".into())
                .with_timestamp(crate::shard::unix_now() as u64)
                .with_headers(stamped(header_table(item.headers, item.extra_header)?));
            if let Some(id) = item.message_id {
                props = props.with_message_id(short(id)?);
            }
            let confirm = ch
                .basic_publish(
                    short(item.exchange)?,
                    short(item.routing_key)?,
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    item.body,
                    props,
                )
                .await
                .map_err(|e| self.lapin_error("publishing", &e))?;
            window.push_back((message_id, confirm));
        }
        while let Some((id, confirm)) = window.pop_front() {
            self.check_confirm(id, confirm.await, &mut failure);
        }
        match failure {
            Some(e) => {
                close_channel(&ch).await;
                Err(e)
            }
            None => {
                if let Some(ch) = self.keep_channel(ch) {
                    close_channel(&ch).await;
                }
                debug!(messages = count, "published with confirms");
                Ok(())
            }
        }
    }

    /// The kept confirm-mode channels (a poisoned lock only means a panic elsewhere while
    /// it was held: the list itself is still sound).
    fn kept_channels(&self) -> std::sync::MutexGuard<'_, Vec<Channel>> {
        self.confirm_channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A kept channel that is still open, else a new one in confirm mode.
    async fn confirm_channel(&self) -> Result<Channel> {
        loop {
            let Some(ch) = self.kept_channels().pop() else { break };
            // A channel of a connection that has since died is no longer connected.
            if ch.status().connected() {
                return Ok(ch);
            }
        }
        let ch = self.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.lapin_error("enabling publisher confirms", &e))?;
        Ok(ch)
    }

    /// Keeps a channel whose publish succeeded (every confirm collected) for the next
    /// publish; returns it when enough are kept already.
    fn keep_channel(&self, ch: Channel) -> Option<Channel> {
        let mut kept = self.kept_channels();
        if kept.len() < CONFIRM_CHANNELS_KEPT && ch.status().connected() {
            kept.push(ch);
            None
        } else {
            Some(ch)
        }
    }

    fn check_confirm(&self, message_id: &str, confirm: lapin::Result<Confirmation>, failure: &mut Option<Error>) {
        let error = match confirm {
            Ok(Confirmation::Ack(None)) => return,
            Ok(Confirmation::Ack(Some(returned))) => Error::NotConfirmed {
                reason: format!(
                    "returned as unroutable ({} {}): no queue is bound for routing key '{}' on exchange '{}'",
                    returned.reply_code, returned.reply_text, returned.delivery.routing_key, returned.delivery.exchange
                ),
                message_id: message_id.to_owned(),
            },
            Ok(Confirmation::Nack(_)) => Error::NotConfirmed {
                message_id: message_id.to_owned(),
                reason: "nacked by the broker (not stored)".into(),
            },
            Ok(Confirmation::NotRequested) => Error::NotConfirmed {
                message_id: message_id.to_owned(),
                reason: "the channel was not in confirm mode".into(),
            },
            Err(e) => self.lapin_error(&format!("waiting for the confirm of {message_id}"), &e),
        };
        warn!(error = %error, "publish failed");
        failure.get_or_insert(error);
    }
}

/// One message for [`AmqpBroker::publish_confirmed`].
struct Publish<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    message_id: Option<&'a str>,
    body: &'a [u8],
    headers: &'a BTreeMap<String, String>,
    extra_header: Option<(&'a str, &'a str)>,
}

#[async_trait]
impl Broker for AmqpBroker {
    async fn declare(&self) -> Result<()> {
        let ch = self.channel().await?;
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let (exchange, dlx, dead) = (self.exchange(), self.dead_letter_exchange(), self.dead_letter_queue());
        let declare_err = |what: String| {
            move |e: lapin::Error| {
                let mut err = self.lapin_error(&what, &e);
                if let Error::Broker { message, .. } = &mut err
                    && message.contains("PRECONDITION_FAILED")
                {
                    message.push_str(
                        " (it exists with other settings: delete it, or change the settings through a policy)",
                    );
                }
                err
            }
        };
        ch.exchange_declare(short(&exchange)?, ExchangeKind::Direct, durable_exchange, FieldTable::default())
            .await
            .map_err(declare_err(format!("declaring exchange {exchange}")))?;
        // Fanout: dead letters keep their original routing key (the device class), and
        // every one of them belongs in the single dead-letter queue.
        ch.exchange_declare(short(&dlx)?, ExchangeKind::Fanout, durable_exchange, FieldTable::default())
            .await
            .map_err(declare_err(format!("declaring exchange {dlx}")))?;
        // The dead-letter queue is a classic queue on purpose: listing it takes messages with
        // basic.get and returns them by closing the channel. On a quorum queue every such
        // return would count as a delivery, and from RabbitMQ 4.0 (default delivery-limit 20)
        // enough listings would drop dead letters; a classic queue also puts them back in
        // their original order.
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
        ch.queue_declare(short(&dead)?, QueueDeclareOptions::durable(), dead_args)
            .await
            .map_err(declare_err(format!("declaring queue {dead}")))?;
        ch.queue_bind(short(&dead)?, short(&dlx)?, "".into(), QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(declare_err(format!("binding {dead} to {dlx}")))?;
        let notices = self.dead_letter_notice_queue();
        let mut notice_args = FieldTable::default();
        notice_args.insert("x-queue-type".into(), AMQPValue::LongString("classic".into()));
        ch.queue_declare(short(&notices)?, QueueDeclareOptions::durable(), notice_args)
            .await
            .map_err(declare_err(format!("declaring queue {notices}")))?;
        ch.queue_bind(short(&notices)?, short(&dlx)?, "".into(), QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(declare_err(format!("binding {notices} to {dlx}")))?;
        for class in all_classes() {
            let queue = self.shard_queue(class);
            ch.queue_declare(short(&queue)?, QueueDeclareOptions::durable(), self.shard_queue_arguments())
                .await
                .map_err(declare_err(format!("declaring queue {queue}")))?;
            ch.queue_bind(
                short(&queue)?,
                short(&exchange)?,
                short(&class.to_string())?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(declare_err(format!("binding {queue} to {exchange}")))?;
            info!(queue = %queue, delivery_limit = self.config.delivery_limit, "declared quorum queue");
        }
        close_channel(&ch).await;
        Ok(())
    }

    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<()> {
        let exchange = self.exchange();
        // One routing key per device class, not one string per message.
        let keys = all_classes().map(|c| (c, c.to_string()));
        let key_of = |class: DeviceClass| keys.iter().find(|(c, _)| *c == class).map_or("", |(_, k)| k.as_str());
        let items = messages
            .iter()
            .map(|m| Publish {
                exchange: &exchange,
                routing_key: key_of(m.class),
                message_id: Some(&m.message_id),
                body: &m.body,
                headers: &m.headers,
                extra_header: None,
            })
            .collect();
        self.publish_confirmed(items).await
    }

    async fn consume(&self, class: DeviceClass, consumer_tag: &str) -> Result<Box<dyn ShardConsumer>> {
        let queue = self.shard_queue(class);
        let ch = self.channel().await?;
        // Prefetch 1 per consumer (global = false): quorum queues reject global QoS, and a
        // larger prefetch would let a busy agent hoard shards that idle agents could run.
        ch.basic_qos(1, BasicQosOptions { global: false })
            .await
            .map_err(|e| self.lapin_error("setting prefetch 1", &e))?;
        let mut args = FieldTable::default();
        if let Some(timeout) = self.config.consumer_timeout {
            match self.server_version() {
                Some(v) if v.supports_consumer_timeout_argument() => {
                    let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
                    args.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(ms));
                }
                v => warn!(
                    server = %v.map_or_else(|| "unknown".to_owned(), |v| v.to_string()),
                    wanted = ?timeout,
                    "broker older than 3.12 (or unknown) ignores x-consumer-timeout: the broker-wide \
                     consumer_timeout applies (raise it in rabbitmq.conf, see ops/rabbitmq)"
                ),
            }
        }
        let consumer = ch
            .basic_consume(short(&queue)?, short(consumer_tag)?, BasicConsumeOptions::default(), args)
            .await
            .map_err(|e| self.lapin_error(&format!("consuming from {queue}"), &e))?;
        info!(queue = %queue, consumer = %consumer_tag, "consuming with prefetch 1");
        Ok(Box::new(AmqpConsumer {
            _channel: ch,
            consumer,
            queue,
            tag: consumer_tag.to_owned(),
            safe_url: self.safe_url.clone(),
            ended: false,
        }))
    }

    async fn dead_letter(&self, body: Vec<u8>, headers: BTreeMap<String, String>, reason: &str) -> Result<()> {
        let dlx = self.dead_letter_exchange();
        let item = Publish {
            exchange: &dlx,
            routing_key: "",
            // The agent passes the original message id as a header; keep it as the id.
            message_id: headers.get("message-id").map(String::as_str),
            body: &body,
            headers: &headers,
            extra_header: Some((REASON_HEADER, reason)),
        };
        self.publish_confirmed(vec![item]).await?;
        info!(reason = %reason, size = body.len(), "dead-lettered a message");
        Ok(())
    }

    fn max_message_bytes(&self) -> usize {
        self.config.max_message_bytes
    }
}

#[async_trait]
impl BrokerAdmin for AmqpBroker {
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let queue = self.dead_letter_queue();
        let ch = self.channel().await?;
        let mut out = Vec::new();
        // basic.get without auto-ack takes each message without removing it; closing the
        // channel afterwards hands every one of them back. The classic dead-letter queue
        // restores their original positions (marked redelivered). While a listing runs,
        // the messages it holds are invisible to a concurrent listing.
        while out.len() < limit {
            let got = match ch.basic_get(short(&queue)?, BasicGetOptions { no_ack: false }).await {
                Ok(got) => got,
                // Never declared: nothing was ever dead-lettered under this prefix.
                Err(e) if lapin_not_found(&e) => return Ok(Vec::new()),
                Err(e) => return Err(self.lapin_error(&format!("reading {queue}"), &e)),
            };
            let Some(message) = got else { break };
            out.push(to_dead_letter(&message.delivery));
        }
        close_channel(&ch).await;
        Ok(out)
    }

    async fn take_dead_letters(&self, message_id_prefix: &str) -> Result<Vec<DeadLetter>> {
        let queue = self.dead_letter_queue();
        let ch = self.channel().await?;
        let mut taken = Vec::new();
        // Same walk as `dead_letters`, but matching messages are acked (removed); the
        // others go back when the channel closes.
        loop {
            let got = ch
                .basic_get(short(&queue)?, BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| self.lapin_error(&format!("reading {queue}"), &e))?;
            let Some(message) = got else { break };
            let letter = to_dead_letter(&message.delivery);
            if letter.message_id.as_deref().is_some_and(|id| id.starts_with(message_id_prefix)) {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| self.lapin_error(&format!("removing a dead letter from {queue}"), &e))?;
                taken.push(letter);
            }
        }
        close_channel(&ch).await;
        Ok(taken)
    }

    async fn queue_depth(&self, class: DeviceClass) -> Result<u64> {
        self.message_count(&self.shard_queue(class)).await
    }

    async fn dead_letter_count(&self) -> Result<u64> {
        self.message_count(&self.dead_letter_queue()).await
    }

    async fn take_dead_letter_notices(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let queue = self.dead_letter_notice_queue();
        let ch = self.channel().await?;
        let mut taken = Vec::new();
        // Acked as they are read: a notice only prompts a state change that is safe to
        // make twice, and the dead letter itself stays in the dead-letter queue.
        while taken.len() < max {
            let got = match ch.basic_get(short(&queue)?, BasicGetOptions { no_ack: true }).await {
                Ok(got) => got,
                // Not declared yet (no agent has run under this prefix): no notices.
                Err(e) if lapin_not_found(&e) => return Ok(Vec::new()),
                Err(e) => return Err(self.lapin_error(&format!("reading {queue}"), &e)),
            };
            let Some(message) = got else { break };
            taken.push(to_dead_letter(&message.delivery));
        }
        close_channel(&ch).await;
        Ok(taken)
    }
}

impl AmqpBroker {
    /// Messages ready in `queue`; 0 for a queue never declared (a prefix no one used).
    async fn message_count(&self, queue: &str) -> Result<u64> {
        let ch = self.channel().await?;
        let declared = ch
            .queue_declare(
                short(queue)?,
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(q) => {
                close_channel(&ch).await;
                Ok(u64::from(q.message_count()))
            }
            // Never declared: no agent or submit ever used this prefix.
            Err(e) if lapin_not_found(&e) => Ok(0),
            Err(e) => Err(self.lapin_error(&format!("inspecting {queue}"), &e)),
        }
    }
}

/// Deliveries from one quorum queue on a channel of their own.
struct AmqpConsumer {
    // Keeps the channel open for as long as the consumer lives; dropping the consumer closes
    // it and the broker requeues whatever is still unacked.
    _channel: Channel,
    consumer: lapin::Consumer,
    queue: String,
    tag: String,
    safe_url: String,
    ended: bool,
}

#[async_trait]
impl ShardConsumer for AmqpConsumer {
    async fn next(&mut self) -> Option<Result<Delivery>> {
        if self.ended {
            return None;
        }
        match self.consumer.next().await {
            Some(Ok(d)) => {
                let headers = d.properties.headers().as_ref();
                let delivery_count = headers
                    .and_then(|h| h.inner().get(DELIVERY_COUNT_HEADER))
                    .and_then(int_value)
                    .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX));
                let message_id = d.properties.message_id().as_ref().map(|s| s.to_string());
                let acker = AmqpAcker {
                    acker: d.acker.clone(),
                    settled: AtomicBool::new(false),
                    safe_url: self.safe_url.clone(),
                    queue: self.queue.clone(),
                };
                Some(Ok(Delivery::new(
                    d.data,
                    string_headers(headers),
                    message_id,
                    d.redelivered,
                    delivery_count,
                    Box::new(acker),
                )))
            }
            Some(Err(e)) => {
                self.ended = true;
                warn!(queue = %self.queue, consumer = %self.tag, error = %e, "consumer failed");
                Some(Err(Error::Broker {
                    url: self.safe_url.clone(),
                    message: format!("consumer {} on {} stopped: {e}", self.tag, self.queue),
                    transient: true,
                }))
            }
            None => {
                self.ended = true;
                info!(queue = %self.queue, consumer = %self.tag, "consumer ended (cancelled or connection closed)");
                None
            }
        }
    }
}

/// Settles one delivery on its consumer's channel.
struct AmqpAcker {
    acker: lapin::Acker,
    settled: AtomicBool,
    safe_url: String,
    queue: String,
}

impl AmqpAcker {
    fn outcome(&self, what: &str, result: lapin::Result<bool>) -> Result<()> {
        let message = match result {
            Ok(true) => return Ok(()),
            // lapin answers false when the channel is gone: the broker has already put the
            // message back (or will), so the caller must not believe it was settled.
            Ok(false) => {
                format!("{what} on {}: the channel closed first; the broker redelivers the message", self.queue)
            }
            Err(e) => format!("{what} on {}: {e}", self.queue),
        };
        Err(Error::Broker { url: self.safe_url.clone(), message, transient: true })
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(&self) -> Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        self.outcome("ack", self.acker.ack(BasicAckOptions::default()).await)
    }

    async fn reject(&self, requeue: bool) -> Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        self.outcome("reject", self.acker.reject(BasicRejectOptions { requeue }).await)
    }

    async fn nack_requeue(&self) -> Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        // multiple = false: bulk nacks do not count toward the delivery limit on 4.3+, so a
        // client that bulk-nacks can loop a poison message forever.
        self.outcome("nack", self.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await)
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if self.settled.swap(true, Ordering::SeqCst) {
            return;
        }
        // With prefetch 1 an unsettled delivery blocks its consumer until the channel closes,
        // so hand it back now; like a lost agent this counts as a failed attempt.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let acker = self.acker.clone();
                let queue = self.queue.clone();
                handle.spawn(async move {
                    match acker.reject(BasicRejectOptions { requeue: true }).await {
                        Ok(_) => debug!(queue = %queue, "requeued a delivery dropped without settling"),
                        Err(e) => debug!(queue = %queue, error = %e, "could not requeue a dropped delivery"),
                    }
                });
            }
            Err(_) => {
                warn!(queue = %self.queue, "delivery dropped outside a runtime; it returns when its channel closes")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn short(s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        Error::invalid("AMQP name", format!("{} bytes exceed the 255-byte limit of AMQP short strings", s.len()))
    })
}

fn header_table(headers: &BTreeMap<String, String>, extra: Option<(&str, &str)>) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for (k, v) in headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra) {
        table.insert(short(k)?, AMQPValue::LongString(LongString::from(v)));
    }
    Ok(table)
}

/// Sets [`PUBLISHED_AT_HEADER`] to now (replacing the one a republished message carried).
fn stamped(mut table: FieldTable) -> FieldTable {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    table.insert(PUBLISHED_AT_HEADER.into(), AMQPValue::LongString(LongString::from(ms.to_string())));
    table
}

/// The string-valued headers of a message (trace context, run id, reason); broker-added
/// tables and numbers such as `x-death` or `x-delivery-count` are left out.
fn string_headers(table: Option<&FieldTable>) -> BTreeMap<String, String> {
    let Some(table) = table else { return BTreeMap::new() };
    table.inner().iter().filter_map(|(k, v)| Some((k.to_string(), value_string(v)?))).collect()
}

fn value_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn field_string(table: &FieldTable, key: &str) -> Option<String> {
    table.inner().get(key).and_then(value_string)
}

fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    })
}

/// Builds the listing entry of a message in the dead-letter queue.
fn to_dead_letter(d: &lapin::message::Delivery) -> DeadLetter {
    let table = d.properties.headers().as_ref();
    let get = |key: &str| table.and_then(|t| field_string(t, key));
    // The broker records why and from where in `x-death` (newest first) and, from 3.8, in
    // `x-first-death-*`; an agent's own dead letter carries our reason header instead.
    let first_death = table
        .and_then(|t| match t.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().first().cloned(),
            _ => None,
        })
        .and_then(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        });
    let death = |key: &str| first_death.as_ref().and_then(|t| field_string(t, key));
    let broker_reason = get("x-first-death-reason").or_else(|| death("reason"));
    let reason = match (get(REASON_HEADER), broker_reason) {
        (Some(ours), _) => ours,
        (None, Some(code)) => describe_death_reason(&code),
        (None, None) => "unknown (no reason header)".to_owned(),
    };
    DeadLetter {
        message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
        reason,
        queue: get("x-first-death-queue").or_else(|| death("queue")),
        size: d.data.len(),
        headers: string_headers(table),
    }
}

fn describe_death_reason(code: &str) -> String {
    let what = match code {
        "delivery_limit" => "delivery limit reached",
        "rejected" => "rejected without requeue",
        "expired" => "message TTL expired",
        "maxlen" => "queue length limit",
        _ => return code.to_owned(),
    };
    format!("{what} ({code})")
}

/// Whether retrying (after reconnecting) can help.
/// The broker's 404 NOT_FOUND: a queue that was never declared (a prefix no one used).
fn lapin_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

fn lapin_transient(e: &lapin::Error) -> bool {
    use lapin::ErrorKind as K;
    match e.kind() {
        K::IOError(_)
        | K::InvalidChannel(_)
        | K::InvalidChannelState(..)
        | K::InvalidConnectionState(_)
        | K::ChannelsLimitReached
        | K::MissingHeartbeatError => true,
        K::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => matches!(soft, AMQPSoftError::RESOURCELOCKED),
            AMQPErrorKind::Hard(hard) => matches!(
                hard,
                AMQPHardError::CONNECTIONFORCED | AMQPHardError::RESOURCEERROR | AMQPHardError::INTERNALERROR
            ),
        },
        _ => false,
    }
}

async fn close_channel(ch: &Channel) {
    if ch.status().connected()
        && let Err(e) = ch.close(200, "OK".into()).await
    {
        debug!(error = %e, "closing a channel failed");
    }
}

/// Reads the `server-properties` table of `connection.start` without logging in: send the
/// AMQP 0-9-1 protocol header, read one method frame, hang up.
async fn probe_server_properties(
    uri: &AMQPUri,
    tls: &OwnedTLSConfig,
    timeout: Duration,
) -> std::result::Result<FieldTable, String> {
    use futures_util::io::{AsyncReadExt, AsyncWriteExt};
    use lapin::protocol::{AMQPClass, connection};
    use lapin::tcp::AMQPUriTcpExt;

    const FRAME_METHOD: u8 = 1;
    const FRAME_END: u8 = 0xCE;
    // connection.start is a few hundred bytes; anything far larger is not a broker.
    const MAX_START_FRAME: usize = 64 * 1024;

    let probe = async {
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let mut stream =
            uri.connect_with_config_async(tls.as_ref(), &runtime).await.map_err(|e| format!("connect: {e}"))?;
        stream.write_all(b"AMQP\x00\x00\x09\x01").await.map_err(|e| format!("write: {e}"))?;
        stream.flush().await.map_err(|e| format!("flush: {e}"))?;
        let mut header = [0u8; 7];
        stream.read_exact(&mut header).await.map_err(|e| format!("read: {e}"))?;
        let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
        if header[0] != FRAME_METHOD || size > MAX_START_FRAME {
            return Err(format!("unexpected first frame (type {}, {size} bytes)", header[0]));
        }
        let mut payload = vec![0u8; size + 1];
        stream.read_exact(&mut payload).await.map_err(|e| format!("read: {e}"))?;
        if payload[size] != FRAME_END {
            return Err("malformed frame".to_owned());
        }
        let (_, class) = lapin::protocol::parse_class(&payload[..size]).map_err(|e| format!("parse: {e}"))?;
        match class {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => Ok(start.server_properties),
            other => Err(format!("expected connection.start, got {other:?}")),
        }
    };
    tokio::time::timeout(timeout, probe).await.map_err(|_| format!("no answer within {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_versions() {
        let v = ServerVersion::parse("RabbitMQ", "3.10.8").unwrap();
        assert_eq!(v.numbers, (3, 10, 8));
        assert!(!v.supports_consumer_timeout_argument());
        assert!(ServerVersion::parse("RabbitMQ", "3.12.0").unwrap().supports_consumer_timeout_argument());
        let beta = ServerVersion::parse("RabbitMQ", "4.0.0-beta.5").unwrap();
        assert_eq!(beta.numbers, (4, 0, 0));
        assert!(beta.supports_consumer_timeout_argument());
        assert_eq!(ServerVersion::parse("RabbitMQ", "3.13").unwrap().numbers, (3, 13, 0));
        // Another AMQP 0-9-1 server with a high version number is not RabbitMQ.
        assert!(!ServerVersion::parse("LavinMQ", "4.0.0").unwrap().supports_consumer_timeout_argument());
        assert!(ServerVersion::parse("RabbitMQ", "").is_none());
        assert!(ServerVersion::parse("RabbitMQ", "x.y").is_none());
    }

    #[test]
    fn config_debug_hides_the_password() {
        let cfg = AmqpConfig::new("amqp://guest:hunter2@broker:5672/%2f");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("guest:***@broker"), "{shown}");
    }

    #[test]
    fn string_headers_skip_non_strings() {
        let mut t = FieldTable::default();
        t.insert("traceparent".into(), AMQPValue::LongString("00-abc-01".into()));
        t.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        t.insert("s".into(), AMQPValue::ShortString("short".into()));
        let h = string_headers(Some(&t));
        assert_eq!(h.len(), 2);
        assert_eq!(h["traceparent"], "00-abc-01");
        assert_eq!(h["s"], "short");
        assert_eq!(t.inner().get("x-delivery-count").and_then(int_value), Some(2));
    }

    #[test]
    fn long_names_are_errors_not_panics() {
        assert!(short(&"x".repeat(256)).is_err());
        assert!(short(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn ip_hosts_survive_uri_parsing() {
        let uri: AMQPUri = "amqp://guest:guest@10.1.2.3:5673/%2f".parse().unwrap();
        assert_eq!(uri.authority.host, "10.1.2.3");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.vhost, "/");
    }

    #[tokio::test]
    async fn bad_urls_are_permanent_errors_without_the_password() {
        for url in ["http://guest:hunter2@host/", "amqp://guest:hunter2@[::1/"] {
            let err = AmqpBroker::connect(AmqpConfig::new(url)).await.unwrap_err();
            assert!(!err.is_transient(), "{url}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }
}
