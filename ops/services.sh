#!/usr/bin/env bash
# Make sure the RabbitMQ and Redis the tests use are up on 127.0.0.1 (5672, 6379),
# starting them the way the CI machine does if they are not.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port <port> <name> <seconds>
  local i
  for ((i = 0; i < $3; i++)); do
    port_open "$1" && return 0
    sleep 1
  done
  echo "services: $2 did not come up on 127.0.0.1:$1 within $3 s" >&2
  return 1
}

if ! port_open 6379; then
  echo "services: starting redis-server" >&2
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
if ! port_open 5672; then
  echo "services: starting rabbitmq-server" >&2
  rabbitmq-server -detached
fi
wait_port 6379 redis 30
wait_port 5672 rabbitmq 180
echo "services: redis 127.0.0.1:6379 and rabbitmq 127.0.0.1:5672 are up" >&2
