//! `tidal predict` and `tidal wake`: Baseten's inference paths through the
//! gateway, with the API key (inference scope).

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hyper::Method;
use hyper::body::Bytes;

use crate::Failure;
use crate::client::{EXIT_CODES, GatewayConnect, Http, answered, print, print_raw, segment};
use crate::grid::cell;

/// Which deployment of a model a request goes to [default: production].
#[derive(Debug, Clone, Args)]
#[group(multiple = false)]
pub(crate) struct TargetFlags {
    /// A deployment, by id.
    #[arg(long, value_name = "ID")]
    deployment: Option<String>,
    /// An environment's current deployment (e.g. staging).
    #[arg(long, value_name = "ENV")]
    environment: Option<String>,
    /// The development deployment.
    #[arg(long)]
    development: bool,
}

impl TargetFlags {
    /// The gateway's path for `action` (`predict` or `wake`).
    fn path(&self, model: &str, action: &str) -> String {
        let m = segment(model);
        match (&self.deployment, &self.environment, self.development) {
            (Some(id), _, _) => format!("/v1/models/{m}/deployment/{}/{action}", segment(id)),
            (None, Some(env), _) => {
                format!("/v1/models/{m}/environments/{}/{action}", segment(env))
            }
            (None, None, true) => format!("/v1/models/{m}/development/{action}"),
            (None, None, false) => format!("/v1/models/{m}/production/{action}"),
        }
    }
}

/// Send one request to a model through the gateway and print the
/// replica's answer
///
/// POST /v1/models/MODEL/{production|development|deployment/ID|
/// environments/ENV}/predict. A deployment at zero replicas is woken and
/// the request waits for its first replica (up to --timeout). The body is
/// JSON, from --data or --data-file (`-` for standard input); the answer's
/// body is printed as it came. An error answer prints its message and
/// exits with status 1.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct PredictArgs {
    /// The model's id.
    model: String,
    #[command(flatten)]
    target: TargetFlags,
    /// The request body (JSON).
    #[arg(
        long,
        value_name = "JSON",
        conflicts_with = "data_file",
        required_unless_present = "data_file"
    )]
    data: Option<String>,
    /// A file with the request body (JSON); `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// How long to wait for the answer, in seconds (a cold start included).
    #[arg(long, value_name = "S", default_value_t = 900)]
    timeout: u64,
    #[command(flatten)]
    gateway: GatewayConnect,
}

/// Ask the gateway to wake a model's deployment from zero replicas
/// (POST …/wake; answered at once with 202)
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub(crate) struct WakeArgs {
    /// The model's id.
    model: String,
    #[command(flatten)]
    target: TargetFlags,
    #[command(flatten)]
    gateway: GatewayConnect,
    /// Print the gateway's JSON as it came.
    #[arg(long)]
    json: bool,
}

/// The request body: the text of --data or --data-file, checked to be JSON.
fn body(args: &PredictArgs) -> Result<Bytes, Failure> {
    let (text, source) = match (&args.data, &args.data_file) {
        (Some(data), _) => (data.clone(), "--data".to_owned()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::Usage(format!("cannot read standard input: {e}")))?;
            (text, "standard input".to_owned())
        }
        (None, Some(path)) => (crate::read_input(path)?, path.display().to_string()),
        (None, None) => {
            return Err(Failure::Usage(
                "give --data JSON or --data-file FILE".into(),
            ));
        }
    };
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        return Err(Failure::Usage(format!(
            "{source}: the body is not valid JSON: {e}"
        )));
    }
    Ok(Bytes::from(text))
}

pub(crate) fn predict(args: PredictArgs) -> Result<(), Failure> {
    let body = body(&args)?;
    crate::client::block_on(async move {
        let target = args.gateway.resolve()?;
        let http = Http::new(target, Duration::from_secs(args.timeout.max(1)));
        let path = args.target.path(&args.model, "predict");
        let answer = http.send(Method::POST, &path, Some(body)).await?;
        if !answer.is_success() {
            return Err(answered(&answer));
        }
        print_raw(&answer)
    })
}

pub(crate) fn wake(args: WakeArgs) -> Result<(), Failure> {
    crate::client::block_on(async move {
        let target = args.gateway.resolve()?;
        let http = Http::new(target, Duration::from_secs(30));
        let path = args.target.path(&args.model, "wake");
        let (value, answer) = http.json(Method::POST, &path, None).await?;
        if args.json {
            return print_raw(&answer);
        }
        print(&format!(
            "waking deployment {} of model {}: its controller scales it up from zero \
             replicas (`tidal replicas` shows them starting)\n",
            cell(value.get("deployment_id")),
            args.model
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        target: TargetFlags,
    }

    fn path(args: &[&str]) -> String {
        let mut argv = vec!["t"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).target.path("m", "predict")
    }

    #[test]
    fn the_target_flags_choose_the_path() {
        assert_eq!(path(&[]), "/v1/models/m/production/predict");
        assert_eq!(path(&["--development"]), "/v1/models/m/development/predict");
        assert_eq!(
            path(&["--deployment", "m-v2"]),
            "/v1/models/m/deployment/m-v2/predict"
        );
        assert_eq!(
            path(&["--environment", "staging"]),
            "/v1/models/m/environments/staging/predict"
        );
        assert!(Cli::try_parse_from(["t", "--development", "--deployment", "x"]).is_err());
    }
}
