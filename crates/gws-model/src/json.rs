//! Bounded JSON for everything that comes from upstream (CometD replies, REST replies).
//!
//! Two things a `serde_json::Value` must not be asked to hold: a container nested very deep
//! (serde_json refuses more than 128 levels, which would fail the whole body, and a deep
//! `Value` costs recursion to drop or write), and a number it cannot keep exactly (an integer
//! outside `i64`, which it would round through `u64` or `f64`, or a float out of `f64`'s
//! range, which it refuses). A hostile or broken GWS can send both inside otherwise valid JSON.
//!
//! So every upstream body goes through [`parse`]: one iterative pass (an explicit stack, no
//! recursion: 100,000 levels cost memory, never the thread's stack) validates the JSON and
//! finds those values; each is replaced by a *raw marker*, an object with one key holding the
//! value's exact JSON text. The key is a per-process random name, so upstream cannot forge a
//! marker. [`raw_text`] recognises one, [`to_text`] writes a value back as JSON with markers
//! expanded to their original text. The mapper turns markers into `UserDataValue.raw_json`
//! (and `reference_id_json`), so nothing upstream sends is ever silently dropped or altered.
//!
//! [`parse_batch`] parses a top-level array element by element, in the same single pass, so a
//! CometD batch is parsed one message at a time and one bad message cannot take down its
//! neighbours.

use serde_json::Value;
use std::ops::Range;
use std::sync::LazyLock;

/// Containers nested deeper than this below the parsed root become raw markers. Far above
/// anything GWS sends (a notification's user data starts at level 4) and far below
/// serde_json's recursion limit of 128.
pub const MAX_DEPTH: usize = 64;

/// The marker's key: random per process, so no upstream text can produce a marker.
static MARKER_KEY: LazyLock<String> = LazyLock::new(|| {
    let n: u128 = rand::random();
    format!("gws-gateway-raw-json-{n:032x}")
});

/// Why a body is not JSON (position in bytes from the start of the parsed text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not valid JSON: {what} at byte {at}")]
pub struct JsonError {
    pub what: &'static str,
    pub at: usize,
}

fn err<T>(what: &'static str, at: usize) -> Result<T, JsonError> {
    Err(JsonError { what, at })
}

/// Parses one JSON value, with values a `Value` cannot hold replaced by raw markers (see the
/// module notes). Never recurses on the input, never panics.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let text = utf8(bytes)?;
    let scan = scan(text.as_bytes(), MAX_DEPTH)?;
    from_text(text, &scan.cuts)
}

/// What [`parse_batch`] found: a top-level array's elements, each parsed on its own (an
/// element's error is its own), or any other single value.
#[derive(Debug, PartialEq)]
pub enum Batch {
    Elements(Vec<Result<Value, JsonError>>),
    Single(Value),
}

/// Parses a body that may be a batch, in one pass: the whole text must be JSON (else the
/// error), and each element of a top-level array is held to [`MAX_DEPTH`] below its own root,
/// as if parsed alone.
pub fn parse_batch(bytes: &[u8]) -> Result<Batch, JsonError> {
    let text = utf8(bytes)?;
    let top_array = first_non_ws(text.as_bytes()) == Some(b'[');
    // Elements sit one level below the array: the same depth below their own roots.
    let depth = if top_array { MAX_DEPTH + 1 } else { MAX_DEPTH };
    let scan = scan(text.as_bytes(), depth)?;
    let Some(ranges) = scan.elements else {
        return from_text(text, &scan.cuts).map(Batch::Single);
    };
    // Cuts come in text order and each lies inside one element: hand each element its own,
    // relative to its start.
    let mut cuts = scan.cuts.into_iter().peekable();
    let elements = ranges
        .into_iter()
        .map(|r| {
            let mut mine = Vec::new();
            while let Some(cut) = cuts.next_if(|c| c.end <= r.end) {
                mine.push(cut.start - r.start..cut.end - r.start);
            }
            from_text(&text[r], &mine)
        })
        .collect();
    Ok(Batch::Elements(elements))
}

fn utf8(bytes: &[u8]) -> Result<&str, JsonError> {
    std::str::from_utf8(bytes).map_err(|e| JsonError {
        what: "invalid UTF-8",
        at: e.valid_up_to(),
    })
}

/// serde_json over already scanned `text`, with `cuts` (ranges of `text`) as raw markers.
fn from_text(text: &str, cuts: &[Range<usize>]) -> Result<Value, JsonError> {
    let result = if cuts.is_empty() {
        serde_json::from_str(text)
    } else {
        serde_json::from_str(&with_markers(text, cuts))
    };
    // serde_json still refuses what the scan lets through: a lone surrogate escape.
    result.map_err(|_| JsonError {
        what: "invalid escape or value",
        at: 0,
    })
}

/// A raw marker for `text`, which must be JSON text: [`to_text`] writes it verbatim. For
/// writers that must emit what a `Value` cannot hold (the simulator's raw notifications).
pub fn raw(text: String) -> Value {
    let mut marker = serde_json::Map::new();
    marker.insert(MARKER_KEY.clone(), Value::String(text));
    Value::Object(marker)
}

/// The original JSON text of a raw marker, or `None` if `v` is not one.
pub fn raw_text(v: &Value) -> Option<&str> {
    let obj = v.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    obj.get(MARKER_KEY.as_str())?.as_str()
}

/// `v` as JSON text, with raw markers written as the text they stand for.
pub fn to_text(v: &Value) -> String {
    let mut out = String::new();
    write(v, &mut out);
    out
}

fn write(v: &Value, out: &mut String) {
    if let Some(raw) = raw_text(v) {
        out.push_str(raw);
        return;
    }
    match v {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (k, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// `text` with each cut range replaced by a raw marker holding that range's text.
fn with_markers(text: &str, cuts: &[Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len() + cuts.len() * 64);
    let mut at = 0;
    for cut in cuts {
        out.push_str(&text[at..cut.start]);
        out.push_str("{\"");
        out.push_str(&MARKER_KEY);
        out.push_str("\":");
        out.push_str(&Value::String(text[cut.clone()].to_string()).to_string());
        out.push('}');
        at = cut.end;
    }
    out.push_str(&text[at..]);
    out
}

struct Scan {
    /// Outermost ranges to replace by markers, in order.
    cuts: Vec<Range<usize>>,
    /// For a top-level array: its elements' ranges.
    elements: Option<Vec<Range<usize>>>,
}

/// What the scanner expects next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (the root, after `:` or after `,` in an array).
    Value,
    /// A value or `]` (just after `[`).
    ValueOrClose,
    /// A key or `}` (just after `{`).
    KeyOrClose,
    /// A key (after `,` in an object).
    Key,
    Colon,
    /// `,` or the container's close, after a value inside a container.
    CommaOrClose,
    /// Only whitespace: the root value is complete.
    End,
}

/// Validates `b` as exactly one JSON value and finds what must become raw markers:
/// containers deeper than `max_depth`, and numbers a `Value` cannot hold exactly.
fn scan(b: &[u8], max_depth: usize) -> Result<Scan, JsonError> {
    let mut stack: Vec<u8> = Vec::new();
    let mut expect = Expect::Value;
    let mut cuts = Vec::new();
    // (start, depth) of the container being cut, while inside it.
    let mut cutting: Option<(usize, usize)> = None;
    let top_array = first_non_ws(b) == Some(b'[');
    let mut elements = top_array.then(Vec::new);
    let mut element_start = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
            continue;
        }
        // Where a value may start.
        if matches!(expect, Expect::Value | Expect::ValueOrClose) && c != b']' {
            if stack.len() == 1 && top_array {
                element_start = i;
            }
            let start = i;
            match c {
                b'{' | b'[' => {
                    stack.push(c);
                    if cutting.is_none() && stack.len() > max_depth {
                        cutting = Some((start, stack.len()));
                    }
                    expect = if c == b'{' {
                        Expect::KeyOrClose
                    } else {
                        Expect::ValueOrClose
                    };
                    i += 1;
                    continue;
                }
                b'"' => i = string_end(b, i)?,
                b'-' | b'0'..=b'9' => {
                    let (end, integer) = number_end(b, i)?;
                    if cutting.is_none() && !representable(&b[start..end], integer) {
                        cuts.push(start..end);
                    }
                    i = end;
                }
                b't' => i = literal_end(b, i, b"true")?,
                b'f' => i = literal_end(b, i, b"false")?,
                b'n' => i = literal_end(b, i, b"null")?,
                _ => return err("expected a value", i),
            }
            expect = after_value(&stack);
            if stack.len() == 1
                && let Some(e) = elements.as_mut()
            {
                e.push(element_start..i);
            }
            continue;
        }
        match (expect, c) {
            (Expect::ValueOrClose, b']') | (Expect::KeyOrClose, b'}') => {}
            (Expect::KeyOrClose | Expect::Key, b'"') => {
                i = string_end(b, i)?;
                expect = Expect::Colon;
                continue;
            }
            (Expect::Colon, b':') => {
                expect = Expect::Value;
                i += 1;
                continue;
            }
            (Expect::CommaOrClose, b',') => {
                expect = if stack.last() == Some(&b'[') {
                    Expect::Value
                } else {
                    Expect::Key
                };
                i += 1;
                continue;
            }
            (Expect::CommaOrClose, b']' | b'}') => {}
            (Expect::End, _) => return err("trailing characters after the value", i),
            _ => return err("unexpected character", i),
        }
        // A close bracket: it must match the innermost open one.
        let open = stack.pop();
        if open != Some(if c == b']' { b'[' } else { b'{' }) {
            return err("mismatched bracket", i);
        }
        i += 1;
        if let Some((start, depth)) = cutting
            && stack.len() + 1 == depth
        {
            cuts.push(start..i);
            cutting = None;
        }
        expect = after_value(&stack);
        if stack.len() == 1
            && let Some(e) = elements.as_mut()
        {
            e.push(element_start..i);
        }
    }
    if expect != Expect::End {
        return err("unexpected end of input", b.len());
    }
    Ok(Scan { cuts, elements })
}

fn first_non_ws(b: &[u8]) -> Option<u8> {
    b.iter()
        .copied()
        .find(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
}

fn after_value(stack: &[u8]) -> Expect {
    if stack.is_empty() {
        Expect::End
    } else {
        Expect::CommaOrClose
    }
}

/// The index after the string starting at `b[start] == '"'`.
fn string_end(b: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'"' => return Ok(i + 1),
            b'\\' => match b.get(i + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                Some(b'u') => {
                    let hex = b.get(i + 2..i + 6).ok_or(JsonError {
                        what: "unterminated string",
                        at: i,
                    })?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return err("invalid \\u escape", i);
                    }
                    i += 6;
                }
                _ => return err("invalid escape", i),
            },
            0..=0x1f => return err("control character in string", i),
            _ => i += 1,
        }
    }
    err("unterminated string", start)
}

/// The index after the number starting at `start`, and whether it is an integer (no
/// fraction, no exponent).
fn number_end(b: &[u8], start: usize) -> Result<(usize, bool), JsonError> {
    let digits = |mut i: usize| {
        let from = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i, i > from)
    };
    let mut i = start;
    if b[i] == b'-' {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i).0,
        _ => return err("invalid number", start),
    }
    let mut integer = true;
    if b.get(i) == Some(&b'.') {
        let (end, any) = digits(i + 1);
        if !any {
            return err("invalid number", start);
        }
        i = end;
        integer = false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let (end, any) = digits(i);
        if !any {
            return err("invalid number", start);
        }
        i = end;
        integer = false;
    }
    Ok((i, integer))
}

/// Whether a `Value` keeps this number exactly as its kind: an integer within `i64`, or a
/// float within `f64`'s range.
fn representable(text: &[u8], integer: bool) -> bool {
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    if integer {
        text.parse::<i64>().is_ok()
    } else {
        text.parse::<f64>().is_ok_and(f64::is_finite)
    }
}

fn literal_end(b: &[u8], start: usize, word: &[u8]) -> Result<usize, JsonError> {
    if b.get(start..start + word.len()) == Some(word) {
        Ok(start + word.len())
    } else {
        err("invalid literal", start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deep(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn ordinary_json_parses_as_serde_json_does() {
        for text in [
            r#"{"a":[1,2.5,-3,"x\"y\u00e9",true,false,null,{}],"b":{"c":[]}}"#,
            "[]",
            " 0 ",
            "\"\"",
            "-0.0e+5",
        ] {
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text.as_bytes()).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn invalid_json_is_an_error_never_a_panic() {
        for text in [
            "",
            " ",
            "[",
            "]",
            "[1,]",
            "{\"a\"}",
            "{\"a\":}",
            "{1:2}",
            "[1 2]",
            "01",
            "1.",
            "1e",
            "-",
            "tru",
            "nul",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "[}",
            "{]",
            "1 2",
            "\"a\u{1}\"",
            "[\"\\ud800\"]",
        ] {
            assert!(parse(text.as_bytes()).is_err(), "{text:?}");
        }
        assert!(parse(&[b'"', 0xff, b'"']).is_err());
    }

    #[test]
    fn deep_containers_become_markers_with_their_exact_text() {
        let text = deep(MAX_DEPTH + 10);
        let v = parse(text.as_bytes()).unwrap();
        // MAX_DEPTH levels of arrays, then the marker.
        let mut at = &v;
        for _ in 0..MAX_DEPTH {
            at = &at.as_array().unwrap()[0];
        }
        assert_eq!(raw_text(at), Some(deep(10).as_str()));
        assert_eq!(to_text(&v), text);
        // Exactly MAX_DEPTH levels: no marker.
        let v = parse(deep(MAX_DEPTH).as_bytes()).unwrap();
        assert_eq!(to_text(&v), deep(MAX_DEPTH));
        assert!(!to_text(&v).contains("gws-gateway-raw-json"));
    }

    #[test]
    fn a_hundred_thousand_levels_cost_no_stack() {
        let text = format!(
            "[{{\"ok\":1}},{{\"d\":{}}}]",
            "[".repeat(100_000) + &"]".repeat(100_000)
        );
        let v = parse(text.as_bytes()).unwrap();
        assert_eq!(v[0], json!({"ok": 1}));
        assert_eq!(to_text(&v), text);
        let Batch::Elements(parts) = parse_batch(text.as_bytes()).unwrap() else {
            panic!("an array is a batch")
        };
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], Ok(json!({"ok": 1})));
        assert_eq!(
            to_text(parts[1].as_ref().unwrap()),
            &text[10..text.len() - 1]
        );
        // Unbalanced at depth: an error, not a crash.
        let broken = "[".repeat(100_000);
        assert!(parse(broken.as_bytes()).is_err());
    }

    #[test]
    fn numbers_a_value_cannot_hold_become_markers() {
        let text = r#"{"big":9223372036854775808,"neg":-9223372036854775809,"max":9223372036854775807,"huge":123456789012345678901234567890,"inf":1e400,"f":1.5}"#;
        let v = parse(text.as_bytes()).unwrap();
        assert_eq!(raw_text(&v["big"]), Some("9223372036854775808"));
        assert_eq!(raw_text(&v["neg"]), Some("-9223372036854775809"));
        assert_eq!(v["max"], json!(i64::MAX));
        assert_eq!(raw_text(&v["huge"]), Some("123456789012345678901234567890"));
        assert_eq!(raw_text(&v["inf"]), Some("1e400"));
        assert_eq!(v["f"], json!(1.5));
    }

    #[test]
    fn markers_cannot_be_forged_by_input() {
        let forged = r#"{"gws-gateway-raw-json-00000000000000000000000000000000":"x"}"#;
        assert_eq!(raw_text(&parse(forged.as_bytes()).unwrap()), None);
    }

    #[test]
    fn a_batch_parses_each_element_as_if_alone() {
        let deep_one = deep(MAX_DEPTH + 3);
        let texts = [
            r#"{"a":1}"#.to_string(),
            "2".into(),
            "\"x\"".into(),
            "[3,[4]]".into(),
            deep_one.clone(),
            "18446744073709551616".into(),
            r#"{"n":[99999999999999999999]}"#.into(),
            "\"\\ud800\"".into(),
        ];
        let body = format!(" [ {} ] ", texts.join(" , "));
        let Batch::Elements(parts) = parse_batch(body.as_bytes()).unwrap() else {
            panic!("an array is a batch")
        };
        assert_eq!(parts.len(), texts.len());
        for (text, part) in texts.iter().zip(&parts) {
            // The same result as parsing the element alone (the same depth below its root).
            assert_eq!(part, &parse(text.as_bytes()), "{text}");
        }
        assert_eq!(to_text(parts[4].as_ref().unwrap()), deep_one);
        assert!(
            parts[7].is_err(),
            "a lone surrogate fails its own element only"
        );
        assert_eq!(parse_batch(b"{}").unwrap(), Batch::Single(json!({})));
        assert_eq!(parse_batch(b"[]").unwrap(), Batch::Elements(vec![]));
        assert!(parse_batch(b"[1,").is_err());
    }
}
