//! Streamed answers put back together. Each provider's stream is assembled
//! into the JSON its non-streamed answer would have been, and that is read
//! by the provider's one parser: a streamed turn cannot come out different
//! from the same turn unstreamed. The text is handed out as it arrives.

use serde_json::{Map, Value, json};

use super::LlmError;
use super::sse::SseEvent;

/// Receives the model's text as it arrives (the agent publishes it).
pub type TextSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// What one stream event says: text for the reader, or the provider's error.
type Step = Result<Option<String>, String>;

fn parse(event: &SseEvent) -> Result<Value, String> {
    serde_json::from_str(&event.data).map_err(|e| format!("invalid JSON in the stream ({e})"))
}

fn text_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// OpenAI Chat Completions chunks (`stream_options.include_usage` for the
/// usage chunk); tool calls arrive in pieces keyed by `index`.
#[derive(Debug, Default)]
pub(crate) struct OpenAiStream {
    id: Option<Value>,
    model: Option<Value>,
    content: String,
    /// index → (id, name, arguments so far)
    calls: Vec<(usize, String, String, String)>,
    finish_reason: Option<Value>,
    usage: Option<Value>,
}

impl OpenAiStream {
    pub(crate) fn push(&mut self, event: &SseEvent) -> Step {
        if event.data.trim() == "[DONE]" {
            return Ok(None);
        }
        let v = parse(event)?;
        if v.get("error").is_some() {
            return Err(event.data.clone());
        }
        for (key, slot) in [("id", &mut self.id), ("model", &mut self.model)] {
            if slot.is_none() && v.get(key).is_some() {
                *slot = v.get(key).cloned();
            }
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return Ok(None);
        };
        if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
            self.finish_reason = Some(reason.clone());
        }
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            let pos = match self.calls.iter().position(|c| c.0 == index) {
                Some(pos) => pos,
                None => {
                    self.calls
                        .push((index, String::new(), String::new(), String::new()));
                    self.calls.len() - 1
                }
            };
            let entry = &mut self.calls[pos];
            let f = call.get("function").unwrap_or(&Value::Null);
            entry.1.push_str(&text_of(call, "id"));
            entry.2.push_str(&text_of(f, "name"));
            entry.3.push_str(&text_of(f, "arguments"));
        }
        let text = text_of(delta, "content");
        self.content.push_str(&text);
        Ok((!text.is_empty()).then_some(text))
    }

    /// The non-streamed response this stream amounts to.
    pub(crate) fn into_response(mut self) -> Value {
        self.calls.sort_by_key(|c| c.0);
        let mut message = json!({
            "role": "assistant",
            "content": (!self.content.is_empty()).then_some(&self.content),
        });
        if !self.calls.is_empty() {
            message["tool_calls"] = self
                .calls
                .iter()
                .map(|(_, id, name, args)| {
                    json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
                })
                .collect();
        }
        json!({
            "id": self.id, "object": "chat.completion", "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
            "usage": self.usage,
        })
    }
}

/// Anthropic Messages events: `message_start`, content blocks started,
/// extended by deltas (text, tool input JSON, thinking) and stopped, then
/// `message_delta` with the stop reason and output usage.
#[derive(Debug, Default)]
pub(crate) struct AnthropicStream {
    message: Map<String, Value>,
    blocks: Vec<Value>,
    /// Tool input JSON text per block, parsed when the block stops.
    inputs: Vec<String>,
}

impl AnthropicStream {
    pub(crate) fn push(&mut self, event: &SseEvent) -> Step {
        let v = parse(event)?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.event);
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match kind {
            "message_start" => {
                if let Some(Value::Object(m)) = v.get("message") {
                    self.message = m.clone();
                }
            }
            "content_block_start" => {
                while self.blocks.len() <= index {
                    self.blocks.push(Value::Null);
                    self.inputs.push(String::new());
                }
                self.blocks[index] = v.get("content_block").cloned().unwrap_or(Value::Null);
            }
            "content_block_delta" => {
                let Some(block) = self.blocks.get_mut(index) else {
                    return Ok(None);
                };
                let delta = v.get("delta").unwrap_or(&Value::Null);
                let append = |block: &mut Value, key: &str, more: &str| {
                    let old = text_of(block, key);
                    block[key] = Value::String(old + more);
                };
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = text_of(delta, "text");
                        append(block, "text", &text);
                        return Ok((!text.is_empty()).then_some(text));
                    }
                    Some("input_json_delta") => {
                        self.inputs[index].push_str(&text_of(delta, "partial_json"))
                    }
                    Some("thinking_delta") => {
                        append(block, "thinking", &text_of(delta, "thinking"))
                    }
                    Some("signature_delta") => {
                        block["signature"] = Value::String(text_of(delta, "signature"))
                    }
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let (Some(block), Some(input)) =
                    (self.blocks.get_mut(index), self.inputs.get(index))
                    && !input.is_empty()
                {
                    // Malformed JSON stays text, as the parser expects of it.
                    block["input"] = serde_json::from_str(input)
                        .unwrap_or_else(|_| Value::String(input.clone()));
                }
            }
            "message_delta" => {
                if let Some(Value::Object(delta)) = v.get("delta") {
                    for (k, val) in delta {
                        self.message.insert(k.clone(), val.clone());
                    }
                }
                if let Some(Value::Object(usage)) = v.get("usage") {
                    let total = self
                        .message
                        .entry("usage")
                        .or_insert_with(|| Value::Object(Map::new()));
                    for (k, val) in usage {
                        if !val.is_null() {
                            total[k] = val.clone();
                        }
                    }
                }
            }
            "error" => return Err(event.data.clone()),
            _ => {} // ping, message_stop
        }
        Ok(None)
    }

    pub(crate) fn into_response(mut self) -> Value {
        let blocks: Vec<Value> = self.blocks.into_iter().filter(|b| !b.is_null()).collect();
        self.message.insert("content".into(), Value::Array(blocks));
        Value::Object(self.message)
    }
}

/// Gemini `streamGenerateContent?alt=sse`: each event a partial response;
/// parts accumulate, usage and finish reason are the last ones sent.
#[derive(Debug, Default)]
pub(crate) struct GeminiStream {
    parts: Vec<Value>,
    finish_reason: Option<Value>,
    usage: Option<Value>,
    model_version: Option<Value>,
    prompt_feedback: Option<Value>,
}

impl GeminiStream {
    pub(crate) fn push(&mut self, event: &SseEvent) -> Step {
        let v = parse(event)?;
        if v.get("error").is_some() {
            return Err(event.data.clone());
        }
        for (key, slot) in [
            ("usageMetadata", &mut self.usage),
            ("modelVersion", &mut self.model_version),
            ("promptFeedback", &mut self.prompt_feedback),
        ] {
            if let Some(val) = v.get(key) {
                *slot = Some(val.clone());
            }
        }
        let Some(candidate) = v.pointer("/candidates/0") else {
            return Ok(None);
        };
        if let Some(reason) = candidate.get("finishReason") {
            self.finish_reason = Some(reason.clone());
        }
        let mut text = String::new();
        for part in candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if part.get("functionCall").is_none()
                && part.get("thought").and_then(Value::as_bool) != Some(true)
            {
                text.push_str(&text_of(part, "text"));
            }
            self.parts.push(part.clone());
        }
        Ok((!text.is_empty()).then_some(text))
    }

    pub(crate) fn into_response(self) -> Value {
        let mut v = json!({
            "candidates": [{"content": {"role": "model", "parts": self.parts},
                            "finishReason": self.finish_reason}],
        });
        for (key, val) in [
            ("usageMetadata", self.usage),
            ("modelVersion", self.model_version),
            ("promptFeedback", self.prompt_feedback),
        ] {
            if let Some(val) = val {
                v[key] = val;
            }
        }
        if self.parts.is_empty() && v.get("promptFeedback").is_some() {
            v["candidates"] = json!([]);
        }
        v
    }
}

/// Turns a stream step's provider error into the call's error.
pub(crate) fn step_error(
    endpoint: &super::http::Endpoint,
    step: Step,
) -> Result<Option<String>, LlmError> {
    step.map_err(|data| endpoint.stream_error(&data))
}
