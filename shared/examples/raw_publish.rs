//! The raw-lapin peer of `qsched submit`'s publish throughput (`ops/bench/publish_throughput.sh`,
//! BENCHMARKS.md §6): the same broker, the same message size and the same kind of queue,
//! with none of qsched's work around the publish (no spec, no Redis, no tracing).
//!
//! It declares a durable direct exchange `<prefix>.x` and a durable quorum queue
//! `<prefix>.q` bound to it with routing key `cpu`, with the arguments qsched gives its
//! shard queues (`x-delivery-limit`, a dead-letter exchange `<prefix>.dlx`, at-least-once
//! dead-lettering, `reject-publish` overflow), enables publisher confirms and publishes
//! `--count` persistent, mandatory messages with a body of `--size` bytes and the
//! properties and headers of a qsched shard message (content type, app id, timestamp, a
//! message id, a `traceparent` and a run-id header of the same lengths), keeping at most
//! `--window` unconfirmed (0: no bound; every confirm is awaited at the end). With
//! `--channels C` (default 1) message `i` goes out on channel `i % C`, all channels at
//! once, each with its own window. Every confirm must be an ack. It prints one JSON line and deletes what it declared unless `--keep`
//! is given. `publish_seconds` runs from the first publish to the last confirm.
//!
//! `--purge-queue Q` / `--delete-queue Q` / `--delete-exchange X` (repeatable) only purge
//! or delete those (deleting one that does not exist is not an error), for a benchmark's
//! clean-up of another client's topology.
//!
//! `--probe-queue QUEUE` instead prints the body size of the first message in `QUEUE`
//! (taken with `basic.get` and handed back by closing the channel), so that a benchmark
//! can give this peer the size of a real shard message.
//!
//! ```sh
//! cargo run --release -p shared --example raw_publish -- --prefix bench-1 --count 20000 --size 1500
//! ```
//!
//! A benchmark tool, not a template: it exits on the first error.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind, PublisherConfirm};

const USAGE: &str = "usage: raw_publish --prefix P [--count N] [--size BYTES] [--window W] [--channels C] [--url URL] \
                     [--keep]\n       \
                     raw_publish --probe-queue QUEUE [--url URL]\n       \
                     raw_publish [--purge-queue Q]... [--delete-queue Q]... [--delete-exchange X]... [--url URL]";

/// Stand-ins of the same length as a qsched run id and trace context.
const RUN_ID: &str = "r-20261130-120000-abcdef";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[derive(Debug)]
struct Args {
    url: String,
    prefix: Option<String>,
    count: usize,
    size: usize,
    window: usize,
    channels: usize,
    keep: bool,
    probe_queue: Option<String>,
    delete_queues: Vec<String>,
    delete_exchanges: Vec<String>,
    purge_queues: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        url: std::env::var("AMQP_ADDR").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        prefix: None,
        count: 20_000,
        size: 1500,
        window: 0,
        channels: 1,
        keep: false,
        probe_queue: None,
        delete_queues: Vec::new(),
        delete_exchanges: Vec::new(),
        purge_queues: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--prefix" => args.prefix = Some(value()?),
            "--count" => args.count = value()?.parse().context("--count")?,
            "--size" => args.size = value()?.parse().context("--size")?,
            "--window" => args.window = value()?.parse().context("--window")?,
            "--channels" => args.channels = value()?.parse().context("--channels")?,
            "--probe-queue" => args.probe_queue = Some(value()?),
            "--delete-queue" => args.delete_queues.push(value()?),
            "--delete-exchange" => args.delete_exchanges.push(value()?),
            "--purge-queue" => args.purge_queues.push(value()?),
            "--keep" => args.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

/// Publishes messages `ids` on `ch` (in confirm mode), keeping at most `window` unconfirmed
/// (0: no bound), and returns how many were not acked.
async fn publish_share(
    ch: &Channel,
    exchange: &str,
    ids: impl Iterator<Item = usize>,
    body: &[u8],
    window: usize,
) -> Result<usize> {
    let mut pending: VecDeque<PublisherConfirm> = VecDeque::new();
    let mut nacked = 0usize;
    let mut check = |c: Confirmation| {
        if !matches!(c, Confirmation::Ack(None)) {
            nacked += 1;
        }
    };
    for i in ids {
        if window > 0
            && pending.len() >= window
            && let Some(confirm) = pending.pop_front()
        {
            check(confirm.await?);
        }
        // The properties and header sizes of a qsched shard message (`<run>:<shard>` id, a
        // W3C traceparent, the run id), so that only the body generation differs.
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), AMQPValue::LongString(TRACEPARENT.into()));
        headers.insert("x-qsched-run".into(), AMQPValue::LongString(RUN_ID.into()));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/msgpack".into())
            .with_app_id("raw_publish".into())
            .with_timestamp(i as u64)
            .with_message_id(format!("{RUN_ID}:{i:016x}").into())
            .with_headers(headers);
        let confirm = ch
            .basic_publish(
                exchange.into(),
                "cpu".into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                props,
            )
            .await?;
        pending.push_back(confirm);
    }
    while let Some(confirm) = pending.pop_front() {
        check(confirm.await?);
    }
    Ok(nacked)
}

#[tokio::main]
async fn main() -> Result<()> {
    let started = Instant::now();
    let args = parse_args()?;
    let conn = Connection::connect(&args.url, ConnectionProperties::default()).await.context("connecting")?;
    if let Some(queue) = &args.probe_queue {
        let ch = conn.create_channel().await?;
        let got = ch.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await?;
        let Some(message) = got else { bail!("{queue} is empty") };
        println!("{}", serde_json::json!({ "queue": queue, "body_bytes": message.delivery.data.len() }));
        // Closing the channel hands the message back.
        ch.close(200, "OK".into()).await?;
        conn.close(200, "OK".into()).await?;
        return Ok(());
    }
    if !args.delete_queues.is_empty() || !args.delete_exchanges.is_empty() || !args.purge_queues.is_empty() {
        let ch = conn.create_channel().await?;
        let mut removed = 0;
        for q in &args.purge_queues {
            removed += ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()).await?;
        }
        for q in &args.delete_queues {
            removed += ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
        }
        for x in &args.delete_exchanges {
            ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await?;
        }
        println!(
            "{}",
            serde_json::json!({
                "deleted_queues": args.delete_queues,
                "deleted_exchanges": args.delete_exchanges,
                "purged_queues": args.purge_queues,
                "messages_removed": removed,
            })
        );
        ch.close(200, "OK".into()).await?;
        conn.close(200, "OK".into()).await?;
        return Ok(());
    }
    let prefix = args.prefix.clone().with_context(|| format!("--prefix is required\n{USAGE}"))?;
    if args.channels == 0 {
        bail!("--channels must be at least 1");
    }
    let (exchange, queue, dlx) = (format!("{prefix}.x"), format!("{prefix}.q"), format!("{prefix}.dlx"));

    let ch = conn.create_channel().await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch.exchange_declare(exchange.as_str().into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    ch.exchange_declare(dlx.as_str().into(), ExchangeKind::Fanout, durable, FieldTable::default()).await?;
    // The arguments qsched's shard queues have (shared/src/amqp.rs, `shard_queue_arguments`).
    let mut queue_args = FieldTable::default();
    queue_args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    queue_args.insert("x-delivery-limit".into(), AMQPValue::LongInt(2));
    queue_args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(dlx.as_str().into()));
    queue_args.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
    queue_args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), queue_args).await?;
    ch.queue_bind(
        queue.as_str().into(),
        exchange.as_str().into(),
        "cpu".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    // Not all one byte value, in case anything on the way compresses.
    let body: Vec<u8> = (0..args.size).map(|i| (i * 31 % 251) as u8).collect();
    // Channels opened and in confirm mode before the clock starts.
    let mut channels = Vec::new();
    for _ in 0..args.channels {
        let c = conn.create_channel().await?;
        c.confirm_select(ConfirmSelectOptions::default()).await?;
        channels.push(c);
    }
    let t0 = Instant::now();
    // Message i goes to channel i % channels; every channel publishes its share at once.
    let shares = channels.iter().enumerate().map(|(k, c)| {
        let ids = (k..args.count).step_by(args.channels);
        publish_share(c, &exchange, ids, &body, args.window)
    });
    let nacked: usize = futures_util::future::try_join_all(shares).await?.into_iter().sum();
    let seconds = t0.elapsed().as_secs_f64();
    if nacked > 0 {
        bail!("{nacked} of {} messages were not confirmed", args.count);
    }
    for c in &channels {
        c.close(200, "OK".into()).await?;
    }
    let rate = args.count as f64 / seconds;
    if !args.keep {
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
        ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await?;
        ch.exchange_delete(dlx.as_str().into(), ExchangeDeleteOptions::default()).await?;
    }
    ch.close(200, "OK".into()).await?;
    conn.close(200, "OK".into()).await?;
    println!(
        "{}",
        serde_json::json!({
            "peer": "raw-lapin",
            "messages": args.count,
            "body_bytes": args.size,
            "window": args.window,
            "channels": args.channels,
            "publish_seconds": seconds,
            "messages_per_second": rate,
            "wall_seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
