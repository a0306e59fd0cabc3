//! `tidal autoscaling get|set MODEL DEPLOYMENT`: a deployment's autoscaling
//! settings through the management API, and the settings flags that
//! `tidal promote` shares.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tidal_proto::pb;
use tidal_types::UpdateAutoscalingSettings;

use crate::Failure;
use crate::client::{Connect, EXIT_CODES, print};
use crate::grid::fields;
use crate::mgmt::{Mgmt, deployment_json, print_json, which};

/// Read or change a deployment's autoscaling settings
///
/// DEPLOYMENT is a deployment id, or `production` or `development`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct AutoscalingArgs {
    #[command(subcommand)]
    command: AutoscalingCommand,
}

#[derive(Debug, Subcommand)]
enum AutoscalingCommand {
    /// Print a deployment's autoscaling settings (`GetDeployment`; --json
    /// prints its autoscaling_settings object as the REST API shows it)
    #[command(after_help = EXIT_CODES)]
    Get {
        /// The model's id.
        model: String,
        /// A deployment id, `production` or `development`.
        deployment: String,
        #[command(flatten)]
        api: Connect,
        /// Print the settings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change some of a deployment's autoscaling settings: only the fields
    /// given change (`UpdateAutoscalingSettings`); prints the API's status
    /// (ACCEPTED, QUEUED, UNCHANGED) and message. A value out of range is
    /// refused by the API, naming the field (exit status 1).
    #[command(after_help = EXIT_CODES)]
    Set {
        /// The model's id.
        model: String,
        /// A deployment id, `production` or `development`.
        deployment: String,
        #[command(flatten)]
        settings: SettingsFlags,
        #[command(flatten)]
        api: Connect,
        /// Print JSON: `{status, message}`, as the REST API answers.
        #[arg(long)]
        json: bool,
    },
}

/// A number, or `off` (JSON null: the feature is turned off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Toggle(pub Option<u32>);

fn toggle(text: &str) -> Result<Toggle, String> {
    match text.trim() {
        "off" | "none" | "null" => Ok(Toggle(None)),
        n => n
            .parse::<u32>()
            .map(|n| Toggle(Some(n)))
            .map_err(|_| format!("expected a whole number ≥ 0 or `off`; got {text:?}")),
    }
}

/// Baseten's autoscaling settings as flags; only those given are sent.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Autoscaling settings")]
pub(crate) struct SettingsFlags {
    /// min_replica: the fewest replicas (0 lets it scale to zero).
    #[arg(long, value_name = "N")]
    min_replica: Option<u32>,
    /// max_replica: the most replicas (at most the cluster's limit).
    #[arg(long, value_name = "N")]
    max_replica: Option<u32>,
    /// autoscaling_window: seconds of traffic averaged (10-3600).
    #[arg(long, value_name = "S")]
    autoscaling_window: Option<u32>,
    /// scale_down_delay: seconds a replica must be unneeded before it goes
    /// (0-3600).
    #[arg(long, value_name = "S")]
    scale_down_delay: Option<u32>,
    /// concurrency_target: requests one replica handles at once (≥ 1).
    #[arg(long, value_name = "N")]
    concurrency_target: Option<u32>,
    /// target_utilization_percentage: the share of concurrency_target to
    /// aim for (1-100).
    #[arg(long, value_name = "P")]
    target_utilization_percentage: Option<u32>,
    /// max_scale_down_rate: at most P % of the replicas removed per window
    /// (1-50), or `off`.
    #[arg(long, value_name = "P|off", value_parser = toggle)]
    max_scale_down_rate: Option<Toggle>,
    /// burst_window (tidal's): a short window in seconds that scales up
    /// faster in a burst, or `off`.
    #[arg(long, value_name = "S|off", value_parser = toggle)]
    burst_window: Option<Toggle>,
    /// burst_threshold_percentage (tidal's): burst mode starts when the
    /// short window wants this percentage of the current replicas.
    #[arg(long, value_name = "P|off", value_parser = toggle)]
    burst_threshold_percentage: Option<Toggle>,
}

impl SettingsFlags {
    /// The given fields as an update (`None` when none is given).
    pub(crate) fn update(&self) -> Option<UpdateAutoscalingSettings> {
        let toggle = |t: Option<Toggle>| t.map(|Toggle(v)| v);
        let update = UpdateAutoscalingSettings {
            min_replica: self.min_replica,
            max_replica: self.max_replica,
            autoscaling_window: self.autoscaling_window,
            scale_down_delay: self.scale_down_delay,
            concurrency_target: self.concurrency_target,
            target_utilization_percentage: self.target_utilization_percentage,
            max_scale_down_rate: toggle(self.max_scale_down_rate),
            target_in_flight_tokens: None,
            burst_window: toggle(self.burst_window),
            burst_threshold_percentage: toggle(self.burst_threshold_percentage),
        };
        (update != UpdateAutoscalingSettings::default()).then_some(update)
    }
}

pub(crate) fn run(args: AutoscalingArgs) -> Result<(), Failure> {
    match args.command {
        AutoscalingCommand::Get {
            model,
            deployment,
            api,
            json,
        } => crate::client::block_on(async move {
            let api = Mgmt::connect(&api)?;
            let value = deployment_json(api.deployment(&model, &deployment).await?)?;
            let settings = &value["autoscaling_settings"];
            if json {
                return print_json(settings);
            }
            print(&format!(
                "autoscaling settings of deployment {} (model {})\n{}",
                crate::grid::cell(value.get("id")),
                model,
                settings_text(settings)
            ))
        }),
        AutoscalingCommand::Set {
            model,
            deployment,
            settings,
            api,
            json,
        } => {
            let Some(update) = settings.update() else {
                return Err(Failure::Usage(
                    "give at least one setting to change, e.g. --max-replica 4 (see `tidal \
                     autoscaling set --help`)"
                        .into(),
                ));
            };
            crate::client::block_on(async move {
                let api = Mgmt::connect(&api)?;
                let request = pb::UpdateAutoscalingSettingsRequest {
                    deployment: Some(which(&model, &deployment)),
                    settings: Some(update.into()),
                };
                let answer = api
                    .call(
                        "UpdateAutoscalingSettings",
                        request,
                        |mut c, r| async move { c.update_autoscaling_settings(r).await },
                    )
                    .await?;
                let answer = tidal_types::UpdateAutoscalingResponse::try_from(answer)
                    .map_err(|e| Failure::Other(anyhow::anyhow!("the API's answer: {e}")))?;
                let value = json!(answer);
                if json {
                    return print_json(&value);
                }
                print(&format!(
                    "{}: {}\n",
                    crate::grid::cell(value.get("status")),
                    crate::grid::cell(value.get("message"))
                ))
            })
        }
    }
}

/// The settings, one per line, with their units.
pub(crate) fn settings_text(s: &Value) -> String {
    let n = |key: &str| crate::grid::cell(s.get(key));
    let unit = |key: &str, unit: &str| match s.get(key) {
        None | Some(Value::Null) => "off".to_owned(),
        Some(v) => format!("{} {unit}", crate::grid::cell(Some(v))),
    };
    let mut rows = vec![
        ("min_replica", n("min_replica")),
        ("max_replica", n("max_replica")),
        ("autoscaling_window", unit("autoscaling_window", "s")),
        ("scale_down_delay", unit("scale_down_delay", "s")),
        ("concurrency_target", n("concurrency_target")),
        (
            "target_utilization_percentage",
            unit("target_utilization_percentage", "%"),
        ),
        ("max_scale_down_rate", unit("max_scale_down_rate", "%")),
    ];
    if s.get("burst_window").is_some_and(|v| !v.is_null()) {
        rows.push(("burst_window", unit("burst_window", "s")));
        rows.push((
            "burst_threshold_percentage",
            unit("burst_threshold_percentage", "%"),
        ));
    }
    fields(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        settings: SettingsFlags,
    }

    #[test]
    fn only_the_given_settings_are_sent() {
        let cli = Cli::parse_from([
            "t",
            "--max-replica",
            "4",
            "--max-scale-down-rate",
            "off",
            "--burst-window",
            "5",
        ]);
        assert_eq!(
            cli.settings.update(),
            Some(UpdateAutoscalingSettings {
                max_replica: Some(4),
                max_scale_down_rate: Some(None),
                burst_window: Some(Some(5)),
                ..UpdateAutoscalingSettings::default()
            })
        );
        assert_eq!(Cli::parse_from(["t"]).settings.update(), None);
        assert!(Cli::try_parse_from(["t", "--min-replica", "-1"]).is_err());
        assert!(Cli::try_parse_from(["t", "--max-scale-down-rate", "half"]).is_err());
    }

    #[test]
    fn settings_are_listed_with_units() {
        let text = settings_text(&json!({
            "min_replica": 0, "max_replica": 3, "autoscaling_window": 60,
            "scale_down_delay": 900, "concurrency_target": 1,
            "target_utilization_percentage": 70, "max_scale_down_rate": null,
        }));
        assert!(
            text.contains("autoscaling_window             60 s"),
            "{text}"
        );
        assert!(
            text.contains("max_scale_down_rate            off"),
            "{text}"
        );
        assert!(!text.contains("burst"), "{text}");
    }
}
