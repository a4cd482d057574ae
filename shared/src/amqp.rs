//! RabbitMQ broker (pending).
