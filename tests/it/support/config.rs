//! `config.toml` texts for the tests' regcache: one default upstream
//! (`registry.k8s.io`, alias `k8s.gcr.io`) with its timeouts, or three
//! upstreams behind one mirror.

/// A config.toml for one default upstream at `url` with the given `tag_ttl`.
pub fn config_toml(url: &str, tag_ttl: &str) -> String {
    config_toml_with(url, tag_ttl, "30s", "")
}

/// Same, with an `idle_timeout` and `extra` lines for the `[[upstream]]` table.
pub fn config_toml_with(url: &str, tag_ttl: &str, idle_timeout: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
[storage]
data_dir = "./unused"
[[upstream]]
name = "registry.k8s.io"
url = "{url}"
default = true
aliases = ["k8s.gcr.io"]
tag_ttl = "{tag_ttl}"
connect_timeout = "5s"
idle_timeout = "{idle_timeout}"
{extra}
"#
    )
}

/// A config.toml with three upstreams at the given URLs: `registry.k8s.io`
/// (the default, alias `k8s.gcr.io`), `docker.io` and `ghcr.io`.
pub fn three_upstreams_toml(k8s: &str, hub: &str, ghcr: &str) -> String {
    let others = format!(
        "[[upstream]]\nname = \"docker.io\"\nurl = \"{hub}\"\n\
         [[upstream]]\nname = \"ghcr.io\"\nurl = \"{ghcr}\"\n"
    );
    config_toml_with(k8s, "5m", "30s", &others)
}
