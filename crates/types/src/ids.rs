//! Identifiers: model and deployment ids, environment names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An identifier that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be 1 to {max} characters of {allowed}; got {value:?}")]
pub struct IdError {
    kind: &'static str,
    max: usize,
    allowed: &'static str,
    value: String,
}

fn check(
    kind: &'static str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
    value: &str,
) -> Result<(), IdError> {
    if value.is_empty() || value.len() > max || !value.chars().all(ok) {
        return Err(IdError {
            kind,
            max,
            allowed,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $allowed:literal, $ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, $max, $allowed, $ok, &value)?;
                Ok(Self(value))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn env_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

string_id!(
    /// A model's id (Baseten's are short alphanumeric strings such as `abcd1234`).
    ModelId, "a model id", 64, "letters, digits, '-' and '_'", id_char
);
string_id!(
    /// A deployment's id, unique within the cluster.
    DeploymentId, "a deployment id", 64, "letters, digits, '-' and '_'", id_char
);
string_id!(
    /// An environment's name: `production` or a named one such as `staging`.
    EnvironmentName, "an environment name", 63, "lowercase letters, digits, '-' and '_'", env_char
);

impl EnvironmentName {
    /// The name of the production environment.
    pub const PRODUCTION: &'static str = "production";

    /// The production environment.
    pub fn production() -> Self {
        Self(Self::PRODUCTION.to_owned())
    }

    /// Whether this is the production environment.
    pub fn is_production(&self) -> bool {
        self.0 == Self::PRODUCTION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_baseten_style_values() {
        assert_eq!(ModelId::new("abcd1234").unwrap().as_str(), "abcd1234");
        assert!(DeploymentId::new("dep_9x-2").is_ok());
        assert!(EnvironmentName::new("staging").is_ok());
    }

    #[test]
    fn ids_reject_empty_long_and_odd_characters() {
        assert!(ModelId::new("").is_err());
        assert!(ModelId::new("a".repeat(65)).is_err());
        assert!(DeploymentId::new("a/b").is_err());
        let err = EnvironmentName::new("Prod").unwrap_err();
        assert_eq!(
            err.to_string(),
            "an environment name must be 1 to 63 characters of lowercase letters, digits, '-' and '_'; got \"Prod\""
        );
    }

    #[test]
    fn ids_round_trip_through_json_and_reject_bad_values() {
        let id: ModelId = serde_json::from_str("\"m1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"m1\"");
        assert!(serde_json::from_str::<ModelId>("\"a b\"").is_err());
    }
}
