//! Where the management API and the gateway are, for the commands that
//! call them. Each value is taken from the first of: its flag
//! (`--api-url`, `--gateway-url`, `--api-key`); its environment variable
//! (`TIDAL_API_URL`, `TIDAL_GATEWAY_URL`, `TIDAL_API_KEY`); the cluster
//! file named by `--cluster-file`; `./.tidal/cluster.json` (what `tidal up`
//! writes). Nothing found is a usage error (exit status 2) that says to
//! run `tidal up` or pass the flags.

use std::path::{Path, PathBuf};

use clap::Args;
use hyper::Uri;
use serde_json::Value;

use crate::Failure;

/// Where `tidal up` writes its cluster file, relative to the working
/// directory.
pub(crate) const DEFAULT_CLUSTER_FILE: &str = ".tidal/cluster.json";

/// Where the management API is and the key to call it with.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Connect {
    /// The management API's URL, e.g. http://127.0.0.1:7090 [env
    /// TIDAL_API_URL; else the cluster file's api_url].
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// An API key with the management scope [env TIDAL_API_KEY; else the
    /// cluster file's api_key].
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The cluster file `tidal up` writes [default: ./.tidal/cluster.json].
    #[arg(long, value_name = "PATH")]
    pub cluster_file: Option<PathBuf>,
}

/// Where the gateway is and the key to call it with (the inference scope).
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct GatewayConnect {
    /// The gateway's URL, e.g. http://127.0.0.1:7080 [env
    /// TIDAL_GATEWAY_URL; else the cluster file's gateway_url].
    #[arg(long, value_name = "URL")]
    pub gateway_url: Option<String>,
    /// An API key with the inference scope [env TIDAL_API_KEY; else the
    /// cluster file's api_key].
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// The cluster file `tidal up` writes [default: ./.tidal/cluster.json].
    #[arg(long, value_name = "PATH")]
    pub cluster_file: Option<PathBuf>,
}

/// Which service a [`Target`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Api,
    Gateway,
}

impl Service {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Service::Api => "the management API",
            Service::Gateway => "the gateway",
        }
    }
}

/// A resolved service: its base URL (no trailing slash) and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub service: Service,
    pub url: String,
    pub key: String,
}

impl Connect {
    /// The API from the flags, the environment and the cluster file.
    pub(crate) fn resolve(&self) -> Result<Target, Failure> {
        resolve(
            Service::Api,
            self.api_url.as_deref(),
            self.api_key.as_deref(),
            self.cluster_file.as_deref(),
            &|name| std::env::var(name).ok(),
            Path::new(DEFAULT_CLUSTER_FILE),
        )
    }
}

impl GatewayConnect {
    /// The gateway from the flags, the environment and the cluster file.
    pub(crate) fn resolve(&self) -> Result<Target, Failure> {
        resolve(
            Service::Gateway,
            self.gateway_url.as_deref(),
            self.api_key.as_deref(),
            self.cluster_file.as_deref(),
            &|name| std::env::var(name).ok(),
            Path::new(DEFAULT_CLUSTER_FILE),
        )
    }
}

/// Resolves one service's URL and the key, each from the first source
/// that has it. `env` reads the environment; `default_file` is the
/// cluster file used when none is named (a missing one is skipped, an
/// unreadable named one is an input error).
pub(crate) fn resolve(
    service: Service,
    url_flag: Option<&str>,
    key_flag: Option<&str>,
    cluster_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    default_file: &Path,
) -> Result<Target, Failure> {
    let (url_env, url_field, url_flag_name) = match service {
        Service::Api => ("TIDAL_API_URL", "api_url", "--api-url"),
        Service::Gateway => ("TIDAL_GATEWAY_URL", "gateway_url", "--gateway-url"),
    };
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let mut file: Option<Option<Value>> = None;
    let mut from_file = |field: &str| -> Result<Option<String>, Failure> {
        if file.is_none() {
            file = Some(read_cluster_file(cluster_file, default_file)?);
        }
        Ok(file
            .as_ref()
            .and_then(Option::as_ref)
            .and_then(|v| v.get(field))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned))
    };
    let url = match url_flag.map(str::to_owned).or_else(|| env(url_env)) {
        Some(url) => url,
        None => from_file(url_field)?.ok_or_else(|| {
            Failure::Usage(format!(
                "cannot find {}: run `tidal up` (it writes ./{DEFAULT_CLUSTER_FILE}), or pass \
                 {url_flag_name} and --api-key (or set {url_env} and TIDAL_API_KEY, or give \
                 --cluster-file PATH)",
                service.name()
            ))
        })?,
    };
    let key = match key_flag.map(str::to_owned).or_else(|| env("TIDAL_API_KEY")) {
        Some(key) => key,
        None => from_file("api_key")?.ok_or_else(|| {
            Failure::Usage(format!(
                "no API key for {} at {url}: pass --api-key or set TIDAL_API_KEY (`tidal up` \
                 writes an admin key to ./{DEFAULT_CLUSTER_FILE}; `tidal keys create` makes \
                 others)",
                service.name()
            ))
        })?,
    };
    Ok(Target {
        service,
        url: normalize(&url, url_flag_name)?,
        key: key.trim().to_owned(),
    })
}

/// The cluster file's JSON: the named one (which must be readable), else
/// the default one if it exists.
fn read_cluster_file(named: Option<&Path>, default: &Path) -> Result<Option<Value>, Failure> {
    let path = match named {
        Some(path) => path,
        None if default.exists() => default,
        None => return Ok(None),
    };
    let text = crate::read_input(path)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::input(
            path,
            format!("not a cluster file (the JSON `tidal up` writes): {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(Failure::input(
            path,
            "not a cluster file: expected a JSON object with api_url, gateway_url and api_key",
        ));
    }
    Ok(Some(value))
}

/// `host:port` or `http://host:port[/]` → `http://host:port`.
fn normalize(url: &str, flag: &str) -> Result<String, Failure> {
    let url = url.trim().trim_end_matches('/');
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| Failure::Usage(format!("{flag} {url:?}: not a URL: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(Failure::Usage(format!(
            "{flag} {url:?}: must be an http:// URL with a host (https is not supported yet)"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn cluster_file(dir: &Path, name: &str, api: &str) -> PathBuf {
        let path = dir.join(name);
        let json = serde_json::json!({
            "api_url": api, "gateway_url": "http://127.0.0.1:7080",
            "api_key": format!("key-of-{name}"), "store": "127.0.0.1:7070",
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    #[test]
    fn flags_then_environment_then_named_file_then_default_file() {
        let dir = tempfile::tempdir().unwrap();
        let named = cluster_file(dir.path(), "named.json", "http://127.0.0.1:1001");
        let default = cluster_file(dir.path(), "default.json", "http://127.0.0.1:1002");
        let api = |url: Option<&str>, key: Option<&str>, file: Option<&Path>, vars| {
            resolve(Service::Api, url, key, file, &env(vars), &default).unwrap()
        };
        let t = api(
            Some("127.0.0.1:9/"),
            Some("k"),
            Some(&named),
            &[("TIDAL_API_URL", "http://e:1"), ("TIDAL_API_KEY", "ek")],
        );
        assert_eq!(
            (t.url.as_str(), t.key.as_str()),
            ("http://127.0.0.1:9", "k")
        );
        let t = api(
            None,
            None,
            Some(&named),
            &[("TIDAL_API_URL", "http://e:1"), ("TIDAL_API_KEY", "ek")],
        );
        assert_eq!((t.url.as_str(), t.key.as_str()), ("http://e:1", "ek"));
        let t = api(None, None, Some(&named), &[("TIDAL_API_KEY", "")]);
        assert_eq!(
            (t.url.as_str(), t.key.as_str()),
            ("http://127.0.0.1:1001", "key-of-named.json")
        );
        let t = api(Some("http://x:2"), None, None, &[]);
        assert_eq!(
            (t.url.as_str(), t.key.as_str()),
            ("http://x:2", "key-of-default.json")
        );
        let g = resolve(Service::Gateway, None, None, None, &env(&[]), &default).unwrap();
        assert_eq!(g.url, "http://127.0.0.1:7080");
        let g = resolve(
            Service::Gateway,
            None,
            None,
            None,
            &env(&[("TIDAL_GATEWAY_URL", "g:3"), ("TIDAL_API_URL", "a:4")]),
            &default,
        )
        .unwrap();
        assert_eq!(g.url, "http://g:3");
    }

    #[test]
    fn nothing_found_says_run_tidal_up_and_a_bad_named_file_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.json");
        let e = resolve(Service::Api, None, None, None, &env(&[]), &missing).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Failure::Usage(_)), "{e:?}");
        assert!(
            text.contains("tidal up") && text.contains("--api-url"),
            "{text}"
        );
        let e = resolve(Service::Api, Some("h:1"), None, None, &env(&[]), &missing).unwrap_err();
        assert!(e.to_string().contains("--api-key"), "{e}");
        let e = resolve(
            Service::Api,
            None,
            None,
            Some(&missing),
            &env(&[]),
            &missing,
        )
        .unwrap_err();
        assert!(matches!(e, Failure::Input { .. }), "{e:?}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "[1]").unwrap();
        let e = resolve(Service::Api, None, None, Some(&bad), &env(&[]), &missing).unwrap_err();
        assert!(e.to_string().contains("not a cluster file"), "{e}");
        let e = resolve(
            Service::Api,
            Some("https://x:1"),
            Some("k"),
            None,
            &env(&[]),
            &missing,
        )
        .unwrap_err();
        assert!(e.to_string().contains("https is not supported"), "{e}");
    }
}
