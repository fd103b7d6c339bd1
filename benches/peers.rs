//! Measures regcache side by side with its peers in one run: the origin
//! registry itself (`plain`, Debian's docker-registry), docker-registry in
//! proxy mode (`proxy`) and an nginx `proxy_cache` mirror (`nginx`). Warm
//! manifest GET/HEAD and small-blob requests/s, warm 6 MiB blob throughput, cold
//! 1 GiB pulls (through regcache and the peers versus straight from the origin)
//! and a herd of 50 clients pulling the same cold 1 GiB blob through regcache.
//! Rounds interleave the peers so machine noise hits all of them alike; it
//! prints medians, regcache/peer ratios and a table of targets, as markdown.
//! With `--tls`, regcache and nginx are also measured warm over HTTPS
//! (`regcache-tls`, `nginx-tls`; a CA made for the run) beside their plain
//! HTTP selves, and a table sets each over TLS against itself over plain.
//!
//! ```sh
//! cargo bench --bench peers                       # defaults: 5 warm rounds of 3 s, 3 cold rounds, 200 MiB/s WAN
//! cargo bench --bench peers -- --rounds 3 --duration 2 --wan-mibps 0 --herd 10
//! cargo bench --bench peers -- --help
//! cargo bench --bench peers -- --baseline /tmp/regcache-before   # a second regcache build as a peer
//! cargo bench --bench peers -- --tls --warm-only --warm-peers nginx,regcache   # TLS versus plain
//! ```
//!
//! Every server it starts listens on 127.0.0.1 and every mirror's upstream is
//! an in-process relay in front of the local origin: it never touches the
//! internet. Every process it starts is killed and waited for when its guard
//! drops, also when the bench panics. It asserts no performance; it panics only
//! when a peer fails to start or answers wrong bytes or digests.

#[path = "peers/image.rs"]
mod image;
#[path = "peers/load.rs"]
mod load;
#[path = "peers/procs.rs"]
mod procs;
#[path = "peers/pull.rs"]
mod pull;
#[path = "peers/relay.rs"]
mod relay;
#[path = "peers/report.rs"]
mod report;
#[path = "peers/tls.rs"]
mod tls;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;

use image::{ACCEPT, Seeded};
use procs::{Proc, Restartable};
use relay::Relay;
use report::{Samples, Target, fmt, fmt_ratio};
use tls::BenchCert;

/// Command-line options (after `cargo bench --bench peers --`).
#[derive(Debug, Parser)]
#[command(about = "regcache versus docker-registry, its proxy mode and nginx, on loopback")]
struct Args {
    /// Rounds of every warm measurement (peers interleaved in each round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of load per warm measurement and peer.
    #[arg(long, default_value_t = 3)]
    duration: u64,
    /// Concurrent connections of the warm loads.
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Rounds of the cold 1 GiB pulls (each restarts three caches and moves
    /// about 6 GiB through the relay, ~2 minutes a round on 2 busy cores).
    #[arg(long, default_value_t = 3)]
    cold_rounds: usize,
    /// Rate of the shaped "WAN" between mirrors and origin, MiB/s; 0 measures
    /// only unshaped loopback.
    #[arg(long, default_value_t = 200.0)]
    wan_mibps: f64,
    /// Clients in the regcache herd.
    #[arg(long, default_value_t = 50)]
    herd: usize,
    /// Clients in a herd against nginx and proxy too (0: skip; each proxy
    /// client fetches its own copy through the shaped WAN, so this is slow).
    #[arg(long, default_value_t = 0)]
    peer_herd: usize,
    /// Skip the cold pulls through nginx and proxy.
    #[arg(long)]
    no_peer_cold: bool,
    /// Size of the big blob in MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: u64,
    /// Another regcache binary (e.g. built from an earlier commit) measured
    /// as the peer `baseline` in the warm and cold phases, interleaved with
    /// the build under test: before/after figures from one run.
    #[arg(long, value_name = "BIN")]
    baseline: Option<std::path::PathBuf>,
    /// Also measure regcache and nginx warm over HTTPS (`regcache-tls`,
    /// `nginx-tls`), each beside its plain HTTP self.
    #[arg(long)]
    tls: bool,
    /// Only these warm peers (comma-separated, from plain, proxy, nginx,
    /// baseline, regcache); with `--tls`, their TLS twins come along.
    #[arg(long, value_delimiter = ',', value_name = "PEERS")]
    warm_peers: Vec<String>,
    /// Stop after the warm phase (no cold pulls, no herd).
    #[arg(long)]
    warm_only: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const WARM_PEERS: [&str; 4] = ["plain", "proxy", "nginx", "regcache"];
const M_GET: &str = "manifest GET req/s";
const M_HEAD: &str = "manifest HEAD req/s";
const SMALL: &str = "4 KiB blob GET req/s";
const MEDIUM: &str = "6 MiB blob GET GB/s";
// The server's CPU per unit of work in the same loads (lower is better; the
// load generator's CPU is not counted).
const M_GET_CPU: &str = "manifest GET server CPU-µs/req";
const SMALL_CPU: &str = "4 KiB blob GET server CPU-µs/req";
const MEDIUM_CPU: &str = "6 MiB blob GET server CPU-s/GB";

/// The warm peers measured: the four, `baseline` when given, the TLS twins
/// of nginx and regcache with `--tls`; only those named in `--warm-peers`
/// (and their twins) when it is given.
fn warm_peers(args: &Args) -> Vec<&'static str> {
    let mut peers = WARM_PEERS.to_vec();
    if args.baseline.is_some() {
        peers.insert(3, "baseline");
    }
    if !args.warm_peers.is_empty() {
        peers.retain(|p| args.warm_peers.iter().any(|w| w == p));
    }
    if args.tls {
        let twins: Vec<&'static str> = TLS_TWINS
            .iter()
            .filter(|(plain, _)| peers.contains(plain))
            .map(|(_, twin)| *twin)
            .collect();
        peers.extend(twins);
    }
    peers
}

/// Each peer measured over TLS with `--tls`, and its plain HTTP self.
const TLS_TWINS: [(&str, &str); 2] = [("nginx", "nginx-tls"), ("regcache", "regcache-tls")];

/// Everything the measurements talk to.
struct Peers {
    plain: Proc,
    relay: Relay,
    regcache: Restartable,
    baseline: Option<Restartable>,
    proxy: Restartable,
    /// With `--tls`, also listening for HTTPS (`nginx-tls`).
    nginx: Restartable,
    /// regcache serving HTTPS only (`--tls`).
    regcache_tls: Option<Restartable>,
    /// The CA of the TLS peers' certificate (`--tls`).
    cert: Option<BenchCert>,
}

/// Where a warm peer answers.
struct Endpoint {
    /// `http://` or `https://` and the address.
    url: String,
    /// The address the raw HEAD generator dials (plain HTTP only).
    plain_addr: Option<std::net::SocketAddr>,
}

impl Peers {
    fn warm(&self, name: &str) -> &Proc {
        match name {
            "plain" => &self.plain,
            "proxy" => self.proxy.running(),
            "nginx" | "nginx-tls" => self.nginx.running(),
            "regcache" => self.regcache.running(),
            "regcache-tls" => self.regcache_tls().running(),
            "baseline" => self.baseline().running(),
            _ => unreachable!("peer {name}"),
        }
    }

    fn endpoint(&self, name: &str) -> Endpoint {
        let proc = self.warm(name);
        match name {
            "nginx-tls" => Endpoint {
                url: proc.tls_url().expect("nginx started with --tls"),
                plain_addr: None,
            },
            "regcache-tls" => Endpoint {
                url: proc.url(),
                plain_addr: None,
            },
            _ => Endpoint {
                url: proc.url(),
                plain_addr: Some(proc.addr()),
            },
        }
    }

    fn regcache_tls(&self) -> &Restartable {
        self.regcache_tls.as_ref().expect("--tls was given")
    }

    fn baseline(&self) -> &Restartable {
        self.baseline.as_ref().expect("--baseline was given")
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let root = tempfile::tempdir().expect("temp dir");
    eprintln!("peers: working in {}", root.path().display());
    print_machine(&args);

    let plain = procs::docker_registry(&root.path().join("plain"), None);
    let seeded = runtime.block_on(image::seed(
        &pull::client(),
        &plain.url(),
        args.big_mib << 20,
    ));
    eprintln!(
        "peers: seeded {} ({:.0?})",
        seeded.big_digest,
        started.elapsed()
    );
    let relay = Relay::start(plain.addr());
    let under_test = std::path::PathBuf::from(env!("CARGO_BIN_EXE_regcache"));
    let baseline = args
        .baseline
        .clone()
        .map(|bin| Restartable::regcache(bin, root.path().join("baseline"), relay.addr(), None));
    let cert = args
        .tls
        .then(|| BenchCert::create(&root.path().join("cert")));
    let regcache_tls = cert.clone().map(|cert| {
        Restartable::regcache(
            under_test.clone(),
            root.path().join("regcache-tls"),
            relay.addr(),
            Some(cert),
        )
    });
    let peers = Peers {
        regcache: Restartable::regcache(
            under_test,
            root.path().join("regcache"),
            relay.addr(),
            None,
        ),
        baseline,
        proxy: Restartable::proxy(root.path().join("proxy"), relay.addr()),
        nginx: Restartable::nginx(root.path().join("nginx"), relay.addr(), cert.clone()),
        regcache_tls,
        cert,
        plain,
        relay,
    };
    let mut peers = peers;

    let mut samples = Samples::default();
    runtime.block_on(warm_phase(
        &args,
        &peers,
        &seeded,
        root.path(),
        &mut samples,
    ));
    eprintln!("peers: warm phase done ({:.0?})", started.elapsed());
    samples.print_table(
        &format!(
            "Warm, {} connections, {} rounds × {} s",
            args.conns, args.rounds, args.duration
        ),
        &[
            M_GET, M_HEAD, SMALL, MEDIUM, M_GET_CPU, SMALL_CPU, MEDIUM_CPU,
        ],
        &warm_peers(&args),
    );
    if args.tls {
        let pairs: Vec<(&str, &str)> = TLS_TWINS
            .into_iter()
            .filter(|(plain, _)| warm_peers(&args).contains(plain))
            .collect();
        samples.print_pairs(
            "Warm over TLS versus plain HTTP (same run)",
            &[M_GET, SMALL, MEDIUM, M_GET_CPU, SMALL_CPU, MEDIUM_CPU],
            &pairs,
        );
    }
    if args.warm_only {
        println!("\nwhole run: {:.0?}", started.elapsed());
        drop(peers);
        runtime.shutdown_timeout(Duration::from_secs(5));
        return;
    }

    let cold_peers = cold_peer_names(&args);
    runtime.block_on(cold_phase(&args, &mut peers, &seeded, &mut samples));
    eprintln!("peers: cold phase done ({:.0?})", started.elapsed());
    samples.print_table(
        &format!(
            "Cold {} MiB pull, {} rounds",
            args.big_mib, args.cold_rounds
        ),
        &cold_measures(&args),
        &cold_peers,
    );

    let herd = runtime.block_on(herd_phase(&args, &mut peers, &seeded));
    eprintln!("peers: herd done ({:.0?})", started.elapsed());
    print_targets(&args, &samples, &herd, seeded.big_size);
    println!("\nwhole run: {:.0?}", started.elapsed());
    drop(peers);
    runtime.shutdown_timeout(Duration::from_secs(5));
}

fn print_machine(args: &Args) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("## regcache vs peers\n");
    println!("machine: {cores} cores, {cpu}, Linux {}", kernel.trim());
    println!("{args:?}");
}

// ---- warm ----

async fn warm_phase(
    args: &Args,
    peers: &Peers,
    seeded: &Seeded,
    dir: &Path,
    samples: &mut Samples,
) {
    let names = warm_peers(args);
    let ca = peers.cert.as_ref().map(|c| c.ca_pem.as_str());
    for name in &names {
        check_peer(&peers.endpoint(name).url, ca, seeded).await;
    }
    let duration = Duration::from_secs(args.duration);
    for round in 0..args.rounds {
        eprintln!("peers: warm round {}/{}", round + 1, args.rounds);
        for name in rotated(&names, round) {
            let endpoint = peers.endpoint(name);
            let pid = peers.warm(name).pid();
            let base = endpoint.url;
            let manifest = format!("{base}{}", Seeded::manifest_path());
            let (load, cpu) = with_cpu(pid, || {
                load::wrk(dir, &manifest, ACCEPT, args.conns, duration)
            });
            record(samples, M_GET, name, load, load.requests_per_s());
            samples.add(M_GET_CPU, name, cpu * 1e6 / load.requests.max(1) as f64);
            // The raw HEAD generator speaks plain HTTP only.
            if let Some(addr) = endpoint.plain_addr {
                let load = load::raw(
                    addr,
                    "HEAD",
                    &Seeded::manifest_path(),
                    ACCEPT,
                    args.conns,
                    duration,
                )
                .await;
                record(samples, M_HEAD, name, load, load.requests_per_s());
            }
            let small = format!("{base}{}", Seeded::blob_path(&seeded.small_digest));
            let (load, cpu) =
                with_cpu(pid, || load::wrk(dir, &small, ACCEPT, args.conns, duration));
            record(samples, SMALL, name, load, load.requests_per_s());
            samples.add(SMALL_CPU, name, cpu * 1e6 / load.requests.max(1) as f64);
            let medium = format!("{base}{}", Seeded::blob_path(&seeded.medium_digest));
            let (load, cpu) = with_cpu(pid, || {
                load::wrk(dir, &medium, ACCEPT, args.conns, duration)
            });
            record(samples, MEDIUM, name, load, load.gb_per_s());
            samples.add(MEDIUM_CPU, name, cpu / (load.bytes.max(1) as f64 / 1e9));
        }
    }
}

/// Runs a load and returns it with the CPU seconds the server `pid` (and its
/// children) spent meanwhile.
fn with_cpu(pid: u32, load: impl FnOnce() -> load::Load) -> (load::Load, f64) {
    let before = procs::cpu_seconds(pid);
    let load = load();
    (load, procs::cpu_seconds(pid) - before)
}

fn record(samples: &mut Samples, measure: &str, peer: &str, load: load::Load, value: f64) {
    if load.errors > 0 {
        eprintln!(
            "peers: {peer} {measure}: {} errors in {} requests",
            load.errors, load.requests
        );
    }
    samples.add(measure, peer, value);
}

/// The peers in a different order each round (so none is always first after
/// a pause, or always last).
fn rotated<'a>(peers: &[&'a str], round: usize) -> Vec<&'a str> {
    let mut v = peers.to_vec();
    let len = v.len();
    v.rotate_left(round % len);
    v
}

/// Fills `base`'s cache with what the warm loads request and checks every
/// answer: manifest bytes and digest header (GET and HEAD), blob digests.
/// An `https://` base must present a certificate of `ca`.
async fn check_peer(base: &str, ca: Option<&str>, seeded: &Seeded) {
    let http = match ca {
        Some(ca) if base.starts_with("https://") => pull::client_trusting(ca),
        _ => pull::client(),
    };
    let url = format!("{base}{}", Seeded::manifest_path());
    for _ in 0..2 {
        let get = http
            .get(&url)
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("GET manifest");
        assert_eq!(get.status(), 200, "GET {url}");
        check_digest_header(&url, get.headers(), &seeded.manifest_digest);
        let body = get.bytes().await.expect("manifest body");
        assert_eq!(body, seeded.manifest, "manifest bytes from {url}");
        let head = http
            .head(&url)
            .header("accept", ACCEPT)
            .send()
            .await
            .expect("HEAD manifest");
        assert_eq!(head.status(), 200, "HEAD {url}");
        check_digest_header(&url, head.headers(), &seeded.manifest_digest);
        let length = head
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            length,
            Some(seeded.manifest.len().to_string().as_str()),
            "HEAD {url} length"
        );
        for (digest, bytes) in [
            (&seeded.small_digest, &seeded.small),
            (&seeded.medium_digest, &seeded.medium),
        ] {
            let url = format!("{base}{}", Seeded::blob_path(digest));
            let get = http
                .get(&url)
                .header("accept", ACCEPT)
                .send()
                .await
                .expect("GET blob");
            assert_eq!(get.status(), 200, "GET {url}");
            let body = get.bytes().await.expect("blob body");
            assert!(
                body == *bytes && image::sha256(&body) == *digest,
                "blob bytes from {url}"
            );
        }
    }
}

/// Docker-Content-Digest, when present, must name the content.
fn check_digest_header(url: &str, headers: &reqwest::header::HeaderMap, digest: &str) {
    if let Some(value) = headers.get("docker-content-digest") {
        assert_eq!(
            value.to_str().ok(),
            Some(digest),
            "Docker-Content-Digest from {url}"
        );
    }
}

// ---- cold ----

fn cold_peer_names(args: &Args) -> Vec<&'static str> {
    let mut names = if args.no_peer_cold {
        vec!["direct", "regcache"]
    } else {
        vec!["direct", "proxy", "nginx", "regcache"]
    };
    if args.baseline.is_some() {
        names.insert(names.len() - 1, "baseline");
    }
    names
}

/// The WAN shapings measured: unshaped loopback, then the shaped rate.
fn shapings(args: &Args) -> Vec<Option<f64>> {
    let mut v = vec![None];
    if args.wan_mibps > 0.0 {
        v.push(Some(args.wan_mibps));
    }
    v
}

fn shaping_label(shaping: Option<f64>) -> String {
    shaping.map_or("loopback".to_owned(), |m| format!("{m} MiB/s"))
}

fn total_measure(shaping: Option<f64>) -> String {
    format!("total s ({})", shaping_label(shaping))
}

fn first_byte_measure(shaping: Option<f64>) -> String {
    format!("first byte ms ({})", shaping_label(shaping))
}

fn upstream_measure(shaping: Option<f64>) -> String {
    format!("upstream bytes / blob ({})", shaping_label(shaping))
}

/// The cache's own CPU seconds for one cold pull (user + system, until its
/// upstream traffic settled); none for `direct`.
fn cpu_measure(shaping: Option<f64>) -> String {
    format!("server CPU s ({})", shaping_label(shaping))
}

/// How busy the whole machine was during a pull (all cores; 1.0 = every
/// core busy all the time): near 1.0, the pull is bounded by CPU, and doing
/// its steps side by side cannot make it faster.
fn busy_measure(shaping: Option<f64>) -> String {
    format!("machine busy fraction ({})", shaping_label(shaping))
}

fn cold_measures(args: &Args) -> Vec<&'static str> {
    shapings(args)
        .into_iter()
        .flat_map(|s| {
            [
                first_byte_measure(s),
                total_measure(s),
                upstream_measure(s),
                cpu_measure(s),
                busy_measure(s),
            ]
        })
        .map(|m| &*Box::leak(m.into_boxed_str()))
        .collect()
}

async fn cold_phase(args: &Args, peers: &mut Peers, seeded: &Seeded, samples: &mut Samples) {
    let rounds = args.cold_rounds;
    let names = cold_peer_names(args);
    let path = Seeded::blob_path(&seeded.big_digest);
    for round in 0..rounds {
        for shaping in shapings(args) {
            eprintln!(
                "peers: cold round {}/{rounds}, {}",
                round + 1,
                shaping_label(shaping)
            );
            for name in rotated(&names, round) {
                let base = cold_base(peers, name, shaping);
                let pid = cold_pid(peers, name);
                peers.relay.reset_bytes();
                let cpu_before = pid.map(procs::cpu_seconds);
                let machine_before = procs::machine_ticks();
                let pulled = pull::pull(&format!("{base}{path}"), seeded.big_size, false).await;
                let machine = procs::machine_ticks().busy_since(&machine_before);
                let upstream = settled_bytes(&peers.relay).await as f64 / seeded.big_size as f64;
                if let (Some(pid), Some(before)) = (pid, cpu_before) {
                    samples.add(
                        &cpu_measure(shaping),
                        name,
                        procs::cpu_seconds(pid) - before,
                    );
                }
                samples.add(&busy_measure(shaping), name, machine);
                samples.add(
                    &first_byte_measure(shaping),
                    name,
                    pulled.first_byte.as_secs_f64() * 1e3,
                );
                samples.add(&total_measure(shaping), name, pulled.total.as_secs_f64());
                samples.add(&upstream_measure(shaping), name, upstream);
                if round == 0 && shaping.is_none() {
                    verify_big(&format!("{base}{path}"), seeded).await;
                }
            }
        }
    }
    peers.relay.shape(None);
}

/// The relay's byte count once it has stopped moving for half a second. A
/// mirror may keep fetching after its client is done (docker-registry's proxy
/// mode fetches a second copy in the background to store it); that traffic
/// belongs to this peer, and must not slow down or be counted for the next.
async fn settled_bytes(relay: &Relay) -> u64 {
    let mut last = relay.down_bytes();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = relay.down_bytes();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Restarts `name` on an empty cache (nothing to do for `direct`), sets the
/// WAN shaping, and returns the base URL to pull from.
fn cold_base(peers: &mut Peers, name: &str, shaping: Option<f64>) -> String {
    // Restart unshaped: nginx's and proxy's readiness checks go through the relay.
    peers.relay.shape(None);
    let base = match name {
        "direct" => peers.relay.url(),
        "regcache" => restart(&mut peers.regcache),
        "baseline" => restart(peers.baseline.as_mut().expect("--baseline was given")),
        "proxy" => restart(&mut peers.proxy),
        "nginx" => restart(&mut peers.nginx),
        _ => unreachable!("peer {name}"),
    };
    peers.relay.shape(shaping);
    base
}

/// The process of a cold peer (the cache), none for `direct`.
fn cold_pid(peers: &Peers, name: &str) -> Option<u32> {
    let peer = match name {
        "regcache" => &peers.regcache,
        "baseline" => peers.baseline.as_ref()?,
        "proxy" => &peers.proxy,
        "nginx" => &peers.nginx,
        _ => return None,
    };
    Some(peer.running().pid())
}

fn restart(peer: &mut Restartable) -> String {
    peer.restart_cold();
    peer.running().url()
}

/// An untimed second GET of the big blob, hashed: the cached copy (or, for
/// `direct`, the origin through the relay) must have the right digest.
async fn verify_big(url: &str, seeded: &Seeded) {
    let pulled = pull::pull(url, seeded.big_size, true).await;
    assert_eq!(
        pulled.digest.as_deref(),
        Some(seeded.big_digest.as_str()),
        "digest of {url}"
    );
}

// ---- herd ----

#[derive(Debug)]
struct HerdResult {
    clients: usize,
    total: f64,
    upstream: f64,
    peak_rss: Option<u64>,
    shaping: Option<f64>,
}

async fn herd_phase(args: &Args, peers: &mut Peers, seeded: &Seeded) -> HerdResult {
    let shaping = (args.wan_mibps > 0.0).then_some(args.wan_mibps);
    let path = Seeded::blob_path(&seeded.big_digest);
    println!(
        "\n### Herd: clients start the same cold {} MiB GET at once ({})\n",
        args.big_mib,
        shaping_label(shaping)
    );
    report::print_row(&[
        "peer".into(),
        "clients".into(),
        "last client done s".into(),
        "fastest client s".into(),
        "slowest first byte ms".into(),
        "upstream bytes / blob".into(),
        "peak RSS MiB".into(),
    ]);
    report::print_row(&vec!["---".to_owned(); 7]);
    let mut result = None;
    let mut runs: Vec<(&str, usize)> = vec![("regcache", args.herd)];
    if args.peer_herd > 0 {
        runs.push(("nginx", args.peer_herd));
        runs.push(("proxy", args.peer_herd));
    }
    for (name, clients) in runs {
        eprintln!("peers: herd of {clients} against {name}");
        let base = cold_base(peers, name, shaping);
        peers.relay.reset_bytes();
        let herd = pull::herd(
            &format!("{base}{path}"),
            clients,
            seeded.big_size,
            &seeded.big_digest,
        )
        .await;
        let upstream = settled_bytes(&peers.relay).await as f64 / seeded.big_size as f64;
        // VmHWM of the server process (nginx: its master, not the workers).
        let pid = match name {
            "regcache" => peers.regcache.running().pid(),
            "nginx" => peers.nginx.running().pid(),
            _ => peers.proxy.running().pid(),
        };
        let rss = procs::peak_rss(pid);
        report::print_row(&[
            name.to_owned(),
            format!("{clients} ({} verified)", herd.verified),
            fmt(herd.total.as_secs_f64()),
            fmt(herd.fastest.as_secs_f64()),
            fmt(herd.slowest_first_byte.as_secs_f64() * 1e3),
            format!("{upstream:.3}"),
            rss.map_or("–".into(), |b| fmt(b as f64 / 1048576.0)),
        ]);
        if name == "regcache" {
            result = Some(HerdResult {
                clients,
                total: herd.total.as_secs_f64(),
                upstream,
                peak_rss: rss,
                shaping,
            });
        }
    }
    peers.relay.shape(None);
    result.expect("regcache herd ran")
}

// ---- targets ----

fn print_targets(args: &Args, samples: &Samples, herd: &HerdResult, blob: u64) {
    let mut targets = Vec::new();
    targets.push(Target {
        what: format!("herd of {}: upstream bytes", herd.clients),
        goal: "1.0× blob".into(),
        measured: format!("{:.3}× ({} MiB blob)", herd.upstream, blob >> 20),
        // Response headers ride on top of the blob: allow 1 %.
        pass: Some(herd.upstream <= 1.01),
    });
    let single = samples.median(&total_measure(herd.shaping), "regcache");
    let herd_ratio = single.map(|s| herd.total / s);
    targets.push(Target {
        what: format!(
            "herd time / single cold pull ({})",
            shaping_label(herd.shaping)
        ),
        goal: "≤ 1.2×".into(),
        measured: format!(
            "{} ({} s / {} s)",
            fmt_ratio(herd_ratio),
            fmt(herd.total),
            single.map_or("–".into(), fmt)
        ),
        pass: herd_ratio.map(|r| r <= 1.2),
    });
    for shaping in shapings(args) {
        let ratio = samples.ratio(&total_measure(shaping), "direct");
        targets.push(Target {
            what: format!("cold pull total time / direct ({})", shaping_label(shaping)),
            goal: "≤ 1.10×".into(),
            measured: fmt_ratio(ratio),
            pass: ratio.map(|r| r <= 1.10),
        });
    }
    for (measure, peer, goal) in [
        (M_GET, "nginx", 0.8),
        (M_HEAD, "nginx", 0.8),
        (SMALL, "nginx", 0.8),
        (MEDIUM, "nginx", 0.8),
        (M_GET, "proxy", 10.0),
        (M_HEAD, "proxy", 10.0),
    ] {
        let ratio = samples.ratio(measure, peer);
        targets.push(Target {
            what: format!("{measure} vs {peer}"),
            goal: format!("≥ {goal}×"),
            measured: fmt_ratio(ratio),
            pass: ratio.map(|r| r >= goal),
        });
    }
    let rss_mib = herd.peak_rss.map(|b| b as f64 / 1048576.0);
    targets.push(Target {
        what: "regcache peak RSS (VmHWM after the herd)".into(),
        goal: "< 100 MiB".into(),
        measured: rss_mib.map_or("–".into(), |m| format!("{} MiB", fmt(m))),
        pass: rss_mib.map(|m| m < 100.0),
    });
    report::print_targets(&targets);
}
