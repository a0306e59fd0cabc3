//! The key itself: its format, generation, hashing, scopes, the
//! `Authorization` header, and why a request is refused ([`AuthError`]).
//!
//! A key is `tidal_<id>_<secret>`: `id` is 8 characters of `[0-9a-z]`
//! (the store's key for the record), `secret` 32 characters of
//! `[0-9A-Za-z]` (about 190 bits), both drawn from `/dev/urandom`. Only the
//! sha256 of the whole key is stored.

use std::fmt;
use std::io::Read;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every key starts with this.
pub const KEY_PREFIX: &str = "tidal_";
/// Characters in a key's id.
pub const ID_LEN: usize = 8;
/// Characters in a key's secret.
pub const SECRET_LEN: usize = 32;

const LOWER_BASE62: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const BASE62: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The management API (`tidal-api`).
    Management,
    /// Inference through the gateway.
    Inference,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 2] = [Scope::Management, Scope::Inference];

    /// Its name as stored and shown: `management` or `inference`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Management => "management",
            Scope::Inference => "inference",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}; scopes are `management` and `inference`")]
pub struct UnknownScope(pub String);

impl std::str::FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| UnknownScope(s.to_owned()))
    }
}

/// Why a request's key was refused. [`AuthError::status`] is the HTTP
/// status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error(
        "missing API key: send the header `Authorization: Bearer <key>` (or `Authorization: \
         Api-Key <key>`); create a key with `tidal keys create`"
    )]
    Missing,
    /// The header or the key is not of the accepted forms.
    #[error("malformed API key: {0}")]
    Malformed(String),
    /// No key has this id, or its secret does not match.
    #[error("API key {id} is not valid: no such key, or a wrong secret")]
    Unknown {
        /// The id the key claimed.
        id: String,
    },
    /// The key was revoked.
    #[error("API key {id} was revoked; create a new one with `tidal keys create`")]
    Revoked {
        /// The key's id.
        id: String,
    },
    /// The key is valid but may not do this.
    #[error(
        "API key {id} does not have the `{needed}` scope this needs (it has: {has}); create \
         one with `tidal keys create --scope {needed}`"
    )]
    WrongScope {
        /// The key's id.
        id: String,
        /// The scope needed.
        needed: Scope,
        /// The key's scopes, comma-separated.
        has: String,
    },
    /// The key ring has not read the keys from the store yet.
    #[error("API keys are not loaded from the store yet; retry in a moment")]
    NotLoaded,
}

impl AuthError {
    /// The HTTP status: 401 for a missing or bad key, 403 for a missing
    /// scope, 503 while the keys are not loaded.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Malformed(_)
            | AuthError::Unknown { .. }
            | AuthError::Revoked { .. } => 401,
            AuthError::WrongScope { .. } => 403,
            AuthError::NotLoaded => 503,
        }
    }

    /// A stable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_api_key",
            AuthError::Malformed(_) => "malformed_api_key",
            AuthError::Unknown { .. } => "invalid_api_key",
            AuthError::Revoked { .. } => "revoked_api_key",
            AuthError::WrongScope { .. } => "insufficient_scope",
            AuthError::NotLoaded => "keys_not_loaded",
        }
    }
}

/// A key of the right form, split into its parts.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The id (the store's key for its record).
    pub id: &'a str,
    /// The whole key, as given.
    pub whole: &'a str,
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("ParsedKey").field("id", &self.id).finish()
    }
}

/// Splits `tidal_<id>_<secret>` into its parts.
pub fn parse_key(key: &str) -> Result<ParsedKey<'_>, AuthError> {
    let malformed = || {
        AuthError::Malformed(format!(
            "a key is `{KEY_PREFIX}` + {ID_LEN} characters of [0-9a-z] + `_` + {SECRET_LEN} \
             characters of [0-9A-Za-z]"
        ))
    };
    let rest = key.strip_prefix(KEY_PREFIX).ok_or_else(malformed)?;
    let (id, secret) = rest.split_once('_').ok_or_else(malformed)?;
    // The alphabets above, tested by range (every request's key passes here).
    let id_ok = id.len() == ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    if !id_ok || !secret_ok {
        return Err(malformed());
    }
    Ok(ParsedKey { id, whole: key })
}

/// The key in an `Authorization` header: `Bearer <key>` or `Api-Key <key>`
/// (Baseten's two forms; the scheme's case does not matter).
pub fn key_from_header(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?.trim();
    if header.is_empty() {
        return Err(AuthError::Missing);
    }
    let (scheme, key) = header.split_once(' ').ok_or_else(|| {
        AuthError::Malformed(
            "the Authorization header must be `Bearer <key>` or `Api-Key <key>`".to_owned(),
        )
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") && !scheme.eq_ignore_ascii_case("api-key") {
        return Err(AuthError::Malformed(format!(
            "unsupported Authorization scheme {scheme:?}; use `Bearer <key>` or `Api-Key <key>`"
        )));
    }
    Ok(key.trim())
}

/// The sha256 of `key`, as 64 lowercase hex characters.
pub fn sha256_hex(key: &str) -> String {
    sha256_hex_bytes(key).into_iter().map(char::from).collect()
}

/// The sha256 of `key`, as 64 lowercase hex digits (ASCII), without
/// allocating.
pub fn sha256_hex_bytes(key: &str) -> [u8; 64] {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = [0u8; 64];
    for (i, byte) in digest.into_iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[usize::from(byte >> 4)];
        hex[2 * i + 1] = b"0123456789abcdef"[usize::from(byte & 0xf)];
    }
    hex
}

/// Whether `a == b`, taking the same time wherever they differ (for
/// digests of equal length; a length difference returns at once).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `n` characters drawn uniformly from `alphabet` with bytes from
/// `/dev/urandom` (rejection sampling: no bias toward early characters).
fn random_chars(n: usize, alphabet: &[u8]) -> std::io::Result<String> {
    let len = u8::try_from(alphabet.len()).map_err(std::io::Error::other)?;
    // The largest multiple of the alphabet's size that fits in a byte.
    let limit = 256 - (256 % u16::from(len));
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        urandom.read_exact(&mut buf)?;
        for &b in &buf {
            if u16::from(b) < limit && out.len() < n {
                out.push(char::from(alphabet[usize::from(b % len)]));
            }
        }
    }
    Ok(out)
}

/// A fresh key: its id and the whole key.
pub fn generate() -> std::io::Result<(String, String)> {
    let id = random_chars(ID_LEN, LOWER_BASE62)?;
    let secret = random_chars(SECRET_LEN, BASE62)?;
    let key = format!("{KEY_PREFIX}{id}_{secret}");
    Ok((id, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_differ() {
        let (id, key) = generate().unwrap();
        let parsed = parse_key(&key).unwrap();
        assert_eq!(parsed.id, id);
        assert_eq!(key.len(), KEY_PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        let (id2, key2) = generate().unwrap();
        assert_ne!((id, key), (id2, key2));
    }

    #[test]
    fn the_secret_uses_the_whole_alphabet() {
        let chars = random_chars(20_000, BASE62).unwrap();
        for c in BASE62 {
            assert!(
                chars.as_bytes().contains(c),
                "{} never drawn",
                char::from(*c)
            );
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = "tidal_abcd1234_0123456789abcdefghijABCDEFGHIJkl";
        assert!(parse_key(good).is_ok());
        for bad in [
            "",
            "abcd1234_0123456789abcdefghijABCDEFGHIJkl",
            "tidal_ABCD1234_0123456789abcdefghijABCDEFGHIJkl",
            "tidal_abcd123_0123456789abcdefghijABCDEFGHIJkl",
            "tidal_abcd1234_0123456789abcdefghijABCDEFGHIJk",
            "tidal_abcd1234_0123456789abcdefghijABCDEFGHIJk!",
            "tidal_abcd1234-0123456789abcdefghijABCDEFGHIJkl",
        ] {
            let err = parse_key(bad).unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{bad}: {err:?}");
            assert_eq!(err.status(), 401);
        }
    }

    #[test]
    fn both_header_forms_are_accepted() {
        assert_eq!(key_from_header(Some("Bearer k")).unwrap(), "k");
        assert_eq!(key_from_header(Some("Api-Key k")).unwrap(), "k");
        assert_eq!(key_from_header(Some("api-key  k ")).unwrap(), "k");
        assert_eq!(key_from_header(Some("bearer k")).unwrap(), "k");
        assert_eq!(key_from_header(None).unwrap_err(), AuthError::Missing);
        assert_eq!(key_from_header(Some("  ")).unwrap_err(), AuthError::Missing);
        let err = key_from_header(Some("Basic a2V5")).unwrap_err();
        assert!(err.to_string().contains("Bearer <key>"), "{err}");
        assert!(matches!(
            key_from_header(Some("tidal_x")),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn the_missing_header_message_names_both_forms() {
        let text = AuthError::Missing.to_string();
        assert!(text.contains("Authorization: Bearer <key>"), "{text}");
        assert!(text.contains("Api-Key <key>"), "{text}");
        assert_eq!(AuthError::Missing.status(), 401);
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn scopes_parse_and_print() {
        assert_eq!("management".parse::<Scope>().unwrap(), Scope::Management);
        assert_eq!("inference".parse::<Scope>().unwrap(), Scope::Inference);
        let err = "admin".parse::<Scope>().unwrap_err();
        assert!(err.to_string().contains("`management` and `inference`"));
        assert_eq!(Scope::Inference.to_string(), "inference");
        let err = AuthError::WrongScope {
            id: "abcd1234".into(),
            needed: Scope::Management,
            has: "inference".into(),
        };
        assert_eq!(err.status(), 403);
        assert!(err.to_string().contains("`management` scope"), "{err}");
    }

    #[test]
    fn a_parsed_key_never_prints_its_secret() {
        let key = "tidal_abcd1234_0123456789abcdefghijABCDEFGHIJkl";
        let shown = format!("{:?}", parse_key(key).unwrap());
        assert!(!shown.contains("ABCDEFGHIJ"), "{shown}");
    }
}
