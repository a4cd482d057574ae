//! The Redis key schema, in one place.
//!
//! Every key starts with a configurable prefix (default `qsched`; tests use a unique one).
//! Keys of one run share the hash tag `{run:<id>}`, so a Redis Cluster keeps a run's keys
//! on one slot and multi-key scripts work.

/// Builds every Redis key qsched uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new("qsched")
    }
}

impl Keys {
    /// Keys under `prefix` (no trailing colon).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys { prefix: prefix.into() }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn run(&self, run: &str, rest: &str) -> String {
        format!("{}:{{run:{run}}}:{rest}", self.prefix)
    }

    /// Sorted set of run ids scored by creation time.
    pub fn runs(&self) -> String {
        format!("{}:runs", self.prefix)
    }

    /// String: the run record (JSON).
    pub fn run_record(&self, run: &str) -> String {
        self.run(run, "record")
    }

    /// Hash: shard id → state name.
    pub fn shard_states(&self, run: &str) -> String {
        self.run(run, "states")
    }

    /// Hash: shard id → delivery attempts started.
    pub fn shard_attempts(&self, run: &str) -> String {
        self.run(run, "attempts")
    }

    /// Hash: `<shard id>/<attempt>` → JSON [`crate::store::AttemptError`] of a retried attempt.
    pub fn shard_attempt_errors(&self, run: &str) -> String {
        self.run(run, "attempt_errors")
    }

    /// Hash: shard id → JSON progress `{step, total_steps, agent, at}`.
    pub fn shard_progress(&self, run: &str) -> String {
        self.run(run, "progress")
    }

    /// String: the final result of a shard (JSON), written once with `SET NX`.
    pub fn result(&self, run: &str, shard: &str) -> String {
        self.run(run, &format!("result:{shard}"))
    }

    /// Stream: a shard's metric points.
    pub fn metrics(&self, run: &str, shard: &str) -> String {
        self.run(run, &format!("metrics:{shard}"))
    }

    /// String: present when the run is cancelled.
    pub fn cancel(&self, run: &str) -> String {
        self.run(run, "cancel")
    }

    /// Sorted set of agent ids scored by last heartbeat.
    pub fn agents(&self) -> String {
        format!("{}:agents", self.prefix)
    }

    /// String with TTL: an agent's latest heartbeat (JSON).
    pub fn agent(&self, agent: &str) -> String {
        format!("{}:agent:{agent}", self.prefix)
    }

    /// List: dead-lettered messages recorded by agents (JSON), newest first.
    pub fn dead_letters(&self) -> String {
        format!("{}:dead-letters", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_share_a_hash_tag() {
        let k = Keys::new("t1");
        assert_eq!(k.run_record("r1"), "t1:{run:r1}:record");
        assert_eq!(k.result("r1", "s1"), "t1:{run:r1}:result:s1");
        assert_eq!(k.metrics("r1", "s1"), "t1:{run:r1}:metrics:s1");
        assert_eq!(k.shard_states("r1"), "t1:{run:r1}:states");
        assert_eq!(k.agent("h:cpu:1"), "t1:agent:h:cpu:1");
        assert_eq!(Keys::default().runs(), "qsched:runs");
    }
}
