//! The egress keys of `[upstream_defaults]` and of each `[[upstream]]`: trusted
//! CAs (`ca_file`), a client certificate (`client_cert_file`, `client_key_file`)
//! and a forward proxy (`proxy`, `proxy_username` with `proxy_password_env` or
//! `proxy_password_file`, `no_proxy`). An upstream's own key wins over the
//! default; the proxy and its credentials go together. Without `proxy` anywhere,
//! the standard `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` variables apply.
//! The redirect rules (`allow_private_redirects`, `redirect_hosts`) merge the
//! same way.
//!
//! It never reads the CA or key files (the upstream client does, at start) and
//! never puts a proxy password in a URL that could be logged.

use super::*;

/// Checked in this order, upper case first, as curl and Go do.
const HTTPS_PROXY_VARS: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
const HTTP_PROXY_VARS: [&str; 2] = ["HTTP_PROXY", "http_proxy"];
const ALL_PROXY_VARS: [&str; 2] = ["ALL_PROXY", "all_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The egress keys of one table, each parsed once, before merging.
#[derive(Debug, Clone, Default)]
pub(in crate::config) struct EgressKeys {
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    proxy: Option<ProxyChoice>,
    no_proxy: Option<Vec<String>>,
    allow_private_redirects: Option<bool>,
    redirect_hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
enum ProxyChoice {
    /// `proxy = "none"`.
    Direct,
    Via(Proxy),
}

impl Walker {
    /// Removes and parses the egress keys of `t`.
    pub(in crate::config) fn egress_keys(
        &mut self,
        t: &mut Table,
        path: &str,
        secrets: &dyn Secrets,
    ) -> EgressKeys {
        let mut file =
            |walker: &mut Self, key: &str| walker.optional_string(t, path, key).map(PathBuf::from);
        let ca_file = file(self, "ca_file");
        let client_cert_file = file(self, "client_cert_file");
        let client_key_file = file(self, "client_key_file");
        let proxy_text = self.optional_string(t, path, "proxy");
        let credentials = self.credentials_with(t, path, secrets, "proxy_");
        let no_proxy = t
            .contains_key("no_proxy")
            .then(|| self.optional_strings(t, path, "no_proxy"));
        let allow_private_redirects = self.optional_bool(t, path, "allow_private_redirects");
        let redirect_hosts = t
            .contains_key("redirect_hosts")
            .then(|| self.redirect_hosts(t, path));
        let proxy = match proxy_text.as_deref() {
            None => {
                if matches!(credentials, Ok(Some(_))) {
                    self.error(&Self::key(path, "proxy_username"), "needs proxy");
                }
                None
            }
            Some("none") => Some(ProxyChoice::Direct),
            Some(text) => self
                .configured_proxy_url(text, &Self::key(path, "proxy"))
                .map(|url| {
                    ProxyChoice::Via(Proxy {
                        url,
                        credentials: credentials.ok().flatten(),
                    })
                }),
        };
        EgressKeys {
            ca_file,
            client_cert_file,
            client_key_file,
            proxy,
            no_proxy,
            allow_private_redirects,
            redirect_hosts,
        }
    }

    /// `redirect_hosts`: `host`, `*.domain`, each with an optional `:port`.
    fn redirect_hosts(&mut self, t: &mut Table, path: &str) -> Vec<String> {
        let hosts = self.optional_strings(t, path, "redirect_hosts");
        for (i, host) in hosts.iter().enumerate() {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let name = match name.rsplit_once(':') {
                Some((name, port)) if port.parse::<u16>().is_ok() => name,
                _ => name,
            };
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
            if !ok {
                self.error(
                    &format!("{}[{i}]", Self::key(path, "redirect_hosts")),
                    format!(
                        "{host:?} is not a host pattern (host, *.domain, with an optional :port)"
                    ),
                );
            }
        }
        hosts
    }

    /// An upstream's egress: its own keys over the defaults, then the
    /// environment's proxy if neither names one.
    pub(in crate::config) fn egress(
        &mut self,
        own: EgressKeys,
        defaults: &EgressKeys,
        path: &str,
        secrets: &dyn Secrets,
    ) -> Egress {
        let ca_file = own.ca_file.or_else(|| defaults.ca_file.clone());
        let cert = own
            .client_cert_file
            .or_else(|| defaults.client_cert_file.clone());
        let key = own
            .client_key_file
            .or_else(|| defaults.client_key_file.clone());
        let client_identity = match (cert, key) {
            (Some(cert_file), Some(key_file)) => Some(ClientIdentity {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                self.error(
                    &Self::key(path, "client_key_file"),
                    "client_cert_file and client_key_file are given together",
                );
                None
            }
        };
        let no_proxy = own.no_proxy.or_else(|| defaults.no_proxy.clone());
        let proxy = match own.proxy.or_else(|| defaults.proxy.clone()) {
            Some(ProxyChoice::Direct) => ProxySettings {
                source: ProxySource::Disabled,
                ..ProxySettings::default()
            },
            Some(ProxyChoice::Via(proxy)) => ProxySettings {
                https: Some(proxy.clone()),
                http: Some(proxy),
                no_proxy: no_proxy.unwrap_or_default(),
                source: ProxySource::Config,
            },
            None => self.proxy_from_env(secrets, no_proxy),
        };
        let redirects = RedirectRules {
            allow_private: own
                .allow_private_redirects
                .or(defaults.allow_private_redirects)
                .unwrap_or(false),
            hosts: own
                .redirect_hosts
                .or_else(|| defaults.redirect_hosts.clone())
                .unwrap_or_default(),
        };
        Egress {
            ca_file,
            client_identity,
            proxy,
            redirects,
        }
    }

    /// `HTTPS_PROXY`/`HTTP_PROXY`, each falling back to `ALL_PROXY`, and
    /// `NO_PROXY` unless the file gave `no_proxy`.
    fn proxy_from_env(
        &mut self,
        secrets: &dyn Secrets,
        no_proxy: Option<Vec<String>>,
    ) -> ProxySettings {
        let first = |names: &[&'static str]| -> Option<(&'static str, String)> {
            names.iter().find_map(|n| {
                let value = secrets.env(n).filter(|v| !v.trim().is_empty())?;
                Some((*n, value))
            })
        };
        let from = |walker: &mut Self, names: &[&'static str]| {
            let (name, value) = first(names).or_else(|| first(&ALL_PROXY_VARS))?;
            walker.env_proxy(name, &value)
        };
        let https = from(self, &HTTPS_PROXY_VARS);
        let http = from(self, &HTTP_PROXY_VARS);
        let no_proxy = no_proxy.unwrap_or_else(|| {
            first(&NO_PROXY_VARS)
                .map(|(_, v)| v.split(',').map(|h| h.trim().to_owned()).collect())
                .unwrap_or_default()
        });
        ProxySettings {
            https,
            http,
            no_proxy,
            source: ProxySource::Environment,
        }
    }

    /// A proxy URL from the file: credentials belong in `proxy_username` and a
    /// password key, never in the URL (which is logged).
    fn configured_proxy_url(&mut self, text: &str, key: &str) -> Option<Url> {
        let url = self.proxy_url(text, key)?;
        if !url.username().is_empty() || url.password().is_some() {
            self.error(
                key,
                "must not hold credentials: use proxy_username with proxy_password_env \
                 or proxy_password_file",
            );
            return None;
        }
        Some(url)
    }

    /// A proxy from variable `name`; `user:password@` in it become credentials.
    fn env_proxy(&mut self, name: &str, value: &str) -> Option<Proxy> {
        let mut url = self.proxy_url(value, name)?;
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = (!url.username().is_empty()).then(|| Credentials {
            username: decode(url.username()),
            password: Secret::new(decode(url.password().unwrap_or_default())),
        });
        // Both setters only fail on URLs without a host, excluded above.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Some(Proxy { url, credentials })
    }

    /// `http://host:port` (or `https://`); a bare `host:port` means http, as in
    /// every tool that reads these variables.
    fn proxy_url(&mut self, text: &str, key: &str) -> Option<Url> {
        let text = text.trim();
        let full = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let url = match Url::parse(&full) {
            Ok(url) => url,
            Err(e) => {
                self.error(
                    key,
                    format!("{text:?} is not a proxy URL like http://proxy:3128: {e}"),
                );
                return None;
            }
        };
        let shape_ok = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && matches!(url.path(), "" | "/")
            && url.query().is_none();
        if !shape_ok {
            self.error(
                key,
                format!(
                    "{} is not a proxy URL like http://proxy:3128",
                    without_secrets(&url)
                ),
            );
            return None;
        }
        Some(url)
    }
}

/// `url` without its userinfo, for an error message.
fn without_secrets(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

#[cfg(test)]
mod tests;
