//! `qagent` binary.
fn main() {}
