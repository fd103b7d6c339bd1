//! The Kubernetes manifests in `deploy/kubernetes/` checked against regcache
//! itself, so an edit to either side that would break a cluster fails here: every
//! YAML file there is read; each workload's (Deployment, DaemonSet) config.toml
//! is taken from the ConfigMap it mounts and loaded with regcache's own
//! `config::load`, and its ports, paths, probes, image tag and user are compared
//! with that config, the binary's probe paths, Cargo.toml and the Dockerfile.
//! Then the real binary is started on each workload's config and args (on
//! 127.0.0.1, with a temporary data directory) and must answer the manifests'
//! probes. No upstream is ever asked: the probes never dial one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use regcache::api::{HEALTHZ, READYZ};
use regcache::config::{self, Config, Overrides, ProcessSecrets};
use yaml_rust2::{Yaml, YamlLoader};

use crate::support::raw;
use crate::support::regcache::Regcache;

/// The kinds a site applies: the Deployment shape and the DaemonSet shape.
const EXPECTED_KINDS: [&str; 5] = [
    "ConfigMap",
    "DaemonSet",
    "Deployment",
    "PersistentVolumeClaim",
    "Service",
];
/// The kinds that run regcache.
const WORKLOAD_KINDS: [&str; 2] = ["Deployment", "DaemonSet"];
/// The name of the container that runs regcache in each workload.
const CONTAINER: &str = "regcache";

/// One YAML document and the file it came from (for messages).
#[derive(Debug)]
struct Doc {
    file: String,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.yaml["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.yaml["metadata"]["name"].as_str().unwrap_or("")
    }

    fn is(&self, kind: &str, name: &str) -> bool {
        self.kind() == kind && self.name() == name
    }

    /// `file: Kind/name`, for assertion messages.
    fn id(&self) -> String {
        format!("{}: {}/{}", self.file, self.kind(), self.name())
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.yaml`/`.yml` file under `deploy/kubernetes/`, subdirectories too
/// (`kubectl apply -R` would read them), in a stable order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml")
        {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Every document of every manifest file; panics naming the file that does not
/// parse (yaml-rust2 also rejects duplicate keys, as kubectl does).
fn documents() -> Vec<Doc> {
    let files = yaml_files(&repo_root().join("deploy/kubernetes"));
    assert!(!files.is_empty(), "no YAML files in deploy/kubernetes");
    files
        .iter()
        .flat_map(|path| {
            let file = path
                .strip_prefix(repo_root())
                .unwrap()
                .display()
                .to_string();
            let text = std::fs::read_to_string(path).unwrap();
            let docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            // kubectl skips empty documents (a trailing `---`); so do we.
            let docs = docs.into_iter().filter(|yaml| !yaml.is_null());
            docs.map(move |yaml| Doc {
                file: file.clone(),
                yaml,
            })
        })
        .collect()
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The items of a YAML list (none if it is absent).
fn items(yaml: &Yaml) -> &[Yaml] {
    yaml.as_vec().map_or(&[], Vec::as_slice)
}

/// A pod's volume mount and the volume it mounts.
#[derive(Debug)]
struct Mount<'a> {
    mount: &'a Yaml,
    volume: &'a Yaml,
    path: PathBuf,
}

/// The mount of `container` that holds `path`: the one with the longest
/// mountPath above it, as in the container's filesystem.
fn mount_holding<'a>(pod: &'a Yaml, container: &'a Yaml, path: &Path) -> Option<Mount<'a>> {
    let mount = items(&container["volumeMounts"])
        .iter()
        .filter(|m| m["mountPath"].as_str().is_some_and(|p| path.starts_with(p)))
        .max_by_key(|m| m["mountPath"].as_str().map_or(0, str::len))?;
    let volume = items(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume for mount {mount:?}"));
    let path = PathBuf::from(mount["mountPath"].as_str().unwrap());
    Some(Mount {
        mount,
        volume,
        path,
    })
}

/// The ConfigMap key a file at `path` inside a configMap volume mount comes
/// from: the subPath, the key of the `items` entry with that path, or the
/// path itself.
fn config_map_key(mount: &Mount<'_>, path: &Path) -> String {
    let relative = path.strip_prefix(&mount.path).unwrap().to_str().unwrap();
    if let Some(sub_path) = mount.mount["subPath"].as_str() {
        assert_eq!(relative, "", "subPath mounts a file at its mountPath");
        return sub_path.to_owned();
    }
    let listed = items(&mount.volume["configMap"]["items"])
        .iter()
        .find(|item| item["path"].as_str() == Some(relative));
    match listed {
        Some(item) => item["key"].as_str().unwrap().to_owned(),
        None => relative.to_owned(),
    }
}

/// A Deployment or DaemonSet with regcache's configuration as it will see it.
#[derive(Debug)]
struct Workload<'a> {
    doc: &'a Doc,
    pod: &'a Yaml,
    container: &'a Yaml,
    args: Vec<String>,
    config_path: PathBuf,
    config_text: String,
    config: Config,
}

impl<'a> Workload<'a> {
    fn new(doc: &'a Doc, docs: &'a [Doc]) -> Self {
        let pod = &doc.yaml["spec"]["template"]["spec"];
        let container = items(&pod["containers"])
            .iter()
            .find(|c| c["name"].as_str() == Some(CONTAINER))
            .unwrap_or_else(|| panic!("{}: no container named {CONTAINER}", doc.id()));
        let args = strings(&container["args"]);
        let config_path = args
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{}: no --config FILE in {args:?}", doc.id()));
        let config_text = config_text(doc, docs, pod, container, &config_path);
        let source = format!("the config.toml of {}", doc.id());
        let config = config::load(
            &config_text,
            &source,
            &Overrides::default(),
            &ProcessSecrets,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Workload {
            doc,
            pod,
            container,
            args,
            config_path,
            config_text,
            config,
        }
    }

    /// Every probe the container has, by its field name.
    fn probes(&self) -> Vec<(&'static str, &'a Yaml)> {
        ["startupProbe", "readinessProbe", "livenessProbe"]
            .into_iter()
            .map(|field| (field, &self.container[field]))
            .filter(|(_, probe)| !probe.is_badvalue())
            .collect()
    }

    /// A securityContext field as the container gets it: its own, else the pod's.
    fn security(&self, field: &str) -> &'a Yaml {
        let own = &self.container["securityContext"][field];
        if own.is_badvalue() {
            &self.pod["securityContext"][field]
        } else {
            own
        }
    }

    /// A container port by number or by name (probes and Services use either).
    fn port_number(&self, port: &Yaml) -> Option<u16> {
        if let Some(number) = port.as_i64() {
            return u16::try_from(number).ok();
        }
        items(&self.container["ports"])
            .iter()
            .find(|p| p["name"].as_str() == port.as_str())
            .and_then(|p| p["containerPort"].as_i64())
            .and_then(|n| u16::try_from(n).ok())
    }

    fn labels(&self) -> &'a Yaml {
        &self.doc.yaml["spec"]["template"]["metadata"]["labels"]
    }

    fn id(&self) -> String {
        self.doc.id()
    }
}

/// The text of the config file at `path` in `container`: the key of the
/// ConfigMap mounted there.
fn config_text(doc: &Doc, docs: &[Doc], pod: &Yaml, container: &Yaml, path: &Path) -> String {
    let mount = mount_holding(pod, container, path)
        .unwrap_or_else(|| panic!("{}: nothing is mounted at {}", doc.id(), path.display()));
    let name = mount.volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: {} is not a ConfigMap", doc.id(), path.display()));
    let key = config_map_key(&mount, path);
    let config_map = docs
        .iter()
        .find(|d| d.is("ConfigMap", name))
        .unwrap_or_else(|| panic!("{}: no ConfigMap {name} in deploy/kubernetes", doc.id()));
    config_map.yaml["data"][key.as_str()]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no key {key}", config_map.id()))
        .to_owned()
}

fn workloads(docs: &[Doc]) -> Vec<Workload<'_>> {
    let found: Vec<_> = docs
        .iter()
        .filter(|d| WORKLOAD_KINDS.contains(&d.kind()))
        .map(|d| Workload::new(d, docs))
        .collect();
    assert!(!found.is_empty(), "no Deployment or DaemonSet");
    found
}

/// The Dockerfile's runtime `USER uid:gid`.
fn dockerfile_user() -> (i64, i64) {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let last_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    let user = last_stage
        .lines()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("a USER in the Dockerfile's runtime stage");
    let (uid, gid) = user.trim().split_once(':').expect("USER uid:gid");
    (uid.parse().unwrap(), gid.parse().unwrap())
}

/// A Kubernetes quantity (`50Gi`, `500M`, `1073741824`) in bytes.
fn quantity_bytes(quantity: &str) -> u64 {
    let units = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, factor)| Some((quantity.strip_suffix(suffix)?, *factor)))
        .unwrap_or((quantity, 1));
    number.parse::<u64>().expect("a whole quantity") * factor
}

#[test]
fn every_manifest_is_a_named_kubernetes_object_and_both_shapes_are_there() {
    let docs = documents();
    let mut seen = BTreeSet::new();
    for doc in &docs {
        for field in ["apiVersion", "kind"] {
            assert!(
                doc.yaml[field].as_str().is_some(),
                "{}: no {field}",
                doc.file
            );
        }
        assert!(!doc.name().is_empty(), "{}: no metadata.name", doc.id());
        // One namespace holds both shapes; kubectl would overwrite a twin.
        assert!(seen.insert((doc.kind(), doc.name())), "{}: twice", doc.id());
    }
    let kinds: BTreeSet<&str> = docs.iter().map(Doc::kind).collect();
    for kind in EXPECTED_KINDS {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }
}

#[test]
fn each_workload_selects_its_own_pods() {
    let docs = documents();
    for w in workloads(&docs) {
        let selector = &w.doc.yaml["spec"]["selector"]["matchLabels"];
        let selector = selector.as_hash().expect("spec.selector.matchLabels");
        for (key, value) in selector {
            assert_eq!(&w.labels()[key.as_str().unwrap()], value, "{}", w.id());
        }
    }
}

#[test]
fn ports_agree_with_the_config_listen_address() {
    let docs = documents();
    for w in workloads(&docs) {
        let listen = w.config.listen;
        let http: Vec<_> = items(&w.container["ports"])
            .iter()
            .filter(|p| p["name"].as_str() == Some("http"))
            .collect();
        assert!(!http.is_empty(), "{}: no port named http", w.id());
        for port in http {
            assert_eq!(w.port_number(&port["containerPort"]), Some(listen.port()));
        }
        for (field, probe) in w.probes() {
            let port = w.port_number(&probe["httpGet"]["port"]);
            assert_eq!(port, Some(listen.port()), "{}: {field}", w.id());
        }
        assert_probes_reach(&w, listen);
    }
}

/// The kubelet probes the pod's IP unless the probe names a host. A regcache
/// listening on loopback can be probed only on the host network (the pod's
/// loopback is the node's, where the kubelet runs) with that host named;
/// otherwise it must listen on every address, as the pod's IP is not known
/// in advance.
fn assert_probes_reach(w: &Workload<'_>, listen: SocketAddr) {
    for (field, probe) in w.probes() {
        let host = probe["httpGet"]["host"].as_str();
        if listen.ip().is_loopback() {
            assert_eq!(w.pod["hostNetwork"].as_bool(), Some(true), "{}", w.id());
            assert_eq!(
                host,
                Some(listen.ip().to_string().as_str()),
                "{}: {field}",
                w.id()
            );
        } else {
            assert!(listen.ip().is_unspecified(), "{}: listen {listen}", w.id());
        }
    }
}

#[test]
fn services_send_traffic_to_the_port_regcache_listens_on() {
    let docs = documents();
    let workloads = workloads(&docs);
    for service in docs.iter().filter(|d| d.kind() == "Service") {
        let spec = &service.yaml["spec"];
        let selector = spec["selector"]
            .as_hash()
            .expect("a Service with a selector");
        let selects = |w: &&Workload<'_>| {
            selector
                .iter()
                .all(|(k, v)| &w.labels()[k.as_str().unwrap()] == v)
        };
        let selected: Vec<_> = workloads.iter().filter(selects).collect();
        // Both shapes may share a namespace: the Service must not send cluster
        // traffic to the per-node pods, which listen on their node's loopback.
        let ids: Vec<_> = selected.iter().map(|w| w.id()).collect();
        assert_eq!(ids.len(), 1, "{} selects {ids:?}", service.id());
        let w = selected[0];
        for port in items(&spec["ports"]) {
            let target = w.port_number(&port["targetPort"]);
            assert_eq!(target, Some(w.config.listen.port()), "{}", service.id());
        }
    }
}

#[test]
fn config_and_data_are_mounted_where_the_config_says() {
    let docs = documents();
    for w in workloads(&docs) {
        let config = mount_holding(w.pod, w.container, &w.config_path).unwrap();
        assert_eq!(config.mount["readOnly"].as_bool(), Some(true), "{}", w.id());
        let data_dir = &w.config.data_dir;
        // The container's working directory is not the config's business.
        assert!(data_dir.is_absolute(), "{}: {}", w.id(), data_dir.display());
        let data = mount_holding(w.pod, w.container, data_dir)
            .unwrap_or_else(|| panic!("{}: {} is on no volume", w.id(), data_dir.display()));
        assert_ne!(data.mount["readOnly"].as_bool(), Some(true), "{}", w.id());
        if let Some(claim) = data.volume["persistentVolumeClaim"]["claimName"].as_str() {
            assert_budget_fits(&w, &docs, claim);
        } else {
            assert_host_path_is_handed_to_regcache(&w, &data);
        }
        assert_tmp_is_writable(&w);
    }
}

/// storage.max_size leaves room on the claim for the index and its WAL.
fn assert_budget_fits(w: &Workload<'_>, docs: &[Doc], claim: &str) {
    let pvc = docs
        .iter()
        .find(|d| d.is("PersistentVolumeClaim", claim))
        .unwrap_or_else(|| panic!("{}: no PersistentVolumeClaim {claim}", w.id()));
    let storage = pvc.yaml["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .map(quantity_bytes)
        .expect("spec.resources.requests.storage");
    let max_size = w.config.eviction.budget.max_size();
    assert!(
        max_size <= storage / 10 * 9,
        "{}: max_size {max_size} leaves under 10 % of the claim's {storage} bytes",
        w.id()
    );
}

/// A hostPath is created root-owned and fsGroup does not apply to it: an init
/// container must give it to the Dockerfile's user, or regcache cannot write.
fn assert_host_path_is_handed_to_regcache(w: &Workload<'_>, data: &Mount<'_>) {
    let host_path = &data.volume["hostPath"];
    assert_eq!(
        host_path["path"].as_str(),
        Some("/var/lib/regcache"),
        "{}",
        w.id()
    );
    assert_eq!(
        host_path["type"].as_str(),
        Some("DirectoryOrCreate"),
        "{}",
        w.id()
    );
    let (uid, gid) = dockerfile_user();
    let chowned = items(&w.pod["initContainers"]).iter().any(|init| {
        let command = strings(&init["command"]);
        let mounted = items(&init["volumeMounts"])
            .iter()
            .find(|m| m["name"] == data.mount["name"])
            .and_then(|m| m["mountPath"].as_str());
        command.first().is_some_and(|c| c == "chown")
            && command.contains(&format!("{uid}:{gid}"))
            && mounted.is_some_and(|path| command.last().is_some_and(|c| c == path))
    });
    assert!(
        chowned,
        "{}: no init container chowns the hostPath to {uid}:{gid}",
        w.id()
    );
}

/// SQLite (bundled, temp_store on disk) writes temporary files to /tmp; with
/// a read-only root filesystem that must be a volume.
fn assert_tmp_is_writable(w: &Workload<'_>) {
    if w.security("readOnlyRootFilesystem").as_bool() != Some(true) {
        return;
    }
    let tmp = mount_holding(w.pod, w.container, Path::new("/tmp/sqlite-temp"));
    let tmp = tmp.unwrap_or_else(|| panic!("{}: /tmp is on the read-only root", w.id()));
    assert_ne!(tmp.mount["readOnly"].as_bool(), Some(true), "{}", w.id());
}

#[test]
fn image_user_and_shutdown_grace_match_the_build() {
    let docs = documents();
    let (uid, gid) = dockerfile_user();
    for w in workloads(&docs) {
        for container in items(&w.pod["containers"])
            .iter()
            .chain(items(&w.pod["initContainers"]))
        {
            let image = container["image"].as_str().unwrap();
            let tag = image
                .rsplit('/')
                .next()
                .unwrap()
                .split_once(':')
                .map(|(_, t)| t);
            assert_eq!(tag, Some(env!("CARGO_PKG_VERSION")), "{}: {image}", w.id());
        }
        assert_eq!(w.security("runAsUser").as_i64(), Some(uid), "{}", w.id());
        assert_eq!(w.security("runAsGroup").as_i64(), Some(gid), "{}", w.id());
        assert_eq!(
            w.security("runAsNonRoot").as_bool(),
            Some(true),
            "{}",
            w.id()
        );
        assert_eq!(w.security("readOnlyRootFilesystem").as_bool(), Some(true));
        assert_eq!(
            w.security("allowPrivilegeEscalation").as_bool(),
            Some(false)
        );
        let dropped = strings(&w.container["securityContext"]["capabilities"]["drop"]);
        assert!(
            dropped.iter().any(|c| c == "ALL"),
            "{}: drops {dropped:?}",
            w.id()
        );
        let grace = w.pod["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let needed = regcache::app::SHUTDOWN_GRACE.as_secs();
        assert!(
            grace > i64::try_from(needed).unwrap(),
            "{}: {grace} s",
            w.id()
        );
    }
}

#[test]
fn claims_are_writable_by_the_dockerfile_group() {
    let docs = documents();
    let (_, gid) = dockerfile_user();
    for w in workloads(&docs) {
        let claims = items(&w.pod["volumes"])
            .iter()
            .any(|v| !v["persistentVolumeClaim"].is_badvalue());
        if claims {
            let fs_group = w.pod["securityContext"]["fsGroup"].as_i64();
            assert_eq!(fs_group, Some(gid), "{}", w.id());
        }
    }
}

#[test]
fn probes_are_http_gets_on_the_binarys_health_paths() {
    let docs = documents();
    for w in workloads(&docs) {
        let probes: BTreeMap<_, _> = w.probes().into_iter().collect();
        for required in ["readinessProbe", "livenessProbe"] {
            assert!(probes.contains_key(required), "{}: no {required}", w.id());
        }
        for (field, probe) in probes {
            let expected = if field == "readinessProbe" {
                READYZ
            } else {
                HEALTHZ
            };
            let get = &probe["httpGet"];
            assert_eq!(get["path"].as_str(), Some(expected), "{}: {field}", w.id());
            let scheme = get["scheme"].as_str().unwrap_or("HTTP");
            assert_eq!(scheme, "HTTP", "{}: {field}", w.id());
        }
    }
}

#[test]
fn the_binary_answers_the_manifests_probes_on_their_config() {
    let docs = documents();
    for w in workloads(&docs) {
        // The handle overrides only --listen 127.0.0.1:0 and --data <temp>.
        let regcache = Regcache::builder().config_toml(&w.config_text).start();
        for (field, probe) in w.probes() {
            let path = probe["httpGet"]["path"].as_str().unwrap();
            let (status, _, _) = raw(regcache.addr(), "GET", path);
            assert_eq!(status, 200, "{}: {field} {path}", w.id());
        }
    }
}

#[test]
fn the_binary_accepts_the_manifests_args() {
    let docs = documents();
    for w in workloads(&docs) {
        let temp = tempfile::tempdir().unwrap();
        let config_copy = temp.path().join("config.toml");
        std::fs::write(&config_copy, &w.config_text).unwrap();
        // The handle runs `serve --listen 127.0.0.1:0 --data <temp>` and then
        // the arguments given: the manifest's, with the config file's path
        // swapped for the copy.
        let (command, rest) = w.args.split_first().expect("args");
        assert_eq!(command, "serve", "{}", w.id());
        let builder = rest.iter().fold(Regcache::builder(), |b, arg| {
            if Path::new(arg) == w.config_path {
                b.arg(config_copy.to_str().unwrap())
            } else {
                b.arg(arg)
            }
        });
        let regcache = builder.start();
        let (status, _, _) = raw(regcache.addr(), "GET", HEALTHZ);
        assert_eq!(status, 200, "{}", w.id());
    }
}

/// `regcache config show` on each workload's ConfigMap: every value says where
/// it came from, what the ConfigMap sets comes from the file, and the text
/// loads back to the configuration the workload runs with.
#[test]
fn config_show_explains_each_configmap() {
    let docs = documents();
    for w in workloads(&docs) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &w.config_text).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_regcache"))
            .args(["config", "show", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{}: {}",
            w.id(),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("---- regcache config show ({}) ----\n{shown}", w.id());
        let from_file = format!("# file {}", path.display());
        let listen = format!("listen = \"{}\"", w.config.listen);
        let data_dir = format!("data_dir = \"{}\"", w.config.data_dir.display());
        for want in [&listen, &data_dir] {
            let line = shown.lines().find(|l| l.starts_with(want.as_str()));
            assert!(
                line.is_some_and(|l| l.ends_with(&from_file)),
                "{}: {want} from the file:\n{shown}",
                w.id()
            );
        }
        for line in shown.lines().filter(|l| l.contains(" = ")) {
            assert!(line.contains("  # "), "{}: no source on {line:?}", w.id());
        }
        let again = config::load(&shown, "shown", &Overrides::default(), &ProcessSecrets)
            .unwrap_or_else(|e| panic!("{}: {e}\n{shown}", w.id()));
        assert_eq!(
            format!("{again:?}"),
            format!("{:?}", w.config),
            "{}",
            w.id()
        );
    }
}

/// The ServiceMonitor, the classic scrape annotations and the Grafana dashboard
/// in `deploy/monitoring/`, against the manifests and a real scrape: the
/// ServiceMonitor selects the Service of the workload it names (by labels), on
/// a port that Service has, at the binary's `/metrics`; annotated pods name
/// their `http` port and that path; the binary answers `/metrics` on each
/// annotated workload's config; and every metric the dashboard queries is in
/// that answer.
#[test]
fn monitoring_scrapes_what_the_binary_serves() {
    let docs = documents();
    let monitoring = repo_root().join("deploy/monitoring");
    let text = std::fs::read_to_string(monitoring.join("servicemonitor.yaml")).unwrap();
    let monitor = &YamlLoader::load_from_str(&text).unwrap()[0];
    assert_eq!(monitor["kind"].as_str(), Some("ServiceMonitor"));
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_hash()
        .unwrap();
    let services: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.kind() == "Service")
        .filter(|d| {
            let labels = &d.yaml["metadata"]["labels"];
            selector
                .iter()
                .all(|(k, v)| &labels[k.as_str().unwrap()] == v)
        })
        .collect();
    assert_eq!(services.len(), 1, "the ServiceMonitor selects one Service");
    let service_ports: Vec<&str> = items(&services[0].yaml["spec"]["ports"])
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for endpoint in items(&monitor["spec"]["endpoints"]) {
        let port = endpoint["port"].as_str().unwrap();
        assert!(service_ports.contains(&port), "no Service port {port}");
        assert_eq!(endpoint["path"].as_str(), Some(regcache::api::METRICS));
    }

    let dashboard = std::fs::read_to_string(monitoring.join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let queried = dashboard_metrics(&dashboard);
    assert!(queried.len() >= 10, "{queried:?}");

    let mut scraped = 0;
    for w in workloads(&docs) {
        let annotations = &w.doc.yaml["spec"]["template"]["metadata"]["annotations"];
        if annotations["prometheus.io/scrape"].as_str() != Some("true") {
            continue;
        }
        let port: u16 = annotations["prometheus.io/port"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(port, w.config.listen.port(), "{}", w.id());
        let path = annotations["prometheus.io/path"].as_str().unwrap();
        assert_eq!(path, regcache::api::METRICS, "{}", w.id());
        let regcache = Regcache::builder().config_toml(&w.config_text).start();
        let (status, _, body) = raw(regcache.addr(), "GET", path);
        assert_eq!(status, 200, "{}", w.id());
        let body = String::from_utf8(body).unwrap();
        let exposed: BTreeSet<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        for metric in &queried {
            assert!(
                exposed.contains(metric.as_str()),
                "the dashboard queries {metric}, not served"
            );
        }
        scraped += 1;
    }
    assert!(scraped > 0, "no workload carries the scrape annotations");
}

/// Every `regcache_…` name in the dashboard's queries.
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("regcache_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}
