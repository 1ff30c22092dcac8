//! Anthropic Messages API with tool use.

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use std::borrow::Cow;

use super::history::{self, non_empty_result_text, paired};
use super::http::Endpoint;
use super::{ClientOptions, LlmClient, LlmError, normalise_finish_reason};
use crate::config::{Provider, ResolvedConfig};
use crate::messages::{LlmResponse, Message, Role, ToolSpec, Usage};

pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

pub(crate) struct AnthropicClient {
    cfg: ResolvedConfig,
    endpoint: Endpoint,
}

impl AnthropicClient {
    pub(crate) fn new(cfg: ResolvedConfig, base_url: &str, opts: &ClientOptions) -> Self {
        let base = base_url.trim_end_matches('/');
        // Accept both https://api.anthropic.com and https://api.anthropic.com/v1.
        let url = if base.ends_with("/v1") {
            format!("{base}/messages")
        } else {
            format!("{base}/v1/messages")
        };
        let mut endpoint = opts
            .endpoint(Provider::Anthropic, &cfg, url)
            .with_header("anthropic-version", ANTHROPIC_VERSION);
        if let Some(key) = cfg.api_key.as_ref() {
            endpoint = endpoint.with_secret_header("x-api-key", key.expose());
        }
        AnthropicClient { cfg, endpoint }
    }

    pub(crate) fn request_body(&self, messages: &[Message], tools: &[ToolSpec]) -> Value {
        let history = paired(messages);
        let system: Vec<&str> = history
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let mut body = Map::new();
        body.insert("model".into(), json!(self.cfg.model));
        body.insert("max_tokens".into(), json!(self.cfg.max_tokens));
        if !system.is_empty() {
            body.insert("system".into(), json!(system.join("\n\n")));
        }
        body.insert("messages".into(), Value::Array(wire_messages(&history)));
        if !tools.is_empty() && self.cfg.supports_tool_calling {
            let tools: Vec<Value> = tools
                .iter()
                .map(|t| json!({"name": t.name, "description": t.description, "input_schema": history::parameters(t)}))
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            body.insert(
                "tool_choice".into(),
                json!({"type": "auto", "disable_parallel_tool_use": !self.cfg.parallel_tool_calls}),
            );
        }
        body.insert("temperature".into(), json!(self.cfg.temperature));
        // Recent Claude models refuse temperature and top_p together: send
        // top_p only when it actually narrows sampling.
        if self.cfg.top_p < 1.0 {
            body.insert("top_p".into(), json!(self.cfg.top_p));
        }
        if self.cfg.top_k > 0 {
            body.insert("top_k".into(), json!(self.cfg.top_k));
        }
        if !self.cfg.stop_sequences.is_empty() {
            body.insert("stop_sequences".into(), json!(self.cfg.stop_sequences));
        }
        Value::Object(body)
    }
}

/// User/assistant turns of content blocks. Tool results go in a user turn as
/// `tool_result` blocks; consecutive same-role turns are merged (so several
/// results, and text after them, share one user message).
fn wire_messages(history: &[Cow<'_, Message>]) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in history {
        let (role, blocks) = match m.role {
            Role::System => continue,
            Role::User => ("user", text_block(&m.content)),
            Role::Assistant => {
                let mut blocks = text_block(&m.content);
                blocks.extend(m.tool_calls.iter().map(|c| {
                    json!({"type": "tool_use", "id": c.call_id, "name": c.name, "input": history::arguments_object(c)})
                }));
                ("assistant", blocks)
            }
            Role::Tool => match &m.tool_result {
                Some(r) => (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": r.call_id,
                        "content": non_empty_result_text(r), "is_error": !r.success})],
                ),
                None => ("user", text_block(&m.content)),
            },
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

/// Anthropic rejects empty text blocks.
fn text_block(text: &str) -> Vec<Value> {
    if text.trim().is_empty() {
        vec![]
    } else {
        vec![json!({"type": "text", "text": text})]
    }
}

pub(crate) fn parse_response(fallback_model: &str, v: &Value) -> Result<LlmResponse, LlmError> {
    let Some(blocks) = v.get("content").and_then(Value::as_array) else {
        return Err(LlmError::Decode {
            provider: "anthropic".into(),
            message: "no content in the response".into(),
        });
    };
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                content.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("tool_use") => tool_calls.push(history::tool_call(
                b.get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                b.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                b.get("input").unwrap_or(&Value::Null),
            )),
            _ => {} // thinking and other blocks are not part of the answer text
        }
    }
    let u = v.get("usage").unwrap_or(&Value::Null);
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let usage = Usage {
        input_tokens: n("input_tokens"),
        output_tokens: n("output_tokens"),
        cache_creation_input_tokens: n("cache_creation_input_tokens"),
        cache_read_input_tokens: n("cache_read_input_tokens"),
        reasoning_tokens: 0,
    };
    Ok(LlmResponse {
        content,
        finish_reason: normalise_finish_reason(
            v.get("stop_reason").and_then(Value::as_str),
            !tool_calls.is_empty(),
        ),
        tool_calls,
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or(fallback_model)
            .to_string(),
        usage,
    })
}

#[async_trait]
impl LlmClient for AnthropicClient {
    async fn chat(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<LlmResponse, LlmError> {
        let body = self.request_body(messages, tools);
        let v = self.endpoint.post(&body).await?;
        parse_response(&self.cfg.model, &v)
    }
    fn provider(&self) -> &str {
        Provider::Anthropic.as_str()
    }
    fn model(&self) -> &str {
        &self.cfg.model
    }
}
