//! The two scale-out shapes of `docs/scale-out.md`, built from stock parts and
//! measured by the upstream requests they cause (no clustering inside regcache):
//!
//! - **ring**: three regcache replicas, each with its own data directory and the
//!   same upstream, behind nginx's `hash $request_uri consistent`. Each URI is
//!   fetched upstream once and stored on one replica; a warm pull asks the
//!   upstream nothing; a dead replica's URIs move to the others (and only
//!   those are fetched again) while the pull still succeeds.
//! - **tiers**: edge regcaches whose upstream is a regional regcache whose
//!   upstream is the fake. Each blob leaves the fake once; the regional sees one
//!   request per blob per edge; warm edges ask it nothing; edges serve their
//!   cache with the fake or the regional down, and a new edge fills from the
//!   regional while the fake is down.
//!
//! Every body is checked against its sha256. The fetch counts are printed
//! (`cargo test --test it scaleout -- --nocapture`) for the doc to quote. Talks
//! only to 127.0.0.1; every process is a guard (regcache, nginx, the fake)
//! stopped by the test on success and failure. Never sleeps to synchronize:
//! waits poll the access logs, whose lines are written when a body ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use futures_util::future::join_all;
use reqwest::Method;

use crate::support::fake::{FakeUpstream, Host};
use crate::support::nginx::Nginx;
use crate::support::regcache::Regcache;
use crate::support::{Image, WAIT, client, pull_via, seed_layers, send, wait_for};

const REPO: &str = "scale/app";
const TAG: &str = "1.0";
/// Twelve layers so the URIs spread over the ring (all on one replica has odds
/// of about 3^-12), one of 8 MiB so a body streams through nginx in many chunks.
const LAYER_KIB: [usize; 12] = [
    8192, 1024, 512, 768, 256, 1536, 300, 2048, 640, 384, 1100, 200,
];
/// Concurrent clients per query form in every pull round.
const CLIENTS: usize = 4;
/// containerd's form: every request to a mirror carries the registry's name.
const NS: &str = "?ns=registry.k8s.io";
/// The ring's key: path and query, as the client sent them.
const REQUEST_URI: &str = "$request_uri";
/// The ring's key for clients that mix `?ns=` and none: the path alone.
const PATH: &str = "$uri";

/// Every request URI of one pull of `image` with `query`, and the digest each names.
fn uris(image: &Image, query: &str) -> Vec<(String, String)> {
    let manifest = format!("/v2/{REPO}/manifests/{TAG}{query}");
    let blobs = image.blobs().map(|b| {
        (
            format!("/v2/{REPO}/blobs/{}{query}", b.digest),
            b.digest.clone(),
        )
    });
    std::iter::once((manifest, image.manifest_digest.clone()))
        .chain(blobs)
        .collect()
}

/// The image every test here pulls: a config and the layers of [`LAYER_KIB`].
fn seed(fake: &FakeUpstream) -> Image {
    let sizes = LAYER_KIB.map(|kib| kib * 1024);
    seed_layers(fake, REPO, TAG, &sizes)
}

/// [`CLIENTS`] pulls per query form, all at once (so herds meet on cold URIs).
async fn pull_all(base: &str, image: &Image, queries: &[&str]) {
    let pulls = queries
        .iter()
        .flat_map(|q| (0..CLIENTS).map(move |_| pull_via(base, REPO, q, image)));
    tokio::time::timeout(WAIT, join_all(pulls))
        .await
        .expect("every pull to end");
}

/// GET requests per path (query included) in a regcache's access log.
fn served(regcache: &Regcache) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in regcache.log().lines() {
        if !line.contains("regcache::access") || !line.contains(" method=GET ") {
            continue;
        }
        let Some(start) = line.find(" path=") else {
            continue;
        };
        let rest = &line[start + " path=".len()..];
        let path = rest.split(' ').next().unwrap_or(rest);
        *counts.entry(path.to_owned()).or_default() += 1;
    }
    counts
}

/// Waits until the access logs of `servers` together hold at least `n` GETs
/// of every URI in `uris` (a line is written when its body ends, which may be
/// just after the client read it).
async fn settle(servers: &[&Regcache], uris: &[(String, String)], n: usize) {
    let expected: HashMap<_, _> = uris.iter().map(|(uri, _)| (uri.clone(), n)).collect();
    settle_counts(servers, &expected).await;
}

/// Waits until the access logs of `servers` together hold at least
/// `expected[uri]` GETs of every URI.
async fn settle_counts(servers: &[&Regcache], expected: &HashMap<String, usize>) {
    wait_for("the access logs to catch up", || {
        let logs: Vec<_> = servers.iter().map(|r| served(r)).collect();
        expected.iter().all(|(uri, &n)| {
            logs.iter()
                .map(|l| l.get(uri).copied().unwrap_or(0))
                .sum::<usize>()
                >= n
        })
    })
    .await;
}

/// The `sha256:` digests committed in a data directory.
fn stored(data_dir: &Path) -> BTreeSet<String> {
    let root = data_dir.join("blobs").join("sha256");
    let Ok(prefixes) = std::fs::read_dir(&root) else {
        return BTreeSet::new();
    };
    prefixes
        .filter_map(Result::ok)
        .flat_map(|p| std::fs::read_dir(p.path()).into_iter().flatten())
        .filter_map(Result::ok)
        .map(|f| format!("sha256:{}", f.file_name().to_string_lossy()))
        .collect()
}

/// Blob GETs the fake's front host saw for `digest`: one per upstream fetch.
fn blob_fetches(fake: &FakeUpstream, digest: &str) -> usize {
    fake.hits_on(Host::Front, Method::GET, digest)
}

/// Manifest GETs the fake's front host saw.
fn manifest_fetches(fake: &FakeUpstream) -> usize {
    fake.hits_on(Host::Front, Method::GET, "/manifests/")
}

// ---------------------------------------------------------------- the ring

/// The inside of nginx's `http {}` block for the ring (docs/scale-out.md
/// quotes it): `replicas` on a consistent-hash ring keyed by `key`
/// ([`REQUEST_URI`] or [`PATH`]).
fn ring_http(port: u16, key: &str, replicas: &[String]) -> String {
    let servers: String = replicas
        .iter()
        .map(|r| format!("        server {r};\n"))
        .collect();
    format!(
        r#"    upstream regcache {{
        # One URI, one replica: each blob URI is fetched and stored once.
        # `consistent` (ketama): a replica leaving moves only its own URIs.
        hash {key} consistent;
{servers}        # Idle connections to the replicas (after the balancing method).
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://regcache;
            # Keep-alive to the replicas needs HTTP/1.1 and no Connection header.
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # Stream blobs as the replica sends them; no temp files in nginx.
            proxy_buffering off;
            # A dead replica (refused, timed out) is skipped for the next one
            # on the ring, before any byte went to the client.
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 300s;
        }}
    }}"#
    )
}

/// The replicas and nginx in front of them, with what has been sent so far.
#[derive(Debug)]
struct Ring {
    replicas: Vec<Regcache>,
    nginx: Nginx,
    key: &'static str,
    /// GETs sent per URI, to know when the access logs have caught up.
    sent: HashMap<String, usize>,
}

impl Ring {
    fn start(upstream: &str, key: &'static str) -> Ring {
        let replicas: Vec<_> = (0..3).map(|_| Regcache::with_upstream(upstream)).collect();
        let hosts: Vec<_> = replicas.iter().map(Regcache::host).collect();
        let nginx = Nginx::start(|port| ring_http(port, key, &hosts), "/healthz");
        Ring {
            replicas,
            nginx,
            key,
            sent: HashMap::new(),
        }
    }

    /// A new nginx whose ring lists only `keep` (the operator took a replica
    /// out of nginx.conf); the old one is stopped.
    fn restart_nginx_with(&mut self, keep: &[usize]) {
        let hosts: Vec<_> = keep.iter().map(|&i| self.replicas[i].host()).collect();
        let key = self.key;
        self.nginx = Nginx::start(|port| ring_http(port, key, &hosts), "/healthz");
    }

    /// One round of [`pull_all`] through nginx, waiting for the logs after it.
    async fn round(&mut self, image: &Image, queries: &[&str]) {
        pull_all(&self.nginx.url(), image, queries).await;
        for (uri, _) in queries.iter().flat_map(|q| uris(image, q)) {
            *self.sent.entry(uri).or_default() += CLIENTS;
        }
        let all: Vec<_> = self.replicas.iter().collect();
        settle_counts(&all, &self.sent).await;
    }

    /// URI → the replicas that served it since `since` (a [`Ring::snapshot`]).
    fn routes(&self, since: &[HashMap<String, usize>]) -> BTreeMap<String, BTreeSet<usize>> {
        let mut routes: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            for (uri, n) in served(replica) {
                if n > since[i].get(&uri).copied().unwrap_or(0) {
                    routes.entry(uri).or_default().insert(i);
                }
            }
        }
        routes
    }

    /// Every replica's access-log counts now.
    fn snapshot(&self) -> Vec<HashMap<String, usize>> {
        self.replicas.iter().map(served).collect()
    }

    fn stored(&self) -> Vec<BTreeSet<String>> {
        self.replicas.iter().map(|r| stored(r.data_dir())).collect()
    }
}

/// Each URI of `routes` went to exactly one replica (the ring was stable);
/// returns which.
#[track_caller]
fn one_replica_each(routes: &BTreeMap<String, BTreeSet<usize>>) -> BTreeMap<String, usize> {
    routes
        .iter()
        .map(|(uri, rs)| {
            assert_eq!(rs.len(), 1, "{uri} went to replicas {rs:?}");
            (uri.clone(), *rs.first().expect("one"))
        })
        .collect()
}

/// The ring's bookkeeping, true after every round: a replica's data directory
/// holds exactly the content of the URIs nginx sent it (`routes`, over the
/// whole test), and the fake saw one blob GET per replica holding that blob.
#[track_caller]
fn assert_accounting(ring: &Ring, fake: &FakeUpstream, image: &Image, uris: &[(String, String)]) {
    let routes = ring.routes(&vec![HashMap::new(); ring.replicas.len()]);
    let stored = ring.stored();
    for (i, held) in stored.iter().enumerate() {
        let sent_here: BTreeSet<_> = uris
            .iter()
            .filter(|(uri, _)| routes.get(uri).is_some_and(|rs| rs.contains(&i)))
            .map(|(_, d)| d.clone())
            .collect();
        assert_eq!(held, &sent_here, "replica {i} holds other than its URIs");
    }
    for digest in image.blobs().map(|b| b.digest.as_str()) {
        let holders = stored.iter().filter(|s| s.contains(digest)).count();
        assert_eq!(blob_fetches(fake, digest), holders, "fetches of {digest}");
    }
    let manifest_holders = stored
        .iter()
        .filter(|s| s.contains(&image.manifest_digest))
        .count();
    assert_eq!(manifest_fetches(fake), manifest_holders);
}

fn total_blob_fetches(fake: &FakeUpstream, image: &Image) -> usize {
    image.blobs().map(|b| blob_fetches(fake, &b.digest)).sum()
}

fn report(phase: &str, ring: &Ring, fake: &FakeUpstream, image: &Image) {
    let per_replica: Vec<_> = ring.stored().iter().map(BTreeSet::len).collect();
    eprintln!(
        "ring {phase}: {} blobs; upstream blob GETs {}, manifest GETs {}, all requests {}; \
         content files per replica {per_replica:?}",
        image.blobs().count(),
        total_blob_fetches(fake, image),
        manifest_fetches(fake),
        fake.total_hits(),
    );
}

/// Three replicas behind `hash $request_uri consistent`: one fetch per blob
/// URI, each stored once, warm pulls ask nothing; `?ns=` URIs hash on their
/// own; a dead replica's URIs move (and only its blobs are fetched again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_of_three_behind_nginx_fetches_each_uri_once() {
    let fake = FakeUpstream::k8s_like();
    let image = seed(&fake);
    let mut ring = Ring::start(&fake.url(), REQUEST_URI);
    eprintln!("ring: nginx.conf\n{}", ring.nginx.conf());
    let plain = uris(&image, "");
    let with_ns = uris(&image, NS);
    let all_uris: Vec<_> = plain.iter().chain(&with_ns).cloned().collect();

    // Cold, then warm, without ns: one fetch per blob across the three.
    ring.round(&image, &[""]).await;
    ring.round(&image, &[""]).await;
    for digest in image.blobs().map(|b| b.digest.as_str()) {
        assert_eq!(blob_fetches(&fake, digest), 1, "{digest}");
    }
    assert_eq!(manifest_fetches(&fake), 1);
    let none = vec![HashMap::new(); 3];
    let routed = one_replica_each(&ring.routes(&none));
    assert_accounting(&ring, &fake, &image, &all_uris);
    let spread = routed.values().collect::<BTreeSet<_>>().len();
    assert!(spread >= 2, "every URI hashed to one replica: {routed:?}");
    let files: usize = ring.stored().iter().map(BTreeSet::len).sum();
    assert_eq!(files, image.blobs().count() + 1, "each blob stored once");
    report("cold+warm, no ns", &ring, &fake, &image);

    // containerd's `?ns=` makes other URIs: each hashes on its own, so a blob
    // whose ns URI lands on another replica is fetched (and stored) again.
    let before = total_blob_fetches(&fake, &image);
    ring.round(&image, &["", NS]).await;
    ring.round(&image, &["", NS]).await;
    let routed = one_replica_each(&ring.routes(&none));
    assert_accounting(&ring, &fake, &image, &all_uris);
    // Skip the manifest: count blobs.
    let moved = with_ns
        .iter()
        .zip(&plain)
        .skip(1)
        .filter(|((ns_uri, _), (uri, _))| routed[ns_uri] != routed[uri])
        .count();
    assert_eq!(total_blob_fetches(&fake, &image), before + moved);
    eprintln!("ring: {moved} blob(s) whose ?ns= URI hashed to another replica than the plain URI");
    report("after ?ns= pulls", &ring, &fake, &image);

    // Warm: nothing upstream at all.
    let requests = fake.total_hits();
    ring.round(&image, &["", NS]).await;
    assert_eq!(fake.total_hits(), requests, "a warm pull went upstream");

    replica_goes_away(&mut ring, &fake, &image, &all_uris).await;
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// Kills the replica holding the most content and pulls again: every pull
/// succeeds, the URIs of the others stay where they were, the dead one's URIs
/// move, and only blobs the dead one held are fetched again.
async fn replica_goes_away(
    ring: &mut Ring,
    fake: &FakeUpstream,
    image: &Image,
    uris: &[(String, String)],
) {
    let stored_before = ring.stored();
    let dead = (0..3)
        .max_by_key(|&i| stored_before[i].len())
        .expect("replicas");
    let before: HashMap<_, _> = image
        .blobs()
        .map(|b| (b.digest.clone(), blob_fetches(fake, &b.digest)))
        .collect();
    let old_routes = one_replica_each(&ring.routes(&vec![HashMap::new(); 3]));
    ring.replicas[dead].stop();
    let since = ring.snapshot();
    ring.round(image, &["", NS]).await;
    let new_routes = one_replica_each(&ring.routes(&since));
    for (uri, was) in &old_routes {
        let now = new_routes[uri];
        assert_ne!(now, dead, "{uri} still went to the dead replica");
        if *was != dead {
            assert_eq!(now, *was, "{uri} moved although its replica lives");
        }
    }
    assert_accounting(ring, fake, image, uris);
    for digest in image.blobs().map(|b| b.digest.as_str()) {
        if !stored_before[dead].contains(digest) {
            assert_eq!(blob_fetches(fake, digest), before[digest], "{digest}");
        }
    }
    let refetched: usize = image
        .blobs()
        .map(|b| blob_fetches(fake, &b.digest) - before[&b.digest])
        .sum();
    let moved = old_routes.values().filter(|&&r| r == dead).count();
    eprintln!(
        "ring: replica {dead} killed ({} content files, {moved} of {} URIs); \
         blobs fetched again: {refetched}",
        stored_before[dead].len(),
        old_routes.len()
    );
    report("after a replica died", ring, fake, image);
    let requests = fake.total_hits();
    ring.round(image, &["", NS]).await;
    assert_eq!(fake.total_hits(), requests, "a warm pull went upstream");
    ring_shrinks(ring, fake, image, dead, &new_routes).await;
}

/// The operator takes the dead replica out of nginx.conf. With `consistent`
/// its ring points go and nothing else changes: every URI stays where the
/// failover had put it, and the upstream is asked nothing. (A plain `hash`
/// maps keys modulo the number of servers, so most of them would move.)
async fn ring_shrinks(
    ring: &mut Ring,
    fake: &FakeUpstream,
    image: &Image,
    dead: usize,
    routes: &BTreeMap<String, usize>,
) {
    let live: Vec<_> = (0..3).filter(|&i| i != dead).collect();
    ring.restart_nginx_with(&live);
    let requests = fake.total_hits();
    let since = ring.snapshot();
    ring.round(image, &["", NS]).await;
    let now = one_replica_each(&ring.routes(&since));
    let moved: Vec<_> = routes.iter().filter(|(uri, r)| now[*uri] != **r).collect();
    eprintln!(
        "ring: replica {dead} removed from nginx.conf: {} URIs moved, upstream requests {}",
        moved.len(),
        fake.total_hits() - requests
    );
    assert!(moved.is_empty(), "URIs moved: {moved:?}");
    assert_eq!(
        fake.total_hits(),
        requests,
        "the smaller ring went upstream"
    );
}

/// Keyed by the path alone, `?ns=` and plain requests of one blob meet on one
/// replica: one fetch per blob whatever mix of clients pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_keyed_by_path_fetches_once_with_and_without_ns() {
    let fake = FakeUpstream::k8s_like();
    let image = seed(&fake);
    let mut ring = Ring::start(&fake.url(), PATH);
    ring.round(&image, &["", NS]).await;
    ring.round(&image, &["", NS]).await;
    for digest in image.blobs().map(|b| b.digest.as_str()) {
        assert_eq!(blob_fetches(&fake, digest), 1, "{digest}");
    }
    assert_eq!(manifest_fetches(&fake), 1);
    let files: usize = ring.stored().iter().map(BTreeSet::len).sum();
    assert_eq!(files, image.blobs().count() + 1, "each blob stored once");
    report("keyed by $uri, ?ns= and plain", &ring, &fake, &image);
    let requests = fake.total_hits();
    ring.round(&image, &["", NS]).await;
    assert_eq!(fake.total_hits(), requests, "a warm pull went upstream");
}

// --------------------------------------------------------------- the tiers

/// The config.toml docs/scale-out.md gives the regional (`url` = the real
/// registry) and the edges (`url` = the regional): one upstream, the default, so
/// the table is closed and nothing bypasses the tier. `--listen` and `--data`
/// override the first two keys in the test.
fn tier_config(url: &str) -> String {
    format!(
        r#"[server]
listen = "0.0.0.0:5000"

[storage]
data_dir = "/var/lib/regcache"
max_size = "50GiB"

[[upstream]]
name = "registry.k8s.io"
url = "{url}"
default = true
aliases = ["k8s.gcr.io"]
"#
    )
}

fn tier(url: &str) -> Regcache {
    Regcache::builder().config_toml(tier_config(url)).start()
}

/// GETs of each of `uris` the regional answered.
fn regional_gets(regional: &Regcache, uris: &[(String, String)]) -> Vec<usize> {
    let served = served(regional);
    uris.iter()
        .map(|(uri, _)| served.get(uri).copied().unwrap_or(0))
        .collect()
}

/// Pulls through `edge` (all clients at once) and waits for its access log.
async fn pull_through(edge: &Regcache, image: &Image, query: &str, sent: usize) {
    pull_all(&edge.url(), image, &[query]).await;
    settle(&[edge], &uris(image, query), sent).await;
}

/// A regional regcache in front of the fake, edge regcaches in front of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_fill_from_a_regional_that_fills_from_the_upstream() {
    let fake = FakeUpstream::k8s_like();
    let image = seed(&fake);
    let regional = tier(&fake.url());
    let edges: Vec<_> = (0..2).map(|_| tier(&regional.url())).collect();
    // What the regional is asked: plain paths, whatever the edge's client sent.
    let plain = uris(&image, "");
    let all: Vec<_> = image.blobs().map(|b| b.digest.clone()).collect();

    // Edge 1 with containerd's ns, edge 2 without: one fetch per blob upstream,
    // one request per URI per edge at the regional.
    pull_through(&edges[0], &image, NS, CLIENTS).await;
    settle(&[&regional], &plain, 1).await;
    pull_through(&edges[1], &image, "", CLIENTS).await;
    settle(&[&regional], &plain, 2).await;
    for digest in &all {
        assert_eq!(blob_fetches(&fake, digest), 1, "{digest}");
    }
    assert_eq!(manifest_fetches(&fake), 1);
    assert_eq!(regional_gets(&regional, &plain), vec![2; plain.len()]);
    assert!(
        served(&regional).keys().all(|path| !path.contains("ns=")),
        "an edge forwarded ns to the regional"
    );
    for edge in &edges {
        let held = stored(edge.data_dir());
        assert!(all.iter().all(|d| held.contains(d)), "edge missing blobs");
    }
    eprintln!(
        "tiers: {} blobs; upstream blob GETs {}, manifest GETs {}; regional GETs per URI {:?}",
        all.len(),
        total_blob_fetches(&fake, &image),
        manifest_fetches(&fake),
        regional_gets(&regional, &plain)
    );

    // Warm edges ask the regional nothing.
    let regional_seen = served(&regional);
    pull_through(&edges[0], &image, NS, 2 * CLIENTS).await;
    pull_through(&edges[1], &image, "", 2 * CLIENTS).await;
    assert_eq!(
        served(&regional),
        regional_seen,
        "a warm edge asked the regional"
    );

    tiers_when_things_go_down(&fake, regional, edges, &image).await;
}

/// The fake down: both edges serve what they hold, and a third edge that never
/// pulled fills from the regional's cache. Then the regional down too: every
/// edge still serves the image.
async fn tiers_when_things_go_down(
    fake: &FakeUpstream,
    mut regional: Regcache,
    edges: Vec<Regcache>,
    image: &Image,
) {
    let plain = uris(image, "");
    fake.set_down(true);
    let upstream_seen = fake.total_hits();
    pull_through(&edges[0], image, NS, 3 * CLIENTS).await;
    pull_through(&edges[1], image, "", 3 * CLIENTS).await;
    let third = tier(&regional.url());
    pull_through(&third, image, NS, CLIENTS).await;
    settle(&[&regional], &plain, 3).await;
    assert_eq!(regional_gets(&regional, &plain), vec![3; plain.len()]);
    assert_eq!(
        fake.total_hits(),
        upstream_seen,
        "the fake was asked while down"
    );
    eprintln!(
        "tiers: upstream down, a new edge filled from the regional: regional GETs per URI {:?}",
        regional_gets(&regional, &plain)
    );

    regional.stop();
    for (edge, sent) in [(&edges[0], 4 * CLIENTS), (&third, 2 * CLIENTS)] {
        pull_through(edge, image, NS, sent).await;
    }
    pull_through(&edges[1], image, "", 4 * CLIENTS).await;
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// An edge reaches every registry of one regional: each of its `[[upstream]]`
/// tables points at the regional's path-prefix route for that registry
/// (`http://regional/v2/ghcr.io`), and the regional asks the right upstream,
/// token flow included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reaches_every_registry_of_its_regional_by_path_prefix() {
    let k8s = FakeUpstream::k8s_like();
    let ghcr = FakeUpstream::k8s_like_with_token();
    let pause = crate::support::seed_image(&k8s, "pause", "3.9", 3000);
    let tool = crate::support::seed_image(&ghcr, "org/tool", "v1", 5000);
    let upstreams = |k8s_url: &str, ghcr_url: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = \"./unused\"\n\
             [[upstream]]\nname = \"registry.k8s.io\"\nurl = \"{k8s_url}\"\ndefault = true\n\
             aliases = [\"k8s.gcr.io\"]\n\
             [[upstream]]\nname = \"ghcr.io\"\nurl = \"{ghcr_url}\"\n"
        )
    };
    let regional = Regcache::builder()
        .config_toml(upstreams(&k8s.url(), &ghcr.url()))
        .start();
    let r = regional.url();
    let edge = Regcache::builder()
        .config_toml(upstreams(
            &format!("{r}/v2/registry.k8s.io"),
            &format!("{r}/v2/ghcr.io"),
        ))
        .start();
    let e = edge.url();
    for _ in 0..2 {
        for (path, image) in [
            ("pause", &pause),
            ("k8s.gcr.io/pause", &pause),
            ("ghcr.io/org/tool", &tool),
        ] {
            let manifest =
                send(client().get(format!("{e}/v2/{path}/manifests/{}", image.tag))).await;
            assert_eq!(manifest.ok_body(), &image.manifest, "{path}");
            let layer =
                send(client().get(format!("{e}/v2/{path}/blobs/{}", image.layer().digest))).await;
            assert_eq!(layer.ok_body(), &image.layer().bytes, "{path}");
        }
        let tool_by_ns = format!("{e}/v2/org/tool/blobs/{}?ns=ghcr.io", tool.layer().digest);
        assert_eq!(
            send(client().get(tool_by_ns)).await.ok_body(),
            &tool.layer().bytes
        );
    }
    for (fake, image) in [(&k8s, &pause), (&ghcr, &tool)] {
        assert_eq!(
            fake.hits_on(Host::Front, Method::GET, &image.layer().digest),
            1
        );
        assert_eq!(
            fake.count(
                |s| s.path.contains("/v2/ghcr.io/") || s.path.contains("/v2/registry.k8s.io/")
            ),
            0
        );
        fake.assert_no_violations();
    }
    assert_eq!(
        k8s.hits(&tool.layer().digest) + ghcr.hits(&pause.layer().digest),
        0
    );
    // The regional was asked by path prefix, once per blob (its access log is
    // written when each body ends, so wait for the lines).
    let asked_once = |prefix: &str, digest: &str| {
        served(&regional).get(&format!("/v2/{prefix}/blobs/{digest}")) == Some(&1)
    };
    wait_for("the regional's log", || {
        asked_once("ghcr.io/org/tool", &tool.layer().digest)
            && asked_once("registry.k8s.io/pause", &pause.layer().digest)
    })
    .await;
}
