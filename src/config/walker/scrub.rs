//! `storage.scrub_interval` (a duration, or `"off"`) and `storage.scrub_rate`
//! (a size per second), with their defaults when absent. It never looks at
//! any other key.

use super::*;

impl Walker {
    pub(in crate::config) fn scrub(&mut self, storage: &mut Table) -> Option<ScrubConfig> {
        let d = ScrubConfig::default();
        let off = matches!(storage.get("scrub_interval"), Some(Value::String(s)) if s == "off");
        let interval = if off {
            storage.remove("scrub_interval");
            Some(None)
        } else {
            let every = self.duration(
                storage,
                "storage",
                "scrub_interval",
                d.interval.unwrap_or_default(),
            );
            if every.is_some_and(|e| e.is_zero()) {
                self.error(
                    "storage.scrub_interval",
                    "must be longer than 0s (or \"off\")",
                );
            }
            every.map(Some)
        };
        let rate = self.size(storage, "storage", "scrub_rate", d.rate);
        if rate == Some(0) {
            self.error("storage.scrub_rate", "must be more than 0 bytes");
        }
        Some(ScrubConfig {
            interval: interval?,
            rate: rate?,
        })
    }
}
