//! Integration tests against real RabbitMQ and Redis (see util.rs for where they are).

// Harness: service URLs, unique prefixes, self-cleaning fixtures, a private redis-server.
mod util;

// Harness for the real binaries: qagent/qsched processes, the data directory.
mod procs;

// AmqpBroker: confirms, prefetch 1, redelivery, delivery limit, dead letters, connect errors.
mod amqp;

// RedisStore: exactly-once results, terminal states, streams, heartbeats, retries across a restart.
mod redis;

// qsched and qagent refuse bad input with clear errors and enqueue nothing.
mod cli;

// Simulated agents (the real consume loop, a no-op executor): every shard handled once.
mod sim;

// Two qagent processes finish every shard exactly once, even when one is killed mid-shard.
mod fleet;

// The hub client against a local hub: the cache layout, resumed and verified downloads,
// offline mode, and `qsched data fetch` files that the loaders read as the originals.
mod hub;

// rediss:// and amqps:// with a private CA, from submit to results.
mod tls;

// One trace id from submit to the agent's spans.
mod trace;

// qagent --metrics-listen, scraped by a real Prometheus and queried back.
mod metrics;

// A headless Chromium over the DevTools protocol (for the dashboard test).
mod browser;

// `qsched dashboard` in a real browser with a run in flight and a failed shard.
mod dashboard;

// Hostile messages and service outages: nothing lost, nothing outside the roots touched.
mod chaos;

// The long chaos suite (ignored; ops/chaos.sh runs it).
mod chaos_long;
