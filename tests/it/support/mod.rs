//! Test support shared by every integration test: the real `regcache` binary
//! started on a loopback port, and the fake upstreams it is pointed at. Nothing
//! here talks to anything but 127.0.0.1, and everything it starts is stopped when
//! its handle drops, on success and on failure.

pub mod regcache;
