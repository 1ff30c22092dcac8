//! Test doubles for code that calls LLMs (feature `testing`).
//!
//! - [`ScriptedServer`]: a tiny HTTP/1.1 server on 127.0.0.1 that answers
//!   with a script of canned responses and records every request. Point a
//!   config's `base_url` at [`ScriptedServer::url`] (or use
//!   [`ScriptedServer::config`]) and the real provider clients talk to it.
//! - [`openai`], [`anthropic`], [`gemini`]: builders for their response bodies.
//! - [`ScriptedLlm`]: an in-process [`LlmClient`] for agent-loop tests that
//!   need no HTTP at all.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Provider, ResolvedConfig, Secret};
use crate::llm::{LlmClient, LlmError};
use crate::messages::{LlmResponse, Message, ToolSpec, Usage};

/// The API key [`ScriptedServer::config`] sets.
pub const TEST_API_KEY: &str = "test-key-0123456789";

/// One canned HTTP answer.
#[derive(Debug, Clone)]
pub struct ScriptedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long before answering (to exercise client timeouts).
    pub delay: Option<Duration>,
}

impl ScriptedResponse {
    pub fn json(status: u16, body: &Value) -> Self {
        ScriptedResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
            delay: None,
        }
    }
    /// 200 with a JSON body.
    pub fn ok(body: Value) -> Self {
        Self::json(200, &body)
    }
    /// An error in the shape OpenAI, Anthropic and Gemini all share: `{"error": {"message": …}}`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(
            status,
            &serde_json::json!({"error": {"message": message, "type": "scripted_error"}}),
        )
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }
    /// A `text/event-stream` answer: `(event name, data)` per event.
    pub fn sse(events: &[(Option<&str>, Value)]) -> Self {
        let mut body = String::new();
        for (name, data) in events {
            if let Some(name) = name {
                body.push_str(&format!("event: {name}\n"));
            }
            let data = match data {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            body.push_str(&format!("data: {data}\n\n"));
        }
        ScriptedResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body,
            delay: None,
        }
    }
}

/// `text` cut into pieces of `n` characters (streams split everything).
fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n).map(|c| c.iter().collect()).collect()
}

/// A request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions?api-version=…`.
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The body as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

struct State {
    script: VecDeque<ScriptedResponse>,
    fallback: ScriptedResponse,
    requests: Vec<RecordedRequest>,
}

/// A scripted provider: answers requests in order from its script, then with
/// the fallback (by default a 500 saying the script ran out). Stops when dropped.
pub struct ScriptedServer {
    url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    pub async fn start(script: Vec<ScriptedResponse>) -> std::io::Result<Self> {
        Self::start_with_fallback(
            script,
            ScriptedResponse::error(500, "scripted server: script exhausted"),
        )
        .await
    }

    /// `fallback` answers every request after the script (e.g. "always 500").
    pub async fn start_with_fallback(
        script: Vec<ScriptedResponse>,
        fallback: ScriptedResponse,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State {
            script: script.into(),
            fallback,
            requests: Vec::new(),
        }));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Ok(ScriptedServer { url, state, task })
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Appends to the script.
    pub fn push(&self, response: ScriptedResponse) {
        lock(&self.state).script.push_back(response);
    }

    /// Everything received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// A config for `provider` pointed at this server: `base_url` with the
    /// path that provider's default URL has (`/v1` for OpenAI-compatible),
    /// [`TEST_API_KEY`], `max_retries` 0 (set it for retry tests).
    pub fn config(&self, provider: Provider) -> ResolvedConfig {
        let mut cfg = ResolvedConfig::defaults(provider);
        cfg.base_url = Some(match provider {
            Provider::OpenAi | Provider::OpenRouter | Provider::Doubao | Provider::Ollama => {
                format!("{}/v1", self.url)
            }
            Provider::Anthropic | Provider::Google | Provider::Azure => self.url.clone(),
        });
        cfg.api_key = Some(Secret::new(TEST_API_KEY));
        cfg.max_retries = 0;
        cfg
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads requests off one connection (keep-alive) and answers each from the script.
async fn serve(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let Ok(Some(request)) = read_request(&mut reader).await else {
            return;
        };
        let response = {
            let mut s = lock(&state);
            s.requests.push(request);
            match s.script.pop_front() {
                Some(r) => r,
                None => s.fallback.clone(),
            }
        };
        if let Some(d) = response.delay {
            tokio::time::sleep(d).await;
        }
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            response.status,
            reason(response.status)
        );
        for (k, v) in &response.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", response.body.len()));
        let stream = reader.get_mut();
        if stream.write_all(head.as_bytes()).await.is_err()
            || stream.write_all(response.body.as_bytes()).await.is_err()
            || stream.flush().await.is_err()
        {
            return;
        }
    }
}

async fn read_request(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<RecordedRequest>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    // The clients under test always send a Content-Length body.
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(RecordedRequest {
        method,
        path,
        headers,
        body,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// OpenAI Chat Completions response bodies.
pub mod openai {
    use serde_json::{Value, json};

    /// A completion with `text` and tool calls `(id, name, arguments JSON text)`.
    pub fn response(text: Option<&str>, calls: &[(&str, &str, &str)]) -> Value {
        let tool_calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, args)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            .collect();
        let mut message = json!({"role": "assistant", "content": text});
        if !tool_calls.is_empty() {
            message["tool_calls"] = Value::Array(tool_calls);
        }
        json!({
            "id": "chatcmpl-test", "object": "chat.completion", "model": "scripted-model",
            "choices": [{"index": 0, "message": message,
                         "finish_reason": if calls.is_empty() { "stop" } else { "tool_calls" }}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                      "prompt_tokens_details": {"cached_tokens": 40},
                      "completion_tokens_details": {"reasoning_tokens": 5}}
        })
    }
    pub fn text(text: &str) -> Value {
        response(Some(text), &[])
    }
    pub fn tool_call(id: &str, name: &str, arguments: &str) -> Value {
        response(None, &[(id, name, arguments)])
    }
    /// [`response`] as Chat Completions streams it: text and each call's
    /// arguments in small pieces, the calls interleaved, usage last.
    pub fn stream(text: Option<&str>, calls: &[(&str, &str, &str)]) -> super::ScriptedResponse {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": "scripted-model",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        for piece in super::pieces(text.unwrap_or(""), 3) {
            events.push(chunk(json!({"content": piece}), Value::Null));
        }
        for (i, (id, name, _)) in calls.iter().enumerate() {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
        }
        let split: Vec<Vec<String>> = calls.iter().map(|(_, _, a)| super::pieces(a, 4)).collect();
        for round in 0..split.iter().map(Vec::len).max().unwrap_or(0) {
            for (i, parts) in split.iter().enumerate() {
                if let Some(part) = parts.get(round) {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": i, "function": {"arguments": part}}]}),
                        Value::Null,
                    ));
                }
            }
        }
        let finish = if calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        };
        events.push(chunk(json!({}), json!(finish)));
        let mut usage = response(None, &[])["usage"].clone();
        usage["total_tokens"] = json!(120);
        events.push(
            json!({"id": "chatcmpl-test", "object": "chat.completion.chunk",
                           "model": "scripted-model", "choices": [], "usage": usage}),
        );
        let mut sse: Vec<(Option<&str>, Value)> = events.into_iter().map(|e| (None, e)).collect();
        sse.push((None, json!("[DONE]")));
        super::ScriptedResponse::sse(&sse)
    }
}

/// Anthropic Messages response bodies.
pub mod anthropic {
    use serde_json::{Value, json};

    /// A message with `text` and tool uses `(id, name, input)`.
    pub fn response(text: Option<&str>, calls: &[(&str, &str, Value)]) -> Value {
        let mut content: Vec<Value> = text
            .map(|t| json!({"type": "text", "text": t}))
            .into_iter()
            .collect();
        content.extend(calls.iter().map(
            |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input}),
        ));
        json!({
            "id": "msg_test", "type": "message", "role": "assistant", "model": "scripted-model",
            "content": content, "stop_reason": if calls.is_empty() { "end_turn" } else { "tool_use" },
            "usage": {"input_tokens": 100, "output_tokens": 20,
                      "cache_creation_input_tokens": 10, "cache_read_input_tokens": 30}
        })
    }
    pub fn text(text: &str) -> Value {
        response(Some(text), &[])
    }
    pub fn tool_use(id: &str, name: &str, input: Value) -> Value {
        response(None, &[(id, name, input)])
    }
    /// [`response`] as the Messages API streams it, input JSON in pieces.
    pub fn stream(text: Option<&str>, calls: &[(&str, &str, Value)]) -> super::ScriptedResponse {
        let full = response(text, calls);
        let mut start = full.clone();
        start["content"] = json!([]);
        start["stop_reason"] = Value::Null;
        start["usage"]["output_tokens"] = json!(1);
        let mut events = vec![(
            Some("message_start"),
            json!({"type": "message_start", "message": start}),
        )];
        events.push((Some("ping"), json!({"type": "ping"})));
        let mut index = 0;
        if let Some(text) = text {
            events.push((
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for piece in super::pieces(text, 3) {
                events.push((
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": piece}}),
                ));
            }
            events.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": 0}),
            ));
            index = 1;
        }
        for (i, (id, name, input)) in calls.iter().enumerate() {
            let at = index + i;
            events.push((
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": at,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            for piece in super::pieces(&input.to_string(), 4) {
                events.push((
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": at,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            events.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": at}),
            ));
        }
        events.push((
            Some("message_delta"),
            json!({"type": "message_delta",
            "delta": {"stop_reason": full["stop_reason"], "stop_sequence": null},
            "usage": {"output_tokens": full["usage"]["output_tokens"]}}),
        ));
        events.push((Some("message_stop"), json!({"type": "message_stop"})));
        super::ScriptedResponse::sse(&events)
    }
}

/// Gemini generateContent response bodies.
pub mod gemini {
    use serde_json::{Value, json};

    /// A candidate with `text` and function calls `(name, args)`.
    pub fn response(text: Option<&str>, calls: &[(&str, Value)]) -> Value {
        let mut parts: Vec<Value> = text.map(|t| json!({"text": t})).into_iter().collect();
        parts.extend(
            calls
                .iter()
                .map(|(name, args)| json!({"functionCall": {"name": name, "args": args}})),
        );
        json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20, "totalTokenCount": 128,
                              "cachedContentTokenCount": 30, "thoughtsTokenCount": 8},
            "modelVersion": "scripted-model"
        })
    }
    pub fn text(text: &str) -> Value {
        response(Some(text), &[])
    }
    pub fn function_call(name: &str, args: Value) -> Value {
        response(None, &[(name, args)])
    }
    /// [`response`] as `streamGenerateContent?alt=sse` sends it: text in
    /// pieces, each call whole, usage and finish reason with the last event.
    pub fn stream(text: Option<&str>, calls: &[(&str, Value)]) -> super::ScriptedResponse {
        let full = response(text, calls);
        let part_event = |part: Value| {
            json!({"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
                   "modelVersion": "scripted-model"})
        };
        let mut events: Vec<Value> = super::pieces(text.unwrap_or(""), 3)
            .into_iter()
            .map(|t| part_event(json!({"text": t})))
            .collect();
        events.extend(
            calls.iter().map(|(name, args)| {
                part_event(json!({"functionCall": {"name": name, "args": args}}))
            }),
        );
        let mut last = part_event(json!({"text": ""}));
        last["candidates"][0]["finishReason"] = json!("STOP");
        last["usageMetadata"] = full["usageMetadata"].clone();
        events.push(last);
        let sse: Vec<(Option<&str>, Value)> = events.into_iter().map(|e| (None, e)).collect();
        super::ScriptedResponse::sse(&sse)
    }
}

/// An in-process [`LlmClient`] answering from a script and recording every
/// call's messages and tool names. When the script runs out it returns an
/// [`LlmError::Http`] 500.
pub struct ScriptedLlm {
    provider: String,
    model: String,
    script: Mutex<VecDeque<Result<LlmResponse, LlmError>>>,
    calls: Mutex<Vec<(Vec<Message>, Vec<String>)>>,
}

impl ScriptedLlm {
    pub fn new(script: Vec<Result<LlmResponse, LlmError>>) -> Self {
        ScriptedLlm {
            provider: "scripted".into(),
            model: "scripted-model".into(),
            script: Mutex::new(script.into()),
            calls: Mutex::new(Vec::new()),
        }
    }
    /// The conversation and tool names of every call so far.
    pub fn calls(&self) -> Vec<(Vec<Message>, Vec<String>)> {
        lock(&self.calls).clone()
    }
    /// A text-only answer.
    pub fn text(text: &str) -> LlmResponse {
        Self::response(text, vec![])
    }
    /// An answer calling tools `(call_id, name, arguments)`.
    pub fn tool_calls(calls: &[(&str, &str, Value)]) -> LlmResponse {
        let calls = calls
            .iter()
            .map(|(id, name, args)| crate::messages::ToolCall {
                call_id: id.to_string(),
                name: name.to_string(),
                arguments: args.clone(),
                raw_arguments: None,
            })
            .collect();
        Self::response("", calls)
    }
    fn response(text: &str, tool_calls: Vec<crate::messages::ToolCall>) -> LlmResponse {
        LlmResponse {
            content: text.to_string(),
            finish_reason: Some(
                if tool_calls.is_empty() {
                    "stop"
                } else {
                    "tool_calls"
                }
                .to_string(),
            ),
            tool_calls,
            model: "scripted-model".into(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 5,
                ..Default::default()
            },
        }
    }
}

#[async_trait]
impl LlmClient for ScriptedLlm {
    async fn chat(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        _deadline: Option<tokio::time::Instant>,
    ) -> Result<LlmResponse, LlmError> {
        lock(&self.calls).push((
            messages.to_vec(),
            tools.iter().map(|t| t.name.clone()).collect(),
        ));
        lock(&self.script).pop_front().unwrap_or_else(|| {
            Err(LlmError::Http {
                provider: self.provider.clone(),
                status: 500,
                message: "script exhausted".into(),
            })
        })
    }
    fn provider(&self) -> &str {
        &self.provider
    }
    fn model(&self) -> &str {
        &self.model
    }
}
