//! `[server]`'s connection limits: `header_read_timeout`, `keepalive_timeout`,
//! `max_connections`, `max_requests_per_connection`, `shutdown_timeout`, each
//! with its default when absent. It never looks at any other key.

use super::*;

impl Walker {
    pub(in crate::config) fn connection_limits(
        &mut self,
        server: &mut Table,
    ) -> Option<ConnectionLimits> {
        let d = ConnectionLimits::default();
        let header_read_timeout = self.duration(
            server,
            "server",
            "header_read_timeout",
            d.header_read_timeout,
        );
        let keepalive_timeout =
            self.duration(server, "server", "keepalive_timeout", d.keepalive_timeout);
        let shutdown_timeout =
            self.duration(server, "server", "shutdown_timeout", d.shutdown_timeout);
        let max_connections =
            self.positive_count(server, "max_connections", d.max_connections as u64);
        let max_requests = self.positive_count(
            server,
            "max_requests_per_connection",
            d.max_requests_per_connection,
        );
        for (key, value) in [
            ("header_read_timeout", header_read_timeout),
            ("keepalive_timeout", keepalive_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                self.error(&format!("server.{key}"), "must be longer than 0s");
            }
        }
        Some(ConnectionLimits {
            header_read_timeout: header_read_timeout?,
            keepalive_timeout: keepalive_timeout?,
            max_connections: usize::try_from(max_connections?).ok()?,
            max_requests_per_connection: max_requests?,
            shutdown_timeout: shutdown_timeout?,
        })
    }

    /// A whole number of at least 1 (and below 2^31, a semaphore's limit).
    fn positive_count(&mut self, server: &mut Table, key: &str, default: u64) -> Option<u64> {
        let value = match server.remove(key) {
            None => return Some(default),
            Some(Value::Integer(n)) => n,
            Some(other) => {
                self.error(
                    &format!("server.{key}"),
                    format!("must be a whole number, found {}", other.type_str()),
                );
                return None;
            }
        };
        if (1..(1 << 31)).contains(&value) {
            Some(value as u64)
        } else {
            self.error(
                &format!("server.{key}"),
                format!("{value} is not at least 1"),
            );
            None
        }
    }
}
