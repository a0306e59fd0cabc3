//! `tidal deploy FILE` without `--store`: create the deployment through the
//! management API (`CreateDeployment`), or with `--replace` replace an
//! existing one's spec (`ReplaceDeployment`). The spec is checked here first;
//! weights given by a local `path` are measured here (size and sha256) and
//! sent as `file://` URLs, which the workers read.

use std::path::Path;

use tidal_proto::pb;
use tidal_types::{ClusterSettings, DeploymentSpec};
use tonic::Code;

use crate::Failure;
use crate::client::{Connect, as_answered, print};
use crate::mgmt::{Mgmt, deployment_json, print_json};

pub(crate) fn run(api: &Connect, file: &Path, json: bool, replace: bool) -> Result<(), Failure> {
    let target = api.resolve().map_err(|e| match e {
        Failure::Usage(message) => Failure::Usage(format!(
            "{message}; or pass --store HOST:PORT to write the deployment into the store directly"
        )),
        other => other,
    })?;
    let text = crate::read_input(file)?;
    let (spec, message) = request(file, &text)?;
    crate::client::block_on(async move {
        let api = Mgmt::new(target)?;
        let answer = if replace {
            let request = pb::ReplaceDeploymentRequest {
                deployment_id: spec.deployment.to_string(),
                model_id: message.model_id,
                spec: message.spec,
            };
            api.call("ReplaceDeployment", request, |mut c, r| async move {
                c.replace_deployment(r).await
            })
            .await
        } else {
            api.call("CreateDeployment", message, |mut c, r| async move {
                c.create_deployment(r).await
            })
            .await
        };
        let created = match answer {
            Ok(created) => created,
            Err(failure) => {
                let exists = as_answered(&failure)
                    .is_some_and(|a| a.status == format!("gRPC {:?}", Code::AlreadyExists));
                if exists {
                    return Err(Failure::Other(anyhow::anyhow!(
                        "deployment {} of model {} already exists: `tidal deploy --replace {}` \
                         replaces its spec (its desired replicas, status and promotion are \
                         kept), `tidal autoscaling set` changes only its settings; or choose \
                         another `deployment` id",
                        spec.deployment,
                        spec.model,
                        file.display()
                    )));
                }
                return Err(failure);
            }
        };
        let value = deployment_json(created)?;
        if json {
            return print_json(&value);
        }
        let mut out = format!(
            "{} deployment {} (model {}) through the API at {}\n",
            if replace {
                "replaced the spec of"
            } else {
                "created"
            },
            spec.deployment,
            spec.model,
            api.url()
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

/// The spec as read here (its weights measured) and the request to send:
/// every field of the spec, weights as `{name, url, size_bytes, sha256}`.
fn request(
    file: &Path,
    text: &str,
) -> Result<(DeploymentSpec, pb::CreateDeploymentRequest), Failure> {
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
    let message = tidal_proto::spec_message(&spec).map_err(|e| Failure::input(file, e))?;
    let request = pb::CreateDeploymentRequest {
        model_id: spec.model.to_string(),
        spec: Some(message),
    };
    Ok((spec, request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
        let (spec_read, request) = request(&file, &spec.to_string()).unwrap();
        assert_eq!(spec_read.deployment.as_str(), "m-v1");
        assert_eq!(request.model_id, "m");
        let message = request.spec.unwrap();
        let w = &message.weights[0];
        assert_eq!(w.size_bytes, 3);
        assert_eq!(
            w.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            w.url.starts_with("file:///") && w.url.ends_with("/w.bin"),
            "{}",
            w.url
        );
        // The API applies the cluster's limit.
        assert_eq!(message.autoscaling_settings.unwrap().max_replica, Some(50));
    }

    #[test]
    fn a_missing_weight_file_is_an_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            r#"{"model": "m", "command": ["serve"], "weights": [{"name": "w", "path": "nope"}]}"#;
        let e = request(&dir.path().join("spec.json"), spec).unwrap_err();
        assert!(matches!(e, Failure::Input { .. }), "{e:?}");
        assert!(e.to_string().contains("weights[0].path"), "{e}");
    }
}
