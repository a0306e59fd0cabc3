//! Keeps [`Routes`] in step with the store: lists DEPLOYMENTS and REPLICAS,
//! then follows both watches from the listed revisions; on any break (the
//! store restarted, the watch was compacted) it lists again.

use std::time::Duration;

use prost::Message;
use tidal_proto::pb;
use tidal_store::app::{EventFilter, Table};
use tidal_store::client::Client;
use tokio::sync::watch;

use crate::routes::{Routes, route_of};

/// Follows the store until `stop`.
pub async fn follow(client: Client, routes: Routes, mut stop: watch::Receiver<bool>) {
    loop {
        match once(&client, &routes, &mut stop).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "gateway lost the store watch; listing again"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Lists, then applies watch events until an error (`Err`) or `stop` (`Ok`).
async fn once(
    client: &Client,
    routes: &Routes,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let (deployments, dep_rev) = client
        .list(Table::Deployments, "")
        .await
        .map_err(|e| e.to_string())?;
    let (replicas, rep_rev) = client
        .list(Table::Replicas, "")
        .await
        .map_err(|e| e.to_string())?;
    let deployments: Vec<_> = deployments
        .into_iter()
        .filter_map(|(id, kv)| {
            let record = pb::DeploymentRecord::decode(kv.value.as_slice()).ok()?;
            let route = route_of(&id, &record);
            Some((id, route))
        })
        .collect();
    let replicas: Vec<(String, pb::Replica)> = replicas
        .into_iter()
        .filter_map(|(id, kv)| Some((id, pb::Replica::decode(kv.value.as_slice()).ok()?)))
        .collect();
    routes.reset(deployments, &replicas);
    let filter = |table| EventFilter {
        table: Some(table),
        key_prefix: String::new(),
    };
    let mut deps = client
        .watch(dep_rev + 1, &filter(Table::Deployments))
        .await
        .map_err(|e| e.to_string())?;
    let mut reps = client
        .watch(rep_rev + 1, &filter(Table::Replicas))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            message = deps.message() => {
                for event in events(message)? {
                    let record = event.value.as_deref().and_then(|v| pb::DeploymentRecord::decode(v).ok());
                    routes.set_deployment(&event.key, record.map(|r| route_of(&event.key, &r)));
                }
            }
            message = reps.message() => {
                for event in events(message)? {
                    let record = event.value.as_deref().and_then(|v| pb::Replica::decode(v).ok());
                    routes.set_replica(&event.key, record.as_ref());
                }
            }
        }
    }
}

/// One watch event: the key and, unless it was deleted, its new value.
struct Event {
    key: String,
    value: Option<Vec<u8>>,
}

fn events(message: Result<Option<pb::WatchResponse>, tonic::Status>) -> Result<Vec<Event>, String> {
    match message {
        Ok(Some(pb::WatchResponse {
            response: Some(pb::watch_response::Response::Events(events)),
            ..
        })) => Ok(events
            .events
            .into_iter()
            .map(|e| {
                let deleted = e.kind == i32::from(pb::change_event::Kind::Delete);
                Event {
                    key: e.key,
                    value: (!deleted).then(|| e.value.map(|v| v.value).unwrap_or_default()),
                }
            })
            .collect()),
        Ok(Some(_)) => Err("the watch was compacted".to_owned()),
        Ok(None) => Err("the watch ended".to_owned()),
        Err(status) => Err(status.message().to_owned()),
    }
}
