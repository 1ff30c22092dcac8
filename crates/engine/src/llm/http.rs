//! One JSON POST to a provider, with retries. Shared by every provider.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use super::LlmError;
use super::retry::{RetryPolicy, is_retryable_status, retry_after};

/// One connection pool for the process; timeouts are set per request.
fn shared_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            // reqwest is built without a bundled crypto provider (aws-lc-rs
            // needs cmake); use ring. Fails harmlessly if one is installed.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .user_agent(concat!("agentd/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Where and how to POST for one provider/model.
pub(crate) struct Endpoint {
    pub provider: String,
    pub url: String,
    pub headers: HeaderMap,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Only to scrub it from error messages a provider might echo.
    pub secret: Option<String>,
}

impl Endpoint {
    pub fn new(provider: &str, url: String, timeout: Duration, retry: RetryPolicy) -> Self {
        Endpoint {
            provider: provider.to_string(),
            url,
            headers: HeaderMap::new(),
            timeout,
            retry,
            secret: None,
        }
    }

    /// A credential header: marked sensitive so it never shows in Debug output.
    pub fn with_secret_header(mut self, name: &'static str, value: &str) -> Self {
        if let Ok(mut v) = HeaderValue::from_str(value) {
            v.set_sensitive(true);
            self.headers.insert(HeaderName::from_static(name), v);
        }
        self.secret = Some(value.to_string());
        self
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
        self
    }

    /// POSTs `body` (JSON), retrying transient failures, and returns the
    /// body of the successful answer (see [`Endpoint::decode`]).
    pub async fn post(&self, body: Vec<u8>) -> Result<Bytes, LlmError> {
        let client = shared_client().map_err(|message| self.transport(message))?;
        // Shared, not copied, by each attempt.
        let body = Bytes::from(body);
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let last = attempt >= self.retry.max_retries;
            let sent = client
                .post(&self.url)
                .headers(self.headers.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .timeout(self.timeout)
                .body(body.clone())
                .send()
                .await;
            let (failure, wait_hint) = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let hint = retry_after(resp.headers(), SystemTime::now());
                    match resp.bytes().await {
                        Ok(body) if (200..300).contains(&status) => return Ok(body),
                        Ok(body) => {
                            let message = self.scrub(&provider_message(&body));
                            let err = LlmError::Http {
                                provider: self.provider.clone(),
                                status,
                                message,
                            };
                            if !is_retryable_status(status) {
                                return Err(err);
                            }
                            (err, hint)
                        }
                        Err(e) => (self.transport(describe(&e)), None),
                    }
                }
                Err(e) if e.is_builder() => return Err(self.transport(describe(&e))),
                Err(e) => (self.transport(describe(&e)), None),
            };
            if last {
                return Err(with_attempts(failure, attempt + 1, started.elapsed()));
            }
            let wait = self.retry.delay(attempt, wait_hint);
            tracing::warn!(provider = %self.provider, attempt = attempt + 1, wait_ms = wait.as_millis() as u64,
                error = %failure, "LLM call failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// A request body that could not be encoded.
    pub fn encode_error(&self, e: serde_json::Error) -> LlmError {
        self.transport(format!("cannot encode the request: {e}"))
    }

    /// Reads an answer [`Endpoint::post`] returned.
    pub fn decode<'a, T: Deserialize<'a>>(&self, body: &'a [u8]) -> Result<T, LlmError> {
        serde_json::from_slice(body).map_err(|e| LlmError::Decode {
            provider: self.provider.clone(),
            message: format!("invalid JSON ({e}): {}", self.scrub(&snippet(body))),
        })
    }

    fn transport(&self, message: String) -> LlmError {
        // The URL never carries the key (headers do), but drop the query anyway.
        let url = self.url.split('?').next().unwrap_or_default();
        LlmError::Transport {
            provider: self.provider.clone(),
            message: format!("{url}: {}", self.scrub(&message)),
        }
    }

    fn scrub(&self, text: &str) -> String {
        match &self.secret {
            Some(s) if s.len() >= 4 => text.replace(s.as_str(), "[redacted]"),
            _ => text.to_string(),
        }
    }
}

fn with_attempts(err: LlmError, attempts: u32, elapsed: Duration) -> LlmError {
    if attempts <= 1 {
        return err;
    }
    let note = format!(
        " (gave up after {attempts} attempts in {:.1} s)",
        elapsed.as_secs_f64()
    );
    match err {
        LlmError::Http {
            provider,
            status,
            message,
        } => LlmError::Http {
            provider,
            status,
            message: message + &note,
        },
        LlmError::Transport { provider, message } => LlmError::Transport {
            provider,
            message: message + &note,
        },
        other => other,
    }
}

/// A reqwest error and its causes, without the URL (added by the caller).
fn describe(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "request timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The provider's own error text: `error.message` (OpenAI, Anthropic,
/// Gemini), a plain `error` string, or the start of the body.
fn provider_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let err = v.get("error").unwrap_or(&v);
        if let Some(m) = err.get("message").and_then(Value::as_str) {
            return m.to_string();
        }
        if let Some(m) = err.as_str() {
            return m.to_string();
        }
    }
    let text = snippet(body);
    if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text
    }
}

fn snippet(body: &[u8]) -> String {
    const MAX: usize = 500;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_messages_are_extracted() {
        assert_eq!(
            provider_message(br#"{"error":{"message":"bad key","type":"auth"}}"#),
            "bad key"
        );
        assert_eq!(
            provider_message(
                br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(provider_message(br#"{"error":"nope"}"#), "nope");
        assert_eq!(provider_message(b"<html>502</html>"), "<html>502</html>");
        assert_eq!(provider_message(b""), "(empty body)");
        assert_eq!(snippet("é".repeat(600).as_bytes()).chars().count(), 501);
    }
}
