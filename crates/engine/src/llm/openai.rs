//! OpenAI-compatible Chat Completions: openai, azure, openrouter, doubao and
//! ollama, all reached through the configured `base_url`.
//!
//! Chat Completions rather than OpenAI's Responses API (which Trae uses for
//! `openai`) because every compatible provider speaks it.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::history::{self, paired, result_text};
use super::http::Endpoint;
use super::{ClientOptions, LlmClient, LlmError, normalise_finish_reason};
use crate::config::{Provider, ResolvedConfig};
use crate::messages::{LlmResponse, Message, Role, ToolSpec, Usage};

/// Azure API version used when the config names none (the 2024 GA version).
pub(crate) const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

pub(crate) struct OpenAiClient {
    kind: Provider,
    cfg: ResolvedConfig,
    endpoint: Endpoint,
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
            cfg,
            endpoint,
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

    pub(crate) fn request_body(&self, messages: &[Message], tools: &[ToolSpec]) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), json!(self.cfg.model));
        body.insert(
            "messages".into(),
            Value::Array(paired(messages).iter().map(|m| wire_message(m)).collect()),
        );
        if !tools.is_empty() && self.cfg.supports_tool_calling {
            let tools: Vec<Value> = tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": history::parameters(t)}})
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
            if matches!(
                self.kind,
                Provider::OpenAi | Provider::Azure | Provider::OpenRouter
            ) {
                body.insert(
                    "parallel_tool_calls".into(),
                    json!(self.cfg.parallel_tool_calls),
                );
            }
        }
        let reasoning = self.is_reasoning_model();
        if !reasoning {
            body.insert("temperature".into(), json!(self.cfg.temperature));
            body.insert("top_p".into(), json!(self.cfg.top_p));
        }
        if self.kind == Provider::OpenAi || reasoning {
            let n = self
                .cfg
                .max_completion_tokens
                .unwrap_or(self.cfg.max_tokens);
            body.insert("max_completion_tokens".into(), json!(n));
        } else {
            body.insert("max_tokens".into(), json!(self.cfg.max_tokens));
        }
        if self.kind == Provider::OpenRouter && self.cfg.top_k > 0 {
            body.insert("top_k".into(), json!(self.cfg.top_k));
        }
        if !self.cfg.stop_sequences.is_empty() {
            body.insert("stop".into(), json!(self.cfg.stop_sequences));
        }
        Value::Object(body)
    }
}

fn wire_message(m: &Message) -> Value {
    match m.role {
        Role::System => json!({"role": "system", "content": m.content}),
        Role::User => json!({"role": "user", "content": m.content}),
        Role::Assistant => {
            let mut out = json!({"role": "assistant", "content": m.content});
            if !m.tool_calls.is_empty() {
                if m.content.is_empty() {
                    out["content"] = Value::Null;
                }
                out["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        // Echo malformed arguments verbatim: it is what the model said.
                        let args = c.raw_arguments.clone().unwrap_or_else(|| c.arguments.to_string());
                        json!({"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": args}})
                    })
                    .collect();
            }
            out
        }
        Role::Tool => match &m.tool_result {
            Some(r) => {
                json!({"role": "tool", "tool_call_id": r.call_id, "content": result_text(r)})
            }
            None => json!({"role": "user", "content": m.content}),
        },
    }
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
    ) -> Result<LlmResponse, LlmError> {
        let body = self.request_body(messages, tools);
        let v = self.endpoint.post(&body).await?;
        parse_response(self.kind.as_str(), &self.cfg.model, &v)
    }
    fn provider(&self) -> &str {
        self.kind.as_str()
    }
    fn model(&self) -> &str {
        &self.cfg.model
    }
}
