//! A `tools/call` result as the text the model reads. Upstream Trae hands
//! the model the first text block; every block is kept here, non-text ones
//! described in a line, and a result with only structured content shows it
//! as JSON.

use serde_json::Value;

use crate::tools::ToolOutput;
use crate::tools::clip::{MAX_RESPONSE_CHARS, clip_middle};

/// Renders a result's content blocks (as their JSON) and `isError` flag.
pub(super) fn to_output(
    content: &[Value],
    structured: Option<&Value>,
    is_error: bool,
) -> ToolOutput {
    let mut parts: Vec<String> = content.iter().map(describe).collect();
    if parts.is_empty()
        && let Some(structured) = structured
    {
        parts.push(structured.to_string());
    }
    let text = clip_middle(&parts.join("\n"), MAX_RESPONSE_CHARS, 0);
    match is_error {
        false => ToolOutput::ok(text),
        true if text.is_empty() => {
            ToolOutput::error("The MCP tool reported an error without a message.")
        }
        true => ToolOutput::error(text),
    }
}

fn describe(block: &Value) -> String {
    let field = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    match block.get("type").and_then(Value::as_str) {
        Some("text") => field(block, "text"),
        Some("image") | Some("audio") => {
            format!(
                "[{} content, {}]",
                field(block, "type"),
                field(block, "mimeType")
            )
        }
        Some("resource") => {
            let resource = block.get("resource").cloned().unwrap_or(Value::Null);
            match resource.get("text").and_then(Value::as_str) {
                Some(text) => text.to_string(),
                None => format!("[resource {}]", field(&resource, "uri")),
            }
        }
        Some("resource_link") => format!("[resource link {}]", field(block, "uri")),
        _ => block.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_block_is_shown_and_errors_stay_errors() {
        let content = [
            json!({"type": "text", "text": "first"}),
            json!({"type": "image", "data": "AAAA", "mimeType": "image/png"}),
            json!({"type": "resource", "resource": {"uri": "file:///a", "text": "inline"}}),
            json!({"type": "resource_link", "uri": "file:///b", "name": "b"}),
        ];
        let out = to_output(&content, None, false);
        assert_eq!(
            out.output,
            "first\n[image content, image/png]\ninline\n[resource link file:///b]"
        );
        assert_eq!(out.error, None);
        let out = to_output(
            &[json!({"type": "text", "text": "no such city"})],
            None,
            true,
        );
        assert_eq!(out.error.as_deref(), Some("no such city"));
        let out = to_output(&[], Some(&json!({"sum": 3})), false);
        assert_eq!(out.output, r#"{"sum":3}"#);
        assert!(to_output(&[], None, true).error.is_some());
    }
}
