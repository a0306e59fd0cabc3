//! `tidal models`: the models and their deployments (GET /v1/models).

use clap::Args;
use serde_json::Value;

use crate::Failure;
use crate::client::{Connect, EXIT_CODES, Http, print, print_raw};
use crate::grid::{cell, table};

/// List the models: their deployments, production and development
/// deployments, and environments (GET /v1/models)
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct ModelsArgs {
    #[command(flatten)]
    api: Connect,
    /// Print the API's JSON as it came.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: ModelsArgs) -> Result<(), Failure> {
    crate::client::block_on(async {
        let http = Http::api(&args.api)?;
        let (value, answer) = http.get("/v1/models").await?;
        if args.json {
            return print_raw(&answer);
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
