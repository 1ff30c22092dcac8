//! Provider-neutral clean-up of the conversation before it is sent.
//!
//! Every provider rejects a tool call without an answer, and OpenAI rejects
//! an answer without its call (Trae issues #245, #353). So each assistant
//! turn's calls are followed by exactly one result each: missing ones become
//! failed results, stray ones become plain user text after the block.

use std::borrow::Cow;

use serde_json::{Value, json};

use crate::messages::{Message, Role, ToolCall, ToolResult};

pub(crate) const MISSING_RESULT: &str = "no result was recorded for this tool call";

/// Borrows the history's messages and only makes the ones it synthesizes:
/// this runs before every model call, on a history that only grows.
pub(crate) fn paired(messages: &[Message]) -> Vec<Cow<'_, Message>> {
    let mut out = Vec::with_capacity(messages.len());
    // The open block's calls (id, tool name) and the ids answered so far
    // (a block has a call or a few: a scan beats hashing).
    let mut pending: Vec<(&str, &str)> = Vec::new();
    let mut answered: Vec<&str> = Vec::new();
    let mut stray: Vec<Cow<'_, Message>> = Vec::new();
    for m in messages {
        if m.role == Role::Tool {
            match &m.tool_result {
                Some(r)
                    if pending.iter().any(|(id, _)| *id == r.call_id)
                        && !answered.contains(&r.call_id.as_str()) =>
                {
                    answered.push(&r.call_id);
                    out.push(Cow::Borrowed(m));
                }
                Some(r) => stray.push(Cow::Owned(Message::user(format!(
                    "[result of tool call {} ({})]\n{}",
                    r.call_id,
                    r.name,
                    result_text(r)
                )))),
                None if !m.content.is_empty() => {
                    stray.push(Cow::Owned(Message::user(m.content.clone())))
                }
                None => {}
            }
            continue;
        }
        close_block(&mut out, &mut pending, &mut answered, &mut stray);
        out.push(Cow::Borrowed(m));
        if m.role == Role::Assistant {
            pending.extend(
                m.tool_calls
                    .iter()
                    .map(|c| (c.call_id.as_str(), c.name.as_str())),
            );
        }
    }
    close_block(&mut out, &mut pending, &mut answered, &mut stray);
    out
}

fn close_block<'a>(
    out: &mut Vec<Cow<'a, Message>>,
    pending: &mut Vec<(&'a str, &'a str)>,
    answered: &mut Vec<&'a str>,
    stray: &mut Vec<Cow<'a, Message>>,
) {
    for (call_id, name) in pending.drain(..) {
        if !answered.contains(&call_id) {
            out.push(Cow::Owned(Message::tool(ToolResult {
                call_id: call_id.to_string(),
                name: name.to_string(),
                success: false,
                result: String::new(),
                error: Some(MISSING_RESULT.to_string()),
            })));
        }
    }
    answered.clear();
    out.append(stray);
}

/// What the model reads as the answer: the output, then the error if any.
pub(crate) fn result_text(r: &ToolResult) -> Cow<'_, str> {
    match &r.error {
        None => Cow::Borrowed(&r.result),
        Some(e) if r.result.is_empty() => Cow::Borrowed(e),
        Some(e) => Cow::Owned(format!("{}\nError: {e}", r.result)),
    }
}

/// Providers that reject empty tool output get a placeholder.
pub(crate) fn non_empty_result_text(r: &ToolResult) -> Cow<'_, str> {
    let text = result_text(r);
    if text.trim().is_empty() {
        Cow::Borrowed("(no output)")
    } else {
        text
    }
}

/// Parses a model's tool arguments. Anything but a JSON object is malformed:
/// `arguments` is `Null` and the text is kept in `raw_arguments`.
pub(crate) fn tool_call(call_id: String, name: String, arguments: &Value) -> ToolCall {
    let (arguments, raw_arguments) = match arguments {
        Value::Object(_) => (arguments.clone(), None),
        Value::Null => (json!({}), None),
        Value::String(s) if s.trim().is_empty() => (json!({}), None),
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => (v, None),
            _ => (Value::Null, Some(s.clone())),
        },
        other => (Value::Null, Some(other.to_string())),
    };
    ToolCall {
        call_id,
        name,
        arguments,
        raw_arguments,
    }
}

/// The arguments to send back for an earlier call: providers that need an
/// object get `{}` when the model's JSON was malformed.
pub(crate) fn arguments_object(call: &ToolCall) -> Cow<'_, Value> {
    if call.arguments.is_object() {
        Cow::Borrowed(&call.arguments)
    } else {
        Cow::Owned(json!({}))
    }
}

/// A tool schema with a missing/null `parameters` becomes an empty object schema.
pub(crate) fn parameters(spec: &crate::messages::ToolSpec) -> Cow<'_, Value> {
    if spec.parameters.is_null() {
        Cow::Owned(json!({"type": "object", "properties": {}}))
    } else {
        Cow::Borrowed(&spec.parameters)
    }
}

/// The system messages as one text (providers that take it apart from the
/// conversation); borrowed when there is just one, as usual.
pub(crate) fn system_text<'a>(history: &'a [Cow<'a, Message>]) -> Option<Cow<'a, str>> {
    let mut system = history.iter().filter(|m| m.role == Role::System);
    let first = system.next()?;
    let mut text = Cow::Borrowed(first.content.as_str());
    for m in system {
        let joined = text.to_mut();
        joined.push_str("\n\n");
        joined.push_str(&m.content);
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str) -> ToolCall {
        ToolCall {
            call_id: id.into(),
            name: "bash".into(),
            arguments: json!({}),
            raw_arguments: None,
        }
    }
    fn result(id: &str) -> Message {
        Message::tool(ToolResult {
            call_id: id.into(),
            name: "bash".into(),
            success: true,
            result: "ok".into(),
            error: None,
        })
    }
    fn assistant(calls: Vec<ToolCall>) -> Message {
        Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: calls,
            tool_result: None,
        }
    }

    #[test]
    fn missing_results_are_filled_and_strays_moved_after_the_block() {
        let history = vec![
            Message::user("go"),
            assistant(vec![call("a"), call("b")]),
            result("x"),
            result("a"),
            Message::user("next"),
        ];
        let out = paired(&history);
        let roles: Vec<Role> = out.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::User,
                Role::User
            ]
        );
        assert_eq!(
            out[2].tool_result.as_ref().map(|r| r.call_id.as_str()),
            Some("a")
        );
        let filled = out[3].tool_result.as_ref().expect("filled");
        assert_eq!((filled.call_id.as_str(), filled.success), ("b", false));
        assert!(out[4].content.contains("tool call x"));
    }

    #[test]
    fn trailing_calls_are_answered() {
        let history = [Message::user("go"), assistant(vec![call("a")])];
        let out = paired(&history);
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2].tool_result.as_ref().map(|r| r.error.as_deref()),
            Some(Some(MISSING_RESULT))
        );
    }

    #[test]
    fn malformed_arguments_are_kept_raw() {
        let c = tool_call("1".into(), "bash".into(), &json!("{\"command\": \"ls"));
        assert_eq!(c.arguments, Value::Null);
        assert_eq!(c.raw_arguments.as_deref(), Some("{\"command\": \"ls"));
        let c = tool_call("1".into(), "bash".into(), &json!("[1]"));
        assert_eq!(
            (c.arguments, c.raw_arguments.as_deref()),
            (Value::Null, Some("[1]"))
        );
        let c = tool_call("1".into(), "task_done".into(), &json!(""));
        assert_eq!((c.arguments, c.raw_arguments), (json!({}), None));
        let c = tool_call("1".into(), "bash".into(), &json!("{\"command\": \"ls\"}"));
        assert_eq!(c.arguments, json!({"command": "ls"}));
    }
}
