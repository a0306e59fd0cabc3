//! `tidal models`: the models and their deployments (`ListModels`).

use clap::Args;
use serde_json::{Value, json};
use tidal_proto::pb;

use crate::Failure;
use crate::client::{Connect, EXIT_CODES, print};
use crate::grid::{cell, table};
use crate::mgmt::{Mgmt, print_json};

/// List the models: their deployments, production and development
/// deployments, and environments
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct ModelsArgs {
    #[command(flatten)]
    api: Connect,
    /// Print JSON: `{"models": [...]}`, as `GET /v1/models` answers.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ModelsArgs) -> Result<(), Failure> {
    crate::client::block_on(async {
        let api = Mgmt::connect(&args.api)?;
        let answer = api
            .call(
                "ListModels",
                pb::ListModelsRequest {},
                |mut c, r| async move { c.list_models(r).await },
            )
            .await?;
        let models: Vec<Value> = answer.models.iter().map(tidal_api::views::model).collect();
        let value = json!({ "models": models });
        if args.json {
            return print_json(&value);
        }
        print(&render(&value))
    })
}

fn render(value: &Value) -> String {
    let models = value["models"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if models.is_empty() {
        return "no models; deploy one with `tidal deploy FILE.json`\n".to_owned();
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                cell(m.get("id")),
                cell(m.get("production_deployment_id")),
                cell(m.get("development_deployment_id")),
                list(&m["deployment_ids"]),
                list(&m["environments"]),
            ]
        })
        .collect();
    table(
        &[
            "MODEL",
            "PRODUCTION",
            "DEVELOPMENT",
            "DEPLOYMENTS",
            "ENVIRONMENTS",
        ],
        &rows,
    )
}

/// A JSON array of strings as `a,b`, or `-`.
pub(crate) fn list(value: &Value) -> String {
    let items: Vec<&str> = value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_per_model() {
        let value = serde_json::json!({"models": [{
            "id": "mlp", "deployment_ids": ["mlp-v1", "mlp-v2"],
            "production_deployment_id": "mlp-v2", "development_deployment_id": null,
            "environments": ["production"],
        }]});
        let text = render(&value);
        let line = text.lines().nth(1).unwrap();
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            ["mlp", "mlp-v2", "-", "mlp-v1,mlp-v2", "production"]
        );
        assert!(render(&serde_json::json!({"models": []})).contains("tidal deploy"));
    }
}
