//! qagent: a device-pinned consumer that trains and evaluates benchmark shards with libtorch.
