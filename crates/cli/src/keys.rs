//! `tidal keys create|list|revoke`: API keys, written straight into the
//! store through `tidal-auth` with `--store` (the first key cannot come
//! from the API: every API call needs a key), else through the management
//! API (`CreateKey`, `ListKeys`, `RevokeKey` over gRPC, with a management
//! key). The output is the same either way.

use std::io::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};
use tidal_auth::{KeyInfo, Scope};
use tidal_proto::pb;
use tidal_store::client::Client;

use crate::Failure;
use crate::client::Connect;
use crate::mgmt::Mgmt;

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
    /// Store endpoints, host:port, comma-separated or repeated: write the
    /// keys there directly. Without it, the management API is asked (found
    /// by --api-url/--api-key, TIDAL_API_URL/TIDAL_API_KEY, --cluster-file or
    /// ./.tidal/cluster.json).
    #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
    store: Vec<String>,
    #[command(flatten)]
    api: Connect,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// How long store calls are retried (a cluster may be electing a leader).
const DEADLINE: Duration = Duration::from_secs(15);

pub(crate) fn run(args: KeysArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.into()))?;
    let result = runtime.block_on(async move {
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
                let (info, key) = match keys(&common)? {
                    Keys::Store(client) => {
                        let new = tidal_auth::create(&client, &name, &scopes)
                            .await
                            .map_err(key_failure)?;
                        (new.info, new.key)
                    }
                    Keys::Api(api) => {
                        let request = pb::CreateKeyRequest {
                            name,
                            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
                        };
                        let new = api
                            .call("CreateKey", request, |mut c, r| async move {
                                c.create_key(r).await
                            })
                            .await?;
                        (info(new.info.unwrap_or_default()), new.key)
                    }
                };
                if common.json {
                    let mut view = serde_json::json!(info);
                    view["key"] = serde_json::json!(key);
                    view["warning"] = serde_json::json!(WARNING);
                    return print(&format!("{view}\n"));
                }
                eprintln!(
                    "created API key {} (name {:?}, scopes {})",
                    info.id,
                    info.name,
                    info.scopes_text()
                );
                eprintln!("warning: {WARNING}");
                print(&format!("{key}\n"))
            }
            KeysCommand::List { common } => {
                let keys = match keys(&common)? {
                    Keys::Store(client) => tidal_auth::list(&client).await.map_err(key_failure)?,
                    Keys::Api(api) => api
                        .call("ListKeys", pb::ListKeysRequest {}, |mut c, r| async move {
                            c.list_keys(r).await
                        })
                        .await?
                        .keys
                        .into_iter()
                        .map(info)
                        .collect(),
                };
                if common.json {
                    return print(&format!("{}\n", serde_json::json!({ "keys": keys })));
                }
                print(&table(&keys))
            }
            KeysCommand::Revoke { common, id } => {
                let info = match keys(&common)? {
                    Keys::Store(client) => {
                        tidal_auth::revoke(&client, &id)
                            .await
                            .map_err(key_failure)?
                            .0
                    }
                    Keys::Api(api) => info(
                        api.call(
                            "RevokeKey",
                            pb::RevokeKeyRequest { id },
                            |mut c, r| async move { c.revoke_key(r).await },
                        )
                        .await?,
                    ),
                };
                if common.json {
                    return print(&format!("{}\n", serde_json::json!(info)));
                }
                print(&format!(
                    "revoked API key {} (name {:?}); requests with it are refused from now on\n",
                    info.id, info.name
                ))
            }
        }
    });
    crate::client::finish(result)
}

/// Where the keys are written.
enum Keys {
    Store(Client),
    Api(Box<Mgmt>),
}

/// The store with `--store`, else the management API.
fn keys(common: &Common) -> Result<Keys, Failure> {
    if common.store.is_empty() {
        let api = Mgmt::connect(&common.api).map_err(|e| match e {
            Failure::Usage(message) => Failure::Usage(format!(
                "{message}; or pass --store HOST:PORT to write the keys into the store directly"
            )),
            other => other,
        })?;
        return Ok(Keys::Api(Box::new(api)));
    }
    Client::new(&common.store, DEADLINE)
        .map(Keys::Store)
        .map_err(|e| Failure::Usage(e.to_string()))
}

/// A key as the API shows it (scopes this version does not know are left
/// out, as `KeyInfo::from_record` does).
fn info(k: pb::KeyInfo) -> KeyInfo {
    KeyInfo {
        scopes: k.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
        id: k.id,
        name: k.name,
        created_at_ms: k.created_at_ms,
        revoked: k.revoked,
    }
}

const WARNING: &str = "this is the only time the key is shown: it cannot be shown again \
                       (only its sha256 is stored); store it now";

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
