//! Single-flight fills and coalescing, against the real binary and the k8s-like
//! fake: a herd of clients on one cold blob makes one upstream fetch (also when
//! the body is cut once and resumed); a fill that fails for good aborts every
//! reader, and the next request starts a new fill; a slow reader slows neither
//! the fill nor the other readers; a fill whose every client has gone still
//! commits; ranges that join a fill get exactly their bytes; a herd on a cold
//! tag makes one upstream request, and one on a stale tag is answered from the
//! cache at once while one revalidation asks the upstream.
//!
//! Asserts bytes, digests, the fake's request log, the access log and the data
//! directory, and orders events by progress (what the upstream has sent, what a
//! client has read); never wall-clock speed. The few sleeps only give requests
//! time to arrive (or a tag time to expire): the assertions hold whether or not
//! every request arrived in that time.
//!
//! Talks only to 127.0.0.1; every server a test starts is dropped by the test.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::fake::{FakeUpstream, Host};
use crate::support::regcache::Regcache;
use crate::support::{
    WAIT, blob_file, client, config_toml, get, random_bytes, seed_image, send, tmp_files, wait_for,
};

const MIB: usize = 1024 * 1024;

/// A response body read to its end (or to the error that ended it), hashed and
/// compared with the blob as it arrives, without being kept.
#[derive(Debug)]
struct Drained {
    received: usize,
    /// `sha256:` of the bytes received.
    digest: String,
    /// Every byte received is the blob's byte at that offset.
    matches: bool,
    /// Set when the body ended with an error instead of a clean end.
    error: Option<String>,
}

/// Reads `response` to its end; its first byte is the blob's byte `offset`.
async fn drain(mut response: reqwest::Response, blob: &[u8], offset: usize) -> Drained {
    let mut hasher = Sha256::new();
    let mut received = 0;
    let mut matches = true;
    let error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let at = offset + received;
                matches &= blob.get(at..at + chunk.len()) == Some(&chunk[..]);
                hasher.update(&chunk);
                received += chunk.len();
            }
            Ok(None) => break None,
            Err(e) => break Some(format!("{e:?}")),
        }
    };
    Drained {
        received,
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        matches,
        error,
    }
}

/// The whole blob, cleanly ended, hashing to its digest.
#[track_caller]
fn assert_whole(got: &Drained, blob: &Bytes, digest: &str) {
    assert!(got.error.is_none(), "body failed: {got:?}");
    assert_eq!(got.received, blob.len(), "{got:?}");
    assert!(got.matches, "{got:?}");
    assert_eq!(got.digest, digest);
}

/// Sends `n` GETs for `url` at once, each from its own client (connection), and
/// returns the responses once every one has its headers. With the upstream
/// paused mid-body, each got them from the fill in progress.
async fn herd(url: &str, n: usize) -> Vec<reqwest::Response> {
    join_all((0..n).map(|_| client().get(url).send()))
        .await
        .into_iter()
        .map(|r| {
            let response = r.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            response
        })
        .collect()
}

/// Reads every response to its end, all at once (failing the test, rather than
/// hanging, if they do not end).
async fn drain_all(responses: Vec<reqwest::Response>, blob: &Bytes) -> Vec<Drained> {
    let all = join_all(responses.into_iter().map(|r| drain(r, blob, 0)));
    tokio::time::timeout(WAIT, all)
        .await
        .expect("every body to end")
}

/// The access-log lines of requests for exactly `path` (query included).
fn access_lines(regcache: &Regcache, path: &str) -> Vec<String> {
    let needle = format!(" path={path} ");
    regcache
        .log()
        .lines()
        .filter(|l| l.contains("regcache::access") && l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Waits until the access log has at least `n` lines for `path` (a line is
/// written when its response body ends, maybe just after the client read it).
async fn wait_for_access_lines(regcache: &Regcache, path: &str, n: usize) -> Vec<String> {
    wait_for(&format!("{n} access-log lines for {path}"), || {
        access_lines(regcache, path).len() >= n
    })
    .await;
    access_lines(regcache, path)
}

/// How many of `lines` contain `field` (e.g. `outcome="miss"`, `aborted=true`).
fn count(lines: &[String], field: &str) -> usize {
    lines.iter().filter(|l| l.contains(field)).count()
}

/// After a fill committed: a GET is a hit (no upstream request at all) with the
/// right bytes, logged as such.
async fn assert_hit(fake: &FakeUpstream, regcache: &Regcache, path: &str, blob: &Bytes) {
    let before = fake.total_hits();
    let hits = count(&access_lines(regcache, path), "outcome=\"hit\"");
    let got = get(&format!("{}{path}", regcache.url())).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.ok_body(), blob);
    assert_eq!(
        fake.total_hits(),
        before,
        "a hit reached the upstream: {:#?}",
        &fake.requests()[before..]
    );
    wait_for("the hit's access-log line", || {
        count(&access_lines(regcache, path), "outcome=\"hit\"") == hits + 1
    })
    .await;
}

/// A GET sent over a socket with a small receive buffer, read only as far as the
/// test asks: a client that stops reading holds the server's writes back after a
/// few KiB plus the socket buffers, as a slow client on a real network does.
#[derive(Debug)]
struct RawGet {
    stream: tokio::net::TcpStream,
    status: u16,
    content_length: usize,
    /// Body bytes read so far.
    body: Vec<u8>,
}

impl RawGet {
    /// Sends the request and reads the response headers (and whatever body
    /// bytes came with them).
    async fn start(addr: SocketAddr, path: &str) -> RawGet {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
        let mut stream = socket.connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let split = loop {
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("response headers")
                .expect("read");
            assert!(n > 0, "connection closed before the response headers");
            head.extend_from_slice(&buf[..n]);
        };
        let text = String::from_utf8_lossy(&head[..split]).into_owned();
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let content_length = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .expect("content-length");
        RawGet {
            stream,
            status,
            content_length,
            body: head[split + 4..].to_vec(),
        }
    }

    /// Reads until at least `n` body bytes have been read.
    async fn read_at_least(&mut self, n: usize) {
        let mut buf = vec![0u8; 64 * 1024];
        while self.body.len() < n {
            let want = buf.len().min(self.content_length - self.body.len());
            let k = tokio::time::timeout(WAIT, self.stream.read(&mut buf[..want]))
                .await
                .expect("body bytes")
                .expect("read");
            assert!(k > 0, "body ended after {} bytes", self.body.len());
            self.body.extend_from_slice(&buf[..k]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_32_clients_on_a_cold_blob_makes_one_upstream_fetch() {
    let fake = FakeUpstream::k8s_like();
    let blob = random_bytes(6 * MIB + 12_345);
    let digest = fake.put_blob("herd", blob.clone());
    fake.pause_after(&digest, MIB as u64);
    let regcache = Regcache::with_upstream(fake.url());
    let path = format!("/v2/herd/blobs/{digest}");
    let url = format!("{}{path}", regcache.url());

    let responses = herd(&url, 32).await;
    // Every client had its headers before the upstream went past its first MiB:
    // all 32 are readers of the one fill.
    assert!(fake.sent(&digest) <= MIB as u64);
    for response in &responses {
        assert_eq!(
            response.content_length(),
            Some(blob.len() as u64),
            "{:?}",
            response.headers()
        );
    }
    fake.resume(&digest);
    for got in drain_all(responses, &blob).await {
        assert_whole(&got, &blob, &digest);
    }
    // One fetch through the whole chain, of the whole blob.
    assert_eq!(fake.hits_on(Host::Front, Method::GET, &digest), 1);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
    assert_eq!(fake.count(|s| s.range.is_some()), 0);
    assert_eq!(fake.sent(&digest), blob.len() as u64);
    assert!(blob_file(regcache.data_dir(), &digest).exists());
    // The access log: one miss (the fill's starter), 31 follows, all complete.
    let lines = wait_for_access_lines(&regcache, &path, 32).await;
    assert_eq!(lines.len(), 32, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"miss\""), 1, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"follow\""), 31, "{lines:#?}");
    assert_eq!(count(&lines, "aborted=false"), 32, "{lines:#?}");
    assert_eq!(
        count(&lines, &format!(" bytes={} ", blob.len())),
        32,
        "{lines:#?}"
    );
    assert_hit(&fake, &regcache, &path, &blob).await;
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_a_body_cut_once_sees_one_get_and_one_ranged_get() {
    let fake = FakeUpstream::k8s_like();
    let blob = random_bytes(5 * MIB + 321);
    let digest = fake.put_blob("herd", blob.clone());
    let cut = 3 * MIB as u64 + 7;
    fake.pause_after(&digest, MIB as u64);
    fake.set_cut_once(&digest, cut);
    let regcache = Regcache::with_upstream(fake.url());
    let path = format!("/v2/herd/blobs/{digest}");
    let url = format!("{}{path}", regcache.url());

    let responses = herd(&url, 16).await;
    assert!(fake.sent(&digest) <= MIB as u64);
    fake.resume(&digest);
    for got in drain_all(responses, &blob).await {
        assert_whole(&got, &blob, &digest);
    }
    assert_eq!(
        fake.storage_gets(&digest),
        vec![None, Some(format!("bytes={cut}-"))]
    );
    assert!(blob_file(regcache.data_dir(), &digest).exists());
    let lines = wait_for_access_lines(&regcache, &path, 16).await;
    assert_eq!(count(&lines, "outcome=\"miss\""), 1, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"follow\""), 15, "{lines:#?}");
    assert_eq!(count(&lines, "aborted=false"), 16, "{lines:#?}");
    assert_hit(&fake, &regcache, &path, &blob).await;
}

/// How a fill is made to fail for good.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The last byte is wrong: the digest check fails at the end (one GET).
    WrongBytes,
    /// The body is cut at the same byte every time: the GET and three resumes.
    CutEveryTime,
}

/// Eight readers of a fill that fails for good: every body is aborted, none
/// received a byte that is not the blob's, nothing is cached. With the fault
/// off, the next requests start one new fill (eight readers again), which
/// commits; the request after that is a hit.
async fn a_failed_fill_then_a_new_one(fault: Fault) {
    let fake = FakeUpstream::k8s_like();
    let blob = random_bytes(3 * MIB + 5);
    let digest = fake.put_blob("herd", blob.clone());
    let cut = 2 * MIB as u64 + 7;
    let gets_per_failed_fill = match fault {
        Fault::WrongBytes => {
            fake.set_wrong_bytes(&digest, true);
            1
        }
        Fault::CutEveryTime => {
            fake.set_cut_after(&digest, Some(cut));
            4
        }
    };
    fake.pause_after(&digest, MIB as u64);
    let regcache = Regcache::with_upstream(fake.url());
    let path = format!("/v2/herd/blobs/{digest}");
    let url = format!("{}{path}", regcache.url());

    let responses = herd(&url, 8).await;
    assert!(fake.sent(&digest) <= MIB as u64);
    fake.resume(&digest);
    for got in drain_all(responses, &blob).await {
        assert!(
            got.error.is_some(),
            "a reader of a failed fill ended cleanly: {got:?}"
        );
        assert!(got.received < blob.len(), "{got:?}");
        // What a reader did get was the blob's bytes: the wrong last byte (or
        // anything past the cut) was never sent.
        assert!(got.matches, "{got:?}");
        if let Fault::CutEveryTime = fault {
            assert!(got.received as u64 <= cut, "{got:?}");
        }
    }
    wait_for("the failed fill's temp file to go", || {
        tmp_files(regcache.data_dir()).is_empty()
    })
    .await;
    assert!(!blob_file(regcache.data_dir(), &digest).exists());
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &digest),
        gets_per_failed_fill
    );
    let lines = wait_for_access_lines(&regcache, &path, 8).await;
    assert_eq!(count(&lines, "aborted=true"), 8, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"miss\""), 1, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"follow\""), 7, "{lines:#?}");

    // The fault is gone: the next requests start one new fill, from byte 0.
    match fault {
        Fault::WrongBytes => fake.set_wrong_bytes(&digest, false),
        Fault::CutEveryTime => fake.set_cut_after(&digest, None),
    }
    fake.pause_after(&digest, MIB as u64);
    let responses = herd(&url, 8).await;
    fake.resume(&digest);
    for got in drain_all(responses, &blob).await {
        assert_whole(&got, &blob, &digest);
    }
    let gets = fake.storage_gets(&digest);
    assert_eq!(gets.len(), gets_per_failed_fill + 1, "{gets:?}");
    assert_eq!(gets.last(), Some(&None), "{gets:?}");
    assert!(blob_file(regcache.data_dir(), &digest).exists());
    let lines = wait_for_access_lines(&regcache, &path, 16).await;
    assert_eq!(count(&lines, "outcome=\"miss\""), 2, "{lines:#?}");
    assert_eq!(count(&lines, "aborted=false"), 8, "{lines:#?}");
    assert_hit(&fake, &regcache, &path, &blob).await;
    assert_eq!(
        fake.hits_on(Host::Storage, Method::GET, &digest),
        gets_per_failed_fill + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_with_wrong_bytes_aborts_every_reader_and_the_next_request_fills_anew() {
    a_failed_fill_then_a_new_one(Fault::WrongBytes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_cut_for_good_aborts_every_reader_and_the_next_request_fills_anew() {
    a_failed_fill_then_a_new_one(Fault::CutEveryTime).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_neither_the_fill_nor_the_other_readers() {
    let fake = FakeUpstream::k8s_like();
    // Far more than the slow client's socket buffers and regcache's send buffer
    // can hold: regcache cannot finish the slow response while it is not read.
    let blob = random_bytes(16 * MIB + 3);
    let digest = fake.put_blob("herd", blob.clone());
    fake.pause_after(&digest, MIB as u64);
    let regcache = Regcache::with_upstream(fake.url());
    let path = format!("/v2/herd/blobs/{digest}");
    let url = format!("{}{path}", regcache.url());

    // The slow client starts the fill, reads 4 KiB and stops reading.
    let mut slow = RawGet::start(regcache.addr(), &path).await;
    assert_eq!(slow.status, 200);
    assert_eq!(slow.content_length, blob.len());
    slow.read_at_least(4096).await;
    let prefix = slow.body.len();
    // Four more clients join the fill while the upstream is paused.
    let responses = herd(&url, 4).await;
    assert!(fake.sent(&digest) <= MIB as u64);
    fake.resume(&digest);
    for got in drain_all(responses, &blob).await {
        assert_whole(&got, &blob, &digest);
    }
    // The fast readers got the last byte, so the fill has committed, while the
    // slow client has still read only its first few KiB.
    assert_eq!(slow.body.len(), prefix);
    assert_eq!(fake.sent(&digest), blob.len() as u64);
    assert!(blob_file(regcache.data_dir(), &digest).exists());
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
    // regcache finished the four fast responses, not the slow one (the miss,
    // which started the fill): its body is held back by the unread socket.
    let lines = wait_for_access_lines(&regcache, &path, 4).await;
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"follow\""), 4, "{lines:#?}");
    assert_eq!(count(&lines, "aborted=false"), 4, "{lines:#?}");
    // Later requests are hits, still beside the stalled slow reader.
    assert_hit(&fake, &regcache, &path, &blob).await;
    assert_eq!(
        count(&access_lines(&regcache, &path), "outcome=\"miss\""),
        0
    );

    // The slow client reads on, and gets every byte.
    slow.read_at_least(blob.len()).await;
    assert_eq!(slow.body.len(), blob.len());
    assert_eq!(crate::support::sha256(&slow.body), digest);
    let lines = wait_for_access_lines(&regcache, &path, 6).await;
    assert_eq!(count(&lines, "outcome=\"miss\""), 1, "{lines:#?}");
    assert_eq!(count(&lines, "aborted=false"), 6, "{lines:#?}");
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_whose_every_client_has_gone_still_commits() {
    let fake = FakeUpstream::k8s_like();
    let blob = random_bytes(8 * MIB + 1);
    let digest = fake.put_blob("herd", blob.clone());
    // The upstream's answer is held back, then its body pauses after 1 MiB.
    fake.hold_blob(&digest, true);
    fake.pause_after(&digest, MIB as u64);
    let regcache = Regcache::with_upstream(fake.url());
    let path = format!("/v2/herd/blobs/{digest}");
    let url = format!("{}{path}", regcache.url());
    let addr = regcache.addr();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");

    // Two clients hang up before the upstream has answered: the first one's
    // request started the fill (storage saw its GET), the second joined it.
    let mut early = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        wait_for("the fill's upstream GET", || {
            fake.hits_on(Host::Storage, Method::GET, &digest) == 1
        })
        .await;
        early.push(stream);
    }
    // Time for the second request to reach regcache (not asserted).
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(early);
    fake.hold_blob(&digest, false);

    // Two more join while the body is paused, and hang up too: one after its
    // first bytes, one before reading any.
    let mut responses = herd(&url, 2).await;
    let first = tokio::time::timeout(WAIT, responses[0].chunk())
        .await
        .expect("first bytes")
        .expect("a chunk")
        .expect("not the end");
    assert_eq!(&first[..], &blob[..first.len()]);
    drop(responses);
    assert!(fake.sent(&digest) <= MIB as u64);

    // No client is left; the fill goes on and commits.
    fake.resume(&digest);
    let file = blob_file(regcache.data_dir(), &digest);
    // Committed means indexed too: the file is renamed into blobs/ before its
    // row is written, and a request in between joins the fill (a follow).
    regcache.wait_for_log(&format!("blob cached digest={digest}"));
    assert!(file.exists());
    wait_for("the fill's temp file to go", || {
        tmp_files(regcache.data_dir()).is_empty()
    })
    .await;
    assert_eq!(std::fs::read(&file).unwrap(), blob);
    assert_eq!(fake.hits_on(Host::Front, Method::GET, &digest), 1);
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
    assert_eq!(fake.sent(&digest), blob.len() as u64);
    // The two that got headers are logged as aborted; none of the four as complete.
    wait_for("the hung-up clients' access-log lines", || {
        count(&access_lines(&regcache, &path), "aborted=true") >= 2
    })
    .await;
    let lines = access_lines(&regcache, &path);
    assert_eq!(count(&lines, "aborted=false"), 0, "{lines:#?}");
    assert_hit(&fake, &regcache, &path, &blob).await;
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
}

/// `Content-Range` of a 206 for `first..=last` of a blob of `size` bytes.
fn content_range(first: usize, last: usize, size: usize) -> String {
    format!("bytes {first}-{last}/{size}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_that_join_a_fill_get_exactly_their_bytes() {
    let fake = FakeUpstream::k8s_like();
    let size = 4 * MIB + 123;
    let blob = random_bytes(size);
    let digest = fake.put_blob("herd", blob.clone());
    fake.pause_after(&digest, MIB as u64);
    let regcache = Regcache::with_upstream(fake.url());
    let path = format!("/v2/herd/blobs/{digest}");
    let url = format!("{}{path}", regcache.url());
    let c = client();

    // A cold Range request starts the fill (of the whole blob) and waits for
    // bytes beyond the pause.
    let (a, b) = (3_000_000, 3_000_099);
    let cold = tokio::spawn(send(c.get(&url).header("range", format!("bytes={a}-{b}"))));
    wait_for("the upstream to send 1 MiB", || {
        fake.sent(&digest) == MIB as u64
    })
    .await;

    // A range that straddles the written edge: its first half is sent while the
    // upstream is paused, the rest once it goes on.
    let (s, e) = (MIB - 100, MIB + 99);
    let mut straddle = c
        .get(&url)
        .header("range", format!("bytes={s}-{e}"))
        .send()
        .await
        .unwrap();
    assert_eq!(straddle.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        straddle
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok()),
        Some(content_range(s, e, size).as_str())
    );
    assert_eq!(straddle.content_length(), Some(200));
    let mut head = Vec::new();
    while head.len() < 100 {
        let chunk = tokio::time::timeout(WAIT, straddle.chunk())
            .await
            .expect("the written part while the upstream is paused")
            .unwrap()
            .expect("a chunk");
        head.extend_from_slice(&chunk);
    }
    assert_eq!(head.len(), 100, "bytes past the written edge were sent");
    assert_eq!(&head[..], &blob[s..MIB]);
    assert_eq!(fake.sent(&digest), MIB as u64, "the upstream went on");

    // An open range that starts beyond the written edge: the rest of the blob,
    // its last byte only after the commit.
    let from = 2 * MIB;
    let open = tokio::spawn(send(c.get(&url).header("range", format!("bytes={from}-"))));
    fake.resume(&digest);

    let rest = drain(straddle, &blob, s + head.len()).await;
    assert!(rest.error.is_none(), "{rest:?}");
    assert!(rest.matches, "{rest:?}");
    assert_eq!(head.len() + rest.received, 200);

    let cold = cold.await.unwrap();
    assert_eq!(cold.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        cold.header("content-range"),
        Some(content_range(a, b, size).as_str())
    );
    assert_eq!(cold.header("content-length"), Some("100"));
    assert_eq!(&cold.ok_body()[..], &blob[a..=b]);

    let open = open.await.unwrap();
    assert_eq!(open.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        open.header("content-range"),
        Some(content_range(from, size - 1, size).as_str())
    );
    assert_eq!(
        open.header("content-length"),
        Some((size - from).to_string().as_str())
    );
    assert_eq!(&open.ok_body()[..], &blob[from..]);

    // One fetch of the whole blob, whatever the clients' ranges; committed.
    assert_eq!(fake.storage_gets(&digest), vec![None]);
    assert!(blob_file(regcache.data_dir(), &digest).exists());
    let lines = wait_for_access_lines(&regcache, &path, 3).await;
    assert_eq!(count(&lines, "status=206"), 3, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"miss\""), 1, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"follow\""), 2, "{lines:#?}");
    assert_eq!(count(&lines, "aborted=false"), 3, "{lines:#?}");
}

/// Sends `n` GETs for `url` while the fake holds manifest requests, releases
/// them once the first has reached the registry host (`reached` says when), and
/// returns the bodies.
async fn herd_on_held_manifests(
    fake: &FakeUpstream,
    url: &str,
    n: usize,
    reached: impl Fn() -> bool,
) -> Vec<Bytes> {
    fake.hold_manifests(true);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_for("the first request to reach the upstream", reached).await;
    // Time for the others to reach regcache and wait behind it (not asserted).
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.hold_manifests(false);
    let mut bodies = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        bodies.push(got.ok_body().clone());
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_a_cold_tag_makes_one_upstream_get() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let path = "/v2/pause/manifests/3.9";
    let url = format!("{}{path}", regcache.url());
    let bodies = herd_on_held_manifests(&fake, &url, 16, || {
        fake.hits_on(Host::Registry, Method::GET, "/manifests/3.9") >= 1
    })
    .await;
    for body in bodies {
        assert_eq!(body, image.manifest);
    }
    assert_eq!(fake.hits_on(Host::Front, Method::GET, "/manifests/"), 1);
    assert_eq!(fake.hits_on(Host::Front, Method::HEAD, "/manifests/"), 0);
    let lines = wait_for_access_lines(&regcache, path, 16).await;
    assert_eq!(count(&lines, "outcome=\"miss\""), 1, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"hit\""), 15, "{lines:#?}");
}

/// Sends `n` GETs for `url` while the fake holds manifest requests and returns
/// their bodies, all read while it still holds them; then waits until a held
/// request (`reached`) is at the upstream, and releases it.
async fn herd_answered_while_held(
    fake: &FakeUpstream,
    url: &str,
    n: usize,
    reached: impl Fn() -> bool,
) -> Vec<Bytes> {
    fake.hold_manifests(true);
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let got = task.await.unwrap();
        assert_eq!(got.status, StatusCode::OK, "{got:?}");
        bodies.push(got.ok_body().clone());
    }
    wait_for("the revalidation to reach the upstream", reached).await;
    fake.hold_manifests(false);
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_a_stale_tag_is_answered_at_once_and_makes_one_upstream_revalidation() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    // Long enough that the whole herd is answered within one TTL.
    let ttl = Duration::from_secs(3);
    let regcache = Regcache::builder()
        .config_toml(config_toml(&fake.url(), "3s"))
        .start();
    let path = "/v2/pause/manifests/3.9";
    let url = format!("{}{path}", regcache.url());
    let gets = || fake.hits_on(Host::Front, Method::GET, "/v2/pause/manifests/3.9");
    let heads = || fake.hits_on(Host::Front, Method::HEAD, "/v2/pause/manifests/3.9");
    let revalidated = |found: &str| {
        let line = format!("found=\"{found}\"");
        let log = regcache.log();
        log.contains("tag revalidated") && log.contains(&line)
    };
    assert_eq!(get(&url).await.ok_body(), &image.manifest);
    assert_eq!((gets(), heads()), (1, 0));

    // Stale, unchanged upstream: the herd is answered from the cache while
    // the one revalidation's HEAD is held at the upstream.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let bodies = herd_answered_while_held(&fake, &url, 16, || {
        fake.hits_on(Host::Registry, Method::HEAD, "/manifests/3.9") >= 1
    })
    .await;
    for body in bodies {
        assert_eq!(body, image.manifest);
    }
    wait_for("the revalidation", || revalidated("unchanged")).await;
    assert_eq!((gets(), heads()), (1, 1));
    let lines = wait_for_access_lines(&regcache, path, 17).await;
    assert_eq!(count(&lines, "outcome=\"stale\""), 16, "{lines:#?}");

    // Stale, moved upstream: the herd still gets the cached manifest at once;
    // one HEAD and one GET fetch the new one, which the next request gets.
    let moved = seed_image(&fake, "pause", "3.9", 100);
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let bodies = herd_answered_while_held(&fake, &url, 16, || {
        fake.hits_on(Host::Registry, Method::HEAD, "/manifests/3.9") >= 2
    })
    .await;
    for body in bodies {
        assert_eq!(body, image.manifest);
    }
    wait_for("the revalidation", || revalidated("moved")).await;
    assert_eq!((gets(), heads()), (2, 2));
    let got = get(&url).await;
    assert_eq!(got.ok_body(), &moved.manifest);
    let lines = wait_for_access_lines(&regcache, path, 34).await;
    assert_eq!(count(&lines, "outcome=\"stale\""), 32, "{lines:#?}");
    assert_eq!(count(&lines, "outcome=\"hit\""), 1, "{lines:#?}");
    assert_eq!((gets(), heads()), (2, 2));
}

/// A HEAD from the repository a fill is fetching for is answered from that
/// fill (its size is what the upstream just announced), without another
/// upstream request; a HEAD from another repository still asks the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_during_a_fill_is_answered_by_the_fill() {
    let fake = FakeUpstream::k8s_like();
    let blob = random_bytes(4 * MIB);
    let digest = fake.put_blob("herd", blob.clone());
    fake.link_blob("other", &digest);
    fake.pause_after(&digest, MIB as u64);
    let regcache = Regcache::with_upstream(fake.url());
    let base = regcache.url();
    let mut body = herd(&format!("{base}/v2/herd/blobs/{digest}"), 1).await;
    let first = tokio::time::timeout(WAIT, body[0].chunk())
        .await
        .expect("first bytes")
        .expect("a chunk")
        .expect("not the end");
    assert_eq!(&first[..], &blob[..first.len()]);

    let got = crate::support::head(&format!("{base}/v2/herd/blobs/{digest}")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.header("content-length"),
        Some(blob.len().to_string().as_str())
    );
    assert_eq!(got.header("docker-content-digest"), Some(digest.as_str()));
    assert!(got.body.is_empty());
    assert_eq!(fake.hits_on(Host::Front, Method::HEAD, &digest), 0);
    // Another repository's HEAD needs the upstream's word that it has the blob.
    let other = crate::support::head(&format!("{base}/v2/other/blobs/{digest}")).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(fake.hits_on(Host::Front, Method::HEAD, &digest), 1);

    fake.resume(&digest);
    let mut rest = first.to_vec();
    while let Some(chunk) = body[0].chunk().await.expect("body") {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, blob);
    assert_eq!(fake.hits_on(Host::Front, Method::GET, &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_upstream_fetch() {
    let fake = FakeUpstream::k8s_like();
    let size = 4 * 1024 * 1024;
    let blob = random_bytes(size);
    let digest = fake.put_blob("big", blob.clone());
    fake.pause_after(&digest, 1024 * 1024);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/big/blobs/{digest}", regcache.url());
    // Four clients get their response headers while the upstream is paused.
    let responses = futures_util::future::join_all((0..4).map(|_| client().get(&url).send())).await;
    fake.resume(&digest);
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.bytes().await.unwrap(), blob);
    }
    assert_eq!(fake.hits_on(Host::Storage, Method::GET, &digest), 1);
    assert_eq!(fake.hits_on(Host::Front, Method::GET, &digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_misses_share_one_upstream_fetch() {
    let fake = FakeUpstream::k8s_like();
    let image = seed_image(&fake, "pause", "3.9", 100);
    let regcache = Regcache::with_upstream(fake.url());
    let url = format!("{}/v2/pause/manifests/3.9", regcache.url());
    fake.hold_manifests(true);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    wait_for("the manifest request to reach the upstream", || {
        fake.hits_on(Host::Registry, Method::GET, "/manifests/3.9") >= 1
    })
    .await;
    // Let the other three requests reach regcache while the first is held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.hold_manifests(false);
    for task in tasks {
        assert_eq!(task.await.unwrap().ok_body(), &image.manifest);
    }
    assert_eq!(fake.hits_on(Host::Front, Method::GET, "/manifests/3.9"), 1);
}
