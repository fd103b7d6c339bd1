//! [`Budget`]: `storage.max_size` and its watermarks, as configured (fractions
//! of `max_size`) and in bytes. A plain value; it never reads usage or evicts
//! (that is the `Evictor`'s job).

/// The disk budget: never more than `max_size` bytes committed or reserved;
/// past `high()` bytes, evict down to `low()`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    max_size: u64,
    high_watermark: f64,
    low_watermark: f64,
}

impl Budget {
    /// Watermarks are fractions of `max_size` (`0 < low <= high <= 1`, checked by
    /// `config`).
    pub fn new(max_size: u64, high_watermark: f64, low_watermark: f64) -> Self {
        Self {
            max_size,
            high_watermark,
            low_watermark,
        }
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Past this many committed bytes, evict...
    pub fn high(&self) -> u64 {
        self.bytes(self.high_watermark)
    }

    /// ...down to this many.
    pub fn low(&self) -> u64 {
        self.bytes(self.low_watermark)
    }

    pub fn high_watermark(&self) -> f64 {
        self.high_watermark
    }

    pub fn low_watermark(&self) -> f64 {
        self.low_watermark
    }

    fn bytes(&self, fraction: f64) -> u64 {
        ((self.max_size as f64 * fraction) as u64).min(self.max_size)
    }
}
