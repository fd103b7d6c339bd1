//! What `prefetch`, `export` and `import` show while they work. On a terminal
//! (stderr): one `indicatif` bar per image in flight and a total bar with
//! bytes, rate and ETA, finished images printed above them. Otherwise: one
//! line per finished image on the command's output, nothing else, so logs stay
//! readable. Display only.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The display for one run.
#[derive(Debug)]
pub struct Progress {
    /// `None` when not on a terminal: lines instead of bars.
    multi: Option<MultiProgress>,
    total: ProgressBar,
    images: u64,
    done: Mutex<u64>,
}

const IMAGE_TEMPLATE: &str =
    "{prefix:.bold} {wide_bar:.cyan/blue} {binary_bytes:>10}/{binary_total_bytes:<10} {msg}";
const TOTAL_TEMPLATE: &str = "{spinner:.green} total {msg} [{elapsed_precise}] {wide_bar:.green} \
     {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}";

impl Progress {
    /// Bars when `bars` (stderr is a terminal), lines otherwise.
    pub fn new(images: usize, bars: bool) -> Self {
        let images = images as u64;
        if !bars {
            return Self {
                multi: None,
                total: ProgressBar::hidden(),
                images,
                done: Mutex::new(0),
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let total = multi.add(ProgressBar::new(0));
        total.set_style(ProgressStyle::with_template(TOTAL_TEMPLATE).expect("valid template"));
        if images > 0 {
            total.set_message(format!("0/{images} images (manifests)"));
        }
        total.enable_steady_tick(Duration::from_millis(100));
        Self {
            multi: Some(multi),
            total,
            images,
            done: Mutex::new(0),
        }
    }

    /// An image's blobs were resolved: `bytes` more for the total.
    pub fn add_total(&self, bytes: u64) {
        self.total.inc_length(bytes);
    }

    /// Manifests are resolved, blobs start: the rate and ETA count from now.
    pub fn start_blobs(&self) {
        self.total.reset_eta();
        if self.images > 0 {
            self.total.set_message(format!("0/{} images", self.images));
        }
    }

    /// A bar for an image starting now (hidden without a terminal).
    pub fn image(&self, name: &str) -> ImageBar {
        let bar = match &self.multi {
            Some(multi) => {
                let bar = multi.insert_before(&self.total, ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template(IMAGE_TEMPLATE).expect("valid template"),
                );
                bar.set_prefix(shorten(name, 48));
                bar.set_message("manifests");
                bar
            }
            None => ProgressBar::hidden(),
        };
        ImageBar {
            bar,
            total: self.total.clone(),
        }
    }

    /// Records a finished image: its bar goes, `line` is printed.
    pub fn finished(&self, bar: ImageBar, line: &str) {
        let done = {
            let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
            *done += 1;
            *done
        };
        match &self.multi {
            Some(multi) => {
                bar.bar.finish_and_clear();
                multi.remove(&bar.bar);
                let _ = multi.println(line);
                self.total
                    .set_message(format!("{done}/{} images", self.images));
            }
            None => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        }
    }

    /// A line above the bars, or on `out` without them.
    pub fn println(&self, out: &mut dyn Write, line: &str) -> std::io::Result<()> {
        match &self.multi {
            Some(multi) => multi.println(line),
            None => writeln!(out, "{line}"),
        }
    }

    /// Like [`Self::finished`], but the line goes to `out` without bars.
    pub fn finished_to(
        &self,
        bar: ImageBar,
        out: &mut dyn Write,
        line: &str,
    ) -> std::io::Result<()> {
        if self.multi.is_none() {
            return writeln!(out, "{line}");
        }
        self.finished(bar, line);
        Ok(())
    }

    /// Takes the bars off the screen before the summary is printed.
    pub fn clear(&self) {
        self.total.finish_and_clear();
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }
}

/// One image's bar; its bytes also count toward the total.
#[derive(Debug)]
pub struct ImageBar {
    bar: ProgressBar,
    total: ProgressBar,
}

impl ImageBar {
    /// The image's blobs: `bytes` to fetch (already counted in the total).
    pub fn set_length(&self, bytes: u64, blobs: usize) {
        self.bar.set_length(bytes);
        if blobs > 0 {
            self.bar.set_message(format!("{blobs} blobs"));
        }
    }

    pub fn inc(&self, bytes: u64) {
        self.bar.inc(bytes);
        self.total.inc(bytes);
    }
}

/// `name` cut to `max` characters, keeping its end (the tag).
fn shorten(name: &str, max: usize) -> String {
    let count = name.chars().count();
    if count <= max {
        return name.to_owned();
    }
    let tail: String = name.chars().skip(count - (max - 1)).collect();
    format!("…{tail}")
}
