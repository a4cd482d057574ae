//! Integration tests against real RabbitMQ and Redis (see util.rs for where they are).

// Harness: service URLs, unique prefixes, self-cleaning fixtures, a private redis-server.
mod util;

// AmqpBroker: confirms, prefetch 1, redelivery, delivery limit, dead letters, connect errors.
mod amqp;

// RedisStore: exactly-once results, terminal states, streams, heartbeats, retries across a restart.
mod redis;
