//! Keys: every route refuses a request without a valid management key;
//! the key routes themselves.

use tidal_auth::Scope;

use crate::support::{Cluster, WAIT, http, new_key};

/// Every route, with ids that may or may not exist: auth comes first.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/models"),
    ("GET", "/v1/models/m/deployments"),
    ("POST", "/v1/models/m/deployments"),
    ("GET", "/v1/models/m/deployments/d"),
    ("PUT", "/v1/models/m/deployments/d"),
    ("GET", "/v1/models/m/deployments/production"),
    ("PATCH", "/v1/models/m/deployments/d/autoscaling_settings"),
    ("POST", "/v1/models/m/deployments/d/promote"),
    ("POST", "/v1/models/m/deployments/d/activate"),
    ("POST", "/v1/models/m/deployments/d/deactivate"),
    ("GET", "/v1/models/m/deployments/d/replicas"),
    ("DELETE", "/v1/models/m/deployments/d/replicas/r"),
    ("GET", "/v1/models/m/environments/production"),
    ("PATCH", "/v1/models/m/environments/production"),
    ("POST", "/v1/models/m/environments/staging/promote"),
    ("GET", "/v1/workers"),
    ("GET", "/v1/replicas/r/logs"),
    ("GET", "/v1/cluster/status"),
    ("GET", "/v1/cluster/settings"),
    ("PATCH", "/v1/cluster/settings"),
    ("GET", "/v1/keys"),
    ("POST", "/v1/keys"),
    ("DELETE", "/v1/keys/abcd1234"),
    ("GET", "/no/such/path"),
];

#[tokio::test]
async fn every_route_needs_a_management_key() {
    let c = Cluster::start().await;
    let addr = c.api.addr();
    let inference = new_key(&c.client, &c.api, &[Scope::Inference]).await;
    let unknown = "tidal_zzzzzzzz_0123456789abcdefghijABCDEFGHIJkl";
    for (method, path) in ROUTES {
        // Missing: 401 naming both accepted headers.
        let a = http(addr, method, path, None, Some("{}")).await;
        assert_eq!(a.status, 401, "{method} {path}: {a:?}");
        assert_eq!(a.code(), "missing_api_key");
        assert!(
            a.message().contains("Authorization: Bearer <key>")
                && a.message().contains("Api-Key <key>"),
            "{}",
            a.message()
        );
        // Malformed and unknown: 401.
        let a = http(addr, method, path, Some("Bearer nonsense"), Some("{}")).await;
        assert_eq!(
            (a.status, a.code()),
            (401, "malformed_api_key"),
            "{method} {path}"
        );
        let a = http(addr, method, path, Some(&format!("Bearer {unknown}")), None).await;
        assert_eq!(
            (a.status, a.code()),
            (401, "invalid_api_key"),
            "{method} {path}"
        );
        // An inference key: 403 naming the scope needed.
        let a = http(
            addr,
            method,
            path,
            Some(&format!("Api-Key {inference}")),
            None,
        )
        .await;
        assert_eq!(a.status, 403, "{method} {path}: {a:?}");
        assert!(
            a.message().contains("`management` scope"),
            "{}",
            a.message()
        );
    }
    // Both header forms pass with a management key.
    let a = http(
        addr,
        "GET",
        "/v1/models",
        Some(&format!("Api-Key {}", c.key)),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = c.get("/v1/models").await;
    assert_eq!(a.status, 200, "{a:?}");
    // An unknown path, with a key: 404 in the JSON shape; a wrong method: 405.
    let a = c.get("/v1/nothing").await;
    assert_eq!((a.status, a.code()), (404, "not_found"));
    let a = c.call("PUT", "/v1/models", None).await;
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));
    c.stop().await;
}

#[tokio::test]
async fn keys_are_created_listed_and_revoked_through_the_api() {
    let c = Cluster::start().await;
    let addr = c.api.addr();
    // Create: 201 with the key, once.
    let a = c
        .call(
            "POST",
            "/v1/keys",
            Some(r#"{"name": "ci", "scopes": ["management", "inference"]}"#),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let key = a.body["key"].as_str().unwrap().to_owned();
    let id = a.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("tidal_{id}_")));
    assert_eq!(
        a.body["scopes"],
        serde_json::json!(["management", "inference"])
    );
    assert!(a.body["warning"].as_str().unwrap().contains("only time"));
    // Usable at once.
    let a = http(
        addr,
        "GET",
        "/v1/keys",
        Some(&format!("Bearer {key}")),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    // Listed without the key or its digest.
    let listed = a.body["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let text = a.body.to_string();
    assert!(!text.contains(&key) && !text.contains("sha256"), "{text}");
    // Defaults: a management key with an empty name.
    let a = c.call("POST", "/v1/keys", None).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["scopes"], serde_json::json!(["management"]));
    // Bad bodies name their field.
    let a = c
        .call("POST", "/v1/keys", Some(r#"{"scopes": ["admin"]}"#))
        .await;
    assert_eq!((a.status, a.field()), (400, Some("scopes[0]")), "{a:?}");
    let a = c.call("POST", "/v1/keys", Some(r#"{"scopes": []}"#)).await;
    assert_eq!((a.status, a.field()), (400, Some("scopes")), "{a:?}");
    let a = c
        .call("POST", "/v1/keys", Some(r#"{"scopes": "management"}"#))
        .await;
    assert_eq!((a.status, a.field()), (400, Some("scopes")), "{a:?}");
    let a = c.call("POST", "/v1/keys", Some(r#"{"nme": "x"}"#)).await;
    assert_eq!((a.status, a.field()), (400, Some("nme")), "{a:?}");
    // Revoke: the key is refused afterwards (401).
    let a = c.call("DELETE", &format!("/v1/keys/{id}"), None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["revoked"], true);
    let a = http(
        addr,
        "GET",
        "/v1/models",
        Some(&format!("Bearer {key}")),
        None,
    )
    .await;
    assert_eq!((a.status, a.code()), (401, "revoked_api_key"), "{a:?}");
    assert!(a.message().contains(&id), "{}", a.message());
    // Revoked through the store directly: the ring hears it by the watch.
    let other = tidal_auth::create(&c.client, "direct", &[Scope::Management])
        .await
        .unwrap();
    assert!(
        c.api
            .key_ring()
            .wait_for_revision(other.revision, WAIT)
            .await
    );
    let bearer = format!("Bearer {}", other.key);
    assert_eq!(
        http(addr, "GET", "/v1/models", Some(&bearer), None)
            .await
            .status,
        200
    );
    let (_, revision) = tidal_auth::revoke(&c.client, &other.info.id).await.unwrap();
    assert!(c.api.key_ring().wait_for_revision(revision, WAIT).await);
    assert_eq!(
        http(addr, "GET", "/v1/models", Some(&bearer), None)
            .await
            .status,
        401
    );
    // Unknown id: 404 naming it.
    let a = c.call("DELETE", "/v1/keys/nokey123", None).await;
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.message().contains("nokey123"));
    c.stop().await;
}
