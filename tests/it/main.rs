//! regcache's integration tests: one binary that starts the real `regcache`
//! executable against in-process fake upstreams and real third-party software.
//! Add new test modules here, one line each with a comment.

mod support;
