//! The users allowed to pull (`[server.auth] htpasswd`): an htpasswd file of
//! bcrypt entries as `htpasswd -B` writes them, re-read when it changes;
//! password checks (bcrypt, whose comparison is constant-time, run off the
//! async threads); and failed attempts counted per client address so that
//! guessing is slowed down.
//!
//! A file with an entry that is not bcrypt is refused with its line number (at
//! start: regcache does not start; on a later change: the old users stay and
//! an error is logged). Passwords are never logged or kept: a successful check
//! is remembered by a SHA-256 of the credentials, until the file changes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

/// How often the file is checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// Failed attempts a client address may make per window...
const MAX_FAILURES: u32 = 10;
/// ...after which it is refused until the window ends.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Checked for unknown users, so a wrong user name costs as long as a wrong
/// password (bcrypt of "x" at cost 5).
const DUMMY_HASH: &str = "$2y$05$CCCCCCCCCCCCCCCCCCCCC.gLF8xNKy0TqRIGN3zCLuXzS3TcMOQSG";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("htpasswd file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("htpasswd file {path}, line {line}: {problem}")]
    Entry {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// The users of one htpasswd file.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    state: RwLock<State>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Default)]
struct State {
    /// User name → bcrypt hash.
    entries: Arc<HashMap<String, String>>,
    /// SHA-256 of `user:password` pairs that passed since the last load.
    verified: HashSet<[u8; 32]>,
    stamp: Option<(SystemTime, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

impl Users {
    /// Reads `path`; any entry that is not bcrypt is an error.
    pub fn load(path: &Path) -> Result<Arc<Users>, Error> {
        let entries = read(path)?;
        let state = State {
            entries: Arc::new(entries),
            verified: HashSet::new(),
            stamp: stamp(path),
        };
        Ok(Arc::new(Users {
            path: path.to_owned(),
            state: RwLock::new(state),
            failures: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether `password` is `user`'s.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let key = credentials_key(user, password);
        let entries = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.verified.contains(&key) {
                return true;
            }
            Arc::clone(&state.entries)
        };
        let hash = entries.get(user).cloned();
        let password = password.to_owned();
        let matched = tokio::task::spawn_blocking(move || {
            let checked = bcrypt::verify(&password, hash.as_deref().unwrap_or(DUMMY_HASH));
            hash.is_some() && checked.unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if matched {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            // Only if the file was not replaced meanwhile.
            if Arc::ptr_eq(&state.entries, &entries) {
                state.verified.insert(key);
            }
        }
        matched
    }

    /// How long `client` must wait before trying again, if it has failed too often.
    pub fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let f = failures.get(&client)?;
        let elapsed = f.since.elapsed();
        (f.count >= MAX_FAILURES && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    /// Counts a failed attempt from `client`.
    pub fn record_failure(&self, client: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Windows that ended are forgotten, so the map stays small.
        failures.retain(|_, f| f.since.elapsed() < FAILURE_WINDOW);
        let f = failures.entry(client).or_insert(Failures {
            count: 0,
            since: Instant::now(),
        });
        f.count += 1;
    }

    /// Re-reads the file whenever it changes, until the task is dropped.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tick.tick().await;
            let now = stamp(&self.path);
            let seen = self.state.read().unwrap_or_else(|e| e.into_inner()).stamp;
            if now != seen {
                self.reload(now);
            }
        }
    }

    fn reload(&self, now: Option<(SystemTime, u64)>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.stamp = now;
        match read(&self.path) {
            Ok(entries) => {
                tracing::info!(users = entries.len(), path = %self.path.display(), "htpasswd reloaded");
                state.entries = Arc::new(entries);
                state.verified.clear();
            }
            Err(e) => tracing::error!(
                error = %e,
                "htpasswd not reloaded; the previous users stay"
            ),
        }
    }
}

/// Parses the file: `user:hash` lines; blank lines and `#` comments skipped.
fn read(path: &Path) -> Result<HashMap<String, String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut entries = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = |problem: &str| Error::Entry {
            path: path.to_owned(),
            line: i + 1,
            problem: problem.to_owned(),
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| problem("not user:hash"))?;
        if user.is_empty() {
            return Err(problem("empty user name"));
        }
        if bcrypt::HashParts::from_str(hash).is_err() {
            return Err(problem(&format!(
                "the entry for {user:?} is not bcrypt (create it with htpasswd -B)"
            )));
        }
        entries.insert(user.to_owned(), hash.to_owned());
    }
    Ok(entries)
}

fn credentials_key(user: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    hasher.update([0]);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[tokio::test]
    async fn bcrypt_entries_verify_and_others_are_refused_with_their_line() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let f = file(&format!("# pullers\n\nalice:{hash}\n"));
        let users = Users::load(f.path()).unwrap();
        assert!(users.verify("alice", "s3cret").await);
        assert!(users.verify("alice", "s3cret").await, "remembered");
        assert!(!users.verify("alice", "wrong").await);
        assert!(!users.verify("bob", "s3cret").await);

        let f = file(&format!(
            "alice:{hash}\nbob:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"
        ));
        let err = Users::load(f.path()).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("\"bob\" is not bcrypt"),
            "{err}"
        );
        assert!(!err.contains("W6ph5"), "no hash in the message: {err}");
    }

    #[test]
    fn htpasswd_b_hashes_verify() {
        // `htpasswd -nbB alice s3cret-pw` (apache2-utils 2.4).
        let hash = "$2y$05$v/GGUZOBiYdbNyS9PJ7fx.G1B/geGDvAy1QjwR1a3IZTSNOCt.PAu";
        assert!(bcrypt::verify("s3cret-pw", hash).unwrap());
    }

    #[test]
    fn the_dummy_hash_is_bcrypt() {
        assert!(bcrypt::HashParts::from_str(DUMMY_HASH).is_ok());
    }

    #[test]
    fn failures_are_limited_per_address() {
        let users = Users::load(file("").path()).unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            assert!(users.blocked(a).is_none());
            users.record_failure(a);
        }
        assert!(users.blocked(a).is_some_and(|d| d <= FAILURE_WINDOW));
        assert!(users.blocked(b).is_none());
    }
}
