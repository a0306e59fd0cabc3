//! Reading JSON fields loosely so that a bad value is reported with its
//! field's name (serde's own messages say "expected u32" and nothing else).

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// One JSON value as it arrived, before it is checked against its field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawValue {
    Null,
    Int(i128),
    Float(f64),
    Text(String),
    Bool(bool),
    Other,
}

impl RawValue {
    /// Converts to a whole number in `u32`, naming `field` on failure.
    pub(crate) fn to_u32(&self, field: &'static str) -> Result<Option<u32>, crate::FieldError> {
        let got = match self {
            RawValue::Null => return Ok(None),
            RawValue::Int(v) => {
                return u32::try_from(*v).map(Some).map_err(|_| {
                    crate::FieldError::new(
                        field,
                        format!(
                            "{field} must be a whole number from 0 to {}; got {v}",
                            u32::MAX
                        ),
                    )
                });
            }
            RawValue::Float(v) => format!("{v}"),
            RawValue::Text(s) => format!("{s:?}"),
            RawValue::Bool(b) => b.to_string(),
            RawValue::Other => "a list or an object".to_owned(),
        };
        Err(crate::FieldError::new(
            field,
            format!("{field} must be a whole number; got {got}"),
        ))
    }
}

impl<'de> serde::Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_none<E>(self) -> Result<RawValue, E> {
        Ok(RawValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        d.deserialize_any(RawVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue::Int(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::Text(v.to_owned()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(RawValue::Other)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(RawValue::Other)
    }
}

/// A whole JSON document as it arrived. Objects keep their entries in order,
/// repeated keys included, so that a reader can refuse a duplicate and name
/// the field path of every bad value (`serde_json::Value` keeps only the last
/// of two equal keys).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawJson {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
    Array(Vec<RawJson>),
    Object(Vec<(String, RawJson)>),
}

impl RawJson {
    /// The value as a settings field reads it (lists and objects are `Other`).
    pub(crate) fn to_raw_value(&self) -> RawValue {
        match self {
            RawJson::Null => RawValue::Null,
            RawJson::Bool(b) => RawValue::Bool(*b),
            RawJson::Int(v) => RawValue::Int(*v),
            RawJson::Float(v) => RawValue::Float(*v),
            RawJson::Text(s) => RawValue::Text(s.clone()),
            RawJson::Array(_) | RawJson::Object(_) => RawValue::Other,
        }
    }

    /// The value for a message: `12`, `"text"`, `true`, `null`, `a list`, `an object`.
    pub(crate) fn describe(&self) -> String {
        match self {
            RawJson::Null => "null".to_owned(),
            RawJson::Bool(b) => b.to_string(),
            RawJson::Int(v) => v.to_string(),
            RawJson::Float(v) => v.to_string(),
            RawJson::Text(s) => format!("{s:?}"),
            RawJson::Array(_) => "a list".to_owned(),
            RawJson::Object(_) => "an object".to_owned(),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = RawJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<RawJson, E> {
        Ok(RawJson::Null)
    }
    fn visit_none<E>(self) -> Result<RawJson, E> {
        Ok(RawJson::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawJson, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawJson, E> {
        Ok(RawJson::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawJson, E> {
        Ok(RawJson::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawJson, E> {
        Ok(RawJson::Int(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawJson, E> {
        Ok(RawJson::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawJson, E> {
        Ok(RawJson::Text(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<RawJson, E> {
        Ok(RawJson::Text(v))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawJson, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<RawJson>()? {
            items.push(item);
        }
        Ok(RawJson::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawJson, A::Error> {
        let mut entries = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, RawJson>()? {
            entries.push((key, value));
        }
        Ok(RawJson::Object(entries))
    }
}
