//! `tidal deployments`, `tidal promote`, `tidal activate`, `tidal
//! deactivate`: a model's deployments through the management API.

use clap::Args;
use serde_json::{Value, json};
use tidal_proto::pb;

use crate::Failure;
use crate::autoscaling::{SettingsFlags, settings_text};
use crate::client::{Connect, EXIT_CODES, print};
use crate::grid::{cell, fields, table};
use crate::mgmt::{Mgmt, deployment_json, print_json, which};

/// List a model's deployments, or show one with its settings and status
///
/// `tidal deployments MODEL` lists them (`ListDeployments`); `tidal
/// deployments MODEL DEPLOYMENT` shows one (`GetDeployment`), where
/// DEPLOYMENT is a deployment id, `production` or `development`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct DeploymentsArgs {
    /// The model's id.
    model: String,
    /// A deployment id, `production` or `development` (omit to list them
    /// all).
    deployment: Option<String>,
    #[command(flatten)]
    api: Connect,
    /// Print JSON, as the REST API answers: `{"deployments": [...]}`, or
    /// one `DeploymentV1`.
    #[arg(long)]
    json: bool,
}

/// A model and one of its deployments.
#[derive(Debug, Args)]
pub(crate) struct Which {
    /// The model's id.
    model: String,
    /// A deployment id, `production` or `development`.
    deployment: String,
    #[command(flatten)]
    api: Connect,
    /// Print JSON, as the REST API answers (promote: the `DeploymentV1`;
    /// activate, deactivate: `{"success": true}`).
    #[arg(long)]
    json: bool,
}

/// Promote a deployment to production (`PromoteDeployment`)
///
/// Its autoscaling settings carry over unless the flags below override
/// some of them. The previous production deployment is deactivated unless
/// --scale-down-previous-production=false. An inactive deployment must be
/// activated first.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct PromoteArgs {
    #[command(flatten)]
    which: Which,
    /// Deactivate the previous production deployment [default: true, as on
    /// Baseten]; `=false` keeps it active.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    scale_down_previous_production: Option<bool>,
    #[command(flatten)]
    settings: SettingsFlags,
}

/// Activate a deployment: an inactive one becomes ACTIVE and can run
/// replicas again (`ActivateDeployment`)
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct ActivateArgs {
    #[command(flatten)]
    which: Which,
}

/// Deactivate a deployment: its replicas stop and none runs until it is
/// activated; requests to it are refused (`DeactivateDeployment`)
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct DeactivateArgs {
    #[command(flatten)]
    which: Which,
}

pub(crate) fn run(args: DeploymentsArgs) -> Result<(), Failure> {
    crate::client::block_on(async move {
        let api = Mgmt::connect(&args.api)?;
        match &args.deployment {
            None => {
                let request = pb::ListDeploymentsRequest {
                    model_id: args.model.clone(),
                };
                let answer = api
                    .call("ListDeployments", request, |mut c, r| async move {
                        c.list_deployments(r).await
                    })
                    .await?;
                let list = answer
                    .deployments
                    .into_iter()
                    .map(deployment_json)
                    .collect::<Result<Vec<_>, _>>()?;
                let value = json!({ "deployments": list });
                if args.json {
                    return print_json(&value);
                }
                print(&list_text(&args.model, &value))
            }
            Some(deployment) => {
                let value = deployment_json(api.deployment(&args.model, deployment).await?)?;
                if args.json {
                    return print_json(&value);
                }
                print(&describe(&value))
            }
        }
    })
}

pub(crate) fn promote(args: PromoteArgs) -> Result<(), Failure> {
    let which_one = args.which;
    let request = pb::PromoteDeploymentRequest {
        deployment: Some(which(&which_one.model, &which_one.deployment)),
        scale_down_previous_production: args.scale_down_previous_production,
        preserve_env_instance_type: None,
        autoscaling_settings: args.settings.update().map(Into::into),
    };
    crate::client::block_on(async move {
        let api = Mgmt::connect(&which_one.api)?;
        let answer = api
            .call("PromoteDeployment", request, |mut c, r| async move {
                c.promote_deployment(r).await
            })
            .await?;
        let value = deployment_json(answer)?;
        if which_one.json {
            return print_json(&value);
        }
        print(&format!(
            "promoted deployment {} of model {} to production\n{}",
            cell(value.get("id")),
            which_one.model,
            describe(&value)
        ))
    })
}

pub(crate) fn activate(args: ActivateArgs) -> Result<(), Failure> {
    set_status(args.which, true)
}

pub(crate) fn deactivate(args: DeactivateArgs) -> Result<(), Failure> {
    set_status(args.which, false)
}

/// `ActivateDeployment` or `DeactivateDeployment`, then the deployment's
/// status (from the answer).
fn set_status(args: Which, activate: bool) -> Result<(), Failure> {
    crate::client::block_on(async move {
        let api = Mgmt::connect(&args.api)?;
        let request = which(&args.model, &args.deployment);
        let answer = if activate {
            api.call("ActivateDeployment", request, |mut c, r| async move {
                c.activate_deployment(r).await
            })
            .await?
        } else {
            api.call("DeactivateDeployment", request, |mut c, r| async move {
                c.deactivate_deployment(r).await
            })
            .await?
        };
        if args.json {
            return print_json(&json!({ "success": true }));
        }
        let value = deployment_json(answer)?;
        let id = cell(value.get("id"));
        let status = cell(value.get("status"));
        let text = if activate {
            format!(
                "activated deployment {id} of model {}: status {status}\n",
                args.model
            )
        } else {
            format!(
                "deactivated deployment {id} of model {m}: status {status}; no replica runs \
                 until `tidal activate {m} {id}`\n",
                m = args.model
            )
        };
        print(&text)
    })
}

/// Where a deployment stands: its environment, or `development`.
fn environment(d: &Value) -> String {
    match d.get("environment") {
        Some(Value::String(env)) => env.clone(),
        _ if d["is_development"] == json!(true) => "development".to_owned(),
        _ => "-".to_owned(),
    }
}

/// A model's deployments as a table.
fn list_text(model: &str, value: &Value) -> String {
    let list = value["deployments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if list.is_empty() {
        return format!("model {model} has no deployments\n");
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            let s = &d["autoscaling_settings"];
            vec![
                cell(d.get("id")),
                cell(d.get("status")),
                environment(d),
                cell(d.get("active_replica_count")),
                format!(
                    "{}-{}",
                    cell(s.get("min_replica")),
                    cell(s.get("max_replica"))
                ),
                cell(s.get("concurrency_target")),
                cell(d.get("created_at")),
            ]
        })
        .collect();
    table(
        &[
            "DEPLOYMENT",
            "STATUS",
            "ENVIRONMENT",
            "READY",
            "REPLICAS",
            "TARGET",
            "CREATED",
        ],
        &rows,
    )
}

/// One deployment (a `DeploymentV1`) with its settings, for people.
pub(crate) fn describe(d: &Value) -> String {
    let yes_no = |key: &str| if d[key] == json!(true) { "yes" } else { "no" }.to_owned();
    let labels = d["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    let mut out = format!(
        "deployment {} (model {})\n",
        cell(d.get("id")),
        cell(d.get("model_id"))
    );
    out += &fields(&[
        ("status", cell(d.get("status"))),
        ("environment", environment(d)),
        ("production", yes_no("is_production")),
        ("development", yes_no("is_development")),
        ("ready replicas", cell(d.get("active_replica_count"))),
        ("created", cell(d.get("created_at"))),
        ("labels", labels),
    ]);
    out += "autoscaling settings\n";
    out += &settings_text(&d["autoscaling_settings"]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({
            "id": "mlp-v1", "created_at": "2025-01-02T03:04:05Z", "name": "mlp-v1",
            "model_id": "mlp", "is_production": true, "is_development": false,
            "status": "ACTIVE", "active_replica_count": 2,
            "autoscaling_settings": {
                "min_replica": 0, "max_replica": 10, "autoscaling_window": 10,
                "scale_down_delay": 3, "concurrency_target": 2,
                "target_utilization_percentage": 100, "max_scale_down_rate": null,
                "target_in_flight_tokens": null
            },
            "instance_type_name": null, "environment": "production", "labels": {}
        })
    }

    #[test]
    fn the_list_has_a_row_per_deployment() {
        let text = list_text("mlp", &json!({ "deployments": [deployment()] }));
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "mlp-v1",
                "ACTIVE",
                "production",
                "2",
                "0-10",
                "2",
                "2025-01-02T03:04:05Z"
            ]
        );
        assert!(list_text("x", &json!({"deployments": []})).contains("no deployments"));
    }

    #[test]
    fn one_deployment_shows_status_and_settings() {
        let text = describe(&deployment());
        assert!(
            text.starts_with("deployment mlp-v1 (model mlp)\n"),
            "{text}"
        );
        assert!(text.contains("status          ACTIVE"), "{text}");
        assert!(text.contains("ready replicas  2"), "{text}");
        assert!(
            text.contains("scale_down_delay               3 s"),
            "{text}"
        );
    }
}
