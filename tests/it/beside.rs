//! Operator commands run from a second process beside a running `serve` on the
//! same data directory: `gc --to` in a loop (through the server's admin
//! socket) and another connection's write locks on the index while clients
//! pull cold and warm blobs (no response aborted, every digest right, `verify`
//! clean after); a
//! commit whose index row cannot be written still ends its body complete and
//! the file is adopted at the next start; `stats` shows the running server's
//! budget and says so, and the configured one once the server is stopped;
//! `gc` goes through the server while it runs and to the files after.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::commands::{ok_cmd, regcache_cmd};
use crate::support::fake::FakeUpstream;
use crate::support::regcache::Regcache;
use crate::support::{
    Image, OCI_MANIFEST, blob_file, client, config_toml, pull, seed_image, send, sha256,
};

/// How long the clients pull while `gc` runs beside them.
const SOAK: Duration = Duration::from_secs(20);

fn start(fake: &FakeUpstream, extra_args: &[&str]) -> Regcache {
    let mut builder = Regcache::builder().config_toml(config_toml(&fake.url(), "5m"));
    for arg in extra_args {
        builder = builder.arg(*arg);
    }
    builder.start()
}

/// What went wrong with one response, if anything: not 200, a body that
/// broke, or bytes that do not hash to their digest.
async fn fetch_checked(url: &str, digest: &str, accept: Option<&str>) -> Option<String> {
    let mut request = client().get(url);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let got = send(request).await;
    if got.status != reqwest::StatusCode::OK {
        return Some(format!("{url}: status {} {:?}", got.status, got.body));
    }
    if let Some(e) = got.body_error {
        return Some(format!(
            "{url}: body aborted after {} bytes: {e}",
            got.body.len()
        ));
    }
    (sha256(&got.body) != digest).then(|| format!("{url}: wrong bytes"))
}

/// Pulls `image` (manifest by digest, then every blob); the failures found.
async fn pull_checked(base: &str, image: &Image) -> Vec<String> {
    let manifest_url = format!(
        "{base}/v2/{}/manifests/{}",
        image.repo, image.manifest_digest
    );
    let mut failures = Vec::new();
    let manifest = fetch_checked(&manifest_url, &image.manifest_digest, Some(OCI_MANIFEST));
    failures.extend(manifest.await);
    for blob in image.blobs() {
        let url = format!("{base}/v2/{}/blobs/{}", image.repo, blob.digest);
        failures.extend(fetch_checked(&url, &blob.digest, None).await);
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_in_a_loop_beside_pulling_clients_aborts_no_response() {
    let fake = FakeUpstream::k8s_like();
    let images: Arc<Vec<Image>> = Arc::new(
        (0..8)
            .map(|i| seed_image(&fake, &format!("soak/app{i}"), "v1", 3 * 1024 * 1024 + i))
            .collect(),
    );
    let server = start(&fake, &["--max-size", "16MiB"]);
    let (base, data) = (server.url(), server.data_dir().to_path_buf());
    let deadline = Instant::now() + SOAK;
    let pulls = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client_no in 0..3 {
        let (base, images, pulls) = (base.clone(), Arc::clone(&images), Arc::clone(&pulls));
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = client_no;
            while Instant::now() < deadline {
                // Neighbouring clients overlap on an image: cold fills
                // with several readers, warm hits, and content gc just took.
                failures.extend(pull_checked(&base, &images[n % images.len()]).await);
                pulls.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
            failures
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let gc_loop = {
        let (data, stop) = (data.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut runs = 0;
            while !stop.load(Ordering::Relaxed) {
                let out = regcache_cmd(&data, &["gc", "--to", "2MiB"]).await;
                let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                assert!(out.status.success(), "gc run {runs} failed: {stderr}");
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(stdout.contains("evicted by the running server"), "{stdout}");
                runs += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            runs
        })
    };
    // Meanwhile another process's write transactions on the index (an
    // operator's `sqlite3` shell, a `gc` of an older build working on the
    // files): 300 ms each, rolled back, every 100 ms.
    let holder = {
        let (path, stop) = (data.join("index.db"), Arc::clone(&stop));
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(Duration::from_secs(30)).unwrap();
            let mut held = 0;
            while !stop.load(Ordering::Relaxed) {
                conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                std::thread::sleep(Duration::from_millis(300));
                conn.execute_batch("ROLLBACK").unwrap();
                held += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            held
        })
    };
    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await.expect("client task"));
    }
    stop.store(true, Ordering::Relaxed);
    let gc_runs = gc_loop.await.expect("gc loop");
    let locks_held = holder.join().expect("lock holder");
    let pulls = pulls.load(Ordering::Relaxed);
    eprintln!(
        "beside: {pulls} pulls ({} responses), {gc_runs} gc runs, {locks_held} write locks held \
         by another connection, {} failed responses",
        pulls * 3,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert!(
        gc_runs >= 10 && pulls >= 10,
        "{gc_runs} gc runs, {pulls} pulls"
    );
    // Still serving every image correctly, then consistent on disk.
    for image in images.iter() {
        pull(&base, image).await;
    }
    let verified = ok_cmd(&data, &["verify"]).await;
    assert!(verified.contains("all good"), "{verified}");
}

/// The server's commit meets an index that refuses the row (here a trigger a
/// second connection installed; in the field a lock held past every retry):
/// the verified file stays in `blobs/`, the client gets the whole body, and the
/// next start-up adopts the file.
#[tokio::test]
async fn a_commit_whose_row_cannot_be_written_still_serves_its_whole_body() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "app", "v1", 2 * 1024 * 1024);
    let mut server = start(&fake, &[]);
    let data = server.data_dir().to_path_buf();
    refuse_content_rows(&data, true);

    let failures = pull_checked(&server.url(), &image).await;
    assert!(failures.is_empty(), "{failures:#?}");
    server.wait_for_log("stored without its index row");
    let layer = &image.layer().digest;
    assert!(blob_file(&data, layer).exists());
    assert_eq!(content_rows(&data), 0);

    refuse_content_rows(&data, false);
    server.restart();
    // The manifest, the config and the layer.
    assert_eq!(content_rows(&data), 3, "the files were adopted");
    pull(&server.url(), &image).await;
}

/// Installs (or drops) a trigger that makes every new content row fail.
fn refuse_content_rows(data: &Path, refuse: bool) {
    let conn = rusqlite::Connection::open(data.join("index.db")).unwrap();
    let sql = if refuse {
        "CREATE TRIGGER refuse_rows BEFORE INSERT ON content \
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
    } else {
        "DROP TRIGGER refuse_rows"
    };
    conn.execute_batch(sql).unwrap();
}

fn content_rows(data: &Path) -> u64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(data.join("index.db"), flags).unwrap();
    conn.query_row("SELECT count(*) FROM content", [], |row| row.get(0))
        .unwrap()
}

/// `stats` beside `serve --max-size 80MiB` shows the server's 80 MiB and says
/// they come from it; once it is stopped, the configuration `stats` was given
/// (here the embedded default, 20 GiB) and says so. `gc` goes through the
/// server's admin socket (0600) while it runs, and works on the files after.
#[tokio::test]
async fn stats_shows_the_running_servers_budget_and_where_it_comes_from() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "app", "v1", 1024 * 1024);
    let mut server = start(&fake, &["--max-size", "80MiB"]);
    let data = server.data_dir().to_path_buf();
    pull(&server.url(), &image).await;

    let text = ok_cmd(&data, &["stats"]).await;
    eprintln!("stats beside `serve --max-size 80MiB`:\n{text}");
    let pid = server.pid();
    assert!(text.contains("of 80.0 MiB"), "{text}");
    assert!(
        text.contains(&format!("from the running server, pid {pid}")),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok_cmd(&data, &["stats", "--json"]).await).unwrap();
    assert_eq!(json["budget_bytes"], 80 * 1024 * 1024);
    assert_eq!(json["budget"]["max_size"], 80 * 1024 * 1024);
    assert_eq!(json["budget_source"], "server");
    assert_eq!(json["server"]["pid"], pid);
    let socket = data.join("admin.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let gc = ok_cmd(&data, &["gc", "--to", "0"]).await;
    assert!(gc.contains("evicted 3"), "{gc}");
    assert!(
        gc.contains(&format!("evicted by the running server, pid {pid}")),
        "{gc}"
    );
    server.wait_for_log("gc requested on the admin socket");
    // The server's own accounting saw it: what it evicted is fetched again.
    let layer_gets = fake.hits(&image.layer().digest);
    pull(&server.url(), &image).await;
    assert!(fake.hits(&image.layer().digest) > layer_gets);

    server.stop();
    let text = ok_cmd(&data, &["stats"]).await;
    eprintln!("stats with the server stopped:\n{text}");
    assert!(text.contains("of 20.0 GiB"), "{text}");
    assert!(
        text.contains("from the files, with the configuration given"),
        "{text}"
    );
    assert!(text.contains("server: not running"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ok_cmd(&data, &["stats", "--json"]).await).unwrap();
    assert_eq!(json["budget_source"], "config");
    assert!(json["server"].is_null());
    // Killed: its socket file is left, nobody listens; gc works on the files.
    let gc = ok_cmd(&data, &["gc", "--to", "0"]).await;
    assert!(gc.contains("evicted 3"), "{gc}");
    assert!(
        gc.contains("evicted from the files (no server running)"),
        "{gc}"
    );
    let verified = ok_cmd(&data, &["verify"]).await;
    assert!(verified.contains("all good"), "{verified}");
}
