//! LLM providers behind one interface.
//!
//! Each provider module converts the neutral [`crate::messages`] types to its
//! wire format and back. Retries (429/5xx/timeouts, honouring `Retry-After`,
//! up to `max_retries`) live here too, so the loop sees one call. Each
//! attempt is limited by the model's `timeout` (else
//! [`ClientOptions::request_timeout`]), and a call may be given a deadline
//! that its attempts, retries and backoff sleeps together never outlive.

mod anthropic;
mod gemini;
mod history;
mod http;
mod openai;
mod pricing;
mod retry;
mod sse;
mod stream;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::config::{ConfigError, Provider, ResolvedConfig};
use crate::messages::{Conversation, LlmResponse, Message, ToolSpec, ToolSpecs};

pub use pricing::estimate_cost_usd;
pub use retry::RetryPolicy;
pub use stream::TextSink;

/// One model behind one provider, ready to be called.
#[async_trait]
pub trait LlmClient: Send + Sync {
    /// One turn: the whole conversation so far plus the tools on offer.
    /// With a `deadline`, the call (retries and their backoff included)
    /// gives up with [`LlmError::OutOfTime`] rather than outlive it.
    async fn chat(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        deadline: Option<Instant>,
    ) -> Result<LlmResponse, LlmError>;
    /// The same turn, streamed where the model streams (its `stream`, on
    /// by default): the text goes to `text` as it arrives, and the result
    /// is what `chat` would have returned. Dropping the future closes the
    /// connection, so a provider stops generating for a stopped task.
    /// The stamps of a [`Conversation`] and [`ToolSpecs`] let a client reuse
    /// what it made of the messages and tools it has sent before.
    async fn chat_streamed(
        &self,
        messages: &Conversation,
        tools: &ToolSpecs,
        deadline: Option<Instant>,
        text: TextSink<'_>,
    ) -> Result<LlmResponse, LlmError> {
        let _ = text;
        self.chat(messages, tools, deadline).await
    }
    /// Provider name as configured (openai, anthropic, azure, …).
    fn provider(&self) -> &str;
    fn model(&self) -> &str;
}

/// A provider failure, after retries. The API maps these to OPENAI_API_ERROR (502).
/// Messages name the provider and its own error text, never the API key.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{provider} answered HTTP {status}: {message}")]
    Http {
        provider: String,
        status: u16,
        message: String,
    },
    #[error("{provider} could not be reached: {message}")]
    Transport { provider: String, message: String },
    #[error("{provider} sent a response that could not be read: {message}")]
    Decode { provider: String, message: String },
    /// The call's deadline (the time left for its step or task) came first.
    #[error("{provider} model call given up: {message}")]
    OutOfTime { provider: String, message: String },
}

impl LlmError {
    /// The provider that failed, as configured.
    pub fn provider(&self) -> &str {
        match self {
            LlmError::Http { provider, .. }
            | LlmError::Transport { provider, .. }
            | LlmError::Decode { provider, .. }
            | LlmError::OutOfTime { provider, .. } => provider,
        }
    }

    /// The provider's HTTP status, when it answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Transport settings of a client; the retry count comes from the config's `max_retries`.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Whole-request limit (connect, send, model thinking, body) of one
    /// attempt; a model's own `timeout` in the config wins over it.
    pub request_timeout: Duration,
    /// First retry backoff (doubles per attempt, jittered). Tests shrink it.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// Cap on a provider's `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        let r = RetryPolicy::default();
        ClientOptions {
            request_timeout: Duration::from_secs(600),
            retry_base_delay: r.base_delay,
            retry_max_delay: r.max_delay,
            max_retry_after: r.max_retry_after,
        }
    }
}

impl ClientOptions {
    fn endpoint(&self, kind: Provider, cfg: &ResolvedConfig, url: String) -> http::Endpoint {
        let retry = RetryPolicy {
            max_retries: cfg.max_retries,
            base_delay: self.retry_base_delay,
            max_delay: self.retry_max_delay,
            max_retry_after: self.max_retry_after,
        };
        let timeout = cfg
            .request_timeout_secs
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(self.request_timeout);
        http::Endpoint::new(kind.as_str(), url, timeout, retry)
    }
}

/// The client for a resolved configuration, with default transport options.
/// Fails (before any network use) on an unknown provider, a missing API key
/// or a missing base URL (Azure has no default).
pub fn client_for(cfg: &ResolvedConfig) -> Result<Arc<dyn LlmClient>, ConfigError> {
    client_with_options(cfg, &ClientOptions::default())
}

pub fn client_with_options(
    cfg: &ResolvedConfig,
    opts: &ClientOptions,
) -> Result<Arc<dyn LlmClient>, ConfigError> {
    let kind = cfg.provider_kind()?;
    cfg.require_api_key()?;
    let base_url = cfg
        .base_url
        .clone()
        .or_else(|| kind.default_base_url().map(str::to_string))
        .filter(|u| !u.trim().is_empty())
        .ok_or_else(|| ConfigError::MissingBaseUrl {
            provider: kind.as_str().to_string(),
        })?;
    let cfg = cfg.clone();
    Ok(match kind {
        Provider::Anthropic => Arc::new(anthropic::AnthropicClient::new(cfg, &base_url, opts)),
        Provider::Google => Arc::new(gemini::GeminiClient::new(cfg, &base_url, opts)),
        Provider::OpenAi
        | Provider::Azure
        | Provider::OpenRouter
        | Provider::Doubao
        | Provider::Ollama => Arc::new(openai::OpenAiClient::new(kind, cfg, &base_url, opts)),
    })
}

/// One vocabulary for all providers: `stop`, `length`, `tool_calls`,
/// `content_filter`; anything else is passed on lower-cased.
pub(crate) fn normalise_finish_reason(raw: Option<&str>, has_tool_calls: bool) -> Option<String> {
    let raw = match raw {
        Some(r) if !r.is_empty() => r.to_ascii_lowercase(),
        _ => return has_tool_calls.then(|| "tool_calls".to_string()),
    };
    let reason = match raw.as_str() {
        // Gemini and some OpenAI-compatible servers say STOP even when calling tools.
        "stop" | "end_turn" | "stop_sequence" if has_tool_calls => "tool_calls",
        "stop" | "end_turn" | "stop_sequence" => "stop",
        "length" | "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_calls" | "tool_use" | "function_call" => "tool_calls",
        "content_filter" | "refusal" | "safety" | "recitation" | "blocklist"
        | "prohibited_content" | "spii" | "image_safety" => "content_filter",
        other => other,
    };
    Some(reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_are_normalised() {
        let n = |r: Option<&str>, t| normalise_finish_reason(r, t);
        assert_eq!(n(Some("end_turn"), false).as_deref(), Some("stop"));
        assert_eq!(n(Some("tool_use"), true).as_deref(), Some("tool_calls"));
        assert_eq!(n(Some("STOP"), true).as_deref(), Some("tool_calls"));
        assert_eq!(n(Some("MAX_TOKENS"), false).as_deref(), Some("length"));
        assert_eq!(n(Some("SAFETY"), false).as_deref(), Some("content_filter"));
        assert_eq!(n(Some("pause_turn"), false).as_deref(), Some("pause_turn"));
        assert_eq!(n(None, false), None);
    }

    #[test]
    fn factory_checks_key_and_base_url() {
        let mut cfg = ResolvedConfig::defaults(Provider::OpenAi);
        assert!(matches!(
            client_for(&cfg),
            Err(ConfigError::MissingApiKey { .. })
        ));
        cfg.api_key = Some(crate::config::Secret::new("k"));
        let client = client_for(&cfg).expect("client");
        assert_eq!((client.provider(), client.model()), ("openai", "gpt-4o"));

        let mut azure = ResolvedConfig::defaults(Provider::Azure);
        azure.api_key = Some(crate::config::Secret::new("k"));
        assert!(matches!(
            client_for(&azure),
            Err(ConfigError::MissingBaseUrl { .. })
        ));
        assert!(client_for(&ResolvedConfig::defaults(Provider::Ollama)).is_ok());

        let mut bad = ResolvedConfig::defaults(Provider::OpenAi);
        bad.provider = "acme".into();
        assert!(matches!(
            client_for(&bad),
            Err(ConfigError::UnknownProvider { .. })
        ));
    }
}
