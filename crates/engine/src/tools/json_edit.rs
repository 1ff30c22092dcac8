//! `json_edit_tool`: view, set, add and remove values in a JSON file by JSONPath.
//!
//! Key order is preserved (serde_json's `preserve_order`), so an edit shows up
//! in the diff as the change it is rather than as a reshuffled file.

use std::path::Path;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::args::{Args, optional_bool, optional_str, required_str};
use super::clip::{MAX_RESPONSE_CHARS, clip_head};
use super::json_path::{self, Segment, Step};
use super::{Tool, ToolOutput};
use crate::messages::ToolSpec;

pub(crate) const NAME: &str = "json_edit_tool";

pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.into(),
        description: "Tool for editing JSON files with JSONPath expressions\n\
* Supports targeted modifications to JSON structures using JSONPath syntax\n\
* Operations: view, set, add, remove\n\
* JSONPath examples: '$.users[0].name', '$.config.database.host', '$.items[*].price'\n\
* The file keeps its key order; it is written with 2-space indentation unless `pretty_print` is false\n\
\n\
Operation details:\n\
- `view`: Display JSON content or specific paths\n\
- `set`: Update existing values at specified paths\n\
- `add`: Add new key-value pairs (for objects) or insert into arrays (an index equal to the array's length appends)\n\
- `remove`: Delete elements at specified paths\n\
\n\
JSONPath syntax supported:\n\
- `$` - root element\n\
- `.key` or `['key']` - object property access\n\
- `[index]` - array index access (negative indexes count from the end)\n\
- `[*]` - all elements in array/object\n\
- `..key` - recursive descent (find key at any level)\n\
- `[start:end]` - array slicing\n"
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "operation": {
                    "type": "string",
                    "enum": ["view", "set", "add", "remove"],
                    "description": "The operation to perform on the JSON file."
                },
                "file_path": {
                    "type": "string",
                    "description": "Absolute path to the JSON file to edit."
                },
                "json_path": {
                    "type": "string",
                    "description": "JSONPath expression to specify the target location (e.g., '$.users[0].name', '$.config.database'). Required for set, add, and remove operations. Optional for view to show specific paths."
                },
                "value": {
                    "description": "The value to set or add (any JSON value). Required for set and add operations."
                },
                "pretty_print": {
                    "type": "boolean",
                    "description": "Whether to format the JSON output with 2-space indentation. Defaults to true."
                }
            },
            "required": ["operation", "file_path"]
        }),
    }
}

pub(crate) struct JsonEditTool;

#[async_trait]
impl Tool for JsonEditTool {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn call(&self, args: &Args) -> ToolOutput {
        super::run_blocking(NAME, args, execute).await
    }
}

fn execute(args: &Args) -> Result<String, String> {
    let operation = required_str(args, "operation")
        .map_err(|_| "Operation parameter is required".to_string())?;
    let operation = operation.to_ascii_lowercase();
    let file_path = required_str(args, "file_path")
        .map_err(|_| "file_path parameter is required".to_string())?;
    let path = Path::new(file_path);
    if !path.is_absolute() {
        return Err(format!("File path must be absolute: {file_path}"));
    }
    let json_path = optional_str(args, "json_path")
        .map_err(|_| "json_path parameter must be a string.".to_string())?;
    let pretty = optional_bool(args, "pretty_print")
        .map_err(|_| "pretty_print parameter must be a boolean.".to_string())?
        .unwrap_or(true);
    if !["view", "set", "add", "remove"].contains(&operation.as_str()) {
        return Err(format!(
            "Unknown operation: {operation}. Supported operations: view, set, add, remove"
        ));
    }

    let (mut doc, had_final_newline) = load(path)?;
    if operation == "view" {
        return view(&doc, path, json_path, pretty);
    }
    let json_path = json_path.ok_or_else(|| {
        format!(
            "json_path parameter is required and must be a string for the '{operation}' operation."
        )
    })?;
    let segments = json_path::parse(json_path)
        .map_err(|e| format!("Invalid JSONPath expression '{json_path}': {e}"))?;
    let message = match operation.as_str() {
        "set" | "add" => {
            // An explicit `null` is a value; only a missing `value` is an error.
            let value = args.get("value").ok_or_else(|| {
                format!("A 'value' parameter is required for the '{operation}' operation.")
            })?;
            if operation == "set" {
                set(&mut doc, &segments, json_path, value)?
            } else {
                add(&mut doc, &segments, json_path, value)?
            }
        }
        _ => remove(&mut doc, &segments, json_path)?,
    };
    save(path, &doc, pretty, had_final_newline)?;
    Ok(message)
}

fn load(path: &Path) -> Result<(Value, bool), String> {
    if !path.exists() {
        return Err(format!("File does not exist: {}", path.display()));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("Error reading file {}: {e}", path.display()))?;
    if text.trim().is_empty() {
        return Err(format!("File is empty: {}", path.display()));
    }
    let doc = serde_json::from_str(&text)
        .map_err(|e| format!("Invalid JSON in file {}: {e}", path.display()))?;
    Ok((doc, text.ends_with('\n')))
}

fn save(path: &Path, doc: &Value, pretty: bool, final_newline: bool) -> Result<(), String> {
    let mut text = render(doc, pretty);
    if final_newline {
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("Error writing to file {}: {e}", path.display()))
}

fn render(value: &Value, pretty: bool) -> String {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    text.unwrap_or_else(|_| value.to_string())
}

fn view(doc: &Value, path: &Path, json_path: Option<&str>, pretty: bool) -> Result<String, String> {
    let Some(json_path) = json_path.filter(|p| !p.trim().is_empty()) else {
        return Ok(clip_head(
            format!(
                "JSON content of {}:\n{}",
                path.display(),
                render(doc, pretty)
            ),
            MAX_RESPONSE_CHARS,
        ));
    };
    let segments = json_path::parse(json_path)
        .map_err(|e| format!("Invalid JSONPath expression '{json_path}': {e}"))?;
    let mut values: Vec<Value> = json_path::resolve(doc, &segments)
        .iter()
        .filter_map(|l| json_path::get(doc, l).cloned())
        .collect();
    let shown = match values.len() {
        0 => return Ok(format!("No matches found for JSONPath: {json_path}")),
        1 => values.remove(0),
        _ => Value::Array(values),
    };
    Ok(clip_head(
        format!(
            "JSONPath '{json_path}' matches:\n{}",
            render(&shown, pretty)
        ),
        MAX_RESPONSE_CHARS,
    ))
}

fn set(
    doc: &mut Value,
    segments: &[Segment],
    json_path: &str,
    value: &Value,
) -> Result<String, String> {
    let locations = json_path::resolve(doc, segments);
    if locations.is_empty() {
        return Err(format!("No matches found for JSONPath: {json_path}"));
    }
    for location in &locations {
        if location.is_empty() {
            *doc = value.clone();
        } else if let Some(slot) = json_path::get_mut(doc, location) {
            *slot = value.clone();
        }
    }
    Ok(format!(
        "Successfully updated {} location(s) at JSONPath '{json_path}' with value: {value}",
        locations.len()
    ))
}

fn add(
    doc: &mut Value,
    segments: &[Segment],
    json_path: &str,
    value: &Value,
) -> Result<String, String> {
    let Some((last, parent)) = segments.split_last() else {
        return Err("Cannot add at the root `$`; use `set` to replace the whole document.".into());
    };
    let parents = json_path::resolve(doc, parent);
    if parents.is_empty() {
        return Err(format!("Parent path not found for JSONPath: {json_path}"));
    }
    for location in &parents {
        let Some(node) = json_path::get_mut(doc, location) else {
            continue;
        };
        match (last, node) {
            (Segment::Key(key), Value::Object(map)) => {
                map.insert(key.clone(), value.clone());
            }
            (Segment::Index(index), Value::Array(items)) => {
                // Python's list.insert semantics: clamp, negatives from the end.
                let len = items.len() as i64;
                let at = if *index < 0 {
                    (len + index).max(0)
                } else {
                    (*index).min(len)
                };
                items.insert(at as usize, value.clone());
            }
            (Segment::Key(_), _) => {
                return Err(format!(
                    "Cannot add key to non-object at JSONPath: {json_path}"
                ));
            }
            (Segment::Index(_), _) => {
                return Err(format!(
                    "Cannot add element to non-array at JSONPath: {json_path}"
                ));
            }
            _ => {
                return Err(format!(
                    "Unsupported add operation for JSONPath '{json_path}'. Path must end in a key or array index."
                ));
            }
        }
    }
    Ok(format!(
        "Successfully added value at JSONPath '{json_path}'"
    ))
}

fn remove(doc: &mut Value, segments: &[Segment], json_path: &str) -> Result<String, String> {
    let locations = json_path::resolve(doc, segments);
    if locations.is_empty() {
        return Err(format!("No matches found for JSONPath: {json_path}"));
    }
    if locations.iter().any(Vec::is_empty) {
        return Err("Cannot remove the root `$`.".into());
    }
    // Last match first: later array indexes and nested matches go before the
    // locations they would shift or contain.
    for location in locations.iter().rev() {
        let Some((step, parent)) = location.split_last() else {
            continue;
        };
        match (json_path::get_mut(doc, parent), step) {
            (Some(Value::Object(map)), Step::Key(k)) => {
                map.shift_remove(k);
            }
            (Some(Value::Array(items)), Step::Index(i)) if *i < items.len() => {
                items.remove(*i);
            }
            _ => {}
        }
    }
    Ok(format!(
        "Successfully removed {} element(s) at JSONPath '{json_path}'",
        locations.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(content: &str) -> (tempfile::TempDir, std::path::PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(&file, content).unwrap();
        let p = file.display().to_string();
        (dir, file, p)
    }

    fn call(v: Value) -> Result<String, String> {
        execute(v.as_object().unwrap())
    }

    #[test]
    fn view_whole_and_paths() {
        let (_d, _f, p) = setup(r#"{"b": 1, "a": {"x": [1, 2]}}"#);
        let out =
            call(json!({"operation": "view", "file_path": p, "pretty_print": false})).unwrap();
        assert_eq!(
            out,
            format!("JSON content of {p}:\n{{\"b\":1,\"a\":{{\"x\":[1,2]}}}}")
        );
        let out =
            call(json!({"operation": "view", "file_path": p, "json_path": "$.a.x[1]"})).unwrap();
        assert_eq!(out, "JSONPath '$.a.x[1]' matches:\n2");
        let out = call(json!({"operation": "view", "file_path": p, "json_path": "$.zz"})).unwrap();
        assert_eq!(out, "No matches found for JSONPath: $.zz");
    }

    #[test]
    fn set_add_remove_keep_order_and_newline() {
        let (_d, f, p) = setup("{\n  \"z\": 1,\n  \"a\": {\"list\": [1, 2, 3]}\n}\n");
        let out = call(
            json!({"operation": "set", "file_path": p, "json_path": "$.z", "value": {"k": true}}),
        )
        .unwrap();
        assert_eq!(
            out,
            "Successfully updated 1 location(s) at JSONPath '$.z' with value: {\"k\":true}"
        );
        call(json!({"operation": "add", "file_path": p, "json_path": "$.a.new", "value": "v"}))
            .unwrap();
        call(json!({"operation": "add", "file_path": p, "json_path": "$.a.list[3]", "value": 4}))
            .unwrap();
        call(json!({"operation": "add", "file_path": p, "json_path": "$.a.list[0]", "value": 0}))
            .unwrap();
        let out =
            call(json!({"operation": "remove", "file_path": p, "json_path": "$.a.list[1:3]"}))
                .unwrap();
        assert_eq!(
            out,
            "Successfully removed 2 element(s) at JSONPath '$.a.list[1:3]'"
        );
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            text,
            "{\n  \"z\": {\n    \"k\": true\n  },\n  \"a\": {\n    \"list\": [\n      0,\n      3,\n      4\n    ],\n    \"new\": \"v\"\n  }\n}\n"
        );
    }

    #[test]
    fn recursive_set_and_remove() {
        let (_d, f, p) = setup(r#"{"id": 1, "items": [{"id": 2}, {"id": 3, "keep": true}]}"#);
        let out =
            call(json!({"operation": "set", "file_path": p, "json_path": "$..id", "value": 0}))
                .unwrap();
        assert!(out.starts_with("Successfully updated 3 location(s)"));
        call(json!({"operation": "remove", "file_path": p, "json_path": "$..id", "pretty_print": false})).unwrap();
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            r#"{"items":[{},{"keep":true}]}"#
        );
    }

    #[test]
    fn errors_are_clear() {
        let (_d, _f, p) = setup(r#"{"a": [1]}"#);
        let err = call(json!({"operation": "set", "file_path": p, "json_path": "$.b", "value": 1}))
            .unwrap_err();
        assert_eq!(err, "No matches found for JSONPath: $.b");
        let err =
            call(json!({"operation": "set", "file_path": p, "json_path": "$.a"})).unwrap_err();
        assert_eq!(
            err,
            "A 'value' parameter is required for the 'set' operation."
        );
        let err = call(json!({"operation": "remove", "file_path": p})).unwrap_err();
        assert!(err.starts_with("json_path parameter is required"));
        let err =
            call(json!({"operation": "add", "file_path": p, "json_path": "$.a.k", "value": 1}))
                .unwrap_err();
        assert!(err.starts_with("Cannot add key to non-object"));
        let err =
            call(json!({"operation": "view", "file_path": p, "json_path": "$.a["})).unwrap_err();
        assert!(err.starts_with("Invalid JSONPath expression '$.a['"));
        let err = call(json!({"operation": "merge", "file_path": p})).unwrap_err();
        assert!(err.starts_with("Unknown operation: merge"));
        let err = call(json!({"operation": "view", "file_path": "x.json"})).unwrap_err();
        assert_eq!(err, "File path must be absolute: x.json");
        let (_d2, _f2, bad) = setup("{nope");
        let err = call(json!({"operation": "view", "file_path": bad})).unwrap_err();
        assert!(err.starts_with("Invalid JSON in file"));
    }
}
