//! Keys against a real in-process store: create → verify → revoke →
//! refused, the ring learning each change through its watch.

use std::time::Duration;

use tidal_auth::{AuthError, KeyRing, Scope};
use tidal_store::client::Client;
use tidal_store::node::StoreNode;

const WAIT: Duration = Duration::from_secs(10);

async fn store() -> (tempfile::TempDir, StoreNode, Client) {
    let dir = tempfile::tempdir().unwrap();
    let node = StoreNode::start_single(dir.path()).await.unwrap();
    let client = Client::new([node.addr().to_string()], Duration::from_secs(5)).unwrap();
    (dir, node, client)
}

#[tokio::test]
async fn create_verify_revoke_refused() {
    let (_dir, node, client) = store().await;
    // A key made before the ring starts is found by its first list.
    let early = tidal_auth::create(&client, "early", &[Scope::Management])
        .await
        .unwrap();
    let ring = KeyRing::start(client.clone());
    assert!(ring.wait_for_revision(early.revision, WAIT).await);
    let bearer = format!("Bearer {}", early.key);
    let info = ring.verify(Some(&bearer), Scope::Management).unwrap();
    assert_eq!(info.id, early.info.id);
    assert_eq!(info.name, "early");

    // A key made afterwards arrives through the watch; both header forms work.
    let both = tidal_auth::create(
        &client,
        "both",
        &[Scope::Inference, Scope::Management, Scope::Inference],
    )
    .await
    .unwrap();
    assert_eq!(both.info.scopes, [Scope::Management, Scope::Inference]);
    assert!(ring.wait_for_revision(both.revision, WAIT).await);
    let api_key = format!("Api-Key {}", both.key);
    ring.verify(Some(&api_key), Scope::Inference).unwrap();
    ring.verify(Some(&api_key), Scope::Management).unwrap();

    // Wrong scope: 403 naming the scope.
    let inference = tidal_auth::create(&client, "inf", &[Scope::Inference])
        .await
        .unwrap();
    assert!(ring.wait_for_revision(inference.revision, WAIT).await);
    let err = ring
        .verify(
            Some(&format!("Bearer {}", inference.key)),
            Scope::Management,
        )
        .unwrap_err();
    assert_eq!(err.status(), 403);
    assert!(matches!(
        err,
        AuthError::WrongScope {
            needed: Scope::Management,
            ..
        }
    ));

    // A right id with a wrong secret, and an id nobody has: 401.
    let mut forged = early.key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    let err = ring
        .verify(Some(&format!("Bearer {forged}")), Scope::Management)
        .unwrap_err();
    assert!(matches!(err, AuthError::Unknown { .. }), "{err:?}");
    let err = ring
        .verify(
            Some("Bearer tidal_zzzzzzzz_0123456789abcdefghijABCDEFGHIJkl"),
            Scope::Management,
        )
        .unwrap_err();
    assert_eq!(err.status(), 401);

    // Listing shows every key, never a secret or a digest.
    let listed = tidal_auth::list(&client).await.unwrap();
    assert_eq!(listed.len(), 3);
    let text = format!("{listed:?}");
    assert!(!text.contains(&both.record.sha256) && !text.contains(&both.key));

    // Revoke: the ring hears it through the watch, and refuses the key.
    let (revoked, revision) = tidal_auth::revoke(&client, &early.info.id).await.unwrap();
    assert!(revoked.revoked);
    assert!(ring.wait_for_revision(revision, WAIT).await);
    let err = ring.verify(Some(&bearer), Scope::Management).unwrap_err();
    assert_eq!(
        err,
        AuthError::Revoked {
            id: early.info.id.clone()
        }
    );
    assert_eq!(err.status(), 401);
    // Revoking again changes nothing; an unknown id is named.
    let (again, _) = tidal_auth::revoke(&client, &early.info.id).await.unwrap();
    assert!(again.revoked);
    let err = tidal_auth::revoke(&client, "nokey123").await.unwrap_err();
    assert!(err.to_string().contains("nokey123"), "{err}");
    // The other keys still work.
    ring.verify(Some(&api_key), Scope::Management).unwrap();

    drop(ring);
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_names_and_no_scopes_are_refused() {
    let (_dir, node, client) = store().await;
    let err = tidal_auth::create(&client, "x", &[]).await.unwrap_err();
    assert!(err.to_string().contains("at least one scope"), "{err}");
    let err = tidal_auth::create(&client, "a\nb", &[Scope::Management])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("control characters"), "{err}");
    assert!(tidal_auth::list(&client).await.unwrap().is_empty());
    node.shutdown().await.unwrap();
}
