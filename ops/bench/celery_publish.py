#!/usr/bin/env python3
"""The Celery peer of `qsched submit`'s publish throughput (ops/bench/publish_throughput.sh).

Publishes --count tasks with `apply_async` into a durable quorum queue `<prefix>.q` (direct
exchange `<prefix>.x`, routing key `cpu`) with publisher confirms on
(`broker_transport_options={'confirm_publish': True}`: py-amqp waits for each message's
confirm before `apply_async` returns) and persistent delivery (Celery's default). Each task
carries one string argument sized so that the message body is --size bytes. No worker runs:
what is timed is the first `apply_async` to the last one's return. Prints one JSON line and
deletes the queue and exchange unless --keep.

    python3 ops/bench/celery_publish.py --prefix bench-1 --count 5000 --size 1500

Needs `pip install celery` (the benchmark script installs it into a venv of its own).
"""

import argparse
import json
import os
import sys
import time

from celery import Celery
from kombu import Exchange, Queue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("AMQP_ADDR", "amqp://guest:guest@127.0.0.1:5672//"))
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1500, help="message body bytes")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    started = time.perf_counter()

    name = f"{args.prefix}.q"
    exchange = Exchange(f"{args.prefix}.x", type="direct", durable=True)
    queue = Queue(name, exchange, routing_key="cpu", durable=True, queue_arguments={"x-queue-type": "quorum"})
    app = Celery("qsched_bench", broker=args.url)
    app.conf.update(
        broker_transport_options={"confirm_publish": True},
        task_serializer="json",
        task_queues=[queue],
        task_default_queue=name,
        task_default_exchange=exchange.name,
        task_default_routing_key="cpu",
        task_create_missing_queues=False,
        broker_connection_retry_on_startup=False,
    )

    @app.task(name="qsched_bench.noop")
    def noop(payload):  # never runs: no worker consumes the queue
        return len(payload)

    # Body (protocol 2, JSON) = [[payload], {}, {embed}]: size the payload to hit --size.
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    overhead = len(json.dumps([[""], {}, embed]))
    payload = "x" * max(0, args.size - overhead)
    body_bytes = len(json.dumps([[payload], {}, embed]))

    with app.connection_for_write() as conn:
        queue(conn.default_channel).declare()
    # One warm-up publish opens the producer pool's connection before the clock starts.
    noop.apply_async(args=[payload], queue=queue)
    t0 = time.perf_counter()
    for _ in range(args.count):
        noop.apply_async(args=[payload], queue=queue)
    seconds = time.perf_counter() - t0

    with app.connection_for_write() as conn:
        ch = conn.default_channel
        depth = ch.queue_declare(queue=name, passive=True).message_count
        if not args.keep:
            ch.queue_delete(queue=name)
            ch.exchange_delete(exchange=exchange.name)
    if depth != args.count + 1:
        print(f"celery_publish: {depth} messages in {name}, expected {args.count + 1}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "peer": "celery",
                "celery": __import__("celery").__version__,
                "messages": args.count,
                "body_bytes": body_bytes,
                "publish_seconds": seconds,
                "messages_per_second": args.count / seconds,
                "wall_seconds": time.perf_counter() - started,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
