//! Google Gemini `generateContent` with function calling.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::history::{self, non_empty_result_text, paired};
use super::http::{Endpoint, Streamed};
use super::stream::{GeminiStream, TextSink, step_error};
use super::wire::{BodyEncoder, RenderedTools, merged_turns};
use super::{ClientOptions, LlmClient, LlmError, normalise_finish_reason};
use crate::config::{Provider, ResolvedConfig};
use crate::messages::{Conversation, LlmResponse, Message, Role, ToolSpec, ToolSpecs, Usage};

/// Prefix of call ids agentd invents (Gemini usually sends none); such ids
/// are not echoed back to Gemini, which matches calls by name and order.
const LOCAL_ID_PREFIX: &str = "gemini-call-";

pub(crate) struct GeminiClient {
    cfg: ResolvedConfig,
    endpoint: Endpoint,
    /// `streamGenerateContent?alt=sse`: the same request, streamed.
    stream_endpoint: Endpoint,
    /// Gemini 3 requires each function call's `thoughtSignature` back with
    /// the call; the neutral ToolCall has no room for it, so keep it here.
    signatures: Mutex<HashMap<String, String>>,
    tools: RenderedTools,
    body: BodyEncoder,
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
        let endpoint = |method: &str| {
            let url = format!("{prefix}/models/{model}:{method}");
            let endpoint = opts.endpoint(Provider::Google, &cfg, url);
            match cfg.api_key.as_ref() {
                Some(key) => endpoint.with_secret_header("x-goog-api-key", key.expose()),
                None => endpoint,
            }
        };
        let (endpoint, stream_endpoint) = (
            endpoint("generateContent"),
            endpoint("streamGenerateContent?alt=sse"),
        );
        GeminiClient {
            cfg,
            endpoint,
            stream_endpoint,
            signatures: Mutex::new(HashMap::new()),
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
        let cfg = &self.cfg;
        let history = paired(messages);
        let tools = self
            .tools
            .offered(tools, None, cfg.supports_tool_calling, render_tools)?;
        // Held while the calls in the history borrow their signatures.
        let signatures = self.signatures.lock().unwrap_or_else(|e| e.into_inner());
        self.body.encode(&GenerateContentRequest {
            system_instruction: history::system_text(&history).map(|text| SystemInstruction {
                parts: [TextPart { text }],
            }),
            contents: wire_contents(&history, &signatures),
            tools: tools.as_deref(),
            generation_config: GenerationConfig {
                temperature: cfg.temperature,
                top_p: cfg.top_p,
                top_k: (cfg.top_k > 0).then_some(cfg.top_k),
                max_output_tokens: cfg.max_tokens,
                candidate_count: cfg.candidate_count,
                stop_sequences: &cfg.stop_sequences,
            },
        })
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

/// A `generateContent` request, borrowing the history and the
/// configuration. Fields are sent in this order; unset ones are left out.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a RawValue>,
    generation_config: GenerationConfig<'a>,
}

#[derive(Serialize)]
struct SystemInstruction<'a> {
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    temperature: f64,
    top_p: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u32>,
    max_output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    stop_sequences: &'a [String],
}

/// `{"role": "user"|"model", "parts": [parts]}`: consecutive messages of
/// one role share a content (see [`merged_turns`]; Gemini wants all
/// responses to one turn's calls together).
#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: Vec<Part<'a>>,
}

/// A part of a content: text, a function call or a function response.
#[derive(Serialize)]
#[serde(untagged)]
enum Part<'a> {
    Text {
        text: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    FunctionCall {
        function_call: FunctionCall<'a>,
        /// Gemini 3's signature of the call, sent back with it.
        #[serde(skip_serializing_if = "Option::is_none")]
        thought_signature: Option<&'a str>,
    },
    #[serde(rename_all = "camelCase")]
    FunctionResponse {
        function_response: FunctionResponse<'a>,
    },
}

/// `id`s are only sent when Gemini made them (not agentd's local ones).
#[derive(Serialize)]
struct FunctionCall<'a> {
    name: &'a str,
    args: Cow<'a, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

#[derive(Serialize)]
struct FunctionResponse<'a> {
    name: &'a str,
    response: ResponseText<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// `{"output": text}`, or `{"error": text}` for a failed call.
#[derive(Serialize)]
struct ResponseText<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Cow<'a, str>>,
}

/// Gemini's id of a call, `None` for ids agentd made up.
fn gemini_id(call_id: &str) -> Option<&str> {
    (!call_id.starts_with(LOCAL_ID_PREFIX)).then_some(call_id)
}

/// `user`/`model` contents of parts; function responses answer in a user
/// content, system text is sent apart.
fn wire_contents<'a>(
    history: &'a [Cow<'a, Message>],
    signatures: &'a HashMap<String, String>,
) -> Vec<Content<'a>> {
    let turns = merged_turns(history, |m, parts| match m.role {
        Role::System => None,
        Role::User => {
            text_part(&m.content, parts);
            Some("user")
        }
        Role::Assistant => {
            text_part(&m.content, parts);
            parts.extend(m.tool_calls.iter().map(|c| Part::FunctionCall {
                function_call: FunctionCall {
                    name: &c.name,
                    args: history::arguments_object(c),
                    id: gemini_id(&c.call_id),
                },
                thought_signature: signatures.get(&c.call_id).map(String::as_str),
            }));
            Some("model")
        }
        Role::Tool => {
            match &m.tool_result {
                Some(r) => {
                    let text = Some(non_empty_result_text(r));
                    let (output, error) = if r.success {
                        (text, None)
                    } else {
                        (None, text)
                    };
                    parts.push(Part::FunctionResponse {
                        function_response: FunctionResponse {
                            name: &r.name,
                            response: ResponseText { output, error },
                            id: gemini_id(&r.call_id),
                        },
                    });
                }
                None => text_part(&m.content, parts),
            }
            Some("user")
        }
    });
    turns
        .into_iter()
        .map(|t| Content {
            role: t.role,
            parts: t.parts,
        })
        .collect()
}

fn text_part<'a>(text: &'a str, parts: &mut Vec<Part<'a>>) {
    if !text.is_empty() {
        parts.push(Part::Text { text });
    }
}

/// The `tools` of a request (rendered once per tool set).
fn render_tools(tools: &[ToolSpec]) -> serde_json::Result<Box<RawValue>> {
    let decls: Vec<Value> = tools.iter().map(function_declaration).collect();
    serde_json::value::to_raw_value(&json!([{ "functionDeclarations": decls }]))
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
        deadline: Option<Instant>,
    ) -> Result<LlmResponse, LlmError> {
        let body = self
            .request_body(messages, tools)
            .map_err(|e| self.endpoint.encode_error(e))?;
        let answer = self.endpoint.post(body, deadline).await?;
        let v: Value = self.endpoint.decode(&answer)?;
        self.parse(&v)
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
            .request_body(messages, tools)
            .map_err(|e| self.endpoint.encode_error(e))?;
        let endpoint = &self.stream_endpoint;
        let mut stream = GeminiStream::default();
        let answer = endpoint
            .post_stream(body, deadline, &mut |event| {
                if let Some(t) = step_error(endpoint, stream.push(&event))? {
                    text(&t);
                }
                Ok(())
            })
            .await?;
        let v = match answer {
            Streamed::Events => stream.into_response(),
            Streamed::Body(body) => endpoint.decode(&body)?,
        };
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
    use crate::llm::history::MISSING_RESULT;
    use crate::llm::wire::fixtures::{bash_tool, config, conversation};

    #[test]
    fn request_body_is_generate_content_json_in_order() {
        let client = GeminiClient::new(
            config(Provider::Google, "gemini-x"),
            "http://127.0.0.1:1",
            &ClientOptions::default(),
        );
        // The last call has an id agentd made up, and a signature.
        let local = format!("{LOCAL_ID_PREFIX}7");
        client
            .signatures
            .lock()
            .unwrap()
            .insert(local.clone(), "sig".into());
        let body = client
            .request_body(&conversation(&local), &[bash_tool()])
            .unwrap();
        let call = |args, id: Option<&str>| {
            let mut call = json!({"name": "bash", "args": args});
            if let Some(id) = id {
                call["id"] = json!(id);
            }
            json!({"functionCall": call})
        };
        let response = |key: &str, text: &str, id: Option<&str>| {
            let mut response = json!({"name": "bash", "response": {key: text}});
            if let Some(id) = id {
                response["id"] = json!(id);
            }
            json!({"functionResponse": response})
        };
        let mut signed = call(json!({"command": "pwd"}), None);
        signed["thoughtSignature"] = json!("sig");
        let expected = json!({
            "systemInstruction": {"parts": [{"text": "You are a coder."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "List files"}]},
                {"role": "model", "parts": [{"text": "Looking."},
                    call(json!({"command": "ls"}), Some("call_1")), call(json!({}), Some("call_2"))]},
                {"role": "user", "parts": [response("output", "a.txt", Some("call_1")),
                    response("error", "exit 1", Some("call_2")), {"text": "Go on"}]},
                {"role": "model", "parts": [signed]},
                {"role": "user", "parts": [response("error", MISSING_RESULT, None)]},
            ],
            "tools": [{"functionDeclarations": [{"name": "bash", "description": "Run a command",
                "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}]}],
            "generationConfig": {"temperature": 0.5, "topP": 1.0, "maxOutputTokens": 100},
        });
        // Byte for byte: key order included.
        assert_eq!(String::from_utf8(body).unwrap(), expected.to_string());
    }

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
