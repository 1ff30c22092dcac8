//! Anthropic Messages API with tool use.

use std::borrow::Cow;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::history::{self, non_empty_result_text, paired};
use super::http::{Endpoint, Streamed};
use super::stream::{AnthropicStream, TextSink, step_error};
use super::wire::{BodyEncoder, RenderedTools, merged_turns};
use super::{ClientOptions, LlmClient, LlmError, normalise_finish_reason};
use crate::config::{Provider, ResolvedConfig};
use crate::messages::{Conversation, LlmResponse, Message, Role, ToolSpec, ToolSpecs, Usage};

pub(crate) const ANTHROPIC_VERSION: &str = "2023-06-01";

pub(crate) struct AnthropicClient {
    cfg: ResolvedConfig,
    endpoint: Endpoint,
    tools: RenderedTools,
    body: BodyEncoder,
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
        AnthropicClient {
            cfg,
            endpoint,
            tools: RenderedTools::default(),
            body: BodyEncoder::default(),
        }
    }

    /// The request for one turn, as JSON bytes.
    pub(crate) fn request_body(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> serde_json::Result<Vec<u8>> {
        self.encode(messages, tools, false)
    }

    fn encode(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        stream: bool,
    ) -> serde_json::Result<Vec<u8>> {
        let cfg = &self.cfg;
        let history = paired(messages);
        let tools = self
            .tools
            .offered(tools, None, cfg.supports_tool_calling, render_tools)?;
        self.body.encode(&MessagesRequest {
            model: &cfg.model,
            max_tokens: cfg.max_tokens,
            system: history::system_text(&history),
            messages: wire_messages(&history),
            tools: tools.as_deref(),
            tool_choice: tools.as_ref().map(|_| ToolChoice {
                kind: "auto",
                disable_parallel_tool_use: !cfg.parallel_tool_calls,
            }),
            temperature: cfg.temperature,
            // Recent Claude models refuse temperature and top_p together:
            // send top_p only when it actually narrows sampling.
            top_p: (cfg.top_p < 1.0).then_some(cfg.top_p),
            top_k: (cfg.top_k > 0).then_some(cfg.top_k),
            stop_sequences: &cfg.stop_sequences,
            stream,
        })
    }
}

/// A Messages API request, borrowing the history and the configuration.
/// Fields are sent in this order; unset ones are left out.
#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Cow<'a, str>>,
    messages: Vec<WireTurn<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice>,
    temperature: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
}

#[derive(Serialize)]
struct ToolChoice {
    #[serde(rename = "type")]
    kind: &'static str,
    disable_parallel_tool_use: bool,
}

/// `{"role": "user"|"assistant", "content": [blocks]}`: consecutive
/// messages of one role share a turn (see [`merged_turns`]).
#[derive(Serialize)]
struct WireTurn<'a> {
    role: &'static str,
    content: Vec<Block<'a>>,
}

/// A content block: `{"type": "text"|"tool_use"|"tool_result", …}`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Cow<'a, Value>,
    },
    ToolResult {
        tool_use_id: &'a str,
        content: Cow<'a, str>,
        is_error: bool,
    },
}

/// User/assistant turns of content blocks. Tool results go in a user turn
/// as `tool_result` blocks; system text is sent apart.
fn wire_messages<'a>(history: &'a [Cow<'a, Message>]) -> Vec<WireTurn<'a>> {
    let turns = merged_turns(history, |m, blocks| match m.role {
        Role::System => None,
        Role::User => {
            text_block(&m.content, blocks);
            Some("user")
        }
        Role::Assistant => {
            text_block(&m.content, blocks);
            blocks.extend(m.tool_calls.iter().map(|c| Block::ToolUse {
                id: &c.call_id,
                name: &c.name,
                input: history::arguments_object(c),
            }));
            Some("assistant")
        }
        Role::Tool => {
            match &m.tool_result {
                Some(r) => blocks.push(Block::ToolResult {
                    tool_use_id: &r.call_id,
                    content: non_empty_result_text(r),
                    is_error: !r.success,
                }),
                None => text_block(&m.content, blocks),
            }
            Some("user")
        }
    });
    turns
        .into_iter()
        .map(|t| WireTurn {
            role: t.role,
            content: t.parts,
        })
        .collect()
}

/// Anthropic rejects empty text blocks.
fn text_block<'a>(text: &'a str, blocks: &mut Vec<Block<'a>>) {
    if !text.trim().is_empty() {
        blocks.push(Block::Text { text });
    }
}

/// The `tools` of a request (rendered once per tool set).
fn render_tools(tools: &[ToolSpec]) -> serde_json::Result<Box<RawValue>> {
    #[derive(Serialize)]
    struct Tool<'a> {
        name: &'a str,
        description: &'a str,
        input_schema: Cow<'a, Value>,
    }
    let tools: Vec<_> = tools
        .iter()
        .map(|t| Tool {
            name: &t.name,
            description: &t.description,
            input_schema: history::parameters(t),
        })
        .collect();
    serde_json::value::to_raw_value(&tools)
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
        deadline: Option<Instant>,
    ) -> Result<LlmResponse, LlmError> {
        let body = self
            .request_body(messages, tools)
            .map_err(|e| self.endpoint.encode_error(e))?;
        let answer = self.endpoint.post(body, deadline).await?;
        let v: Value = self.endpoint.decode(&answer)?;
        parse_response(&self.cfg.model, &v)
    }
    async fn chat_streamed(
        &self,
        messages: &Conversation,
        tools: &ToolSpecs,
        deadline: Option<Instant>,
        text: TextSink<'_>,
    ) -> Result<LlmResponse, LlmError> {
        if !self.cfg.stream {
            return self.chat(messages, tools, deadline).await;
        }
        let body = self
            .encode(messages, tools, true)
            .map_err(|e| self.endpoint.encode_error(e))?;
        let mut stream = AnthropicStream::default();
        let answer = self
            .endpoint
            .post_stream(body, deadline, &mut |event| {
                if let Some(t) = step_error(&self.endpoint, stream.push(&event))? {
                    text(&t);
                }
                Ok(())
            })
            .await?;
        let v = match answer {
            Streamed::Events => stream.into_response(),
            Streamed::Body(body) => self.endpoint.decode(&body)?,
        };
        parse_response(&self.cfg.model, &v)
    }
    fn provider(&self) -> &str {
        Provider::Anthropic.as_str()
    }
    fn model(&self) -> &str {
        &self.cfg.model
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::llm::history::MISSING_RESULT;
    use crate::llm::wire::fixtures::{bash_tool, config, conversation};

    #[test]
    fn request_body_is_messages_json_in_order() {
        let client = AnthropicClient::new(
            config(Provider::Anthropic, "claude-x"),
            "http://127.0.0.1:1",
            &ClientOptions::default(),
        );
        let body = client
            .request_body(&conversation("call_3"), &[bash_tool()])
            .unwrap();
        let tool_use =
            |id: &str, input| json!({"type": "tool_use", "id": id, "name": "bash", "input": input});
        let result = |id: &str, content: &str, is_error| json!({"type": "tool_result", "tool_use_id": id, "content": content, "is_error": is_error});
        let expected = json!({
            "model": "claude-x",
            "max_tokens": 100,
            "system": "You are a coder.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "List files"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Looking."},
                    tool_use("call_1", json!({"command": "ls"})), tool_use("call_2", json!({}))]},
                {"role": "user", "content": [result("call_1", "a.txt", false),
                    result("call_2", "exit 1", true), {"type": "text", "text": "Go on"}]},
                {"role": "assistant", "content": [tool_use("call_3", json!({"command": "pwd"}))]},
                {"role": "user", "content": [result("call_3", MISSING_RESULT, true)]},
            ],
            "tools": [{"name": "bash", "description": "Run a command",
                "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "temperature": 0.5,
        });
        // Byte for byte: key order included.
        assert_eq!(String::from_utf8(body).unwrap(), expected.to_string());
    }
}
