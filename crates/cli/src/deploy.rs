//! `tidal deploy`: read a deployment spec (JSON), check it, measure its
//! local weight files, and create the deployment through the management
//! API (`deploy_api.rs`), or with `--store` write its record into the store.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use prost::Message;
use sha2::{Digest, Sha256};
use tidal_proto::{deployment_record, pb, replace_spec};
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Rejection, Table};
use tidal_store::client::Client;
use tidal_types::{ClusterSettings, DeploymentSpec, InvalidSpec};

use crate::Failure;

/// Deploy a model from a JSON spec (create it; with --store, create it or
/// replace its stored spec)
///
/// The spec (snake_case fields; unknown or repeated fields are refused):
///
///   model                 the model's name (required)
///   deployment            the deployment's id (default: MODEL-v1)
///   autoscaling_settings  Baseten's settings, same names, defaults and ranges
///   resources             {region, gpu_type, gpu_count (0), cpu_millis (1000),
///                          memory_bytes (1 GiB)}
///   command               ["program", "arg", …] (required; a name is looked
///                          up in the worker's PATH)
///   env                   {"NAME": "value"} (not PORT, TIDAL_MODEL_DIR,
///                          TIDAL_REPLICA_ID, TIDAL_WORKER_ID, CUDA_VISIBLE_DEVICES:
///                          the worker sets those)
///   health_path           "/health"; ready_timeout_secs 600 (1-86400);
///                          stop_grace_secs 30 (1-3600)
///   weights               [{name, url, size_bytes, sha256}] with an http://,
///                          https:// or file:/// url, or [{name, path}] with a
///                          path relative to the spec file: size_bytes and
///                          sha256 may then be omitted and are computed here
///                          from the file (a given size_bytes is checked; a
///                          given sha256 is trusted here and checked by the
///                          worker when it fetches the file)
///
/// Without --store, the deployment is created through the management API
/// (found as every API command finds it: --api-url/--api-key,
/// TIDAL_API_URL/TIDAL_API_KEY, --cluster-file, ./.tidal/cluster.json);
/// local weight paths are measured here and sent as file:// URLs. A
/// deployment that exists is refused there (exit status 1) unless
/// --replace is given: then its spec is replaced (its desired replicas,
/// status and promotion are kept; running replicas are not restarted).
///
/// With --store, the deployment's record is written into the store's
/// DEPLOYMENTS table directly (compare-and-set): an existing deployment
/// gets its spec replaced and keeps its desired replicas, status and
/// reasons; its replicas already running are not restarted.
///
/// A spec that is refused exits with status 2 and writes nothing.
/// Exit status: 0 success; 1 the API answered an error (or the store
/// refused the write); 2 bad usage or input; 3 the API cannot be reached.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct DeployArgs {
    /// Write into the store at these endpoints (host:port, comma-separated
    /// or repeated) instead of calling the management API.
    #[arg(
        long,
        value_name = "HOST:PORT",
        value_delimiter = ',',
        conflicts_with_all = ["api_url", "api_key", "cluster_file"]
    )]
    store: Vec<String>,
    #[command(flatten)]
    api: crate::client::Connect,
    /// The deployment spec.
    #[arg(value_name = "FILE.json")]
    file: PathBuf,
    /// Through the API: replace the spec of the existing deployment
    /// (refused if it does not exist). With --store an existing deployment
    /// is always replaced.
    #[arg(long, conflicts_with = "store")]
    replace: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

/// How long store calls are retried (a cluster may be electing a leader).
const DEADLINE: Duration = Duration::from_secs(15);
/// Compare-and-set attempts against concurrent writers (the controller
/// writes desired replicas on the same record).
const CAS_ATTEMPTS: usize = 8;

/// What the write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Created,
    Updated { desired: u32 },
    Unchanged { desired: u32 },
}

pub(crate) fn run(args: DeployArgs) -> Result<(), Failure> {
    if args.store.is_empty() {
        return crate::deploy_api::run(&args.api, &args.file, args.json, args.replace);
    }
    let file = &args.file;
    let text = crate::read_input(file)?;
    let absolute = std::path::absolute(file)
        .map_err(|e| Failure::input(file, format!("cannot resolve its directory: {e}")))?;
    let dir = absolute.parent().unwrap_or(Path::new("/"));
    let mut spec = DeploymentSpec::from_json(&text, dir, &ClusterSettings::default())
        .map_err(|e| Failure::input(file, problems(&e)))?;
    measure_local_weights(&mut spec).map_err(|e| Failure::input(file, e))?;
    let record = deployment_record(&spec, &rfc3339(SystemTime::now()))
        .map_err(|e| Failure::input(file, e))?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    let (action, revision) = runtime.block_on(async {
        // The client's channels need the runtime.
        let client =
            Client::new(&args.store, DEADLINE).map_err(|e| Failure::Usage(e.to_string()))?;
        write(&client, file, record).await
    })?;
    let summary = if args.json {
        format!("{}\n", summary_json(&spec, action, revision))
    } else {
        summary_text(&spec, action, revision, &args.store)
    };
    crate::write_stdout(|out| out.write_all(summary.as_bytes()))
}

/// One problem as `field: message`; several, one per line.
pub(crate) fn problems(e: &InvalidSpec) -> String {
    match e.0.as_slice() {
        [one] => one.to_string(),
        many => {
            let mut text = format!("{} problems:", many.len());
            for p in many {
                let _ = write!(text, "\n  {p}");
            }
            text
        }
    }
}

/// Fills in the size and sha256 of weights given by a local `path`, and
/// checks a given size against the file. Every problem, `field: message`.
pub(crate) fn measure_local_weights(spec: &mut DeploymentSpec) -> Result<(), String> {
    let mut problems = Vec::new();
    for (i, w) in spec.weights.iter_mut().enumerate() {
        let Some(path) = w.local_path.clone() else {
            continue;
        };
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                problems.push(format!(
                    "weights[{i}].path: {} is not a regular file",
                    path.display()
                ));
                continue;
            }
            Err(e) => {
                problems.push(format!(
                    "weights[{i}].path: cannot read {}: {e}",
                    path.display()
                ));
                continue;
            }
        };
        match w.size_bytes {
            Some(given) if given != size => {
                problems.push(format!(
                    "weights[{i}].size_bytes: is {given} but {} has {size} bytes; fix it or \
                     omit it to have it measured",
                    path.display()
                ));
                continue;
            }
            _ => w.size_bytes = Some(size),
        }
        if w.sha256.is_none() {
            match sha256_of(&path) {
                Ok(digest) => w.sha256 = Some(digest),
                Err(e) => problems.push(format!(
                    "weights[{i}].path: cannot read {}: {e}",
                    path.display()
                )),
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The sha256 of a file, read in 1 MiB pieces, as lowercase hex.
fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

/// Creates the record, or replaces the stored one's spec (compare-and-set
/// on the mod_revision read). Returns what was done and the revision.
async fn write(
    client: &Client,
    file: &Path,
    record: pb::DeploymentRecord,
) -> Result<(Action, u64), Failure> {
    let id = record
        .deployment
        .as_ref()
        .map(|d| d.id.clone())
        .unwrap_or_default();
    let store_error = |e: tidal_store::client::ClientError| {
        Failure::Other(anyhow::anyhow!("deployment {id}: {e}"))
    };
    for _ in 0..CAS_ATTEMPTS {
        let (stored, read_at) = client
            .get(Table::Deployments, &id)
            .await
            .map_err(store_error)?;
        let (value, precondition, action) = match stored {
            None => (record.clone(), Precondition::MustNotExist, Action::Created),
            Some(kv) => {
                let old = pb::DeploymentRecord::decode(kv.value.as_slice()).map_err(|e| {
                    Failure::Other(anyhow::anyhow!(
                        "deployment {id}: the stored record cannot be decoded ({e}); it was \
                         not replaced"
                    ))
                })?;
                let new =
                    replace_spec(&old, record.clone()).map_err(|e| Failure::input(file, e))?;
                if new == old {
                    return Ok((
                        Action::Unchanged {
                            desired: old.desired_replicas,
                        },
                        read_at,
                    ));
                }
                let desired = new.desired_replicas;
                (
                    new,
                    Precondition::ModRevision(kv.mod_revision),
                    Action::Updated { desired },
                )
            }
        };
        let put = Request::put(
            Table::Deployments,
            id.as_str(),
            value.encode_to_vec(),
            precondition,
            None,
        );
        let written = client.write(&put).await.map_err(store_error)?;
        match written.outcome {
            Outcome::Written { revision } => return Ok((action, revision)),
            // Someone wrote it meanwhile (its controller, another deploy): re-read.
            Outcome::Rejected(Rejection::Conflict { .. }) => {}
            other => {
                return Err(Failure::Other(anyhow::anyhow!(
                    "deployment {id}: the store refused the write: {other:?}"
                )));
            }
        }
    }
    Err(Failure::Other(anyhow::anyhow!(
        "deployment {id}: the record kept changing while it was written ({CAS_ATTEMPTS} \
         attempts); try again"
    )))
}

fn settings_line(spec: &DeploymentSpec) -> String {
    let s = &spec.autoscaling_settings;
    let mut line = format!(
        "min_replica {}, max_replica {}, concurrency_target {}, target_utilization_percentage {}, \
         autoscaling_window {} s, scale_down_delay {} s",
        s.min_replica,
        s.max_replica,
        s.concurrency_target,
        s.target_utilization_percentage,
        s.autoscaling_window,
        s.scale_down_delay
    );
    if let Some(rate) = s.max_scale_down_rate {
        let _ = write!(line, ", max_scale_down_rate {rate} %");
    }
    if let Some(window) = s.burst_window {
        let _ = write!(
            line,
            ", burst_window {window} s at {} %",
            s.effective_burst_threshold().unwrap_or_default()
        );
    }
    line
}

fn summary_text(spec: &DeploymentSpec, action: Action, revision: u64, store: &[String]) -> String {
    let id = &spec.deployment;
    let mut out = match action {
        Action::Created => format!(
            "created deployment {id} (model {}) at revision {revision} of the store at {}\n",
            spec.model,
            store.join(",")
        ),
        Action::Updated { desired } => format!(
            "updated deployment {id} (model {}) at revision {revision}: spec replaced; kept \
             desired replicas {desired}, status and reasons (running replicas are not \
             restarted)\n",
            spec.model
        ),
        Action::Unchanged { desired } => format!(
            "deployment {id} (model {}) already has this spec; nothing written (desired \
             replicas {desired})\n",
            spec.model
        ),
    };
    let r = &spec.resources;
    let gpus = match (r.gpu_count, &r.gpu_type) {
        (0, _) => "no GPUs".to_owned(),
        (n, Some(t)) => format!("{n} GPU(s) of type {t}"),
        (n, None) => format!("{n} GPU(s) of any type"),
    };
    let region = r.region.as_deref().unwrap_or("any region");
    let _ = writeln!(out, "  autoscaling: {}", settings_line(spec));
    let _ = writeln!(
        out,
        "  command:     {}  (health {}, ready within {} s, stop grace {} s)",
        spec.command.join(" "),
        spec.health_path,
        spec.ready_timeout_secs,
        spec.stop_grace_secs
    );
    let _ = writeln!(
        out,
        "  resources:   {} millicores, {} MiB, {gpus}, {region}",
        r.cpu_millis,
        r.memory_bytes >> 20
    );
    if !spec.env.is_empty() {
        let env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "  env:         {}", env.join(" "));
    }
    for w in &spec.weights {
        let _ = writeln!(
            out,
            "  weight:      {}  {} bytes  sha256 {}  {}",
            w.name,
            w.size_bytes.unwrap_or_default(),
            w.sha256.as_deref().unwrap_or_default(),
            w.url
        );
    }
    out
}

fn summary_json(spec: &DeploymentSpec, action: Action, revision: u64) -> serde_json::Value {
    let (name, desired) = match action {
        Action::Created => ("created", None),
        Action::Updated { desired } => ("updated", Some(desired)),
        Action::Unchanged { desired } => ("unchanged", Some(desired)),
    };
    let r = &spec.resources;
    serde_json::json!({
        "action": name,
        "deployment": spec.deployment.as_str(),
        "model": spec.model.as_str(),
        "revision": revision,
        "desired_replicas": desired,
        "autoscaling_settings": spec.autoscaling_settings,
        "command": spec.command,
        "env": spec.env,
        "health_path": spec.health_path,
        "ready_timeout_secs": spec.ready_timeout_secs,
        "stop_grace_secs": spec.stop_grace_secs,
        "resources": {
            "region": r.region, "gpu_type": r.gpu_type, "gpu_count": r.gpu_count,
            "cpu_millis": r.cpu_millis, "memory_bytes": r.memory_bytes,
        },
        "weights": spec.weights.iter().map(|w| serde_json::json!({
            "name": w.name, "url": w.url, "size_bytes": w.size_bytes, "sha256": w.sha256,
        })).collect::<Vec<_>>(),
    })
}

/// `time` as RFC 3339 in UTC, to the second (`2025-01-02T03:04:05Z`).
pub(crate) fn rfc3339(time: SystemTime) -> String {
    tidal_types::time::rfc3339(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> (PathBuf, DeploymentSpec) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/mlp");
        let dir = std::path::absolute(dir).unwrap();
        let text = std::fs::read_to_string(dir.join("deployment.json")).unwrap();
        let spec = DeploymentSpec::from_json(&text, &dir, &ClusterSettings::default()).unwrap();
        (dir, spec)
    }

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn the_example_is_measured_and_the_worker_accepts_its_record() {
        let (dir, mut spec) = example();
        measure_local_weights(&mut spec).unwrap();
        let weights = dir.join("model.safetensors");
        let w = &spec.weights[0];
        assert_eq!(
            w.size_bytes,
            Some(std::fs::metadata(&weights).unwrap().len())
        );
        assert_eq!(w.sha256.as_deref().map(str::len), Some(64));
        let record = deployment_record(&spec, "2025-01-01T00:00:00Z").unwrap();
        let runtime = tidal_worker::spec::RuntimeSpec::from_record("mlp-v1", &record).unwrap();
        assert_eq!(runtime.command, "tidal");
        assert_eq!(runtime.args, ["model", "serve"]);
        assert_eq!(runtime.env["TIDAL_MODEL_DELAY_MS"], "200");
        assert_eq!(runtime.health_path, "/health");
        assert_eq!(runtime.weights[0].name, "model.safetensors");
        assert_eq!(
            runtime.weights[0].spec.url,
            format!("file://{}", weights.display())
        );
        assert_eq!(runtime.weights[0].spec.sha256, *w.sha256.as_ref().unwrap());
        assert_eq!(runtime.ready_timeout, Some(Duration::from_secs(60)));
        assert_eq!(runtime.stop_grace, Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_wrong_size_or_a_missing_file_is_named_by_its_field() {
        let (_, mut spec) = example();
        spec.weights[0].size_bytes = Some(1);
        let err = measure_local_weights(&mut spec).unwrap_err();
        assert!(err.starts_with("weights[0].size_bytes: is 1 but "), "{err}");
        let (_, mut spec) = example();
        spec.weights[0].local_path = Some("/nonexistent/model.safetensors".into());
        let err = measure_local_weights(&mut spec).unwrap_err();
        assert!(
            err.starts_with("weights[0].path: cannot read /nonexistent/model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_of(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
