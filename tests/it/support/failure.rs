//! What a failed test leaves behind for the person reading CI's output: each
//! server's log written whole to a file under `CARGO_TARGET_TMPDIR`, only its
//! last lines printed, and the test's panic message printed again after them.
//!
//! CI shows the tail of a failed test's output. A server's log dumped in full
//! when its handle drops (after the panic message) used to push the message
//! out of that tail; here the message is always the last thing printed.
//! Nothing here decides whether a test passes.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Lines of a server's log printed to stderr; the rest is in the file.
const TAIL_LINES: usize = 12;
/// Lines of a long panic message repeated after a log: its first lines
/// (where it failed) and its last (where a command's stderr ends).
const MESSAGE_HEAD: usize = 5;
const MESSAGE_TAIL: usize = 15;

thread_local! {
    /// The message of the panic this thread is unwinding from, if any.
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Remembers each panic's message for [`report`]; the default hook still
/// prints it as before. Called by every server handle when it starts.
pub fn remember_panic_messages() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{location}: {message}")));
            default(info);
        }));
    });
}

/// On a failing test, writes `log` whole to a file and prints its last lines,
/// then the test's panic message again. `what` names the server
/// (`"regcache 127.0.0.1:4000"`); `extra` is printed into the file only
/// (e.g. a generated config).
pub fn report(what: &str, log: &str, extra: &str) {
    let path = log_path(what);
    let written = std::fs::write(&path, format!("{log}\n{extra}")).is_ok();
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    eprintln!(
        "---- {what}: last {} of {} log lines{} ----",
        tail.len(),
        lines.len(),
        if written {
            format!(", whole log in {}", path.display())
        } else {
            String::new()
        }
    );
    for line in tail {
        eprintln!("{line}");
    }
    PANIC_MESSAGE.with(|m| {
        if let Some(message) = m.borrow().as_deref() {
            eprintln!("---- the test failed at {}", head_and_tail(message));
        }
    });
}

fn head_and_tail(message: &str) -> String {
    let lines: Vec<&str> = message.lines().collect();
    if lines.len() <= MESSAGE_HEAD + MESSAGE_TAIL {
        return message.to_owned();
    }
    let head = lines[..MESSAGE_HEAD].join("\n");
    let tail = lines[lines.len() - MESSAGE_TAIL..].join("\n");
    format!("{head}\n[…]\n{tail}")
}

fn log_path(what: &str) -> PathBuf {
    static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("failed-test-logs");
    let _ = std::fs::create_dir_all(&dir);
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{name}-{}-{n}.log", std::process::id()))
}
