//! Typed accessors over `serde_json` objects that turn every absent or mistyped field
//! into a [`MappingError`] carrying the field's path, so the mappers read as a list of
//! fields and never index or unwrap.

use serde_json::{Map, Value};

use super::MappingError;

/// Longest upstream string quoted back in an error message: errors are logged, and a
/// hostile or broken upstream must not be able to flood the logs through them.
const EXCERPT_CHARS: usize = 64;

/// `v` as an object, if it is one. A raw marker ([`crate::json`]: a value too deep or a
/// number too large to hold) is an object only in form: it is never taken for upstream's.
pub(crate) fn object(v: &Value) -> Option<&Map<String, Value>> {
    if crate::json::raw_text(v).is_some() {
        return None;
    }
    v.as_object()
}

/// The JSON kind of `v`, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    if crate::json::raw_text(v).is_some() {
        return "a value nested too deep or a number too large to hold";
    }
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `s` cut to [`EXCERPT_CHARS`] characters (on a char boundary).
pub(crate) fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}

/// `parent.key`, or `key` at the top level.
pub(crate) fn path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

/// The first present, non-null value among `keys` (upstream spellings vary), with the key
/// that carried it.
pub(crate) fn first<'a>(
    obj: &'a Map<String, Value>,
    keys: &[&'static str],
) -> Option<(&'static str, &'a Value)> {
    keys.iter()
        .find_map(|k| obj.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
}

fn wrong(parent: &str, key: &str, expected: &'static str, found: &Value) -> MappingError {
    MappingError::WrongType {
        path: path(parent, key),
        expected,
        found: kind(found),
    }
}

/// A required string field.
pub(crate) fn req_str<'a>(
    obj: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<&'a str, MappingError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(MappingError::Missing {
            path: path(parent, key),
        }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(wrong(parent, key, "a string", other)),
    }
}

/// An optional string field: absent and null are `""`.
pub(crate) fn opt_str(
    obj: &Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<String, MappingError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(wrong(parent, key, "a string", other)),
    }
}

/// An optional array field: absent and null are empty.
pub(crate) fn opt_array<'a>(
    obj: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<&'a [Value], MappingError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(wrong(parent, key, "an array", other)),
    }
}

/// An optional object field: absent and null are `None`.
pub(crate) fn opt_object<'a>(
    obj: &'a Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, MappingError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(o)) if object(v).is_some() => Ok(Some(o)),
        Some(other) => Err(wrong(parent, key, "an object", other)),
    }
}

/// An optional integer field that fits `i64`. A string holding an integer is accepted
/// too: the samples upstream publishes are Python dumps, and some GWS builds quote ids.
pub(crate) fn opt_i64(
    obj: &Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Option<i64>, MappingError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => as_i64(v, &path(parent, key)).map(Some),
    }
}

/// `v` as an `i64`: an integer number, or a string holding one.
pub(crate) fn as_i64(v: &Value, at: &str) -> Result<i64, MappingError> {
    match v {
        Value::Number(n) => n.as_i64().ok_or_else(|| MappingError::Invalid {
            path: at.to_owned(),
            reason: format!("{n} is not an integer in the int64 range"),
        }),
        Value::String(s) => s.trim().parse::<i64>().map_err(|_| MappingError::Invalid {
            path: at.to_owned(),
            reason: format!("\"{}\" is not an integer", excerpt(s)),
        }),
        other => Err(MappingError::WrongType {
            path: at.to_owned(),
            expected: "an integer",
            found: kind(other),
        }),
    }
}

/// A list of strings (capabilities): every element must be a string.
pub(crate) fn string_list(
    obj: &Map<String, Value>,
    parent: &str,
    key: &str,
) -> Result<Vec<String>, MappingError> {
    opt_array(obj, parent, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(MappingError::WrongType {
                path: format!("{}[{i}]", path(parent, key)),
                expected: "a string",
                found: kind(other),
            }),
        })
        .collect()
}
