//! Reading a deployment spec's JSON tree field by field: each value is
//! checked against its field, and each problem is recorded with its field
//! path and the fix (see `spec.rs` for the rules and the types).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::raw::RawJson;
use crate::settings::{FIELDS as SETTINGS_FIELDS, RawUpdate};
use crate::spec::{
    DEFAULT_HEALTH_PATH, DEFAULT_READY_TIMEOUT_SECS, DEFAULT_STOP_GRACE_SECS, DeploymentSpec,
    READY_TIMEOUT_SECS, Resources, STOP_GRACE_SECS, SpecProblem, WORKER_ENV, WeightSpec,
    is_plain_file_name, is_sha256_hex,
};
use crate::{
    AutoscalingSettings, ClusterSettings, DeploymentId, InvalidSettings, ModelId,
    UpdateAutoscalingSettings,
};

const TOP_FIELDS: &[&str] = &[
    "model",
    "deployment",
    "autoscaling_settings",
    "resources",
    "command",
    "env",
    "health_path",
    "ready_timeout_secs",
    "stop_grace_secs",
    "weights",
];
const RESOURCE_FIELDS: &[&str] = &[
    "region",
    "gpu_type",
    "gpu_count",
    "cpu_millis",
    "memory_bytes",
];
const WEIGHT_FIELDS: &[&str] = &["name", "url", "path", "size_bytes", "sha256"];

/// Collects problems while reading.
#[derive(Default)]
pub(crate) struct Reader {
    /// Every problem found so far, in the file's order.
    pub(crate) problems: Vec<SpecProblem>,
}

/// An object's fields by name (nulls dropped: null counts as absent).
type Fields<'a> = BTreeMap<&'a str, &'a RawJson>;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(SpecProblem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// The entries of an object, in order; problems for anything else.
    fn entries<'a>(
        &mut self,
        path: &str,
        value: &'a RawJson,
        what: &str,
    ) -> Option<&'a [(String, RawJson)]> {
        match value {
            RawJson::Object(entries) => Some(entries),
            other => {
                self.fail(
                    path,
                    format!("must be a JSON object ({what}); got {}", other.describe()),
                );
                None
            }
        }
    }

    /// The fields of an object, refusing unknown and repeated ones.
    fn object<'a>(
        &mut self,
        path: &str,
        value: &'a RawJson,
        allowed: &[&str],
        what: &str,
    ) -> Option<Fields<'a>> {
        let entries = self.entries(path, value, what)?;
        let mut fields = Fields::new();
        let mut seen = BTreeSet::new();
        for (key, value) in entries {
            let field = join(path, key);
            if !allowed.contains(&key.as_str()) {
                self.fail(
                    field,
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
            } else if !seen.insert(key.as_str()) {
                self.fail(field, "appears twice; keep one");
            } else if *value != RawJson::Null {
                fields.insert(key.as_str(), value);
            }
        }
        Some(fields)
    }

    /// A string without NUL; `empty_ok` says whether "" is allowed.
    fn string(&mut self, path: &str, value: &RawJson, empty_ok: bool) -> Option<String> {
        match value {
            RawJson::Text(s) if s.contains('\0') => {
                self.fail(path, "must not contain a NUL character");
                None
            }
            RawJson::Text(s) if s.is_empty() && !empty_ok => {
                self.fail(path, "must not be empty; omit the field instead");
                None
            }
            RawJson::Text(s) => Some(s.clone()),
            other => {
                self.fail(path, format!("must be a string; got {}", other.describe()));
                None
            }
        }
    }

    /// A whole number in `lo..=hi`.
    fn number(
        &mut self,
        path: &str,
        value: &RawJson,
        (lo, hi): (u64, u64),
        unit: &str,
    ) -> Option<u64> {
        match value {
            RawJson::Int(v) if (i128::from(lo)..=i128::from(hi)).contains(v) => {
                u64::try_from(*v).ok()
            }
            RawJson::Int(v) => {
                self.fail(
                    path,
                    format!("must be between {lo} and {hi}{unit}; got {v}"),
                );
                None
            }
            other => {
                self.fail(
                    path,
                    format!("must be a whole number; got {}", other.describe()),
                );
                None
            }
        }
    }

    fn u32_in(
        &mut self,
        path: &str,
        value: &RawJson,
        (lo, hi): (u32, u32),
        unit: &str,
    ) -> Option<u32> {
        self.number(path, value, (lo.into(), hi.into()), unit)
            .and_then(|v| u32::try_from(v).ok())
    }

    /// The spec in `root`; `None` when a problem was recorded.
    pub(crate) fn spec(
        &mut self,
        root: &RawJson,
        spec_dir: &Path,
        cluster: &ClusterSettings,
    ) -> Option<DeploymentSpec> {
        let top = self.object("", root, TOP_FIELDS, "a deployment spec")?;
        let model = match top.get("model") {
            None => {
                self.fail(
                    "model",
                    "is required: the model's name, e.g. \"mlp\" (letters, digits, '-' and '_')",
                );
                None
            }
            Some(v) => self.string("model", v, true).and_then(|s| {
                ModelId::new(s)
                    .map_err(|e| self.fail("model", e.to_string()))
                    .ok()
            }),
        };
        let deployment = match (top.get("deployment"), &model) {
            (Some(v), _) => self.string("deployment", v, true).and_then(|s| {
                DeploymentId::new(s)
                    .map_err(|e| self.fail("deployment", e.to_string()))
                    .ok()
            }),
            (None, Some(model)) => DeploymentId::new(format!("{model}-v1"))
                .map_err(|e| {
                    self.fail(
                        "deployment",
                        format!("the default <model>-v1 is not a valid id ({e}); set deployment"),
                    );
                })
                .ok(),
            (None, None) => None,
        };
        let autoscaling_settings = match top.get("autoscaling_settings") {
            None => Some(AutoscalingSettings::default()),
            Some(v) => self.settings(v, cluster),
        };
        let resources = match top.get("resources") {
            None => Some(Resources::default()),
            Some(v) => self.resources(v),
        };
        let command = match top.get("command") {
            None => {
                self.fail(
                    "command",
                    "is required: the program and its arguments, \
                     e.g. [\"tidal\", \"model\", \"serve\"]",
                );
                None
            }
            Some(v) => self.command(v),
        };
        let env = match top.get("env") {
            None => Some(BTreeMap::new()),
            Some(v) => self.env(v),
        };
        let health_path = match top.get("health_path") {
            None => Some(DEFAULT_HEALTH_PATH.to_owned()),
            Some(v) => self.string("health_path", v, true).and_then(|p| {
                if p.starts_with('/') {
                    Some(p)
                } else {
                    self.fail(
                        "health_path",
                        format!("must start with '/', e.g. \"/health\"; got {p:?}"),
                    );
                    None
                }
            }),
        };
        let ready_timeout_secs = match top.get("ready_timeout_secs") {
            None => Some(DEFAULT_READY_TIMEOUT_SECS),
            Some(v) => self.u32_in("ready_timeout_secs", v, READY_TIMEOUT_SECS, " seconds"),
        };
        let stop_grace_secs = match top.get("stop_grace_secs") {
            None => Some(DEFAULT_STOP_GRACE_SECS),
            Some(v) => self.u32_in("stop_grace_secs", v, STOP_GRACE_SECS, " seconds"),
        };
        let weights = match top.get("weights") {
            None => Some(Vec::new()),
            Some(v) => self.weights(v, spec_dir),
        };
        Some(DeploymentSpec {
            model: model?,
            deployment: deployment?,
            autoscaling_settings: autoscaling_settings?,
            resources: resources?,
            command: command?,
            env: env?,
            health_path: health_path?,
            ready_timeout_secs: ready_timeout_secs?,
            stop_grace_secs: stop_grace_secs?,
            weights: weights?,
        })
    }

    /// Baseten's settings, read by the settings parser itself (same fields,
    /// `null` handling, defaults and ranges), with field paths added.
    fn settings(
        &mut self,
        value: &RawJson,
        cluster: &ClusterSettings,
    ) -> Option<AutoscalingSettings> {
        const PATH: &str = "autoscaling_settings";
        let entries = self.entries(PATH, value, "Baseten's autoscaling settings")?;
        let mut raw = RawUpdate::default();
        let mut ok = true;
        for (key, value) in entries {
            let field = join(PATH, key);
            match raw.slot(key) {
                None => {
                    self.fail(
                        field,
                        format!(
                            "unknown field; expected one of {}",
                            SETTINGS_FIELDS.join(", ")
                        ),
                    );
                    ok = false;
                }
                Some(Some(_)) => {
                    self.fail(field, "appears twice; keep one");
                    ok = false;
                }
                Some(slot) => *slot = Some(value.to_raw_value()),
            }
        }
        let report = |this: &mut Self, e: InvalidSettings| {
            for problem in e.0 {
                this.fail(join(PATH, problem.field), problem.message);
            }
        };
        let update = match UpdateAutoscalingSettings::try_from(raw) {
            Ok(update) => update,
            Err(e) => {
                report(self, e);
                return None;
            }
        };
        let settings = update.apply(&AutoscalingSettings::default());
        if let Err(e) = settings.validate(cluster) {
            report(self, e);
            return None;
        }
        ok.then_some(settings)
    }

    fn resources(&mut self, value: &RawJson) -> Option<Resources> {
        const PATH: &str = "resources";
        let f = self.object(PATH, value, RESOURCE_FIELDS, "what one replica needs")?;
        let mut ok = true;
        let mut text = |this: &mut Self, key: &str| match f.get(key) {
            None => None,
            Some(v) => {
                let s = this.string(&join(PATH, key), v, false);
                ok &= s.is_some();
                s
            }
        };
        let region = text(self, "region");
        let gpu_type = text(self, "gpu_type");
        let defaults = Resources::default();
        let gpu_count = f.get("gpu_count").map_or(Some(0), |v| {
            self.u32_in("resources.gpu_count", v, (0, u32::MAX), "")
        });
        let cpu_millis = f.get("cpu_millis").map_or(Some(defaults.cpu_millis), |v| {
            self.u32_in(
                "resources.cpu_millis",
                v,
                (0, u32::MAX),
                " thousandths of a core",
            )
        });
        let memory_bytes = f
            .get("memory_bytes")
            .map_or(Some(defaults.memory_bytes), |v| {
                self.number("resources.memory_bytes", v, (0, u64::MAX), " bytes")
            });
        if gpu_type.is_some() && gpu_count == Some(0) {
            self.fail(
                "resources.gpu_type",
                "needs resources.gpu_count of at least 1 (a replica without GPUs has no GPU \
                 type); set gpu_count or remove gpu_type",
            );
            ok = false;
        }
        ok.then_some(())?;
        Some(Resources {
            region,
            gpu_type,
            gpu_count: gpu_count?,
            cpu_millis: cpu_millis?,
            memory_bytes: memory_bytes?,
        })
    }

    fn command(&mut self, value: &RawJson) -> Option<Vec<String>> {
        const USAGE: &str = "a non-empty list of strings: the program and its arguments, \
                             e.g. [\"tidal\", \"model\", \"serve\"]";
        let items = match value {
            RawJson::Array(items) if !items.is_empty() => items,
            other => {
                self.fail(
                    "command",
                    format!("must be {USAGE}; got {}", other.describe()),
                );
                return None;
            }
        };
        let mut command = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("command[{i}]");
            let Some(s) = self.string(&path, item, i > 0) else {
                continue;
            };
            if i == 0 && s.trim().is_empty() {
                self.fail(
                    path,
                    "the program must not be blank; name a program in PATH or an absolute path",
                );
                continue;
            }
            command.push(s);
        }
        (command.len() == items.len()).then_some(command)
    }

    fn env(&mut self, value: &RawJson) -> Option<BTreeMap<String, String>> {
        let entries = self.entries("env", value, "names to string values")?;
        let mut env = BTreeMap::new();
        let mut ok = true;
        for (name, value) in entries {
            let path = join("env", name);
            if name.is_empty() || name.contains(['=', '\0']) {
                self.fail(
                    path,
                    "an environment variable's name must be non-empty, without '=' or NUL",
                );
                ok = false;
            } else if WORKER_ENV.contains(&name.as_str()) {
                self.fail(
                    path,
                    format!(
                        "{name} is set by the worker for every replica ({}); remove it",
                        WORKER_ENV.join(", ")
                    ),
                );
                ok = false;
            } else if env.contains_key(name) {
                self.fail(path, "appears twice; keep one");
                ok = false;
            } else if let RawJson::Text(_) = value {
                match self.string(&path, value, true) {
                    Some(v) => {
                        env.insert(name.clone(), v);
                    }
                    None => ok = false,
                }
            } else {
                self.fail(
                    path,
                    format!(
                        "must be a string (write numbers in quotes, e.g. \"200\"); got {}",
                        value.describe()
                    ),
                );
                ok = false;
            }
        }
        ok.then_some(env)
    }

    fn weights(&mut self, value: &RawJson, spec_dir: &Path) -> Option<Vec<WeightSpec>> {
        let RawJson::Array(items) = value else {
            self.fail(
                "weights",
                format!(
                    "must be a list of weight files \
                     ({{\"name\", \"url\" or \"path\", \"size_bytes\", \"sha256\"}}); got {}",
                    value.describe()
                ),
            );
            return None;
        };
        let mut names = BTreeSet::new();
        let mut weights = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let path = format!("weights[{i}]");
            if let Some(w) = self.weight(&path, item, spec_dir) {
                if names.insert(w.name.clone()) {
                    weights.push(w);
                } else {
                    self.fail(
                        format!("{path}.name"),
                        format!(
                            "another weight file is already named {:?}; names must differ",
                            w.name
                        ),
                    );
                }
            }
        }
        (weights.len() == items.len()).then_some(weights)
    }

    fn weight(&mut self, path: &str, value: &RawJson, spec_dir: &Path) -> Option<WeightSpec> {
        let f = self.object(path, value, WEIGHT_FIELDS, "a weight file")?;
        let problems = self.problems.len();
        let name = match f.get("name") {
            None => {
                self.fail(
                    join(path, "name"),
                    "is required: the file's name in the replica's model directory, \
                     e.g. \"model.safetensors\"",
                );
                None
            }
            Some(v) => self.string(&join(path, "name"), v, true).and_then(|name| {
                if is_plain_file_name(&name) {
                    Some(name)
                } else {
                    self.fail(
                        join(path, "name"),
                        format!(
                            "must be one plain file name (no '/', not '.' or '..'); got {name:?}"
                        ),
                    );
                    None
                }
            }),
        };
        let size_bytes = f
            .get("size_bytes")
            .and_then(|v| self.number(&join(path, "size_bytes"), v, (0, u64::MAX), " bytes"));
        let sha256 = f.get("sha256").and_then(|v| {
            let digest = self.string(&join(path, "sha256"), v, true)?;
            if is_sha256_hex(&digest) {
                Some(digest)
            } else {
                self.fail(
                    join(path, "sha256"),
                    format!(
                        "must be 64 lowercase hex characters (as sha256sum prints); got {digest:?}"
                    ),
                );
                None
            }
        });
        let (url, local_path) = match (f.get("url"), f.get("path")) {
            (Some(_), Some(_)) => {
                self.fail(path, "give url or path, not both");
                (None, None)
            }
            (None, None) => {
                self.fail(
                    path,
                    "needs url (http://, https:// or file:///…) or path (a file relative to the \
                     spec's directory)",
                );
                (None, None)
            }
            (Some(v), None) => {
                let url = self.url(&join(path, "url"), v);
                if url.is_some() {
                    for (key, given) in [
                        ("size_bytes", f.contains_key("size_bytes")),
                        ("sha256", f.contains_key("sha256")),
                    ] {
                        if !given {
                            self.fail(
                                join(path, key),
                                "is required for a url (the worker checks the file against it); \
                                 only a local path may omit it",
                            );
                        }
                    }
                }
                (url, None)
            }
            (None, Some(v)) => match self.local(&join(path, "path"), v, spec_dir) {
                Some((url, local)) => (Some(url), Some(local)),
                None => (None, None),
            },
        };
        if self.problems.len() > problems {
            return None;
        }
        Some(WeightSpec {
            name: name?,
            url: url?,
            local_path,
            size_bytes,
            sha256,
        })
    }

    fn url(&mut self, path: &str, value: &RawJson) -> Option<String> {
        let url = self.string(path, value, true)?;
        let rest = ["http://", "https://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme));
        let ok = match rest {
            Some(rest) => !rest.is_empty() && !rest.starts_with('/'),
            None => url
                .strip_prefix("file://")
                .is_some_and(|p| p.starts_with('/') && p.len() > 1),
        };
        if ok {
            Some(url)
        } else if url.starts_with("file://") {
            self.fail(
                path,
                format!(
                    "a file:// URL needs an absolute path, file:///dir/file (or use \"path\" \
                     for a file next to the spec); got {url:?}"
                ),
            );
            None
        } else {
            self.fail(
                path,
                format!("must be an http://host/…, https://host/… or file:///… URL; got {url:?}"),
            );
            None
        }
    }

    fn local(&mut self, path: &str, value: &RawJson, spec_dir: &Path) -> Option<(String, PathBuf)> {
        let given = self.string(path, value, false)?;
        let resolved = spec_dir.join(&given);
        match resolved.to_str() {
            Some(s) if resolved.is_absolute() => Some((format!("file://{s}"), resolved.clone())),
            Some(_) => {
                self.fail(
                    path,
                    format!(
                        "resolves to {} (relative: the spec's directory {} was not given as an \
                         absolute path)",
                        resolved.display(),
                        spec_dir.display()
                    ),
                );
                None
            }
            None => {
                self.fail(
                    path,
                    format!("{} is not UTF-8; rename the file", resolved.display()),
                );
                None
            }
        }
    }
}
