//! One JSON POST to a provider, with retries. Shared by every provider.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::LlmError;
use super::retry::{RetryPolicy, is_retryable_status, retry_after};
use super::sse::{SseEvent, SseParser};

/// How a streamed request was answered.
pub(crate) enum Streamed {
    /// As a stream; every event went to the caller.
    Events,
    /// With a plain body: the server does not stream.
    Body(Bytes),
}

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
    /// body of the successful answer (see [`Endpoint::decode`]). With a
    /// `deadline`, no attempt, retry or backoff sleep outlives it.
    pub async fn post(&self, body: Vec<u8>, deadline: Option<Instant>) -> Result<Bytes, LlmError> {
        let client = shared_client().map_err(|message| self.transport(message))?;
        // Shared, not copied, by each attempt.
        let body = Bytes::from(body);
        let mut attempts = Attempts::start();
        loop {
            let Some(timeout) = self.attempt_timeout(deadline) else {
                return Err(self.out_of_time(&attempts, None));
            };
            let failure = match self.attempt(client, &body, timeout).await {
                Ok(answer) => return Ok(answer),
                Err(failure) => failure,
            };
            attempts.failed(&failure.error);
            // Cut short by the deadline: no time is left for another try.
            if failure.timed_out && timeout < self.timeout {
                return Err(self.out_of_time(&attempts, Some(&failure.error)));
            }
            if !failure.retryable || attempts.count > self.retry.max_retries {
                return Err(attempts.explain(failure.error));
            }
            let wait = self.retry.delay(attempts.count - 1, failure.retry_after);
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(self.out_of_time(&attempts, Some(&failure.error)));
            }
            tracing::warn!(provider = %self.provider, attempt = attempts.count, wait_ms = wait.as_millis() as u64,
                error = %failure.error, "LLM call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// POSTs a request that asks for a stream, with [`Endpoint::post`]'s
    /// retries, but only while no event has arrived: after that a failure
    /// ends the call (the model's answer is half told). Each event goes to
    /// `on_event`. A server that ignores `stream` and answers plain JSON
    /// gives [`Streamed::Body`].
    pub async fn post_stream(
        &self,
        body: Vec<u8>,
        deadline: Option<Instant>,
        on_event: &mut (dyn FnMut(SseEvent) -> Result<(), LlmError> + Send),
    ) -> Result<Streamed, LlmError> {
        let client = shared_client().map_err(|message| self.transport(message))?;
        let body = Bytes::from(body);
        let mut attempts = Attempts::start();
        loop {
            let Some(timeout) = self.attempt_timeout(deadline) else {
                return Err(self.out_of_time(&attempts, None));
            };
            let mut delivered = false;
            let failure = match self
                .attempt_stream(client, &body, timeout, &mut delivered, on_event)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(failure) if delivered => return Err(failure.error),
                Err(failure) => failure,
            };
            attempts.failed(&failure.error);
            if failure.timed_out && timeout < self.timeout {
                return Err(self.out_of_time(&attempts, Some(&failure.error)));
            }
            if !failure.retryable || attempts.count > self.retry.max_retries {
                return Err(attempts.explain(failure.error));
            }
            let wait = self.retry.delay(attempts.count - 1, failure.retry_after);
            if deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(self.out_of_time(&attempts, Some(&failure.error)));
            }
            tracing::warn!(provider = %self.provider, attempt = attempts.count, wait_ms = wait.as_millis() as u64,
                error = %failure.error, "LLM call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One streamed request, read to its end within `timeout`.
    async fn attempt_stream(
        &self,
        client: &reqwest::Client,
        body: &Bytes,
        timeout: Duration,
        delivered: &mut bool,
        on_event: &mut (dyn FnMut(SseEvent) -> Result<(), LlmError> + Send),
    ) -> Result<Streamed, Failure> {
        let mut resp = client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "text/event-stream, application/json",
            )
            .timeout(timeout)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| self.request_failure(&e, timeout))?;
        let status = resp.status().as_u16();
        let is_stream = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !(200..300).contains(&status) || !is_stream {
            let hint = retry_after(resp.headers(), SystemTime::now());
            let answer = resp
                .bytes()
                .await
                .map_err(|e| self.request_failure(&e, timeout))?;
            if (200..300).contains(&status) {
                return Ok(Streamed::Body(answer));
            }
            return Err(Failure {
                error: LlmError::Http {
                    provider: self.provider.clone(),
                    status,
                    message: self.scrub(&provider_message(&answer)),
                },
                retryable: is_retryable_status(status),
                timed_out: false,
                retry_after: hint,
            });
        }
        let mut parser = SseParser::default();
        let not_retried = |error| Failure {
            error,
            retryable: false,
            timed_out: false,
            retry_after: None,
        };
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| self.request_failure(&e, timeout))?;
            let events = match &chunk {
                Some(bytes) => parser.push(bytes),
                None => parser.finish().into_iter().collect(),
            };
            for event in events {
                *delivered = true;
                on_event(event).map_err(not_retried)?;
            }
            if chunk.is_none() {
                return Ok(Streamed::Events);
            }
        }
    }

    /// An error a provider reported inside its stream.
    pub fn stream_error(&self, data: &str) -> LlmError {
        LlmError::Decode {
            provider: self.provider.clone(),
            message: format!(
                "the stream reported an error: {}",
                self.scrub(&provider_message(data.as_bytes()))
            ),
        }
    }

    /// The limit of the next attempt: the request timeout, or the time left
    /// before `deadline` if that is shorter; `None` once the deadline passed.
    fn attempt_timeout(&self, deadline: Option<Instant>) -> Option<Duration> {
        let Some(deadline) = deadline else {
            return Some(self.timeout);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| left.min(self.timeout))
    }

    /// One request, its whole answer read within `timeout`.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        body: &Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Failure> {
        let resp = client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(timeout)
            .body(body.clone())
            .send()
            .await
            .map_err(|e| self.request_failure(&e, timeout))?;
        let status = resp.status().as_u16();
        let hint = retry_after(resp.headers(), SystemTime::now());
        let answer = resp
            .bytes()
            .await
            .map_err(|e| self.request_failure(&e, timeout))?;
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        Err(Failure {
            error: LlmError::Http {
                provider: self.provider.clone(),
                status,
                message: self.scrub(&provider_message(&answer)),
            },
            retryable: is_retryable_status(status),
            timed_out: false,
            retry_after: hint,
        })
    }

    /// A request that got no (complete) answer. Only a request that could
    /// not even be built is not worth repeating.
    fn request_failure(&self, e: &reqwest::Error, timeout: Duration) -> Failure {
        Failure {
            error: self.transport(describe(e, timeout)),
            retryable: !e.is_builder(),
            timed_out: e.is_timeout(),
            retry_after: None,
        }
    }

    /// The deadline passed (or would pass during the next backoff) first.
    fn out_of_time(&self, attempts: &Attempts, last: Option<&LlmError>) -> LlmError {
        let mut message = format!(
            "the time left for the step/task ran out after waiting {:.1} s",
            attempts.started.elapsed().as_secs_f64()
        );
        if let Some(last) = last {
            let plural = if attempts.count == 1 { "" } else { "s" };
            message.push_str(&format!(
                " ({} attempt{plural}; last error: {last}{})",
                attempts.count,
                attempts.first_error_note(last)
            ));
        }
        LlmError::OutOfTime {
            provider: self.provider.clone(),
            message,
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

/// Why one attempt failed, and whether another one may do better.
struct Failure {
    error: LlmError,
    retryable: bool,
    /// The attempt ran out of its own time limit.
    timed_out: bool,
    /// The provider's `Retry-After`.
    retry_after: Option<Duration>,
}

/// The failed attempts of one call so far, for its final error message.
struct Attempts {
    started: Instant,
    count: u32,
    /// The first failure's text: the last one alone can hide the cause
    /// (a 503 that turned into timeouts, say).
    first_error: Option<String>,
}

impl Attempts {
    fn start() -> Self {
        Attempts {
            started: Instant::now(),
            count: 0,
            first_error: None,
        }
    }

    fn failed(&mut self, error: &LlmError) {
        self.count += 1;
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }

    /// `"; first error: …"` when the first failure read differently from `last`.
    fn first_error_note(&self, last: &LlmError) -> String {
        match &self.first_error {
            Some(first) if *first != last.to_string() => format!("; first error: {first}"),
            _ => String::new(),
        }
    }

    /// The last failure, noting how many attempts were made (and the first
    /// error) when there were several.
    fn explain(&self, last: LlmError) -> LlmError {
        if self.count <= 1 {
            return last;
        }
        let note = format!(
            " (gave up after {} attempts in {:.1} s{})",
            self.count,
            self.started.elapsed().as_secs_f64(),
            self.first_error_note(&last)
        );
        match last {
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
}

/// A reqwest error and its causes, without the URL (added by the caller).
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    let mut out = if e.is_timeout() {
        format!("request timed out after {:.1} s", timeout.as_secs_f64())
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

    fn http(status: u16, message: &str) -> LlmError {
        LlmError::Http {
            provider: "openai".into(),
            status,
            message: message.into(),
        }
    }

    #[test]
    fn a_failure_after_several_attempts_names_the_first_error_too() {
        let mut attempts = Attempts::start();
        for e in [
            http(503, "overloaded"),
            http(500, "boom"),
            http(500, "boom"),
        ] {
            attempts.failed(&e);
        }
        let text = attempts.explain(http(500, "boom")).to_string();
        assert!(
            text.starts_with("openai answered HTTP 500: boom (gave up after 3 attempts in "),
            "{text}"
        );
        assert!(
            text.ends_with(" s; first error: openai answered HTTP 503: overloaded)"),
            "{text}"
        );

        // The same error every time: said once.
        let mut same = Attempts::start();
        same.failed(&http(500, "boom"));
        same.failed(&http(500, "boom"));
        let text = same.explain(http(500, "boom")).to_string();
        assert!(text.contains("gave up after 2 attempts"), "{text}");
        assert!(!text.contains("first error"), "{text}");

        // One attempt: the error as it is.
        let mut once = Attempts::start();
        once.failed(&http(400, "bad"));
        assert_eq!(
            once.explain(http(400, "bad")).to_string(),
            "openai answered HTTP 400: bad"
        );
    }

    #[test]
    fn attempts_are_limited_by_the_time_left() {
        let retry = RetryPolicy::default();
        let endpoint = Endpoint::new(
            "openai",
            "http://127.0.0.1:1/v1".into(),
            Duration::from_secs(600),
            retry,
        );
        assert_eq!(
            endpoint.attempt_timeout(None),
            Some(Duration::from_secs(600))
        );
        let soon = endpoint
            .attempt_timeout(Some(Instant::now() + Duration::from_secs(10)))
            .expect("time left");
        assert!(
            soon <= Duration::from_secs(10) && soon > Duration::from_secs(5),
            "{soon:?}"
        );
        let later = Some(Instant::now() + Duration::from_secs(3600));
        assert_eq!(
            endpoint.attempt_timeout(later),
            Some(Duration::from_secs(600))
        );
        assert_eq!(endpoint.attempt_timeout(Some(Instant::now())), None);

        let mut attempts = Attempts::start();
        attempts.failed(&http(503, "overloaded"));
        let late = endpoint.out_of_time(&attempts, Some(&http(503, "overloaded")));
        assert!(matches!(late, LlmError::OutOfTime { .. }), "{late:?}");
        let text = late.to_string();
        assert!(
            text.starts_with(
                "openai model call given up: the time left for the step/task ran out after waiting "
            ),
            "{text}"
        );
        assert!(
            text.ends_with(" s (1 attempt; last error: openai answered HTTP 503: overloaded)"),
            "{text}"
        );
    }
}
