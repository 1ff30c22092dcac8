//! Reading a tool call's JSON arguments, with errors worded for the model.

use serde_json::{Map, Value};

pub(crate) type Args = Map<String, Value>;

/// A present, non-null argument.
fn present<'a>(args: &'a Args, key: &str) -> Option<&'a Value> {
    args.get(key).filter(|v| !v.is_null())
}

pub(crate) fn required_str<'a>(args: &'a Args, key: &str) -> Result<&'a str, String> {
    match present(args, key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "Parameter `{key}` must be a string, got {}",
            kind(other)
        )),
        None => Err(format!("Parameter `{key}` is required")),
    }
}

pub(crate) fn optional_str<'a>(args: &'a Args, key: &str) -> Result<Option<&'a str>, String> {
    match present(args, key) {
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "Parameter `{key}` must be a string, got {}",
            kind(other)
        )),
        None => Ok(None),
    }
}

/// Booleans, also accepting the strings "true"/"false" some models send.
pub(crate) fn optional_bool(args: &Args, key: &str) -> Result<Option<bool>, String> {
    match present(args, key) {
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(format!(
            "Parameter `{key}` must be a boolean, got {}",
            kind(other)
        )),
        None => Ok(None),
    }
}

pub(crate) fn required_bool(args: &Args, key: &str) -> Result<bool, String> {
    optional_bool(args, key)?.ok_or_else(|| format!("Parameter `{key}` is required"))
}

/// Integers, also accepting integral floats (`3.0`) and numeric strings.
pub(crate) fn optional_int(args: &Args, key: &str) -> Result<Option<i64>, String> {
    match present(args, key) {
        Some(v) => as_int(v)
            .map(Some)
            .ok_or_else(|| format!("Parameter `{key}` must be an integer, got {}", kind(v))),
        None => Ok(None),
    }
}

pub(crate) fn required_int(args: &Args, key: &str) -> Result<i64, String> {
    optional_int(args, key)?.ok_or_else(|| format!("Parameter `{key}` is required"))
}

pub(crate) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Args {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn reads_and_rejects() {
        let a = args(json!({"s": "x", "b": "true", "i": 3.0, "n": null, "bad": [1]}));
        assert_eq!(required_str(&a, "s"), Ok("x"));
        assert_eq!(optional_bool(&a, "b"), Ok(Some(true)));
        assert_eq!(optional_int(&a, "i"), Ok(Some(3)));
        assert_eq!(optional_str(&a, "n"), Ok(None));
        assert_eq!(
            required_str(&a, "n"),
            Err("Parameter `n` is required".into())
        );
        assert_eq!(
            required_str(&a, "bad"),
            Err("Parameter `bad` must be a string, got an array".into())
        );
    }
}
