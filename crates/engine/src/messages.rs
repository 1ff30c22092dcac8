//! Provider-neutral conversation types. Every provider client converts to and
//! from these, so the loop, tools and trajectories see one shape.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A tool call the model asked for. `arguments` is the parsed JSON object; when
/// the model sent malformed JSON, `arguments` is `Null` and `raw_arguments`
/// keeps the text so the tool can answer with a clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub call_id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_arguments: Option<String>,
}

/// The answer to one tool call; every call gets exactly one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call_id: String,
    pub name: String,
    pub success: bool,
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// Text content (may be empty for an assistant turn that only calls tools).
    pub content: String,
    /// Assistant turns: the tool calls it made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Tool turns: the result being returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_result: Option<ToolResult>,
}

impl Message {
    pub fn system(text: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: text.into(),
            tool_calls: vec![],
            tool_result: None,
        }
    }
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: text.into(),
            tool_calls: vec![],
            tool_result: None,
        }
    }
    pub fn tool(result: ToolResult) -> Self {
        Self {
            role: Role::Tool,
            content: String::new(),
            tool_calls: vec![],
            tool_result: Some(result),
        }
    }
}

/// A list that is only appended to or cut back, none of its items changed
/// in place: an agent's conversation, the tools it offers. Its [`Stamp`] is
/// kept while it only grows and renewed when it is cut back or replaced, so
/// a client that sent it before knows, without comparing them, that the
/// items it saw are unchanged.
#[derive(Debug)]
pub struct Stamped<T> {
    items: Vec<T>,
    stamp: Stamp,
}

/// The messages of a conversation so far.
pub type Conversation = Stamped<Message>;
/// The tools on offer.
pub type ToolSpecs = Stamped<ToolSpec>;

/// Names one growing list; never reused within a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64);

impl Stamp {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Stamp(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl<T> Stamped<T> {
    pub fn new(items: Vec<T>) -> Self {
        Self {
            items,
            stamp: Stamp::new(),
        }
    }

    pub fn push(&mut self, item: T) {
        self.items.push(item);
    }

    /// Keeps the first `len` items; a list that loses any is a new one.
    pub fn truncate(&mut self, len: usize) {
        if len < self.items.len() {
            self.items.truncate(len);
            self.stamp = Stamp::new();
        }
    }

    /// The same while the list only grows: under one stamp, its first `n`
    /// items are the same whenever it has `n` or more.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }
}

impl<T> Default for Stamped<T> {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl<T> From<Vec<T>> for Stamped<T> {
    fn from(items: Vec<T>) -> Self {
        Self::new(items)
    }
}

impl<T> std::ops::Deref for Stamped<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.items
    }
}

/// Token usage of one LLM call (or summed over many).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Self) {
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cache_creation_input_tokens += o.cache_creation_input_tokens;
        self.cache_read_input_tokens += o.cache_read_input_tokens;
        self.reasoning_tokens += o.reasoning_tokens;
    }
}

/// What one LLM call returned, normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub model: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
}

/// A tool as offered to the model: name, description and JSON Schema of its
/// arguments. Each provider client renders this in its own dialect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}
