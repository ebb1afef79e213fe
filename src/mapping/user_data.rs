//! `userData` JSON <-> `UserDataValue`, lossless in both directions: the string `"3"` and
//! the integer `3` stay different, integers beyond 2^31 stay integers, null stays null,
//! objects and arrays nest.
//!
//! What the other kinds cannot hold exactly becomes `raw_json`, the value's exact JSON text:
//! an integer outside `i64`, a number outside `f64`'s range, and an object or array nested
//! deeper than [`MAX_USER_DATA_DEPTH`] levels (from that level down). So no notification is
//! ever dropped, and no value altered, because of what it holds. The body parser
//! ([`crate::json`]) hands such values over as raw markers; a `Value` built elsewhere (tests)
//! gets the same treatment here.

use std::collections::HashMap;

use prost_types::NullValue;
use serde_json::{Map, Number, Value};

use crate::proto::{UserDataList, UserDataMap, UserDataValue, user_data_value::Kind};

/// Deepest nesting of objects/arrays in one `userData` value that maps structurally; the
/// level below becomes `raw_json`. Each JSON level costs two or three protobuf levels
/// (`UserDataValue` -> `UserDataMap` -> map entry), below five levels of envelope, and
/// prost-based receivers refuse messages nested deeper than 100: deeper data would encode
/// here but fail to decode at the caller.
pub const MAX_USER_DATA_DEPTH: usize = 30;

/// Maps one JSON value to a [`UserDataValue`], losslessly (see the module notes).
pub fn user_data_value(v: &Value) -> UserDataValue {
    value_at(v, MAX_USER_DATA_DEPTH)
}

/// `levels` is how many more levels of containers may map structurally.
fn value_at(v: &Value, levels: usize) -> UserDataValue {
    let raw = |text: String| UserDataValue {
        kind: Some(Kind::RawJson(text)),
    };
    if let Some(text) = crate::json::raw_text(v) {
        return raw(text.to_owned());
    }
    let kind = match v {
        Value::Array(_) | Value::Object(_) if levels == 0 => {
            return raw(crate::json::to_text(v));
        }
        Value::Null => Kind::NullValue(NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => match number(n) {
            Some(kind) => kind,
            None => return raw(n.to_string()),
        },
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(UserDataList {
            values: items.iter().map(|c| value_at(c, levels - 1)).collect(),
        }),
        Value::Object(fields) => Kind::MapValue(UserDataMap {
            fields: map_at(fields, levels - 1),
        }),
    };
    UserDataValue { kind: Some(kind) }
}

/// Maps a JSON object to the proto's `map<string, UserDataValue>`.
pub(crate) fn user_data_map(fields: &Map<String, Value>) -> HashMap<String, UserDataValue> {
    map_at(fields, MAX_USER_DATA_DEPTH)
}

fn map_at(fields: &Map<String, Value>, levels: usize) -> HashMap<String, UserDataValue> {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), value_at(v, levels)))
        .collect()
}

/// An integer in the JSON text stays an integer; only a fraction or exponent makes a double.
/// `None` for an unsigned integer above `i64::MAX` (raw_json).
fn number(n: &Number) -> Option<Kind> {
    if let Some(i) = n.as_i64() {
        Some(Kind::IntValue(i))
    } else if n.is_u64() {
        None
    } else {
        // Finite by construction: serde_json never holds NaN or infinities.
        Some(Kind::DoubleValue(n.as_f64().unwrap_or(0.0)))
    }
}

/// The inverse of [`user_data_value`]: `user_data_to_json(&user_data_value(v)) == *v` for
/// every JSON value `v` without unsigned integers above `i64::MAX`.
///
/// Values JSON cannot express get the nearest JSON: an unset `kind` is `null`, a
/// non-finite double is `null` (what `JSON.stringify` does too).
pub fn user_data_to_json(v: &UserDataValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::IntValue(i)) => Value::Number((*i).into()),
        Some(Kind::DoubleValue(d)) => Number::from_f64(*d).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            Value::Array(list.values.iter().map(user_data_to_json).collect())
        }
        Some(Kind::MapValue(map)) => Value::Object(user_data_map_to_json(&map.fields)),
        // The nearest JSON a `Value` can hold (requests refuse raw_json, so this only
        // serves display).
        Some(Kind::RawJson(text)) => Value::String(text.clone()),
    }
}

/// The inverse of [`user_data_map`]: a session's whole `user_data` as one JSON object.
pub fn user_data_map_to_json(fields: &HashMap<String, UserDataValue>) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), user_data_to_json(v)))
        .collect()
}
