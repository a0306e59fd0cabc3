//! `tidal deploy FILE` without `--store`: create the deployment through the
//! management API (POST /v1/models/{model}/deployments). The spec is
//! checked here first; weights given by a local `path` are measured here
//! (size and sha256) and sent as `file://` URLs, which the workers read.

use std::path::Path;

use hyper::Method;
use hyper::body::Bytes;
use serde_json::{Value, json};
use tidal_types::{ClusterSettings, DeploymentSpec};

use crate::Failure;
use crate::client::{Connect, Http, answered, as_answered, print, print_raw, segment};

pub(crate) fn run(api: &Connect, file: &Path, json: bool) -> Result<(), Failure> {
    let target = api.resolve().map_err(|e| match e {
        Failure::Usage(message) => Failure::Usage(format!(
            "{message}; or pass --store HOST:PORT to write the deployment into the store directly"
        )),
        other => other,
    })?;
    let text = crate::read_input(file)?;
    let (spec, body) = body(file, &text)?;
    crate::client::block_on(async move {
        let http = Http::new(target, std::time::Duration::from_secs(30));
        let path = format!("/v1/models/{}/deployments", segment(spec.model.as_str()));
        let answer = http
            .send(Method::POST, &path, Some(Bytes::from(body.to_string())))
            .await?;
        if !answer.is_success() {
            let failure = answered(&answer);
            if answer.status == 409 && as_answered(&failure).is_some() {
                return Err(Failure::Other(anyhow::anyhow!(
                    "deployment {} of model {} already exists (HTTP 409). Updating a \
                     deployment through the API is not supported yet: use `tidal deploy \
                     --store HOST:PORT {}` to replace its spec for now, `tidal autoscaling \
                     set` to change its settings, or choose another `deployment` id",
                    spec.deployment,
                    spec.model,
                    file.display()
                )));
            }
            return Err(failure);
        }
        if json {
            return print_raw(&answer);
        }
        let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let mut out = format!(
            "created deployment {} (model {}) through the API at {}\n",
            spec.deployment,
            spec.model,
            http.url()
        );
        out += &crate::deployments::describe(&value);
        out += &format!("command\n  {}\n", spec.command.join(" "));
        for w in &spec.weights {
            out += &format!(
                "weight {}\n  {} bytes, sha256 {}, {}\n",
                w.name,
                w.size_bytes.unwrap_or_default(),
                w.sha256.as_deref().unwrap_or_default(),
                w.url
            );
        }
        print(&out)
    })
}

/// The spec as read here (its weights measured) and the body to send: the
/// file's JSON with `weights` as `{name, url, size_bytes, sha256}`.
fn body(file: &Path, text: &str) -> Result<(DeploymentSpec, Value), Failure> {
    let absolute = std::path::absolute(file)
        .map_err(|e| Failure::input(file, format!("cannot resolve its directory: {e}")))?;
    let dir = absolute.parent().unwrap_or(Path::new("/"));
    // The cluster's replica limit is the API's to check.
    let unlimited = ClusterSettings {
        per_deployment_replica_limit: u32::MAX,
    };
    let mut spec = DeploymentSpec::from_json(text, dir, &unlimited)
        .map_err(|e| Failure::input(file, crate::deploy::problems(&e)))?;
    crate::deploy::measure_local_weights(&mut spec).map_err(|e| Failure::input(file, e))?;
    let mut body: Value =
        serde_json::from_str(text).map_err(|e| Failure::input(file, format!("not JSON: {e}")))?;
    if let Some(object) = body.as_object_mut()
        && object.contains_key("weights")
    {
        let weights: Vec<Value> = spec
            .weights
            .iter()
            .map(|w| {
                json!({
                    "name": w.name, "url": w.url, "size_bytes": w.size_bytes, "sha256": w.sha256,
                })
            })
            .collect();
        object.insert("weights".into(), Value::Array(weights));
    }
    Ok((spec, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_weights_are_sent_as_measured_file_urls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("w.bin"), b"abc").unwrap();
        let spec = json!({
            "model": "m", "deployment": "m-v1", "command": ["serve"],
            "autoscaling_settings": {"max_replica": 50},
            "weights": [{"name": "w.bin", "path": "w.bin"}],
        });
        let file = dir.path().join("spec.json");
        let (spec_read, body) = body(&file, &spec.to_string()).unwrap();
        assert_eq!(spec_read.deployment.as_str(), "m-v1");
        let w = &body["weights"][0];
        assert_eq!(w["size_bytes"], 3);
        assert_eq!(
            w["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let url = w["url"].as_str().unwrap();
        assert!(
            url.starts_with("file:///") && url.ends_with("/w.bin"),
            "{url}"
        );
        assert!(w.get("path").is_none());
        // The rest is sent as written (the API applies the cluster's limit).
        assert_eq!(body["autoscaling_settings"], json!({"max_replica": 50}));
    }

    #[test]
    fn a_missing_weight_file_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            r#"{"model": "m", "command": ["serve"], "weights": [{"name": "w", "path": "nope"}]}"#;
        let e = body(&dir.path().join("spec.json"), spec).unwrap_err();
        assert!(matches!(e, Failure::Input { .. }), "{e:?}");
        assert!(e.to_string().contains("weights[0].path"), "{e}");
    }
}
