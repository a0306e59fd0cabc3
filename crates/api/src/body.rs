//! Reading request bodies strictly: a JSON object whose unknown fields are
//! refused, each bad value reported with its field's name (a nested one as
//! `autoscaling_settings.max_replica`). An empty body counts as `{}`.

use serde_json::{Map, Value};
use tidal_types::UpdateAutoscalingSettings;

use crate::error::HttpError;

/// A JSON object body.
pub(crate) type Object = Map<String, Value>;

/// The body as a JSON object (`{}` when empty).
pub(crate) fn object(bytes: &[u8]) -> Result<Object, HttpError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Object::new());
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| HttpError::bad_request(format!("the body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(HttpError::bad_request(format!(
            "the body must be a JSON object; got {}",
            kind(&other)
        ))),
    }
}

/// What a JSON value is, for messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Refuses a field not in `known`, naming it (with `prefix`).
pub(crate) fn only(map: &Object, known: &[&str], prefix: &str) -> Result<(), HttpError> {
    if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(HttpError::invalid(
            format!("{prefix}{unknown}"),
            format!(
                "unknown field `{prefix}{unknown}`; the fields are {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(())
}

/// A boolean field; `default` when absent or null.
pub(crate) fn boolean(map: &Object, key: &str, default: bool) -> Result<bool, HttpError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(HttpError::invalid(
            key,
            format!("{key} must be true or false; got {}", kind(other)),
        )),
    }
}

/// A string field; `None` when absent or null.
pub(crate) fn string<'a>(map: &'a Object, key: &str) -> Result<Option<&'a str>, HttpError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(HttpError::invalid(
            key,
            format!("{key} must be a string; got {}", kind(other)),
        )),
    }
}

/// A whole number field (0 to `u64::MAX`); `None` when absent or null.
pub(crate) fn whole(map: &Object, key: &str, prefix: &str) -> Result<Option<u64>, HttpError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(other) => Err(HttpError::invalid(
            format!("{prefix}{key}"),
            format!(
                "{prefix}{key} must be a whole number ≥ 0; got {}",
                match other {
                    Value::Number(n) => n.to_string(),
                    v => kind(v).to_owned(),
                }
            ),
        )),
    }
}

/// An autoscaling settings update (Baseten's `UpdateAutoscalingSettingsV1`)
/// read by `tidal-types`, with the field at fault named (after `prefix`).
pub(crate) fn settings_update(
    value: &Value,
    prefix: &str,
) -> Result<UpdateAutoscalingSettings, HttpError> {
    let Value::Object(map) = value else {
        let name = prefix.trim_end_matches('.');
        return Err(HttpError::invalid(
            name,
            format!(
                "{} must be a JSON object of autoscaling settings; got {}",
                if name.is_empty() { "the body" } else { name },
                kind(value)
            ),
        ));
    };
    match serde_json::from_value::<UpdateAutoscalingSettings>(value.clone()) {
        Ok(update) => Ok(update),
        Err(whole) => {
            // Find the field at fault: read each field alone.
            for (key, v) in map {
                let mut one = Map::new();
                one.insert(key.clone(), v.clone());
                if let Err(e) =
                    serde_json::from_value::<UpdateAutoscalingSettings>(Value::Object(one))
                {
                    return Err(HttpError::invalid(format!("{prefix}{key}"), e.to_string()));
                }
            }
            Err(HttpError::bad_request(whole.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_body_is_an_empty_object() {
        assert!(object(b"").unwrap().is_empty());
        assert!(object(b" \n").unwrap().is_empty());
        assert_eq!(object(b"[1]").unwrap_err().code, "bad_request");
        assert_eq!(object(b"{").unwrap_err().code, "bad_request");
    }

    #[test]
    fn settings_errors_name_their_field() {
        let e = settings_update(
            &serde_json::json!({"min_replica": 1, "max_replica": "x"}),
            "",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("max_replica"));
        let e =
            settings_update(&serde_json::json!({"bogus": 1}), "autoscaling_settings.").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("autoscaling_settings.bogus"));
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = settings_update(&serde_json::json!(3), "autoscaling_settings.").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("autoscaling_settings"));
        let ok = settings_update(&serde_json::json!({"max_replica": 3}), "").unwrap();
        assert_eq!(ok.max_replica, Some(3));
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_named() {
        let map = object(br#"{"a": true, "b": 1}"#).unwrap();
        let e = only(&map, &["a"], "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("b"));
        assert!(boolean(&map, "a", false).unwrap());
        assert_eq!(
            boolean(&map, "b", false).unwrap_err().field.as_deref(),
            Some("b")
        );
        assert!(boolean(&map, "c", true).unwrap());
        assert_eq!(whole(&map, "b", "").unwrap(), Some(1));
        assert_eq!(
            whole(&map, "a", "x.").unwrap_err().field.as_deref(),
            Some("x.a")
        );
    }
}
