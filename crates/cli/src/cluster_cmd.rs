//! `tidal cluster status` without `--endpoint`: the whole cluster as the
//! management API sees it (`ClusterStatus`): the store's members, the live
//! controllers, and how many workers and deployments there are. `--json`
//! prints what `GET /v1/cluster/status` answers.

use serde_json::Value;
use tidal_proto::pb;

use crate::Failure;
use crate::client::{Connect, print};
use crate::grid::{cell, table};
use crate::mgmt::{Mgmt, print_json};

pub(crate) fn status(api: &Connect, json: bool) -> Result<(), Failure> {
    crate::client::block_on(async move {
        let api = Mgmt::connect(api)?;
        let answer = api
            .call(
                "ClusterStatus",
                pb::ClusterStatusRequest {},
                |mut c, r| async move { c.cluster_status(r).await },
            )
            .await?;
        let value = tidal_api::views::cluster_status(&answer);
        if json {
            return print_json(&value);
        }
        print(&status_text(&value, api.url()))
    })
}

fn status_text(v: &Value, url: &str) -> String {
    let store = &v["store"];
    let mut out = format!(
        "cluster {} (through the API at {url})\n\nstore: leader {}, term {}, last applied \
         revision {}\n",
        cell(store.get("cluster_id")),
        store
            .get("leader")
            .filter(|l| !l.is_null())
            .map_or_else(|| "none".to_owned(), |l| cell(Some(l))),
        cell(store.get("term")),
        cell(store.get("last_applied")),
    );
    let leader = store.get("leader").cloned().unwrap_or(Value::Null);
    let members: Vec<Vec<String>> = store["members"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|m| {
            let role = if m.get("leader") == Some(&Value::Bool(true))
                || (!leader.is_null() && m.get("node_id") == Some(&leader))
            {
                "leader"
            } else if m["voter"] == Value::Bool(true) {
                "voter"
            } else {
                "learner"
            };
            vec![
                cell(m.get("node_id")),
                cell(m.get("addr")),
                role.to_owned(),
                cell(m.get("lag")),
            ]
        })
        .collect();
    out += &indent(&table(&["NODE", "ADDRESS", "ROLE", "LAG"], &members));
    let controllers: Vec<Vec<String>> = v["controllers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|c| vec![cell(c.get("id")), cell(c.get("address"))])
        .collect();
    out += &format!("\ncontrollers: {} live\n", controllers.len());
    if !controllers.is_empty() {
        out += &indent(&table(&["CONTROLLER", "ADDRESS"], &controllers));
    }
    out += &format!(
        "\nworkers: {} live of {}\ndeployments: {} ({} not inactive)\n",
        cell(v["workers"].get("live")),
        cell(v["workers"].get("total")),
        cell(v["deployments"].get("total")),
        cell(v["deployments"].get("not_inactive")),
    );
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn store_controllers_workers_and_deployments() {
        let v = json!({
            "store": {"cluster_id": "c1", "leader": 1, "term": 2, "last_applied": 40,
                      "members": [{"node_id": 1, "addr": "127.0.0.1:7070", "voter": true,
                                   "leader": true, "lag": 0}]},
            "controllers": [{"id": "local", "address": "127.0.0.1:4000",
                             "lease_expires_at_ms": 1}],
            "workers": {"total": 2, "live": 1},
            "deployments": {"total": 3, "not_inactive": 2},
        });
        let text = status_text(&v, "http://127.0.0.1:7090");
        assert!(
            text.contains("leader 1, term 2, last applied revision 40"),
            "{text}"
        );
        assert!(text.contains("  1     127.0.0.1:7070  leader  0"), "{text}");
        assert!(text.contains("controllers: 1 live"), "{text}");
        assert!(text.contains("  local       127.0.0.1:4000"), "{text}");
        assert!(text.contains("workers: 1 live of 2"), "{text}");
        assert!(text.contains("deployments: 3 (2 not inactive)"), "{text}");
    }
}
