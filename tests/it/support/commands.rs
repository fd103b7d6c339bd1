//! Operator commands (`regcache gc`, `stats`, `verify`, ...) run as the real
//! binary in a second process on a data directory, as an operator's shell or
//! cron job would, beside or without a running `serve`. Starts nothing that
//! outlives the call.

use std::path::Path;
use std::process::Output;

/// Runs `regcache <args> --data <data_dir>` to its end.
pub async fn regcache_cmd(data_dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
        .args(args)
        .arg("--data")
        .arg(data_dir)
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run regcache")
}

/// Runs a command that must succeed and returns its stdout.
pub async fn ok_cmd(data_dir: &Path, args: &[&str]) -> String {
    let output = regcache_cmd(data_dir, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "regcache {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
