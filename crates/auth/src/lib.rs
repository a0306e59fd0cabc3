//! tidal's API keys.
//!
//! - **Keys** ([`key`]): `tidal_<id>_<secret>` — `id` is 8 characters of
//!   `[0-9a-z]`, `secret` 32 of `[0-9A-Za-z]`, drawn from `/dev/urandom`.
//!   Only the sha256 of the whole key is stored, as a protobuf `ApiKey` in
//!   the store's API_KEYS table under the id, with its name, scopes
//!   ([`Scope`]: `management`, `inference`), creation time and `revoked`.
//! - **Requests** carry a key as `Authorization: Bearer <key>` or
//!   `Authorization: Api-Key <key>` (Baseten's two forms). [`KeyRing`]
//!   holds every key record in memory, kept fresh by a list + watch of
//!   API_KEYS, and [`KeyRing::verify`] checks a header for a live key with
//!   a scope: 401 for a missing, malformed, unknown or revoked key, 403 for
//!   a missing scope ([`AuthError::status`]). Digests are compared in
//!   constant time.
//! - **Administration** ([`admin`]): [`create`] (returns the plain key
//!   exactly once), [`list`] (never the key or its digest) and [`revoke`],
//!   straight against the store — this is how the first key is made, before
//!   any key could call the API.
//!
//! **Architecture invariant:** no plain key is ever stored, logged or
//! listed; it exists only in [`NewKey`], returned once by [`create`].

pub mod admin;
pub mod key;
mod ring;

pub use admin::{KeyInfo, KeyStoreError, NewKey, create, list, revoke};
pub use key::{AuthError, Scope, UnknownScope};
pub use ring::KeyRing;
