//! `tidal keys create|list|revoke`: API keys, written straight into the
//! store through `tidal-auth` (the first key cannot come from the API:
//! every API route needs a key).

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};
use tidal_auth::{KeyInfo, Scope};
use tidal_store::client::Client;

use crate::Failure;

/// Manage API keys (for the management API and the gateway)
///
/// A key is `tidal_<id>_<secret>`; only its sha256 is stored, so `create`
/// prints it once and it can never be shown again. Send it as
/// `Authorization: Bearer <key>` (or `Authorization: Api-Key <key>`).
/// Scopes: `management` (the management API), `inference` (the gateway).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once)
    Create {
        #[command(flatten)]
        common: Common,
        /// A name for people ("ci", "alice's laptop").
        #[arg(long, default_value = "")]
        name: String,
        /// Its scopes, comma-separated or repeated.
        #[arg(long, value_delimiter = ',', default_value = "management")]
        scope: Vec<String>,
    },
    /// List the keys (never the keys themselves)
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Revoke a key by its id (the 8 characters after `tidal_`)
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The key's id.
        id: String,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// Store endpoints, host:port, comma-separated or repeated.
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',', required = true)]
    store: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// How long store calls are retried (a cluster may be electing a leader).
const DEADLINE: Duration = Duration::from_secs(15);

pub(crate) fn run(args: KeysArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    runtime.block_on(async move {
        match args.command {
            KeysCommand::Create {
                common,
                name,
                scope,
            } => {
                let scopes = scope
                    .iter()
                    .map(|s| s.trim().parse::<Scope>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Failure::Usage(format!("--scope: {e}")))?;
                let client = client(&common)?;
                let new = tidal_auth::create(&client, &name, &scopes)
                    .await
                    .map_err(key_failure)?;
                if common.json {
                    let mut view = serde_json::json!(new.info);
                    view["key"] = serde_json::json!(new.key);
                    view["warning"] = serde_json::json!(WARNING);
                    return print(&format!("{view}\n"));
                }
                eprintln!(
                    "created API key {} (name {:?}, scopes {})",
                    new.info.id,
                    new.info.name,
                    new.info.scopes_text()
                );
                eprintln!("warning: {WARNING}");
                print(&format!("{}\n", new.key))
            }
            KeysCommand::List { common } => {
                let keys = tidal_auth::list(&client(&common)?)
                    .await
                    .map_err(key_failure)?;
                if common.json {
                    return print(&format!("{}\n", serde_json::json!({ "keys": keys })));
                }
                print(&table(&keys))
            }
            KeysCommand::Revoke { common, id } => {
                let (info, _) = tidal_auth::revoke(&client(&common)?, &id)
                    .await
                    .map_err(key_failure)?;
                if common.json {
                    return print(&format!("{}\n", serde_json::json!(info)));
                }
                print(&format!(
                    "revoked API key {} (name {:?}); requests with it are refused from now on\n",
                    info.id, info.name
                ))
            }
        }
    })
}

const WARNING: &str = "this is the only time the key is shown: it cannot be shown again \
                       (only its sha256 is stored); store it now";

fn client(common: &Common) -> Result<Client, Failure> {
    Client::new(&common.store, DEADLINE).map_err(|e| Failure::Usage(e.to_string()))
}

fn key_failure(e: tidal_auth::KeyStoreError) -> Failure {
    match e {
        tidal_auth::KeyStoreError::InvalidName(_)
        | tidal_auth::KeyStoreError::NoScopes
        | tidal_auth::KeyStoreError::NotFound(_) => Failure::Usage(e.to_string()),
        other => Failure::Other(anyhow::Error::new(other)),
    }
}

fn print(text: &str) -> Result<(), Failure> {
    crate::write_stdout(|out| out.write_all(text.as_bytes()))
}

/// The keys as a table: id, name, scopes, created (UTC), state.
fn table(keys: &[KeyInfo]) -> String {
    if keys.is_empty() {
        return "no API keys; create one with `tidal keys create --store …`\n".to_owned();
    }
    let mut out = format!(
        "{:<8}  {:<20}  {:<20}  {:<20}  {}\n",
        "ID", "NAME", "SCOPES", "CREATED (UTC)", "STATE"
    );
    for k in keys {
        out += &format!(
            "{:<8}  {:<20}  {:<20}  {:<20}  {}\n",
            k.id,
            k.name,
            k.scopes_text(),
            utc(k.created_at_ms / 1000),
            if k.revoked { "revoked" } else { "active" }
        );
    }
    out
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS`.
fn utc(secs: u64) -> String {
    let stamp = tidal_types::time::rfc3339(secs);
    format!("{} {}", &stamp[..10], &stamp[11..19])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_ids_scopes_and_state() {
        let keys = [KeyInfo {
            id: "abcd1234".into(),
            name: "ci".into(),
            scopes: vec![Scope::Management, Scope::Inference],
            created_at_ms: 1_709_210_096_000,
            revoked: true,
        }];
        let text = table(&keys);
        assert!(text.contains("abcd1234"), "{text}");
        assert!(text.contains("management,inference"), "{text}");
        assert!(text.contains("2024-02-29 12:34:56"), "{text}");
        assert!(text.contains("revoked"), "{text}");
        assert!(table(&[]).contains("tidal keys create"));
    }
}
