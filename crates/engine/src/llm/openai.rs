//! OpenAI-compatible Chat Completions: openai, azure, openrouter, doubao and
//! ollama, all reached through the configured `base_url`.
//!
//! Chat Completions rather than OpenAI's Responses API (which Trae uses for
//! `openai`) because every compatible provider speaks it.

use std::borrow::Cow;

use async_trait::async_trait;
use serde::{Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::history::{self, paired, result_text};
use super::http::{Endpoint, Streamed};
use super::stream::{OpenAiStream, TextSink, step_error};
use super::wire::{self, BodyEncoder, EncodedHistory, RenderedTools};
use super::{ClientOptions, LlmClient, LlmError, normalise_finish_reason};
use crate::config::{Provider, ResolvedConfig};
use crate::messages::{
    Conversation, LlmResponse, Message, Role, Stamp, ToolCall, ToolSpec, ToolSpecs, Usage,
};

/// Azure API version used when the config names none (the 2024 GA version).
pub(crate) const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

pub(crate) struct OpenAiClient {
    kind: Provider,
    cfg: ResolvedConfig,
    /// `base_url` is OpenAI's own API (api.openai.com).
    official_api: bool,
    endpoint: Endpoint,
    tools: RenderedTools,
    body: BodyEncoder,
    history: EncodedHistory,
}

impl OpenAiClient {
    pub(crate) fn new(
        kind: Provider,
        cfg: ResolvedConfig,
        base_url: &str,
        opts: &ClientOptions,
    ) -> Self {
        let base = base_url.trim_end_matches('/');
        let url = match kind {
            Provider::Azure => {
                let version = cfg
                    .api_version
                    .as_deref()
                    .unwrap_or(AZURE_DEFAULT_API_VERSION);
                // base_url is the resource (https://x.openai.azure.com) or already a deployment URL.
                let deployment = if base.contains("/deployments/") {
                    base.to_string()
                } else {
                    format!("{base}/openai/deployments/{}", cfg.model)
                };
                format!("{deployment}/chat/completions?api-version={version}")
            }
            // Ollama's OpenAI-compatible API lives under /v1; accept the bare server URL too.
            Provider::Ollama if !base.ends_with("/v1") => format!("{base}/v1/chat/completions"),
            _ => format!("{base}/chat/completions"),
        };
        let mut endpoint = opts.endpoint(kind, &cfg, url);
        if let Some(key) = cfg.api_key.as_ref() {
            endpoint = match kind {
                Provider::Azure => endpoint.with_secret_header("api-key", key.expose()),
                _ => endpoint
                    .with_secret_header("authorization", &format!("Bearer {}", key.expose())),
            };
            // Keep the bare key for scrubbing too, not only "Bearer <key>".
            endpoint.secret = Some(key.expose().to_string());
        }
        if kind == Provider::OpenRouter {
            endpoint = endpoint.with_header("x-title", "agentd");
        }
        OpenAiClient {
            kind,
            official_api: host(base).is_some_and(|h| h.eq_ignore_ascii_case("api.openai.com")),
            cfg,
            endpoint,
            tools: RenderedTools::default(),
            body: BodyEncoder::default(),
            history: EncodedHistory::default(),
        }
    }

    /// o-series and gpt-5 reasoning models reject `temperature`/`top_p` and `max_tokens`.
    fn is_reasoning_model(&self) -> bool {
        let m = self
            .cfg
            .model
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        ["o1", "o3", "o4", "gpt-5"].iter().any(|p| m.starts_with(p))
    }

    /// The output token limit as `(max_completion_tokens, max_tokens)`,
    /// one of them set. OpenAI's API and OpenAI/Azure reasoning models take
    /// `max_completion_tokens` (reasoning models reject `max_tokens`); other
    /// OpenAI-compatible servers (llama.cpp, vLLM, LM Studio, …) ignore it,
    /// so they get `max_tokens` unless the model config asks for the former.
    fn token_limit(&self) -> (Option<u32>, Option<u32>) {
        let cfg = &self.cfg;
        if let Some(n) = cfg.max_completion_tokens {
            return (Some(n), None);
        }
        let openai_api = self.kind == Provider::OpenAi && self.official_api;
        let reasoning =
            matches!(self.kind, Provider::OpenAi | Provider::Azure) && self.is_reasoning_model();
        if openai_api || reasoning {
            (Some(cfg.max_tokens), None)
        } else {
            (None, Some(cfg.max_tokens))
        }
    }

    /// The request for one turn, as JSON bytes.
    pub(crate) fn request_body(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> serde_json::Result<Vec<u8>> {
        self.encode(messages, tools, None, false)
    }

    /// With `stamps` (the conversation's and the tools'), the messages and
    /// tools seen last time are taken as they were encoded then without
    /// comparing them.
    fn encode(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        stamps: Option<Stamps>,
        stream: bool,
    ) -> serde_json::Result<Vec<u8>> {
        let cfg = &self.cfg;
        let history = paired(messages);
        let tools = self.tools.offered(
            tools,
            stamps.map(|s| s.tools),
            cfg.supports_tool_calling,
            render_tools,
        )?;
        // Only OpenAI and the gateways in front of it take this flag.
        let takes_parallel = matches!(
            self.kind,
            Provider::OpenAi | Provider::Azure | Provider::OpenRouter
        );
        let reasoning = self.is_reasoning_model();
        let (max_completion_tokens, max_tokens) = self.token_limit();
        let rest = ChatOptions {
            parallel_tool_calls: (tools.is_some() && takes_parallel)
                .then_some(cfg.parallel_tool_calls),
            tools: tools.as_deref(),
            temperature: (!reasoning).then_some(cfg.temperature),
            top_p: (!reasoning).then_some(cfg.top_p),
            max_completion_tokens,
            max_tokens,
            top_k: (self.kind == Provider::OpenRouter && cfg.top_k > 0).then_some(cfg.top_k),
            stop: &cfg.stop_sequences,
            stream,
            // Without it the stream carries no usage.
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        };
        let messages = |out: &mut Vec<u8>| {
            let stamp = stamps.map(|s| s.messages);
            self.history
                .write_array(messages, stamp, &history, out, |m, buf| {
                    serde_json::to_writer(buf, &ChatMessage::new(m))
                })
        };
        wire::write_body(&self.body, &cfg.model, messages, &rest)
    }

    /// Sends a request that is not streamed and reads its answer.
    async fn answer(
        &self,
        body: Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<LlmResponse, LlmError> {
        let answer = self.endpoint.post(body, deadline).await?;
        let v: Value = self.endpoint.decode(&answer)?;
        parse_response(self.kind.as_str(), &self.cfg.model, &v)
    }
}

/// What a request is made of, as stamped by the agent (see [`Stamp`]).
#[derive(Clone, Copy)]
struct Stamps {
    messages: Stamp,
    tools: Stamp,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A Chat Completions request's fields after `model` and `messages` (see
/// [`wire::write_body`]), borrowing the configuration. Fields are sent in
/// this order; unset ones are left out.
#[derive(Serialize)]
struct ChatOptions<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    /// Not for reasoning models, which reject sampling parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    /// OpenAI's API and reasoning models take this rather than `max_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

/// One message: `{"role", "content"}`, plus `tool_calls` for an assistant
/// turn that calls tools and `tool_call_id` (before the content) for a result.
#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    /// `null` for an assistant turn that only calls tools.
    content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "ChatToolCalls::is_empty")]
    tool_calls: ChatToolCalls<'a>,
}

impl<'a> ChatMessage<'a> {
    fn new(m: &'a Message) -> Self {
        let text = |role| ChatMessage {
            role,
            tool_call_id: None,
            content: Some(Cow::Borrowed(&m.content)),
            tool_calls: ChatToolCalls(&[]),
        };
        match (m.role, &m.tool_result) {
            (Role::System, _) => text("system"),
            (Role::User, _) | (Role::Tool, None) => text("user"),
            (Role::Assistant, _) => {
                let calls_only = m.content.is_empty() && !m.tool_calls.is_empty();
                ChatMessage {
                    content: (!calls_only).then_some(Cow::Borrowed(&m.content)),
                    tool_calls: ChatToolCalls(&m.tool_calls),
                    ..text("assistant")
                }
            }
            (Role::Tool, Some(r)) => ChatMessage {
                tool_call_id: Some(&r.call_id),
                content: Some(result_text(r)),
                ..text("tool")
            },
        }
    }
}

/// An assistant turn's calls:
/// `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
struct ChatToolCalls<'a>(&'a [ToolCall]);

impl ChatToolCalls<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for ChatToolCalls<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|c| Function {
            id: Some(&c.call_id),
            kind: "function",
            function: FunctionCall {
                name: &c.name,
                // Echo malformed arguments verbatim: it is what the model said.
                arguments: match &c.raw_arguments {
                    Some(raw) => Cow::Borrowed(raw),
                    // As `to_string()` would, without its `fmt` detour.
                    None => Cow::Owned(serde_json::to_string(&c.arguments).unwrap_or_default()),
                },
            },
        }))
    }
}

/// `{"id"?, "type": "function", "function": …}`: a call in the history, or
/// (without an id) a tool on offer.
#[derive(Serialize)]
struct Function<'a, F> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: F,
}

#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    /// The arguments object as a JSON string.
    arguments: Cow<'a, str>,
}

#[derive(Serialize)]
struct FunctionSpec<'a> {
    name: &'a str,
    description: &'a str,
    parameters: Cow<'a, Value>,
}

/// The `tools` of a request (rendered once per tool set).
fn render_tools(tools: &[ToolSpec]) -> serde_json::Result<Box<RawValue>> {
    let tools: Vec<_> = tools
        .iter()
        .map(|t| Function {
            id: None,
            kind: "function",
            function: FunctionSpec {
                name: &t.name,
                description: &t.description,
                parameters: history::parameters(t),
            },
        })
        .collect();
    serde_json::value::to_raw_value(&tools)
}

/// The host name of a URL (`https://user@Host:443/path` → `Host`).
fn host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?.split(':').next()?;
    (!host.is_empty()).then_some(host)
}

pub(crate) fn parse_response(
    provider: &str,
    fallback_model: &str,
    v: &Value,
) -> Result<LlmResponse, LlmError> {
    let decode = |message: String| LlmError::Decode {
        provider: provider.to_string(),
        message,
    };
    let Some(choice) = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        // Some gateways (OpenRouter) answer 200 with an error object.
        let why = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("no choices in the response");
        return Err(decode(why.to_string()));
    };
    let message = choice.get("message").unwrap_or(&Value::Null);
    let content = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        // Some compatible servers send content parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    let tool_calls = message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let f = c.get("function").unwrap_or(&Value::Null);
                    let id = c
                        .get("id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty());
                    history::tool_call(
                        id.map_or_else(|| format!("call_{i}"), str::to_string),
                        f.get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        f.get("arguments").unwrap_or(&Value::Null),
                    )
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let u = v.get("usage").unwrap_or(&Value::Null);
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let usage = Usage {
        input_tokens: n("/prompt_tokens"),
        output_tokens: n("/completion_tokens"),
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: n("/prompt_tokens_details/cached_tokens"),
        reasoning_tokens: n("/completion_tokens_details/reasoning_tokens"),
    };
    let raw_finish = choice.get("finish_reason").and_then(Value::as_str);
    Ok(LlmResponse {
        content,
        finish_reason: normalise_finish_reason(raw_finish, !tool_calls.is_empty()),
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
impl LlmClient for OpenAiClient {
    async fn chat(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        deadline: Option<Instant>,
    ) -> Result<LlmResponse, LlmError> {
        let body = self
            .request_body(messages, tools)
            .map_err(|e| self.endpoint.encode_error(e))?;
        self.answer(body, deadline).await
    }
    async fn chat_streamed(
        &self,
        messages: &Conversation,
        tools: &ToolSpecs,
        deadline: Option<Instant>,
        text: TextSink<'_>,
    ) -> Result<LlmResponse, LlmError> {
        let stamps = Stamps {
            messages: messages.stamp(),
            tools: tools.stamp(),
        };
        let body = self
            .encode(messages, tools, Some(stamps), self.cfg.stream)
            .map_err(|e| self.endpoint.encode_error(e))?;
        if !self.cfg.stream {
            return self.answer(body, deadline).await;
        }
        let mut stream = OpenAiStream::default();
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
        parse_response(self.kind.as_str(), &self.cfg.model, &v)
    }
    fn provider(&self) -> &str {
        self.kind.as_str()
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
    fn request_body_is_chat_completions_json_in_order() {
        let client = OpenAiClient::new(
            Provider::OpenAi,
            config(Provider::OpenAi, "gpt-4o"),
            "http://127.0.0.1:1/v1",
            &ClientOptions::default(),
        );
        let body = client
            .request_body(&conversation("call_3"), &[bash_tool()])
            .unwrap();
        let call = |id: &str, arguments: &str| json!({"id": id, "type": "function", "function": {"name": "bash", "arguments": arguments}});
        let expected = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are a coder."},
                {"role": "user", "content": "List files"},
                {"role": "assistant", "content": "Looking.",
                 "tool_calls": [call("call_1", r#"{"command":"ls"}"#), call("call_2", "{bad")]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
                {"role": "tool", "tool_call_id": "call_2", "content": "exit 1"},
                {"role": "user", "content": "Go on"},
                {"role": "assistant", "content": null,
                 "tool_calls": [call("call_3", r#"{"command":"pwd"}"#)]},
                {"role": "tool", "tool_call_id": "call_3", "content": MISSING_RESULT},
            ],
            "tools": [{"type": "function", "function": {"name": "bash", "description": "Run a command",
                "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}],
            "parallel_tool_calls": false,
            "temperature": 0.5,
            "top_p": 1.0,
            "max_tokens": 100,
        });
        // Byte for byte: key order included.
        assert_eq!(String::from_utf8(body).unwrap(), expected.to_string());

        // A second call (tools from the cache) is the same.
        let again = client
            .request_body(&conversation("call_3"), &[bash_tool()])
            .unwrap();
        assert_eq!(String::from_utf8(again).unwrap(), expected.to_string());

        // OpenAI's own API: the same bytes, the limit as `max_completion_tokens`.
        let official = OpenAiClient::new(
            Provider::OpenAi,
            config(Provider::OpenAi, "gpt-4o"),
            "https://api.openai.com/v1",
            &ClientOptions::default(),
        );
        let body = official
            .request_body(&conversation("call_3"), &[bash_tool()])
            .unwrap();
        let expected = expected
            .to_string()
            .replace(r#""max_tokens":100"#, r#""max_completion_tokens":100"#);
        assert_eq!(String::from_utf8(body).unwrap(), expected);
    }

    #[test]
    fn bodies_of_a_changing_history_are_what_a_new_client_sends() {
        let new_client = || {
            OpenAiClient::new(
                Provider::OpenAi,
                config(Provider::OpenAi, "gpt-4o"),
                "http://127.0.0.1:1/v1",
                &ClientOptions::default(),
            )
        };
        // One client sent the conversation with its stamp, one without.
        let (stamped, unstamped) = (new_client(), new_client());
        let mut history = Conversation::new(conversation("call_3"));
        let tools = ToolSpecs::new(vec![bash_tool()]);
        let check = |history: &Conversation, stream| {
            let fresh = new_client().encode(history, &tools, None, stream).unwrap();
            let fresh = String::from_utf8(fresh).unwrap();
            let stamps = Stamps {
                messages: history.stamp(),
                tools: tools.stamp(),
            };
            let body = stamped
                .encode(history, &tools, Some(stamps), stream)
                .unwrap();
            assert_eq!(String::from_utf8(body).unwrap(), fresh);
            let body = unstamped.encode(history, &tools, None, stream).unwrap();
            assert_eq!(String::from_utf8(body).unwrap(), fresh);
        };
        // The last call unanswered (a result is made up for it), then answered.
        check(&history, false);
        history.push(Message::tool(crate::messages::ToolResult {
            call_id: "call_3".into(),
            name: "bash".into(),
            success: true,
            result: "/work".into(),
            error: None,
        }));
        check(&history, true);
        history.push(Message::user("Go on"));
        check(&history, false);
        // A step undone, and another one in its place.
        let stamp = history.stamp();
        history.truncate(5);
        assert_ne!(
            history.stamp(),
            stamp,
            "a cut-back conversation is a new one"
        );
        check(&history, false);
        history.push(Message::user("Something else"));
        check(&history, false);
        // Another conversation with the same messages but the last.
        let mut other = Conversation::new(history[..history.len() - 1].to_vec());
        other.push(Message::user("Something other"));
        check(&other, false);
    }

    /// `(max_completion_tokens, max_tokens)` as sent to `base_url`.
    fn token_fields(kind: Provider, cfg: ResolvedConfig, base_url: &str) -> (Value, Value) {
        let client = OpenAiClient::new(kind, cfg, base_url, &ClientOptions::default());
        let body = client.request_body(&[Message::user("hi")], &[]).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        (v["max_completion_tokens"].clone(), v["max_tokens"].clone())
    }

    #[test]
    fn token_limit_field_follows_the_endpoint() {
        let local = "http://127.0.0.1:8080/v1";
        let cfg = |kind, model| config(kind, model);
        let completion = (json!(100), Value::Null);
        let plain = (Value::Null, json!(100));
        // OpenAI's API, also when spelt with a port or in capitals, or by default.
        for url in [
            "https://api.openai.com/v1",
            "https://API.OpenAI.com:443/v1/",
        ] {
            assert_eq!(
                token_fields(Provider::OpenAi, cfg(Provider::OpenAi, "gpt-4o"), url),
                completion,
                "{url}"
            );
        }
        let default_url = Provider::OpenAi.default_base_url().unwrap();
        assert_eq!(
            token_fields(
                Provider::OpenAi,
                cfg(Provider::OpenAi, "gpt-4o"),
                default_url
            ),
            completion
        );
        // OpenAI-compatible servers behind `provider: openai` get `max_tokens`.
        for url in [local, "https://api.openai.com.example.test/v1"] {
            assert_eq!(
                token_fields(Provider::OpenAi, cfg(Provider::OpenAi, "qwen3"), url),
                plain,
                "{url}"
            );
        }
        // Reasoning models on OpenAI and Azure take only `max_completion_tokens`.
        assert_eq!(
            token_fields(Provider::OpenAi, cfg(Provider::OpenAi, "o3-mini"), local),
            completion
        );
        let azure = "https://x.openai.azure.com";
        assert_eq!(
            token_fields(Provider::Azure, cfg(Provider::Azure, "gpt-5"), azure),
            completion
        );
        assert_eq!(
            token_fields(Provider::Azure, cfg(Provider::Azure, "gpt-4o"), azure),
            plain
        );
        // Gateways and local servers normalise `max_tokens` themselves.
        assert_eq!(
            token_fields(
                Provider::OpenRouter,
                cfg(Provider::OpenRouter, "openai/o3"),
                "https://openrouter.ai/api/v1"
            ),
            plain
        );
        assert_eq!(
            token_fields(Provider::Ollama, cfg(Provider::Ollama, "qwen3"), local),
            plain
        );
    }

    #[test]
    fn explicit_max_completion_tokens_is_sent_as_such() {
        for (kind, url) in [
            (Provider::OpenAi, "http://127.0.0.1:8080/v1"),
            (Provider::OpenAi, "https://api.openai.com/v1"),
            (Provider::Ollama, "http://127.0.0.1:11434/v1"),
        ] {
            let mut c = config(kind, "my-model");
            c.max_completion_tokens = Some(2048);
            assert_eq!(
                token_fields(kind, c, url),
                (json!(2048), Value::Null),
                "{kind} {url}"
            );
        }
    }

    #[test]
    fn hosts_are_read_from_urls() {
        assert_eq!(host("https://api.openai.com/v1"), Some("api.openai.com"));
        assert_eq!(
            host("http://u:p@Example.test:8080/x?y"),
            Some("Example.test")
        );
        assert_eq!(host("api.openai.com"), Some("api.openai.com"));
        assert_eq!(host("http:///v1"), None);
    }
}
