//! `userData` JSON <-> `UserDataValue`, lossless in both directions: the string `"3"` and
//! the integer `3` stay different, integers beyond 2^31 stay integers, null stays null,
//! objects and arrays nest.
//!
//! The one JSON value `int64` cannot hold is an unsigned integer above `i64::MAX`; it maps
//! to the nearest `double`, the same number every JSON consumer outside Rust (JavaScript,
//! Python's `json` with floats, Go's `float64`) would read. Mapping it to a string instead
//! would break the rule that strings and numbers never mix. GWS key-value lists carry
//! 32-bit integers, so this is a theoretical case; it is the only lossy one.

use std::collections::HashMap;

use prost_types::NullValue;
use serde_json::{Map, Number, Value};

use crate::proto::{UserDataList, UserDataMap, UserDataValue, user_data_value::Kind};

/// Deepest nesting of objects/arrays in one `userData` value that
/// [`super::map_notification`] accepts. Each JSON level costs two or three protobuf
/// levels (`UserDataValue` -> `UserDataMap` -> map entry), below five levels of envelope,
/// and prost-based receivers refuse messages nested deeper than 100: deeper data would
/// encode here but fail to decode at the caller.
pub const MAX_USER_DATA_DEPTH: usize = 30;

/// Maps one JSON value to a [`UserDataValue`], losslessly (see the module notes for the
/// one exception, unsigned integers above `i64::MAX`).
pub fn user_data_value(v: &Value) -> UserDataValue {
    let kind = match v {
        Value::Null => Kind::NullValue(NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => number(n),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(UserDataList {
            values: items.iter().map(user_data_value).collect(),
        }),
        Value::Object(fields) => Kind::MapValue(UserDataMap {
            fields: user_data_map(fields),
        }),
    };
    UserDataValue { kind: Some(kind) }
}

/// Maps a JSON object to the proto's `map<string, UserDataValue>`.
pub(crate) fn user_data_map(fields: &Map<String, Value>) -> HashMap<String, UserDataValue> {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), user_data_value(v)))
        .collect()
}

fn number(n: &Number) -> Kind {
    // An integer in the JSON text stays an integer; only a fraction or exponent makes a
    // double. serde_json keeps that distinction in `Number`, so test the integer forms first.
    if let Some(i) = n.as_i64() {
        Kind::IntValue(i)
    } else if n.is_u64() {
        // Above i64::MAX: the documented lossy case.
        Kind::DoubleValue(n.as_f64().unwrap_or(f64::MAX))
    } else {
        // Finite by construction: serde_json never holds NaN or infinities.
        Kind::DoubleValue(n.as_f64().unwrap_or(0.0))
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
    }
}

/// The inverse of [`user_data_map`]: a session's whole `user_data` as one JSON object.
pub fn user_data_map_to_json(fields: &HashMap<String, UserDataValue>) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, v)| (k.clone(), user_data_to_json(v)))
        .collect()
}

/// Whether `v` nests objects and arrays more than `limit` levels deep (a scalar is 0
/// levels, `[1]` is 1). Stops at the first branch past the limit, so a hostile value
/// costs little.
pub(crate) fn depth_exceeds(v: &Value, limit: usize) -> bool {
    let Some(rest) = limit.checked_sub(1) else {
        return matches!(v, Value::Array(_) | Value::Object(_));
    };
    match v {
        Value::Array(items) => items.iter().any(|c| depth_exceeds(c, rest)),
        Value::Object(fields) => fields.values().any(|c| depth_exceeds(c, rest)),
        _ => false,
    }
}
