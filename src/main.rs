//! The `regcache` binary: command line, logging set-up and the process lifetime.
fn main() {}
