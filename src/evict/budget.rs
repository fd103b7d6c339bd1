//! [`Budget`]: `storage.max_size` and its watermarks in bytes. Plain numbers;
//! it never reads usage or evicts (that is the `Evictor`'s job).

/// The disk budget in bytes: never more than `max_size` committed or reserved;
/// past `high`, evict down to `low`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub max_size: u64,
    pub high: u64,
    pub low: u64,
}

impl Budget {
    /// Watermarks are fractions of `max_size` (`0 < low <= high <= 1`, checked by
    /// `config`).
    pub fn new(max_size: u64, high_watermark: f64, low_watermark: f64) -> Self {
        let of = |f: f64| ((max_size as f64 * f) as u64).min(max_size);
        Self {
            max_size,
            high: of(high_watermark),
            low: of(low_watermark),
        }
    }
}
