//! Google Gemini `generateContent` with function calling.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::history::{self, non_empty_result_text, paired};
use super::http::Endpoint;
use super::{ClientOptions, LlmClient, LlmError, normalise_finish_reason};
use crate::config::{Provider, ResolvedConfig};
use crate::messages::{LlmResponse, Message, Role, ToolSpec, Usage};

/// Prefix of call ids agentd invents (Gemini usually sends none); such ids
/// are not echoed back to Gemini, which matches calls by name and order.
const LOCAL_ID_PREFIX: &str = "gemini-call-";

pub(crate) struct GeminiClient {
    cfg: ResolvedConfig,
    endpoint: Endpoint,
    /// Gemini 3 requires each function call's `thoughtSignature` back with
    /// the call; the neutral ToolCall has no room for it, so keep it here.
    signatures: Mutex<HashMap<String, String>>,
}

impl GeminiClient {
    pub(crate) fn new(cfg: ResolvedConfig, base_url: &str, opts: &ClientOptions) -> Self {
        let base = base_url.trim_end_matches('/');
        let versioned = base.ends_with("/v1beta") || base.ends_with("/v1");
        let prefix = if versioned {
            base.to_string()
        } else {
            format!("{base}/v1beta")
        };
        let model = cfg.model.trim_start_matches("models/");
        let url = format!("{prefix}/models/{model}:generateContent");
        let mut endpoint = opts.endpoint(Provider::Google, &cfg, url);
        if let Some(key) = cfg.api_key.as_ref() {
            endpoint = endpoint.with_secret_header("x-goog-api-key", key.expose());
        }
        GeminiClient {
            cfg,
            endpoint,
            signatures: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn request_body(&self, messages: &[Message], tools: &[ToolSpec]) -> Value {
        let history = paired(messages);
        let mut body = Map::new();
        let system: Vec<&str> = history
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        if !system.is_empty() {
            body.insert(
                "systemInstruction".into(),
                json!({"parts": [{"text": system.join("\n\n")}]}),
            );
        }
        let signatures = self.signatures.lock().unwrap_or_else(|e| e.into_inner());
        body.insert(
            "contents".into(),
            Value::Array(wire_contents(&history, &signatures)),
        );
        drop(signatures);
        if !tools.is_empty() && self.cfg.supports_tool_calling {
            let decls: Vec<Value> = tools.iter().map(function_declaration).collect();
            body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        }
        let mut generation = Map::new();
        generation.insert("temperature".into(), json!(self.cfg.temperature));
        generation.insert("topP".into(), json!(self.cfg.top_p));
        if self.cfg.top_k > 0 {
            generation.insert("topK".into(), json!(self.cfg.top_k));
        }
        generation.insert("maxOutputTokens".into(), json!(self.cfg.max_tokens));
        if let Some(n) = self.cfg.candidate_count {
            generation.insert("candidateCount".into(), json!(n));
        }
        if !self.cfg.stop_sequences.is_empty() {
            generation.insert("stopSequences".into(), json!(self.cfg.stop_sequences));
        }
        body.insert("generationConfig".into(), Value::Object(generation));
        Value::Object(body)
    }

    fn parse(&self, v: &Value) -> Result<LlmResponse, LlmError> {
        let decode = |message: String| LlmError::Decode {
            provider: "google".into(),
            message,
        };
        let Some(candidate) = v
            .get("candidates")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        else {
            let why = v
                .pointer("/promptFeedback/blockReason")
                .and_then(Value::as_str);
            return Err(decode(match why {
                Some(reason) => format!("the prompt was blocked ({reason})"),
                None => "no candidates in the response".into(),
            }));
        };
        let parts = candidate
            .pointer("/content/parts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        let mut signatures = self.signatures.lock().unwrap_or_else(|e| e.into_inner());
        for p in &parts {
            if let Some(call) = p.get("functionCall") {
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map_or_else(
                        || {
                            format!(
                                "{LOCAL_ID_PREFIX}{}",
                                NEXT_ID.fetch_add(1, Ordering::Relaxed)
                            )
                        },
                        str::to_string,
                    );
                if let Some(sig) = p.get("thoughtSignature").and_then(Value::as_str) {
                    signatures.insert(id.clone(), sig.to_string());
                }
                tool_calls.push(history::tool_call(
                    id,
                    call.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    call.get("args").unwrap_or(&Value::Null),
                ));
            } else if p.get("thought").and_then(Value::as_bool) != Some(true) {
                content.push_str(p.get("text").and_then(Value::as_str).unwrap_or_default());
            }
        }
        let u = v.get("usageMetadata").unwrap_or(&Value::Null);
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        // Thinking tokens are billed as output, as OpenAI counts reasoning tokens.
        let usage = Usage {
            input_tokens: n("promptTokenCount"),
            output_tokens: n("candidatesTokenCount") + n("thoughtsTokenCount"),
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: n("cachedContentTokenCount"),
            reasoning_tokens: n("thoughtsTokenCount"),
        };
        Ok(LlmResponse {
            content,
            finish_reason: normalise_finish_reason(
                candidate.get("finishReason").and_then(Value::as_str),
                !tool_calls.is_empty(),
            ),
            tool_calls,
            model: v
                .get("modelVersion")
                .and_then(Value::as_str)
                .unwrap_or(&self.cfg.model)
                .to_string(),
            usage,
        })
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// `user`/`model` contents; function responses answer in a user turn and
/// consecutive same-role contents are merged (Gemini wants all responses to
/// one turn's calls together).
fn wire_contents(history: &[Cow<'_, Message>], signatures: &HashMap<String, String>) -> Vec<Value> {
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in history {
        let (role, parts) = match m.role {
            Role::System => continue,
            Role::User => ("user", text_part(&m.content)),
            Role::Assistant => {
                let mut parts = text_part(&m.content);
                parts.extend(m.tool_calls.iter().map(|c| {
                    let mut call = json!({"name": c.name, "args": history::arguments_object(c)});
                    if !c.call_id.starts_with(LOCAL_ID_PREFIX) {
                        call["id"] = json!(c.call_id);
                    }
                    let mut part = json!({"functionCall": call});
                    if let Some(sig) = signatures.get(&c.call_id) {
                        part["thoughtSignature"] = json!(sig);
                    }
                    part
                }));
                ("model", parts)
            }
            Role::Tool => match &m.tool_result {
                Some(r) => {
                    let key = if r.success { "output" } else { "error" };
                    let mut response =
                        json!({"name": r.name, "response": {key: non_empty_result_text(r)}});
                    if !r.call_id.starts_with(LOCAL_ID_PREFIX) {
                        response["id"] = json!(r.call_id);
                    }
                    ("user", vec![json!({"functionResponse": response})])
                }
                None => ("user", text_part(&m.content)),
            },
        };
        if parts.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => turns.push((role, parts)),
        }
    }
    turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect()
}

fn text_part(text: &str) -> Vec<Value> {
    if text.is_empty() {
        vec![]
    } else {
        vec![json!({"text": text})]
    }
}

/// Gemini's `parameters` is an OpenAPI subset: unknown JSON Schema keywords
/// are rejected, and an object schema without properties must be omitted.
fn function_declaration(t: &ToolSpec) -> Value {
    let mut decl = json!({"name": t.name, "description": t.description});
    let params = gemini_schema(&history::parameters(t));
    let empty = params
        .get("properties")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty);
    if !empty {
        decl["parameters"] = params;
    }
    decl
}

const SCHEMA_KEYS: [&str; 22] = [
    "type",
    "format",
    "title",
    "description",
    "nullable",
    "enum",
    "maxItems",
    "minItems",
    "properties",
    "required",
    "minProperties",
    "maxProperties",
    "minLength",
    "maxLength",
    "pattern",
    "example",
    "anyOf",
    "default",
    "items",
    "minimum",
    "maximum",
    "propertyOrdering",
];

fn gemini_schema(schema: &Value) -> Value {
    let Value::Object(obj) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let v = match k.as_str() {
            "properties" => match v {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(name, s)| (name.clone(), gemini_schema(s)))
                        .collect(),
                ),
                other => other.clone(),
            },
            "items" => gemini_schema(v),
            "anyOf" => Value::Array(
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(gemini_schema)
                    .collect(),
            ),
            // ["string", "null"] → "string" + nullable.
            "type" if v.is_array() => {
                let types: Vec<&str> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                if types.contains(&"null") {
                    out.insert("nullable".into(), json!(true));
                }
                json!(
                    types
                        .iter()
                        .find(|t| **t != "null")
                        .copied()
                        .unwrap_or("string")
                )
            }
            key if SCHEMA_KEYS.contains(&key) => v.clone(),
            _ => continue,
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

#[async_trait]
impl LlmClient for GeminiClient {
    async fn chat(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<LlmResponse, LlmError> {
        let body = self.request_body(messages, tools);
        let v = self.endpoint.post(&body).await?;
        self.parse(&v)
    }
    fn provider(&self) -> &str {
        Provider::Google.as_str()
    }
    fn model(&self) -> &str {
        &self.cfg.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_cut_to_gemini_subset() {
        let s = json!({"type": "object", "additionalProperties": false, "$schema": "x",
            "properties": {"path": {"type": ["string", "null"], "description": "p"},
                           "range": {"type": "array", "items": {"type": "integer", "examples": [1]}}},
            "required": ["path"]});
        assert_eq!(
            gemini_schema(&s),
            json!({"type": "object", "required": ["path"],
                "properties": {"path": {"type": "string", "nullable": true, "description": "p"},
                               "range": {"type": "array", "items": {"type": "integer"}}}})
        );
        let no_args = ToolSpec {
            name: "task_done".into(),
            description: "d".into(),
            parameters: json!({"type": "object", "properties": {}}),
        };
        assert_eq!(
            function_declaration(&no_args),
            json!({"name": "task_done", "description": "d"})
        );
    }
}
